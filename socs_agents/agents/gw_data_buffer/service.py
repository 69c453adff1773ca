"""The buffer's operations as Deferreds, on the runtime's workers (Twisted, no OCS).

A write goes: reactor -> staging pool (validate, encode, write and fsync a temporary file)
-> the store's SerialWorker (the freeze check and the link under the final name, counters)
-> sync pool (fsync of the data folder) -> answer. ``train`` and ``clean`` run on the same
SerialWorker, so each sees every write before it and none after it. A FROZEN ``train``
answer is held until every write committed before it has been acknowledged, so no write is
acknowledged after the store answered FROZEN.
"""

from __future__ import annotations

import collections
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

from twisted.internet import defer

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
        self.sync_pool = WorkerPool(
            "gw-sync", size=config.stage_threads, max_queue=config.max_queue, reactor=reactor
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
        # seq of a committed write -> its acknowledgement (fired after the folder fsync)
        self._unacked: dict[int, defer.Deferred] = {}
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
        d = self.stage_pool.submit(stage_chunk, raw, self.store.staging_dir)
        d.addCallback(lambda staged: self.serial.submit(self.store.commit, staged))
        d.addCallback(self._acknowledge)
        return d.addBoth(self._answered)

    def _answered(self, value):
        self.in_flight -= 1
        return value

    def _acknowledge(self, result: CommitResult):
        if not result.stored:
            self.refuse("frozen")
            return result
        ack = self.sync_pool.submit(sync_dir, self.store.data_dir)
        self._unacked[result.seq] = ack

        def done(value, seq=result.seq):
            self._unacked.pop(seq, None)
            return value

        ack.addBoth(done)

        def ok(_):
            self.writes += 1
            self.bytes_written += result.size
            return result

        return ack.addCallback(ok)

    def train(self, user: str, token_sha256: str | None, force: bool = False) -> defer.Deferred:
        """The ``/train`` rule; fires with a :class:`TrainResult` once every write committed
        before it is acknowledged."""
        d = self.serial.submit(self.store.train, user, token_sha256, force)

        def hold(result: TrainResult):
            if result.newly:
                self.report(
                    "info",
                    f"frozen by {user!r}: {result.n_f} files, {result.bt_wrt} bytes "
                    f"(MAX_SIZE {self.max_size})",
                )
            earlier = [a for seq, a in self._unacked.items() if seq < result.seq]
            if not earlier:
                return result
            dl = defer.DeferredList(earlier, consumeErrors=True)
            return dl.addCallback(lambda _: result)

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
        # staged writes still pass through the reactor to the store and the sync pool
        while self.in_flight > 0 and time.monotonic() < deadline:
            time.sleep(0.01)  # bounded, at shutdown only
        self.sync_pool.stop(drain=True, timeout=max(0.1, deadline - time.monotonic()))
        self.serial.call(self.store.close)
        self.serial.stop(drain=True, timeout=timeout)


def archive_remote_dir(archive: dict) -> str:
    return os.path.basename(archive["path"])
