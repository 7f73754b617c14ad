"""A bound on how deeply a config or manifest may nest: the parsers recurse once per level, so a few kB of
``[[[[...`` would otherwise end in a RecursionError traceback (or, just under the interpreter's limit, in a
crash further on). Nothing this project reads nests deeper than a handful of levels."""

from __future__ import annotations

import json
from typing import Any

from edge_runtime.errors import GladEdgeError

MAX_DEPTH = 32  # levels of mappings and lists; a station config uses 4, a manifest 5


def depth(value: Any) -> int:
    """Levels of dicts and lists in ``value`` (a scalar is 0), counted without recursion."""
    deepest = 0
    stack = [(value, 1)]
    while stack:
        node, level = stack.pop()
        children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else None
        if children is None:
            continue
        deepest = max(deepest, level)
        if level > MAX_DEPTH:  # stop walking a bomb: past the limit the answer is already known
            break
        stack.extend((child, level + 1) for child in children)
    return deepest


def check_depth(value: Any, where: str) -> Any:
    """``value`` itself, refused with one line when it nests deeper than MAX_DEPTH."""
    if depth(value) > MAX_DEPTH:
        raise GladEdgeError(f"{where}: nested deeper than {MAX_DEPTH} levels")
    return value


def parse_json(text: str | bytes, where: str) -> Any:
    """JSON text, refused with one line when it is not valid JSON or nests deeper than MAX_DEPTH."""
    try:
        return check_depth(json.loads(text), where)
    except RecursionError:
        raise GladEdgeError(f"{where}: nested deeper than {MAX_DEPTH} levels") from None
    except json.JSONDecodeError as e:
        raise GladEdgeError(f"{where}: not valid JSON ({e.msg} at line {e.lineno})") from None
    except UnicodeDecodeError as e:
        raise GladEdgeError(f"{where}: not valid JSON (not UTF-8: {e.reason})") from None
