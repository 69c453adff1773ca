"""What a SupRsync row must satisfy before it is written, as plain functions (no I/O but md5).

Every refusal is a :class:`BadFileEntry` whose message names the file and the reason.
"""

from __future__ import annotations

import errno
import hashlib
import os
import posixpath
import re
import stat
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

#: Archives the pysmurf publisher and the smurf-streamer use.
DEFAULT_ARCHIVES: tuple[str, ...] = ("smurf", "timestreams")

MD5_CHUNK_BYTES = 1 << 20

_WHITE_SPACE = re.compile(r"\s")


class BadFileEntry(ValueError):
    """A file that cannot become a SupRsync row; the message says which and why."""

    def __init__(self, path: str, reason: str, code: str) -> None:
        super().__init__(f"{path!r}: {reason}")
        self.path = path
        self.reason = reason
        #: short machine-readable reason, used for counters
        self.code = code


@dataclass(frozen=True)
class FileEntry:
    """A validated row for ``supersync_v0`` (lowercase hex md5, normalised paths)."""

    local_path: str
    remote_path: str
    archive_name: str
    local_md5sum: str
    timestamp: float = field(default_factory=time.time)
    deletable: bool = True

    @property
    def timecode(self) -> int | None:
        return timecode_of(self.remote_path)


def md5_file(path: str, chunk_bytes: int = MD5_CHUNK_BYTES) -> str:
    """Lowercase hex md5 of a file, read in chunks so memory stays flat (blocking)."""
    digest = hashlib.md5()
    with open(path, "rb") as f:
        while True:
            chunk = f.read(chunk_bytes)
            if not chunk:
                break
            digest.update(chunk)
    return digest.hexdigest()


#: The first read of :func:`md5_small_file`; a file shorter than this needs no other.
FIRST_READ_BYTES = 64 << 10


def md5_small_file(path: str, limit: int) -> str | None:
    """Lowercase hex md5 of a file of at most ``limit`` bytes; None when the file is bigger
    (checksum it with :func:`md5_file` elsewhere). Blocking.

    Three syscalls for a file under 64 KiB (open, read, close): this runs for every file a
    monitor registers.

    Raises:
        BadFileEntry: the file does not exist, is a directory or cannot be read.
    """
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise BadFileEntry(path, "file does not exist", "missing_file") from None
    except NotADirectoryError:
        raise BadFileEntry(path, "a component of the path is not a directory", "bad_path") from None
    except PermissionError:
        raise BadFileEntry(
            path, "file is not readable (permission denied)", "unreadable_file"
        ) from None
    try:
        return _md5_of_open_file(fd, path, limit)
    finally:
        os.close(fd)


_OPEN_FLAGS = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)


class RootedFiles:
    """Opens files that must lie under ``roots``, at the cost of a plain ``open``.

    Each folder is resolved (links and all) and checked against the roots once, then kept
    open (``O_PATH``) for ``ttl`` seconds; a file is opened relative to its folder's
    descriptor with ``O_NOFOLLOW``, so the folder checked is the folder read and a link as
    the last component takes the slow path (resolved from the opened file itself). Nothing
    outside the roots is ever read. Files are opened non-blocking: a FIFO cannot stall the
    caller. One thread at a time; :meth:`close` releases the folders.
    """

    def __init__(self, roots: AllowedRoots, max_dirs: int = 256, ttl: float = 5.0) -> None:
        self.roots = roots
        self.max_dirs = max_dirs
        self.ttl = ttl
        self._dirs: dict[str, tuple[int, str, float]] = {}  # folder -> (fd, real, expiry)

    def close(self) -> None:
        for fd, _, _ in self._dirs.values():
            os.close(fd)
        self._dirs.clear()

    def _folder(self, folder: str) -> tuple[int, str]:
        now = time.monotonic()
        cached = self._dirs.get(folder)
        if cached is not None:
            if cached[2] > now:
                return cached[0], cached[1]
            self._forget(folder)
        fd = os.open(folder or "/", os.O_PATH | os.O_DIRECTORY | getattr(os, "O_CLOEXEC", 0))
        try:
            real = _real_path_of_fd(fd, folder or "/")
            self.roots.check(real)  # outside_allowed_root
        except BaseException:
            os.close(fd)
            raise
        if len(self._dirs) >= self.max_dirs:
            self._forget(next(iter(self._dirs)))
        self._dirs[folder] = (fd, real, now + self.ttl)
        return fd, real

    def _forget(self, folder: str) -> None:
        entry = self._dirs.pop(folder, None)
        if entry is not None:
            os.close(entry[0])

    def open(self, path: str) -> tuple[int, str]:
        """``(file descriptor, real path)`` of ``path`` (absolute, normalised).

        Raises:
            BadFileEntry: ``missing_file``, ``bad_path``, ``unreadable_file``,
                ``outside_allowed_root``.
        """
        folder, _, name = path.rpartition("/")
        try:
            try:
                dir_fd, real_dir = self._folder(folder)
                fd = os.open(name, _OPEN_FLAGS | os.O_NOFOLLOW, dir_fd=dir_fd)
                return fd, (real_dir.rstrip("/") + "/" + name)
            except FileNotFoundError:
                if folder not in self._dirs:
                    raise
                self._forget(folder)  # the folder may have been replaced: look again
                dir_fd, real_dir = self._folder(folder)
                fd = os.open(name, _OPEN_FLAGS | os.O_NOFOLLOW, dir_fd=dir_fd)
                return fd, (real_dir.rstrip("/") + "/" + name)
            except OSError as e:
                if e.errno != errno.ELOOP:
                    raise
            # The last component is a link: open it, and check what was opened.
            fd = os.open(path, _OPEN_FLAGS)
            try:
                real = _real_path_of_fd(fd, path)
                self.roots.check(real)
            except BaseException:
                os.close(fd)
                raise
            return fd, real
        except FileNotFoundError:
            raise BadFileEntry(path, "file does not exist", "missing_file") from None
        except NotADirectoryError:
            raise BadFileEntry(
                path, "a component of the path is not a directory", "bad_path"
            ) from None
        except PermissionError:
            raise BadFileEntry(
                path, "file is not readable (permission denied)", "unreadable_file"
            ) from None
        except BadFileEntry as e:
            if e.code == "outside_allowed_root" and e.path != path:
                raise BadFileEntry(
                    path, f"resolves outside the allowed roots ({e.reason})", e.code
                ) from None
            raise
        except OSError as e:
            raise BadFileEntry(
                path, f"cannot be opened: {e.strerror or e}", "unreadable_file"
            ) from None


