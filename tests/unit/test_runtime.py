"""The shared runtime: workers, inbox, SQLite store, durable writes, logging."""

from __future__ import annotations

import os
import sqlite3
import threading
import time

import pytest

from socs_agents.runtime import (
    Durability,
    Inbox,
    QueueFull,
    RateLimit,
    SerialWorker,
    WorkerPool,
    WorkerStopped,
    commit_file,
    connect,
    durable_file,
    durable_write,
    is_locked,
    remove_temp_files,
    start_thread,
    temp_path,
    transaction,
)
from socs_agents.runtime import files as files_module


class FakeReactor:
    """Collects ``callFromThread`` calls; the test thread runs them, as a reactor would."""

    def __init__(self) -> None:
        self.calls: list = []
        self.lock = threading.Lock()

    def callFromThread(self, fn, *args):  # noqa: N802 (Twisted's name)
        with self.lock:
            self.calls.append((fn, args))

    def run_pending(self) -> int:
        with self.lock:
            calls, self.calls = self.calls, []
        for fn, args in calls:
            fn(*args)
        return len(calls)


# ---- workers -----------------------------------------------------------------------------


def test_serial_worker_runs_jobs_in_order_on_one_thread():
    worker = SerialWorker("t-order")
    seen: list = []
    futures = [
        worker.call(lambda i=i: seen.append((i, threading.current_thread().name)))
        for i in range(200)
    ]
    for f in futures:
        f.result(timeout=5)
    assert [i for i, _ in seen] == list(range(200))
    assert {name for _, name in seen} == {"t-order"}
    assert worker.stop()


def test_submit_fires_deferred_on_reactor_with_result_and_exception():
    reactor = FakeReactor()
    worker = SerialWorker("t-deferred", reactor=reactor)
    results, errors = [], []
    worker.submit(lambda a, b: a + b, 2, b=3).addCallback(results.append)

    def boom():
        raise ValueError("bad job")

    worker.submit(boom).addErrback(lambda f: errors.append(f.value))
    assert worker.stop(drain=True)
    # nothing fired in the worker thread: delivery waits for the reactor
    assert results == [] and errors == []
    assert reactor.run_pending() == 2
    assert results == [5]
    assert isinstance(errors[0], ValueError) and str(errors[0]) == "bad job"


def test_back_pressure_refuses_over_bound_and_recovers():
    worker = SerialWorker("t-full", max_queue=3)
    gate = threading.Event()
    held = [worker.call(gate.wait, 5) for _ in range(3)]
    refused = worker.call(lambda: "never")
    with pytest.raises(QueueFull):
        refused.result(timeout=1)
    assert worker.pending == 3
    gate.set()
    for f in held:
        assert f.result(timeout=5) is True
    assert worker.call(lambda: "taken").result(timeout=5) == "taken"
    worker.stop()


def test_submit_refused_is_a_failed_deferred_not_an_exception():
    reactor = FakeReactor()
    worker = SerialWorker("t-full-d", max_queue=1, reactor=reactor)
    gate = threading.Event()
    worker.submit(gate.wait, 5)
    failures = []
    worker.submit(lambda: None).addErrback(lambda f: failures.append(f.value))
    assert isinstance(failures[0], QueueFull)
    gate.set()
    worker.stop()


def test_stop_with_drain_runs_every_waiting_job():
    worker = SerialWorker("t-drain")
    done = []
    gate = threading.Event()
    worker.call(gate.wait, 5)
    futures = [worker.call(done.append, i) for i in range(50)]
    stopper = start_thread("t-stopper", worker.stop, True, 10.0)
    time.sleep(0.05)
    gate.set()
    stopper.join(10)
    assert done == list(range(50))
    assert all(f.exception() is None for f in futures)
    with pytest.raises(WorkerStopped):
        worker.call(lambda: None).result(timeout=1)


def test_stop_without_drain_fails_waiting_jobs():
    worker = SerialWorker("t-nodrain")
    gate, running = threading.Event(), threading.Event()
    first = worker.call(lambda: running.set() or gate.wait(5))
    assert running.wait(5)
    waiting = [worker.call(lambda: "ran") for _ in range(5)]
    stopper = start_thread("t-stopper2", worker.stop, False, 10.0)
    time.sleep(0.05)
    gate.set()
    stopper.join(10)
    assert first.result(timeout=1) is True
    for f in waiting:
        with pytest.raises(WorkerStopped):
            f.result(timeout=1)


