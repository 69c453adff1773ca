"""From announced file to committed SupRsync row: one registration thread, big-file workers.

No OCS and no Twisted here: threads, a journal, and counters that the agent reports.

* ``submit_many`` (called on the reactor, once per reactor iteration) journals the
  datagrams in one write and hands them over in one queue operation; O(µs) per file.
* The registration thread plans each row (rules), computes the md5 of small files itself
  (one open, one read), and commits everything it has ready in one short transaction, so
  batches grow by themselves under load and a lone file is written at once.
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

import heapq
import itertools
import queue
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Iterable, Optional

from ...db.entries import BadFileEntry, FileEntry, md5_file, md5_small_file
from ...db.suprsync import SupRsyncDB
from .journal import Journal
from .messages import FileAnnouncement, parse_datagram
from .rules import PlannedFile, RemoteRule, plan_file

Report = Callable[[str, str], None]


def _no_report(level: str, text: str) -> None:
    pass


@dataclass(order=True)
class _Item:
    seq: int
    announcement: FileAnnouncement = field(compare=False)
    segment: Optional[int] = field(compare=False, default=None)
    received_at: float = field(compare=False, default_factory=time.monotonic)
    planned: Optional[PlannedFile] = field(compare=False, default=None)
    md5: Optional[str] = field(compare=False, default=None)
    attempts: int = field(compare=False, default=0)


@dataclass
class RegistrarConfig:
    #: threads for files above ``big_file_bytes``
    big_workers: int = 2
    big_file_bytes: int = 16 << 20
    #: most rows in one transaction
    batch_max: int = 2000
    #: least time between two commits: a lone file is written at once, a stream of files
    #: in batches (a commit costs as much CPU as checksumming dozens of small files)
    commit_interval: float = 0.005
    missing_file_timeout: float = 10.0
    backoff_initial: float = 0.05
    #: kept short: after a lock is released, rows must follow within a fraction of a second
    backoff_max: float = 0.25


class Registrar:
    def __init__(self, db: SupRsyncDB, journal: Optional[Journal] = None,
                 rules: Optional[dict[str, RemoteRule]] = None,
                 config: Optional[RegistrarConfig] = None, report: Report = _no_report) -> None:
        self.db = db
        self.journal = journal
        self.rules = rules
        self.config = config or RegistrarConfig()
        self.report = report
        self._seq = itertools.count()
        # Lists of items (a reactor iteration's worth, or one finished big file); None stops.
        self._intake: queue.SimpleQueue = queue.SimpleQueue()
        self._big: queue.SimpleQueue = queue.SimpleQueue()
        self._settled = threading.Condition()
        self._outstanding: dict[int, float] = {}
        self._threads: list[threading.Thread] = []
        # Each key of these counters is written by one thread only.
        self.counters: Counter = Counter()
        self.rejected: Counter = Counter()
        self.degraded = False
        self.last_error = ""
        self.last_commit_ms = 0.0

    # ---- life cycle ----------------------------------------------------------------------

    def start(self) -> None:
        self._spawn("register", self._register_loop)
        for i in range(self.config.big_workers):
            self._spawn(f"md5-big-{i}", self._big_loop)
        if self.journal is not None:
            replay = [p for p in map(parse_datagram, self.journal.leftover())
                      if isinstance(p, FileAnnouncement)]
            if replay:
                self.submit_many(replay)
                self.counters["replayed"] += len(replay)
                self.report("info", f"replaying {len(replay)} file announcement(s) left in "
                            "the journal by the previous run")

    def _spawn(self, name: str, target) -> None:
        t = threading.Thread(target=target, name=f"pysmurf-{name}", daemon=True)
        t.start()
        self._threads.append(t)

    def drain(self, timeout: float) -> bool:
        """Wait until every submitted file is settled; True if it happened in time."""
        deadline = time.monotonic() + timeout
        with self._settled:
            while self._outstanding:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._settled.wait(min(left, 0.5))
        return True

    def stop(self, drain_timeout: float = 30.0) -> bool:
        """Drain, then stop the threads. Anything not written stays in the journal."""
        drained = self.drain(drain_timeout)
        self._intake.put(None)
        for _ in range(self.config.big_workers):
            self._big.put(None)
        for t in self._threads:
            t.join(timeout=5.0)
        if self.journal is not None:
            self.journal.close()
        return drained

    # ---- intake (reactor thread) ---------------------------------------------------------

    def submit(self, announcement: FileAnnouncement) -> None:
        self.submit_many([announcement])

    def submit_many(self, announcements: Iterable[FileAnnouncement]) -> None:
        """Journal the announcements (one write) and queue them (one hand-over)."""
        announcements = list(announcements)
        if not announcements:
            return
        segment = (self.journal.append_many([a.raw for a in announcements])
                   if self.journal is not None else None)
        now = time.monotonic()
        items = [_Item(next(self._seq), a, segment, now) for a in announcements]
        for item in items:
            # Plain dict stores are atomic under the GIL; no lock on the reactor's path.
            self._outstanding[item.seq] = now
        self.counters["announced"] += len(items)
        self._intake.put(items)

    # ---- registration thread -------------------------------------------------------------

    def _register_loop(self) -> None:
        cfg = self.config
        ready: list[_Item] = []
        retries: list[tuple[float, int, _Item]] = []
        write_after = 0.0  # monotonic time before which no write is tried (backoff)
        backoff = cfg.backoff_initial
        stopping = False
        while True:
            now = time.monotonic()
            waits = [t - now for t in ([write_after] if ready else [])
                     + ([retries[0][0]] if retries else [])]
            timeout = max(0.0, min(waits)) if waits else None
            got = []
            try:
                got.append(self._intake.get(timeout=timeout) if timeout != 0.0
                           else self._intake.get_nowait())
                while len(got) < 1000:
                    got.append(self._intake.get_nowait())
            except queue.Empty:
                pass
            for batch in got:
                if batch is None:
                    stopping = True
                    continue
                for item in batch:
                    self._prepare(item, ready, retries)
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

    def _prepare(self, item: _Item, ready: list, retries: list) -> None:
        """Plan the row and checksum a small file; route the item on."""
        if item.md5 is not None:  # checksummed by a big-file worker
            ready.append(item)
            return
        try:
            ann = item.announcement
            if item.planned is None:
                item.planned = plan_file(ann.payload, ann.pub_id, ann.archive, self.rules)
            item.md5 = md5_small_file(item.planned.local_path, self.config.big_file_bytes)
            if item.md5 is None:
                self.counters["big_files"] += 1
                self._big.put(item)
            else:
                ready.append(item)
        except BadFileEntry as e:
            item.attempts += 1
            age = time.monotonic() - item.received_at
            if e.code == "missing_file" and age < self.config.missing_file_timeout:
                self.counters["missing_file_retries"] += 1
                due = time.monotonic() + min(0.02 * 2 ** item.attempts, 1.0)
                heapq.heappush(retries, (due, item.seq, item))
            else:
                self._settle([item], rejected=e.code, detail=str(e))
        except Exception as e:  # a bug or an OS error must not kill the thread
            self._settle([item], rejected="unreadable_file", detail=f"{type(e).__name__}: {e}")

    def _write(self, ready: list[_Item]) -> bool:
        """Commit the oldest ``batch_max`` ready rows; False (rows kept) if the database
        refused."""
        ready.sort()
        batch = ready[:self.config.batch_max]
        stamp = time.time()  # when the row is added, as SupRsync's finalization expects
        entries = [FileEntry(p.local_path, p.remote_path, p.archive_name, i.md5, stamp,
                             p.deletable) for i in batch for p in (i.planned,)]
        t0 = time.perf_counter()
        try:
            result = self.db.add_files(entries)
        except Exception as e:
            self.counters["db_errors"] += 1
            first_line = (str(e).splitlines() or [type(e).__name__])[0]
            if not self.degraded:
                self.report("error", f"database write failed, keeping {len(ready)} file(s) "
                            f"and retrying: {first_line}")
            self.degraded = True
            self.last_error = f"database: {first_line[:200]}"
            return False
        self.last_commit_ms = (time.perf_counter() - t0) * 1e3
        del ready[:len(batch)]
        if self.degraded:
            self.report("info", "database writable again; catching up")
        self.degraded = False
        self.counters["registered"] += len(result.inserted)
        self.counters["duplicates"] += len(result.duplicates)
        self.counters["timecode_dirs_created"] += len(result.new_timecodes)
        self.counters["batches"] += 1
        self._settle(batch)
        return True

    # ---- big-file workers ----------------------------------------------------------------

    def _big_loop(self) -> None:
        while True:
            item = self._big.get()
            if item is None:
                return
            try:
                item.md5 = md5_file(item.planned.local_path)
            except OSError as e:
                code = "missing_file" if isinstance(e, FileNotFoundError) else "unreadable_file"
                self._settle([item], rejected=code,
                             detail=f"{item.planned.local_path!r}: {e.strerror or e}")
                continue
            self._intake.put([item])

    # ---- bookkeeping ---------------------------------------------------------------------

    def _settle(self, items: list[_Item], rejected: Optional[str] = None,
                detail: str = "") -> None:
        if rejected is not None:
            self.report("warn", f"file not registered ({rejected}): {detail[:300]}")
        if self.journal is not None:
            self.journal.done_many([i.segment for i in items if i.segment is not None])
        with self._settled:
            if rejected is not None:
                self.rejected[rejected] += len(items)
                self.last_error = detail[:300]
            for item in items:
                self._outstanding.pop(item.seq, None)
            if not self._outstanding:
                self._settled.notify_all()

    # ---- figures -------------------------------------------------------------------------

    def pending(self) -> int:
        return len(self._outstanding)

    def lag(self) -> float:
        """Age in seconds of the oldest file not yet settled."""
        try:
            oldest = min(self._outstanding.values(), default=None)
        except RuntimeError:  # changed by another thread while we looked
            return 0.0
        return 0.0 if oldest is None else max(0.0, time.monotonic() - oldest)
