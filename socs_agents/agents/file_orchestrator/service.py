"""The orchestrator's state and its HTTP API on one thread of their own.

A :class:`~socs_agents.runtime.ReactorThread` (a private Twisted reactor) owns the
:class:`~.state.State` and its SQLite connection, and serves the HTTP API:

* A request that needs the state runs its job there and then: no hand-over to another
  thread and back, which cost about 100 us of CPU per request and a quarter of the read-next
  rate on 2 cores (``benchmarks/file_orchestrator.py``). The agent's reactor (OCS, WAMP,
  the timers) never runs SQLite; its jobs (``submit``) and those of blocking threads
  (``call``, ``run``: OCS tasks, the discovery) come to the state's thread.
* Jobs run one at a time in submission order, so HTTP answers, OCS tasks, discovery and the
  lease loop see one consistent state.
* A transaction that meets another process's write lock gives up within the state's busy
  timeout (a few milliseconds; the state is unchanged by a failed transaction, see
  :mod:`.state`). The job stays first in the queue and is tried again on a timer with
  backoff until it succeeds or the lock has lasted ``lock_limit`` seconds, then it fails
  with :class:`~.state.Busy`. Jobs submitted meanwhile wait behind it, in order; nothing is
  lost, and the thread keeps serving what needs no state (``GET /stats``).
* After every job the service takes :meth:`~.state.State.counts` into :attr:`snapshot`, which
  ``GET /stats`` and OCS ``status`` read without waiting behind a locked database.

No OCS import.
"""

from __future__ import annotations

import collections
import concurrent.futures
import threading
import time
from collections.abc import Callable
from typing import Any

from twisted.internet import defer

from ...runtime import ReactorThread, Report, WorkerStopped, is_locked, no_report, run_blocking
from .state import Busy, Overloaded, State

#: first and longest pause between attempts of a locked transaction
RETRY_FIRST_S, RETRY_MAX_S = 0.01, 0.25
#: seconds the stop waits for the jobs already submitted before it fails the rest
CLOSE_WAIT_S = 5.0

#: ``deliver(ok, value)``: hands a job's result (or exception) to whoever submitted it
Deliver = Callable[[bool, Any], None]


