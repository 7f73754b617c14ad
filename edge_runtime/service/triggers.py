"""Software trigger payloads: checked at the door, then copied field by field within bounds.

A trigger comes from any client on the broker, so nothing in it is trusted:

- :func:`parse_trigger` (the MQTT door): more than ``limits.trigger_max_bytes`` is refused unread;
  the payload must be a JSON object (an empty payload reads as ``{}``) without ``NaN``, ``Infinity`` or a
  number that overflows to infinity (``1e999``): JSON has no such values and the verdict carrying the
  trigger could not be encoded, so the part would get no published verdict.
- :func:`copy_fields` (every trigger, also in-process ones): at most ``trigger_max_fields`` fields are
  copied into the verdict; a field whose name is longer than ``trigger_max_key_chars`` or whose value,
  as JSON, is longer than ``trigger_max_value_bytes`` (or is not finite JSON) is left out and counted.
"""

from __future__ import annotations

import json
import math
from typing import Any

from edge_runtime.service.config import LimitsConfig


class TriggerRefused(ValueError):
    """A trigger payload refused at the door; ``reason`` is the metric label."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text[:20]} overflows to infinity")
    return value


def parse_trigger(payload: bytes, limits: LimitsConfig) -> dict[str, Any]:
    """The payload as a dict, or TriggerRefused (reason ``too_large`` or ``invalid``)."""
    if len(payload) > limits.trigger_max_bytes:
        raise TriggerRefused("too_large", f"{len(payload)} bytes, over limits.trigger_max_bytes "
                             f"({limits.trigger_max_bytes})")
    if not payload.strip():
        return {}
    try:
        obj = json.loads(payload, parse_constant=_no_constant, parse_float=_finite_float)
    except RecursionError:
        raise TriggerRefused("invalid", "JSON nested too deeply") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise TriggerRefused("invalid", f"not JSON ({e})") from None
    if not isinstance(obj, dict):
        raise TriggerRefused("invalid", f"a JSON {type(obj).__name__}, not an object")
    return obj


def copy_fields(payload: dict[str, Any] | None, limits: LimitsConfig) -> tuple[dict[str, Any], int]:
    """(the fields within the bounds, as a fresh JSON copy; how many fields were left out)."""
    out: dict[str, Any] = {}
    dropped = 0
    for key, value in (payload or {}).items():
        if len(out) >= limits.trigger_max_fields or not isinstance(key, str) \
                or len(key) > limits.trigger_max_key_chars:
            dropped += 1
            continue
        try:
            text = json.dumps(value, allow_nan=False, ensure_ascii=False, separators=(",", ":"))
        except (ValueError, TypeError, RecursionError):
            dropped += 1
            continue
        if len(text.encode()) > limits.trigger_max_value_bytes:
            dropped += 1
            continue
        out[key] = json.loads(text)
    return out, dropped
