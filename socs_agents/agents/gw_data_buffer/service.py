"""The buffer's operations as Deferreds, on the runtime's workers (Twisted, no OCS).

A write goes from the reactor to one staging thread, which validates, encodes, writes and
fsyncs a temporary file, has the store's SerialWorker take it (the freeze check and the link
under the final name, counters), fsyncs the data folder, and hands the result back: one
round trip through the reactor per write. ``train`` and ``clean`` run on the same
SerialWorker, so each sees every write before it and none after it. The store's thread
notes each committed write until its answer is sent; a FROZEN ``train`` answer is held
until every write committed before it has been answered, so no write is acknowledged after
the store answered FROZEN.
"""

from __future__ import annotations

import collections
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from twisted.internet import defer
from twisted.python import failure

from ...runtime import Report, SerialWorker, WorkerPool, no_report
from . import rules
from .storage import CleanResult, CommitResult, DataStore, TrainResult, stage_chunk, sync_dir


@dataclass
class BufferConfig:
    data_dir: str
    archive_dir: str
    state_db: str
    max_size: int
    staging_dir: str | None = None
    #: the reference's ADMROOT, taken over at the first start (see storage.DataStore)
    reference_adm_dir: str | None = None
    stage_threads: int = 4
    max_queue: int = 1024