class StateService:
    """Runs ``fn(state, *args)`` jobs on the state's thread.

    Args:
        make_state: builds the :class:`State`; called on the state's thread (the thread that
            owns it from then on).
        lock_limit: seconds a job keeps retrying a locked database before :class:`Busy`.
        max_queue: jobs waiting at most; one more fails with :class:`Overloaded`.
        report: ``report(level, text)`` for log lines.
        reactor: the agent's reactor, where :meth:`submit` answers (the global one by
            default; tests pass their own).
    """

    def __init__(
        self,
        make_state: Callable[[], State],
        lock_limit: float = 120.0,
        max_queue: int = 10_000,
        report: Report = no_report,
        reactor=None,
    ) -> None:
        self.lock_limit = lock_limit
        self.max_queue = max_queue
        self.report = report
        self._agent_reactor = reactor
        self.thread = ReactorThread("orchestrator-state")
        #: the state thread's reactor: HTTP sites listen on it
        self.loop = self.thread.reactor
        #: jobs that met a locked database at least once / that gave up with Busy
        self.lock_waits = 0
        self.lock_timeouts = 0
        #: when the first job in the queue first met the lock (None: no job waits)
        self.waiting_since: float | None = None
        # jobs accepted and not finished: counted under a lock at acceptance (any thread),
        # so the bound holds even while the state's thread is busy with one long job
        self._count = 0
        self._count_lock = threading.Lock()
        self._closed = False
        # state thread only: the queue, whether it is being run, the pending retry
        self._jobs: collections.deque = collections.deque()
        self._running = False
        self._retry = None
        self._pause = RETRY_FIRST_S
        self._ports: list = []
        self.state: State = self.thread.call(make_state).result()
        self.snapshot: dict = self.state.counts()

    # ---- submitting ----------------------------------------------------------------------

    def submit_here(self, fn: Callable[..., Any], *args: Any) -> defer.Deferred:
        """Run ``fn(state, *args)``; from the state's thread (its HTTP handlers). The
        Deferred fires on this thread, at once when nothing waits before the job."""
        d: defer.Deferred = defer.Deferred()
        if self._accept(d.errback):
            self._enqueue(fn, args, lambda ok, value: (d.callback if ok else d.errback)(value))
        return d

    def submit(self, fn: Callable[..., Any], *args: Any) -> defer.Deferred:
        """Run ``fn(state, *args)``; from the agent's reactor, where the Deferred fires. It
        fails at once with :class:`Overloaded` when the queue is full."""
        d: defer.Deferred = defer.Deferred()
        if self._agent_reactor is None:
            from twisted.internet import reactor  # the agent installs its reactor first

            self._agent_reactor = reactor
        answer_on = self._agent_reactor.callFromThread
        if self._accept(d.errback):
            self.loop.callFromThread(
                self._enqueue,
                fn,
                args,
                lambda ok, value: answer_on(d.callback if ok else d.errback, value),
            )
        return d

    def call(self, fn: Callable[..., Any], *args: Any) -> concurrent.futures.Future:
        """Run ``fn(state, *args)``; from any thread: a Future of the answer."""
        future: concurrent.futures.Future = concurrent.futures.Future()
        if self._accept(future.set_exception):

            def deliver(ok: bool, value: Any) -> None:
                if ok:
                    future.set_result(value)
                else:
                    future.set_exception(value)

            self.loop.callFromThread(self._enqueue, fn, args, deliver)
        return future

    def run(self, fn: Callable[..., Any], *args: Any, timeout: float | None = None) -> Any:
        """:meth:`call` and wait for the answer; from a thread that may block (OCS tasks,
        the discovery loop), never from the state's thread."""
        if self.thread.in_thread():
            raise RuntimeError("StateService.run would wait for its own thread")
        wait = self.lock_limit + 60 if timeout is None else timeout
        return self.call(fn, *args).result(wait)

    def _accept(self, refuse: Callable[[BaseException], Any]) -> bool:
        """Count one more job, or refuse it (``refuse(Overloaded)``) when the queue is full
        or the service closed."""
        with self._count_lock:
            if self._closed:
                reason = "the state is closed (the agent is stopping)"
            elif self._count >= self.max_queue:
                reason = f"{self._count} operations wait for the state"
            else:
                self._count += 1
                return True
        refuse(Overloaded(reason))
        return False

    # ---- on the state's thread -----------------------------------------------------------

    def _enqueue(self, fn: Callable[..., Any], args: tuple, deliver: Deliver) -> None:
        self._jobs.append((fn, args, deliver))
        if not self._running and self._retry is None:
            self._run_jobs()

    def _run_jobs(self) -> None:
        """Run the queued jobs in order; stop at a locked database and come back on a
        timer. A job's answer may submit more jobs (an HTTP answer lets the connection's
        next request in): they join the queue and run in this same pass."""
        self._retry = None
        self._running = True
        try:
            while self._jobs:
                fn, args, deliver = self._jobs[0]
                try:
                    ok, value = True, fn(self.state, *args)
                except Exception as exc:
                    if is_locked(exc):
                        if self._lock_wait_continues():
                            self._retry = self.loop.callLater(self._pause, self._run_jobs)
                            self._pause = min(self._pause * 2, RETRY_MAX_S)
                            return
                        exc = self._busy()
                    ok, value = False, exc
                self._jobs.popleft()
                self._job_done()
                try:
                    deliver(ok, value)
                except Exception as exc:  # a caller's callback failed: say so, keep going
                    self.report("error", f"a state answer could not be delivered: {exc!r}")
        finally:
            self._running = False

    def _lock_wait_continues(self) -> bool:
        """The first job met a locked database: True to try it again later, False once the
        lock has lasted ``lock_limit`` seconds."""
        now = time.monotonic()
        if self.waiting_since is None:
            self.waiting_since = now
            self.lock_waits += 1
            self.report("warn", "state database is locked by another process; waiting")
        return now - self.waiting_since < self.lock_limit

    def _busy(self) -> Busy:
        self.lock_timeouts += 1
        return Busy(
            f"the state database stayed locked for {self.lock_limit:.0f} s "
            "(another process holds its write lock); try again later"
        )

    def _job_done(self) -> None:
        if self.waiting_since is not None:
            self.waiting_since = None
        self._pause = RETRY_FIRST_S
        with self._count_lock:
            self._count -= 1
        self.snapshot = self.state.counts()

    # ---- HTTP ----------------------------------------------------------------------------

    def listen_tcp(self, port: int, site, interface: str = "127.0.0.1"):
        """Listen for ``site`` (built with ``reactor=self.loop``) on the state's thread; the
        listening port, or the error (``CannotListenError``) raised here."""

        def listen():
            listening = self.loop.listenTCP(port, site, interface=interface)
            self._ports.append(listening)
            return listening

        return self.thread.call(listen).result(10)

    # ---- figures and stop ----------------------------------------------------------------

    def figures(self) -> dict:
        """The service's own counters (any thread)."""
        since = self.waiting_since
        return {
            "queued": self._count,
            "lock_waits": self.lock_waits,
            "lock_timeouts": self.lock_timeouts,
            "lock_waiting_s": round(time.monotonic() - since, 3) if since is not None else 0.0,
        }

    def close(self) -> defer.Deferred:
        """Stop listening, close the state after the jobs already submitted (waiting
        :data:`CLOSE_WAIT_S` at most, then failing the rest) and end the thread. From the
        agent's reactor; the Deferred fires there."""
        return run_blocking(self.close_now, name="orchestrator-state-stop")

    def close_now(self) -> None:
        """:meth:`close`, blocking; from any thread but the state's."""
        if not self.thread.thread.is_alive():
            return
        self.thread.call(self._stop_listening).result(CLOSE_WAIT_S)
        last = self.call(lambda state: None)  # after every job submitted before it
        with self._count_lock:
            self._closed = True
        try:
            last.result(CLOSE_WAIT_S)
        except Exception:  # a lock still held, or refused: the rest is failed below
            pass
        try:
            self.thread.call(self._close_state).result(CLOSE_WAIT_S)
        finally:
            self.thread.stop(timeout=2.0)

    def _stop_listening(self) -> None:
        for listening in self._ports:
            listening.stopListening()
        self._ports.clear()

    def _close_state(self) -> None:
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._retry = None
        stopped = WorkerStopped("the agent stopped before the job ran")
        while self._jobs:
            _fn, _args, deliver = self._jobs.popleft()
            self._job_done()
            deliver(False, stopped)
        self.state.close()
