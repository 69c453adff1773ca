"""HDF5 files, SupRsync registration, and the recording engine with short integrations."""

import os
import stat
import time

import h5py
import numpy as np
import pytest

from socs_agents.agents.visibility_recorder.correlator import POLARIZATIONS, SimulatedCorrelator
from socs_agents.agents.visibility_recorder.engine import (
    EngineConfig,
    RecordingEngine,
    pipeline_summary,
)
from socs_agents.agents.visibility_recorder.schedule import DONE, RECORDING, Schedule
from socs_agents.agents.visibility_recorder.writer import (
    FileChunk,
    RegistrationError,
    VisibilityWriter,
    WriteError,
)
from socs_agents.db import SupRsyncDB, md5_file
from socs_agents.dev.testing import wait_for
from socs_agents.timeutil import ctime_code, unix_to_mjd_mpm


def test_correlator_shape_and_determinism():
    c = SimulatedCorrelator(n_antennas=4, n_channels=16, seed=3)
    v = c.integrate(1000.0, 0.1)
    assert v.shape == (10, 16, 4) == c.shape and v.dtype == np.complex64
    assert np.array_equal(v, c.integrate(1000.0, 0.1))
    assert not np.array_equal(v, c.integrate(1000.1, 0.1))
    autos = c.baselines[:, 0] == c.baselines[:, 1]
    assert np.all(v[autos].imag == 0) and np.all(v[autos].real >= 0)
    assert c.frequencies[0] > 30e6 and c.frequencies[-1] < 90e6


def chunk(tag="20261121_094151_fast_p1", index=0, n=3, t0=1_795_254_111.5):
    c = SimulatedCorrelator(n_antennas=3, n_channels=8)
    times = t0 + 0.1 * np.arange(n)
    return FileChunk(
        tag=tag,
        index=index,
        times=times,
        data=np.stack([c.integrate(t, 0.1) for t in times]),
        frequencies=c.frequencies,
        baselines=c.baselines,
        recording_start=t0,
    )


def test_writer_file_contents_rename_and_idempotent_registration(tmp_path):
    db = SupRsyncDB(str(tmp_path / "db" / "suprsync.db"))
    w = VisibilityWriter(str(tmp_path / "data"), "fast", "p1", 0.1, db, "drv_fast")
    ch = chunk()
    written = w.write(ch)
    assert db.count() == 0  # written first, registered in a second step
    assert w.register(written) is True
    assert written.path == str(tmp_path / "data" / ch.tag / f"{ch.tag}_00000.h5")
    assert written.remote_path == f"{ctime_code(ch.times[0])}/{ch.tag}/{ch.tag}_00000.h5"
    assert os.listdir(os.path.dirname(written.path)) == [f"{ch.tag}_00000.h5"]  # no temp left
    with h5py.File(written.path) as f:
        assert f["visibilities"].shape == (3, 6, 8, 4)
        assert np.array_equal(f["visibilities"][...], ch.data)
        assert np.array_equal(f["time"][...], ch.times)
        assert f["frequency"].shape == (8,) and f["baselines"].shape == (6, 2)
        assert [p.decode() for p in f["polarization"][...]] == list(POLARIZATIONS)
        assert (f.attrs["mode"], f.attrs["pipeline_id"]) == ("fast", "p1")
        assert f.attrs["integration_time"] == 0.1 and f.attrs["start_time"] == ch.times[0]
        assert f.attrs["n_integrations"] == 3
    (row,) = db.files()
    assert row["local_md5sum"] == md5_file(written.path) == written.md5
    assert (row["archive_name"], row["remote_path"]) == ("drv_fast", written.remote_path)
    assert [(t["timecode"], t["archive_name"]) for t in db.timecode_dirs()] == [
        (int(ctime_code(ch.times[0])), "drv_fast")
    ]
    db.add_files([])  # registering the same file again adds nothing
    w.register(w.write(ch))
    assert db.count() == 1


def test_writer_rename_failure_is_an_error(tmp_path):
    data = tmp_path / "data"
    w = VisibilityWriter(str(data), "slow", "p1", 10.0, None)
    ch = chunk()
    # The final name taken by a folder: the rename fails, the temporary file is removed.
    os.makedirs(data / ch.tag / f"{ch.tag}_00000.h5" / "x")
    with pytest.raises(WriteError, match=r"moving .*\.part to .*_00000.h5 failed"):
        w.write(ch)
    assert sorted(os.listdir(data / ch.tag)) == [f"{ch.tag}_00000.h5"]  # no temporary left


