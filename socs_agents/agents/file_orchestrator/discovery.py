"""Watch volumes for closed HDF5 files (watchdog) and read their records in a worker thread.

A file is taken when it is closed after writing (``IN_CLOSE_WRITE``) or renamed into place
from a temporary name (``.writing``); files still carrying a temporary suffix are ignored.
A newly created name is read once (it may be a finished file moved in from elsewhere); if it
cannot be read yet, its close or rename brings it later. A new folder is scanned at once,
for files written in it before its watch was in place.
A deleted (or renamed-away) file is reported as removed. Every ``rescan_interval`` seconds,
and at start, the volumes are scanned: files that appeared while nobody watched (or whose
events were lost) are added, known files that disappeared are removed.

Files that cannot be taken are refused and counted by reason (``refused_<reason>`` in
:attr:`Discovery.counters`), never crash the loop: a link that resolves out of the volumes
(``outside_allowed_root``), a name that is not a regular file (``not_a_file``), a file that
is not HDF5 (``not_hdf5``), unreadable (``unreadable``), truncated (``truncated``) or without
records (``not_record_file``).

No Twisted here: one loop thread (:func:`~socs_agents.runtime.start_thread`) takes messages
from an :class:`~socs_agents.runtime.Inbox` (watchdog events, scans) and wakes on its own
deadlines (retries, rescans). Results go to the ``added`` and ``removed`` callables, called
from the loop thread; when one raises (the state refused or could not take it now), the file
is not marked known, so a later scan tries again.
"""

from __future__ import annotations

import fnmatch
import heapq
import os
import stat
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable

from ...db.entries import AllowedRoots, BadFileEntry
from ...runtime import Inbox, QueueFull, Report, WorkerStopped, no_report, start_thread
from .layout import FileLayout, LayoutError, read_layout

#: refused paths remembered (so an unchanged one is not read and counted at every scan)
MAX_REFUSED = 10_000
#: the first bytes of an HDF5 file without a user block
HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


