"""The frontier registry: frontiers, their principal and backup meters, credentials.

Public API (the collector and the CLI use only these names):

- ``load(path) -> Inventory`` / ``parse(text, file, fmt)``: read and validate an inventory
  file; raises ``InventoryError`` (every issue with file and line).
- ``import_inventory(conn, inventory, box, actor=..., dry_run=False) -> ImportReport``.
- ``list_registry(conn, code=None)``: JSON-ready registry, never secrets.
- ``active_meters(conn, box, frontier=None)`` / ``active_meters_async(...)`` →
  ``list[MeterConfig]`` with endpoints, params, ratios, point type, clock limit and
  decrypted ``drivers.base.Credentials`` per access level.
- ``meter_credentials(conn, serial, level, box)`` / ``meter_credentials_async(...)``.
- ``rules``: Tables 1–3 and the backup rule; ``compliance.check(frontier)``: violations.
"""

from cgm.registry import compliance, rules
from cgm.registry.compliance import Finding
from cgm.registry.loader import Inventory, InventoryError, Issue, load, parse
from cgm.registry.model import CredentialSpec, FrontierSpec, MeterSpec
from cgm.registry.store import (
    ImportReport,
    MeterConfig,
    active_meters,
    active_meters_async,
    import_inventory,
    list_registry,
    list_registry_async,
    meter_credentials,
    meter_credentials_async,
    to_json,
)

__all__ = [
    "CredentialSpec",
    "Finding",
    "FrontierSpec",
    "ImportReport",
    "Inventory",
    "InventoryError",
    "Issue",
    "MeterConfig",
    "MeterSpec",
    "active_meters",
    "active_meters_async",
    "compliance",
    "import_inventory",
    "list_registry",
    "list_registry_async",
    "load",
    "meter_credentials",
    "meter_credentials_async",
    "parse",
    "rules",
    "to_json",
]
