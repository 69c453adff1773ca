"""Background work off the reactor: job workers that answer with Deferreds, and loops.

* :class:`SerialWorker`: one thread runs jobs one after another, in the order they were
  submitted. For state that one thread owns (a SQLite connection, a schedule).
* :class:`WorkerPool`: several threads take jobs from one queue. For independent jobs
  (checksums of big files).
* :class:`Inbox` and :func:`start_thread`: for a loop that wakes on messages *or* on a
  deadline of its own (retries, backoff), which a job queue cannot express.
* :class:`ReactorThread`: a private Twisted reactor on a thread of its own, for a server
  whose requests run jobs on state that thread owns, with no hand-over per request.

Every queue is bounded: a job or message over the bound is refused with :class:`QueueFull`
(the caller learns it at once; nothing is dropped silently). Jobs are plain callables; their
results and exceptions reach the caller through the Deferred (fired on the reactor thread)
or the :class:`concurrent.futures.Future` they were submitted with.
"""

from __future__ import annotations

import concurrent.futures
import queue
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any

from twisted.internet import defer

OnError = Callable[[BaseException, str], None]


class QueueFull(Exception):
    """A worker's or inbox's queue is at its bound; the job or message was not taken."""


class WorkerStopped(Exception):
    """The worker is stopped (or stopping without drain); the job will not run."""


def _print_error(exc: BaseException, tb: str) -> None:
    print(tb, flush=True)


def start_thread(
    name: str, target: Callable[..., Any], *args: Any, on_error: OnError = _print_error
) -> threading.Thread:
    """Start ``target(*args)`` in a named daemon thread; an exception that escapes it is
    handed to ``on_error(exc, traceback_text)`` instead of vanishing into stderr."""

    def run() -> None:
        try:
            target(*args)
        except BaseException as exc:  # the thread's last word: report it, never re-raise
            on_error(exc, traceback.format_exc())

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    return thread


def run_blocking(
    fn: Callable[..., Any], *args: Any, name: str = "run-blocking", reactor=None
) -> defer.Deferred:
    """Run one blocking call ``fn(*args)`` off the reactor, in a named thread of its own;
    the Deferred fires on the reactor with its result or its exception. Call from the
    reactor thread.

    For a call made once (a stop that drains and joins threads): unlike ``deferToThread`` it
    never waits for, or takes, a slot of the reactor's thread pool, which ocs fills with the
    agent's running operations.
    """
    d: defer.Deferred = defer.Deferred()
    if reactor is None:
        from twisted.internet import reactor

    def run() -> None:
        try:
            result = fn(*args)
        except BaseException as exc:  # delivered to the Deferred, never lost
            reactor.callFromThread(d.errback, exc)
        else:
            reactor.callFromThread(d.callback, result)

    start_thread(name, run)
    return d


_STOP = object()


