"""Equal-length tiles: a padding chunk that makes every PNG of a study the same number of bytes.

A browser sees each tile's length (Content-Length, or simply the download), and smooth generated
tiles compress better than real tissue, so unpadded lengths alone tell sources apart. Each stored
tile therefore ends with one private ancillary chunk, `paDd`, of random bytes, sized so that all
tiles of the study have the length of the largest one plus a minimum pad. Decoders skip unknown
ancillary chunks, so the pixels are untouched.

The same chunk makes repeats unrecognisable: every showing gets its own pad bytes (derived from
the stored random pad and the showing's token), so a repeated tile has a different hash but the
same length and pixels as its first showing.
"""

from __future__ import annotations

import hashlib
import secrets
import struct
import zlib
from collections.abc import Sequence

PAD_CHUNK = b"paDd"  # ancillary, private, safe to copy: decoders that do not know it skip it
MIN_PAD_BYTES = 16  # room for per-showing bytes even in the study's largest tile
_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_IEND = struct.pack(">I", 0) + b"IEND" + struct.pack(">I", zlib.crc32(b"IEND"))


def padded_length(pngs: Sequence[bytes]) -> int:
    """The common length for a study's tiles: the largest unpadded PNG plus one minimal pad chunk."""
    return max(len(png) for png in pngs) + 12 + MIN_PAD_BYTES


def pad_png(png: bytes, length: int) -> bytes:
    """`png` (ending in IEND, without a pad chunk) grown to exactly `length` bytes with random padding.

    Raises:
        ValueError: `png` is not a PNG ending in IEND, or is too long to pad to `length`.
    """
    if not png.startswith(_SIGNATURE) or not png.endswith(_IEND):
        raise ValueError("not a PNG that ends with IEND")
    pad = length - len(png) - 12
    if pad < MIN_PAD_BYTES:
        raise ValueError(f"a {len(png)}-byte PNG cannot be padded to {length} bytes")
    return png[: -len(_IEND)] + _chunk(PAD_CHUNK, secrets.token_bytes(pad)) + _IEND


def showing_png(stored: bytes, token: str) -> bytes:
    """The bytes one showing of a stored tile goes out as: same length and pixels, its own pad.

    The new pad is a hash of the stored (secret, random) pad and the showing's token, so it is
    stable for a showing (browser caches stay valid), differs between showings, and cannot be
    predicted from anything a browser sees. A PNG without a pad chunk is returned unchanged.
    """
    start = _pad_chunk_start(stored)
    if start is None:
        return stored
    (size,) = struct.unpack(">I", stored[start : start + 4])
    pad = stored[start + 8 : start + 8 + size]
    fresh = hashlib.shake_256(pad + token.encode("ascii")).digest(size)
    return stored[:start] + _chunk(PAD_CHUNK, fresh) + stored[start + 12 + size :]


def _pad_chunk_start(png: bytes) -> int | None:
    """Offset of the pad chunk when it is the chunk right before IEND, else None."""
    offset = len(_SIGNATURE)
    previous = None
    while offset + 8 <= len(png):
        size, kind = struct.unpack(">I4s", png[offset : offset + 8])
        if kind == b"IEND":
            return previous
        previous = offset if kind == PAD_CHUNK else None
        offset += 12 + size
    return None


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
