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


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": rfc3339(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            for k, v in fields.items():
                line.setdefault(k, v)
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict) and fields:
            text += " " + " ".join(f"{k}={v}" for k, v in fields.items())
        return text


def setup_logging(fmt: str = "json", level: str = "info", stream: Any = None) -> logging.Handler:
    """Send the ``edge_runtime`` loggers, Python warnings (and pymodbus') to ``stream`` (stderr) in ``fmt``;
    returns the handler."""
    logging.captureWarnings(True)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
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
