"""MQTT 5 meters (cgm-meter/1): request/response commands and pushed hourly entries.

See ``drivers/mqtt/README.md`` for the topic layout, payloads and access levels.
"""

from drivers.mqtt.driver import (
    DRIVER,
    BrokerConnection,
    BrokerLogin,
    MqttDriver,
    MqttSession,
    ProfileSubscription,
    subscribe_profiles,
)
from drivers.mqtt.protocol import AUTH_BROKER_ACL, AUTH_SIGNATURE, SCHEMA

__all__ = [
    "AUTH_BROKER_ACL",
    "AUTH_SIGNATURE",
    "DRIVER",
    "BrokerConnection",
    "BrokerLogin",
    "SCHEMA",
    "MqttDriver",
    "MqttSession",
    "ProfileSubscription",
    "subscribe_profiles",
]
