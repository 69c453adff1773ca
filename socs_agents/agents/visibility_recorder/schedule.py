"""The recording schedule: request times, the reference's validation rules, SQLite persistence.

No OCS or Twisted here. Times are unix seconds; the clock is passed in (``now``).

Rules (as the OVRO-LWA data recorder, with its weaknesses fixed):

* ``start`` and ``stop`` take an integer MJD and milliseconds past midnight (``start_mjd`` /
  ``start_mpm``, or the reference code's ``mjd`` / ``mpm``). The MJD may be ``"now"``: the
  request time plus a lead time (15 s by default); the MPM is then ignored.
* A time more than :data:`ADVANCE_NOTICE_S` in the past is refused ("insufficient advanced
  notice").
* A start is refused when it overlaps an operation already scheduled or running. A start
  opens a recording that lasts until a stop is scheduled.
* A stop applies to the operation active at the stop time and ends it at that time (not at
  once); with none active then, it is refused.
* The schedule is kept in SQLite, so an agent restarted in the middle of a recording finds it
  and resumes.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from ... import runtime
from ...timeutil import MS_PER_DAY, mjd_mpm_to_unix, unix_to_mjd_mpm, utc_iso

#: A start or stop this far in the past is still accepted (a request's transit time).
ADVANCE_NOTICE_S = 2.0
#: "now" means this long after the request arrives, unless configured otherwise.
DEFAULT_NOW_LEAD_S = 15.0

SCHEDULED, RECORDING, DONE, FAILED = "scheduled", "recording", "done", "failed"
OPEN_STATES = (SCHEDULED, RECORDING)


class ScheduleError(ValueError):
    """A request the schedule refuses; the message is the answer the caller sees."""


@dataclass(frozen=True)
class RequestTime:
    """A resolved request time."""

    t: float
    mjd: int
    mpm: int
    was_now: bool


#: The MJDs a request may name: 1970-01-01 to 9999-12-31 (what a unix time and a UTC date
#: can hold); anything else is refused with a message naming the parameter.
MIN_MJD, MAX_MJD = 40587, 2_973_483
#: Longest text taken for a number (a longer one is refused before any conversion).
_MAX_NUMBER_TEXT = 32


def _as_int(name: str, value: Any) -> int:
    if isinstance(value, bool):
        raise ScheduleError(f"{name} must be an integer, not {value!r}")
    if isinstance(value, float):
        if not value.is_integer():  # nan and inf included
            raise ScheduleError(f"{name} must be an integer, not {value!r}")
        return int(value)
    if isinstance(value, int):
        return value
    if not isinstance(value, str) or len(value) > _MAX_NUMBER_TEXT:
        shown = repr(value) if len(repr(value)) <= 40 else f"{repr(value)[:40]}..."
        raise ScheduleError(f"{name} must be an integer or 'now', not {shown}")
    try:
        return int(value.strip())
    except ValueError:
        raise ScheduleError(f"{name} must be an integer or 'now', not {value!r}") from None


def _in_range(name: str, value: int, low: int, high: int, unit: str = "") -> int:
    if not low <= value <= high:
        shown = (
            str(value)
            if abs(value) < 10**20
            else f"{str(value)[:12]}... ({len(str(value))} digits)"
        )
        raise ScheduleError(f"{name} must be within {low}..{high}{unit}, not {shown}")
    return value


def request_time(
    params: Mapping[str, Any], which: str, now: float, lead: float = DEFAULT_NOW_LEAD_S
) -> RequestTime:
    """Read ``<which>_mjd``/``<which>_mpm`` (or ``mjd``/``mpm``) from a request.

    Args:
        params: the request's arguments; ``None`` values count as missing.
        which: ``"start"`` or ``"stop"``.
        now: the time the request arrived.
        lead: what ``"now"`` adds to ``now``.

    Raises:
        ScheduleError: a missing keyword or a value that is not an MJD/MPM (huge and
            non-finite numbers included), naming the parameter.
    """

    def pick(key):
        value = params.get(f"{which}_{key}")
        return params.get(key) if value is None else value

    mjd, mpm = pick("mjd"), pick("mpm")
    if mjd is None:
        missing = [f"{which}_mjd (or mjd)"]
        if mpm is None:
            missing.append(f"{which}_mpm (or mpm)")
        raise ScheduleError(f"Missing required keyword(s): {', '.join(missing)}")
    if isinstance(mjd, str) and mjd.strip().lower() == "now":
        t = now + lead
        day, ms = unix_to_mjd_mpm(t)
        return RequestTime(t=t, mjd=day, mpm=ms, was_now=True)
    if mpm is None:
        raise ScheduleError(f"Missing required keyword(s): {which}_mpm (or mpm)")
    day = _in_range(f"{which}_mjd", _as_int(f"{which}_mjd", mjd), MIN_MJD, MAX_MJD)
    ms = _in_range(f"{which}_mpm", _as_int(f"{which}_mpm", mpm), 0, MS_PER_DAY - 1, " ms")
    return RequestTime(t=mjd_mpm_to_unix(day, ms), mjd=day, mpm=ms, was_now=False)


def check_notice(t: float, now: float, which: str) -> None:
    """Refuse a time more than :data:`ADVANCE_NOTICE_S` in the past."""
    if t < now - ADVANCE_NOTICE_S:
        raise ScheduleError(
            f"Insufficient advanced notice: the {which} time {utc_iso(t)} is "
            f"{now - t:.1f} s in the past"
        )


@dataclass(frozen=True)
class Operation:
    """One recording: from ``start`` to ``stop`` (open-ended while ``stop`` is None)."""

    id: int
    tag: str
    start: float
    stop: float | None
    state: str = SCHEDULED
    created: float = 0.0
    actual_start: float | None = None
    actual_stop: float | None = None
    files: int = 0
    resumed: int = 0
    note: str = ""

    @property
    def end(self) -> float:
        return math.inf if self.stop is None else self.stop

    def covers(self, t: float) -> bool:
        return self.start <= t < self.end

    def describe(self) -> str:
        stop = "open-ended" if self.stop is None else utc_iso(self.stop)
        return f"{self.tag} ({utc_iso(self.start)} to {stop})"

    def as_dict(self) -> dict:
        return {
            "id": self.id,
            "tag": self.tag,
            "start": self.start,
            "stop": self.stop,
            "state": self.state,
            "actual_start": self.actual_start,
            "actual_stop": self.actual_stop,
            "files": self.files,
            "resumed": self.resumed,
            "note": self.note,
        }


_COLUMNS = (
    "id",
    "tag",
    "start",
    "stop",
    "state",
    "created",
    "actual_start",
    "actual_stop",
    "files",
    "resumed",
    "note",
)


class Schedule:
    """The schedule of one pipeline, persisted in a SQLite file (thread-safe, blocking).

    Args:
        path: the SQLite file (its folder is created); ``":memory:"`` for a throwaway one.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._lock = threading.Lock()
        # CRASH_SAFE (WAL, synchronous=NORMAL): a request is committed before it is answered
        # and survives a crash or kill -9; only a power cut can take the last seconds'
        # requests, which a user sees in the answers and sends again (see the docs page).
        self._db = runtime.connect(path, runtime.Durability.CRASH_SAFE)
        with runtime.transaction(self._db):
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS operations ("
                " id INTEGER PRIMARY KEY AUTOINCREMENT, tag TEXT NOT NULL,"
                " start REAL NOT NULL, stop REAL, state TEXT NOT NULL, created REAL NOT NULL,"
                " actual_start REAL, actual_stop REAL, files INTEGER NOT NULL DEFAULT 0,"
                " resumed INTEGER NOT NULL DEFAULT 0, note TEXT NOT NULL DEFAULT '')"
            )

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # ---- reading -------------------------------------------------------------------------

    def _rows(self, where: str = "", args: tuple = ()) -> list[Operation]:
        sql = f"SELECT {', '.join(_COLUMNS)} FROM operations {where} ORDER BY start, id"
        return [Operation(*row) for row in self._db.execute(sql, args)]

    def operations(self, open_only: bool = False) -> list[Operation]:
        with self._lock:
            if open_only:
                return self._rows("WHERE state IN (?, ?)", OPEN_STATES)
            return self._rows()

    def get(self, op_id: int) -> Operation | None:
        with self._lock:
            rows = self._rows("WHERE id = ?", (op_id,))
        return rows[0] if rows else None

    def current(self, now: float) -> Operation | None:
        """The open operation that covers ``now``, if any."""
        for op in self.operations(open_only=True):
            if op.covers(now):
                return op
        return None

    def next_start(self, now: float) -> Operation | None:
        """The earliest open operation that starts after ``now``."""
        future = [op for op in self.operations(open_only=True) if op.start > now]
        return future[0] if future else None

    # ---- requests ------------------------------------------------------------------------

    def add_start(self, t: float, now: float, tag: str) -> Operation:
        """Schedule a recording from ``t`` on (open-ended until a stop).

        Raises:
            ScheduleError: ``t`` is in the past, or overlaps an open operation.
        """
        check_notice(t, now, "start")
        with self._lock, runtime.transaction(self._db):
            for op in self._rows("WHERE state IN (?, ?)", OPEN_STATES):
                if op.end > t:
                    raise ScheduleError(
                        f"Operation overlaps with a previously scheduled operation: {op.describe()}"
                    )
            cur = self._db.execute(
                "INSERT INTO operations (tag, start, stop, state, created) "
                "VALUES (?, ?, NULL, ?, ?)",
                (tag, t, SCHEDULED, now),
            )
            return Operation(id=cur.lastrowid, tag=tag, start=t, stop=None, created=now)

    def add_stop(self, t: float, now: float) -> Operation:
        """End the operation active at ``t`` at ``t``.

        Raises:
            ScheduleError: ``t`` is in the past, or no operation is active then.
        """
        check_notice(t, now, "stop")
        with self._lock, runtime.transaction(self._db):
            for op in self._rows("WHERE state IN (?, ?)", OPEN_STATES):
                if op.start < t <= op.end:
                    self._db.execute("UPDATE operations SET stop = ? WHERE id = ?", (t, op.id))
                    return replace(op, stop=t)
        raise ScheduleError(f"No operation active at the requested stop time {utc_iso(t)}")

    # ---- progress (called by the recording loop) -----------------------------------------

    def _update(self, op_id: int, **values) -> Operation:
        cols = ", ".join(f"{k} = ?" for k in values)
        with self._lock, runtime.transaction(self._db):
            self._db.execute(
                f"UPDATE operations SET {cols} WHERE id = ?", (*values.values(), op_id)
            )
            return self._rows("WHERE id = ?", (op_id,))[0]

    def mark_recording(self, op_id: int, actual_start: float) -> Operation:
        return self._update(op_id, state=RECORDING, actual_start=actual_start)

    def mark_resumed(self, op_id: int, note: str) -> Operation:
        op = self.get(op_id)
        return self._update(op_id, state=RECORDING, resumed=op.resumed + 1, note=note)

    def mark_files(self, op_id: int, files: int) -> Operation:
        return self._update(op_id, files=files)

    def mark_finished(
        self, op_id: int, actual_stop: float, failed: bool = False, note: str | None = None
    ) -> Operation:
        values = {"state": FAILED if failed else DONE, "actual_stop": actual_stop}
        if note is not None:
            values["note"] = note
        return self._update(op_id, **values)
