"""The image stream's wire format: multipart ``[metadata, pixels]``, metadata as the 2021
std_daq ``ImageMetadata`` ctypes struct (``_pack_ = 1``, little-endian).

Fields in order: ``version, id, height, width`` (u64), ``dtype, encoding, source_id, status``
(u16), ``user_1, user_2`` (u64): 4 x 8 + 4 x 2 + 2 x 8 = 56 bytes (the contract's draft
said 48; the reference's struct is 56). The dtype codes are the 2021 ones (12, 14 and 18 are floats;
the 2023 protobuf reused them for integers, so a stream of that generation is refused here
by its size or its pixel count, never read as the wrong type).

Plain functions, no I/O: every malformed frame raises :class:`BadFrame` naming what is wrong.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np

METADATA_STRUCT = struct.Struct("<QQQQHHHHQQ")
METADATA_BYTES = METADATA_STRUCT.size  # 56
METADATA_VERSION = 1

#: 2021 dtype code -> numpy dtype (little-endian, as the C++ side writes them).
DTYPES: dict[int, np.dtype] = {
    1: np.dtype("<u1"),
    2: np.dtype("<u2"),
    4: np.dtype("<u4"),
    8: np.dtype("<u8"),
    12: np.dtype("<f2"),
    14: np.dtype("<f4"),
    18: np.dtype("<f8"),
}
DTYPE_CODES: dict[str, int] = {dt.name: code for code, dt in DTYPES.items()}

ENCODING_RAW = 0
ENCODING_BSHUFFLE_LZ4 = 1
ENCODINGS = {ENCODING_RAW: "raw", ENCODING_BSHUFFLE_LZ4: "bshuffle_lz4"}

STATUS_GOOD = 0
STATUS_MISSING_PACKETS = 1
STATUS_ID_MISMATCH = 2
STATUS_NAMES = {
    STATUS_GOOD: "good",
    STATUS_MISSING_PACKETS: "missing_packets",
    STATUS_ID_MISMATCH: "id_mismatch",
}

#: Largest side accepted (a guard against garbage headers asking for absurd allocations).
MAX_SIDE = 1 << 16


class BadFrame(ValueError):
    """A message of the stream that is not an image; ``code`` is short, for counters."""

    def __init__(self, reason: str, code: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.code = code


@dataclass(frozen=True)
class ImageMetadata:
    """One image's header, field names as the reference's ctypes struct."""

    version: int
    id: int
    height: int
    width: int
    dtype: int
    encoding: int
    source_id: int
    status: int
    user_1: int = 0
    user_2: int = 0

    @property
    def numpy_dtype(self) -> np.dtype:
        return DTYPES[self.dtype]

    @property
    def shape(self) -> tuple[int, int]:
        return (self.height, self.width)

    @property
    def raw_bytes(self) -> int:
        """Size of the uncompressed pixels."""
        return self.height * self.width * self.numpy_dtype.itemsize

    def pack(self) -> bytes:
        return pack_metadata(self)


def pack_metadata(meta: ImageMetadata) -> bytes:
    return METADATA_STRUCT.pack(
        meta.version,
        meta.id,
        meta.height,
        meta.width,
        meta.dtype,
        meta.encoding,
        meta.source_id,
        meta.status,
        meta.user_1,
        meta.user_2,
    )


def parse_metadata(raw: bytes | memoryview) -> ImageMetadata:
    """The header in ``raw`` (exactly 56 bytes), checked for a known dtype and encoding and
    a sane shape.

    Raises:
        BadFrame: wrong size, unknown dtype or encoding, zero or absurd height/width.
    """
    if len(raw) != METADATA_BYTES:
        raise BadFrame(
            f"metadata frame is {len(raw)} bytes; the 2021 ImageMetadata struct is "
            f"{METADATA_BYTES}",
            "bad_metadata_size",
        )
    meta = ImageMetadata(*METADATA_STRUCT.unpack(raw))
    if meta.dtype not in DTYPES:
        known = ", ".join(f"{c} {dt.name}" for c, dt in DTYPES.items())
        raise BadFrame(f"unknown dtype code {meta.dtype} (known: {known})", "bad_dtype")
    if meta.encoding not in ENCODINGS:
        raise BadFrame(f"unknown encoding {meta.encoding} (0 raw, 1 bshuffle_lz4)", "bad_encoding")
    for name in ("height", "width"):
        side = getattr(meta, name)
        if not 0 < side <= MAX_SIDE:
            raise BadFrame(f"image {name} {side} is not within 1..{MAX_SIDE}", "bad_shape")
    return meta


def parse_frames(frames: list) -> tuple[ImageMetadata, memoryview]:
    """One multipart message ``[metadata, pixels]`` -> (header, pixel bytes).

    ``frames`` holds bytes or objects with a ``buffer`` (pyzmq ``Frame``s received with
    ``copy=False``); the pixels are returned as a memoryview without copying them.

    Raises:
        BadFrame: not two parts, a bad header, or raw pixels whose size is not
            height x width x itemsize.
    """
    if len(frames) != 2:
        raise BadFrame(
            f"message has {len(frames)} parts; expected 2 (metadata, pixels)", "bad_parts"
        )
    head, body = (memoryview(getattr(f, "buffer", f)) for f in frames)
    meta = parse_metadata(head)
    if meta.encoding == ENCODING_RAW and body.nbytes != meta.raw_bytes:
        raise BadFrame(
            f"image {meta.id}: pixel frame is {body.nbytes} bytes; "
            f"{meta.height} x {meta.width} {meta.numpy_dtype.name} needs {meta.raw_bytes}",
            "bad_pixel_size",
        )
    if meta.encoding != ENCODING_RAW and body.nbytes == 0:
        raise BadFrame(f"image {meta.id}: empty compressed pixel frame", "bad_pixel_size")
    return meta, body.cast("B") if body.format != "B" else body


def make_metadata(
    image_id: int,
    shape: tuple[int, int],
    dtype: str | np.dtype,
    status: int = STATUS_GOOD,
    encoding: int = ENCODING_RAW,
    source_id: int = 0,
) -> ImageMetadata:
    """A header for an image of ``shape`` and ``dtype`` (for simulators and tests)."""
    code = DTYPE_CODES[np.dtype(dtype).newbyteorder("<").name]
    return ImageMetadata(
        METADATA_VERSION, image_id, shape[0], shape[1], code, encoding, source_id, status
    )
