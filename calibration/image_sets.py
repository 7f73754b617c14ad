"""Image folders given on the command line: listing with limits, reading, and a hash of the list."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from edge_runtime.bundle import sha256_file
from edge_runtime.errors import GladEdgeError
from edge_runtime.images import read_rgb

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
MAX_IMAGES = 100_000
MAX_FILE_BYTES = 64 << 20  # a camera frame, even uncompressed 16 MP RGB, fits
MAX_PIXELS = 40_000_000


def list_images(folder: str | Path, what: str = "image folder") -> list[Path]:
    """Image files directly in ``folder`` (sorted by name), refused beyond the limits."""
    d = Path(folder)
    if not d.is_dir():
        raise GladEdgeError(f"{d}: {what} not found")
    files = sorted(p for p in d.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if len(files) > MAX_IMAGES:
        raise GladEdgeError(f"{d}: {len(files)} images, more than the {MAX_IMAGES} allowed")
    for p in files:
        size = p.stat().st_size
        if size > MAX_FILE_BYTES:
            raise GladEdgeError(f"{p}: {size} bytes, more than the {MAX_FILE_BYTES} allowed per image")
    return files


def load_image(path: Path) -> np.ndarray:
    img = read_rgb(path)
    if img.shape[0] * img.shape[1] > MAX_PIXELS:
        raise GladEdgeError(f"{path}: {img.shape[1]}x{img.shape[0]} pixels, more than the {MAX_PIXELS} allowed")
    return img


def list_sha256(files: Sequence[Path]) -> str:
    """sha256 over the sorted ``name<TAB>sha256-of-file`` lines: which images, byte for byte."""
    h = hashlib.sha256()
    for p in sorted(files, key=lambda q: q.name):
        h.update(f"{p.name}\t{sha256_file(p)}\n".encode())
    return h.hexdigest()