def test_stop_times_out_on_a_stuck_job_and_says_so():
    worker = SerialWorker("t-stuck")
    gate = threading.Event()
    worker.call(gate.wait, 5)
    assert worker.stop(timeout=0.1) is False
    gate.set()


def test_pool_runs_jobs_concurrently():
    pool = WorkerPool("t-pool", size=3)
    barrier = threading.Barrier(3, timeout=5)
    futures = [pool.call(barrier.wait) for _ in range(3)]
    # all three must be inside the barrier at once, or it breaks
    assert sorted(f.result(timeout=5) for f in futures) == [0, 1, 2]
    assert pool.stop()


def test_pool_pending_counts_exactly_across_threads():
    """Each thread counts the jobs it finished without the submitters' lock: after many
    jobs from several submitting threads the count of pending jobs is exact, and the
    bound still holds."""
    pool = WorkerPool("t-count", size=3, max_queue=100_000)
    futures: list = []
    lock = threading.Lock()

    def submit_many():
        mine = [pool.call(lambda i=i: i) for i in range(2000)]
        with lock:
            futures.extend(mine)

    submitters = [threading.Thread(target=submit_many) for _ in range(4)]
    for t in submitters:
        t.start()
    for t in submitters:
        t.join(10)
    assert sum(f.result(timeout=10) for f in futures) == 4 * sum(range(2000))
    assert pool.pending == 0
    gate = threading.Event()
    small = WorkerPool("t-count-bound", size=2, max_queue=2)
    held = [small.call(gate.wait, 5) for _ in range(2)]
    with pytest.raises(QueueFull):
        small.call(lambda: None).result(timeout=1)
    gate.set()
    assert all(f.result(timeout=5) for f in held) and small.pending == 0
    assert pool.stop() and small.stop()


def test_start_thread_reports_an_escaping_exception():
    errors = []

    def die():
        raise RuntimeError("loop died")

    start_thread("t-die", die, on_error=lambda exc, tb: errors.append((exc, tb))).join(5)
    assert isinstance(errors[0][0], RuntimeError)
    assert "loop died" in errors[0][1]


def test_inbox_batches_bounds_and_close():
    inbox = Inbox(maxsize=3)
    assert inbox.get_batch(timeout=0.01) == []
    for i in range(3):
        inbox.put(i)
    with pytest.raises(QueueFull):
        inbox.put(3)
    assert inbox.get_batch(timeout=0) == [0, 1, 2]
    got = []
    t = start_thread("t-inbox", lambda: got.append(inbox.get_batch(timeout=5)))
    time.sleep(0.02)
    inbox.put("wake")
    t.join(5)
    assert got == [["wake"]]
    inbox.close()
    t0 = time.monotonic()
    assert inbox.get_batch(timeout=5) == []
    assert time.monotonic() - t0 < 1
    with pytest.raises(WorkerStopped):
        inbox.put("late")


# ---- store -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "durability, level", [(Durability.POWER_SAFE, 2), (Durability.CRASH_SAFE, 1)]
)
def test_connect_sets_the_pragmas_of_its_durability(tmp_path, durability, level):
    con = connect(str(tmp_path / "sub" / "state.db"), durability, busy_timeout_ms=1234)
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert con.execute("PRAGMA synchronous").fetchone()[0] == level
    assert con.execute("PRAGMA busy_timeout").fetchone()[0] == 1234
    assert con.execute("PRAGMA foreign_keys").fetchone()[0] == 1


def test_transaction_commits_or_rolls_back(tmp_path):
    con = connect(str(tmp_path / "t.db"), Durability.CRASH_SAFE)
    con.execute("CREATE TABLE t (x INTEGER)")
    with transaction(con):
        con.execute("INSERT INTO t VALUES (1)")
    with pytest.raises(ZeroDivisionError), transaction(con):
        con.execute("INSERT INTO t VALUES (2)")
        1 / 0  # noqa: B018
    assert [r[0] for r in con.execute("SELECT x FROM t")] == [1]
    assert not con.in_transaction


