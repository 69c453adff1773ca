"""The registrar on a real SQLite file: batching, retries, lock survival, journal replay."""

import os
import sqlite3
import threading
import time

import pytest

from socs_agents.agents.pysmurf_monitor.journal import Journal
from socs_agents.agents.pysmurf_monitor.messages import parse_datagram
from socs_agents.agents.pysmurf_monitor.registrar import Registrar, RegistrarConfig
from socs_agents.db import SupRsyncDB
from socs_agents.dev.sim.smurf import SmurfSimulator
from socs_agents.dev.testing import wait_for


@pytest.fixture
def sim(tmp_path):
    s = SmurfSimulator(str(tmp_path / "smurf_data"), port=9)
    yield s
    s.close()


@pytest.fixture
def db(tmp_path):
    d = SupRsyncDB(str(tmp_path / "db" / "suprsync.db"), busy_timeout_ms=100)
    yield d
    d.close()


def make(db, tmp_path=None, journal=True, **cfg):
    j = Journal(str(tmp_path / "journal")) if journal and tmp_path is not None else None
    reports = []
    r = Registrar(
        db,
        j,
        config=RegistrarConfig(**cfg),
        report=lambda level, text: reports.append((level, text)),
    )
    r.reports = reports
    return r


def submit_all(reg, datagrams):
    for dg in datagrams:
        reg.submit(parse_datagram(dg))


def test_files_registered_with_timecode_dirs_and_counters(db, sim, tmp_path):
    reg = make(db, tmp_path)
    reg.start()
    files = sim.files(30, g3_every=10)
    submit_all(reg, [dg for _, dg in files])
    assert reg.drain(10)
    assert db.count() == 30 and reg.counters["registered"] == 30
    assert {p for p, _ in files} == {r["local_path"] for r in db.files(limit=None)}
    archives = {t["archive_name"] for t in db.timecode_dirs()}
    assert archives == {"smurf", "timestreams"}
    submit_all(reg, [dg for _, dg in files[:5]])
    assert reg.drain(10)
    assert db.count() == 30 and reg.counters["duplicates"] == 5
    assert reg.pending() == 0 and reg.lag() == 0
    reg.stop()
    assert not os.listdir(tmp_path / "journal"), "a settled journal leaves nothing behind"


def test_missing_file_is_retried_until_it_appears(db, sim, tmp_path):
    reg = make(db, tmp_path, missing_file_timeout=5.0)
    reg.start()
    path, dg = sim.data_file(fmt="txt")
    os.rename(path, path + ".tmp")
    submit_all(reg, [dg])
    wait_for(lambda: reg.counters["missing_file_retries"] >= 2, 5, "two failed attempts")
    assert db.count() == 0 and reg.pending() == 1
    os.rename(path + ".tmp", path)
    assert reg.drain(5) and db.count() == 1 and not reg.rejected
    reg.stop()


def test_missing_file_is_reported_after_the_timeout(db, sim, tmp_path):
    reg = make(db, tmp_path, missing_file_timeout=0.3)
    reg.start()
    path, dg = sim.data_file(fmt="txt")
    os.remove(path)
    submit_all(reg, [dg])
    assert reg.drain(5)
    assert reg.rejected["missing_file"] == 1 and db.count() == 0
    assert any("missing_file" in text and path in text for _, text in reg.reports)
    reg.stop()


def test_bad_path_is_rejected_not_retried(db, tmp_path):
    reg = make(db, tmp_path)
    reg.start()
    sim = SmurfSimulator(str(tmp_path / "x"), port=9)
    _, dg = sim.data_file()
    reg.submit(parse_datagram(dg.replace(b'"path": "/', b'"path": "/tmp/../')))
    assert reg.drain(5) and reg.rejected["dotdot_path"] == 1
    reg.stop()
    sim.close()


