"""An append-only journal of announced files, so a kill -9 loses none that were received.

Accepted file datagrams are appended (one line each; one ``os.write`` per reactor iteration)
before they are queued. Segments roll over at a size limit; a segment is deleted once every
file in it was written to the database or finally refused. On start, left-over segments are
read back and the files announced again (the database ignores the ones it has already); a
left-over segment is deleted only once every file read from it is settled.

Durability, matching the SupRsync database's ``POWER_SAFE`` (a committed row is on disk):

* a kill -9 loses nothing that was appended: the bytes are in the kernel's page cache as
  soon as ``os.write`` returns;
* against a power cut, :meth:`Journal.sync` (``fdatasync``) makes every line appended so far
  durable. The registrar has it called (on a thread of its own: under heavy disk writes an
  fsync can take hundreds of milliseconds, which small files must not wait for) as soon as
  files have to wait longer than a commit interval (database locked or failing, files not
  there yet), and at stop before it reports files as kept in the journal. Files committed
  within the commit interval of their arrival are made durable by the database's own fsync
  instead; a big file being checksummed is not synced for: its own data, just written by
  its producer without an fsync, is no more durable than its journal line.
* a new segment's name is made durable (the folder is fsynced) when the segment is created.

A write that fails (disk full, read-only folder) raises :class:`OSError` to the caller and
leaves the segment as it was before the write (a partial line is cut off).
"""

from __future__ import annotations

import contextlib
import glob
import os
import threading
from collections.abc import Iterator, Mapping

from ...runtime import fsync_dir

SEGMENT_BYTES = 4 << 20


class Journal:
    def __init__(self, directory: str, segment_bytes: int = SEGMENT_BYTES) -> None:
        self.directory = directory
        os.makedirs(directory, exist_ok=True)
        self.segment_bytes = segment_bytes
        self._lock = threading.Lock()
        self._outstanding: dict[int, int] = {}
        existing = self._segment_ids()
        self._current = (max(existing) + 1) if existing else 0
        self._fd: int | None = None
        self._size = 0
        self._dirty = False  # appended since the last sync
        self._leftover = existing
        self.syncs = 0

    def _segment_ids(self) -> list[int]:
        ids = []
        for path in glob.glob(os.path.join(self.directory, "seg-*.jsonl")):
            try:
                ids.append(int(os.path.basename(path)[4:-6]))
            except ValueError:
                continue
        return sorted(ids)

    def _path(self, seg: int) -> str:
        return os.path.join(self.directory, f"seg-{seg:08d}.jsonl")

    def leftover(self) -> Iterator[tuple[int, list[bytes]]]:
        """``(segment id, datagrams)`` of each segment a previous run left.

        Call before any :meth:`append`. Each segment is kept until :meth:`done_counts` has
        been told of as many settled datagrams as it held (its lines are counted as
        outstanding here), so a replay interrupted at any point loses nothing.
        """
        for seg in self._leftover:
            try:
                with open(self._path(seg), "rb") as f:
                    lines = [line.rstrip(b"\n") for line in f if line.strip()]
            except OSError:
                continue
            if not lines:
                self._remove(seg)
                continue
            with self._lock:
                self._outstanding[seg] = self._outstanding.get(seg, 0) + len(lines)
            yield seg, lines
        self._leftover = []

    def append(self, raw: bytes) -> int:
        """Write one datagram; return the segment id to pass to :meth:`done`."""
        return self.append_many([raw])

    def append_many(self, raws: list[bytes], outstanding: int | None = None) -> int:
        """Write datagrams in one write to the OS; return their segment id.

        ``outstanding`` (default: all of them) is how many will be settled with
        :meth:`done_counts` (fewer when some were settled before they could be journaled).

        Raises:
            OSError: the write failed; nothing of it stays in the segment.
        """
        lines = b"\n".join(raws) + b"\n"
        if lines.count(b"\n") != len(raws):  # a datagram with a line break of its own
            lines = b"".join(raw.replace(b"\n", b" ") + b"\n" for raw in raws)
        with self._lock:
            if self._fd is None or self._size >= self.segment_bytes:
                self._roll()
            try:
                written = os.write(self._fd, lines)
                if written != len(lines):  # a short write: the disk is full
                    raise OSError(28, "No space left on device (short write)")
            except OSError:
                # Cut off a partial line so a later append starts on a line of its own.
                with contextlib.suppress(OSError):
                    os.ftruncate(self._fd, self._size)
                raise
            self._size += len(lines)
            self._dirty = True
            seg = self._current
            n = len(raws) if outstanding is None else outstanding
            self._outstanding[seg] = self._outstanding.get(seg, 0) + n
            return seg

    def _roll(self) -> None:
        if self._fd is not None:
            if self._dirty:
                os.fdatasync(self._fd)
            os.close(self._fd)
            self._fd = None
            old = self._current
            self._current += 1
            if self._outstanding.get(old, 0) == 0:
                self._remove(old)
        fd = os.open(
            self._path(self._current), os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644
        )
        try:
            fsync_dir(self.directory)  # the new segment's name survives a power cut
        except OSError:
            os.close(fd)
            raise
        self._fd = fd
        self._size = os.fstat(fd).st_size
        self._dirty = False

    def sync(self) -> bool:
        """Make every line appended so far durable (``fdatasync``); True if one was needed.

        Raises:
            OSError: the sync failed (the lines may not be on disk).
        """
        with self._lock:
            if not self._dirty or self._fd is None:
                return False
            fd = os.dup(self._fd)  # the segment may roll meanwhile: sync what was written
            self._dirty = False
        try:
            # Outside the lock: a sync can take milliseconds, and the reactor appends.
            os.fdatasync(fd)
        except OSError:
            with self._lock:
                self._dirty = True
            raise
        finally:
            os.close(fd)
        self.syncs += 1
        return True

    def done(self, seg: int) -> None:
        """One datagram of segment ``seg`` needs no replay any more."""
        self.done_counts({seg: 1})

    def done_counts(self, counts: Mapping[int, int]) -> None:
        """``counts[seg]`` datagrams of each segment need no replay any more."""
        with self._lock:
            for seg, n in counts.items():
                left = self._outstanding.get(seg, 0) - n
                self._outstanding[seg] = max(left, 0)
                if left > 0:
                    continue
                if seg != self._current:
                    self._remove(seg)
                elif self._fd is not None:
                    # Everything written so far is settled: start the segment afresh.
                    try:
                        os.ftruncate(self._fd, 0)
                    except OSError:
                        continue  # harmless: its lines are replayed as duplicates
                    self._size = 0
                    self._dirty = False

    def _remove(self, seg: int) -> None:
        self._outstanding.pop(seg, None)
        with contextlib.suppress(FileNotFoundError):
            os.remove(self._path(seg))

    def pending(self) -> int:
        with self._lock:
            return sum(self._outstanding.values())

    def close(self) -> None:
        """Sync and close the current segment (removed when nothing in it is pending)."""
        with self._lock:
            if self._fd is not None:
                with contextlib.suppress(OSError):
                    if self._dirty:
                        os.fdatasync(self._fd)
                os.close(self._fd)
                self._fd = None
                self._dirty = False
                if self._outstanding.get(self._current, 0) == 0:
                    self._remove(self._current)


def default_journal_dir(db_path: str, instance_id: str | None = None) -> str:
    """Beside the database, one folder per monitor instance."""
    name = f".{instance_id or 'pysmurf-monitor'}.journal"
    return os.path.join(os.path.dirname(os.path.abspath(db_path)), name)
