"""HDF5 visibility files: written under a temporary name, renamed when complete, registered.

Blocking (h5py, md5, SQLite): run from a worker thread, never the reactor.

Layout, for a recording tagged ``20261121_101500_slow_drvs-1``:

* local: ``<data dir>/<tag>/<tag>_<file index:05d>.h5``, written first as
  ``.<name>.tmp`` in the same folder and renamed with ``os.replace`` once closed;
* SupRsync remote path: ``<ctime code of the file's first integration>/<tag>/<name>``, so
  the first component is the 5-digit code SupRsync finalizes by.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import h5py
import numpy as np

from ...db import SupRsyncDB, make_entry, md5_file
from ...timeutil import ctime_code, utc_iso
from .correlator import POLARIZATIONS

FORMAT_VERSION = 1


class WriteError(RuntimeError):
    """A file could not be written, renamed or registered; the message says which and how."""


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
    path: str
    remote_path: str
    nbytes: int
    md5: str
    n_integrations: int
    registered: bool


class VisibilityWriter:
    """Writes a pipeline's files and registers them in the SupRsync database.

    Args:
        data_dir: where recordings go (one folder per recording).
        mode, pipeline_id, integration_time: written as file attributes.
        db: the SupRsync database, or None to write without registering.
        archive: the SupRsync archive name.
    """

    def __init__(
        self,
        data_dir: str,
        mode: str,
        pipeline_id: str,
        integration_time: float,
        db: SupRsyncDB | None = None,
        archive: str = "drv_slow",
    ) -> None:
        self.data_dir = os.path.abspath(data_dir)
        self.mode = mode
        self.pipeline_id = pipeline_id
        self.integration_time = integration_time
        self.db = db
        self.archive = archive

    def recording_dir(self, tag: str) -> str:
        return os.path.join(self.data_dir, tag)

    def file_name(self, tag: str, index: int) -> str:
        return f"{tag}_{index:05d}.h5"

    def remote_path(self, tag: str, name: str, first_time: float) -> str:
        return f"{ctime_code(first_time)}/{tag}/{name}"

    def leftover_temporaries(self, tag: str) -> list[str]:
        """Temporary files of a recording (left by a crash): never complete, never registered."""
        folder = self.recording_dir(tag)
        try:
            return sorted(
                os.path.join(folder, n)
                for n in os.listdir(folder)
                if n.startswith(".") and n.endswith(".tmp")
            )
        except FileNotFoundError:
            return []

    def write(self, chunk: FileChunk) -> WrittenFile:
        """Write, rename and register one file.

        Raises:
            WriteError: the write, the rename or the registration failed (the temporary file
                is removed; a renamed but unregistered file stays and is named).
        """
        folder = self.recording_dir(chunk.tag)
        name = self.file_name(chunk.tag, chunk.index)
        final = os.path.join(folder, name)
        tmp = os.path.join(folder, f".{name}.tmp")
        try:
            os.makedirs(folder, exist_ok=True)
            self._write_hdf5(tmp, chunk)
        except Exception as e:
            _remove_quietly(tmp)
            raise WriteError(f"writing {tmp} failed: {e}") from e
        try:
            os.replace(tmp, final)
        except OSError as e:
            _remove_quietly(tmp)
            raise WriteError(f"moving {tmp} to {final} failed: {e}") from e
        nbytes = os.path.getsize(final)
        remote = self.remote_path(chunk.tag, name, float(chunk.times[0]))
        md5 = md5_file(final)
        registered = False
        if self.db is not None:
            try:
                entry = make_entry(
                    final,
                    remote,
                    self.archive,
                    known_archives=None,
                    local_md5sum=md5,
                    timestamp=float(chunk.times[0]),
                )
                self.db.add_files([entry])
                registered = True
            except Exception as e:
                raise WriteError(
                    f"{final} written but not registered in the SupRsync database: {e}"
                ) from e
        return WrittenFile(
            path=final,
            remote_path=remote,
            nbytes=nbytes,
            md5=md5,
            n_integrations=len(chunk.times),
            registered=registered,
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
    try:
        os.remove(path)
    except OSError:
        pass