def test_big_files_use_their_own_workers(db, sim, tmp_path):
    reg = make(db, tmp_path, big_file_bytes=4096)
    reg.start()
    big_path, big_dg = sim.big_file(1 << 20)
    small = [dg for _, dg in sim.files(5, g3_every=0)]
    submit_all(reg, [big_dg] + small)
    assert reg.drain(10) and db.count() == 6 and reg.counters["big_files"] == 1
    reg.stop()


def test_locked_database_keeps_everything_and_catches_up_in_order(db, sim, tmp_path):
    reg = make(db, tmp_path, backoff_max=0.2)
    reg.start()
    locker = sqlite3.connect(db.db_path, isolation_level=None)
    locker.execute("BEGIN IMMEDIATE")
    files = sim.files(40, g3_every=0)
    submit_all(reg, [dg for _, dg in files])
    wait_for(lambda: reg.degraded, 10, "the registrar to notice the lock")
    assert reg.pending() == 40 and reg.lag() > 0
    assert "locked" in reg.last_error
    locker.execute("ROLLBACK")
    locker.close()
    assert reg.drain(10)
    assert not reg.degraded and db.count() == 40
    rows = db.files(limit=None, newest_first=False)
    # One row per file, committed in the order the datagrams arrived.
    assert [r["local_path"] for r in rows] == [p for p, _ in files]
    reg.stop()


def test_journal_replays_what_a_killed_run_left(db, sim, tmp_path):
    dead = make(db, tmp_path)  # never started: like a process killed before writing
    files = sim.files(12, g3_every=4)
    submit_all(dead, [dg for _, dg in files])
    os.close(dead.journal._fd)  # what kill -9 leaves: the lines written so far
    assert db.count() == 0
    # Two of them were written before the kill: the replay must not duplicate them.
    from socs_agents.agents.pysmurf_monitor.rules import plan_file
    from socs_agents.db import make_entry

    first = [
        plan_file(parse_datagram(dg).payload, parse_datagram(dg).pub_id, parse_datagram(dg).archive)
        for _, dg in files[:2]
    ]
    db.add_files(
        [
            make_entry(p.local_path, p.remote_path, p.archive_name, known_archives=None)
            for p in first
        ]
    )
    again = make(db, tmp_path)
    again.start()
    assert again.counters["replayed"] == 12
    assert again.drain(10)
    assert db.count() == 12 and again.counters["duplicates"] == 2
    again.stop()
    third = make(db, tmp_path)
    third.start()
    assert third.counters["replayed"] == 0
    third.stop()


def test_journal_segments_roll_and_are_removed_when_settled(tmp_path):
    j = Journal(str(tmp_path / "j"), segment_bytes=100)
    segs = [j.append(b'{"x": "%d"}' % i + b" " * 40) for i in range(10)]
    assert len(set(segs)) > 2 and j.pending() == 10
    for s in segs:
        j.done(s)
    assert j.pending() == 0
    j.close()
    assert os.listdir(tmp_path / "j") == []


def test_stop_drains_before_returning(db, sim, tmp_path):
    reg = make(db, tmp_path)
    reg.start()
    files = sim.files(200, g3_every=0)
    t = threading.Thread(target=submit_all, args=(reg, [dg for _, dg in files]))
    t.start()
    t.join()
    assert reg.stop(drain_timeout=20) is True
    assert db.count() == 200


def test_a_stream_of_files_is_committed_in_batches(db, sim, tmp_path):
    reg = make(db, tmp_path, commit_interval=0.02)
    reg.start()
    files = sim.files(400, g3_every=0)
    t0 = time.monotonic()
    for i in range(0, len(files), 4):
        reg.submit_many([parse_datagram(dg) for _, dg in files[i : i + 4]])
    assert reg.drain(20)
    elapsed = time.monotonic() - t0
    reg.stop()
    assert db.count() == 400 and reg.counters["registered"] == 400
    # At most one commit per interval, however the files trickle in.
    assert reg.counters["batches"] <= elapsed / 0.02 + 1
    assert reg.counters["batches"] < 100
