"""VEE: validation and critique of readings (art. 18), estimation while a meter is failed
(art. 38), and manual edits — producing one settled hourly series per frontier and channel.

Stages: ``inputs`` reads what collection stored; ``rules`` validates; ``run`` chooses
principal, backup or estimate (``estimate``, ``typical``) and writes what changed;
``edit`` is the level-2 manual correction; ``power`` imports SCADA power samples.
"""

from cgm.vee.config import ALL_RULES, VeeConfig
from cgm.vee.run import VeeSummary, affected_days, run_vee, run_vee_pairs, vee_after_collection

__all__ = [
    "ALL_RULES",
    "VeeConfig",
    "VeeSummary",
    "affected_days",
    "run_vee",
    "run_vee_pairs",
    "vee_after_collection",
]
