"""The recorder loses nothing and registers nothing it must not: durable writes with a crash
between their steps, allowed roots, a locked SupRsync database, re-registration at start,
bounded queues. Real HDF5 files, real SQLite, real threads and processes."""

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap

import h5py
import pytest
from test_visibility_writer_engine import chunk

from socs_agents.agents.visibility_recorder.correlator import SimulatedCorrelator
from socs_agents.agents.visibility_recorder.engine import EngineConfig, RecordingEngine
from socs_agents.agents.visibility_recorder.schedule import Schedule
from socs_agents.agents.visibility_recorder.writer import RegistrationError, VisibilityWriter
from socs_agents.db import SupRsyncDB, md5_file
from socs_agents.db.entries import AllowedRoots
from socs_agents.dev.testing import wait_for

TAG = "20261121_094151_fast_p1"


def make_engine(tmp_path, db=None, roots=None, per_file=1, **config):
    writer = VisibilityWriter(
        str(tmp_path / "data"), "fast", "p1", 0.1, db, "drv_fast", allowed_roots=roots
    )
    schedule = Schedule(str(tmp_path / "schedule.sqlite"))
    engine = RecordingEngine(
        schedule,
        writer,
        SimulatedCorrelator(n_antennas=3, n_channels=8),
        EngineConfig("fast", "p1", 0.1, per_file, now_lead=0.1, **config),
    )
    return engine, schedule


