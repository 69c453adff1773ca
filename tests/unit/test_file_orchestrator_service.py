"""The state's thread: jobs in order, a locked database waited out with nothing lost, Busy
past the limit, a snapshot that never waits. Real SQLite, a second real connection holds
the write lock."""

import sqlite3
import threading
import time

import pytest

from socs_agents.agents.file_orchestrator.service import StateService
from socs_agents.agents.file_orchestrator.state import TRIGGER_RECORD, Busy, NoCredit, State
from socs_agents.dev.testing import wait_for

TR = TRIGGER_RECORD


@pytest.fixture
def db_path(tmp_path):
    return str(tmp_path / "state.db")


@pytest.fixture
def service(db_path):
    svc = StateService(lambda: State(db_path), lock_limit=30)
    yield svc
    svc.close_now()


def hold_lock(db_path):
    con = sqlite3.connect(db_path, isolation_level=None, timeout=1)
    con.execute("BEGIN IMMEDIATE")
    return con


def test_state_is_built_and_used_on_its_own_thread(service):
    names = service.run(lambda state: threading.current_thread().name)
    assert names == "orchestrator-state"
    assert service.run(State.add_file, "h", "/d/a.hdf5", 1, TR, [(1, 0)])["added"] == 1
    assert service.snapshot["pending"] == 1


def test_domain_errors_reach_the_caller_and_the_snapshot_still_updates(service):
    service.run(State.add_file, "h", "/d/a.hdf5", 1, TR, [(1, 0)])
    with pytest.raises(NoCredit):
        service.run(State.read_next, "h", TR)
    service.run(State.request, TR, 2)
    assert service.snapshot["credits_tr"] == 2


def test_a_locked_database_is_waited_out_in_order_with_nothing_lost(service, db_path):
    service.run(State.add_file, "h", "/d/a.hdf5", 1, TR, [(n, 0) for n in range(1, 4)])
    locker = hold_lock(db_path)
    try:
        futures = [service.call(State.request, TR, 1) for _ in range(3)]
        futures += [service.call(State.read_next, "h", TR) for _ in range(3)]
        wait_for(lambda: service.figures()["lock_waiting_s"] > 0.3, 5, "a job waiting")
        # held: nothing answered yet, and the snapshot answers at once
        assert not any(f.done() for f in futures)
        t0 = time.perf_counter()
        snap = service.snapshot
        assert time.perf_counter() - t0 < 0.01 and snap["credits_tr"] == 0
    finally:
        locker.execute("ROLLBACK")
        locker.close()
    answers = [f.result(10) for f in futures]
    assert [a["credits"] for a in answers[:3]] == [1, 2, 3]
    assert [a.trigger_number for a in answers[3:]] == [1, 2, 3]
    c = service.snapshot
    assert (c["credits_tr"], c["active"], c["reads"]) == (0, 3, 3)
    assert service.figures()["lock_waits"] >= 1
    # and SQLite agrees: nothing lost
    ro = sqlite3.connect(db_path)
    assert ro.execute("SELECT count(*) FROM records WHERE state = 1").fetchone()[0] == 3


def test_busy_after_the_limit_and_the_state_unchanged(db_path):
    svc = StateService(lambda: State(db_path), lock_limit=0.5)
    try:
        locker = hold_lock(db_path)
        try:
            t0 = time.monotonic()
            with pytest.raises(Busy, match="locked"):
                svc.run(State.request, TR, 5)
            assert 0.5 <= time.monotonic() - t0 < 3
        finally:
            locker.execute("ROLLBACK")
            locker.close()
        assert svc.snapshot["credits_tr"] == 0
        assert svc.figures()["lock_timeouts"] == 1
        assert svc.run(State.request, TR, 1)["credits"] == 1
    finally:
        svc.close_now()


def test_a_full_queue_is_overloaded_not_dropped(db_path):
    from socs_agents.agents.file_orchestrator.state import Overloaded

    svc = StateService(lambda: State(db_path), max_queue=1)
    gate = threading.Event()
    try:
        first = svc.call(lambda state: gate.wait(5))
        with pytest.raises(Overloaded):
            svc.call(State.request, TR, 1).result(1)
        gate.set()
        assert first.result(5) is True
    finally:
        gate.set()
        svc.close_now()


