"""Signed model updates: bundle signing, the MQTT transfer protocol, staging, the station's bundle store and
the publisher (docs/updates.md)."""
