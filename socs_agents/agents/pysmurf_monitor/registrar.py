"""From announced file to committed SupRsync row: one registration thread, big-file workers.

No OCS and no Twisted here: threads, a journal, and counters that the agent reports.

* ``submit_many`` (called on the reactor, once per reactor iteration) journals the
  datagrams in one write and hands them over in one queue operation; O(µs) per file.
* The registration thread, woken by each hand-over, plans each row (rules), computes the md5
  of small files itself (one open, one read), and commits everything it has ready in one
  short transaction, so batches grow by themselves under load and a lone file is written at
  once. Files travel as plain tuples, and what is pending is counted per hand-over, not per
  file: at thousands of files a second, an object and a lock per file cost more than the
  rules.
  Files above ``big_file_bytes`` go to workers of their own, so a 500 MB file never delays
  small ones; a file that does not exist yet is retried until ``missing_file_timeout``.
* When the database is locked or unavailable the thread keeps every row, marks itself
  degraded, retries with backoff and goes on checksumming what arrives meanwhile; rows are
  written in the order they were announced, without duplicates.

Why one thread for small files: each thread that wants the GIL turns every syscall of the
others into a thread switch. With the planner, the checksum and the writer in one thread the
CPU per file is a third of what four threads handing work to each other cost.
"""

from __future__ import annotations

import collections
import heapq
import threading
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from operator import itemgetter
from typing import NamedTuple

from ...db.entries import (
    AllowedRoots,
    BadFileEntry,
    RootedFiles,
    md5_file,
    md5_small_file_under,
)
from ...db.suprsync import SupRsyncDB
from ...runtime import (
    Inbox,
    RateLimit,
    Report,
    SerialWorker,
    WorkerPool,
    WorkerStopped,
    no_report,
    start_thread,
)
from .journal import Journal
from .messages import FileAnnouncement, parse_datagram
from .rules import RemoteRule, plan_file


class _Arrival(NamedTuple):
    """The files of one :meth:`Registrar.submit_many`, numbered from ``first_seq`` on.

    ``first_seq`` also names the arrival in ``Registrar._arrivals``.
    """

    first_seq: int
    received_at: float
    announcements: list[FileAnnouncement]


class _Waiting(NamedTuple):
    """A file to plan and checksum; kept in the retry heap while it does not exist yet."""

    seq: int
    arrival: int
    announcement: FileAnnouncement
    received_at: float
    attempts: int


# A file ready to be written, as a plain tuple (thousands are made a second); a list of them
# sorts in announcement order:
#   (seq, arrival, local_path, md5, archive_name, remote_path, deletable)
ReadyFile = tuple
_ARRIVAL_OF = itemgetter(1)


#: Most big files waiting for a checksum worker.
BIG_FILES_QUEUED = 100_000


@dataclass
class RegistrarConfig:
    #: threads for files above ``big_file_bytes``
    big_workers: int = 2
    big_file_bytes: int = 16 << 20
    #: most rows in one transaction
    batch_max: int = 2000
    #: least time between two commits: a lone file is written at once, a stream of files
    #: in batches (a commit costs as much CPU as checksumming dozens of small files, and
    #: rewrites the last page of the table and of each index)
    commit_interval: float = 0.010
    missing_file_timeout: float = 10.0
    backoff_initial: float = 0.05
    #: kept short: after a lock is released, rows must follow within a fraction of a second
    backoff_max: float = 0.25
    #: most files received and not yet settled (written or finally refused); more are
    #: refused as ``over_max_pending`` and counted. Bounds the memory the agent can use.
    max_pending: int = 200_000