class PumpedReactor:
    """callFromThread of a reactor, pumped by the test: the reactor side without a reactor."""

    def __init__(self):
        import queue

        self.calls = queue.SimpleQueue()

    def callFromThread(self, fn, *args):
        self.calls.put((fn, args))

    def pump_until(self, done, timeout=10):
        deadline = time.monotonic() + timeout
        while not done():
            fn, args = self.calls.get(timeout=max(0.01, deadline - time.monotonic()))
            fn(*args)


def test_jobs_from_the_agents_reactor_run_in_order_and_each_gets_its_answer(db_path):
    reactor = PumpedReactor()
    svc = StateService(lambda: State(db_path), reactor=reactor)
    try:
        svc.run(State.add_file, "h", "/d/a.hdf5", 1, TR, [(n, 0) for n in range(1, 41)])
        gate = threading.Event()
        svc.call(lambda state: gate.wait(5))  # hold the thread: the next jobs pile up
        got = []
        for i in range(40):
            d = (
                svc.submit(State.request, TR, 1)
                if i % 2 == 0
                else svc.submit(State.read_next, "h", TR)
            )
            d.addCallbacks(got.append, lambda f: got.append(f.value))
        assert svc.figures()["queued"] >= 40
        gate.set()
        reactor.pump_until(lambda: len(got) == 40)
        # requests and reads alternate: every read finds the credit of the request before it
        assert [g["credits"] for g in got[0::2]] == [1] * 20
        assert [g.trigger_number for g in got[1::2]] == list(range(1, 21))
        assert svc.snapshot["reads"] == 20
    finally:
        svc.close_now()


def test_reactor_jobs_over_the_bound_are_overloaded(db_path):
    from socs_agents.agents.file_orchestrator.state import Overloaded

    reactor = PumpedReactor()
    # one bound over every job: the held one and three more
    svc = StateService(lambda: State(db_path), max_queue=4, reactor=reactor)
    gate = threading.Event()
    try:
        svc.call(lambda state: gate.wait(5))
        ds = [svc.submit(State.request, TR, 1) for _ in range(4)]
        failures = []
        ds[3].addErrback(lambda f: failures.append(f.trap(Overloaded)))
        assert failures == [Overloaded]
        got = []
        for d in ds[:3]:
            d.addCallback(got.append)
        gate.set()
        reactor.pump_until(lambda: len(got) == 3)
        assert [g["credits"] for g in got] == [1, 2, 3]
    finally:
        gate.set()
        svc.close_now()


def test_a_job_from_the_states_own_thread_runs_at_once_and_a_lock_never_stalls_the_thread(
    service, db_path
):
    """HTTP handlers submit on the state's thread: the answer comes within the same call
    (no hand-over); while another process holds the lock, their jobs wait in order and the
    thread itself stays free for what needs no state."""
    service.run(State.add_file, "h", "/d/a.hdf5", 1, TR, [(n, 0) for n in range(1, 3)])

    def at_once():
        got = []
        service.submit_here(State.request, TR, 1).addCallback(got.append)
        return got  # filled before submit_here returned

    assert [a["credits"] for a in service.thread.call(at_once).result(5)] == [1]
    locker = hold_lock(db_path)
    got: list = []
    try:

        def held():
            service.submit_here(State.request, TR, 1).addCallback(got.append)
            service.submit_here(State.read_next, "h", TR).addCallback(got.append)
            return list(got)

        assert service.thread.call(held).result(5) == []
        wait_for(lambda: service.figures()["lock_waiting_s"] > 0.3, 5, "a job waiting")
        for _ in range(5):  # the thread answers at once, between two attempts
            t0 = time.perf_counter()
            service.thread.call(lambda: service.snapshot).result(5)
            assert time.perf_counter() - t0 < 0.05
    finally:
        locker.execute("ROLLBACK")
        locker.close()
    wait_for(lambda: len(got) == 2, 10, "both answers")
    assert got[0]["credits"] == 2 and got[1].trigger_number == 1
