"""Reading the DUNE HDF5 layout with h5py, and discovering files with watchdog."""

import os
import subprocess
import sys
import threading
import time

import h5py
import numpy as np
import pytest

from socs_agents.agents.file_orchestrator.discovery import Discovery
from socs_agents.agents.file_orchestrator.layout import LayoutError, parse_group_name, read_layout
from socs_agents.dev.sim.dune import DuneWriter, check_record
from socs_agents.dev.testing import wait_for


@pytest.mark.parametrize(
    "name,expected",
    [
        ("TriggerRecord000012.0001", ("TriggerRecord", 12, 1)),
        ("TriggerRecord12.3", ("TriggerRecord", 12, 3)),
        ("TriggerRecord0000000042", ("TriggerRecord", 42, 0)),
        ("TimeSlice000007", ("TimeSlice", 7, 0)),
        ("TimeSlice7.1", None),
        ("TriggerRecordX", None),
        ("RawData", None),
        ("triggerrecord000001.0000", None),
    ],
)
def test_group_names(name, expected):
    assert parse_group_name(name) == expected


def test_simulated_file_reads_back(tmp_path):
    w = DuneWriter(str(tmp_path), run_number=42)
    path, ids = w.write_file(records=3, sequences=2)
    assert not os.path.exists(path + ".writing")
    lay = read_layout(path)
    assert lay.run_number == 42
    assert lay.records == {"TriggerRecord": ids} and len(ids) == 6
    assert lay.attrs["application_name"] == "dataflow0" and "closing_timestamp" in lay.attrs
    assert abs(lay.created - time.time()) < 60
    assert check_record(path, "TriggerRecord", 2, 1) > 0


def test_other_widths_and_time_slices(tmp_path):
    w = DuneWriter(str(tmp_path), run_number=3, record_digits=9, sequence_digits=2)
    path, ids = w.write_file(records=2, record_type="TimeSlice")
    with h5py.File(path) as f:
        assert sorted(f.keys()) == ["TimeSlice000000001", "TimeSlice000000002"]
    assert read_layout(path).records == {"TimeSlice": [(1, 0), (2, 0)]}


def test_run_number_from_the_name_and_not_a_record_file(tmp_path):
    path = str(tmp_path / "np04_run000321_0000.hdf5")
    with h5py.File(path, "w") as f:
        f.create_group("TriggerRecord000001.0000/RawData")
    assert read_layout(path).run_number == 321
    other = str(tmp_path / "calibration.hdf5")
    with h5py.File(other, "w") as f:
        f.create_dataset("x", data=np.arange(3))
        f.attrs["run_number"] = 1
    with pytest.raises(LayoutError):
        read_layout(other)
    with pytest.raises(FileNotFoundError):
        read_layout(str(tmp_path / "missing.hdf5"))


HOLD_OPEN = """
import sys, h5py
f = h5py.File(sys.argv[1], "w")
f.attrs["run_number"] = 1
f.create_group("TriggerRecord000001.0000")
f.flush()
print("open", flush=True)
sys.stdin.readline()
f.close()
"""


def test_a_file_open_for_writing_is_refused_until_closed(tmp_path):
    # HDF5 shares a file opened twice in one process: the writer must be another process.
    path = str(tmp_path / "open_run000001.hdf5")
    writer = subprocess.Popen(
        [sys.executable, "-c", HOLD_OPEN, path],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert writer.stdout.readline().strip() == "open"
        with pytest.raises(OSError):
            read_layout(path)  # locked by the writer
    finally:
        writer.communicate("close\n", timeout=10)
    assert read_layout(path).records == {"TriggerRecord": [(1, 0)]}


WRITE_SLOWLY = """
import sys
from socs_agents.dev.sim.dune import DuneWriter
path, ids = DuneWriter(sys.argv[1], run_number=2).write_file(records=3, before_close_delay=0.3)
print(path, flush=True)
"""


class Collector:
    def __init__(self):
        self.added, self.removed = {}, []
        self.lock = threading.Lock()

    def add(self, path, layout):
        with self.lock:
            self.added[path] = layout

    def gone(self, path):
        with self.lock:
            self.removed.append(path)


def test_discovery_renames_closes_deletes_and_scans(tmp_path):
    vol = tmp_path / "vol"
    (vol / "sub").mkdir(parents=True)
    w0 = DuneWriter(str(vol), run_number=1)
    before, _ = w0.write_file(records=2)  # there before the watch starts
    known_gone = str(vol / "gone_run000001.hdf5")  # known, but deleted while down
    c = Collector()
    d = Discovery([str(vol)], ["*.hdf5"], c.add, c.gone, known=[known_gone], rescan_interval=0)
    d.start()
    try:
        wait_for(lambda: before in c.added and known_gone in c.removed, 10, "first scan")
        # renamed into place while still open by another process (its last close comes
        # 0.3 s after the rename)
        renamed = subprocess.run(
            [sys.executable, "-c", WRITE_SLOWLY, str(vol / "sub")],
            check=True,
            capture_output=True,
            text=True,
            timeout=30,
        ).stdout.strip()
        ids = [(1, 0), (2, 0), (3, 0)]
        w = DuneWriter(str(vol / "sub"), run_number=2)
        w.file_index = 1
        # written directly under its final name
        direct = str(vol / "sub" / "direct_run000002.hdf5")
        with h5py.File(direct, "w") as f:
            f.attrs["run_number"] = 2
            f.create_group("TimeSlice000001/RawData")
        # never renamed: ignored
        unfinished, _ = w.write_file(records=1, rename=False)
        wait_for(lambda: renamed in c.added and direct in c.added, 10, "new files")
        assert c.added[renamed].records == {"TriggerRecord": ids}
        assert c.added[direct].records == {"TimeSlice": [(1, 0)]}
        assert d.counters["retries"] >= 1  # the renamed file was still locked
        os.remove(renamed)
        wait_for(lambda: renamed in c.removed, 10, "removal")
        assert unfinished not in c.added
        assert set(c.added) == {before, renamed, direct}
    finally:
        d.stop()
    assert not d.running
