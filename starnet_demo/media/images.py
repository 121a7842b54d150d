"""Reading any image a user may upload into the RGB ``uint8`` array the detector takes, or failing with a clear reason.

Pillow decodes; this module only checks the size before decoding (so a 20000×20000 image or a decompression bomb costs
nothing) and converts the modes people actually upload: grayscale, palette, RGBA/LA (composited on white), CMYK and
16-bit or float images (scaled to 8 bits), with the EXIF orientation applied.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import UploadError

MAX_PIXELS = 40_000_000  # ~ 7000 × 5700; larger uploads are refused before decoding
MAX_SIDE = 16_384


class ImageError(UploadError):
    """An upload that is not a usable image; the message is meant for the user."""


def read_image(source: str | Path | bytes | np.ndarray | Image.Image, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """An RGB ``uint8`` array ``(H, W, 3)`` from a path, encoded bytes, a Pillow image or an array."""
    if isinstance(source, np.ndarray):
        return to_rgb8(source)
    if isinstance(source, Image.Image):
        return _from_pil(source, max_pixels)
    if isinstance(source, (bytes, bytearray)):
        if not source:
            raise ImageError("the image is empty (0 bytes)")
        return _open(io.BytesIO(source), "the upload", max_pixels)
    path = Path(source)
    if not path.is_file():
        raise ImageError(f"image file not found: {path.name}")
    if path.stat().st_size == 0:
        raise ImageError(f"{path.name} is empty (0 bytes)")
    return _open(path, path.name, max_pixels)


def _open(fp, name: str, max_pixels: int) -> np.ndarray:
    try:
        with Image.open(fp) as im:  # reads the header only; pixels are decoded after the size check
            return _from_pil(im, max_pixels)
    except ImageError:
        raise
    except Image.DecompressionBombError:
        raise ImageError(f"{name} is too large to decode safely (over {max_pixels / 1e6:.0f} megapixels)") from None
    except (UnidentifiedImageError, ImportError):
        # ImportError: ultralytics patches Image.open to retry unidentified files with pi-heif (HEIC), if installed.
        raise ImageError(f"{name} is not an image that can be read (corrupt, or not an image file)") from None
    except (OSError, SyntaxError, ValueError) as e:  # truncated or damaged data surfaces on load()
        raise ImageError(f"{name} could not be decoded: {str(e).splitlines()[0][:120]}") from None


def _check_size(size: tuple[int, int], max_pixels: int) -> None:
    w, h = size
    if w < 1 or h < 1:
        raise ImageError(f"the image has no pixels ({w}×{h})")
    if w * h > max_pixels or max(w, h) > MAX_SIDE:
        raise ImageError(f"the image is {w}×{h} = {w * h / 1e6:.0f} megapixels; the limit is "
                         f"{max_pixels / 1e6:.0f} megapixels and {MAX_SIDE} pixels a side. Please downscale it.")


def _from_pil(im: Image.Image, max_pixels: int) -> np.ndarray:
    _check_size(im.size, max_pixels)
    im = ImageOps.exif_transpose(im)
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return np.asarray(Image.alpha_composite(background, rgba).convert("RGB"))
    if im.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        return to_rgb8(np.asarray(im))
    return np.asarray(im.convert("RGB"))


def to_rgb8(a: np.ndarray) -> np.ndarray:
    """Any 2-D or ``(H, W, 1|3|4)`` array as RGB ``uint8``.

    16-bit data is scaled from 0..65535, floats from 0..1 (or 0..max when larger); alpha is dropped.
    """
    if a.ndim == 2:
        a = a[..., None]
    if a.ndim != 3 or a.shape[2] not in (1, 3, 4) or a.shape[0] < 1 or a.shape[1] < 1:
        raise ImageError(f"expected an image array (H, W) or (H, W, 1/3/4), got shape {a.shape}")
    if a.dtype != np.uint8:
        if np.issubdtype(a.dtype, np.integer):
            top = int(a.max())
            full = 65535 if a.dtype == np.uint16 else 255 if top <= 255 else 65535 if top <= 65535 else top
            a = (a.astype(np.float32) * (255.0 / full)).clip(0, 255).astype(np.uint8)
        elif np.issubdtype(a.dtype, np.floating) or a.dtype == np.bool_:
            a = np.nan_to_num(a.astype(np.float32))
            top = float(a.max()) if a.size else 1.0
            scale = 255.0 if top <= 1.0 else 255.0 / top
            a = (a * scale).clip(0, 255).astype(np.uint8)
        else:
            raise ImageError(f"unsupported image data type {a.dtype}")
    if a.shape[2] == 1:
        a = np.repeat(a, 3, axis=2)
    return np.ascontiguousarray(a[..., :3])