def test_locked_database_is_recognised(tmp_path):
    path = str(tmp_path / "lock.db")
    holder = connect(path, Durability.CRASH_SAFE)
    holder.execute("CREATE TABLE t (x INTEGER)")
    holder.execute("BEGIN IMMEDIATE")
    other = connect(path, Durability.CRASH_SAFE, busy_timeout_ms=10)
    with pytest.raises(sqlite3.OperationalError) as info:
        with transaction(other):
            pass
    assert is_locked(info.value)
    assert not is_locked(sqlite3.OperationalError("no such table: x"))
    assert not is_locked(ValueError("locked"))
    holder.execute("ROLLBACK")


# ---- durable writes ----------------------------------------------------------------------


def test_durable_write_replaces_whole_file(tmp_path):
    target = tmp_path / "data" / "f.json"
    durable_write(str(target), b"old")
    durable_write(str(target), "new text")
    assert target.read_text() == "new text"
    assert sorted(os.listdir(target.parent)) == ["f.json"]


def test_durable_file_failure_keeps_the_old_file(tmp_path):
    target = tmp_path / "f.bin"
    durable_write(str(target), b"old")
    with pytest.raises(RuntimeError), durable_file(str(target)) as f:
        f.write(b"half")
        raise RuntimeError("writer died")
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["f.bin"]


@pytest.mark.parametrize("crash_at", ["fsync_path", "replace", "fsync_dir"])
def test_crash_between_steps_leaves_old_or_complete_new(tmp_path, monkeypatch, crash_at):
    """Whatever step a crash interrupts, the final name holds the old bytes or all the
    new ones, and what is left beside it is a temporary file that start-up removes."""
    target = tmp_path / "f.bin"
    durable_write(str(target), b"old")
    new = b"n" * 100_000

    class Crash(BaseException):
        pass

    def crash(*args, **kwargs):
        raise Crash()

    if crash_at == "replace":
        monkeypatch.setattr(files_module.os, "replace", crash)
    else:
        monkeypatch.setattr(files_module, crash_at, crash)
    tmp = temp_path(str(target))
    with open(tmp, "wb") as f:
        f.write(new)
    with pytest.raises(Crash):
        commit_file(tmp, str(target))
    monkeypatch.undo()
    assert target.read_bytes() in (b"old", new)
    if crash_at == "fsync_dir":
        assert target.read_bytes() == new
    removed = remove_temp_files(str(tmp_path))
    assert all(os.path.basename(p).startswith(".") for p in removed)
    assert os.listdir(tmp_path) == ["f.bin"]


def test_commit_without_replace_refuses_an_existing_file(tmp_path):
    target = tmp_path / "f.bin"
    durable_write(str(target), b"old")
    tmp = temp_path(str(target))
    with open(tmp, "wb") as f:
        f.write(b"new")
    with pytest.raises(FileExistsError):
        commit_file(tmp, str(target), replace=False)
    assert target.read_bytes() == b"old"
    assert os.path.exists(tmp)


# ---- logging -----------------------------------------------------------------------------


def test_rate_limit_holds_back_and_counts():
    lines = []
    now = [0.0]
    limit = RateLimit(
        lambda level, text: lines.append((level, text)), interval=10, clock=lambda: now[0]
    )
    assert limit("k", "warn", "first")
    assert not limit("k", "warn", "second")
    assert not limit("k", "warn", "third")
    assert limit("other", "info", "another key")
    now[0] = 11
    assert limit("k", "warn", "later")
    assert lines == [
        ("warn", "first"),
        ("info", "another key"),
        ("warn", "later (+2 more since the last line)"),
    ]


# ---- additions: run_blocking, failed COMMIT, begin_statement -----------------------------