class BufferService:
    """Owns the workers and the :class:`DataStore` (built on the store's thread).

    Attributes:
        refusals: refused requests by reason code (``frozen`` counts writes refused because
            the store is frozen).
        writes: writes stored since start.
    """

    def __init__(
        self,
        config: BufferConfig,
        report: Report = no_report,
        on_clean: Callable[[dict], None] | None = None,
        reactor=None,
    ) -> None:
        self.config = config
        self.report = report
        self.on_clean = on_clean
        self.serial = SerialWorker("gw-store", max_queue=config.max_queue, reactor=reactor)
        self.stage_pool = WorkerPool(
            "gw-stage", size=config.stage_threads, max_queue=config.max_queue, reactor=reactor
        )
        self.store: DataStore = self.serial.call(
            DataStore,
            config.data_dir,
            config.archive_dir,
            config.state_db,
            config.max_size,
            config.staging_dir,
            report,
            config.reference_adm_dir,
        ).result(timeout=60)
        self.refusals: collections.Counter = collections.Counter()
        self.writes = 0
        self.bytes_written = 0
        self.failures = 0
        self.started = time.time()
        # seqs of writes committed (on the store's thread) and not answered yet (on the
        # reactor), and what waits for one of them (reactor only)
        self._unanswered: set[int] = set()
        self._unanswered_lock = threading.Lock()
        self._waiting: dict[int, list[defer.Deferred]] = {}
        #: writes taken and not answered yet (changed on the reactor only)
        self.in_flight = 0

    # ---- snapshots (reactor, no queueing) ----------------------------------------------

    @property
    def counts(self):
        return self.store.counts

    @property
    def frozen(self) -> bool:
        return self.store.counts.frozen

    @property
    def max_size(self) -> int:
        return self.config.max_size

    def refuse(self, reason: str) -> None:
        self.refusals[reason] += 1

    # ---- operations -------------------------------------------------------------------

    def write(self, raw: bytes) -> defer.Deferred:
        """Store one ``/streamdata`` body. Fires with a :class:`CommitResult` (``stored``
        False when frozen); fails with BadInput, StorageError or QueueFull."""
        self.in_flight += 1
        answer: defer.Deferred = defer.Deferred()

        def settle(outcome):  # reactor
            self.in_flight -= 1
            if isinstance(outcome, failure.Failure):
                answer.errback(outcome)  # refused or failed before the commit
                return
            result, error = outcome
            try:
                if error is not None:
                    answer.errback(error)
                elif not result.stored:
                    self.refuse("frozen")
                    answer.callback(result)
                else:
                    self.writes += 1
                    self.bytes_written += result.size
                    answer.callback(result)  # the caller's answer is sent in here
            finally:
                if result.stored:
                    self._answered(result.seq)

        self.stage_pool.submit(self._store, raw).addBoth(settle)
        return answer

    def _store(self, raw: bytes) -> tuple[CommitResult, Exception | None]:
        """A staging thread: stage, commit on the store's thread, fsync the folder."""
        staged = stage_chunk(raw, self.store.staging_dir)
        result = self.serial.call(self._commit, staged).result()
        if not result.stored:
            return result, None
        try:
            sync_dir(self.store.data_dir)
        except Exception as e:  # committed, not durable: answered as the failure it is
            return result, e
        return result, None

    def _commit(self, staged) -> CommitResult:  # the store's thread
        result = self.store.commit(staged)
        if result.stored:
            with self._unanswered_lock:
                self._unanswered.add(result.seq)
        return result

    def _train(self, user, token_sha256, force) -> tuple[TrainResult, list[int]]:
        result = self.store.train(user, token_sha256, force)  # the store's thread
        with self._unanswered_lock:
            earlier = [seq for seq in self._unanswered if seq < result.seq]
        return result, earlier

    def _answered(self, seq: int) -> None:  # reactor
        with self._unanswered_lock:
            self._unanswered.discard(seq)
        for d in self._waiting.pop(seq, ()):
            d.callback(None)

    def train(self, user: str, token_sha256: str | None, force: bool = False) -> defer.Deferred:
        """The ``/train`` rule; fires with a :class:`TrainResult` once every write committed
        before it is answered."""
        d = self.serial.submit(self._train, user, token_sha256, force)

        def hold(outcome):  # reactor
            result, earlier = outcome
            if result.newly:
                self.report(
                    "info",
                    f"frozen by {user!r}: {result.n_f} files, {result.bt_wrt} bytes "
                    f"(MAX_SIZE {self.max_size})",
                )
            waits = []
            with self._unanswered_lock:
                pending = [seq for seq in earlier if seq in self._unanswered]
            for seq in pending:  # answered later on this thread, which fires these
                waits.append(defer.Deferred())
                self._waiting.setdefault(seq, []).append(waits[-1])
            if not waits:
                return result
            return defer.DeferredList(waits).addCallback(lambda _: result)

        return d.addCallback(hold)

    def clean(self) -> defer.Deferred:
        """Archive the batch and unfreeze; fires with a :class:`CleanResult`."""
        d = self.serial.submit(self.store.clean)

        def done(result: CleanResult):
            a = result.archive
            self.report(
                "info", f"cleaned: {a['files']} files, {a['bytes']} bytes archived in {a['path']}"
            )
            if self.on_clean is not None:
                self.on_clean(a)
            return result

        return d.addCallback(done)

    def names(self) -> defer.Deferred:
        return self.serial.submit(self.store.list_names)

    def archives(self, limit: int = 100) -> defer.Deferred:
        return self.serial.submit(self.store.archives, limit)

    def page_data(self) -> defer.Deferred:
        """What the status page shows, read on the store's thread in one go."""

        def collect():
            s = self.store
            return {
                "counts": s.counts,
                "state": s.state(),
                "names": s.names[-50:],
                "preview": list(s.preview),
                "preview_name": s.preview_name,
                "archives": s.archives(20),
            }

        return self.serial.submit(collect)

    def stats(self) -> dict:
        """Everything the ``stats`` task and the monitor show (reactor thread)."""
        c = self.counts
        state = self.store.freeze
        return {
            "n_itm": c.n_itm,
            "buff_size": c.buff_size,
            "max_size": self.max_size,
            "fill_fraction": rules.fill_fraction(c.buff_size, self.max_size),
            "dstatus": rules.FROZEN if c.frozen else rules.OPERATIONAL,
            "frozen_by": state.user,
            "frozen_since": state.since,
            "latest_file": c.last_name,
            "writes": self.writes,
            "bytes_written": self.bytes_written,
            "failures": self.failures,
            "refusals": dict(self.refusals),
            "data_dir": self.store.data_dir,
            "archive_dir": self.store.archive_dir,
            "takeover": self.store.takeover,
        }

    def stop(self, timeout: float = 10.0) -> None:
        """Answer every write taken, then close the store (blocking: call it from a thread
        while the reactor runs, at the end of the process). New writes are refused."""
        deadline = time.monotonic() + timeout
        self.stage_pool.stop(drain=True, timeout=timeout)
        # the last answers pass through the reactor
        while self.in_flight > 0 and time.monotonic() < deadline:
            time.sleep(0.01)  # bounded, at shutdown only
        self.serial.call(self.store.close)
        self.serial.stop(drain=True, timeout=timeout)


def archive_remote_dir(archive: dict) -> str:
    return os.path.basename(archive["path"])
