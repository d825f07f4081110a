"""MQTT 5 software meters speaking cgm-meter/1 (see drivers/mqtt/README.md)."""

from simulators.mqtt.server import MqttMeterSimulator, serve

__all__ = ["MqttMeterSimulator", "serve"]