class Discovery:
    """Watches ``volumes`` for files matching ``patterns``.

    Args:
        volumes: folders to watch, recursively.
        patterns: shell patterns of file names (``*.hdf5``).
        added: ``added(path, layout)`` for every new readable file.
        removed: ``removed(path)`` for every known file that is gone.
        report: ``report(level, text)`` for log lines.
        known: paths already in the state (not read again by scans).
        allowed: where files may lie once links are resolved (default: the volumes).
        on_refusal: ``on_refusal(reason, detail)`` for every refused file (counted and
            logged, rate-limited, by the agent); default: a log line each.
        max_queue: events waiting at most; an event storm past it makes a scan instead.
        temp_suffixes: names of unfinished files end with one of these.
        retry_timeout: seconds to keep retrying a file that cannot be opened yet.
        rescan_interval: seconds between scans (0: only at start).
    """

    def __init__(
        self,
        volumes: Iterable[str],
        patterns: Iterable[str],
        added: Callable[[str, FileLayout], None],
        removed: Callable[[str], None],
        report: Report = no_report,
        known: Iterable[str] = (),
        temp_suffixes: Iterable[str] = (".writing",),
        retry_timeout: float = 10.0,
        rescan_interval: float = 60.0,
        allowed: AllowedRoots | None = None,
        on_refusal: Callable[[str, str], None] | None = None,
        max_queue: int = 100_000,
    ) -> None:
        self.volumes = [os.path.abspath(v) for v in volumes]
        self.patterns = list(patterns)
        self.added = added
        self.removed = removed
        self.report = report
        self.known: set[str] = set(known)
        self.temp_suffixes = tuple(temp_suffixes)
        self.retry_timeout = retry_timeout
        self.rescan_interval = rescan_interval
        self.allowed = allowed if allowed is not None else AllowedRoots(self.volumes or ["/"])
        self.on_refusal = on_refusal or (lambda reason, detail: report("warn", detail))
        self.counters: Counter = Counter()
        self._inbox = Inbox(max_queue)
        self._retry: list[tuple[float, float, int, str]] = []
        self._queued: set[str] = set()
        #: refused path -> (mtime_ns, size) when refused: not read again while unchanged
        self.refused: dict[str, tuple[int, int]] = {}
        self._thread: threading.Thread | None = None
        self._observer = None
        #: set by a watchdog event that did not fit the inbox: scan soon instead
        self._overflow = False
        self.running = False

    # ---- rules ---------------------------------------------------------------------------

    def wanted(self, path: str) -> bool:
        name = os.path.basename(path)
        if any(name.endswith(s) for s in self.temp_suffixes):
            return False
        return any(fnmatch.fnmatchcase(name, p) for p in self.patterns)

    # ---- life cycle ----------------------------------------------------------------------

    def start(self) -> None:
        from watchdog.observers import Observer

        for v in self.volumes:
            os.makedirs(v, exist_ok=True)
        self._observer = Observer()
        handler = _Handler(self)
        for v in self.volumes:
            self._observer.schedule(handler, v, recursive=True)
        self._observer.start()
        self.running = True
        self._put(("scan", None))
        self._thread = start_thread("orchestrator-discovery", self._run, on_error=self._died)

    def stop(self, timeout: float = 5.0) -> None:
        self.running = False
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout)
            self._observer = None
        self._inbox.close()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def rescan(self, forget: bool = False) -> None:
        """Scan now (from any thread). ``forget``: first forget every known path, so that
        every file on disk is read and added again."""
        self._put(("forget" if forget else "scan", None))

    def mark_all_known(self) -> None:
        """Treat every matching file now on disk as known (read nothing). The disk is
        listed now, in the caller's thread: files written afterwards are read as usual."""
        self._put(("adopt", self._on_disk()))

    def pending(self) -> int:
        return len(self._inbox) + len(self._retry)

    def _put(self, message: tuple) -> None:
        try:
            self._inbox.put(message)
        except QueueFull:
            # an event storm: drop the event, but scan once the inbox has room (the scan
            # finds whatever the dropped events were about)
            self.counters["inbox_full"] += 1
            self._overflow = True
        except WorkerStopped:
            pass

    def _died(self, exc: BaseException, tb: str) -> None:
        self.running = False
        self.counters["errors"] += 1
        self.report("error", f"discovery loop ended: {type(exc).__name__}: {exc}\n{tb}")

    # ---- events (watchdog thread) --------------------------------------------------------

    def file_ready(self, path: str) -> None:
        if self.wanted(path):
            self._put(("add", path))

    def file_created(self, path: str) -> None:
        """A new name: maybe a finished file moved in from elsewhere, maybe one just opened
        for writing. Read once; if that fails, its close or rename will bring it."""
        if self.wanted(path):
            self._put(("probe", path))

    def dir_created(self, path: str) -> None:
        """A new folder: files written in it before its watch was set would be missed."""
        self._put(("scan_dir", path))

    def file_gone(self, path: str) -> None:
        if self.wanted(path):
            self._put(("gone", path))

    # ---- the loop ------------------------------------------------------------------------

    def _run(self) -> None:
        next_scan = time.monotonic() + self.rescan_interval if self.rescan_interval else None
        while True:
            now = time.monotonic()
            wait = None  # nothing to do until a message comes
            if self._retry:
                wait = max(0.0, self._retry[0][0] - now)
            if next_scan is not None:
                until_scan = max(0.0, next_scan - now)
                wait = until_scan if wait is None else min(wait, until_scan)
            batch = self._inbox.get_batch(wait)
            if self._inbox.closed:
                return
            if self._overflow:
                self._overflow = False
                batch.append(("scan", None))
            for item in batch:
                self._guarded(self._handle, *item)
            now = time.monotonic()
            while self._retry and self._retry[0][0] <= now:
                _, first, attempt, path = heapq.heappop(self._retry)
                self._guarded(self._read, path, first, attempt)
            if next_scan is not None and now >= next_scan:
                self._guarded(self._scan)
                next_scan = now + self.rescan_interval

    def _guarded(self, fn, *args) -> None:
        """One step of the loop; an error is counted and logged and the loop goes on."""
        try:
            fn(*args)
        except Exception as e:
            self.counters["errors"] += 1
            self.report("error", f"discovery: {type(e).__name__}: {e}")

    def _handle(self, kind: str, path) -> None:
        if kind == "add":
            if path in self._queued:
                return  # a retry is already scheduled (rename then close of one file)
            self._read(path, time.monotonic(), 0)
        elif kind == "probe":
            if path not in self._queued and path not in self.known:
                self._read(path, time.monotonic(), 0, retry=False)
        elif kind == "scan_dir":
            for found in sorted(self._on_disk([path]) - self.known - self._queued):
                self._read(found, time.monotonic(), 0)
        elif kind == "gone":
            self._queued.discard(path)
            self.refused.pop(path, None)
            if path in self.known:
                self._gone(path)
        elif kind == "scan":
            self._scan()
        elif kind == "forget":
            self.known.clear()
            self._scan()
        elif kind == "adopt":
            self.known.update(path)

    @staticmethod
    def _signature(path: str) -> tuple[int, int] | None:
        try:
            st = os.lstat(path)
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size)

    def _refuse(self, path: str, reason: str, why: str) -> None:
        self._queued.discard(path)
        sig = self._signature(path)
        if sig is not None:
            if path in self.refused or len(self.refused) < MAX_REFUSED:
                self.refused[path] = sig
            else:
                self.counters["refused_memory_full"] += 1
        self.counters[f"refused_{reason}"] += 1
        self.on_refusal(reason, f"not taking {path}: {why}")

    def check_file(self, path: str) -> str | None:
        """Why ``path`` cannot be a record file (a refusal reason), or None to read it.

        Raises:
            FileNotFoundError: it is gone.
        """
        try:
            self.allowed.check(path)
        except BadFileEntry as e:
            return e.code
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode):
            return "not_a_file"
        try:
            with open(path, "rb") as f:
                head = f.read(len(HDF5_SIGNATURE))
        except PermissionError:
            return "unreadable"
        except IsADirectoryError:
            return "not_a_file"
        # files with a user block (signature at 512, 1024...) are not what DUNE writes
        if head != HDF5_SIGNATURE:
            return "not_hdf5"
        return None

    def _read(self, path: str, first: float, attempt: int, retry: bool = True) -> None:
        if path in self.refused:
            if self.refused[path] == self._signature(path):
                return  # refused already and unchanged since
            del self.refused[path]
        try:
            reason = self.check_file(path)
            if reason in ("outside_allowed_root", "not_a_file"):
                self._refuse(path, reason, reason.replace("_", " "))
                return
            if reason is not None:
                # no HDF5 signature yet: its writer may not have flushed it (writers rename
                # before their last close); retried like a file still locked
                raise _NotYet(reason)
            layout = read_layout(path)
        except FileNotFoundError:
            self._queued.discard(path)
            return
        except LayoutError as e:
            self._refuse(path, "not_record_file", str(e))
            return
        except (OSError, _NotYet) as e:
            # Locked by its writer, or not yet complete: retry with backoff.
            if not retry:
                return
            if time.monotonic() - first > self.retry_timeout:
                if isinstance(e, _NotYet):
                    reason = str(e)
                else:
                    reason = "truncated" if "truncated" in str(e) else "unreadable"
                self._refuse(path, reason, f"gave up after {attempt + 1} attempts: {e}")
                return
            self.counters["retries"] += 1
            self._queued.add(path)
            delay = min(0.01 * 2**attempt, 0.5)
            heapq.heappush(self._retry, (time.monotonic() + delay, first, attempt + 1, path))
            return
        self._queued.discard(path)
        try:
            self.added(path, layout)
        except Exception as e:  # not taken now (state busy, refused): a later scan retries
            self.counters["add_failed"] += 1
            self.report("warn", f"could not add {path} (tried again at the next scan): {e}")
            return
        self.known.add(path)
        self.counters["discovered"] += 1

    def _gone(self, path: str) -> None:
        self.removed(path)  # raises when the state cannot take it now: still known
        self.known.discard(path)
        self.counters["removed"] += 1

    def _on_disk(self, folders: Iterable[str] | None = None) -> set[str]:
        found = set()
        for volume in self.volumes if folders is None else folders:
            for folder, dirs, names in os.walk(volume):
                # a folder named like a file is refused (not_a_file), not walked past unseen
                for name in [*names, *(d for d in dirs if self.wanted(d))]:
                    path = os.path.join(folder, name)
                    if self.wanted(path):
                        found.add(path)
        return found

    def _scan(self) -> None:
        self.counters["scans"] += 1
        on_disk = self._on_disk()
        for path in [p for p in self.refused if p not in on_disk]:
            del self.refused[path]
        for path in sorted(self.known - on_disk):
            self._guarded(self._gone, path)
        for path in sorted(on_disk - self.known - self._queued):
            self._read(path, time.monotonic(), 0)


class _NotYet(Exception):
    """A file that may become readable (its reason is the message)."""


def _make_handler_class():
    from watchdog.events import FileSystemEventHandler

    class Handler(FileSystemEventHandler):
        def __init__(self, discovery: Discovery) -> None:
            super().__init__()
            self.d = discovery

        def on_closed(self, event) -> None:  # closed after writing
            if not event.is_directory:
                self.d.file_ready(os.fsdecode(event.src_path))

        def on_created(self, event) -> None:
            if event.is_directory:
                self.d.dir_created(os.fsdecode(event.src_path))
            else:
                self.d.file_created(os.fsdecode(event.src_path))

        def on_moved(self, event) -> None:
            if event.is_directory:
                return
            self.d.file_gone(os.fsdecode(event.src_path))
            self.d.file_ready(os.fsdecode(event.dest_path))

        def on_deleted(self, event) -> None:
            if not event.is_directory:
                self.d.file_gone(os.fsdecode(event.src_path))

    return Handler


def _Handler(discovery: Discovery):
    return _make_handler_class()(discovery)
