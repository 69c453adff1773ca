"""From announced file to committed SupRsync row: checksum workers and a batching writer.

No OCS and no Twisted here: threads, a journal, and counters that the agent reports.

* ``submit`` (called on the reactor) journals the datagram and queues it; O(µs).
* Checksum workers plan the row (rules) and compute the md5. Files above
  ``big_file_bytes`` go to workers of their own, so a 500 MB file never delays small ones.
  A file that does not exist yet is retried until ``missing_file_timeout``.
* One writer collects rows for ``batch_window`` seconds and commits them in one short
  transaction; when the database is locked or unavailable it keeps every row, marks itself
  degraded and retries with backoff, in order, without duplicates.
"""
from __future__ import annotations

import heapq
import itertools
import os
import queue
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Optional

from ...db.entries import BadFileEntry, FileEntry, make_entry
from ...db.suprsync import SupRsyncDB
from .journal import Journal
from .messages import FileAnnouncement, parse_datagram
from .rules import RemoteRule, plan_file

Report = Callable[[str, str], None]


def _no_report(level: str, text: str) -> None:
    pass


@dataclass(order=True)
class _Item:
    seq: int
    announcement: FileAnnouncement = field(compare=False)
    segment: Optional[int] = field(compare=False, default=None)
    received_at: float = field(compare=False, default_factory=time.monotonic)
    entry: Optional[FileEntry] = field(compare=False, default=None)
    attempts: int = field(compare=False, default=0)


