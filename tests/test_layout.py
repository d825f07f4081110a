"""The import boundaries the architecture rests on, read from the source (``ast``).

- ``drivers/`` knows nothing of the service: it imports nothing from ``cgm``.
- The simulators share no protocol code with the drivers. A codec used by both sides would
  agree with itself, and a wrong OBIS code, register order or payload field would pass every
  test. From ``drivers/`` they take only ``drivers.base``: the vocabulary the two sides must
  share to talk about the same thing (channel names, access levels 1 and 2, an endpoint's
  host and port, the record of one profile interval), none of which encodes anything.
  Each simulator's encoding is checked by an independent peer instead:
  DLMS by Gurux's client (tests/drivers/test_dlms.py, test_dlms_access.py) and dlms-cosem's
  strict parser (tests/simulators/test_dlms_answers_strict.py), the driver by Gurux's server
  (test_dlms_gurux.py, test_dlms_profile_gurux.py); Modbus by pymodbus' client and
  converters (tests/simulators/test_modbus_sim.py) and hand-computed registers served by
  pyModbusTCP (test_modbus_golden.py); MQTT by the documented cgm-meter/1 examples and their
  JSON Schema, verified by each side on its own (test_mqtt_contract.py).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHARED_VOCABULARY = {"drivers.base"}


def _module_imports(path: Path) -> set[str]:
    """The absolute modules one source file imports."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


def _imports(package: str) -> dict[str, set[str]]:
    """Per source file of ``package``: the absolute modules it imports."""
    return {
        str(path.relative_to(ROOT)): _module_imports(path)
        for path in sorted((ROOT / package).rglob("*.py"))
    }


def _top(module: str) -> str:
    return module.split(".", 1)[0]


def test_drivers_import_nothing_of_the_service() -> None:
    found = {f: sorted(m for m in ms if _top(m) == "cgm") for f, ms in _imports("drivers").items()}
    assert {f: ms for f, ms in found.items() if ms} == {}


def test_simulators_take_only_the_shared_vocabulary_from_the_drivers() -> None:
    found = {
        f: sorted(m for m in ms if _top(m) == "drivers" and m not in SHARED_VOCABULARY)
        for f, ms in _imports("simulators").items()
    }
    assert {f: ms for f, ms in found.items() if ms} == {}


def test_the_shared_vocabulary_encodes_nothing() -> None:
    """``drivers.base`` holds types, no protocol: it imports no codec and no other driver."""
    tops = {_top(m) for m in _module_imports(ROOT / "drivers" / "base.py")}
    assert not tops & {"dlms_cosem", "gurux_dlms", "pymodbus", "aiomqtt", "struct", "json"}
    assert {
        m for m in _module_imports(ROOT / "drivers" / "base.py") if _top(m) == "drivers"
    } == set()
