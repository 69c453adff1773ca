"""The orchestrator's state machine on a real SQLite file, with an injected clock."""

import sqlite3

import pytest

from socs_agents.agents.file_orchestrator.http_api import error_answer
from socs_agents.agents.file_orchestrator.state import (
    TIME_SLICE,
    TRIGGER_RECORD,
    DomainError,
    Invalid,
    NotFound,
    State,
    checkpoint_file,
)

TR, TS = TRIGGER_RECORD, TIME_SLICE


class Clock:
    def __init__(self, t=1_700_000_000.0):
        self.t = t

    def __call__(self):
        return self.t


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def db_path(tmp_path):
    return str(tmp_path / "state" / "orchestrator.db")


def make(db_path, clock, **kw):
    kw.setdefault("lease_timeout", 10.0)
    return State(db_path, clock=clock, **kw)


def answer(fn, *args, **kw):
    """(status, body) as the HTTP API answers: the one error table maps domain errors."""
    try:
        out = fn(*args, **kw)
    except DomainError as e:
        return error_answer(e)
    return 200, out if isinstance(out, dict) else out.answer()


def read(state, host="daq1", rtype=TR, file=""):
    return answer(state.read_next, host, rtype, file)


def status_of(fn, *args, **kw):
    return answer(fn, *args, **kw)[0]


def test_request_read_complete(db_path, clock):
    s = make(db_path, clock)
    assert s.add_file("daq1", "/d/a.hdf5", 5, TR, [(2, 0), (1, 0), (1, 1)])["added"] == 3
    # no credit yet: 429, whatever is pending
    assert read(s)[0] == 429
    assert s.request(TR)["credits"] == 1
    status, body = read(s)
    assert status == 200
    assert body == {
        "file": "/d/a.hdf5",
        "run_number": 5,
        "trigger_number": 1,
        "sequence_number": 0,
        "type": TR,
    }
    assert s.counts()["credits_tr"] == 0 and s.counts()["active"] == 1
    assert s.complete(5, 1, 0)["status"] == "ok"
    c = s.counts()
    assert (c["pending"], c["active"], c["done"], c["completed"], c["reads"]) == (2, 0, 1, 1, 1)


def test_oldest_first_across_files_and_hosts(db_path, clock):
    s = make(db_path, clock)
    s.add_file("daq1", "/d/a.hdf5", 1, TR, [(3, 0), (4, 0)])
    s.add_file("daq2", "/d/b.hdf5", 1, TR, [(1, 0)])
    s.add_file("daq1", "/d/c.hdf5", 1, TR, [(1, 0)])
    s.request(TR, 10)
    got = [(b["file"], b["trigger_number"]) for b in (read(s)[1], read(s)[1], read(s)[1])]
    assert got == [("/d/a.hdf5", 3), ("/d/a.hdf5", 4), ("/d/c.hdf5", 1)]
    # daq1 has nothing left: 404, and the credit is kept
    assert read(s)[0] == 404
    assert s.counts()["credits_tr"] == 7
    assert read(s, host="daq2")[1]["file"] == "/d/b.hdf5"


def test_read_of_a_named_file(db_path, clock):
    s = make(db_path, clock)
    s.add_file("daq1", "/d/a.hdf5", 1, TR, [(1, 0), (2, 0)])
    s.add_file("daq1", "/d/b.hdf5", 1, TR, [(7, 0), (8, 0)])
    s.request(TR, 3)
    assert read(s, file="/d/b.hdf5")[1]["trigger_number"] == 7
    assert read(s, file="/d/x.hdf5")[0] == 404
    assert read(s)[1]["trigger_number"] == 1


def test_types_are_separate(db_path, clock):
    s = make(db_path, clock)
    s.add_file("daq1", "/d/ts.hdf5", 2, TS, [(1, 0), (2, 0)])
    s.request(TR)
    assert read(s, rtype=TS)[0] == 429
    assert read(s, rtype=TR)[0] == 404
    s.request(TS)
    status, body = read(s, rtype=TS)
    assert status == 200 and body["type"] == TS and body["trigger_number"] == 1
    # nothing completes time slices: done once handed out, never left active
    c = s.counts()
    assert (c["active"], c["done"], c["pending_ts"], c["credits_tr"]) == (0, 1, 1, 1)


