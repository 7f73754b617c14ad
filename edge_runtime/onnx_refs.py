"""The files an ONNX graph reads its weights from (external data), found without the ``onnx`` package.

The device carries onnxruntime, not onnx, and onnxruntime does not say which files a graph references. A
graph is a protobuf ``ModelProto``; this walks only the messages that can hold tensors (graph initializers,
node attributes, subgraphs, functions, training graphs) and skips every other field by its length, so a
multi-GB graph is read in one pass over a memory map without copying its weights. Field numbers are those of
onnx/onnx.proto (stable since the format's first release).
"""

from __future__ import annotations

import mmap
from collections.abc import Iterator
from pathlib import Path

# message -> {field number: message kind of that (repeated) field}; tensors are handled by _tensor_location
_MODEL, _GRAPH, _NODE, _ATTRIBUTE, _TENSOR, _SPARSE, _FUNCTION, _TRAINING = range(8)
_CHILDREN: dict[int, dict[int, int]] = {
    _MODEL: {7: _GRAPH, 20: _TRAINING, 25: _FUNCTION},
    _GRAPH: {1: _NODE, 5: _TENSOR, 15: _SPARSE},
    _NODE: {5: _ATTRIBUTE},
    _ATTRIBUTE: {5: _TENSOR, 6: _GRAPH, 10: _TENSOR, 11: _GRAPH, 22: _SPARSE, 23: _SPARSE},
    _SPARSE: {1: _TENSOR, 2: _TENSOR},
    _FUNCTION: {7: _NODE, 11: _ATTRIBUTE},
    _TRAINING: {1: _GRAPH, 2: _GRAPH},
}
_TENSOR_EXTERNAL_DATA = 13  # repeated StringStringEntryProto {key = 1, value = 2}
_MAX_NESTING = 64  # messages inside messages; real graphs nest a few levels (If/Loop bodies)


def _varint(buf: memoryview, pos: int, end: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= end or shift > 63:
            raise ValueError("truncated or malformed protobuf varint")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def _fields(buf: memoryview, start: int, end: int) -> Iterator[tuple[int, int, int, int]]:
    """(field number, wire type, start, end) of each field; for length-delimited fields, the payload span."""
    pos = start
    while pos < end:
        key, pos = _varint(buf, pos, end)
        number, wire = key >> 3, key & 7
        if wire == 0:
            _, pos = _varint(buf, pos, end)
            yield number, wire, pos, pos
        elif wire == 1 or wire == 5:
            pos += 8 if wire == 1 else 4
            yield number, wire, pos, pos
        elif wire == 2:
            length, pos = _varint(buf, pos, end)
            if pos + length > end:
                raise ValueError("protobuf field runs past the end of its message")
            yield number, wire, pos, pos + length
            pos += length
        else:  # groups (3, 4) are not used by ONNX
            raise ValueError(f"unexpected protobuf wire type {wire}")
    if pos != end:
        raise ValueError("protobuf message runs past its end")


def _tensor_location(buf: memoryview, start: int, end: int) -> str | None:
    for number, wire, s, e in _fields(buf, start, end):
        if number == _TENSOR_EXTERNAL_DATA and wire == 2:
            entry = {n: bytes(buf[a:b]) for n, w, a, b in _fields(buf, s, e) if w == 2}
            if entry.get(1) == b"location":
                return entry.get(2, b"").decode("utf-8", "replace")
    return None


def _walk(buf: memoryview, kind: int, start: int, end: int, found: set[str], level: int) -> None:
    if level > _MAX_NESTING:
        raise ValueError(f"messages nested deeper than {_MAX_NESTING} levels")
    children = _CHILDREN.get(kind, {})
    for number, wire, s, e in _fields(buf, start, end):
        child = children.get(number)
        if child is None or wire != 2:
            continue
        if child == _TENSOR:
            location = _tensor_location(buf, s, e)
            if location is not None:
                found.add(location)
        else:
            _walk(buf, child, s, e, found, level + 1)


def external_data_locations(path: str | Path) -> set[str]:
    """The ``location`` of every tensor stored outside the graph file, as written in the graph (relative to
    the graph's folder). Raises ValueError for a file that is not a well-formed protobuf message."""
    found: set[str] = set()
    with open(path, "rb") as f:
        if Path(path).stat().st_size == 0:
            return found
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
            buf = memoryview(m)
            try:
                _walk(buf, _MODEL, 0, len(buf), found, 0)
            finally:
                buf.release()
    return found
