"""The INT8 calibration pack (``calibrate --int8-pack``, calibration/int8_pack.py) read back as calibration
data for ``onnxruntime.quantization``: one graph role's recorded calls, each a feed of float32 arrays.

The pack is outside input: its index is size-limited and schema-checked, every file must stay inside the
pack folder, be a plain ``.npy`` (never a pickle) of the shape the index records, and the total read is
bounded. Anything off is refused with one line naming the file.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from onnxruntime.quantization import CalibrationDataReader
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edge_runtime.errors import GladEdgeError
from edge_runtime.glad_config import format_validation_error

INDEX = "index.json"
INDEX_MAX_BYTES = 16 << 20  # an index lists a few thousand calls: a few MB at most
FILE_MAX_BYTES = 256 << 20  # one recorded input (a 512 px batch-2 image is 6 MB)
TOTAL_MAX_BYTES = 8 << 30  # all inputs read for one graph
MAX_CALLS = 100_000  # calls a pack may list per graph
PACK_FORMAT = 1


class PackCall(BaseModel):
    model_config = ConfigDict(extra="ignore")

    inputs: dict[str, str] = Field(min_length=1, description="input name -> .npy file relative to the pack")
    shapes: dict[str, list[int]] = Field(description="input name -> recorded shape")
    timestep: int | None = None


class PackGraph(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str
    inputs: dict[str, list[int | str]]
    calls: list[PackCall] = Field(max_length=MAX_CALLS)


class PackIndex(BaseModel):
    model_config = ConfigDict(extra="ignore")

    format: int = Field(description=f"pack format (this reader knows {PACK_FORMAT})")
    timesteps: list[int] = Field(default_factory=list)
    images: list[str] = Field(default_factory=list)
    graphs: dict[str, PackGraph]


def read_index(pack: str | Path) -> PackIndex:
    """The pack's index, refused with one line when missing, oversized, not JSON or not a pack."""
    path = Path(pack) / INDEX
    if not path.is_file():
        raise GladEdgeError(f"{path}: not found (not an INT8 pack; write one with calibrate --int8-pack)")
    if path.stat().st_size > INDEX_MAX_BYTES:
        raise GladEdgeError(f"{path}: larger than {INDEX_MAX_BYTES} bytes")
    try:
        raw = json.loads(path.read_bytes())
        index = PackIndex.model_validate(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise GladEdgeError(f"{path}: not valid JSON ({e})") from None
    except ValidationError as e:
        raise GladEdgeError(f"{path}: {format_validation_error(e)}") from None
    if index.format != PACK_FORMAT:
        raise GladEdgeError(f"{path}: pack format {index.format} (this reader knows {PACK_FORMAT})")
    return index


def load_input(pack: Path, rel: str, shape: list[int], limit: int = FILE_MAX_BYTES) -> np.ndarray:
    """One recorded array: inside the pack, a plain float32 ``.npy`` of ``shape``, at most ``limit`` bytes."""
    root = pack.resolve()
    path = (pack / rel).resolve()
    if root not in path.parents:
        raise GladEdgeError(f"{pack / INDEX}: file {rel!r} points outside the pack")
    if not path.is_file():
        raise GladEdgeError(f"{pack / rel}: missing from the INT8 pack")
    if path.stat().st_size > limit:
        raise GladEdgeError(f"{pack / rel}: larger than {limit} bytes")
    try:
        array = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise GladEdgeError(f"{pack / rel}: not a .npy array ({str(e).splitlines()[0]})") from None
    if not isinstance(array, np.ndarray) or array.dtype != np.float32 or list(array.shape) != list(shape):
        raise GladEdgeError(f"{pack / rel}: {getattr(array, 'dtype', '?')}{list(np.shape(array))}, the index "
                            f"records float32{list(shape)}")
    return array


def spread(n: int, k: int) -> list[int]:
    """``k`` indices spread evenly over ``range(n)`` (all of them when ``k >= n``): a subsample of a pack still
    covers every image and every timestep, which come in order."""
    if k >= n:
        return list(range(n))
    return sorted({int(round(i * (n - 1) / max(1, k - 1))) for i in range(k)})


class PackReader(CalibrationDataReader):
    """The calls one graph ``role`` saw, as onnxruntime calibration feeds (at most ``max_calls`` of them)."""

    def __init__(self, pack: str | Path, role: str, input_names: list[str], max_calls: int = 64,
                 total_limit: int = TOTAL_MAX_BYTES) -> None:
        self.pack = Path(pack)
        index = read_index(self.pack)
        if role not in index.graphs:
            raise GladEdgeError(f"{self.pack / INDEX}: no calls recorded for graph {role!r} "
                                f"(has {sorted(index.graphs)})")
        graph = index.graphs[role]
        if not graph.calls:
            raise GladEdgeError(f"{self.pack / INDEX}: graph {role!r} has no recorded calls")
        self.calls = [graph.calls[i] for i in spread(len(graph.calls), max_calls)]
        for call in self.calls:
            if sorted(call.inputs) != sorted(input_names) or set(call.shapes) != set(call.inputs):
                raise GladEdgeError(f"{self.pack / INDEX}: {role} call has inputs {sorted(call.inputs)}, the graph "
                                    f"takes {sorted(input_names)}")
        self.role, self.total_limit = role, total_limit
        self._read = 0
        self._next = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._next >= len(self.calls):
            return None
        call = self.calls[self._next]
        self._next += 1
        feed = {name: load_input(self.pack, rel, call.shapes[name]) for name, rel in call.inputs.items()}
        self._read += sum(a.nbytes for a in feed.values())
        if self._read > self.total_limit:
            raise GladEdgeError(f"{self.pack}: {self.role} calibration data over {self.total_limit} bytes; "
                                "use fewer calls")
        return feed

    def rewind(self) -> None:
        self._next = 0
        self._read = 0

    @property
    def timesteps(self) -> list[int]:
        return sorted({c.timestep for c in self.calls if c.timestep is not None})
