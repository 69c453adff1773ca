"""The data directory, its counters and the state that survives a kill -9. Blocking; no OCS
and no Twisted.

Division of work (the agent wires it to the runtime's workers):

* :func:`stage_chunk` (any thread, in parallel): validate a body, encode it, write it to a
  temporary file in the staging folder and fsync it. Nothing in the data directory yet.
* :class:`DataStore` (one thread only, the agent's SerialWorker): every change of the data
  directory, the counters and the state. :meth:`DataStore.commit` links a staged file under
  its final name **only if the store is not frozen**, so the freeze is decided where the data
  is written: once :meth:`DataStore.train` has frozen the store, no commit after it stores
  anything, and ``n_f``/``bt_wrt`` are exactly what the directory holds.
* :func:`sync_dir` (any thread): the folder fsync that makes a committed name durable, done
  before the write is acknowledged.

The state (frozen flag, who froze it and when, the token's hash, the archive sequence and
the list of archives) lives in SQLite (POWER_SAFE): a restart or kill -9 keeps it. The
counters are recounted from the directory at start, so they always equal what it holds.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from dataclasses import dataclass, field
from typing import NamedTuple

from ...runtime import (
    Durability,
    Report,
    connect,
    fsync_dir,
    no_report,
    remove_temp_files,
    temp_path,
    transaction,
)
from . import rules, takeover

STAGING_SUFFIX = ".part"
#: Samples of the latest chunk kept for the status page's plot.
PREVIEW_POINTS = 256

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS gw_state (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS gw_archives ("
    " seq INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, path TEXT NOT NULL,"
    " files INTEGER NOT NULL, bytes INTEGER NOT NULL, cleaned_at REAL NOT NULL,"
    " frozen_by TEXT, registered INTEGER NOT NULL DEFAULT 0, register_error TEXT)",
)


class StorageError(Exception):
    """The filesystem refused an operation (disk full, permissions, a folder gone); the
    message says which operation and why."""


class Staged(NamedTuple):
    """A validated chunk written and fsynced under a temporary name."""

    tmp_path: str
    size: int
    t0: float
    samples: int
    preview: list[float]


class Counts(NamedTuple):
    """An immutable snapshot, replaced (never changed) by the store's thread."""

    n_itm: int
    buff_size: int
    frozen: bool
    last_name: str | None


@dataclass
class FreezeInfo:
    frozen: bool = False
    user: str | None = None
    since: float | None = None
    token_sha256: str | None = None


@dataclass
class CommitResult:
    stored: bool
    name: str | None = None
    size: int = 0
    seq: int = 0


@dataclass
class TrainResult:
    frozen: bool
    newly: bool
    n_f: int
    bt_wrt: int
    seq: int


@dataclass
class CleanResult:
    archive: dict
    before: dict = field(default_factory=dict)


def preview_of(h: list[float], points: int = PREVIEW_POINTS) -> list[float]:
    if len(h) <= points:
        return list(h)
    step = len(h) / points
    return [h[int(i * step)] for i in range(points)]


def stage_chunk(raw: bytes, staging_dir: str) -> Staged:
    """Validate ``raw`` (:func:`rules.parse_chunk`), encode it and write it durably to a
    temporary file in ``staging_dir``.

    Raises:
        rules.BadInput: the body is refused (nothing was written).
        StorageError: the temporary file could not be written.
    """
    chunk = rules.parse_chunk(raw)
    data = rules.encode_chunk(chunk)
    tmp = temp_path(os.path.join(staging_dir, "gwb"), STAGING_SUFFIX)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise StorageError(f"writing a staged chunk failed: {e}") from e
    return Staged(tmp, len(data), chunk.t0, len(chunk.h), preview_of(chunk.h))


def discard_staged(staged: Staged) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(staged.tmp_path)


def sync_dir(folder: str) -> None:
    """fsync ``folder`` (the committed names in it are durable afterwards)."""
    try:
        fsync_dir(folder)
    except OSError as e:
        raise StorageError(f"fsync of {folder} failed: {e}") from e


