"""The HDF5 layout users read with plain h5py; bitshuffle/LZ4 always declared."""

import os
import subprocess
import sys

import h5py
import numpy as np
import pytest

from socs_agents.agents.daq_writer.h5file import BITSHUFFLE_FILTER, ImageFile
from socs_agents.agents.daq_writer.metadata import DTYPES, make_metadata, parse_frames
from socs_agents.dev.sim.detector import expected_image

hdf5plugin = pytest.importorskip("hdf5plugin")


def write(path, n, k, shape=(6, 5), dtype="uint16", compression="none", ids=None):
    ids = ids or list(range(100, 100 + k))
    f = ImageFile(str(path), "eiger", n, make_metadata(ids[0], shape, dtype), compression)
    for j, image_id in enumerate(ids):
        meta, pixels = parse_frames(
            [
                make_metadata(image_id, shape, dtype, status=j % 2).pack(),
                expected_image(image_id, shape, dtype),
            ]
        )
        f.write(meta, pixels, 1000.0 + j)
    assert f.close({"run_id": "r7", "n_images_requested": n, "state": "completed"}) == k
    return ids


@pytest.mark.parametrize("dtype", [dt.name for dt in DTYPES.values()])
def test_layout_every_dtype(tmp_path, dtype):
    ids = write(tmp_path / "a.h5", 4, 4, dtype=dtype)
    with h5py.File(tmp_path / "a.h5") as h:
        g = h["eiger"]
        data = g["data"]
        assert data.shape == (4, 6, 5) and data.dtype == np.dtype(dtype)
        assert data.chunks == (1, 6, 5)  # one image per chunk
        for j, image_id in enumerate(ids):
            assert data[j].tobytes() == expected_image(image_id, (6, 5), dtype).tobytes()
        assert g["image_id"][:].tolist() == ids and g["image_id"].dtype == np.uint64
        assert g["status"][:].tolist() == [0, 1, 0, 1]
        assert g["receive_time"][:].tolist() == [1000.0, 1001.0, 1002.0, 1003.0]
        assert g.attrs["run_id"] == "r7" and g.attrs["n_images_requested"] == 4
        assert g.attrs["n_images_written"] == 4 and g.attrs["compression"] == "none"


def test_partial_file_is_shrunk_consistently(tmp_path):
    write(tmp_path / "p.h5", 10, 3)
    with h5py.File(tmp_path / "p.h5") as h:
        g = h["eiger"]
        assert [g[n].shape[0] for n in ("data", "image_id", "status", "receive_time")] == [3] * 4
        assert g.attrs["n_images_requested"] == 10 and g.attrs["n_images_written"] == 3


def test_bitshuffle_lz4_right_pixels_with_plugin(tmp_path):
    shape = (64, 64)
    ids = write(tmp_path / "c.h5", 3, 3, shape=shape, compression="bitshuffle-lz4")
    with h5py.File(tmp_path / "c.h5") as h:
        data = h["eiger/data"]
        assert str(BITSHUFFLE_FILTER) in data._filters
        assert all(
            data[j].tobytes() == expected_image(i, shape, "uint16").tobytes()
            for j, i in enumerate(ids)
        )
        assert h["eiger"].attrs["compression"] == "bitshuffle-lz4"


def test_reader_without_plugin_gets_an_error_never_wrong_pixels(tmp_path):
    write(tmp_path / "c.h5", 2, 2, shape=(64, 64), compression="bitshuffle-lz4")
    code = (
        "import h5py, sys\n"
        "f = h5py.File(sys.argv[1])\n"
        "print('FILTER', f['eiger/data'].id.get_create_plist().get_filter(0)[0])\n"
        "try:\n"
        "    f['eiger/data'][0]\n"
        "except OSError as e:\n"
        "    print('ERROR', e); sys.exit(3)\n"
        "print('READ'); sys.exit(0)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "HDF5_PLUGIN_PATH"}
    r = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "c.h5")],
        capture_output=True,
        text=True,
        env=env,
    )
    # HDF5 refuses to read the chunk (it looks for the filter's plugin) ...
    assert r.returncode == 3, r.stdout + r.stderr
    assert "can't synchronously read data" in r.stdout.lower()
    # ... and the filter the reader needs is declared in the file, for anyone to see.
    assert f"FILTER {BITSHUFFLE_FILTER}" in r.stdout


def test_compressed_input_chunks_are_stored_with_the_filter_declared(tmp_path):
    # A bitshuffle/LZ4 chunk as the reference's compressed stream carries it.
    shape = (32, 32)
    img = expected_image(5, shape, "uint16")
    with h5py.File(tmp_path / "src.h5", "w") as h:
        h.create_dataset("x", data=img[None], chunks=(1, *shape), **hdf5plugin.Bitshuffle())
    with h5py.File(tmp_path / "src.h5") as h:
        _, chunk = h["x"].id.read_direct_chunk((0, 0, 0))
    meta = make_metadata(5, shape, "uint16", encoding=1)
    f = ImageFile(str(tmp_path / "d.h5"), "eiger", 1, meta, "none")
    f.write(*parse_frames([meta.pack(), chunk]), 1.0)
    f.close({})
    with h5py.File(tmp_path / "d.h5") as h:
        assert h["eiger/data"][0].tobytes() == img.tobytes()
        assert h["eiger"].attrs["encoding"] == "bshuffle_lz4"


def test_file_never_overwrites(tmp_path):
    (tmp_path / "x.h5").write_bytes(b"keep")
    with pytest.raises((FileExistsError, OSError)):
        ImageFile(str(tmp_path / "x.h5"), "d", 1, make_metadata(1, (2, 2), "uint8"), "none")
    assert (tmp_path / "x.h5").read_bytes() == b"keep"


def test_other_shape_or_dtype_does_not_match(tmp_path):
    f = ImageFile(str(tmp_path / "m.h5"), "d", 2, make_metadata(1, (2, 2), "uint8"), "none")
    assert f.matches(make_metadata(2, (2, 2), "uint8")) == ""
    assert "2 x 3" in f.matches(make_metadata(2, (2, 3), "uint8"))
    assert "uint16" in f.matches(make_metadata(2, (2, 2), "uint16"))
    f.discard()