def test_time_slices_can_be_leased(db_path, clock):
    s = make(db_path, clock, lease_timeslices=True)
    s.add_file("daq1", "/d/ts.hdf5", 2, TS, [(1, 0)])
    s.request(TS)
    assert read(s, rtype=TS)[0] == 200
    assert s.counts()["active_ts"] == 1
    assert s.complete(2, 1, 0, TS)["status"] == "ok"
    assert s.counts()["done"] == 1


def test_complete_unknown_done_and_preference(db_path, clock):
    s = make(db_path, clock)
    assert status_of(s.complete, 1, 1, 0) == 404
    with pytest.raises(NotFound):
        s.complete(1, 1, 0)
    s.add_file("daq1", "/d/a.hdf5", 1, TR, [(1, 0)])
    s.add_file("daq2", "/d/b.hdf5", 1, TR, [(1, 0)])  # the same key in two files
    s.request(TR)
    assert read(s, host="daq2")[1]["file"] == "/d/b.hdf5"
    # the writer completes with file "": the record that was handed out is the one done
    assert s.complete(1, 1, 0) == {"status": "ok", "file": "/d/b.hdf5"}
    assert s.counts()["pending"] == 1
    # completing again is fine (the writer also completes after failed writes)
    assert s.complete(1, 1, 0, file="/d/b.hdf5") == {"status": "ok", "already_done": True}
    assert status_of(s.complete, 1, 1, 1) == 404
    assert status_of(s.complete, 1, 1, 0, TS) == 404
    assert s.counts()["completed"] == 1


def test_lease_expiry_hands_the_record_out_again(db_path, clock):
    s = make(db_path, clock, lease_timeout=10)
    s.add_file("daq1", "/d/a.hdf5", 1, TR, [(1, 0), (2, 0)])
    s.request(TR, 3)
    assert read(s)[1]["trigger_number"] == 1
    clock.t += 9.9
    assert s.expire_leases() == 0
    assert read(s)[1]["trigger_number"] == 2
    clock.t += 0.2
    # read_next expires first: record 1 is pending again and is the oldest
    status, body = read(s)
    assert status == 200 and body["trigger_number"] == 1
    c = s.counts()
    assert (c["leases_expired"], c["active"], c["pending"]) == (1, 2, 0)
    # a late completion of the expired hand-out still counts
    assert status_of(s.complete, 1, 1, 0) == 200


def test_remove_file_withdraws_pending_only(db_path, clock):
    done = []
    s = make(db_path, clock, on_file_done=done.append)
    s.add_file("daq1", "/d/a.hdf5", 1, TR, [(1, 0), (2, 0), (3, 0)])
    s.request(TR, 2)
    read(s)
    assert s.remove_file("daq1", "/d/a.hdf5")["withdrawn"] == 2
    assert read(s)[0] == 404
    c = s.counts()
    assert (c["files"], c["files_removed"], c["pending"], c["active"], c["withdrawn"]) == (
        0,
        1,
        0,
        1,
        2,
    )
    # the active record of a removed file is withdrawn when its lease expires
    clock.t += 11
    assert s.expire_leases() == 1
    assert s.counts()["withdrawn"] == 3 and s.counts()["active"] == 0
    assert done == []  # a removed file is never "done"
    # unknown file: 200, nothing withdrawn
    assert s.remove_file("daq1", "/d/zzz.hdf5")["known"] is False


def test_add_again_is_idempotent_and_revives_withdrawn(db_path, clock):
    s = make(db_path, clock)
    s.add_file("daq1", "/d/a.hdf5", 1, TR, [(1, 0), (2, 0)])
    out = s.add_file("daq1", "/d/a.hdf5", 1, TR, [(1, 0), (2, 0), (3, 0)])
    assert (out["added"], out["known"]) == (1, 2)
    s.remove_file("daq1", "/d/a.hdf5")
    assert s.counts()["pending"] == 0
    assert s.add_file("daq1", "/d/a.hdf5", 1, TR, [(1, 0)])["added"] == 1
    assert s.counts()["pending"] == 1 and s.counts()["files"] == 1


