"""Image file I/O at the edge of the program (Pillow to read, OpenCV to write; no torch).

Files are read with Pillow rather than ``cv2.imread`` for two reasons: ``Image.open`` reads only the
header, so a frame's size is checked against a pixel bound *before* any pixel memory is allocated (a
1 MB PNG can declare 20000 x 20000 pixels, 1.2 GB decoded); and Pillow raises on a truncated JPEG or PNG
where OpenCV returns a grey-filled image and prints libjpeg's "Premature end of JPEG file" on stderr.
Pillow and OpenCV decode JPEG with the same libjpeg-turbo settings, so the pixels are the same.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageOps

from edge_runtime.errors import GladEdgeError

# Pillow's own decompression-bomb bound (Image.MAX_IMAGE_PIXELS): above it Pillow warns, at twice it refuses.
PILLOW_MAX_PIXELS = 89_478_485
DEFAULT_MAX_PIXELS = 32_000_000  # a 32 MP frame is 96 MB as RGB; industrial cameras go up to about 25 MP

_EXIF_ORIENTATION = 0x0112
_SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I;16N")


class ImageFileError(GladEdgeError):
    """An image file that is unreadable, incomplete, or over the pixel bound."""


def decode_image_file(path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """HxWx3 uint8 RGB of an image file, or ImageFileError (the reason, without the path).

    Refused: more than ``max_pixels`` pixels (from the header, nothing decoded), a file Pillow cannot
    identify, and a file whose data ends early (truncated JPEG, PNG, ...). EXIF orientation is applied and
    16-bit grey is scaled to 8 bits, as ``cv2.imread(IMREAD_COLOR)`` does.
    """
    try:
        with Image.open(path) as im:
            w, h = im.size
            if w * h > max_pixels:
                raise ImageFileError(f"{w}x{h} pixels ({w * h / 1e6:.1f} MP) is over limits.max_frame_pixels "
                                     f"({max_pixels}); not decoded")
            im.load()  # raises OSError "image file is truncated" when the data ends early
            return _to_rgb(im)
    except ImageFileError:
        raise
    except Image.DecompressionBombError as e:  # Image.open's own check (twice PILLOW_MAX_PIXELS >= max_pixels)
        raise ImageFileError(f"over limits.max_frame_pixels ({max_pixels}); not decoded ({e})") from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:  # Pillow's decoders raise these for bad data
        raise ImageFileError(f"not a readable image ({e})") from None


def _to_rgb(im: Image.Image) -> np.ndarray:
    if im.getexif().get(_EXIF_ORIENTATION, 1) != 1:
        im = ImageOps.exif_transpose(im)
    if im.mode in _SIXTEEN_BIT:
        grey = (np.asarray(im).astype(np.uint16) >> 8).astype(np.uint8)
        return cv2.cvtColor(grey, cv2.COLOR_GRAY2RGB)
    if im.mode in ("I", "F"):
        raise ImageFileError(f"pixel format {im.mode} (32-bit) is not a camera image")
    if im.mode != "RGB":
        im = im.convert("RGB")
    return np.asarray(im)


def read_rgb(path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """HxWx3 uint8 RGB; one clear error for a missing, unreadable, incomplete or oversized file."""
    path = Path(path)
    if not path.is_file():
        raise GladEdgeError(f"{path}: file not found")
    try:
        return decode_image_file(path, max_pixels)
    except ImageFileError as e:
        raise GladEdgeError(f"{path}: {e}") from None


def write_heatmap(path: str | Path, anomaly_map: np.ndarray, vmax: float | None = None) -> None:
    """A JET-coloured PNG of the map, scaled to [0, vmax] (default: the map's maximum)."""
    top = float(vmax if vmax is not None else max(float(anomaly_map.max()), 1e-12))
    scaled = np.clip(anomaly_map / top, 0.0, 1.0)
    cv2.imwrite(str(path), cv2.applyColorMap((scaled * 255).astype(np.uint8), cv2.COLORMAP_JET))
