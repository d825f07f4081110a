"""Modbus TCP meters: pymodbus' async client plus one YAML register map per meter model.

``DRIVER`` is what :func:`drivers.get_driver` returns for ``protocol = "modbus"``.
"""

from drivers.modbus.driver import ModbusDriver, ModbusExceptionResponse, ModbusSession
from drivers.modbus.registermap import MapError, RegisterMap, load_map, shipped_maps

DRIVER = ModbusDriver()

__all__ = [
    "DRIVER",
    "MapError",
    "ModbusDriver",
    "ModbusExceptionResponse",
    "ModbusSession",
    "RegisterMap",
    "load_map",
    "shipped_maps",
]
