"""Meter drivers: one module per protocol behind the interface in :mod:`drivers.base`.

``get_driver("dlms" | "modbus" | "mqtt")`` returns a driver; protocol modules are imported
lazily so that a deployment without, say, DLMS meters never imports dlms-cosem.
"""

from __future__ import annotations

import sys
from importlib import import_module

from drivers.base import (
    ALL_CHANNELS,
    AccessDenied,
    AccessLevel,
    AuthenticationFailed,
    Channel,
    ClockReading,
    ConnectionFailed,
    Credentials,
    Driver,
    DriverError,
    Endpoint,
    EntryStatus,
    MeterIdentity,
    MeterSession,
    MeterTimeout,
    NotSupported,
    ProfileColumn,
    ProfileConfig,
    ProfileEntry,
    ProtocolError,
    RegisterValue,
    SessionEvent,
)

PROTOCOLS = ("dlms", "modbus", "mqtt")


def get_driver(protocol: str) -> Driver:
    """The driver for ``protocol``; a clear error for an unknown one."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; expected one of {', '.join(PROTOCOLS)}")
    module = import_module(f"drivers.{protocol}")
    return module.DRIVER


async def close_shared() -> None:
    """Close what drivers share across sessions (MQTT broker connections); call it before
    the event loop ends. Loads no protocol module that was not used."""
    mqtt = sys.modules.get("drivers.mqtt")
    if mqtt is not None:
        await mqtt.DRIVER.close_all()


__all__ = [
    "ALL_CHANNELS",
    "PROTOCOLS",
    "AccessDenied",
    "AccessLevel",
    "AuthenticationFailed",
    "Channel",
    "ClockReading",
    "ConnectionFailed",
    "Credentials",
    "Driver",
    "DriverError",
    "Endpoint",
    "EntryStatus",
    "MeterIdentity",
    "MeterSession",
    "MeterTimeout",
    "NotSupported",
    "ProfileColumn",
    "ProfileConfig",
    "ProfileEntry",
    "ProtocolError",
    "RegisterValue",
    "SessionEvent",
    "close_shared",
    "get_driver",
]