def test_crash_between_write_and_commit_leaves_no_final_name_file(tmp_path):
    """kill -9 after the HDF5 file is complete under its temporary name, before the
    fsync-rename-fsync: no file of the final name exists, nothing is registered, and the
    next start removes the temporary file."""
    data = tmp_path / "data"
    db_path = tmp_path / "suprsync.db"
    script = textwrap.dedent(
        f"""
        import os, signal, sys
        sys.path.insert(0, {os.path.dirname(__file__)!r})
        from socs_agents import runtime
        from socs_agents.agents.visibility_recorder import writer as writer_module
        from socs_agents.db import SupRsyncDB
        from test_visibility_writer_engine import chunk

        def crash(tmp, final, replace=True):
            assert os.path.getsize(tmp) > 0
            os.kill(os.getpid(), signal.SIGKILL)

        writer_module.runtime = type("R", (), {{
            "temp_path": staticmethod(runtime.temp_path), "commit_file": staticmethod(crash)
        }})
        w = writer_module.VisibilityWriter({str(data)!r}, "fast", "p1", 0.1,
                                           SupRsyncDB({str(db_path)!r}), "drv_fast")
        w.register(w.write(chunk(tag={TAG!r})))
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=60)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()
    names = os.listdir(data / TAG)
    assert len(names) == 1 and names[0].startswith(f".{TAG}_00000.h5.")  # the temporary
    assert names[0].endswith(".part")
    db = SupRsyncDB(str(db_path))
    engine, _ = make_engine(tmp_path, db=db)
    engine.start()
    try:
        wait_for(lambda: engine.state == "running", 5, "engine running")
        assert os.listdir(data / TAG) == []  # removed at start, never registered
        assert db.count() == 0
    finally:
        engine.shutdown()


def test_writer_commits_before_registering(tmp_path):
    """The registered md5 is that of the file under its final name, written and fsynced
    before the row exists."""
    db = SupRsyncDB(str(tmp_path / "suprsync.db"))
    w = VisibilityWriter(str(tmp_path / "data"), "fast", "p1", 0.1, db, "drv_fast")
    written = w.write(chunk(tag=TAG))
    assert os.listdir(tmp_path / "data" / TAG) == [f"{TAG}_00000.h5"]
    w.register(written)
    (row,) = db.files()
    assert row["local_md5sum"] == md5_file(written.path)


def test_files_outside_the_allowed_roots_are_refused_and_counted(tmp_path):
    db = SupRsyncDB(str(tmp_path / "suprsync.db"))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    w = VisibilityWriter(str(tmp_path / "data"), "fast", "p1", 0.1, db, "drv_fast")
    # A recording folder that is a link out of the data dir: resolved, then refused.
    (tmp_path / "data").mkdir()
    os.symlink(elsewhere, tmp_path / "data" / TAG)
    written = w.write(chunk(tag=TAG))
    with pytest.raises(RegistrationError, match="outside the allowed roots") as e:
        w.register(written)
    assert (e.value.reason, e.value.retry) == ("outside_allowed_root", False)
    assert db.count() == 0

    # Through the engine: a data dir outside --allowed-root; every file refused, counted.
    db2 = SupRsyncDB(str(tmp_path / "second.db"))
    engine, _ = make_engine(tmp_path / "second", db=db2, roots=AllowedRoots([str(elsewhere)]))
    engine.start()
    try:
        engine.request_start({"start_mjd": "now"})
        wait_for(lambda: engine.counters["outside_allowed_root"] >= 2, 5, "refusals")
        status = engine.status()
        assert status["summary"] == "error" and "outside the allowed roots" in status["info"]
        assert status["counters"]["outside_allowed_root"] >= 2
        assert status["pending_registration"] == 0  # refused, not retried
        assert status["files_written"] >= 2 and db2.count() == 0
    finally:
        engine.shutdown()


def hold_write_lock(db_path):
    locker = sqlite3.connect(str(db_path), isolation_level=None)
    locker.execute("BEGIN IMMEDIATE")
    return locker


def test_locked_database_during_recording_registers_every_file_after_release(tmp_path):
    db_path = tmp_path / "suprsync.db"
    SupRsyncDB(str(db_path)).close()
    db = SupRsyncDB(str(db_path), create_all=False, busy_timeout_ms=50)
    engine, schedule = make_engine(tmp_path, db=db)
    engine.start()
    locker = hold_write_lock(db_path)
    try:
        answer = engine.request_start({"start_mjd": "now"})
        wait_for(lambda: engine.pending_registration >= 3, 5, "files waiting for the database")
        status = engine.status()
        assert status["summary"] == "error" and "not registered" in status["info"]
        assert status["counters"]["database_locked"] >= 3
        assert db.count() == 0
        locker.execute("ROLLBACK")
        wait_for(
            lambda: engine.pending_registration == 0 and engine.files_registered >= 3,
            10,
            "the waiting files registered",
        )
        engine.request_stop({"stop_mjd": "now"})
        wait_for(lambda: schedule.operations()[0].state == "done", 5, "recording done")
        wait_for(lambda: engine.files_registered == engine.files_written, 5, "all registered")
        assert engine.status()["summary"] == "normal"
    finally:
        locker.close()
        engine.shutdown()
    on_disk = sorted(os.listdir(tmp_path / "data" / answer["tag"]))
    rows = sorted(os.path.basename(r["local_path"]) for r in db.files())
    assert rows == on_disk and len(on_disk) == engine.files_written


def test_restart_registers_files_written_but_not_registered(tmp_path):
    """Files complete on disk without a row (the agent stopped between write and
    registration, or a registration kept failing) are registered at the next start; a
    file of the final name that is not HDF5 is counted, and other pipelines' files in the
    same data dir are left alone."""
    data = tmp_path / "data"
    unregistered = VisibilityWriter(str(data), "fast", "p1", 0.1, None, "drv_fast")
    paths = [unregistered.write(chunk(tag=TAG, index=i)).path for i in range(3)]
    (data / TAG / f"{TAG}_00003.h5").write_bytes(b"not hdf5")
    other = VisibilityWriter(str(data), "fast", "p2", 0.1, None, "drv_fast")
    other_tag = TAG.replace("_p1", "_p2")
    other.write(chunk(tag=other_tag))
    other_temp = data / other_tag / f".{other_tag}_00001.h5.12345678.part"
    other_temp.write_bytes(b"being written by p2")
    db = SupRsyncDB(str(tmp_path / "suprsync.db"))
    engine, _ = make_engine(tmp_path, db=db)
    engine.start()
    try:
        wait_for(lambda: engine.files_registered == 3, 10, "the 3 files registered")
        assert engine.counters["unreadable_file"] == 1
        assert sorted(r["local_path"] for r in db.files()) == paths
        with h5py.File(paths[0]) as f:
            start = f.attrs["start_time"]
        row = [r for r in db.files() if r["local_path"] == paths[0]][0]
        assert row["remote_path"].startswith(f"{str(int(start))[:5]}/{TAG}/")
        assert row["local_md5sum"] == md5_file(paths[0])
        assert other_temp.exists()  # another pipeline's temporary file is not touched
    finally:
        engine.shutdown()
    # Idempotent: a second start registers nothing again.
    engine2, _ = make_engine(tmp_path / "again", db=db)
    engine2.writer = VisibilityWriter(str(data), "fast", "p1", 0.1, db, "drv_fast")
    engine2.start()
    try:
        wait_for(lambda: engine2.state == "running", 5, "running")
        wait_for(lambda: engine2.counters["unreadable_file"] == 1, 5, "the scan done")
        assert engine2.files_registered == 0 and db.count() == 3
    finally:
        engine2.shutdown()


def test_writer_backlog_is_bounded_and_counted(tmp_path):
    """While the writer waits on a locked database, integrated files wait in a bounded
    queue; what is over the bound is dropped and counted, never held without limit."""
    db_path = tmp_path / "suprsync.db"
    SupRsyncDB(str(db_path)).close()
    db = SupRsyncDB(str(db_path), create_all=False, busy_timeout_ms=1500)
    engine, _ = make_engine(tmp_path, db=db, max_queued_files=2)
    engine.start()
    locker = hold_write_lock(db_path)
    try:
        engine.request_start({"start_mjd": "now"})
        wait_for(lambda: engine.counters["writer_backlog_full"] >= 1, 10, "a full backlog")
        assert len(engine._files) <= 2
        assert "wait for the writer" in engine.status()["last_error"]
    finally:
        locker.execute("ROLLBACK")
        locker.close()
        engine.shutdown()


def test_retry_list_is_bounded(tmp_path):
    db_path = tmp_path / "suprsync.db"
    SupRsyncDB(str(db_path)).close()
    db = SupRsyncDB(str(db_path), create_all=False, busy_timeout_ms=20)
    engine, _ = make_engine(tmp_path, db=db, max_retry_files=2)
    engine.start()
    locker = hold_write_lock(db_path)
    try:
        engine.request_start({"start_mjd": "now"})
        wait_for(lambda: engine.counters["retry_list_full"] >= 1, 10, "a full retry list")
        assert engine.pending_registration == 2
    finally:
        locker.execute("ROLLBACK")
        locker.close()
        engine.shutdown()
    # What did not fit is registered at the next start.
    written = engine.files_written
    engine2, _ = make_engine(tmp_path, db=db)
    engine2.start()
    try:
        wait_for(lambda: db.count() >= written, 10, "every file registered after restart")
    finally:
        engine2.shutdown()


def test_files_found_at_start_beyond_the_bound_are_registered_in_turn(tmp_path):
    """More unregistered files than --max-retry-files: the scan holds at most that many
    paths at once and scans again when they are done, until every file is registered."""
    data = tmp_path / "data"
    unregistered = VisibilityWriter(str(data), "fast", "p1", 0.1, None, "drv_fast")
    paths = [unregistered.write(chunk(tag=TAG, index=i)).path for i in range(7)]
    db = SupRsyncDB(str(tmp_path / "suprsync.db"))
    engine, _ = make_engine(tmp_path, db=db, max_retry_files=3)
    engine.start()
    try:
        wait_for(lambda: engine.files_registered == 7, 10, "all 7 registered")
        assert len(engine._leftovers) == 0 and engine.pending_registration == 0
    finally:
        engine.shutdown()
    assert sorted(r["local_path"] for r in db.files()) == paths
