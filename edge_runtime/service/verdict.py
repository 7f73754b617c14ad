"""The verdict message (docs/contracts.md, MQTT): its envelope is made here, for the pipeline, which builds each
part's message, and for the MQTT link, which completes a message given to it directly."""

from __future__ import annotations

from typing import Any

from edge_runtime.service.logs import utc_now

SCHEMA = 1
VERDICTS = frozenset({"pass", "reject", "error"})


def verdict_message(fields: dict[str, Any], *, station: str, camera: str | None,
                    model: dict[str, Any] | None = None) -> dict[str, Any]:
    """``schema``, ``station`` and ``camera`` first, then ``fields``; ``ts`` (now) and ``model`` where absent."""
    msg: dict[str, Any] = {"schema": SCHEMA, "station": station, "camera": camera}
    msg.update(fields)
    msg.setdefault("ts", utc_now())
    if model is not None:
        msg.setdefault("model", model)
    return msg
