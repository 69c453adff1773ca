"""The trigger-record state machine of the FileOrchestrator, persisted in SQLite.

Records move ``pending -> active -> done`` (a read leases a record to a host; ``complete``
ends it; an expired lease puts it back to pending). A removed file's pending records are
``withdrawn``. Credits per record type come from the Data Filter; a read consumes one.

Why plain ``sqlite3`` and not SQLAlchemy: every operation is one tiny transaction (one or two
single-row UPDATEs); the ORM's per-statement overhead (100-300 us) would be a third of the
per-request budget at 1,000 reads/s on two shared cores.

The class holds an in-memory index of open (pending and active) records; SQLite is the truth,
written before any answer is returned. Done records stay in SQLite only. Every operation
changes memory only after its transaction committed, so an operation that raises (a locked
database) leaves the state as it was and may simply be called again.

Operations return plain values and raise :class:`DomainError` subclasses; nothing here knows
HTTP. Not thread-safe: the agent owns one instance on the thread of its
:class:`~.service.StateService` and calls it from there only.
"""

from __future__ import annotations

import gc
import heapq
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from ...runtime import Durability, checkpoint, connect, disable_autocheckpoint, transaction

TRIGGER_RECORD = "TriggerRecord"
TIME_SLICE = "TimeSlice"
RECORD_TYPES = (TRIGGER_RECORD, TIME_SLICE)

PENDING, ACTIVE, DONE, WITHDRAWN = 0, 1, 2, 3
STATE_NAMES = {PENDING: "pending", ACTIVE: "active", DONE: "done", WITHDRAWN: "withdrawn"}

#: SQLite integers are signed 64-bit; the client sends uint64, so stay below 2**63.
MAX_ID = 2**63 - 1
#: most credits one request may add
MAX_CREDITS = 1_000_000

SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    id INTEGER PRIMARY KEY,
    host TEXT NOT NULL,
    path TEXT NOT NULL,
    run_number INTEGER NOT NULL,
    record_type TEXT NOT NULL,
    added REAL NOT NULL,
    created REAL NOT NULL,
    removed INTEGER NOT NULL DEFAULT 0,
    registered INTEGER NOT NULL DEFAULT 0,
    UNIQUE (host, path)
);
CREATE TABLE IF NOT EXISTS records (
    id INTEGER PRIMARY KEY,
    file_id INTEGER NOT NULL REFERENCES files (id),
    record_type TEXT NOT NULL,
    run_number INTEGER NOT NULL,
    number INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    state INTEGER NOT NULL,
    lease_host TEXT,
    lease_expires REAL,
    handed_out INTEGER NOT NULL DEFAULT 0,
    done_at REAL,
    UNIQUE (file_id, record_type, number, seq)
);
CREATE INDEX IF NOT EXISTS records_key ON records (record_type, run_number, number, seq);
CREATE INDEX IF NOT EXISTS records_open ON records (state) WHERE state < 2;
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""

#: Counters kept in SQLite with the state they describe.
COUNTER_NAMES = (
    "credits_TriggerRecord",
    "credits_TimeSlice",
    "requests_TriggerRecord",
    "requests_TimeSlice",
    "reads",
    "completed",
    "leases_expired",
    "withdrawn",
)


class DomainError(Exception):
    """A request the orchestrator refuses; the message says why (the answer's ``error``)."""


class Invalid(DomainError, ValueError):
    """The request itself is wrong (unknown record type, count below 1, a bad field)."""


class NoCredit(DomainError):
    """A read without a pending Data Filter request for its record type."""


class NotFound(DomainError):
    """No such record, or no record available for the host (and file)."""


class Busy(DomainError):
    """The state database stayed write-locked (by another process) past the limit."""


class Overloaded(DomainError):
    """Too many operations wait for the state already; the request was not taken."""