def test_writer_registration_failure_is_an_error(tmp_path):
    db = SupRsyncDB(str(tmp_path / "suprsync.db"))
    w = VisibilityWriter(str(tmp_path / "data"), "slow", "p1", 10.0, db)
    import sqlite3

    locker = sqlite3.connect(str(tmp_path / "suprsync.db"), isolation_level=None)
    locker.execute("BEGIN IMMEDIATE")
    db.engine.dispose()
    db2 = SupRsyncDB(str(tmp_path / "suprsync.db"), create_all=False, busy_timeout_ms=50)
    w.db = db2
    try:
        written = w.write(chunk())  # the file is complete on disk...
        with pytest.raises(RegistrationError, match="written but not registered") as e:
            w.register(written)  # ...and its registration fails, to be retried
        assert (e.value.reason, e.value.retry) == ("database_locked", True)
    finally:
        locker.execute("ROLLBACK")
        locker.close()


def test_writer_write_failure_is_an_error(tmp_path):
    data = tmp_path / "data"
    w = VisibilityWriter(str(data), "slow", "p1", 10.0, None)
    ch = chunk()
    os.makedirs(data / ch.tag)
    os.chmod(data / ch.tag, stat.S_IRUSR | stat.S_IXUSR)  # read-only folder
    try:
        if os.access(data / ch.tag, os.W_OK):
            pytest.skip("running as root: permissions do not stop writes")
        with pytest.raises(WriteError, match=r"writing .*\.part failed"):
            w.write(ch)
    finally:
        os.chmod(data / ch.tag, stat.S_IRWXU)


def test_pipeline_summary_precedence():
    args = dict(warning_pct=95, error_pct=99, activity="idle")
    assert pipeline_summary("booting", "", "", 50, **args) == ("booting", "starting up")
    assert pipeline_summary("shutdown", "x", "", 50, **args)[0] == "shutdown"
    assert pipeline_summary("running", "", "", 50, **args) == ("normal", "idle")
    assert pipeline_summary("running", "", "", 95.5, **args)[0] == "warning"
    assert pipeline_summary("running", "", "", 99.5, **args)[0] == "error"
    assert pipeline_summary("running", "", "file write failed: x", 96, **args) == (
        "error",
        "file write failed: x",
    )
    assert pipeline_summary("running", "writer thread died", "", 10, **args)[0] == "error"


def make_engine(tmp_path, per_file=3, lead=0.3, db=None, warn=95.0):
    sch = Schedule(str(tmp_path / "schedule.sqlite"))
    w = VisibilityWriter(str(tmp_path / "data"), "fast", "p1", 0.1, db, "drv_fast")
    e = RecordingEngine(
        sch,
        w,
        SimulatedCorrelator(n_antennas=3, n_channels=8),
        EngineConfig("fast", "p1", 0.1, per_file, now_lead=lead, disk_warning_pct=warn),
    )
    return e, sch


def test_engine_records_until_the_requested_stop(tmp_path):
    db = SupRsyncDB(str(tmp_path / "suprsync.db"))
    e, sch = make_engine(tmp_path, db=db)
    e.start()
    try:
        assert wait_for(lambda: e.state == "running", 5, "engine running")
        answer = e.request_start({"start_mjd": "now"})
        assert answer["response"] == str(tmp_path / "data" / answer["tag"])
        assert e.status()["op_type"] == "waiting"
        wait_for(lambda: e.status()["op_type"] == "recording", 3, "recording")
        stop_at = answer["requested_time"] + 1.05  # 10 integrations, then a partial one
        e.request_stop(dict(zip(("mjd", "mpm"), unix_to_mjd_mpm(stop_at), strict=False)))
        assert e.status()["op_type"] == "recording"  # not at once
        wait_for(lambda: sch.operations()[0].state == DONE, 5, "recording done")
        wait_for(lambda: e.files_written == 4, 5, "4 files")
    finally:
        e.shutdown()
    op = sch.operations()[0]
    assert op.files == 4 and op.actual_stop >= stop_at - 0.06
    # Woken early, then at the instant: never before it.
    assert 0 <= op.actual_start - op.start < 0.1
    names = sorted(os.listdir(tmp_path / "data" / op.tag))
    assert names == [f"{op.tag}_{i:05d}.h5" for i in range(4)]
    n = [h5py.File(tmp_path / "data" / op.tag / name).attrs["n_integrations"] for name in names]
    assert n == [3, 3, 3, 1]
    assert db.count("drv_fast") == 4
    status = e.status()
    assert status["summary"] == "shutdown" and status["files_written"] == 4
    assert status["data_rate"] > 0 and status["last_file"].endswith("_00003.h5")


