"""The recording pipeline: follows the schedule, integrates, hands files to a writer thread.

No OCS here: the agent drives a :class:`RecordingEngine` and reads its
:meth:`~RecordingEngine.status`. Two threads of the runtime: the recording thread wakes at
integration boundaries and on schedule changes; the writer thread writes and registers
files, and retries registrations that failed, so a slow disk or a locked database never
delays an integration and never loses a file.
"""

from __future__ import annotations

import collections
import math
import os
import re
import shutil
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ... import runtime
from ...timeutil import utc_iso, utc_stamp
from .correlator import SimulatedCorrelator
from .schedule import DEFAULT_NOW_LEAD_S, RECORDING, SCHEDULED, Operation, Schedule, request_time
from .writer import FileChunk, RegistrationError, VisibilityWriter, WriteError, WrittenFile

SUMMARIES = ("booting", "normal", "warning", "error", "shutdown")
RATE_WINDOW_S = 60.0
#: The recording thread wakes this long before a scheduled start, then once more at it.
PREWAKE_S = 0.05
#: At a start instant the recording thread reads the clock, then naps this long before its
#: bookkeeping (SQLite, logs): every pipeline woken for the same instant on the same few
#: cores reads its clock before any of them takes the CPU for longer.
SETTLE_S = 0.02
#: A failed registration is tried again after this long, doubling up to the maximum.
RETRY_FIRST_S = 0.5
RETRY_MAX_S = 30.0
#: When the look-up of unregistered files at start failed, it is tried again after this long.
RESCAN_AFTER_S = 30.0
#: What a registration attempt gave.
REGISTERED, REFUSED, FAILED_NOW = "registered", "refused", "failed"
#: Files per registration transaction when catching up (retries, files found at start).
REGISTER_BATCH = 200
#: Files found at start read back (md5) between two new files.
LEFTOVER_BATCH = 20

#: Every refusal and fault the engine counts (``status()['counters']``, the feed's
#: ``n_<reason>`` fields); the docs page says what to do about each.
COUNTERS = (
    "write_failed",  # a file could not be written or moved into place (its data are lost)
    "writer_backlog_full",  # the writer's queue was full: a file's integrations were dropped
    "outside_allowed_root",  # a file outside --allowed-root: never registered
    "register_refused",  # any other entry the SupRsync rules refuse: never registered
    "database_locked",  # registration failed, the database stayed locked: retried
    "database_error",  # registration failed otherwise (disk full, read-only): retried
    "retry_list_full",  # a failed registration beyond the retry bound: left for the restart
    "unreadable_file",  # a complete-looking file found at start that is not readable
    "rescan_failed",  # the look-up of unregistered files at start failed: retried
    "direct_underprivileged",  # a direct call without the credential level it needs
    "direct_bad_request",  # a direct call with an unknown operation or bad parameters
    "requests_busy",  # a request refused: the request worker's queue was full
)


@dataclass(frozen=True)
class EngineConfig:
    mode: str
    pipeline_id: str
    integration_time: float
    integrations_per_file: int
    disk_warning_pct: float = 95.0
    disk_error_pct: float = 99.0
    now_lead: float = DEFAULT_NOW_LEAD_S
    #: files waiting for the writer thread before more are refused (and counted)
    max_queued_files: int = 64
    #: failed registrations kept for retry before more are left to the next start
    max_retry_files: int = 10_000


def pipeline_summary(
    state: str,
    thread_error: str,
    write_error: str,
    disk_used_pct: float,
    warning_pct: float,
    error_pct: float,
    activity: str,
) -> tuple[str, str]:
    """Summary and info of one pipeline, by the reference's rules (worst condition wins).

    Args:
        state: ``booting``, ``running`` or ``shutdown``.
        thread_error: why a worker thread died ("" while they run).
        write_error: why the last file could not be written, moved or registered, or why
            files wait for registration ("" once that is resolved).
        disk_used_pct: how full the data disk is.
        warning_pct, error_pct: thresholds, in percent used (warning above the first, error
            above the second).
        activity: what the pipeline does, for the ``normal`` info.
    """
    if state == "booting":
        return "booting", "starting up"
    if state == "shutdown":
        return "shutdown", "shutting down"
    if thread_error:
        return "error", thread_error
    if write_error:
        return "error", write_error
    if disk_used_pct > error_pct:
        return "error", f"data disk {disk_used_pct:.1f}% full (error above {error_pct:g}%)"
    if disk_used_pct > warning_pct:
        return "warning", (f"data disk {disk_used_pct:.1f}% full (warning above {warning_pct:g}%)")
    return "normal", activity


