"""One way to log: ``report(level, text)`` for plain cores, txaio for the agents.

Plain cores (no OCS, no Twisted) take a :data:`Report` callable; the agent passes
:func:`reporter` of its txaio logger, tests a list's ``append``.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable

Report = Callable[[str, str], None]
LEVELS = ("debug", "info", "warn", "error")


def no_report(level: str, text: str) -> None:
    """A :data:`Report` that drops everything (for cores used without an agent)."""


def reporter(log) -> Report:
    """A :data:`Report` writing to a txaio logger (``OCSAgent.log``); the text is passed
    as a field, so braces in it are never taken for format fields."""

    def report(level: str, text: str) -> None:
        getattr(log, level if level in LEVELS else "info")("{text}", text=text)

    return report


def start_logging() -> None:
    """Start txaio's logging at the level of ``$LOGLEVEL`` (default ``info``), as ocs's
    agents do. Call once, in ``main()``, before the agent is built."""
    import txaio  # late: importing it picks a framework

    txaio.use_twisted()
    txaio.start_logging(level=os.environ.get("LOGLEVEL", "info"))


class RateLimit:
    """At most one log line per ``key`` every ``interval`` seconds; counts what it held
    back, so the next line can say "(+N more)"."""

    def __init__(
        self, report: Report, interval: float = 10.0, clock: Callable[[], float] = time.monotonic
    ):
        self.report = report
        self.interval = interval
        self.clock = clock
        self._last: dict[str, float] = {}
        self._held: dict[str, int] = {}
        self._lock = threading.Lock()

    def __call__(self, key: str, level: str, text: str) -> bool:
        """Log ``text`` unless a line for ``key`` went out less than ``interval`` ago;
        True when logged."""
        now = self.clock()
        with self._lock:
            last = self._last.get(key)
            if last is not None and now - last < self.interval:
                self._held[key] = self._held.get(key, 0) + 1
                return False
            self._last[key] = now
            held = self._held.pop(key, 0)
        self.report(level, text if not held else f"{text} (+{held} more since the last line)")
        return True