class WorkerPool:
    """``size`` threads that run submitted jobs, at most ``max_queue`` waiting at once.

    Args:
        name: thread name prefix (shows in ``py-spy`` and tracebacks).
        size: number of threads.
        max_queue: most jobs waiting or running; one more is refused with
            :class:`QueueFull`.
        reactor: delivers Deferred results (``callFromThread``); the global reactor by
            default, imported only when a Deferred is first asked for.
    """

    def __init__(self, name: str, size: int = 2, max_queue: int = 10_000, reactor=None) -> None:
        if size < 1 or max_queue < 1:
            raise ValueError("size and max_queue must be at least 1")
        self.name = name
        self.size = size
        self.max_queue = max_queue
        self._reactor = reactor
        # SimpleQueue (C) rather than a Condition: the hand-over costs about 1 µs.
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._lock = threading.Lock()
        # Jobs taken (under the lock) and finished (each thread counts its own, so the
        # threads never take the submitters' lock: half the cost of a job hand-over).
        self._taken = 0
        self._finished = [0] * size
        self._accepting = True
        self._discard = False
        self._threads = [
            start_thread(f"{name}-{i}" if size > 1 else name, self._run, i) for i in range(size)
        ]

    # ---- submitting ----------------------------------------------------------------------

    @property
    def pending(self) -> int:
        """Jobs waiting or running."""
        return self._taken - sum(self._finished)

    def _take(self, target, fn, args, kwargs) -> None:
        with self._lock:
            if not self._accepting:
                raise WorkerStopped(f"worker {self.name} is stopped")
            pending = self._taken - sum(self._finished)
            if pending >= self.max_queue:
                raise QueueFull(f"worker {self.name} has {pending} jobs waiting")
            self._taken += 1
        self._jobs.put((target, fn, args, kwargs))

    def submit(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> defer.Deferred:
        """Run ``fn(*args, **kwargs)`` in a worker thread. Call from the reactor thread.

        Returns a Deferred fired on the reactor with the result or the exception; it fails
        at once with :class:`QueueFull` or :class:`WorkerStopped` when the job is refused.
        """
        d: defer.Deferred = defer.Deferred()
        if self._reactor is None:
            from twisted.internet import reactor  # the agent installs its reactor first

            self._reactor = reactor
        try:
            self._take(d, fn, args, kwargs)
        except (QueueFull, WorkerStopped) as exc:
            return defer.fail(exc)
        return d

    def call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> concurrent.futures.Future:
        """Like :meth:`submit`, from any thread, without a reactor: a Future."""
        future: concurrent.futures.Future = concurrent.futures.Future()
        try:
            self._take(future, fn, args, kwargs)
        except (QueueFull, WorkerStopped) as exc:
            future.set_exception(exc)
        return future

    # ---- running -------------------------------------------------------------------------

    def _run(self, index: int) -> None:
        finished = self._finished
        while True:
            job = self._jobs.get()
            if job is _STOP:
                return
            target, fn, args, kwargs = job
            if self._discard:
                ok, value = False, WorkerStopped(f"worker {self.name} stopped before the job ran")
            else:
                try:
                    ok, value = True, fn(*args, **kwargs)
                except Exception as exc:
                    ok, value = False, exc
            finished[index] += 1  # this thread's own count: no lock
            if type(target) is defer.Deferred:
                # one callFromThread per job, as a hand-written loop would
                self._reactor.callFromThread(target.callback if ok else target.errback, value)
            elif ok:
                target.set_result(value)
            else:
                target.set_exception(value)

    def stop(self, drain: bool = True, timeout: float = 10.0) -> bool:
        """Refuse new jobs; run (``drain``) or fail the waiting ones; end the threads.

        Blocks up to ``timeout`` seconds: call it from a thread, or at the very end of the
        process. True when every thread ended in time.
        """
        with self._lock:
            first = self._accepting
            self._accepting = False
            self._discard = self._discard or not drain
        if first:
            for _ in self._threads:
                self._jobs.put(_STOP)
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        return not any(t.is_alive() for t in self._threads)


class SerialWorker(WorkerPool):
    """One thread that runs jobs one at a time, in submission order.

    The thread owns whatever its jobs touch (a SQLite connection, a schedule); nothing
    else may use those objects.
    """

    def __init__(self, name: str, max_queue: int = 10_000, reactor=None) -> None:
        super().__init__(name, size=1, max_queue=max_queue, reactor=reactor)


class Inbox:
    """A bounded queue of messages for one consuming loop, taken in batches.

    Producers :meth:`put` from any thread; the loop calls :meth:`get_batch` with the time
    until its own next deadline and gets every message that has arrived, or ``[]`` on
    timeout. After :meth:`close`, ``get_batch`` no longer waits and :attr:`closed` is set,
    so the loop finishes what it holds and returns.
    """

    def __init__(self, maxsize: int = 100_000) -> None:
        self.maxsize = maxsize
        # A SimpleQueue (C) carries the messages and wakes the loop, cheaper than a
        # Condition (measured on 2 busy cores: put + get_batch 3 µs against 6 µs, and
        # about 8 µs less CPU per wake-up); the lock only keeps the count and orders put
        # against close.
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._count = 0
        self.closed = False

    def __len__(self) -> int:
        return self._count

    def put(self, item: Any) -> None:
        """Queue one message; :class:`QueueFull` at the bound, :class:`WorkerStopped` once
        closed."""
        with self._lock:
            if self.closed:
                raise WorkerStopped("the inbox is closed")
            if self._count >= self.maxsize:
                raise QueueFull(f"inbox holds {self._count} messages")
            self._count += 1
            self._queue.put(item)

    def get_batch(self, timeout: float | None = None) -> list:
        """Every waiting message, waiting up to ``timeout`` seconds (None: until one comes
        or the inbox is closed) for the first."""
        q = self._queue
        try:
            if self.closed or (timeout is not None and timeout <= 0):
                items = [q.get_nowait()]
            else:
                items = [q.get(timeout=timeout)]
        except queue.Empty:
            return []
        try:
            while True:
                items.append(q.get_nowait())
        except queue.Empty:
            pass
        if _CLOSED in items:
            items = [item for item in items if item is not _CLOSED]
        with self._lock:
            self._count -= len(items)
        return items

    def close(self) -> None:
        with self._lock:
            if not self.closed:
                self.closed = True
                self._queue.put(_CLOSED)  # wakes a waiting loop


_CLOSED = object()


class ReactorThread:
    """A thread that runs a Twisted reactor of its own, never the agent's global one.

    For a server whose requests need state one thread owns (the orchestrator's SQLite
    state): the same thread reads the sockets and runs the state's jobs, so a request is
    never handed between threads. On 2 cores that hand-over (a wake-up and the GIL passed
    both ways) cost the orchestrator about 100 us of CPU per request and a quarter of its
    read-next rate (``benchmarks/file_orchestrator.py``).

    Whatever runs on the thread uses :attr:`reactor` (``Site(reactor=...)``, its
    ``callLater`` and ``listenTCP``); other threads reach it through :meth:`call` or
    ``reactor.callFromThread``. The agent's reactor stays the process's I/O thread for
    Twisted (``isInIOThread``, ``blockingCallFromThread``).

    Args:
        name: the thread's name.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.reactor = _private_reactor()
        started = threading.Event()
        self.reactor.callWhenRunning(started.set)
        self.thread = start_thread(name, self.reactor.run, False)  # no signal handlers
        if not started.wait(10):
            raise RuntimeError(f"the reactor of thread {name} did not start")

    def in_thread(self) -> bool:
        """Whether the caller runs on this thread."""
        return threading.current_thread() is self.thread

    def call(self, fn: Callable[..., Any], *args: Any) -> concurrent.futures.Future:
        """Run ``fn(*args)`` on the thread (any thread may call); a Future of the result.
        On the thread itself the call runs at once."""
        future: concurrent.futures.Future = concurrent.futures.Future()

        def run() -> None:
            try:
                future.set_result(fn(*args))
            except BaseException as exc:  # delivered to the Future, never lost
                future.set_exception(exc)

        if self.in_thread():
            run()
        elif self.thread.is_alive():
            self.reactor.callFromThread(run)
        else:
            future.set_exception(WorkerStopped(f"thread {self.name} is stopped"))
        return future

    def stop(self, timeout: float = 10.0) -> bool:
        """Stop the reactor (its shutdown closes its ports and connections) and end the
        thread; True when it ended within ``timeout`` seconds. Call from another thread."""
        if self.thread.is_alive():
            self.reactor.callFromThread(self._stop_reactor)
            self.thread.join(timeout)
        return not self.thread.is_alive()

    def _stop_reactor(self) -> None:
        if self.reactor.running:
            self.reactor.stop()


def _private_reactor():
    """A new reactor object (epoll where there is epoll), not installed as the global one."""
    try:
        from twisted.internet.epollreactor import EPollReactor as Reactor
    except ImportError:  # not Linux
        from twisted.internet.selectreactor import SelectReactor as Reactor
    reactor = Reactor()
    # run() would make this thread Twisted's I/O thread for the whole process
    reactor._registerAsIOThread = False
    return reactor
