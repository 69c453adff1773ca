"""Durable file writes: a reader sees either the old file or the complete new one.

The steps, each needed after a power cut: write under a temporary name in the target
folder (same filesystem, so the rename is atomic), fsync the file (its bytes are on disk
before its name is), rename over the final name, fsync the folder (the rename itself is on
disk). Writers that produce files with a library that opens the path itself (h5py) write to
:func:`temp_path` and call :func:`commit_file`.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from typing import IO

TEMP_SUFFIX = ".part"


def temp_path(final_path: str, suffix: str = TEMP_SUFFIX) -> str:
    """A unique temporary name beside ``final_path``: ``.<name>.<random><suffix>``.

    Hidden and with its own suffix, so watchers that match the final names' patterns never
    take it for a finished file.
    """
    folder, name = os.path.split(os.path.abspath(final_path))
    return os.path.join(folder, f".{name}.{secrets.token_hex(4)}{suffix}")


def fsync_dir(folder: str) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_path(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def commit_file(tmp: str, final_path: str, replace: bool = True) -> None:
    """Make the complete file ``tmp`` durable under ``final_path``: fsync, rename, fsync
    the folder. With ``replace=False`` an existing ``final_path`` raises
    :class:`FileExistsError` and is left alone (``tmp`` is kept for the caller)."""
    fsync_path(tmp)
    if replace:
        os.replace(tmp, final_path)
    else:
        # link + unlink: atomic, and fails instead of overwriting
        os.link(tmp, final_path)
        os.unlink(tmp)
    fsync_dir(os.path.dirname(os.path.abspath(final_path)))


@contextlib.contextmanager
def durable_file(final_path: str, mode: str = "wb", replace: bool = True) -> Iterator[IO]:
    """Open a temporary file beside ``final_path``; on a clean exit make it durable under
    ``final_path`` (:func:`commit_file`); on an exception remove it, leaving any old file."""
    if mode not in ("wb", "w"):
        raise ValueError("durable_file writes whole files: mode 'wb' or 'w'")
    os.makedirs(os.path.dirname(os.path.abspath(final_path)), exist_ok=True)
    tmp = temp_path(final_path)
    try:
        with open(tmp, mode) as f:
            yield f
            f.flush()
        commit_file(tmp, final_path, replace=replace)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def durable_write(final_path: str, data: bytes | str, replace: bool = True) -> None:
    """Write ``data`` as the whole content of ``final_path``, durably."""
    with durable_file(final_path, "wb" if isinstance(data, bytes) else "w", replace) as f:
        f.write(data)


def remove_temp_files(folder: str, suffix: str = TEMP_SUFFIX) -> list[str]:
    """Delete what an interrupted write left in ``folder`` (recursively); the removed
    paths."""
    removed = []
    for root, _dirs, names in os.walk(folder):
        for name in names:
            if name.startswith(".") and name.endswith(suffix):
                path = os.path.join(root, name)
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
                    removed.append(path)
    return removed
