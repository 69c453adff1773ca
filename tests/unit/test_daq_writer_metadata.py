"""The stream's metadata struct (the reference's ctypes ImageMetadata: 56 bytes packed) and
the [metadata, pixels] message."""

import struct

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from socs_agents.agents.daq_writer.metadata import (
    DTYPES,
    METADATA_BYTES,
    BadFrame,
    ImageMetadata,
    make_metadata,
    parse_frames,
    parse_metadata,
)


def test_struct_is_the_references_packed_ctypes_struct():
    # version, id, height, width c_uint64; dtype, encoding, source_id, status c_uint16;
    # user_1, user_2 c_uint64, _pack_ = 1
    assert METADATA_BYTES == 4 * 8 + 4 * 2 + 2 * 8 == 56
    meta = ImageMetadata(1, 7, 3, 4, 2, 0, 5, 1, 11, 12)
    raw = meta.pack()
    # version, id, height, width u64; dtype, encoding, source_id, status u16; user_1/2 u64
    assert raw == struct.pack("<4Q4H2Q", 1, 7, 3, 4, 2, 0, 5, 1, 11, 12)
    assert parse_metadata(raw) == meta


@pytest.mark.parametrize("code,dtype", sorted(DTYPES.items()))
def test_every_dtype_round_trips_with_its_pixels(code, dtype):
    img = (np.arange(6) * 3).astype(dtype).reshape(2, 3)
    meta = make_metadata(42, (2, 3), dtype, status=2)
    assert meta.dtype == code
    parsed, pixels = parse_frames([meta.pack(), img.tobytes()])
    assert parsed.numpy_dtype == dtype and parsed.id == 42 and parsed.status == 2
    assert bytes(pixels) == img.tobytes()


def test_2021_codes_12_14_18_are_floats():
    # The 2023 protobuf reused these codes for integers; this stream is the 2021 one.
    assert [DTYPES[c].kind for c in (12, 14, 18)] == ["f", "f", "f"]


@pytest.mark.parametrize("size", [0, 1, 48, 55, 57, 112])
def test_bad_metadata_sizes_are_refused(size):
    with pytest.raises(BadFrame) as e:
        parse_metadata(b"\0" * size)
    assert e.value.code == "bad_metadata_size" and "56" in str(e.value)


def test_unknown_dtype_encoding_and_shape():
    base = dict(version=1, id=1, height=2, width=2, dtype=2, encoding=0, source_id=0, status=0)
    for change, code in (
        ({"dtype": 3}, "bad_dtype"),
        ({"encoding": 7}, "bad_encoding"),
        ({"height": 0}, "bad_shape"),
        ({"width": 1 << 40}, "bad_shape"),
    ):
        with pytest.raises(BadFrame) as e:
            parse_metadata(ImageMetadata(**{**base, **change}).pack())
        assert e.value.code == code


def test_pixel_size_and_part_count():
    meta = make_metadata(1, (4, 4), "uint16")
    with pytest.raises(BadFrame) as e:
        parse_frames([meta.pack(), b"\0" * 31])
    assert e.value.code == "bad_pixel_size" and "needs 32" in str(e.value)
    for frames in ([meta.pack()], [meta.pack(), b"\0" * 32, b"x"], []):
        with pytest.raises(BadFrame) as e:
            parse_frames(frames)
        assert e.value.code == "bad_parts"


@given(st.lists(st.binary(max_size=200), min_size=0, max_size=4))
def test_garbage_messages_raise_badframe_only(frames):
    try:
        meta, pixels = parse_frames(frames)
    except BadFrame:
        return
    # Garbage that parses must describe its own pixel frame exactly.
    assert meta.encoding != 0 or pixels.nbytes == meta.raw_bytes


@given(
    st.integers(0, 2**64 - 1),
    st.integers(1, 64),
    st.integers(1, 64),
    st.sampled_from(sorted(DTYPES)),
    st.integers(0, 2),
)
def test_any_valid_header_round_trips(image_id, h, w, code, status):
    meta = ImageMetadata(1, image_id, h, w, code, 0, 0, status)
    parsed, pixels = parse_frames([meta.pack(), b"\1" * meta.raw_bytes])
    assert parsed == meta and pixels.nbytes == h * w * DTYPES[code].itemsize