class RecordingEngine:
    """One visibility recording pipeline.

    Args:
        schedule: the persisted schedule.
        writer: writes and registers files.
        correlator: the source of visibilities.
        config: mode, pipeline id, integration time, file size, thresholds, bounds.
        report: ``report(level, text)`` (see :func:`socs_agents.runtime.reporter`).
        clock: unix time source.
    """

    def __init__(
        self,
        schedule: Schedule,
        writer: VisibilityWriter,
        correlator: SimulatedCorrelator,
        config: EngineConfig,
        report: runtime.Report = runtime.no_report,
        clock=time.time,
    ) -> None:
        self.schedule = schedule
        self.writer = writer
        self.correlator = correlator
        self.config = config
        self.report = report
        self._report_limited = runtime.RateLimit(report)
        self.clock = clock
        self.state = "booting"
        # The recording thread sleeps on this condition until its own deadline or
        # ``_wake_at``, the latest moment it must re-read the schedule for a new request.
        self._cond = threading.Condition()
        self._wake_at = math.inf
        self._asleep_until = -math.inf
        self._stopping = threading.Event()
        self._files = runtime.Inbox(maxsize=config.max_queued_files)
        self._threads: list[threading.Thread] = []
        self.thread_error = ""
        self.write_error = ""
        self.last_error = ""
        self.files_written = 0
        self.files_registered = 0
        self.bytes_written = 0
        self.counters = dict.fromkeys(COUNTERS, 0)
        self.last_file = ""
        self.resume_note = ""
        self._removed_temporaries: dict[str, int] = {}
        # path -> (file, attempts, when to try again): failed registrations, bounded
        self._retry: collections.OrderedDict[str, tuple[WrittenFile, int, float]] = (
            collections.OrderedDict()
        )
        self._rescan_at: float | None = None
        self._leftovers: collections.deque[str] = collections.deque()
        self._leftovers_beyond = False
        self._recent: collections.deque = collections.deque()
        self._files_per_op: dict[int, int] = {}
        self._next_index: dict[int, int] = {}

    # ---- requests (any thread) -----------------------------------------------------------

    def request_start(self, params: Mapping[str, Any], now: float | None = None) -> dict:
        """Schedule a recording; the answer names its directory (raises ScheduleError)."""
        now = self.clock() if now is None else now
        rt = request_time(params, "start", now, self.config.now_lead)
        tag = f"{utc_stamp(rt.t)}_{self.config.mode}_{self.config.pipeline_id}"
        op = self.schedule.add_start(rt.t, now, tag)
        self.wake(rt.t)
        self.report("info", f"scheduled recording {op.describe()}")
        return self._answer(op, rt)

    def request_stop(self, params: Mapping[str, Any], now: float | None = None) -> dict:
        """End the recording active at the stop time at that time (raises ScheduleError)."""
        now = self.clock() if now is None else now
        rt = request_time(params, "stop", now, self.config.now_lead)
        op = self.schedule.add_stop(rt.t, now)
        self.wake(rt.t)
        self.report("info", f"recording {op.tag} will stop at {utc_iso(rt.t)}")
        return self._answer(op, rt)

    def _answer(self, op: Operation, rt) -> dict:
        return {
            "response": self.writer.recording_dir(op.tag),
            "tag": op.tag,
            "operation": op.as_dict(),
            "mjd": rt.mjd,
            "mpm": rt.mpm,
            "requested_time": rt.t,
        }

    def wake(self, at: float | None = None) -> None:
        """Have the recording thread re-read the schedule shortly before ``at`` (unix
        time), or at once.

        The thread is woken only when its current sleep would last past that moment: a
        request answered while the thread sleeps for the next integration costs the
        request nothing, and many pipelines that get a start at once do not all read
        their schedules while they are still answering.
        """
        due = -math.inf if at is None else at - PREWAKE_S
        with self._cond:
            if due < self._wake_at:
                self._wake_at = due
                if due < self._asleep_until:
                    self._cond.notify()

    # ---- threads -------------------------------------------------------------------------

    def start(self) -> None:
        os.makedirs(self.writer.data_dir, exist_ok=True)
        # What a crash left half-written: never complete, never registered.
        self._removed_temporaries = self.writer.remove_temp_files()
        for name, target in (("recording", self._record_loop), ("writer", self._write_loop)):
            self._threads.append(
                runtime.start_thread(name, target, on_error=self._thread_died(name))
            )

    def _thread_died(self, name: str):
        def on_error(exc: BaseException, tb: str) -> None:
            self.thread_error = f"{name} thread died: {exc!r}"
            self.report("error", f"{self.thread_error}\n{tb}")

        return on_error

    def shutdown(self, timeout: float = 10.0) -> bool:
        """Stop recording (an open recording stays scheduled and resumes at the next start)
        and wait until the files already integrated are written. True when all were."""
        self.state = "shutdown"
        self._stopping.set()
        self.wake()
        deadline = time.monotonic() + timeout
        recording = self._threads[:1]
        for t in recording:
            t.join(max(0.0, deadline - time.monotonic()))
        self._files.close()  # the writer finishes what it holds, then ends
        for t in self._threads[1:]:
            t.join(max(0.0, deadline - time.monotonic()))
        if self._retry:
            self.report(
                "warn",
                f"{len(self._retry)} file(s) not registered yet: registered at the next start",
            )
        return not any(t.is_alive() for t in self._threads)

    def alive(self) -> bool:
        return bool(self._threads) and all(t.is_alive() for t in self._threads)

    def _wait(self, seconds: float) -> None:
        """Sleep ``seconds``, or less: until a wake-up is due (see :meth:`wake`)."""
        end = time.monotonic() + seconds
        with self._cond:
            while not self._stopping.is_set():
                now = self.clock()
                if self._wake_at <= now:
                    self._wake_at = math.inf
                    return
                left = end - time.monotonic()
                if left <= 0:
                    return
                nap = min(left, self._wake_at - now)
                self._asleep_until = now + nap
                try:
                    self._cond.wait(nap)
                finally:
                    self._asleep_until = -math.inf

    def _record_loop(self) -> None:
        self._recover()
        self.state = "running"
        now = self.clock()
        while not self._stopping.is_set():
            op = self.schedule.current(now)
            if op is None:
                self._close_missed(now)
                nxt = self.schedule.next_start(now)
                left = nxt.start - now if nxt else 3600.0
                if left > PREWAKE_S:
                    # Wake a little early: the schedule is read then, so the wake-up at the
                    # start instant itself has nothing left to do but read the clock.
                    self._wait(min(left - PREWAKE_S, 3600.0))
                    now = self.clock()
                else:
                    self._wait(left)
                    now = self.clock()
                    self._stopping.wait(SETTLE_S)
                continue
            resuming = op.state == RECORDING
            if not resuming:
                op = self.schedule.mark_recording(op.id, now)
                late = now - op.start
                self.report(
                    "info",
                    f"recording {op.tag} started {late * 1e3:.1f} ms after its scheduled time",
                )
            self._record(op, resuming)
            now = self.clock()

    def _close_missed(self, now: float) -> None:
        """Close scheduled operations whose whole span passed before the thread woke."""
        for op in self.schedule.operations(open_only=True):
            if op.state == SCHEDULED and op.end <= now:
                self.schedule.mark_finished(
                    op.id, now, failed=True, note="missed: it ended before recording began"
                )
                self.report("warn", f"recording {op.tag} missed: it ended before recording began")

    def _recover(self) -> None:
        """After a restart: resume recordings that should be running, close the others."""
        now = self.clock()
        for op in self.schedule.operations(open_only=True):
            if op.end <= now:
                note = "ended while the agent was down"
                self.schedule.mark_finished(
                    op.id,
                    op.stop,
                    failed=op.state == SCHEDULED,
                    note=note if op.state == RECORDING else "missed while the agent was down",
                )
                self.report("warn", f"recording {op.tag}: {note}")
            elif op.state == RECORDING:
                lost = self._removed_temporaries.get(op.tag, 0)
                note = f"resumed after a restart at {utc_iso(now)}" + (
                    f"; {lost} incomplete file(s) discarded" if lost else ""
                )
                self.schedule.mark_resumed(op.id, note)
                self.resume_note = f"{op.tag}: {note}"
                self.report("warn", f"recording {op.tag} {note}")

    def _first_index(self, op: Operation) -> int:
        index = op.files
        pattern = re.compile(re.escape(op.tag) + r"_(\d+)\.h5$")
        try:
            for name in os.listdir(self.writer.recording_dir(op.tag)):
                m = pattern.match(name)
                if m:
                    index = max(index, int(m.group(1)) + 1)
        except FileNotFoundError:
            pass
        return index

    def _record(self, op: Operation, resuming: bool) -> None:
        """Integrate ``op`` until it ends or the engine stops."""
        T = self.config.integration_time
        per_file = self.config.integrations_per_file
        k = math.ceil((self.clock() - op.start) / T - 1e-9) if resuming else 0
        self._files_per_op.setdefault(op.id, op.files)
        self._next_index[op.id] = self._first_index(op)
        times: list[float] = []
        chunks: list[np.ndarray] = []
        while not self._stopping.is_set():
            t0 = op.start + k * T
            t1 = t0 + T
            if t1 > op.end + 1e-9:
                break
            while not self._stopping.is_set():
                left = t1 - self.clock()
                if left <= 0:
                    break
                self._wait(left)
                op = self.schedule.get(op.id)  # a stop may have been scheduled meanwhile
                if t1 > op.end + 1e-9:
                    break
            if self._stopping.is_set() or t1 > op.end + 1e-9:
                break
            times.append(t0)
            chunks.append(self.correlator.integrate(t0, T))
            k += 1
            if len(times) == per_file:
                self._submit(op, times, chunks)
                times, chunks = [], []
        if times:
            self._submit(op, times, chunks)
        # An integration cut by the stop time is not kept; the recording still ends then.
        while not self._stopping.is_set() and self.clock() < op.end:
            self._wait(op.end - self.clock())
            op = self.schedule.get(op.id)
        if not self._stopping.is_set():
            self.schedule.mark_finished(op.id, self.clock())
            self.report("info", f"recording {op.tag} ended at {utc_iso(op.end)}")

    def _submit(self, op: Operation, times: list, chunks: list) -> None:
        index = self._next_index[op.id]
        self._next_index[op.id] = index + 1
        chunk = FileChunk(
            tag=op.tag,
            index=index,
            times=np.asarray(times, dtype=np.float64),
            data=np.stack(chunks, axis=0),
            frequencies=self.correlator.frequencies,
            baselines=self.correlator.baselines,
            recording_start=op.start,
        )
        try:
            self._files.put((op.id, chunk))
        except runtime.QueueFull:
            self._fault(
                "writer_backlog_full",
                f"file {index} of {op.tag} dropped: {self.config.max_queued_files} files "
                "wait for the writer already (is the data disk slow?)",
            )
        except runtime.WorkerStopped:
            pass  # shutting down: the recording resumes at the next start

    def count(self, reason: str, text: str, level: str = "warn") -> None:
        """Count a refusal (any thread) and log it, at most one line per reason every
        10 s; a refusal of a caller is not an error of the pipeline."""
        self.counters[reason] += 1
        self._report_limited(reason, level, f"{text} [{reason}: {self.counters[reason]}]")

    def _fault(self, reason: str, text: str) -> None:
        """Count a fault of the pipeline: logged as :meth:`count`, kept in ``last_error``."""
        self.last_error = text
        self.count(reason, text, "error")

    # ---- the writer thread ---------------------------------------------------------------
    #
    # New files first; between them, failed registrations when their retry is due and the
    # files found unregistered at start, a batch at a time (one transaction each), so a
    # catch-up never holds back the files being recorded.

    def _write_loop(self) -> None:
        self._find_leftovers()
        while True:
            for op_id, chunk in self._files.get_batch(self._idle_wait()):
                self._write(op_id, chunk)
            if self._rescan_at is not None and self._rescan_at <= time.monotonic():
                self._find_leftovers()
            self._retry_due()
            self._register_some_leftovers()
            if self._files.closed and not len(self._files):
                return

    def _write(self, op_id: int, chunk: FileChunk) -> None:
        try:
            written = self.writer.write(chunk)
        except WriteError as e:
            self.write_error = f"file write failed: {e}"
            self._fault("write_failed", self.write_error)
            return
        self.files_written += 1
        self.bytes_written += written.nbytes
        self.last_file = written.path
        self._recent.append((self.clock(), written.nbytes))
        n = self._files_per_op.get(op_id, 0) + 1
        self._files_per_op[op_id] = n
        self.schedule.mark_files(op_id, n)
        outcome = self._register([(written, 0)])
        if outcome != FAILED_NOW:
            self._retry_all_now()  # the database answers again: catch up at once
        if outcome == REGISTERED:
            self.write_error = ""

    def _register(self, batch: list[tuple[WrittenFile, int]]) -> str:
        """Register files (with their attempts so far): :data:`REGISTERED`; a refusal is
        counted (:data:`REFUSED`); a database fault puts them all on the retry list
        (:data:`FAILED_NOW`)."""
        try:
            registered, refused = self.writer.register_batch([w for w, _ in batch])
        except RegistrationError as e:
            self.write_error = f"not registered: {e}"
            self._fault(e.reason, self.write_error)
            for written, attempts in batch:
                self._keep_for_retry(written, attempts + 1)
            return FAILED_NOW
        self.files_registered += len(registered)
        for _written, e in refused:
            reason = e.reason if e.reason in self.counters else "register_refused"
            self.write_error = f"not registered: {e}"
            self._fault(reason, self.write_error)
        return REFUSED if refused else REGISTERED

    def _keep_for_retry(self, written: WrittenFile, attempts: int) -> None:
        if written.path not in self._retry and len(self._retry) >= self.config.max_retry_files:
            self._fault(
                "retry_list_full",
                f"{written.path} not registered and {len(self._retry)} files wait for a "
                "retry already: it is registered at the next start",
            )
            return
        delay = min(RETRY_MAX_S, RETRY_FIRST_S * 2 ** (attempts - 1))
        self._retry[written.path] = (written, attempts, time.monotonic() + delay)

    def _retry_all_now(self) -> None:
        now = time.monotonic()
        for path, (written, attempts, _due) in self._retry.items():
            self._retry[path] = (written, attempts, now)

    def _idle_wait(self) -> float | None:
        """How long the writer may wait for new files: until the next retry or rescan is
        due, not at all while found files wait (None: until a file comes)."""
        if self._leftovers:
            return 0.0
        dues = [due for _, _, due in self._retry.values()]
        if self._rescan_at is not None:
            dues.append(self._rescan_at)
        if not dues:
            return None
        return max(0.0, min(dues) - time.monotonic())

    def _retry_due(self) -> None:
        now = time.monotonic()
        due = [(w, attempts) for w, attempts, at in self._retry.values() if at <= now]
        if not due:
            return
        for start in range(0, len(due), REGISTER_BATCH):
            batch = due[start : start + REGISTER_BATCH]
            for written, _ in batch:
                del self._retry[written.path]
            if self._register(batch) == FAILED_NOW:
                return  # still failing: the others wait for their own turn
        if not self._retry:
            self.write_error = ""  # every file is registered again

    def _find_leftovers(self) -> None:
        """At start: find the complete files of this pipeline that have no row yet
        (written before a crash, or whose registration failed before a restart)."""
        self._rescan_at = None
        if self.writer.db is None:
            return
        try:
            paths = self.writer.unregistered_paths()
        except Exception as e:
            self._rescan_at = time.monotonic() + RESCAN_AFTER_S
            self._fault(
                "rescan_failed",
                f"looking up unregistered files failed (again in {RESCAN_AFTER_S:g} s): {e}",
            )
            return
        # Bounded: what does not fit is found by the next scan, once these are done.
        self._leftovers = collections.deque(paths[: self.config.max_retry_files])
        self._leftovers_beyond = len(paths) > self.config.max_retry_files
        if paths:
            self.report(
                "info",
                f"{len(paths)} file(s) written before this start have no SupRsync row: "
                "registering them",
            )

    def _register_some_leftovers(self) -> None:
        if not self._leftovers:
            return
        batch = []
        while self._leftovers and len(batch) < LEFTOVER_BATCH:
            path = self._leftovers.popleft()
            try:
                batch.append((self.writer.describe(path), 0))
            except ValueError as e:
                self._fault("unreadable_file", f"{path} is not a readable visibility file: {e}")
        if batch and self._register(batch) != FAILED_NOW:
            self._retry_all_now()
        if not self._leftovers and self._leftovers_beyond:
            self._rescan_at = time.monotonic()

    @property
    def pending_registration(self) -> int:
        """Files written and waiting for a registration retry."""
        return len(self._retry)

    @property
    def write_errors(self) -> int:
        """Files that could not be written (their data are lost)."""
        return self.counters["write_failed"]

    # ---- monitoring ----------------------------------------------------------------------

    def data_rate(self, now: float) -> float:
        """Bytes per second written over the last minute."""
        while self._recent and self._recent[0][0] < now - RATE_WINDOW_S:
            self._recent.popleft()
        return sum(n for _, n in self._recent) / RATE_WINDOW_S

    def status(self) -> dict:
        """The monitoring points (blocking: reads the schedule and the disk)."""
        now = self.clock()
        current = self.schedule.current(now)
        upcoming = self.schedule.next_start(now)
        if current is not None and current.state == RECORDING:
            op_type, op_tag = "recording", current.tag
            activity = f"recording {current.tag}"
        elif current is not None or upcoming is not None:
            nxt = current or upcoming
            op_type, op_tag = "waiting", nxt.tag
            activity = f"waiting to record {nxt.tag} at {utc_iso(nxt.start)}"
        else:
            op_type, op_tag, activity = "idle", "", "idle"
        try:
            disk = shutil.disk_usage(self.writer.data_dir)
            size, free = disk.total, disk.free
            used_pct = 100.0 * (disk.total - disk.free) / disk.total if disk.total else 0.0
            disk_error = ""
        except OSError as e:
            size = free = 0
            used_pct = 0.0
            disk_error = f"data directory {self.writer.data_dir}: {e.strerror or e}"
        thread_error = self.thread_error
        if not thread_error and self.state == "running" and not self.alive():
            thread_error = "a recording thread is not running"
        summary, info = pipeline_summary(
            self.state,
            thread_error or disk_error,
            self.write_error,
            used_pct,
            self.config.disk_warning_pct,
            self.config.disk_error_pct,
            activity,
        )
        if summary == "normal" and current is not None and current.note:
            info = f"{info} ({current.note})"
        return {
            "timestamp": now,
            "mode": self.config.mode,
            "pipeline_id": self.config.pipeline_id,
            "summary": summary,
            "info": info,
            "op_type": op_type,
            "op_tag": op_tag,
            "disk_size": int(size),
            "disk_free": int(free),
            "disk_used_pct": round(used_pct, 2),
            "files_written": self.files_written,
            "bytes_written": self.bytes_written,
            "write_errors": self.write_errors,
            "files_registered": self.files_registered,
            "pending_registration": self.pending_registration,
            "counters": dict(self.counters),
            "last_file": self.last_file,
            "last_error": self.last_error,
            "data_rate": round(self.data_rate(now), 1),
            "resumed": self.resume_note,
        }