def _real_path_of_fd(fd: int, path: str) -> str:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:  # no /proc: resolve by name
        return os.path.realpath(path)


def md5_small_file_under(path: str, limit: int, files: RootedFiles) -> tuple[str | None, str]:
    """:func:`md5_small_file` of a file that must lie under the roots of ``files``:
    ``(md5 or None when bigger than limit, real path)``. Blocking.

    The check is made on the opened file (:class:`RootedFiles`), before a byte is read;
    what is not a regular file (FIFO, device, folder) is refused as ``bad_path``.

    Raises:
        BadFileEntry: as :func:`md5_small_file`; ``outside_allowed_root``.
    """
    fd, real = files.open(path)
    try:
        return _md5_of_open_file(fd, path, limit), real
    finally:
        os.close(fd)


def _md5_of_open_file(fd: int, path: str, limit: int) -> str | None:
    try:
        want = min(limit + 1, FIRST_READ_BYTES)
        chunk = os.read(fd, want)
        # A short read of a regular file means its end: the whole file is in hand.
        if 0 < len(chunk) < want:
            return hashlib.md5(chunk).hexdigest()
        # Empty, or at least the first read: only now is it worth a stat (a FIFO reads
        # empty, a device endlessly).
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise BadFileEntry(path, "is not a regular file", "bad_path")
        if len(chunk) < want:
            return hashlib.md5(chunk).hexdigest()
        if len(chunk) > limit or info.st_size > limit:
            return None
        digest = hashlib.md5(chunk)
        while True:
            chunk = os.read(fd, MD5_CHUNK_BYTES)
            digest.update(chunk)
            if len(chunk) < MD5_CHUNK_BYTES:
                return digest.hexdigest()
    except IsADirectoryError:
        raise BadFileEntry(path, "is a directory, not a file", "bad_path") from None
    except OSError as e:
        raise BadFileEntry(path, f"cannot be read: {e.strerror or e}", "unreadable_file") from None


def timecode_of(remote_path: str) -> int | None:
    """The 5-digit ctime code that starts a remote path, the way socs's SupRsync reads it."""
    first = remote_path.lstrip("/").split("/", 1)[0]
    if first in ("", ".", ".."):
        first = posixpath.normpath(remote_path).strip("/").split("/")[0]
    if len(first) == 5 and first.isascii() and first.isdigit() and first[0] != "0":
        return int(first)
    return None


def normpath(path: str) -> str:
    """``posixpath.normpath`` for paths without ``..`` components, returning a path that is
    normal already as it is (the usual case) without rebuilding it."""
    if (
        "//" in path
        or "/./" in path
        or path.endswith(("/", "/."))
        or path.startswith("./")
        or ".." in path
    ):
        return posixpath.normpath(path)
    return path or "."


def check_local_path(path: str) -> str:
    """Refuse relative paths and ``..`` components; return the normalised absolute path."""
    if not isinstance(path, str) or not path:
        raise BadFileEntry(str(path), "local path must be a non-empty string", "bad_path")
    if "\x00" in path:
        raise BadFileEntry(path, "local path contains a NUL byte", "bad_path")
    if not path.startswith("/"):
        raise BadFileEntry(
            path, "local path is relative; an absolute path is required", "relative_path"
        )
    if ".." in path and ".." in path.split("/"):
        raise BadFileEntry(path, "local path contains '..'", "dotdot_path")
    return normpath(path)