def test_run_blocking_delivers_result_and_exception_on_the_reactor():
    from socs_agents.runtime import run_blocking

    reactor = FakeReactor()
    results: list = []
    threads: list = []

    def work(x):
        threads.append(threading.current_thread().name)
        return x * 2

    run_blocking(work, 21, name="t-once", reactor=reactor).addCallback(results.append)
    run_blocking(lambda: 1 / 0, reactor=reactor).addErrback(lambda f: results.append(f.type))
    wait_until = time.monotonic() + 5
    while len(results) < 2 and time.monotonic() < wait_until:
        reactor.run_pending()
        time.sleep(0.005)
    assert sorted(results, key=str) == sorted([42, ZeroDivisionError], key=str)
    assert threads == ["t-once"], "off the calling thread, in a thread of its own"


def test_failed_commit_rolls_back_and_leaves_no_open_transaction(tmp_path):
    from socs_agents.runtime import begin_statement

    assert begin_statement() == "BEGIN IMMEDIATE" and begin_statement(False) == "BEGIN"
    con = connect(str(tmp_path / "fk.db"), Durability.POWER_SAFE)
    con.execute("CREATE TABLE p (id INTEGER PRIMARY KEY)")
    con.execute("CREATE TABLE c (p INTEGER REFERENCES p(id) DEFERRABLE INITIALLY DEFERRED)")
    # A deferred foreign key fails at COMMIT, as a full disk would: the kept connection
    # must be usable for the next transaction.
    with pytest.raises(sqlite3.IntegrityError), transaction(con):
        con.execute("INSERT INTO c VALUES (7)")
    assert not con.in_transaction
    with transaction(con):
        con.execute("INSERT INTO p VALUES (7)")
        con.execute("INSERT INTO c VALUES (7)")
    assert con.execute("SELECT count(*) FROM c").fetchone()[0] == 1


def test_inbox_keeps_order_across_threads_and_close_wakes_a_waiting_loop():
    inbox = Inbox(maxsize=100_000)
    got: list = []

    def loop():
        while True:
            closed = inbox.closed
            got.extend(inbox.get_batch(timeout=None))
            if closed:
                return

    consumer = start_thread("t-inbox-order", loop)
    for i in range(20_000):
        inbox.put(i)
    time.sleep(0.05)  # let the loop block on an empty inbox: close must wake it
    inbox.close()
    consumer.join(5)
    assert not consumer.is_alive()
    assert got == list(range(20_000)) and len(inbox) == 0


# ---- a reactor of its own ----------------------------------------------------------------


def test_reactor_thread_serves_http_and_runs_calls_on_its_own_thread(tmp_path):
    import sys
    import urllib.request

    from twisted.python import threadable
    from twisted.web.resource import Resource
    from twisted.web.server import Site

    from socs_agents.dev.testing import wait_for
    from socs_agents.runtime import ReactorThread

    global_reactor_before = "twisted.internet.reactor" in sys.modules
    io_thread_before = threadable.ioThread
    loop = ReactorThread("t-own-reactor")
    try:
        assert loop.call(lambda: threading.current_thread().name).result(5) == "t-own-reactor"
        with pytest.raises(ZeroDivisionError):
            loop.call(lambda: 1 / 0).result(5)
        timer: list = []
        loop.call(loop.reactor.callLater, 0.01, lambda: timer.append(loop.in_thread()))
        wait_for(lambda: timer, 5, "the timer on the thread's reactor")
        assert timer == [True]

        served: list = []

        class Here(Resource):
            isLeaf = True

            def render_GET(self, request):  # noqa: N802 (twisted.web's name)
                served.append(threading.current_thread().name)
                return b"ok"

        site = Site(Here(), reactor=loop.reactor)
        port = loop.call(loop.reactor.listenTCP, 0, site, 50, "127.0.0.1").result(5)
        url = f"http://127.0.0.1:{port.getHost().port}/x"
        with urllib.request.urlopen(url, timeout=5) as answer:
            assert answer.read() == b"ok"
        assert served == ["t-own-reactor"]
        # the agent's reactor stays Twisted's I/O thread, and none was installed
        assert threadable.ioThread == io_thread_before
        assert ("twisted.internet.reactor" in sys.modules) == global_reactor_before
    finally:
        assert loop.stop(timeout=5)
    assert not loop.thread.is_alive()
    with pytest.raises(OSError):  # its shutdown closed the listening port
        urllib.request.urlopen(url, timeout=2)
    with pytest.raises(WorkerStopped):
        loop.call(lambda: None).result(1)
