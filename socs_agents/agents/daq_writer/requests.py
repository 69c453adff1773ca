"""Write requests and their refusals, decided before anything touches the disk.

:func:`check_request` returns a :class:`WriteRequest` or raises :class:`RequestRefused`
whose message says why (and ``code`` says it short). Only ``os.stat``-like calls: no file
or folder is created.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

#: Used for the free-disk check until the first image has shown the stream's image size.
DEFAULT_IMAGE_BYTES = 1024 * 1024 * 2
#: Free space kept beyond the request's estimate (HDF5 metadata, other writers).
DEFAULT_RESERVE_BYTES = 64 * 1024 * 1024


class RequestRefused(ValueError):
    """A write request that will not run; the message says why."""

    def __init__(self, reason: str, code: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.code = code


@dataclass(frozen=True)
class WriterLimits:
    """What the agent accepts (from its arguments)."""

    data_root: str
    max_images: int
    max_timeout: float = 3600.0
    reserve_bytes: int = DEFAULT_RESERVE_BYTES


@dataclass(frozen=True)
class WriteRequest:
    n_images: int
    output_file: str  # absolute, resolved (links and ``..``)
    timeout: float
    run_id: str
    requested_at: float = field(default_factory=time.time)
    source: str = "ocs"

    def as_dict(self) -> dict:
        return asdict(self)


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_request(
    n_images,
    output_file,
    timeout,
    run_id,
    limits: WriterLimits,
    image_bytes: int = DEFAULT_IMAGE_BYTES,
    free_bytes: Callable[[str], int] | None = None,
    source: str = "ocs",
) -> WriteRequest:
    """Validate one request against ``limits``.

    Args:
        image_bytes: expected bytes per image (the last image seen, or a default), for the
            free-disk estimate ``n_images * image_bytes + limits.reserve_bytes``.
        free_bytes: free bytes of the filesystem holding a folder (``shutil.disk_usage``
            by default; tests inject one).

    Raises:
        RequestRefused: codes ``bad_n_images``, ``too_many_images``, ``bad_timeout``,
            ``bad_run_id``, ``bad_path``, ``relative_path``, ``outside_data_root``,
            ``file_exists``, ``no_parent``, ``parent_not_dir``, ``parent_not_writable``,
            ``disk_full``.
    """
    if not _is_int(n_images) or n_images < 1:
        raise RequestRefused(f"n_images must be an integer >= 1, got {n_images!r}", "bad_n_images")
    if n_images > limits.max_images:
        raise RequestRefused(
            f"n_images {n_images} is above this writer's maximum of {limits.max_images} "
            "(--max-images)",
            "too_many_images",
        )
    if (
        isinstance(timeout, bool)
        or not isinstance(timeout, int | float)
        or not 0 < timeout <= limits.max_timeout
    ):
        raise RequestRefused(
            f"timeout must be a number of seconds in (0, {limits.max_timeout:g}], got {timeout!r}",
            "bad_timeout",
        )
    if run_id is None or run_id == "":
        run_id = time.strftime("%Y%m%d_%H%M%S") + f".{time.time_ns() % 1_000_000_000:09d}"
    if not isinstance(run_id, str | int) or isinstance(run_id, bool) or len(str(run_id)) > 256:
        raise RequestRefused(f"run_id must be a string or an integer, got {run_id!r}", "bad_run_id")
    path = _check_path(output_file, limits, n_images * image_bytes, free_bytes)
    return WriteRequest(
        n_images=n_images,
        output_file=path,
        timeout=float(timeout),
        run_id=str(run_id),
        source=source,
    )


def _check_path(
    output_file, limits: WriterLimits, estimate: int, free_bytes: Callable[[str], int] | None
) -> str:
    if not isinstance(output_file, str) or not output_file or "\x00" in output_file:
        raise RequestRefused(
            f"output_file must be a non-empty path string, got {output_file!r}", "bad_path"
        )
    if not output_file.startswith("/"):
        raise RequestRefused(
            f"output_file {output_file!r} is relative; an absolute path is required",
            "relative_path",
        )
    if output_file.endswith("/"):
        raise RequestRefused(f"output_file {output_file!r} names a folder, not a file", "bad_path")
    root = os.path.realpath(limits.data_root)
    # Resolve links and ``..`` before the root check: a link inside the root that points
    # out of it is outside.
    real = os.path.realpath(output_file)
    if not (real == root or real.startswith(root.rstrip("/") + "/")) or real == root:
        shown = output_file if real == output_file else f"{output_file} (resolves to {real})"
        raise RequestRefused(
            f"output_file {shown} is outside the data root {limits.data_root} (--data-root)",
            "outside_data_root",
        )
    if os.path.lexists(output_file) or os.path.lexists(real):
        raise RequestRefused(
            f"output_file {output_file} exists already; this writer never overwrites a file",
            "file_exists",
        )
    parent = os.path.dirname(real)
    if not os.path.lexists(parent):
        raise RequestRefused(
            f"the folder {parent} of output_file does not exist (it is not created)", "no_parent"
        )
    if not os.path.isdir(parent):
        raise RequestRefused(
            f"{parent}, the parent of output_file, is not a folder", "parent_not_dir"
        )
    if not os.access(parent, os.W_OK | os.X_OK):
        raise RequestRefused(
            f"the folder {parent} is not writable by this agent", "parent_not_writable"
        )
    free = (free_bytes or (lambda p: shutil.disk_usage(p).free))(parent)
    need = estimate + limits.reserve_bytes
    if free < need:
        raise RequestRefused(
            f"not enough free disk in {parent}: {free / 1e6:.1f} MB free, the request needs "
            f"about {need / 1e6:.1f} MB",
            "disk_full",
        )
    return real
