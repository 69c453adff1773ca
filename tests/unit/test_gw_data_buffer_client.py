"""The GW client simulator: strain, chunks with absolute GPS times, local files."""

import h5py
import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from socs_agents.agents.gw_data_buffer import rules
from socs_agents.dev.sim import gw


def test_simulated_strain_is_seeded_and_strain_sized():
    a, b = gw.simulated_strain(0.5, seed=3, chirp_at=0.2), gw.simulated_strain(0.5, seed=3)
    assert len(a) == 2048 and a != b  # the chirp is there
    assert a[:800] == b[:800] and gw.simulated_strain(0.5, seed=4) != b
    assert 1e-23 < max(abs(x) for x in b) < 1e-19


@given(st.integers(1, 5000), st.integers(1, 4096), st.floats(1e8, 2e9))
def test_chunks_cover_every_sample_once_with_absolute_times(n, size, gps):
    strain = [float(i) for i in range(n)]
    out = list(gw.chunks(strain, gps, size))
    assert [x for c in out for x in c["h"]] == strain  # nothing re-sent, nothing skipped
    for k, c in enumerate(out):
        assert c["t"] == [gps + k * size * gw.DT, gw.DT]  # no off-by-one start
        rules.check_times(c["h"], c["t"])


def test_shell_fixture_is_valid():
    body = gw.shell_fixture()
    chunk = rules.parse_chunk(__import__("json").dumps(body).encode())
    assert len(chunk.t) == len(chunk.h) == 4 and chunk.t0 > 1e9


def test_read_strain_hdf5_and_text(tmp_path):
    h5 = tmp_path / "L-L1_GWOSC_4KHZ.hdf5"
    with h5py.File(h5, "w") as f:
        ds = f.create_dataset("strain/Strain", data=np.array([k * 1e-21 for k in range(10)]))
        ds.attrs["Xstart"] = 1126259446.0
        ds.attrs["Xspacing"] = 1 / 4096
    values, t0, dt = gw.read_strain(str(h5))
    assert values[3] == 3 * 1e-21 and t0 == 1126259446.0 and dt == 1 / 4096
    txt = tmp_path / "strain.txt"
    txt.write_text("# gps strain\n1000.0 1e-21\n1000.5 2e-21\n1001.0 3e-21\n")
    assert gw.read_strain(str(txt)) == ([1e-21, 2e-21, 3e-21], 1000.0, 0.5)
    plain = tmp_path / "plain.txt"
    plain.write_text("1e-21\n2e-21\n")
    assert gw.read_strain(str(plain)) == ([1e-21, 2e-21], 0.0, gw.DT)
