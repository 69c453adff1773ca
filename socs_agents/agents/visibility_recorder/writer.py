"""HDF5 visibility files: written durably under their final name, then registered.

Blocking (h5py, md5, SQLite): run from a worker thread, never the reactor.

Layout, for a recording tagged ``20261121_101500_slow_drvs-1``:

* local: ``<data dir>/<tag>/<tag>_<file index:05d>.h5``, written first under a temporary
  name of the runtime (:func:`~socs_agents.runtime.temp_path`) and made durable under the
  final name (:func:`~socs_agents.runtime.commit_file`: fsync, rename, fsync the folder)
  before it is registered, so a registered md5 always describes a complete file on disk;
* SupRsync remote path: ``<ctime code of the file's first integration>/<tag>/<name>``, so
  the first component is the 5-digit code SupRsync finalizes by.

Writing and registering are two steps: a file whose registration failed (database locked,
disk full) stays complete on disk and is registered later (:meth:`VisibilityWriter.register`
again, or :meth:`VisibilityWriter.unregistered_files` at the next start).
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass

import h5py
import numpy as np
from sqlalchemy import select

from ... import runtime
from ...db import BadFileEntry, SupRsyncDB, SupRsyncFile, make_entry, md5_file
from ...db.entries import AllowedRoots
from ...timeutil import ctime_code, utc_iso
from .correlator import POLARIZATIONS

FORMAT_VERSION = 1
#: Paths per lookup of already registered files (SQLite's bound parameters).
_LOOKUP_CHUNK = 400


class WriteError(RuntimeError):
    """A file could not be written or moved into place; the message says which and how."""


class RegistrationError(RuntimeError):
    """A complete file could not be registered in the SupRsync database.

    Attributes:
        reason: counter name (``outside_allowed_root``, ``database_locked``,
            ``database_error``, or another :class:`~socs_agents.db.BadFileEntry` code).
        retry: True when trying again later may succeed (a database fault); False for a
            refusal (the file must never be registered).
    """

    def __init__(self, message: str, reason: str, retry: bool) -> None:
        super().__init__(message)
        self.reason = reason
        self.retry = retry


@dataclass(frozen=True)
class FileChunk:
    """The integrations of one file, ready to write."""

    tag: str
    index: int
    times: np.ndarray  # [time] start of each integration (unix s)
    data: np.ndarray  # [time, baseline, channel, polarization] complex64
    frequencies: np.ndarray  # [channel] Hz
    baselines: np.ndarray  # [baseline, 2]
    recording_start: float


@dataclass(frozen=True)
class WrittenFile:
    """A complete file on disk under its final name (registered or not)."""

    path: str
    remote_path: str
    nbytes: int
    md5: str
    n_integrations: int
    first_time: float


class VisibilityWriter:
    """Writes a pipeline's files and registers them in the SupRsync database.

    Args:
        data_dir: where recordings go (one folder per recording).
        mode, pipeline_id, integration_time: written as file attributes.
        db: the SupRsync database, or None to write without registering.
        archive: the SupRsync archive name.
        allowed_roots: folders whose files may be registered (links resolved); default
            the data dir.
    """

    def __init__(
        self,
        data_dir: str,
        mode: str,
        pipeline_id: str,
        integration_time: float,
        db: SupRsyncDB | None = None,
        archive: str = "drv_slow",
        allowed_roots: AllowedRoots | None = None,
    ) -> None:
        self.data_dir = os.path.abspath(data_dir)
        self.mode = mode
        self.pipeline_id = pipeline_id
        self.integration_time = integration_time
        self.db = db
        self.archive = archive
        self.allowed_roots = allowed_roots or AllowedRoots([self.data_dir])
        # Several pipelines may share a data dir: this one touches only its own recordings.
        self._own_tag = re.compile(r"\d{8}_\d{6}_" + re.escape(f"{mode}_{pipeline_id}") + r"$")

    def recording_dir(self, tag: str) -> str:
        return os.path.join(self.data_dir, tag)

    def file_name(self, tag: str, index: int) -> str:
        return f"{tag}_{index:05d}.h5"

    def remote_path(self, tag: str, name: str, first_time: float) -> str:
        return f"{ctime_code(first_time)}/{tag}/{name}"

    def own_recordings(self) -> list[str]:
        """Tags of this pipeline's recording folders in the data dir."""
        try:
            names = os.listdir(self.data_dir)
        except FileNotFoundError:
            return []
        return sorted(n for n in names if self._own_tag.match(n))

    def remove_temp_files(self) -> dict[str, int]:
        """Delete the temporary files a crash left in this pipeline's recordings (never
        complete, never registered); tag -> how many were removed."""
        removed = {}
        for tag in self.own_recordings():
            n = len(runtime.remove_temp_files(self.recording_dir(tag)))
            if n:
                removed[tag] = n
        return removed

    def write(self, chunk: FileChunk) -> WrittenFile:
        """Write one file durably under its final name (not registered yet).

        Raises:
            WriteError: the write or the move into place failed; no file of the final name
                was created and the temporary file is removed.
        """
        folder = self.recording_dir(chunk.tag)
        name = self.file_name(chunk.tag, chunk.index)
        final = os.path.join(folder, name)
        tmp = runtime.temp_path(final)
        try:
            os.makedirs(folder, exist_ok=True)
            self._write_hdf5(tmp, chunk)
        except Exception as e:
            _remove_quietly(tmp)
            raise WriteError(f"writing {tmp} failed: {e}") from e
        try:
            runtime.commit_file(tmp, final)
        except OSError as e:
            _remove_quietly(tmp)
            raise WriteError(f"moving {tmp} to {final} failed: {e}") from e
        first = float(chunk.times[0])
        return WrittenFile(
            path=final,
            remote_path=self.remote_path(chunk.tag, name, first),
            nbytes=os.path.getsize(final),
            md5=md5_file(final),
            n_integrations=len(chunk.times),
            first_time=first,
        )

    def register(self, written: WrittenFile) -> bool:
        """Register one complete file (idempotent). False when there is no database.

        Raises:
            RegistrationError: refused (outside the allowed roots, a bad entry) or failed
                (database locked past its busy timeout, disk full, read-only).
        """
        if self.db is None:
            return False
        registered, refused = self.register_batch([written])
        if refused:
            raise refused[0][1]
        return bool(registered)

    def register_batch(
        self, files: list[WrittenFile]
    ) -> tuple[list[WrittenFile], list[tuple[WrittenFile, RegistrationError]]]:
        """Register complete files in one transaction (idempotent): what a catch-up after a
        fault calls, so that thousands of files cost one commit, not thousands.

        Returns:
            ``(registered, refused)``: the files now in the database, and the files the
            rules refuse (never to be registered) with why.

        Raises:
            RegistrationError: ``retry=True``, the database failed; none was registered.
        """
        if self.db is None or not files:
            return [], []
        entries, accepted, refused = [], [], []
        for written in files:
            try:
                self.allowed_roots.check(written.path)
                entries.append(
                    make_entry(
                        written.path,
                        written.remote_path,
                        self.archive,
                        known_archives=None,
                        local_md5sum=written.md5,
                        timestamp=written.first_time,
                    )
                )
                accepted.append(written)
            except BadFileEntry as e:
                error = RegistrationError(f"{written.path} refused: {e.reason}", e.code, False)
                refused.append((written, error))
        if entries:
            try:
                self.db.add_files(entries)
            except Exception as e:
                reason = "database_locked" if runtime.is_locked(e) else "database_error"
                names = accepted[0].path + (
                    f" and {len(accepted) - 1} more" if accepted[1:] else ""
                )
                raise RegistrationError(
                    f"{names} written but not registered in the SupRsync database: {e}",
                    reason,
                    True,
                ) from e
        return accepted, refused

    # ---- after a restart -----------------------------------------------------------------

    def complete_files(self) -> Iterator[str]:
        """Every complete file (final name) of this pipeline's recordings."""
        for tag in self.own_recordings():
            folder = self.recording_dir(tag)
            pattern = re.compile(re.escape(tag) + r"_\d{5,}\.h5$")
            with contextlib.suppress(FileNotFoundError):
                for name in sorted(os.listdir(folder)):
                    if pattern.match(name):
                        yield os.path.join(folder, name)

    def registered_paths(self, paths: list[str]) -> set[str]:
        """Those of ``paths`` that have a row in this archive (blocking; may raise the
        database's errors)."""
        found: set[str] = set()
        if self.db is None:
            return found
        with self.db.Session() as session:
            for start in range(0, len(paths), _LOOKUP_CHUNK):
                chunk = paths[start : start + _LOOKUP_CHUNK]
                stmt = select(SupRsyncFile.local_path).where(
                    SupRsyncFile.archive_name == self.archive, SupRsyncFile.local_path.in_(chunk)
                )
                found.update(session.scalars(stmt))
        return found

    def unregistered_paths(self) -> list[str]:
        """The complete files of this pipeline that have no SupRsync row (a registration
        failed, or the agent stopped between writing and registering). Cheap: a folder
        listing and one look-up per 400 files; :meth:`describe` reads each.

        Raises:
            the database's errors when the look-up fails (try again later).
        """
        paths = list(self.complete_files())
        known = self.registered_paths(paths)
        return [p for p in paths if p not in known]

    def describe(self, path: str) -> WrittenFile:
        """A complete file found on disk, read back for its registration.

        Raises:
            ValueError: not a readable visibility file (the text says why).
        """
        try:
            with h5py.File(path, "r") as f:
                first = float(f.attrs["start_time"])
                n = int(f.attrs["n_integrations"])
            md5 = md5_file(path)
        except (OSError, KeyError, ValueError, TypeError) as e:
            raise ValueError(str(e) or type(e).__name__) from None
        tag = os.path.basename(os.path.dirname(path))
        return WrittenFile(
            path=path,
            remote_path=self.remote_path(tag, os.path.basename(path), first),
            nbytes=os.path.getsize(path),
            md5=md5,
            n_integrations=n,
            first_time=first,
        )

    def _write_hdf5(self, path: str, chunk: FileChunk) -> None:
        with h5py.File(path, "w") as f:
            f.attrs["format_version"] = FORMAT_VERSION
            f.attrs["mode"] = self.mode
            f.attrs["pipeline_id"] = self.pipeline_id
            f.attrs["integration_time"] = float(self.integration_time)
            f.attrs["recording_tag"] = chunk.tag
            f.attrs["recording_start"] = float(chunk.recording_start)
            f.attrs["start_time"] = float(chunk.times[0])
            f.attrs["start_time_utc"] = utc_iso(float(chunk.times[0]))
            f.attrs["file_index"] = int(chunk.index)
            f.attrs["n_integrations"] = len(chunk.times)
            vis = f.create_dataset("visibilities", data=chunk.data)
            vis.attrs["axes"] = "time,baseline,channel,polarization"
            t = f.create_dataset("time", data=np.asarray(chunk.times, dtype=np.float64))
            t.attrs["units"] = "unix seconds (UTC), start of each integration"
            fr = f.create_dataset("frequency", data=chunk.frequencies.astype(np.float64))
            fr.attrs["units"] = "Hz"
            f.create_dataset("baselines", data=chunk.baselines)
            f.create_dataset("polarization", data=np.array(POLARIZATIONS, dtype="S2"))


def _remove_quietly(path: str) -> None:
    with contextlib.suppress(OSError):
        os.remove(path)
