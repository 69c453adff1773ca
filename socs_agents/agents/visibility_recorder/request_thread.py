"""A thread of its own for the recorder's schedule requests, answering on the reactor.

Imports no ocs (so no txaio framework choice): the unit tests use it without a reactor.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.python.failure import Failure


class RequestThread:
    """One thread of its own for the schedule requests of the direct procedure.

    A request then costs one wake-up of this thread and one ``callFromThread``: Twisted's
    thread pool (``deferToThread``) adds its own coordination, measured here at about
    0.1 ms of CPU per request, which is what a request costs when many pipelines are asked
    at once on few cores. Requests run one after the other, as the schedule's lock would
    serialise them anyway.

    Args:
        name: the thread's name.
        deliver: how the thread hands an outcome back (``deliver(fire, value)``); the
            reactor's ``callFromThread`` unless a test wants it in the thread itself.
    """

    def __init__(self, name: str = "requests", deliver: Callable[..., Any] | None = None) -> None:
        if deliver is None:
            from twisted.internet import reactor

            deliver = reactor.callFromThread
        self._deliver = deliver
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    @property
    def closed(self) -> bool:
        """True once :meth:`stop` was called: new requests fail."""
        return self._closed

    def submit(self, func: Callable[[Any], Any], arg: Any) -> defer.Deferred:
        """Run ``func(arg)`` in the thread; the Deferred fires on the reactor."""
        if self._closed:
            return defer.fail(RuntimeError("the recorder is shutting down"))
        d = defer.Deferred()
        self._jobs.put((func, arg, d))
        return d

    def _run(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            func, arg, d = job
            try:
                result = func(arg)
            except BaseException:
                self._deliver(d.errback, Failure())
            else:
                self._deliver(d.callback, result)

    def stop(self, timeout: float = 10.0) -> bool:
        """Finish the requests already submitted, then end the thread; later ones fail.
        True when the thread ended within ``timeout`` seconds."""
        self._closed = True
        self._jobs.put(None)
        self._thread.join(timeout)
        return not self._thread.is_alive()