class DataStore:
    """The data directory, its counters and the persisted state. One thread only.

    Args:
        data_dir: the folder of ``gwb<ns>.json`` files the preprocessing job reads.
        archive_dir: where cleaned batches go (same filesystem as ``data_dir``).
        state_db: SQLite file of the state.
        max_size: ``MAX_SIZE``: stored bytes at which ``train`` freezes.
        staging_dir: temporary files (same filesystem); default ``<data_dir>/../.gwb-staging``.
        report: ``report(level, text)``.
    """

    def __init__(
        self,
        data_dir: str,
        archive_dir: str,
        state_db: str,
        max_size: int,
        staging_dir: str | None = None,
        report: Report = no_report,
        reference_adm_dir: str | None = None,
    ) -> None:
        self.data_dir = os.path.abspath(data_dir)
        self.archive_dir = os.path.abspath(archive_dir)
        parent = os.path.dirname(self.data_dir.rstrip("/"))
        self.staging_dir = os.path.abspath(staging_dir or os.path.join(parent, ".gwb-staging"))
        self.max_size = int(max_size)
        self.report = report
        for folder in (self.data_dir, self.archive_dir, self.staging_dir):
            os.makedirs(folder, exist_ok=True)
        removed = remove_temp_files(self.staging_dir, STAGING_SUFFIX)
        if removed:
            report("info", f"removed {len(removed)} unfinished staged chunk(s) of a previous run")
        self.con = connect(state_db, Durability.POWER_SAFE)
        with transaction(self.con):
            for statement in _SCHEMA:
                self.con.execute(statement)
        self.freeze = self._load_freeze()
        self.seq = 0  # increases with every commit and train; orders acknowledgements
        self.last_ns = 0
        self.names: list[str] = []
        self.sizes: dict[str, int] = {}
        self.preview: list[float] = []
        self.preview_name: str | None = None
        self.recount()
        self.takeover: dict | None = self._load_takeover()
        if reference_adm_dir and self.takeover is None:
            self.takeover = self.take_over(reference_adm_dir)

    # ---- state ----------------------------------------------------------------------------

    def _get(self, key: str, default: str | None = None) -> str | None:
        row = self.con.execute("SELECT value FROM gw_state WHERE key = ?", (key,)).fetchone()
        return row[0] if row else default

    def _set(self, values: dict[str, str | None]) -> None:
        with transaction(self.con):
            for key, value in values.items():
                if value is None:
                    self.con.execute("DELETE FROM gw_state WHERE key = ?", (key,))
                else:
                    self.con.execute(
                        "INSERT INTO gw_state (key, value) VALUES (?, ?) "
                        "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                        (key, value),
                    )

    def _load_freeze(self) -> FreezeInfo:
        since = self._get("frozen_since")
        return FreezeInfo(
            frozen=self._get("dstatus", rules.OPERATIONAL) == rules.FROZEN,
            user=self._get("user"),
            since=float(since) if since else None,
            token_sha256=self._get("token_sha256"),
        )

    def _load_takeover(self) -> dict | None:
        record = self._get("takeover")
        return json.loads(record) if record else None

    def take_over(self, adm_dir: str) -> dict | None:
        """Take the reference's state over from its adm folder (see :mod:`.takeover`), once:
        only while this store has no state of its own (no freeze, clean or takeover yet).

        Returns the record kept (also in :attr:`takeover`), or None when it was not taken.

        Raises:
            takeover.TakeoverError: ``Dsstat.json`` cannot be read (nothing changed).
        """
        if self._get("takeover") is not None:
            return self._load_takeover()
        if self._get("dstatus") is not None or self._get("archive_seq") is not None:
            self.report(
                "warn",
                f"the reference's state in {adm_dir} is not taken over: this agent has its "
                "own state already (frozen or cleaned before)",
            )
            return None
        ref = takeover.read_reference(adm_dir)
        orphans = takeover.find_orphans(self.data_dir, self.sizes)
        record = takeover.summary(ref, self.n_itm, self.buff_size, orphans, time.time())
        values: dict[str, str | None] = {"dstatus": ref.dstatus, "takeover": json.dumps(record)}
        if ref.frozen:
            values |= {
                "user": ref.user,
                "frozen_since": repr(ref.changed_at),
                # as for /train: the token itself is never stored
                "token_sha256": rules.token_hash(ref.token) if ref.token else None,
            }
        try:
            self._set(values)
        except Exception as e:
            raise StorageError(f"saving the state taken over failed: {e}") from e
        self.freeze = self._load_freeze()
        self._snapshot()
        self.report("warn" if orphans else "info", takeover.describe(record))
        return record

    # ---- counters ---------------------------------------------------------------------------

    def recount(self) -> Counts:
        """Count the files of the data directory (every regular, non-hidden file: what the
        preprocessing job reads) and their bytes."""
        names, sizes = [], {}
        with os.scandir(self.data_dir) as it:
            for entry in it:
                if entry.name.startswith(".") or not entry.is_file(follow_symlinks=False):
                    continue
                names.append(entry.name)
                sizes[entry.name] = entry.stat(follow_symlinks=False).st_size
                m = rules.CHUNK_NAME.match(entry.name)
                if m:
                    self.last_ns = max(self.last_ns, int(m.group(1)))
        names.sort()
        self.names, self.sizes = names, sizes
        self.n_itm, self.buff_size = len(names), sum(sizes.values())
        self._load_preview()
        return self._snapshot()

    def _load_preview(self) -> None:
        chunks = [n for n in self.names if rules.CHUNK_NAME.match(n)]
        self.preview, self.preview_name = [], None
        if not chunks:
            return
        name = max(chunks, key=lambda n: int(rules.CHUNK_NAME.match(n).group(1)))
        try:
            with open(os.path.join(self.data_dir, name), "rb") as f:
                h = json.load(f).get("h") or []
            self.preview, self.preview_name = preview_of([float(x) for x in h]), name
        except (OSError, ValueError, TypeError, AttributeError):
            pass  # a foreign file: no plot

    def _snapshot(self) -> Counts:
        self.counts = Counts(
            self.n_itm, self.buff_size, self.freeze.frozen, self.names[-1] if self.names else None
        )
        return self.counts

    # ---- writes -----------------------------------------------------------------------------

    def commit(self, staged: Staged) -> CommitResult:
        """Store a staged chunk under ``gwb<ns>.json``, unless the store is frozen (then the
        staged file is removed and nothing changes).

        The caller acknowledges the write after :func:`sync_dir` of :attr:`data_dir`.
        """
        if self.freeze.frozen:
            discard_staged(staged)
            return CommitResult(stored=False)
        for _ in range(1000):
            ns = rules.next_chunk_ns(self.last_ns)
            self.last_ns = ns
            name = rules.chunk_name(ns)
            final = os.path.join(self.data_dir, name)
            try:
                # link, never replace: a name that exists (a foreign file) is not overwritten
                os.link(staged.tmp_path, final)
                break
            except FileExistsError:
                continue
            except OSError as e:
                discard_staged(staged)
                raise StorageError(f"storing {name} failed: {e}") from e
        else:  # pragma: no cover - 1000 names taken in a row
            discard_staged(staged)
            raise StorageError("no free file name")
        discard_staged(staged)
        self.names.append(name)
        self.sizes[name] = staged.size
        self.n_itm += 1
        self.buff_size += staged.size
        self.preview, self.preview_name = staged.preview, name
        self.seq += 1
        self._snapshot()
        return CommitResult(stored=True, name=name, size=staged.size, seq=self.seq)

    def train(self, user: str, token_sha256: str | None, force: bool = False) -> TrainResult:
        """The ``/train`` rule: freeze when the stored bytes reach ``MAX_SIZE`` (or
        ``force``). Frozen already: FROZEN again, and the first freeze's user and time stay.

        The freeze is persisted before the answer. Every commit that ran before this call is
        counted in ``n_f``/``bt_wrt``; every commit after it stores nothing.
        """
        self.seq += 1
        if self.freeze.frozen:
            return TrainResult(True, False, self.n_itm, self.buff_size, self.seq)
        if not (force or rules.should_freeze(self.buff_size, self.max_size)):
            return TrainResult(False, False, self.n_itm, self.buff_size, self.seq)
        # (names linked by earlier commits are made durable by their own folder fsync; the
        # service holds the FROZEN answer until those are done)
        now = time.time()
        try:
            self._set(
                {
                    "dstatus": rules.FROZEN,
                    "user": user,
                    "frozen_since": repr(now),
                    "token_sha256": token_sha256,
                }
            )
        except Exception as e:
            raise StorageError(f"saving the frozen state failed: {e}") from e
        self.freeze = FreezeInfo(True, user, now, token_sha256)
        self._snapshot()
        return TrainResult(True, True, self.n_itm, self.buff_size, self.seq)

    def clean(self) -> CleanResult:
        """Move the data directory to a new archive folder, recreate it empty and unfreeze.

        Counters and state are reset only when the move succeeded; on failure nothing
        changes and :class:`StorageError` says what failed.
        """
        next_seq = int(self._get("archive_seq", "0")) + 1
        now = time.time()
        name = rules.archive_dir_name(next_seq, now)
        while os.path.exists(os.path.join(self.archive_dir, name)):
            next_seq += 1
            name = rules.archive_dir_name(next_seq, now)
        target = os.path.join(self.archive_dir, name)
        before = {
            "n_itm": self.n_itm,
            "buff_size": self.buff_size,
            "dstatus": rules.FROZEN if self.freeze.frozen else rules.OPERATIONAL,
        }
        try:
            # every committed name is durable in the folder before it moves
            fsync_dir(self.data_dir)
            os.rename(self.data_dir, target)
        except OSError as e:
            raise StorageError(f"moving {self.data_dir} to {target} failed: {e}") from e
        try:
            os.mkdir(self.data_dir, 0o755)
            fsync_dir(os.path.dirname(self.data_dir))
            if os.path.dirname(target) != os.path.dirname(self.data_dir):
                fsync_dir(os.path.dirname(target))
        except OSError as e:
            with contextlib.suppress(OSError):
                os.rmdir(self.data_dir)
            try:
                os.rename(target, self.data_dir)  # put the batch back: nothing changed
            except OSError as e2:
                raise StorageError(
                    f"recreating {self.data_dir} failed ({e}); the batch stays in {target} ({e2})"
                ) from e
            raise StorageError(f"recreating {self.data_dir} failed: {e}") from e
        archive = {
            "seq": next_seq,
            "name": name,
            "path": target,
            "files": self.n_itm,
            "bytes": self.buff_size,
            "cleaned_at": now,
            "frozen_by": self.freeze.user,
            "registered": False,
        }
        try:
            with transaction(self.con):
                self.con.execute(
                    "INSERT INTO gw_archives (seq, name, path, files, bytes, cleaned_at, "
                    "frozen_by) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (next_seq, name, target, self.n_itm, self.buff_size, now, self.freeze.user),
                )
                for key, value in (("archive_seq", str(next_seq)), ("dstatus", rules.OPERATIONAL)):
                    self.con.execute(
                        "INSERT INTO gw_state (key, value) VALUES (?, ?) "
                        "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                        (key, value),
                    )
                self.con.execute(
                    "DELETE FROM gw_state WHERE key IN ('user', 'frozen_since', 'token_sha256')"
                )
        except Exception as e:
            # the folder moved but the state did not: recount keeps counters true
            self.recount()
            raise StorageError(f"the batch moved to {target}, saving the state failed: {e}") from e
        self.freeze = FreezeInfo()
        self.seq += 1
        self.recount()
        return CleanResult(archive=archive, before=before)

    # ---- reads ------------------------------------------------------------------------------

    def list_names(self) -> list[str]:
        return list(self.names)

    def archives(self, limit: int = 100) -> list[dict]:
        rows = self.con.execute(
            "SELECT seq, name, path, files, bytes, cleaned_at, frozen_by, registered, "
            "register_error FROM gw_archives ORDER BY seq DESC LIMIT ?",
            (limit,),
        ).fetchall()
        keys = (
            "seq",
            "name",
            "path",
            "files",
            "bytes",
            "cleaned_at",
            "frozen_by",
            "registered",
            "register_error",
        )
        return [dict(zip(keys, r, strict=True)) | {"registered": bool(r[7])} for r in rows]

    def unregistered_archives(self) -> list[dict]:
        return [a for a in self.archives(10_000) if not a["registered"]]

    def mark_registered(self, seq: int, error: str | None = None) -> None:
        with transaction(self.con):
            self.con.execute(
                "UPDATE gw_archives SET registered = ?, register_error = ? WHERE seq = ?",
                (0 if error else 1, error, seq),
            )

    def state(self) -> dict:
        f = self.freeze
        return {
            "dstatus": rules.FROZEN if f.frozen else rules.OPERATIONAL,
            "user": f.user,
            "frozen_since": f.since,
        }

    def close(self) -> None:
        self.con.close()
