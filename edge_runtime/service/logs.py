"""Structured logs: one JSON object per line on stderr (journald keeps it), or plain text.

Modules log with ``extra={"fields": {...}}``; the JSON formatter merges those fields into the line:
``{"ts": "...Z", "level": "error", "logger": "edge_runtime.service.watchdog", "msg": "pipeline stalled",
"event": "alarm", "alarm": "no_frame", ...}``.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

# every module logs under edge_runtime.* (logging.getLogger(__name__)); py.warnings carries the Python
# warnings of libraries (Pillow, numpy, ...) once logging.captureWarnings is on, so they are JSON lines too
_ROOTS = ("edge_runtime", "py.warnings")


def rfc3339(ts: float) -> str:
    """UTC, millisecond precision, ``Z`` suffix: ``2025-01-31T12:00:00.123Z``."""
    whole = int(ts)
    ms = int(round((ts - whole) * 1000))
    if ms == 1000:
        whole, ms = whole + 1, 0
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)) + f".{ms:03d}Z"


def utc_now() -> str:
    """The current time as rfc3339."""
    return rfc3339(time.time())


def file_stamp(ts: float) -> str:
    """rfc3339 without separators, for file names that sort by time: ``20250131T120000123Z``."""
    return rfc3339(ts).replace("-", "").replace(":", "").replace(".", "")


# every line carries these, whoever logged it (a library's warning too), so a log shipper can index on them;
# `event` names what happened (verdict, alarm, ...): "log" for a plain message, "exception" for a traceback
CORE_FIELDS = ("ts", "level", "logger", "station", "event", "msg")


def _event(record: logging.LogRecord, fields: dict[str, Any]) -> str:
    return str(fields.get("event") or ("exception" if record.exc_info else "log"))


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    fields = getattr(record, "fields", None)
    return fields if isinstance(fields, dict) else {}


class JsonFormatter(logging.Formatter):
    def __init__(self, station: str | None = None) -> None:
        super().__init__()
        self.station = station

    def format(self, record: logging.LogRecord) -> str:
        fields = _fields(record)
        line: dict[str, Any] = {
            "ts": rfc3339(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "station": self.station,
            "event": _event(record, fields),
            "msg": record.getMessage(),
        }
        for k, v in fields.items():
            line.setdefault(k, v)
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    def __init__(self, station: str | None = None) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")
        self.station = station

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        fields = {"station": self.station, **_fields(record)}
        fields["event"] = _event(record, fields)
        return text + " " + " ".join(f"{k}={v}" for k, v in fields.items())


def setup_logging(fmt: str = "json", level: str = "info", stream: Any = None,
                  station: str | None = None) -> logging.Handler:
    """Send the ``edge_runtime`` loggers, Python warnings (and pymodbus') to ``stream`` (stderr) in ``fmt``,
    every line with CORE_FIELDS; returns the handler."""
    logging.captureWarnings(True)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter(station) if fmt == "json" else TextFormatter(station))
    handler._glad_edge = True  # type: ignore[attr-defined]
    for name in _ROOTS:
        root = logging.getLogger(name)
        for h in list(root.handlers):
            if getattr(h, "_glad_edge", False):
                root.removeHandler(h)
        root.addHandler(handler)
        root.setLevel(level.upper())
        root.propagate = False
    pm = logging.getLogger("pymodbus")
    pm.setLevel(logging.CRITICAL)  # pymodbus logs every failed connect as an error; our outputs report once
    return handler
