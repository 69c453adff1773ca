"""The writer: one request at a time, the next N images of the ZeroMQ stream into one HDF5
file, and a truthful outcome for every request.

No OCS or Twisted here: the agent (and the web API) call :meth:`WriteEngine.start`,
:meth:`WriteEngine.stop` and :meth:`WriteEngine.status` from any thread. Each request runs
in a thread of its own (:func:`~socs_agents.runtime.start_thread`) that owns the socket and
the file; the socket is connected (and subscribed) only while the request runs, so the
images written are the ones that arrive after the request.

A request's life: ``waiting_images`` (socket connected, no file yet) ->
``acquiring_images`` (temporary file ``.<name>.<hex>.daqwriter.part`` beside the final
name) -> ``flushing_images`` (shrink, metadata, close, fsync, rename without overwriting,
fsync the folder) -> an outcome: ``completed``, ``aborted``, ``timeout``, ``failed``
(``interrupted`` is given at the next start to a request a crash cut short).
"""

from __future__ import annotations

import collections
import contextlib
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import zmq

from ...db import SupRsyncDB
from ...db.entries import AllowedRoots, BadFileEntry, make_entry
from ...runtime import (
    RateLimit,
    Report,
    SerialWorker,
    commit_file,
    no_report,
    remove_temp_files,
    start_thread,
    temp_path,
)
from .gaps import FAIL, SKIP, GapTracker
from .h5file import ImageFile
from .metadata import BadFrame, parse_frames
from .outcomes import OutcomeStore
from .requests import DEFAULT_IMAGE_BYTES, WriteRequest, WriterLimits, check_request

TEMP_SUFFIX = ".daqwriter.part"
SOCKET_TYPES = {"sub": zmq.SUB, "pull": zmq.PULL}
#: Longest wait of the receive loop before it looks at the stop flag: the abort latency.
POLL_S = 0.05
WAITING, ACQUIRING, FLUSHING = "waiting_images", "acquiring_images", "flushing_images"
COMPLETED, ABORTED, TIMEOUT, FAILED = "completed", "aborted", "timeout", "failed"
WRITER_NAME = "socs-agents DAQWriter"


class Busy(Exception):
    """A request arrived while another one runs (refused, never queued)."""

    code = "busy"


@dataclass(frozen=True)
class EngineConfig:
    stream_url: str
    limits: WriterLimits
    socket_type: str = "sub"
    detector: str = "detector"
    compression: str = "none"
    on_gap: str = "record"
    rcv_hwm: int = 100
    default_image_bytes: int = DEFAULT_IMAGE_BYTES
    recent: int = 10


class Acquisition:
    """One running request; its fields are read by other threads (progress)."""

    def __init__(self, request: WriteRequest, row: int, on_gap: str) -> None:
        self.request = request
        self.row = row
        self.state = WAITING
        self.tracker = GapTracker(on_gap)
        self.n_written = 0
        self.bytes_written = 0
        self.n_bad_frames = 0
        self.first_image_id: int | None = None
        self.last_image_id: int | None = None
        self.started = time.time()
        self.first_image_at: float | None = None
        self.stop_reason = ""
        self.stopped = threading.Event()
        self.done = threading.Event()
        self.outcome: dict | None = None
        self._callbacks: list[Callable[[dict], None]] = []
        self._lock = threading.Lock()

    def add_done_callback(self, fn: Callable[[dict], None]) -> None:
        """``fn(outcome)`` once the request has ended (at once if it has)."""
        with self._lock:
            if self.outcome is None:
                self._callbacks.append(fn)
                return
        fn(self.outcome)

    def _finish(self, outcome: dict) -> None:
        with self._lock:
            self.outcome = outcome
            callbacks, self._callbacks = self._callbacks, []
        self.done.set()
        for fn in callbacks:
            fn(outcome)

    def progress(self) -> dict:
        r = self.request
        return {
            "state": self.state,
            "run_id": r.run_id,
            "output_file": r.output_file,
            "n_images": r.n_images,
            "n_written": self.n_written,
            "first_image_id": self.first_image_id,
            "last_image_id": self.last_image_id,
            "start_time": self.started,
            "first_image_time": self.first_image_at,
            "timeout": r.timeout,
            "source": r.source,
            **self.tracker.summary(),
            "n_bad_frames": self.n_bad_frames,
        }