class Registrar:
    def __init__(
        self,
        db: SupRsyncDB,
        journal: Journal | None = None,
        rules: dict[str, RemoteRule] | None = None,
        config: RegistrarConfig | None = None,
        report: Report = no_report,
        allowed_roots: AllowedRoots | None = None,
    ) -> None:
        self.db = db
        self.journal = journal
        self.rules = rules
        self.config = config or RegistrarConfig()
        self.report = report
        #: one line per kind of refusal or fault every 10 s at most
        self.log_limited = RateLimit(report, interval=10.0)
        #: every file registered lies under these (links resolved), however it is announced
        self.allowed_roots = allowed_roots or AllowedRoots(["/"])
        self._files = RootedFiles(self.allowed_roots)  # the registration thread's
        self._next_seq = 0
        self._pending = 0  # files handed over and not yet settled (under _settled)
        # Arrivals not yet journaled because the journal could not be written (disk full,
        # read-only): journaled, in order, once it can be. Reactor thread only.
        self._unjournaled: collections.deque[_Arrival] = collections.deque()
        self.journal_error = ""
        # What the registration thread waits for: _Arrival's and checksummed big files
        # (ReadyFile tuples). Closing it stops the thread once what it holds is written.
        # At most one message per pending file and one per checksummed big file: never full.
        self._inbox = Inbox(maxsize=2 * self.config.max_pending + 16)
        # md5 of files over big_file_bytes; each job puts its ReadyFile into the inbox.
        self._big: WorkerPool | None = None
        # Journal fsyncs, off the registration thread: under heavy disk writes an fsync can
        # take hundreds of ms, which small files must not wait for. One at a time.
        self._syncer: SerialWorker | None = None
        self._settled = threading.Condition()
        # Arrivals with files not yet settled: first_seq -> [received_at, files left,
        # journal segment or None]. Kept per arrival, not per file: one entry per reactor
        # iteration. Changed under _settled only.
        self._arrivals: dict[int, list] = {}
        self._thread: threading.Thread | None = None
        # Each key of these counters is written by one thread only.
        self.counters: Counter = Counter()
        self.rejected: Counter = Counter()
        self.degraded = False
        self.last_error = ""
        self.last_commit_ms = 0.0

    # ---- life cycle ----------------------------------------------------------------------

    def start(self) -> None:
        self._syncer = SerialWorker("pysmurf-journal-sync", max_queue=1)
        self._big = WorkerPool(
            "pysmurf-md5-big", size=self.config.big_workers, max_queue=BIG_FILES_QUEUED
        )
        self._thread = start_thread("pysmurf-register", self._register_loop, on_error=self._died)
        if self.journal is not None:
            self._replay(self.journal)

    def _replay(self, journal: Journal) -> None:
        """Announce again the files a previous run left in the journal. Each segment stays
        until its files are settled, so a replay interrupted at any point loses nothing."""
        replayed = 0
        for seg, lines in journal.leftover():
            files = []
            for line in lines:
                parsed = parse_datagram(line)
                if isinstance(parsed, FileAnnouncement):
                    files.append(parsed)
            if len(files) < len(lines):  # lines that are no file (cut by a crash)
                journal.done_counts({seg: len(lines) - len(files)})
            if files:
                self._hand_over(files, seg)
                replayed += len(files)
        if replayed:
            self.counters["replayed"] += replayed
            self.report(
                "info",
                f"replaying {replayed} file announcement(s) left in the journal by the "
                "previous run",
            )

    def _died(self, exc: BaseException, tb: str) -> None:
        # A bug: say so loudly; the journal keeps every file not yet written.
        self.degraded = True
        self.last_error = f"registration thread died: {type(exc).__name__}: {exc}"[:300]
        self.report("error", f"{self.last_error}\n{tb}")

    def drain(self, timeout: float) -> bool:
        """Wait until every submitted file is settled; True if it happened in time."""
        deadline = time.monotonic() + timeout
        with self._settled:
            while self._arrivals:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._settled.wait(min(left, 0.5))
        return True

    def stop(self, drain_timeout: float = 30.0) -> bool:
        """Drain, then stop the threads. Anything not written stays in the journal."""
        drained = self.drain(drain_timeout)
        self._inbox.close()
        if self._big is not None:
            self._big.stop(drain=False, timeout=5.0)
        if self._syncer is not None:
            self._syncer.stop(drain=True, timeout=5.0)
        if self._thread is not None:
            self._thread.join(timeout=5.0)
            if not self._thread.is_alive():
                self._files.close()
        if self.journal is not None:
            self.journal.close()
        return drained

    # ---- intake (reactor thread) ---------------------------------------------------------

    def submit(self, announcement: FileAnnouncement) -> None:
        self.submit_many([announcement])

    def submit_many(self, announcements: Iterable[FileAnnouncement]) -> int:
        """Journal the announcements (one write) and queue them (one hand-over); never
        raises. Returns how many were refused for ``max_pending``.

        When the journal cannot be written, the files are still registered; they are kept
        in memory and journaled, in order, as soon as it can be (:meth:`retry_journal`).
        """
        announcements = list(announcements)
        if not announcements:
            return 0
        room = self.config.max_pending - self._pending
        refused = 0
        if len(announcements) > room:
            refused = len(announcements) - max(room, 0)
            announcements = announcements[: max(room, 0)]
            with self._settled:
                self.rejected["over_max_pending"] += refused
            self.log_limited(
                "over_max_pending",
                "warn",
                f"{refused} file announcement(s) refused (over_max_pending): {self._pending} "
                f"files pending, --max-pending {self.config.max_pending}; database writable?",
            )
            if not announcements:
                return refused
        segment = None
        if self.journal is not None and (not self._unjournaled or self.retry_journal()):
            try:
                segment = self.journal.append_many([a.raw for a in announcements])
            except OSError as e:
                self._journal_failed(e)
        arrival = self._hand_over(announcements, segment)
        if self.journal is not None and segment is None:
            self._unjournaled.append(arrival)
        return refused

    def retry_journal(self) -> bool:
        """Journal, in order, the arrivals not journaled yet (reactor thread); True when
        none is left."""
        journal = self.journal
        while self._unjournaled:
            arrival = self._unjournaled[0]
            with self._settled:  # the files left, and their segment, change together
                entry = self._arrivals.get(arrival.first_seq)
                if entry is not None:
                    try:
                        entry[2] = journal.append_many(
                            [a.raw for a in arrival.announcements], outstanding=entry[1]
                        )
                    except OSError as e:
                        self._journal_failed(e)
                        return False
            self._unjournaled.popleft()
        if self.journal_error:
            self.report("info", "journal writable again; every waiting file is journaled")
            self.journal_error = ""
        return True

    def _journal_failed(self, e: OSError) -> None:
        self.counters["journal_errors"] += 1
        self.journal_error = f"journal {self.journal.directory}: {e.strerror or e}"[:300]
        self.log_limited(
            "journal_error",
            "error",
            f"cannot write the journal ({e.strerror or e}); {len(self._unjournaled)} "
            "arrival(s) kept in memory, files still registered, journaled when it can be",
        )

    def _hand_over(self, announcements: list[FileAnnouncement], segment: int | None) -> _Arrival:
        n = len(announcements)
        now = time.monotonic()
        with self._settled:  # numbers files in the order they arrived
            first = self._next_seq
            self._next_seq += n
            self._arrivals[first] = [now, n, segment]
            self._pending += n
        self.counters["announced"] += n
        arrival = _Arrival(first, now, announcements)
        self._inbox.put(arrival)
        return arrival

    # ---- registration thread -------------------------------------------------------------

    def _register_loop(self) -> None:
        cfg = self.config
        ready: list[ReadyFile] = []
        retries: list[tuple[float, int, _Waiting]] = []
        write_after = 0.0  # monotonic time before which no write is tried (backoff)
        backoff = cfg.backoff_initial
        while True:
            now = time.monotonic()
            wake = min(
                write_after if ready else float("inf"), retries[0][0] if retries else float("inf")
            )
            # Read before taking the batch: once closed, nothing more can arrive, so this
            # batch is the last one.
            stopping = self._inbox.closed
            # Woken by each hand-over: the files are checksummed while the reactor rests
            # (two threads busy at once would pass the GIL back and forth at every syscall).
            if stopping or wake <= now:
                got = self._inbox.get_batch(0)
            else:
                got = self._inbox.get_batch(None if wake == float("inf") else wake - now)
            for msg in got:
                if type(msg) is _Arrival:
                    for seq, ann in enumerate(msg.announcements, msg.first_seq):
                        self._prepare(
                            _Waiting(seq, msg.first_seq, ann, msg.received_at, 0), ready, retries
                        )
                else:  # a big file, checksummed by a worker
                    ready.append(msg)
            now = time.monotonic()
            while retries and retries[0][0] <= now:
                self._prepare(heapq.heappop(retries)[2], ready, retries)
            if ready and (now >= write_after or stopping):
                if self._write(ready):
                    backoff = cfg.backoff_initial
                    write_after = time.monotonic() + cfg.commit_interval
                elif stopping:
                    return  # the journal keeps whatever could not be written
                else:
                    write_after = time.monotonic() + backoff
                    backoff = min(backoff * 2, cfg.backoff_max)
            if stopping and not ready:
                return
            if self.journal is not None and ((ready and self.degraded) or retries):
                # Files will wait longer than a commit interval: make their journal lines
                # durable (see journal.py). Refused while a sync runs: the next turn asks
                # again for what it did not cover. Not for big files being checksummed:
                # their own data, just written, is no more durable than the journal line.
                self._syncer.call(self._sync_journal)

    def _prepare(self, file: _Waiting, ready: list, retries: list) -> None:
        """Plan the row and checksum a small file; route the file on."""
        planned = None
        try:
            ann = file.announcement
            planned = plan_file(ann.payload, ann.pub_id, ann.archive, self.rules)
            # Links resolved on the opened file, checked against the roots before any read;
            # the row carries the real path (the database re-checks it by prefix).
            md5, real = md5_small_file_under(
                planned.local_path, self.config.big_file_bytes, self._files
            )
            if md5 is None:
                self.counters["big_files"] += 1
                future = self._big.call(
                    self._checksum_big, file.seq, file.arrival, planned._replace(local_path=real)
                )
                if future.done() and future.exception() is not None:
                    # the workers' queue is full (or stopping): try again shortly
                    due = time.monotonic() + 0.1
                    heapq.heappush(retries, (due, file.seq, file))
            else:
                ready.append(
                    (
                        file.seq,
                        file.arrival,
                        real,
                        md5,
                        planned.archive_name,
                        planned.remote_path,
                        planned.deletable,
                    )
                )
        except BadFileEntry as e:
            age = time.monotonic() - file.received_at
            if e.code == "missing_file" and age < self.config.missing_file_timeout:
                self.counters["missing_file_retries"] += 1
                attempts = file.attempts + 1
                due = time.monotonic() + min(0.02 * 2**attempts, 1.0)
                heapq.heappush(retries, (due, file.seq, file._replace(attempts=attempts)))
            else:
                self._settle({file.arrival: 1}, rejected=e.code, detail=str(e))
        except Exception as e:  # a bug or an OS error must not kill the thread
            self._settle(
                {file.arrival: 1}, rejected="unreadable_file", detail=f"{type(e).__name__}: {e}"
            )

    def _write(self, ready: list[ReadyFile]) -> bool:
        """Commit the oldest ``batch_max`` ready rows; False (rows kept) if the database
        refused."""
        ready.sort()
        batch = ready[: self.config.batch_max]
        stamp = time.time()  # when the row is added, as SupRsync's finalization expects
        rows = [
            (local, md5, archive, remote, stamp, deletable)
            for _, _, local, md5, archive, remote, deletable in batch
        ]
        t0 = time.perf_counter()
        try:
            result = self.db.add_rows(rows)
        except Exception as e:
            self.counters["db_errors"] += 1
            first_line = (str(e).splitlines() or [type(e).__name__])[0]
            if not self.degraded:
                self.report(
                    "error",
                    f"database write failed, keeping {len(ready)} file(s) "
                    f"and retrying: {first_line}",
                )
            self.degraded = True
            self.last_error = f"database: {first_line[:200]}"
            return False
        self.last_commit_ms = (time.perf_counter() - t0) * 1e3
        del ready[: len(batch)]
        if self.degraded:
            self.report("info", "database writable again; catching up")
        self.degraded = False
        if result.refused:
            with self._settled:
                self.rejected["outside_allowed_root"] += result.refused
        self.counters["registered"] += result.inserted
        self.counters["duplicates"] += result.duplicates
        self.counters["timecode_dirs_created"] += len(result.new_timecodes)
        self.counters["batches"] += 1
        self._settle(Counter(map(_ARRIVAL_OF, batch)))
        return True

    def _sync_journal(self) -> None:
        try:
            if self.journal.sync():
                self.counters["journal_syncs"] += 1
        except OSError as e:
            self.counters["journal_sync_errors"] += 1  # the syncer thread's own key
            self.last_error = f"journal sync: {e}"[:300]

    # ---- big-file workers ----------------------------------------------------------------

    def _checksum_big(self, seq: int, arrival: int, planned) -> None:
        """A big-file worker's job: the md5, then the file goes back to the registration
        thread through its inbox."""
        try:
            md5 = md5_file(planned.local_path)
        except OSError as e:
            code = "missing_file" if isinstance(e, FileNotFoundError) else "unreadable_file"
            self._settle(
                {arrival: 1}, rejected=code, detail=f"{planned.local_path!r}: {e.strerror or e}"
            )
            return
        try:
            self._inbox.put(
                (
                    seq,
                    arrival,
                    planned.local_path,
                    md5,
                    planned.archive_name,
                    planned.remote_path,
                    planned.deletable,
                )
            )
        except WorkerStopped:
            pass  # stopped after a drain that timed out: the journal keeps the file

    # ---- bookkeeping ---------------------------------------------------------------------

    def _settle(
        self, settled: dict[int, int], rejected: str | None = None, detail: str = ""
    ) -> None:
        """``settled``: arrival -> how many of its files were written or finally refused."""
        if rejected is not None:
            self.log_limited(
                f"file_{rejected}", "warn", f"file not registered ({rejected}): {detail[:300]}"
            )
        with self._settled:
            if rejected is not None:
                self.rejected[rejected] += sum(settled.values())
                self.last_error = detail[:300]
            segments: Counter = Counter()
            for arrival, n in settled.items():
                entry = self._arrivals[arrival]
                if entry[2] is not None:
                    segments[entry[2]] += n
                entry[1] -= n
                self._pending -= n
                if entry[1] <= 0:
                    del self._arrivals[arrival]
            if segments:
                # under the lock: retry_journal sets an arrival's segment and files left
                # together
                self.journal.done_counts(segments)
            if not self._arrivals:
                self._settled.notify_all()

    # ---- figures -------------------------------------------------------------------------

    def pending(self) -> int:
        """Files received and not yet settled."""
        return self._pending

    @property
    def journal_backlog(self) -> int:
        """Arrivals not journaled yet (the journal could not be written)."""
        return len(self._unjournaled)

    def lag(self) -> float:
        """Age in seconds of the oldest file not yet settled."""
        oldest = min((entry[0] for entry in list(self._arrivals.values())), default=None)
        return 0.0 if oldest is None else max(0.0, time.monotonic() - oldest)
