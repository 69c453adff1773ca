"""SQLite files: one place that opens them and sets their pragmas, one transaction block.

Durability levels, and which store uses which:

* ``Durability.POWER_SAFE``: WAL, ``synchronous=FULL``. A committed transaction survives a
  power cut. The SupRsync database: a row there means "this file may be copied off and
  deleted", so it must never be lost or describe less than it says.
* ``Durability.CRASH_SAFE``: WAL, ``synchronous=NORMAL``. A committed transaction survives
  a crash or ``kill -9`` of the agent; a power cut may lose the last transactions before a
  checkpoint, never corrupt the file. Local state that an agent can rebuild or whose last
  seconds a user would re-request (the orchestrator's records, a recorder's schedule), where
  an fsync per request would cost more than it saves.
"""

from __future__ import annotations

import contextlib
import enum
import os
import sqlite3
from collections.abc import Iterator


class Durability(enum.Enum):
    POWER_SAFE = "FULL"
    CRASH_SAFE = "NORMAL"


DEFAULT_BUSY_TIMEOUT_MS = 5000


def apply_pragmas(
    con, durability: Durability, busy_timeout_ms: int = DEFAULT_BUSY_TIMEOUT_MS
) -> None:
    """Set the pragmas of ``durability`` on a DB-API connection (sqlite3 or SQLAlchemy's
    raw connection). The only place in the package that sets pragmas."""
    cur = con.cursor()
    try:
        cur.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute(f"PRAGMA synchronous={durability.value}")
        cur.execute("PRAGMA foreign_keys=ON")
    finally:
        cur.close()


def connect(
    path: str,
    durability: Durability,
    busy_timeout_ms: int = DEFAULT_BUSY_TIMEOUT_MS,
) -> sqlite3.Connection:
    """Open (creating it and its folder) the SQLite file at ``path``.

    The connection is in autocommit mode: writes go in :func:`transaction` blocks. It may be
    used from a thread other than the one that opened it, but from one thread at a time (the
    store's :class:`~socs_agents.runtime.workers.SerialWorker`).
    """
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    con = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    apply_pragmas(con, durability, busy_timeout_ms)
    return con


def checkpoint(con: sqlite3.Connection) -> None:
    """Copy the WAL into the database file without waiting for readers."""
    con.execute("PRAGMA wal_checkpoint(PASSIVE)")


def disable_autocheckpoint(con: sqlite3.Connection) -> None:
    """Leave checkpoints (the store's fsyncs) to :func:`checkpoint`, called off the hot
    path."""
    con.execute("PRAGMA wal_autocheckpoint=0")


def begin_statement(immediate: bool = True) -> str:
    """The statement that opens a transaction: ``BEGIN IMMEDIATE`` takes the write lock at
    once (for SQLAlchemy's ``begin`` event, which issues BEGIN itself)."""
    return "BEGIN IMMEDIATE" if immediate else "BEGIN"


def _rollback(con: sqlite3.Connection) -> None:
    # SQLite may have rolled back by itself (disk full, I/O error); the first error is the
    # one to report.
    if con.in_transaction:
        with contextlib.suppress(sqlite3.Error):
            con.execute("ROLLBACK")


@contextlib.contextmanager
def transaction(con: sqlite3.Connection, immediate: bool = True) -> Iterator[sqlite3.Connection]:
    """``BEGIN [IMMEDIATE] … COMMIT``, or ``ROLLBACK`` if the block or the COMMIT raises.

    ``immediate`` takes the write lock at BEGIN, so a busy database fails before any work
    and reads inside the block see what the writes will change. A failed COMMIT (disk full,
    read-only) rolls back too, so a kept connection is never left inside a transaction.
    """
    con.execute(begin_statement(immediate))
    try:
        yield con
        con.execute("COMMIT")
    except BaseException:
        _rollback(con)
        raise


def is_locked(exc: BaseException) -> bool:
    """True for SQLite's "database is locked/busy" (worth retrying), False for anything
    else."""
    if not isinstance(exc, sqlite3.OperationalError):
        # SQLAlchemy wraps the driver's error
        exc = getattr(exc, "orig", None)
        if not isinstance(exc, sqlite3.OperationalError):
            return False
    text = str(exc).lower()
    return "locked" in text or "busy" in text
