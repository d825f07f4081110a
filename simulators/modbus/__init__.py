"""Modbus TCP meter simulator: serves :class:`simulators.meter.SimulatedMeter` objects by unit id
with the register maps the driver uses (``drivers/modbus/maps``)."""

from simulators.modbus.server import CorruptMode, ModbusSimulator, serve

__all__ = ["CorruptMode", "ModbusSimulator", "serve"]
