"""The always-on inspection service: config, camera, pipeline and outputs (MQTT, serial, Modbus)."""
