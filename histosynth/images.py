"""Image I/O: every tile, whatever its file format, becomes an RGB uint8 array.

Pools mix formats (NCT-CRC-HE-100K ships 8-bit TIFF, generators write PNG, scanners export
16-bit TIFF), and every metric downstream assumes the same representation. Decoding is
strict: a truncated or corrupt file raises `ImageError` naming the file instead of being
skipped or padded, because a silently dropped tile changes a study's sample.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from histosynth.errors import ImageError

IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg")
PAPER_SIZE = 256  # the paper upscales 224x224 tiles bilinearly to 256x256


def load_rgb(path: str | Path, size: int | None = None) -> np.ndarray:
    """Decode an image file into an (H, W, 3) uint8 array.

    Args:
        path: a .tif/.tiff/.png/.jpg/.jpeg file; RGB, RGBA, grayscale, palette and
            16-bit images are accepted.
        size: when given, resize to `size` x `size` with bilinear interpolation (the
            paper's choice for 224 -> 256); None keeps the native size.

    Returns:
        The image as RGB uint8. Alpha is dropped (tiles are opaque by construction),
        grayscale is replicated to three channels and 16-bit values are scaled to 8 bits.

    Raises:
        ImageError: the file is missing, truncated, corrupt or has an unsupported layout.
    """
    path = Path(path)
    array = _decode(path)
    rgb = to_rgb_uint8(array, path)
    if size is not None and rgb.shape[:2] != (size, size):
        rgb = resize_bilinear(rgb, size)
    return rgb


def resize_bilinear(rgb: np.ndarray, size: int) -> np.ndarray:
    """Resize an RGB uint8 array to `size` x `size` with PIL's bilinear filter."""
    resized = Image.fromarray(rgb).resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(resized, dtype=np.uint8)


def to_rgb_uint8(array: np.ndarray, path: Path | str = "<array>") -> np.ndarray:
    """Convert a decoded pixel array of any supported layout to (H, W, 3) uint8.

    Integer images wider than 8 bits are scaled by their dtype's range (65535 -> 255)
    rather than clipped, so a 16-bit scan keeps its contrast.
    """
    if array.ndim == 3 and array.shape[0] in (1, 2, 3, 4) and array.shape[-1] > 4:
        array = np.moveaxis(array, 0, -1)  # planar TIFF (C, H, W)
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3 or array.shape[2] not in (1, 2, 3, 4):
        raise ImageError(f"{path}: unsupported image shape {array.shape}")
    grayscale = array.shape[2] in (1, 2)  # gray, or gray + alpha
    array = np.repeat(array[:, :, :1], 3, axis=2) if grayscale else array[:, :, :3]
    return _scale_to_uint8(array, path)


def _scale_to_uint8(array: np.ndarray, path: Path | str) -> np.ndarray:
    if array.dtype == np.uint8:
        return np.ascontiguousarray(array)
    if array.dtype == bool:
        return array.astype(np.uint8) * 255
    if np.issubdtype(array.dtype, np.unsignedinteger):
        scale = 255.0 / np.iinfo(array.dtype).max
        return np.rint(array.astype(np.float64) * scale).astype(np.uint8)
    if np.issubdtype(array.dtype, np.signedinteger):
        # PIL decodes 16-bit grayscale PNG as int32 mode "I": the range is 16-bit, whatever the
        # pixel values, so a dark 16-bit tile keeps its darkness instead of being read as 8-bit.
        if array.min(initial=0) < 0 or array.max(initial=0) > 65535:
            raise ImageError(f"{path}: integer pixels outside 0..65535")
        return np.rint(array.astype(np.float64) * (255.0 / 65535.0)).astype(np.uint8)
    if np.issubdtype(array.dtype, np.floating):
        # Float images are taken as 0..1 (TIFF's SampleFormat=float convention); anything else
        # is ambiguous, and guessing would make tiles of one pool differ in brightness.
        if not np.isfinite(array).all() or array.min(initial=0.0) < 0.0 or array.max(initial=0.0) > 1.0:
            raise ImageError(f"{path}: floating-point pixels must lie within 0..1")
        return np.rint(array * 255.0).astype(np.uint8)
    raise ImageError(f"{path}: unsupported pixel type {array.dtype}")


def _decode(path: Path) -> np.ndarray:
    if not path.is_file():
        raise ImageError(f"{path}: no such image file")
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        raise ImageError(f"{path}: not an image format histosynth reads ({', '.join(IMAGE_SUFFIXES)})")
    if path.suffix.lower() in (".tif", ".tiff"):
        array = _decode_tiff(path)
        if array is not None:
            return array
    return _decode_pil(path)


def _decode_tiff(path: Path) -> np.ndarray | None:
    """Read TIFFs with tifffile, which keeps 16-bit RGB intact where PIL cannot.

    Returns None for compressions tifffile cannot decode without extra codecs, so that
    PIL gets its turn; genuine corruption still surfaces from PIL as an ImageError.
    """
    import tifffile

    try:
        return tifffile.imread(path, key=0)
    except Exception:
        return None


def _decode_pil(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as image:
            image.load()
            if image.mode == "P" or image.mode == "PA":
                image = image.convert("RGBA")
            elif image.mode == "CMYK" or image.mode == "YCbCr" or image.mode == "LAB":
                image = image.convert("RGB")
            elif image.mode == "1":
                image = image.convert("L")
            elif image.mode.startswith("I;16"):
                return np.asarray(image).astype(np.uint16)
            return np.asarray(image)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as error:
        raise ImageError(f"{path}: cannot decode image ({error})") from error
