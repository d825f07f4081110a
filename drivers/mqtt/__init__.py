"""MQTT 5 meters (cgm-meter/1): request/response commands and pushed hourly entries.

See ``drivers/mqtt/README.md`` for the topic layout, payloads and access levels.
"""

from drivers.mqtt.driver import MqttDriver, MqttSession, ProfileSubscription, subscribe_profiles
from drivers.mqtt.protocol import SCHEMA

DRIVER = MqttDriver()

__all__ = [
    "DRIVER",
    "SCHEMA",
    "MqttDriver",
    "MqttSession",
    "ProfileSubscription",
    "subscribe_profiles",
]