class Refused(DomainError):
    """A file that may not be taken (outside the allowed roots); ``reason`` is a counter
    name."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass
class FileInfo:
    id: int
    host: str
    path: str
    run_number: int
    record_type: str
    added: float
    #: the file's age for "oldest first": its creation time when known, else ``added``
    created: float
    removed: bool = False
    registered: bool = False
    #: open (pending + active) records of this file
    open: int = 0
    done: int = 0


@dataclass(slots=True)
class Record:
    id: int
    file_id: int
    record_type: str
    run_number: int
    number: int
    seq: int
    state: int
    lease_host: str | None
    lease_expires: float | None

    @property
    def key(self) -> tuple:
        return (self.record_type, self.run_number, self.number, self.seq)


@dataclass
class Handout:
    """What a read hands out: the body of a read-next answer."""

    file: str
    run_number: int
    trigger_number: int
    sequence_number: int
    type: str
    record_id: int = field(default=0, compare=False)
    lease_expires: float | None = field(default=None, compare=False)

    def answer(self) -> dict:
        return {
            "file": self.file,
            "run_number": self.run_number,
            "trigger_number": self.trigger_number,
            "sequence_number": self.sequence_number,
            "type": self.type,
        }


class State:
    """Files, records, leases and credits, persisted in one SQLite file.

    Args:
        db_path: the state database (created with its folder if missing).
        lease_timeout: seconds a handed-out record stays active before it returns to pending.
        lease_timeslices: lease time slices like trigger records. By default a time slice is
            done once handed out, because nothing ever completes time slices.
        clock: wall-clock time source (persisted lease expiries are wall-clock times).
        on_file_done: called with a :class:`FileInfo` when every record of a file is done.
        busy_timeout_ms: how long one transaction waits for another process's write lock
            before it raises. Short, because the thread that waits also serves HTTP; the
            caller waits between attempts instead (the agent's ``StateService``).
    """

    def __init__(
        self,
        db_path: str,
        lease_timeout: float = 300.0,
        lease_timeslices: bool = False,
        clock: Callable[[], float] = time.time,
        on_file_done: Callable[[FileInfo], None] | None = None,
        busy_timeout_ms: int = 5,
    ) -> None:
        self.db_path = os.path.abspath(db_path)
        os.makedirs(os.path.dirname(self.db_path), exist_ok=True)
        self.lease_timeout = float(lease_timeout)
        self.lease_timeslices = lease_timeslices
        self.clock = clock
        self.on_file_done = on_file_done
        # CRASH_SAFE (WAL, synchronous=NORMAL): a commit is a write into the WAL in the page
        # cache (20-40 us, no fsync), so it survives a kill -9; a power cut may lose the last
        # seconds of hand-outs, which Dispatchers re-request. An fsync per request would cost
        # more than the request.
        self.con = connect(self.db_path, Durability.CRASH_SAFE, busy_timeout_ms)
        # Checkpoints (the only fsyncs) run off the hot path, see checkpoint_file().
        disable_autocheckpoint(self.con)
        self.con.executescript(SCHEMA)
        self._load()

    # ---- loading -------------------------------------------------------------------------

    def _load(self) -> None:
        # Python's cyclic GC would run hundreds of times over the growing heap while 100,000
        # records are built (a third of the load time, measured); they form no cycles.
        enabled = gc.isenabled()
        gc.disable()
        try:
            self._load_rows()
        finally:
            if enabled:
                gc.enable()

    def _load_rows(self) -> None:
        self.files: dict[int, FileInfo] = {}
        self.file_ids: dict[tuple[str, str], int] = {}
        self.records: dict[int, Record] = {}
        self.by_key: dict[tuple, list[int]] = {}
        #: (host, record type) -> heap of (file created, record id) of pending records
        #: (oldest file first, then records in file order; lazy deletion)
        self.queues: dict[tuple[str, str], list[tuple[float, int]]] = {}
        #: heap of (lease expiry, record id) of active records (lazy deletion)
        self.leases: list[tuple[float, int]] = []
        self.counters = {name: 0 for name in COUNTER_NAMES}
        #: (state, record type) -> number of open records, kept as records move
        self.n_open = {(st, t): 0 for st in (PENDING, ACTIVE) for t in RECORD_TYPES}
        self.counters.update(dict(self.con.execute("SELECT name, value FROM counters")))
        for row in self.con.execute(
            "SELECT id, host, path, run_number, record_type, added, "
            "created, removed, registered FROM files"
        ):
            info = FileInfo(*row[:7], removed=bool(row[7]), registered=bool(row[8]))
            self.files[info.id] = info
            self.file_ids[(info.host, info.path)] = info.id
        for file_id, n in self.con.execute(
            "SELECT file_id, count(*) FROM records WHERE state = 2 GROUP BY file_id"
        ):
            self.files[file_id].done = n
        self.n_done = sum(f.done for f in self.files.values())
        self.n_removed = sum(1 for f in self.files.values() if f.removed)
        rows = self.con.execute(
            "SELECT id, file_id, record_type, run_number, number, seq, "
            "state, lease_host, lease_expires FROM records "
            "WHERE state < 2 ORDER BY id"
        ).fetchall()
        for row in rows:
            self._index(Record(*row))

    def _index(self, rec: Record) -> None:
        self.records[rec.id] = rec
        self.n_open[(rec.state, rec.record_type)] += 1
        self.by_key.setdefault(rec.key, []).append(rec.id)
        self.files[rec.file_id].open += 1
        if rec.state == PENDING:
            self._enqueue(rec)
        else:
            heapq.heappush(self.leases, (rec.lease_expires or 0.0, rec.id))

    def _enqueue(self, rec: Record) -> None:
        info = self.files[rec.file_id]
        heapq.heappush(
            self.queues.setdefault((info.host, rec.record_type), []), (info.created, rec.id)
        )

    def _set_state(self, rec: Record, state: int) -> None:
        self.n_open[(rec.state, rec.record_type)] -= 1
        rec.state = state
        self.n_open[(state, rec.record_type)] += 1

    def _forget(self, rec: Record, state: int) -> None:
        """``rec`` is closed (done or withdrawn, already committed): drop it from memory."""
        self.n_open[(rec.state, rec.record_type)] -= 1
        rec.state = state
        del self.records[rec.id]
        ids = self.by_key.get(rec.key)
        if ids is not None:
            ids.remove(rec.id)
            if not ids:
                del self.by_key[rec.key]
        self.files[rec.file_id].open -= 1

    def close(self) -> None:
        self.con.close()

    # ---- files ---------------------------------------------------------------------------

    def add_file(
        self,
        host: str,
        path: str,
        run_number: int,
        record_type: str,
        record_ids: Iterable[tuple[int, int]],
        created: float | None = None,
    ) -> dict:
        """Register a file and its records (idempotent: known records are left alone).

        A file that was removed and is added again becomes current; its withdrawn records
        become pending again. ``created``: when the file was made (its
        ``creation_timestamp``), which orders files oldest first; default: now.

        Returns ``{'status': 'ok', 'host', 'file', 'added', 'known'}``.
        """
        check_record_type(record_type)
        ids = sorted(set((int(n), int(s)) for n, s in record_ids))
        now = self.clock()
        key = (host, path)
        file_id = self.file_ids.get(key)
        new_records: list[Record] = []
        revived: list[Record] = []
        with transaction(self.con) as con:
            if file_id is None:
                cur = con.execute(
                    "INSERT INTO files (host, path, run_number, record_type, "
                    "added, created) VALUES (?, ?, ?, ?, ?, ?)",
                    (host, path, run_number, record_type, now, now if created is None else created),
                )
                file_id = cur.lastrowid
                known = {}
            else:
                con.execute(
                    "UPDATE files SET removed = 0, run_number = ? WHERE id = ?",
                    (run_number, file_id),
                )
                known = {
                    (n, s, t): (rid, st)
                    for rid, n, s, t, st in con.execute(
                        "SELECT id, number, seq, record_type, state FROM records WHERE file_id = ?",
                        (file_id,),
                    )
                }
            for number, seq in ids:
                have = known.get((number, seq, record_type))
                if have is None:
                    cur = con.execute(
                        "INSERT INTO records (file_id, record_type, run_number, number, seq, "
                        "state) VALUES (?, ?, ?, ?, ?, 0)",
                        (file_id, record_type, run_number, number, seq),
                    )
                    rid = cur.lastrowid
                elif have[1] == WITHDRAWN:
                    con.execute(
                        "UPDATE records SET state = 0, lease_host = NULL, "
                        "lease_expires = NULL WHERE id = ?",
                        (have[0],),
                    )
                    rid = have[0]
                else:
                    continue
                rec = Record(
                    rid, file_id, record_type, run_number, number, seq, PENDING, None, None
                )
                (new_records if have is None else revived).append(rec)
        info = self.files.get(file_id)
        if info is None:
            info = FileInfo(
                file_id,
                host,
                path,
                run_number,
                record_type,
                now,
                now if created is None else created,
            )
            self.files[file_id] = info
            self.file_ids[key] = file_id
        else:
            if info.removed:
                self.n_removed -= 1
            info.removed = False
            info.run_number = run_number
        for rec in new_records + revived:
            self._index(rec)
        return {
            "status": "ok",
            "host": host,
            "file": path,
            "added": len(new_records) + len(revived),
            "known": len(ids) - len(new_records) - len(revived),
        }

    def remove_file(self, host: str, path: str) -> dict:
        """Withdraw a file's pending records; active ones may still complete.

        Returns ``{'status': 'ok', 'host', 'file', 'withdrawn', 'known'}``.
        """
        file_id = self.file_ids.get((host, path))
        if file_id is None or self.files[file_id].removed:
            return {
                "status": "ok",
                "host": host,
                "file": path,
                "withdrawn": 0,
                "known": file_id is not None,
            }
        pending = [
            self.records[rid]
            for (rid,) in self.con.execute(
                "SELECT id FROM records WHERE file_id = ? AND state = 0", (file_id,)
            )
        ]
        with transaction(self.con) as con:
            con.execute("UPDATE files SET removed = 1 WHERE id = ?", (file_id,))
            con.execute("UPDATE records SET state = 3 WHERE file_id = ? AND state = 0", (file_id,))
            self._bump(("withdrawn", len(pending)))
        self.counters["withdrawn"] += len(pending)
        self.files[file_id].removed = True
        self.n_removed += 1
        for rec in pending:
            self._forget(rec, WITHDRAWN)
        return {
            "status": "ok",
            "host": host,
            "file": path,
            "withdrawn": len(pending),
            "known": True,
        }

    def mark_registered(self, file_id: int) -> None:
        with transaction(self.con) as con:
            con.execute("UPDATE files SET registered = 1 WHERE id = ?", (file_id,))
        if file_id in self.files:
            self.files[file_id].registered = True

    def files_to_register(self) -> list[FileInfo]:
        """Files whose records are all done, not removed, not yet registered."""
        return [
            f
            for f in self.files.values()
            if f.open == 0 and f.done > 0 and not f.removed and not f.registered
        ]

    # ---- credits and reads ---------------------------------------------------------------

    def _bump(self, *changes: tuple[str, int]) -> None:
        for name, delta in changes:
            self.con.execute(
                "INSERT INTO counters (name, value) VALUES (?, ?) "
                "ON CONFLICT (name) DO UPDATE SET value = value + excluded.value",
                (name, delta),
            )

    def request(self, record_type: str, count: int = 1) -> dict:
        """The Data Filter is ready for ``count`` more records of a type: add credits.

        Returns ``{'status': 'ok', 'type', 'credits'}``.
        """
        check_record_type(record_type)
        if not isinstance(count, int) or not 1 <= count <= MAX_CREDITS:
            raise Invalid(f"count must be between 1 and {MAX_CREDITS}")
        credit, req = f"credits_{record_type}", f"requests_{record_type}"
        with transaction(self.con):
            self._bump((credit, count), (req, count))
        self.counters[credit] += count
        self.counters[req] += count
        return {"status": "ok", "type": record_type, "credits": self.counters[credit]}

    def read_next(self, host: str, record_type: str, file: str = "") -> Handout:
        """Hand out the oldest pending record of a file on ``host``.

        Raises:
            NoCredit: the Data Filter has no request pending for this type.
            NotFound: no record is available (the credit is kept).
        """
        check_record_type(record_type)
        self.expire_leases()
        credit = f"credits_{record_type}"
        if self.counters[credit] <= 0:
            raise NoCredit(f"no {record_type} request from the Data Filter is pending")
        rec = self._next_pending(host, record_type, file)
        if rec is None:
            raise NotFound(
                f"no {record_type} available for host {host!r}"
                + (f" in file {file!r}" if file else "")
            )
        info = self.files[rec.file_id]
        now = self.clock()
        lease = record_type == TRIGGER_RECORD or self.lease_timeslices
        try:
            with transaction(self.con) as con:
                if lease:
                    con.execute(
                        "UPDATE records SET state = 1, lease_host = ?, lease_expires = ?, "
                        "handed_out = handed_out + 1 WHERE id = ?",
                        (host, now + self.lease_timeout, rec.id),
                    )
                    self._bump((credit, -1), ("reads", 1))
                else:
                    con.execute(
                        "UPDATE records SET state = 2, lease_host = ?, done_at = ?, "
                        "handed_out = handed_out + 1 WHERE id = ?",
                        (host, now, rec.id),
                    )
                    self._bump((credit, -1), ("reads", 1), ("completed", 1))
        except BaseException:
            self._enqueue(rec)
            raise
        self.counters[credit] -= 1
        self.counters["reads"] += 1
        if lease:
            self._set_state(rec, ACTIVE)
            rec.lease_host, rec.lease_expires = host, now + self.lease_timeout
            heapq.heappush(self.leases, (rec.lease_expires, rec.id))
        else:
            self.counters["completed"] += 1
            self._finish(rec)
        return Handout(
            info.path,
            rec.run_number,
            rec.number,
            rec.seq,
            rec.record_type,
            rec.id,
            rec.lease_expires,
        )

    def _next_pending(self, host: str, record_type: str, file: str) -> Record | None:
        queue = self.queues.get((host, record_type))
        if not queue:
            return None
        if not file:
            while queue:
                _, rid = heapq.heappop(queue)
                rec = self.records.get(rid)
                if rec is not None and rec.state == PENDING:
                    return rec
            return None
        # A named file: the oldest pending record of that file (rare; a scan is fine).
        best = None
        for item in queue:
            rec = self.records.get(item[1])
            if (
                rec is not None
                and rec.state == PENDING
                and self.files[rec.file_id].path == file
                and (best is None or item < best)
            ):
                best = item
        if best is None:
            return None
        queue.remove(best)
        heapq.heapify(queue)
        return self.records[best[1]]

    def _finish(self, rec: Record) -> None:
        """``rec`` became done (already committed)."""
        self._forget(rec, DONE)
        info = self.files[rec.file_id]
        info.done += 1
        self.n_done += 1
        if info.open == 0 and not info.removed and self.on_file_done is not None:
            self.on_file_done(info)

    # ---- completion and leases -----------------------------------------------------------

    def complete(
        self,
        run_number: int,
        trigger_number: int,
        sequence_number: int,
        record_type: str = TRIGGER_RECORD,
        file: str = "",
    ) -> dict:
        """Mark a record done: ``{'status': 'ok', 'file'}``, or ``{'status': 'ok',
        'already_done': True}`` when it is done already.

        Raises:
            NotFound: no such record is known.
        """
        check_record_type(record_type)
        key = (record_type, run_number, trigger_number, sequence_number)
        candidates = [self.records[rid] for rid in self.by_key.get(key, ())]
        if file:
            candidates = [r for r in candidates if self.files[r.file_id].path == file]
        if not candidates:
            query = (
                "SELECT count(*) FROM records r JOIN files f ON f.id = r.file_id "
                "WHERE r.record_type = ? AND r.run_number = ? AND r.number = ? "
                "AND r.seq = ? AND r.state = 2"
            )
            args: tuple = key
            if file:
                query += " AND f.path = ?"
                args = key + (file,)
            if self.con.execute(query, args).fetchone()[0]:
                return {"status": "ok", "already_done": True}
            raise NotFound(
                f"no {record_type} run {run_number} number "
                f"{trigger_number}.{sequence_number} is known"
            )
        # Prefer the record actually handed out, then the oldest.
        rec = min(candidates, key=lambda r: (r.state != ACTIVE, r.id))
        now = self.clock()
        with transaction(self.con) as con:
            con.execute("UPDATE records SET state = 2, done_at = ? WHERE id = ?", (now, rec.id))
            self._bump(("completed", 1))
        self.counters["completed"] += 1
        self._finish(rec)
        return {"status": "ok", "file": self.files[rec.file_id].path}

    def next_expiry(self) -> float | None:
        while self.leases:
            expires, rid = self.leases[0]
            rec = self.records.get(rid)
            if rec is not None and rec.state == ACTIVE and rec.lease_expires == expires:
                return expires
            heapq.heappop(self.leases)
        return None

    def expire_leases(self) -> int:
        """Return every record whose lease ran out to pending (withdrawn if its file was
        removed); count them. Returns how many expired."""
        now = self.clock()
        expired: list[Record] = []
        while True:
            expires = self.next_expiry()
            if expires is None or expires > now:
                break
            _, rid = heapq.heappop(self.leases)
            expired.append(self.records[rid])
        if not expired:
            return 0
        back = [r for r in expired if not self.files[r.file_id].removed]
        gone = [r for r in expired if self.files[r.file_id].removed]
        try:
            with transaction(self.con) as con:
                con.executemany(
                    "UPDATE records SET state = 0, lease_host = NULL, "
                    "lease_expires = NULL WHERE id = ?",
                    [(r.id,) for r in back],
                )
                con.executemany(
                    "UPDATE records SET state = 3 WHERE id = ?", [(r.id,) for r in gone]
                )
                self._bump(("leases_expired", len(expired)), ("withdrawn", len(gone)))
        except BaseException:
            for r in expired:
                heapq.heappush(self.leases, (r.lease_expires, r.id))
            raise
        self.counters["leases_expired"] += len(expired)
        self.counters["withdrawn"] += len(gone)
        for rec in back:
            self._set_state(rec, PENDING)
            rec.lease_host, rec.lease_expires = None, None
            self._enqueue(rec)
        for rec in gone:
            self._forget(rec, WITHDRAWN)
        return len(expired)

    # ---- figures and reset ---------------------------------------------------------------

    def counts(self) -> dict:
        """Counts for the feed, the ``stats`` task and ``GET /stats`` (O(1): taken after
        every operation for the agent's snapshot)."""
        n = self.n_open
        c = self.counters
        p_tr, p_ts = n[(PENDING, TRIGGER_RECORD)], n[(PENDING, TIME_SLICE)]
        a_tr, a_ts = n[(ACTIVE, TRIGGER_RECORD)], n[(ACTIVE, TIME_SLICE)]
        return {
            "files": len(self.files) - self.n_removed,
            "files_removed": self.n_removed,
            "pending": p_tr + p_ts,
            "active": a_tr + a_ts,
            "done": self.n_done,
            "pending_tr": p_tr,
            "pending_ts": p_ts,
            "active_tr": a_tr,
            "active_ts": a_ts,
            "credits_tr": c["credits_TriggerRecord"],
            "credits_ts": c["credits_TimeSlice"],
            "requests_tr": c["requests_TriggerRecord"],
            "requests_ts": c["requests_TimeSlice"],
            "reads": c["reads"],
            "completed": c["completed"],
            "leases_expired": c["leases_expired"],
            "withdrawn": c["withdrawn"],
        }

    def file_table(self, limit: int = 100) -> list[dict]:
        """The newest ``limit`` files with their open and done counts."""
        newest = sorted(self.files.values(), key=lambda f: f.id, reverse=True)[:limit]
        return [
            {
                "host": f.host,
                "file": f.path,
                "run_number": f.run_number,
                "record_type": f.record_type,
                "open": f.open,
                "done": f.done,
                "removed": f.removed,
                "registered": f.registered,
            }
            for f in newest
        ]

    def reset(self) -> dict:
        """Forget every file, record, credit and counter. Returns the counts before."""
        before = self.counts()
        with transaction(self.con) as con:
            con.execute("DELETE FROM records")
            con.execute("DELETE FROM files")
            con.execute("DELETE FROM counters")
        self._load()
        return before


def check_record_type(record_type: str) -> None:
    if record_type not in RECORD_TYPES:
        raise Invalid(f"unknown record type {record_type!r}")


def checkpoint_file(db_path: str) -> None:
    """Copy the WAL of the state database into it (fsync) from a connection of its own, so
    the thread that owns the :class:`State` never waits for the disk."""
    con = connect(db_path, Durability.CRASH_SAFE)
    try:
        checkpoint(con)
    finally:
        con.close()
