"""An append-only journal of announced files, so a kill -9 loses none that were received.

Accepted file datagrams are appended (one line each; one write to the OS per reactor
iteration) before they are queued.
Segments roll over at a size limit; a segment is deleted once every file in it was written
to the database or finally refused. On start, left-over segments are read back and the files
announced again (the database ignores the ones it has already).
"""

from __future__ import annotations

import glob
import os
import threading
from collections.abc import Iterator, Mapping

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
        self._file = None
        self._size = 0
        self._leftover = existing

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

    def leftover(self) -> Iterator[bytes]:
        """Datagrams of segments a previous run left; each segment is removed once read.

        Call before any :meth:`append`; re-announced files are journaled again.
        """
        for seg in self._leftover:
            path = self._path(seg)
            try:
                with open(path, "rb") as f:
                    lines = [line.rstrip(b"\n") for line in f if line.strip()]
            except OSError:
                continue
            yield from lines
            os.remove(path)
        self._leftover = []

    def append(self, raw: bytes) -> int:
        """Write one datagram; return the segment id to pass to :meth:`done`."""
        return self.append_many([raw])

    def append_many(self, raws: list[bytes]) -> int:
        """Write datagrams in one write to the OS; return their segment id.

        Each of them needs its own :meth:`done`.
        """
        lines = b"\n".join(raws) + b"\n"
        if lines.count(b"\n") != len(raws):  # a datagram with a line break of its own
            lines = b"".join(raw.replace(b"\n", b" ") + b"\n" for raw in raws)
        with self._lock:
            if self._file is None or self._size >= self.segment_bytes:
                self._roll()
            self._file.write(lines)
            self._file.flush()
            self._size += len(lines)
            seg = self._current
            self._outstanding[seg] = self._outstanding.get(seg, 0) + len(raws)
            return seg

    def _roll(self) -> None:
        if self._file is not None:
            self._file.close()
            old = self._current
            self._current += 1
            if self._outstanding.get(old, 0) == 0:
                self._remove(old)
        self._file = open(self._path(self._current), "ab")
        self._size = 0

    def done(self, seg: int) -> None:
        """One datagram of segment ``seg`` needs no replay any more."""
        self.done_many([seg])

    def done_many(self, segments: list[int]) -> None:
        """One datagram of each segment listed (a segment as often as it has datagrams)."""
        counts: dict[int, int] = {}
        for seg in segments:
            counts[seg] = counts.get(seg, 0) + 1
        self.done_counts(counts)

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
                elif self._file is not None:
                    # Everything written so far is settled: start the segment afresh.
                    self._file.truncate(0)
                    self._file.seek(0)
                    self._size = 0

    def _remove(self, seg: int) -> None:
        self._outstanding.pop(seg, None)
        try:
            os.remove(self._path(seg))
        except FileNotFoundError:
            pass

    def pending(self) -> int:
        with self._lock:
            return sum(self._outstanding.values())

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None
                if self._outstanding.get(self._current, 0) == 0:
                    self._remove(self._current)


def default_journal_dir(db_path: str, instance_id: str | None = None) -> str:
    """Beside the database, one folder per monitor instance."""
    name = f".{instance_id or 'pysmurf-monitor'}.journal"
    return os.path.join(os.path.dirname(os.path.abspath(db_path)), name)
