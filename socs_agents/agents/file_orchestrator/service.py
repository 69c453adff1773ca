"""The orchestrator's state on its own thread: one :class:`~socs_agents.runtime.SerialWorker`
owns the :class:`~.state.State` (and its SQLite connection); everything else submits jobs.

* Jobs run one at a time in submission order, so HTTP answers, OCS tasks, discovery and the
  lease loop see one consistent state, and the reactor never runs SQLite.
* A job whose transaction meets another process's write lock is run again with backoff (the
  state is unchanged by a failed transaction, see :mod:`.state`) until it succeeds or the
  lock has lasted ``lock_limit`` seconds, then it fails with :class:`~.state.Busy`. Jobs
  submitted meanwhile wait in order; nothing is lost.
* After every job the worker takes :meth:`~.state.State.counts` into :attr:`snapshot`, which
  ``GET /stats`` and OCS ``status`` read without waiting behind a blocked database.
* Jobs submitted from the reactor wait in a queue of their own; the worker takes all that
  are waiting in one turn and hands their answers back in one reactor call. With several
  clients at once this saves a thread wake-up and a reactor wake-up per request (the
  hand-over costs about 60 us of CPU on the 2 shared cores), in the same order.

No OCS import; Twisted only through the runtime's Deferreds.
"""

from __future__ import annotations

import collections
import concurrent.futures
import time
from collections.abc import Callable
from typing import Any

from twisted.internet import defer

from ...runtime import QueueFull, Report, SerialWorker, WorkerStopped, is_locked, no_report
from .state import Busy, Overloaded, State

#: first and longest pause between attempts of a locked transaction
RETRY_FIRST_S, RETRY_MAX_S = 0.01, 0.25
#: most reactor jobs run in one turn of the worker (their answers wait for the turn's end)
BATCH = 16


class StateService:
    """Runs ``fn(state, *args)`` jobs on the state's worker.

    Args:
        make_state: builds the :class:`State`; called on the worker thread (the thread that
            owns it from then on).
        lock_limit: seconds a job keeps retrying a locked database before :class:`Busy`.
        max_queue: jobs waiting at most; one more fails with :class:`Overloaded`.
        report: ``report(level, text)`` for log lines.
        sleep: pause between attempts (tests pass a fake).
    """

    def __init__(
        self,
        make_state: Callable[[], State],
        lock_limit: float = 120.0,
        max_queue: int = 10_000,
        report: Report = no_report,
        sleep: Callable[[float], None] = time.sleep,
        reactor=None,
    ) -> None:
        self.lock_limit = lock_limit
        self.max_queue = max_queue
        self.report = report
        self.sleep = sleep
        self.worker = SerialWorker("orchestrator-state", max_queue=max_queue, reactor=reactor)
        #: jobs that met a locked database at least once / that gave up with Busy
        self.lock_waits = 0
        self.lock_timeouts = 0
        #: seconds the current job has waited for a lock (0 when none waits)
        self.waiting_since: float | None = None
        self.state: State = self.worker.call(make_state).result()
        self.snapshot: dict = self.state.counts()
        #: reactor jobs waiting: (fn, args, Deferred); touched by the reactor (append) and
        #: the worker (popleft), both atomic on a deque
        self._waiting: collections.deque = collections.deque()
        self._turn_queued = False  # reactor thread only

    # ---- submitting ----------------------------------------------------------------------

    def submit(self, fn: Callable[..., Any], *args: Any) -> defer.Deferred:
        """Run ``fn(state, *args)`` on the worker; from the reactor thread. The Deferred
        fails with :class:`Overloaded` at once when the queue is full."""
        if len(self._waiting) >= self.max_queue:
            return defer.fail(Overloaded(f"{len(self._waiting)} operations wait for the state"))
        d: defer.Deferred = defer.Deferred()
        self._waiting.append((fn, args, d))
        if not self._turn_queued:
            self._queue_turn()
        return d

    def _queue_turn(self) -> None:
        self._turn_queued = True
        turn = self.worker.submit(self._turn)
        turn.addCallbacks(self._answer, self._turn_refused)

    def _turn(self) -> list:
        """On the worker: run the waiting reactor jobs (up to :data:`BATCH`)."""
        answers = []
        while len(answers) < BATCH:
            try:
                fn, args, d = self._waiting.popleft()
            except IndexError:
                break
            try:
                answers.append((d, True, self._run(fn, args)))
            except Exception as exc:
                answers.append((d, False, exc))
        return answers

    def _answer(self, answers: list) -> None:
        """On the reactor: fire the Deferreds of one turn, in order; queue the next turn
        for jobs that came meanwhile."""
        self._turn_queued = False
        if self._waiting:
            self._queue_turn()
        for d, ok, value in answers:
            if ok:
                d.callback(value)
            else:
                d.errback(value)

    def _turn_refused(self, failure) -> None:
        """The worker refused the turn (stopped, full): fail every waiting job."""
        self._turn_queued = False
        exc = Overloaded(str(failure.value))
        while self._waiting:
            self._waiting.popleft()[2].errback(exc)

    def call(self, fn: Callable[..., Any], *args: Any) -> concurrent.futures.Future:
        """Like :meth:`submit`, from any thread: a Future."""
        future = self.worker.call(self._run, fn, args)
        exc = future.exception() if future.done() else None
        if isinstance(exc, (QueueFull, WorkerStopped)):
            failed: concurrent.futures.Future = concurrent.futures.Future()
            failed.set_exception(Overloaded(str(exc)))
            return failed
        return future

    def run(self, fn: Callable[..., Any], *args: Any, timeout: float | None = None) -> Any:
        """:meth:`call` and wait for the answer (from a thread that may block: OCS tasks,
        the discovery loop)."""
        wait = self.lock_limit + 60 if timeout is None else timeout
        return self.call(fn, *args).result(wait)

    # ---- on the worker -------------------------------------------------------------------

    def _run(self, fn: Callable[..., Any], args: tuple) -> Any:
        first_lock: float | None = None
        pause = RETRY_FIRST_S
        try:
            while True:
                try:
                    return fn(self.state, *args)
                except Exception as exc:
                    if not is_locked(exc):
                        raise
                    now = time.monotonic()
                    if first_lock is None:
                        first_lock = now
                        self.waiting_since = now
                        self.lock_waits += 1
                        self.report("warn", "state database is locked by another process; waiting")
                    if now - first_lock >= self.lock_limit:
                        self.lock_timeouts += 1
                        raise Busy(
                            f"the state database stayed locked for {self.lock_limit:.0f} s "
                            "(another process holds its write lock); try again later"
                        ) from None
                    self.sleep(pause)
                    pause = min(pause * 2, RETRY_MAX_S)
        finally:
            if first_lock is not None:
                self.waiting_since = None
            self.snapshot = self.state.counts()

    # ---- figures and stop ----------------------------------------------------------------

    def figures(self) -> dict:
        """The service's own counters (any thread)."""
        since = self.waiting_since
        return {
            "queued": self.worker.pending + len(self._waiting),
            "lock_waits": self.lock_waits,
            "lock_timeouts": self.lock_timeouts,
            "lock_waiting_s": round(time.monotonic() - since, 3) if since is not None else 0.0,
        }

    def close(self) -> defer.Deferred:
        """Close the state after every job already submitted; then end the thread."""
        d = self.worker.submit(lambda: self.state.close())

        def end(result):
            self.worker.stop(drain=False, timeout=1.0)
            return result

        return d.addBoth(end)
