"""Settings of the station's MQTT link (see docs/contracts.md, "MQTT").

Pure pydantic, no paho import: the service config can embed :class:`MqttConfig` and validate it
on a machine without a broker.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

_TOPIC_FORBIDDEN = set("+#\x00")


class MqttTls(BaseModel):
    """TLS to the broker. Paths are PEM files on the station; ``insecure`` skips the host-name check."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    ca_certs: str | None = Field(None, description="CA bundle that signed the broker's certificate")
    certfile: str | None = Field(None, description="client certificate (mutual TLS)")
    keyfile: str | None = Field(None, description="private key of certfile")
    insecure: bool = Field(False, description="do not check the broker's host name (test benches only)")

    @model_validator(mode="after")
    def _key_needs_cert(self) -> MqttTls:
        if self.keyfile and not self.certfile:
            raise ValueError("tls.keyfile given without tls.certfile")
        return self


class MqttConfig(BaseModel):
    """Where and how the station publishes verdicts and status, and listens for trigger commands."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    host: str = Field("127.0.0.1", min_length=1)
    port: int = Field(1883, ge=1, le=65535)
    client_id: str | None = Field(
        None, min_length=1, max_length=256, description='default: "glad-edge-<station>" (one link per station)'
    )
    username: str | None = None
    password: str | None = Field(None, repr=False)
    tls: MqttTls | None = None
    keepalive: int = Field(30, ge=5, le=65535, description="seconds")
    topic_prefix: str = Field("glad-edge", min_length=1)
    qos: int = Field(1, ge=0, le=2, description="status messages; verdicts always use max(qos, 1)")
    trigger_qos: int = Field(
        0,
        ge=0,
        le=2,
        description="subscription QoS of cmd/trigger. 0: the broker does not queue triggers while the station "
        "is away, so no stale trigger fires after a reconnect",
    )
    session_expiry_s: int = Field(86400, ge=0, le=0xFFFFFFFF, description="MQTT v5 Session Expiry Interval")
    heartbeat_s: float = Field(10.0, gt=0, le=86400, description="period of the retained status heartbeat")
    outbox_path: str | None = Field(None, min_length=1,
                                    description="verdict outbox (SQLite); default <storage.state_dir>/outbox.sqlite3")
    outbox_max_rows: int | None = Field(
        100_000, ge=1, description="unsent verdicts kept at most; beyond, publish_verdict raises OutboxFull"
    )
    max_inflight: int = Field(16, ge=1, le=1000, description="verdicts published and not yet PUBACKed, at most")
    reconnect_min_s: float = Field(1.0, gt=0, le=3600)
    reconnect_max_s: float = Field(30.0, gt=0, le=3600)

    @field_validator("topic_prefix")
    @classmethod
    def _topic_prefix_ok(cls, v: str) -> str:
        if _TOPIC_FORBIDDEN & set(v) or v.startswith("/") or v.endswith("/") or "//" in v:
            raise ValueError(f"topic_prefix {v!r}: no '+', '#', NUL, empty levels or leading/trailing '/'")
        return v

    @model_validator(mode="after")
    def _reconnect_order(self) -> MqttConfig:
        if self.reconnect_min_s > self.reconnect_max_s:
            raise ValueError(
                f"reconnect_min_s ({self.reconnect_min_s}) is larger than reconnect_max_s ({self.reconnect_max_s})"
            )
        if self.password is not None and self.username is None:
            raise ValueError("password given without username")
        return self

    @property
    def verdict_qos(self) -> int:
        """QoS of verdict messages: never below 1 (at-least-once)."""
        return max(1, self.qos)

    def client_id_for(self, station: str) -> str:
        return self.client_id or f"glad-edge-{station}"

    def topic(self, station: str, *parts: str) -> str:
        """``<prefix>/<station>/<parts...>``."""
        return "/".join((self.topic_prefix, station, *parts))


def check_station(station: str) -> str:
    """A station name is one topic level: non-empty, no '/', '+', '#' or NUL."""
    if not station or "/" in station or _TOPIC_FORBIDDEN & set(station):
        raise ValueError(f"station {station!r} must be one non-empty MQTT topic level (no '/', '+', '#')")
    return station