class CountingSchedule(Schedule):
    """Counts the recording thread's reads of the open operations."""

    reads = 0

    def operations(self, open_only=False):
        if open_only:
            self.reads += 1
        return super().operations(open_only)


def test_engine_request_wakes_the_recording_thread_only_when_due(tmp_path):
    e, _ = make_engine(tmp_path, lead=0.6)
    e.schedule = sch = CountingSchedule(str(tmp_path / "counting.sqlite"))
    e.start()
    try:
        assert wait_for(lambda: e.state == "running", 5, "engine running")
        time.sleep(0.05)  # asleep now, with nothing scheduled
        reads = sch.reads
        answer = e.request_start({"start_mjd": "now"})
        time.sleep(0.3)
        # The answer went out without the thread reading the schedule: it sleeps on.
        assert sch.reads == reads
        wait_for(lambda: e.status()["op_type"] == "recording", 3, "recording")
        # Woken shortly before the start, then at it: on time all the same.
        op = sch.operations()[0]
        assert 0 <= op.actual_start - answer["requested_time"] < 0.1
        stop = e.request_stop({"stop_mjd": "now"})  # 0.6 s from now, mid-integration
        wait_for(lambda: sch.operations()[0].state == DONE, 3, "stopped")
        assert abs(sch.operations()[0].actual_stop - stop["requested_time"]) < 0.06
    finally:
        e.shutdown()


def test_engine_resumes_after_restart(tmp_path):
    e, sch = make_engine(tmp_path, lead=0.1)
    e.start()
    answer = e.request_start({"start_mjd": "now"})
    wait_for(lambda: e.files_written >= 1, 5, "a file")
    # A crash leaves a temporary file behind.
    leftover = tmp_path / "data" / answer["tag"] / ".leftover.h5.0badc0de.part"
    e.shutdown()
    leftover.write_bytes(b"partial")
    before = sch.operations()[0]
    assert before.state == RECORDING
    sch.close()
    e2, sch2 = make_engine(tmp_path, lead=0.1)
    e2.start()
    try:
        wait_for(lambda: e2.files_written >= 2, 5, "files after the restart")
        status = e2.status()
        assert status["op_type"] == "recording" and status["op_tag"] == answer["tag"]
        assert "resumed after a restart" in status["info"]
        assert "1 incomplete file(s) discarded" in status["resumed"]
        assert not leftover.exists()
        op = sch2.operations()[0]
        assert op.resumed == 1 and op.state == RECORDING
    finally:
        e2.shutdown()
    names = sorted(os.listdir(tmp_path / "data" / answer["tag"]))
    # Numbering continues after the files written before the restart: nothing overwritten.
    assert len(names) == len(set(names)) == sch2.operations()[0].files


def test_engine_write_error_shows_in_monitoring(tmp_path):
    e, sch = make_engine(tmp_path, per_file=1, lead=0.1)
    e.start()
    try:
        answer = e.request_start({"start_mjd": "now"})
        folder = tmp_path / "data" / answer["tag"]
        wait_for(lambda: e.files_written >= 1, 5, "a first file")
        # Take the name of a coming file: its rename will fail.
        index = e.files_written + 2
        os.makedirs(folder / f"{answer['tag']}_{index:05d}.h5" / "x")
        wait_for(lambda: e.write_errors >= 1, 5, "a write error")
        status = e.status()
        assert status["summary"] == "error" and "moving" in status["info"]
        assert "moving" in status["last_error"]
        wait_for(lambda: e.files_written >= index + 1, 5, "later files")
        assert e.status()["summary"] == "normal"  # the next file was written
        assert "moving" in e.status()["last_error"]  # but it is not forgotten
        assert e.status()["write_errors"] == 1
    finally:
        e.shutdown()


def test_engine_disk_warning(tmp_path):
    e, _ = make_engine(tmp_path, warn=0.0)
    e.start()
    try:
        wait_for(lambda: e.state == "running", 5, "running")
        status = e.status()
        assert status["summary"] == "warning" and "full (warning above 0%)" in status["info"]
        assert status["disk_size"] > status["disk_free"] > 0
    finally:
        e.shutdown()