@dataclass
class RegistrarConfig:
    small_workers: int = 2
    big_workers: int = 2
    big_file_bytes: int = 16 << 20
    batch_window: float = 0.003
    batch_max: int = 1000
    missing_file_timeout: float = 10.0
    backoff_initial: float = 0.05
    backoff_max: float = 2.0


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
        self._small: queue.SimpleQueue = queue.SimpleQueue()
        self._big: queue.SimpleQueue = queue.SimpleQueue()
        self._cond = threading.Condition()
        self._ready: list[_Item] = []
        self._retry: list[tuple[float, _Item]] = []
        self._outstanding: dict[int, float] = {}
        self._stopping = False
        self._threads: list[threading.Thread] = []
        self.counters: Counter = Counter()
        self.rejected: Counter = Counter()
        self.degraded = False
        self.last_error = ""
        self.last_commit_ms = 0.0

    # ---- life cycle ----------------------------------------------------------------------

    def start(self) -> None:
        cfg = self.config
        specs = ([("small", self._small)] * cfg.small_workers
                 + [("big", self._big)] * cfg.big_workers)
        for i, (kind, q) in enumerate(specs):
            self._spawn(f"md5-{kind}-{i}", self._checksum_loop, q)
        self._spawn("retry", self._retry_loop)
        self._spawn("writer", self._writer_loop)
        if self.journal is not None:
            replayed = 0
            for raw in self.journal.leftover():
                parsed = parse_datagram(raw)
                if isinstance(parsed, FileAnnouncement):
                    self.submit(parsed)
                    replayed += 1
            if replayed:
                self.counters["replayed"] += replayed
                self.report("info", f"replaying {replayed} file announcement(s) left in the "
                            "journal by the previous run")

    def _spawn(self, name: str, target, *args) -> None:
        t = threading.Thread(target=target, args=args, name=f"pysmurf-{name}", daemon=True)
        t.start()
        self._threads.append(t)

    def drain(self, timeout: float) -> bool:
        """Wait until every submitted file is settled; True if it happened in time."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._outstanding:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 0.5))
        return True

    def stop(self, drain_timeout: float = 30.0) -> bool:
        """Drain, then stop the threads. Anything not written stays in the journal."""
        drained = self.drain(drain_timeout)
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        for _ in range(self.config.small_workers):
            self._small.put(None)
        for _ in range(self.config.big_workers):
            self._big.put(None)
        for t in self._threads:
            t.join(timeout=5.0)
        if self.journal is not None:
            self.journal.close()
        return drained

    # ---- intake (reactor thread) ---------------------------------------------------------

    def submit(self, announcement: FileAnnouncement) -> None:
        segment = self.journal.append(announcement.raw) if self.journal is not None else None
        item = _Item(next(self._seq), announcement, segment)
        # A single dict store is atomic under the GIL; no lock on the reactor's path.
        self._outstanding[item.seq] = item.received_at
        self.counters["announced"] += 1
        self._small.put(item)

    # ---- workers -------------------------------------------------------------------------

    def _checksum_loop(self, q: queue.SimpleQueue) -> None:
        big = q is self._big
        while True:
            # Take what is queued in one go: one hand-over to the writer per batch, not per
            # file (thread wake-ups cost more than the checksum of a small file).
            batch = [q.get()]
            while len(batch) < 256 and batch[-1] is not None:
                try:
                    batch.append(q.get_nowait())
                except queue.Empty:
                    break
            ready = []
            for item in batch:
                if item is None:
                    self._to_writer(ready)
                    return
                if self._checksum(item, big):
                    ready.append(item)
            self._to_writer(ready)

    def _checksum(self, item: _Item, big: bool) -> bool:
        """Fill ``item.entry``; False if the item went elsewhere (big queue, retry, refused)."""
        try:
            ann = item.announcement
            if item.entry is None:
                planned = plan_file(ann.payload, ann.pub_id, ann.archive, self.rules)
                if not big and _size(planned.local_path) > self.config.big_file_bytes:
                    self.counters["big_files"] += 1
                    self._big.put(item)
                    return False
                item.entry = make_entry(planned.local_path, planned.remote_path,
                                        planned.archive_name, known_archives=None,
                                        deletable=planned.deletable, timestamp=0.0)
            return True
        except BadFileEntry as e:
            item.attempts += 1
            age = time.monotonic() - item.received_at
            if e.code == "missing_file" and age < self.config.missing_file_timeout:
                self.counters["missing_file_retries"] += 1
                delay = min(0.02 * 2 ** item.attempts, 1.0)
                with self._cond:
                    heapq.heappush(self._retry, (time.monotonic() + delay, item))
                    self._cond.notify_all()
            else:
                self._settle([item], rejected=e.code, detail=str(e))
        except Exception as e:  # a bug or an OS error must not kill the worker
            self._settle([item], rejected="unreadable_file", detail=f"{type(e).__name__}: {e}")
        return False

    def _retry_loop(self) -> None:
        with self._cond:
            while not self._stopping:
                now = time.monotonic()
                while self._retry and self._retry[0][0] <= now:
                    _, item = heapq.heappop(self._retry)
                    self._small.put(item)
                wait = (self._retry[0][0] - now) if self._retry else None
                self._cond.wait(wait)

    def _to_writer(self, items: list[_Item]) -> None:
        if not items:
            return
        with self._cond:
            was_empty = not self._ready
            self._ready.extend(items)
            if was_empty or len(self._ready) >= self.config.batch_max:
                self._cond.notify_all()

    def _writer_loop(self) -> None:
        cfg = self.config
        backoff = cfg.backoff_initial
        while True:
            with self._cond:
                while not self._ready and not self._stopping:
                    self._cond.wait()
                if not self._ready and self._stopping:
                    return
            # Collect a few milliseconds' worth: one transaction for many datagrams
            # instead of one wake-up and one commit per file.
            time.sleep(cfg.batch_window)
            with self._cond:
                self._ready.sort()
                batch, self._ready = self._ready[:cfg.batch_max], self._ready[cfg.batch_max:]
            stamp = time.time()
            entries = [_stamped(i.entry, stamp) for i in batch]
            t0 = time.perf_counter()
            try:
                result = self.db.add_files(entries)
            except Exception as e:
                with self._cond:
                    self._ready[:0] = batch  # keep order: these go first next time
                    stopping = self._stopping
                self.counters["db_errors"] += 1
                if not self.degraded:
                    self.report("error", f"database write failed, keeping {len(batch)} "
                                f"file(s) and retrying: {e}".splitlines()[0])
                self.degraded = True
                self.last_error = f"database: {str(e).splitlines()[0][:200]}"
                if stopping:
                    return  # the journal keeps what could not be written

                time.sleep(backoff)
                backoff = min(backoff * 2, cfg.backoff_max)
                continue
            self.last_commit_ms = (time.perf_counter() - t0) * 1e3
            if self.degraded:
                self.report("info", "database writable again; catching up")
            self.degraded = False
            backoff = cfg.backoff_initial
            self.counters["registered"] += len(result.inserted)
            self.counters["duplicates"] += len(result.duplicates)
            self.counters["timecode_dirs_created"] += len(result.new_timecodes)
            self.counters["batches"] += 1
            self._settle(batch)

    def _settle(self, items: list[_Item], rejected: Optional[str] = None,
                detail: str = "") -> None:
        if rejected is not None:
            self.report("warn", f"file not registered ({rejected}): {detail[:300]}")
        if self.journal is not None:
            self.journal.done_many([i.segment for i in items if i.segment is not None])
        with self._cond:
            if rejected is not None:
                self.rejected[rejected] += len(items)
                self.last_error = detail[:300]
            for item in items:
                self._outstanding.pop(item.seq, None)
            if not self._outstanding:
                self._cond.notify_all()

    # ---- figures -------------------------------------------------------------------------

    def pending(self) -> int:
        with self._cond:
            return len(self._outstanding)

    def lag(self) -> float:
        """Age in seconds of the oldest file not yet settled."""
        with self._cond:
            try:
                oldest = next(iter(self._outstanding.values()), None)
            except RuntimeError:  # changed by submit() while we looked
                return 0.0
        return 0.0 if oldest is None else max(0.0, time.monotonic() - oldest)


def _size(path: str) -> int:
    try:
        return os.stat(path).st_size
    except OSError:
        return 0


def _stamped(entry: FileEntry, stamp: float) -> FileEntry:
    # ``timestamp`` is when the row is added, as SupRsync's finalization expects.
    return FileEntry(entry.local_path, entry.remote_path, entry.archive_name,
                     entry.local_md5sum, stamp, entry.deletable)