def test_file_done_callback(db_path, clock):
    done = []
    s = make(db_path, clock, on_file_done=done.append)
    s.add_file("daq1", "/d/a.hdf5", 1, TR, [(1, 0), (2, 0)])
    s.request(TR, 2)
    read(s)
    read(s)
    s.complete(1, 1, 0)
    assert done == []
    s.complete(1, 2, 0)
    assert [f.path for f in done] == ["/d/a.hdf5"]
    assert [f.path for f in s.files_to_register()] == ["/d/a.hdf5"]
    s.mark_registered(done[0].id)
    assert s.files_to_register() == []


def test_everything_survives_a_reopen(db_path, clock):
    s = make(db_path, clock, lease_timeout=10)
    s.add_file("daq1", "/d/a.hdf5", 3, TR, [(n, 0) for n in range(1, 6)])
    s.add_file("daq1", "/d/t.hdf5", 3, TS, [(1, 0), (2, 0)])
    s.request(TR, 4)
    s.request(TS, 1)
    read(s)  # record 1 active
    read(s)  # record 2 active
    s.complete(3, 1, 0)  # record 1 done
    read(s, rtype=TS)  # time slice 1 done
    before = s.counts()
    s.con.close()  # no clean close: as after a kill -9
    s = make(db_path, clock, lease_timeout=10)
    assert s.counts() == before
    assert before["credits_tr"] == 2 and before["active"] == 1 and before["done"] == 2
    # the active record is still leased, completes, and is not handed out again
    assert read(s)[1]["trigger_number"] == 3
    assert status_of(s.complete, 3, 2, 0) == 200
    s.con.close()
    # a lease that went stale while the agent was down expires at the first look
    clock.t += 60
    s = make(db_path, clock, lease_timeout=10)
    assert s.expire_leases() == 1
    assert read(s)[1]["trigger_number"] == 3


def test_rejections_change_nothing(db_path, clock):
    s = make(db_path, clock)
    s.add_file("daq1", "/d/a.hdf5", 1, TR, [(1, 0)])
    dump = lambda: list(sqlite3.connect(db_path).iterdump())  # noqa: E731
    before, counts = dump(), s.counts()
    for call in (
        lambda: s.add_file("daq1", "/d/b.hdf5", 1, "Slice", [(1, 0)]),
        lambda: s.request("Nope"),
        lambda: s.request(TR, 0),
        lambda: s.read_next("daq1", "x"),
        lambda: s.complete(1, 1, 0, "y"),
    ):
        with pytest.raises(Invalid):
            call()
    assert dump() == before and s.counts() == counts


def test_reset_forgets_everything(db_path, clock):
    s = make(db_path, clock)
    s.add_file("daq1", "/d/a.hdf5", 1, TR, [(1, 0), (2, 0)])
    s.request(TR, 5)
    read(s)
    before = s.reset()
    assert before["pending"] == 1 and before["active"] == 1
    c = s.counts()
    assert all(v == 0 for v in c.values()), c
    s.con.close()
    assert all(v == 0 for v in make(db_path, clock).counts().values())


def test_checkpoint_from_another_connection(db_path, clock):
    s = make(db_path, clock)
    s.add_file("daq1", "/d/a.hdf5", 1, TR, [(n, 0) for n in range(2000)])
    checkpoint_file(db_path)
    ro = sqlite3.connect(db_path)
    assert ro.execute("SELECT count(*) FROM records").fetchone()[0] == 2000


def test_older_files_first_whatever_the_discovery_order(db_path, clock):
    s = make(db_path, clock)
    # found later (a missed event, a rescan) but written earlier: handed out first
    s.add_file("daq1", "/d/new.hdf5", 1, TR, [(4, 0)], created=clock.t - 5)
    s.add_file("daq1", "/d/old.hdf5", 1, TR, [(1, 0), (2, 0)], created=clock.t - 60)
    s.request(TR, 3)
    assert [read(s)[1]["trigger_number"] for _ in range(3)] == [1, 2, 4]
    s.con.close()
    s = make(db_path, clock)
    s.add_file("daq1", "/d/c.hdf5", 1, TR, [(9, 0)], created=clock.t - 30)
    s.add_file("daq1", "/d/d.hdf5", 1, TR, [(7, 0)], created=clock.t - 90)
    s.request(TR, 2)
    assert [read(s, file="/d/c.hdf5")[1]["trigger_number"], read(s)[1]["trigger_number"]] == [9, 7]