class WriteEngine:
    """Runs write requests, one at a time.

    Args:
        config: stream, limits and file options.
        store: where outcomes are kept across restarts.
        suprsync: database for finished files (None: files are not registered).
        allowed_roots: folders whose files may be registered.
        archive: SupRsync archive name.
        report: log sink.
    """

    def __init__(
        self,
        config: EngineConfig,
        store: OutcomeStore,
        suprsync: SupRsyncDB | None = None,
        allowed_roots: AllowedRoots | None = None,
        archive: str = "daq",
        report: Report = no_report,
    ) -> None:
        if config.socket_type not in SOCKET_TYPES:
            raise ValueError(f"socket_type must be one of {sorted(SOCKET_TYPES)}")
        self.config = config
        self.store = store
        self.suprsync = suprsync
        self.allowed_roots = allowed_roots or AllowedRoots([config.limits.data_root])
        self.archive = archive
        self.report = report
        self.limited = RateLimit(report, interval=10.0)
        self.context = zmq.Context()
        self.current: Acquisition | None = None
        self._lock = threading.Lock()
        self.image_bytes = config.default_image_bytes
        self.registrar = SerialWorker("daq-suprsync", max_queue=1000) if suprsync else None
        self.counters = collections.Counter(
            {k: 0 for k in ("requests", "refused", "images_written", "bytes_written")}
        )
        self.recent: collections.deque = collections.deque(maxlen=config.recent)
        # recent and counters change on the request and registrar threads, are read anywhere
        self._state_lock = threading.Lock()

    # ---- start-up ------------------------------------------------------------------------

    def recover(self) -> dict:
        """At start: remove temporary files an interrupted write left, mark its request
        ``interrupted``, load the last outcomes. Blocking."""
        removed = remove_temp_files(self.config.limits.data_root, TEMP_SUFFIX)
        interrupted = self.store.mark_interrupted().result()
        for path in removed:
            self.report("warn", f"removed the temporary file of an interrupted write: {path}")
        for data in interrupted:
            self.report("warn", f"request {data['run_id']} was interrupted by a restart")
        # newest first, as the outcomes that follow are added
        last = self.store.last(self.config.recent).result()
        with self._state_lock:
            self.recent.extend(last)
        return {"removed_temp_files": removed, "interrupted": len(interrupted)}

    # ---- requests ------------------------------------------------------------------------

    def check(self, n_images, output_file, timeout, run_id, source: str = "ocs") -> WriteRequest:
        """Validate a request (raises :class:`RequestRefused`) without starting it."""
        return check_request(
            n_images,
            output_file,
            timeout,
            run_id,
            self.config.limits,
            self.image_bytes,
            source=source,
        )

    def start(
        self, n_images, output_file, timeout, run_id=None, source: str = "ocs"
    ) -> Acquisition:
        """Validate and start a request; returns at once with its :class:`Acquisition`.

        Raises:
            Busy: another request runs.
            RequestRefused: the request is invalid (nothing was touched on disk).
        """
        with self._lock:
            running = self.current
            if running is not None and not running.done.is_set():
                self._count("refused")
                r = running.request
                raise Busy(
                    f"refused: a write is running (run_id {r.run_id}, {running.n_written} of "
                    f"{r.n_images} images to {r.output_file}); requests are not queued, "
                    "stop it or wait for its end"
                )
            try:
                request = self.check(n_images, output_file, timeout, run_id, source)
            except ValueError:
                self._count("refused")
                raise
            row = self.store.start(
                {**request.as_dict(), "state": "writing", "success": None}
            ).result()
            acq = Acquisition(request, row, self.config.on_gap)
            self.current = acq
            self._count("requests")
        start_thread("daq-writer", self._run, acq, on_error=lambda e, tb: self.report("error", tb))
        return acq

    def _count(self, name: str, n: int = 1) -> None:
        with self._state_lock:
            self.counters[name] += n

    def stop(self, reason: str = "stop requested") -> Acquisition | None:
        """Ask the running request to end (its outcome says ``aborted``: ``reason``)."""
        acq = self.current
        if acq is None or acq.done.is_set():
            return None
        if not acq.stop_reason:
            acq.stop_reason = reason
        acq.stopped.set()
        return acq

    def status(self) -> dict:
        acq = self.current
        running = acq is not None and not acq.done.is_set()
        with self._state_lock:
            last, counters = list(self.recent), dict(self.counters)
        return {
            "state": "writing" if running else "idle",
            "current": acq.progress() if running else None,
            "last": last,
            "counters": counters,
            "stream_url": self.config.stream_url,
            "socket_type": self.config.socket_type,
        }

    # ---- the request's thread ------------------------------------------------------------

    def _open_socket(self) -> zmq.Socket:
        sock = self.context.socket(SOCKET_TYPES[self.config.socket_type])
        sock.setsockopt(zmq.RCVHWM, self.config.rcv_hwm)
        sock.setsockopt(zmq.LINGER, 0)
        if self.config.socket_type == "sub":
            sock.setsockopt(zmq.SUBSCRIBE, b"")
        sock.connect(self.config.stream_url)
        return sock

    def _run(self, acq: Acquisition) -> None:
        req = acq.request
        h5: ImageFile | None = None
        tmp = ""
        end, problem, error = COMPLETED, "", ""
        try:
            sock = self._open_socket()
            try:
                end, problem, h5, tmp = self._receive(acq, sock)
            finally:
                sock.close(linger=0)
            acq.state = FLUSHING
            written_file = None
            if h5 is not None:
                self.image_bytes = max(1, h5.bytes_written // max(1, h5.count))
                h5.close(self._attrs(acq, end))
                commit_file(tmp, req.output_file, replace=False)
                written_file = req.output_file
        except Exception as e:  # disk full, HDF5 error, the final name taken meanwhile...
            end, error, written_file = FAILED, f"{type(e).__name__}: {e}", None
            if h5 is not None:
                h5.discard()
            if tmp:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
        outcome = self._outcome(acq, end, problem, error, written_file)
        try:
            self.store.update(acq.row, outcome).result()
        except Exception as e:
            self.report("error", f"could not store the outcome of {req.run_id}: {e}")
        with self._state_lock:
            self.counters[end] += 1
            self.counters["images_written"] += outcome["n_written"]
            self.counters["bytes_written"] += outcome["bytes_written"]
            self.recent.appendleft({**outcome, "request_number": acq.row})
        acq.state = end
        self.report("info" if outcome["success"] else "warn", outcome["message"])
        if written_file is not None and self.registrar is not None:
            self.registrar.call(self._register, acq.row, written_file)
        acq._finish(outcome)

    def _receive(self, acq: Acquisition, sock: zmq.Socket):
        """The receive loop: (end, problem, file or None, temporary path)."""
        req = acq.request
        tracker = acq.tracker
        h5: ImageFile | None = None
        tmp = ""
        deadline = time.monotonic() + req.timeout
        poll_ms = int(POLL_S * 1000)
        while acq.n_written < req.n_images:
            if acq.stopped.is_set():
                return ABORTED, acq.stop_reason, h5, tmp
            left = deadline - time.monotonic()
            if left <= 0:
                return TIMEOUT, "", h5, tmp
            if not sock.poll(min(poll_ms, max(1, int(left * 1000)))):
                continue
            frames = sock.recv_multipart(copy=False)
            received = time.time()
            try:
                meta, pixels = parse_frames(frames)
            except BadFrame as e:
                acq.n_bad_frames += 1
                self.limited("bad_frame", "warn", f"not an image, skipped: {e.reason}")
                continue
            verdict = tracker.check(meta.id, meta.status)
            if verdict == SKIP:
                continue
            if verdict == FAIL:
                return FAILED, f"{tracker.problem} (--on-gap fail)", h5, tmp
            if h5 is None:
                tmp = temp_path(req.output_file, TEMP_SUFFIX)
                h5 = ImageFile(
                    tmp, self.config.detector, req.n_images, meta, self.config.compression
                )
                acq.first_image_at = received
                acq.first_image_id = meta.id
                acq.state = ACQUIRING
            else:
                mismatch = h5.matches(meta)
                if mismatch:
                    return FAILED, mismatch, h5, tmp
            h5.write(meta, pixels, received)
            acq.n_written = h5.count
            acq.bytes_written = h5.bytes_written
            acq.last_image_id = meta.id
            deadline = time.monotonic() + req.timeout
        return COMPLETED, "", h5, tmp

    def _attrs(self, acq: Acquisition, end: str) -> dict:
        r = acq.request
        t = acq.tracker
        return {
            "run_id": r.run_id,
            "n_images_requested": r.n_images,
            "start_time": acq.started,
            "first_image_time": acq.first_image_at or 0.0,
            "stop_time": time.time(),
            "state": end,
            "stop_reason": acq.stop_reason,
            "on_gap": t.on_gap,
            "n_gaps": t.n_gaps,
            "n_missing": t.n_missing,
            "n_bad_status": t.n_bad_status,
            "n_not_forward": t.n_not_forward,
            "writer": WRITER_NAME,
            "stream_url": self.config.stream_url,
        }

    def _outcome(
        self, acq: Acquisition, end: str, problem: str, error: str, written_file: str | None
    ) -> dict:
        r = acq.request
        k = acq.n_written if written_file else 0
        where = (
            f"partial file {written_file} holds {k} images" if written_file else "no file written"
        )
        if end == COMPLETED:
            message = f"completed: wrote {k} of {r.n_images} images to {written_file}"
        elif end == ABORTED:
            message = f"aborted ({problem}) after {acq.n_written} of {r.n_images} images; {where}"
        elif end == TIMEOUT and acq.n_written == 0:
            message = (
                f"timeout: no image arrived within {r.timeout:g} s of the request "
                f"(stream {self.config.stream_url}); {where}"
            )
        elif end == TIMEOUT:
            message = (
                f"timeout: no image for {r.timeout:g} s after {acq.n_written} of "
                f"{r.n_images} images; {where}"
            )
        elif error:
            message = f"failed: {error}; no file written"
        else:
            message = f"failed: {problem} after {acq.n_written} of {r.n_images} images; {where}"
        stream = acq.tracker.describe()
        if stream:
            message += f" (stream: {stream})"
        if acq.n_bad_frames:
            message += f" ({acq.n_bad_frames} message(s) that were not images skipped)"
        stop_time = time.time()
        elapsed = stop_time - (acq.first_image_at or stop_time)
        return {
            **r.as_dict(),
            "state": end,
            "success": end == COMPLETED,
            "message": message,
            "n_written": k,
            "bytes_written": acq.bytes_written if written_file else 0,
            "output_file_written": written_file,
            "first_image_id": acq.first_image_id,
            "last_image_id": acq.last_image_id,
            "start_time": acq.started,
            "first_image_time": acq.first_image_at,
            "stop_time": stop_time,
            "images_per_s": round(k / elapsed, 3) if elapsed > 0 else None,
            **acq.tracker.summary(),
            "n_bad_frames": acq.n_bad_frames,
            "suprsync": None,
        }

    # ---- SupRsync ------------------------------------------------------------------------

    def _register(self, row: int, path: str) -> None:
        """On the registrar thread: md5 of the final bytes, then one SupRsync row."""
        try:
            real = self.allowed_roots.check(path)
            root = os.path.realpath(self.config.limits.data_root)
            remote = (
                os.path.relpath(real, root)
                if real.startswith(root + "/")
                else os.path.basename(real)
            )
            entry = make_entry(real, remote, self.archive, known_archives=None)
            self.suprsync.add_files([entry])
            info = {
                "registered": True,
                "archive": self.archive,
                "remote_path": entry.remote_path,
                "md5": entry.local_md5sum,
            }
            self.report("info", f"registered {real} in SupRsync ({self.archive}/{remote})")
        except (BadFileEntry, OSError, Exception) as e:
            info = {"registered": False, "error": str(e)}
            self.report("error", f"could not register {path} in SupRsync: {e}")
        merged = self.store.merge(row, {"suprsync": info}).result()
        with self._state_lock:
            for i, data in enumerate(self.recent):
                if data.get("request_number") == row and merged is not None:
                    self.recent[i] = {**merged, "request_number": row}
                    break

    # ---- shutdown ------------------------------------------------------------------------

    def shutdown(self, timeout: float = 5.0) -> bool:
        """Abort a running request (its partial file is kept), wait for its end, stop the
        registrar; blocking."""
        acq = self.stop("the agent is shutting down")
        clean = True
        if acq is not None:
            clean = acq.done.wait(timeout)
        if self.registrar is not None:
            clean = self.registrar.stop(drain=True, timeout=timeout) and clean
        return clean