def add_allowed_root_option(group, default: str) -> None:
    """``--allowed-root`` for an agent's parser: the same option and text in every agent
    that registers files (``default`` says what the agent uses without it)."""
    group.add_argument(
        "--allowed-root",
        action="extend",
        nargs="+",
        default=None,
        metavar="DIR",
        help="Folder whose files may be registered in SupRsync (paths resolved with "
        "symlinks first); a file outside every one is refused and counted as "
        "outside_allowed_root. Several may follow one --allowed-root (ocs keeps one "
        f"site-config entry per option). Default: {default}.",
    )


class AllowedRoots:
    """The folders whose files an agent may register: SupRsync copies a registered file off
    site and may delete it, so nothing else of the host may ever become a row.

    Roots and paths are resolved with symlinks (``os.path.realpath``) before the check, so
    neither a link inside a root that points out of it nor ``..`` gets past it.

    Args:
        roots: folders (need not exist yet; resolved now and again by :meth:`refresh`).
    """

    def __init__(self, roots: Iterable[str]) -> None:
        self.configured = [os.path.abspath(r) for r in roots]
        if not self.configured:
            raise ValueError("at least one allowed root is required")
        self.refresh()

    def refresh(self) -> None:
        """Resolve the roots again (a root that is a link may have been created since)."""
        self.resolved = tuple(
            sorted({os.path.realpath(r).rstrip("/") or "/" for r in self.configured})
        )

    def __repr__(self) -> str:
        return f"AllowedRoots({self.configured!r})"

    def contains(self, real_path: str) -> bool:
        for root in self.resolved:
            if root == "/" or real_path == root or real_path.startswith(root + "/"):
                return True
        return False

    def check(self, path: str) -> str:
        """The real path of ``path`` (links resolved) if it lies under a root.

        Raises:
            BadFileEntry: code ``outside_allowed_root``, naming the path and the roots.
        """
        real = os.path.realpath(path)
        if self.contains(real):
            return real
        # a root created after start (or replaced by a link) is seen on the next check
        self.refresh()
        if self.contains(real):
            return real
        shown = real if real == path else f"{path!r} (resolves to {real!r})"
        raise BadFileEntry(
            path,
            f"{shown} is outside the allowed roots ({', '.join(self.configured)})",
            "outside_allowed_root",
        )


def check_remote_path(remote_path: str, local_path: str = "") -> str:
    """Refuse remote paths that would escape the archive's base dir or break md5 checks."""
    who = local_path or remote_path
    if not isinstance(remote_path, str) or not remote_path.strip("/"):
        raise BadFileEntry(who, f"remote path {remote_path!r} is empty", "bad_remote_path")
    if remote_path.startswith("/"):
        raise BadFileEntry(
            who,
            f"remote path {remote_path!r} is absolute; it must be "
            "relative to the archive's base dir",
            "remote_escape",
        )
    if ".." in remote_path and ".." in remote_path.split("/"):
        raise BadFileEntry(
            who,
            f"remote path {remote_path!r} contains '..' and could escape the archive's base dir",
            "remote_escape",
        )
    if _WHITE_SPACE.search(remote_path):
        # SupRsync splits md5sum output on whitespace: such a file would never verify.
        raise BadFileEntry(
            who, f"remote path {remote_path!r} contains white space", "bad_remote_path"
        )
    return normpath(remote_path)


def check_archive(archive_name: str, known: Iterable[str] | None, path: str = "") -> str:
    if not isinstance(archive_name, str) or not archive_name:
        raise BadFileEntry(path, "archive name must be a non-empty string", "unknown_archive")
    if known is not None:
        known = tuple(known)
        if archive_name not in known:
            raise BadFileEntry(
                path,
                f"unknown archive {archive_name!r} (known: {', '.join(known)})",
                "unknown_archive",
            )
    return archive_name


def make_entry(
    local_path: str,
    remote_path: str,
    archive_name: str,
    *,
    known_archives: Iterable[str] | None = DEFAULT_ARCHIVES,
    local_md5sum: str | None = None,
    timestamp: float | None = None,
    deletable: bool = True,
) -> FileEntry:
    """Validate a file and compute its md5 if not given (blocking: run off the reactor).

    Raises:
        BadFileEntry: bad path, unknown archive, or a file that does not exist.
    """
    local_path = check_local_path(local_path)
    check_archive(archive_name, known_archives, local_path)
    remote_path = check_remote_path(remote_path, local_path)
    if local_md5sum is None:
        try:
            local_md5sum = md5_file(local_path)
        except FileNotFoundError:
            raise BadFileEntry(local_path, "file does not exist", "missing_file") from None
        except IsADirectoryError:
            raise BadFileEntry(local_path, "is a directory, not a file", "bad_path") from None
        except PermissionError:
            raise BadFileEntry(
                local_path, "file is not readable (permission denied)", "unreadable_file"
            ) from None
    return FileEntry(
        local_path=local_path,
        remote_path=remote_path,
        archive_name=archive_name,
        local_md5sum=local_md5sum.lower(),
        timestamp=time.time() if timestamp is None else float(timestamp),
        deletable=bool(deletable),
    )
