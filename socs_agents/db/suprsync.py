"""The SupRsync database: one engine per file, WAL, busy timeout, batched idempotent writes.

All methods block: call them from a worker thread (``deferToThread``), never the reactor.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from sqlalchemy import Engine, create_engine, event, exc, func, inspect, select
from sqlalchemy.orm import sessionmaker

from ..runtime.store import Durability, apply_pragmas, begin_statement, transaction
from .entries import AllowedRoots, BadFileEntry, FileEntry, timecode_of
from .models import FILES_TABLE, TIMECODE_TABLE, Base, SupRsyncFile, TimecodeDir

# SQLite accepts at most 32766 bound parameters; stay far below for the IN (...) lookups.
_LOOKUP_CHUNK = 400
_INSERT_FILE = (
    f"INSERT INTO {FILES_TABLE} (local_path, local_md5sum, archive_name, "
    "remote_path, timestamp, failed_copy_attempts, deletable, ignore) VALUES "
)
_FILE_VALUES = "(?, ?, ?, ?, ?, 0, ?, 0)"
#: Rows per INSERT statement: one statement of many rows costs SQLite and the sqlite3 module
#: less than as many one-row statements (and a few sizes keep its statement cache warm).
_INSERT_CHUNK = 64
_INSERT_TIMECODE = (
    f"INSERT INTO {TIMECODE_TABLE} (timecode, archive_name, completed, "
    "synced, finalized) VALUES (?, ?, 0, 0, 0)"
)


def _marks(n: int) -> str:
    return ", ".join("?" * n)


#: A row as :meth:`SupRsyncDB.add_rows` takes it, in the order of the INSERT's parameters:
#: ``(local_path, local_md5sum, archive_name, remote_path, timestamp, deletable)``.
FileRow = tuple[str, str, str, str, float, bool]


@dataclass
class AddResult:
    """What :meth:`SupRsyncDB.add_files` did."""

    inserted: list[FileEntry] = field(default_factory=list)
    duplicates: list[FileEntry] = field(default_factory=list)
    new_timecodes: list[tuple[int, str]] = field(default_factory=list)
    #: entries outside the allowed roots, not written
    refused: list[FileEntry] = field(default_factory=list)


class RowsAdded(NamedTuple):
    """What :meth:`SupRsyncDB.add_rows` did."""

    inserted: int
    duplicates: int
    new_timecodes: list[tuple[int, str]]
    #: rows outside the allowed roots, not written
    refused: int = 0


def _install_sqlite_pragmas(engine: Engine, busy_timeout_ms: int) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record):
        # Let SQLAlchemy's "begin" event issue BEGIN itself, so writes can be IMMEDIATE.
        dbapi_conn.isolation_level = None
        # A row means "SupRsync may copy this file off and delete it": power-safe commits.
        apply_pragmas(dbapi_conn, Durability.POWER_SAFE, busy_timeout_ms)

    @event.listens_for(engine, "begin")
    def _on_begin(conn):
        # The SQLAlchemy way to make a transaction IMMEDIATE (pysqlite leaves BEGIN to
        # us): writers take the write lock up front, so the duplicate check and the insert
        # see the same snapshot, and a busy database fails at BEGIN, before any work.
        immediate = conn.get_execution_options().get("sqlite_begin") == "IMMEDIATE"
        conn.exec_driver_sql(begin_statement(immediate))


class SupRsyncDB:
    """Access to a SupRsync SQLite file shared with socs's SupRsync agents.

    Args:
        db_path: the database file; its folder is created if missing.
        create_all: create the tables when they do not exist (socs's ``--create-table``).
        echo: log every SQL statement (socs's ``--echo-sql``).
        busy_timeout_ms: how long a statement waits for another writer's lock.
        allowed_roots: when given, rows of files outside these roots are refused (not
            written, counted in the result), whatever the caller checked before:
            :meth:`add_files` resolves each path's links; :meth:`add_rows`, the hot path,
            takes rows whose ``local_path`` is already the real path (as
            :func:`~socs_agents.db.entries.md5_small_file_under` returns it) and re-checks
            it by prefix only.
    """

    def __init__(
        self,
        db_path: str,
        create_all: bool = True,
        echo: bool = False,
        busy_timeout_ms: int = 5000,
        allowed_roots: AllowedRoots | None = None,
    ) -> None:
        self.allowed_roots = allowed_roots
        self.db_path = os.path.abspath(db_path)
        os.makedirs(os.path.dirname(self.db_path), exist_ok=True)
        self.engine = create_engine(f"sqlite:///{self.db_path}", echo=echo)
        _install_sqlite_pragmas(self.engine, busy_timeout_ms)
        self.Session = sessionmaker(bind=self.engine)
        self._known_timecodes: set[tuple[int, str]] = set()
        self._writer_lock = threading.Lock()
        self._writer_connection = None
        if create_all:
            self.create_tables()

    def create_tables(self) -> None:
        """Create missing tables, and our indexes on tables socs may have created."""
        with self.engine.connect().execution_options(sqlite_begin="IMMEDIATE") as conn:
            with conn.begin():
                Base.metadata.create_all(conn)
                existing = set(inspect(conn).get_table_names())
                for table in Base.metadata.sorted_tables:
                    if table.name in existing:
                        for index in table.indexes:
                            index.create(conn, checkfirst=True)

    def close(self) -> None:
        with self._writer_lock:
            if self._writer_connection is not None:
                self._writer_connection.close()
                self._writer_connection = None
        self.engine.dispose()

    # ---- writing -------------------------------------------------------------------------

    def add_files(self, entries: Sequence[FileEntry]) -> AddResult:
        """Insert files in one short write transaction; skip those already present.

        A file is already present when a row has the same archive, local path and md5
        (also within ``entries``). A ``timecode_dirs_v0`` row is created for each new
        (timecode, archive) of the remote paths.

        Raises:
            sqlalchemy.exc.OperationalError: the database is locked past the busy timeout
                or unavailable; nothing was written.
        """
        result = AddResult()
        if self.allowed_roots is not None:
            kept = []
            for e in entries:
                try:
                    self.allowed_roots.check(e.local_path)
                    kept.append(e)
                except BadFileEntry:
                    result.refused.append(e)
            entries = kept
        if not entries:
            return result
        rows = [
            (
                e.local_path,
                e.local_md5sum,
                e.archive_name,
                e.remote_path,
                float(e.timestamp),
                bool(e.deletable),
            )
            for e in entries
        ]
        inserted, result.new_timecodes = self._insert_new(rows)
        is_new = [False] * len(rows)
        for i in inserted:
            is_new[i] = True
        for entry, new in zip(entries, is_new, strict=False):
            (result.inserted if new else result.duplicates).append(entry)
        return result

    def add_rows(self, rows: Sequence[FileRow]) -> RowsAdded:
        """:meth:`add_files` for rows already checked (see :data:`FileRow`), without an
        object per file: what a monitor registering thousands of files a second calls.

        Raises:
            sqlalchemy.exc.OperationalError: as :meth:`add_files`; nothing was written.
        """
        refused = 0
        if self.allowed_roots is not None:
            inside = self.allowed_roots.contains
            # real paths have no ".." (a prefix alone would let "/root/../x" through)
            kept = [
                row
                for row in rows
                if inside(row[0]) and "/../" not in row[0] and not row[0].endswith("/..")
            ]
            refused, rows = len(rows) - len(kept), kept
        if not rows:
            return RowsAdded(0, 0, [], refused)
        inserted, new_timecodes = self._insert_new(rows)
        return RowsAdded(len(inserted), len(rows) - len(inserted), new_timecodes, refused)

    def _insert_new(self, rows: Sequence[FileRow]) -> tuple[list[int], list[tuple[int, str]]]:
        """Insert the rows not present yet, in one transaction; return the index of each
        inserted row and the timecode dirs created."""
        if self.engine.echo:
            # --echo-sql: through SQLAlchemy, which logs every statement.
            with self.engine.connect().execution_options(sqlite_begin="IMMEDIATE") as conn:
                with conn.begin():
                    inserted, new_timecodes, wanted = self._insert_in_transaction(
                        rows, conn.exec_driver_sql, conn.exec_driver_sql
                    )
        else:
            # Plain sqlite3 on one kept connection: this runs for every batch a monitor
            # writes, and SQLAlchemy's connection and statement machinery would cost more
            # than the SQLite work.
            with self._writer_lock:
                con = self._writer()
                try:
                    with transaction(con):
                        inserted, new_timecodes, wanted = self._insert_in_transaction(
                            rows, con.execute, con.executemany
                        )
                except sqlite3.Error as e:
                    raise exc.DBAPIError.instance("INSERT", None, e, sqlite3.Error) from e
        # Only after the commit: SupRsync never deletes timecode rows, so a pair seen once
        # needs no lookup again.
        self._known_timecodes.update(wanted)
        return inserted, new_timecodes

    def _writer(self) -> sqlite3.Connection:
        """The connection ``_insert_new`` writes with (set up by the engine's connect hook:
        WAL, busy timeout, no implicit transactions)."""
        if self._writer_connection is None:
            self._writer_connection = self.engine.raw_connection()
        return self._writer_connection.dbapi_connection

    def _insert_in_transaction(
        self, rows: Sequence[FileRow], execute: Callable, execute_many: Callable
    ) -> tuple[list[int], list, set]:
        known = self._existing_keys(rows, execute)
        inserted = []
        new_rows = []
        for i, row in enumerate(rows):
            key = (row[2], row[0], row[1])  # archive, local path, md5
            if key in known:
                continue
            known.add(key)
            inserted.append(i)
            new_rows.append(row)
        for start in range(0, len(new_rows), _INSERT_CHUNK):
            chunk = new_rows[start : start + _INSERT_CHUNK]
            execute(
                _INSERT_FILE + ", ".join([_FILE_VALUES] * len(chunk)),
                tuple(value for row in chunk for value in row),
            )
        wanted = self._timecodes_of(new_rows) - self._known_timecodes
        new_timecodes: list[tuple[int, str]] = []
        if wanted:
            have = set()
            for archive in {a for _, a in wanted}:
                codes = [t for t, a in wanted if a == archive]
                have.update(
                    execute(
                        f"SELECT timecode, archive_name FROM {TIMECODE_TABLE} "
                        f"WHERE archive_name = ? AND timecode IN ({_marks(len(codes))})",
                        (archive, *codes),
                    ).fetchall()
                )
            new_timecodes = sorted(wanted - have)
            if new_timecodes:
                execute_many(_INSERT_TIMECODE, new_timecodes)
        return inserted, new_timecodes, wanted

    @staticmethod
    def _timecodes_of(rows: Sequence[FileRow]) -> set[tuple[int, str]]:
        # The timecode is read from a remote path's first component: look at each distinct
        # (first component, archive) once rather than at every row.
        heads = {(row[3].partition("/")[0], row[2]) for row in rows}
        found = set()
        for head, archive in heads:
            if head in ("", ".", ".."):  # an unusual path: read each row's own
                codes = {
                    timecode_of(row[3])
                    for row in rows
                    if row[2] == archive and row[3].partition("/")[0] == head
                }
            else:
                codes = {timecode_of(head)}
            found.update((code, archive) for code in codes if code is not None)
        return found

    def _existing_keys(
        self, rows: Sequence[FileRow], execute: Callable
    ) -> set[tuple[str, str, str]]:
        # One archive per query: ``archive_name = ? AND local_path IN (...)`` searches the
        # (archive_name, local_path) index, where a row-value IN scans the whole table.
        by_archive: dict[str, set[str]] = {}
        for row in rows:
            by_archive.setdefault(row[2], set()).add(row[0])
        found: set[tuple[str, str, str]] = set()
        for archive, paths in by_archive.items():
            ordered = sorted(paths)
            for start in range(0, len(ordered), _LOOKUP_CHUNK):
                chunk = ordered[start : start + _LOOKUP_CHUNK]
                found.update(
                    execute(
                        f"SELECT archive_name, local_path, local_md5sum FROM {FILES_TABLE} "
                        f"WHERE archive_name = ? AND local_path IN ({_marks(len(chunk))})",
                        (archive, *chunk),
                    ).fetchall()
                )
        return found

    # ---- reading -------------------------------------------------------------------------

    def count(self, archive_name: str | None = None) -> int:
        stmt = select(func.count()).select_from(SupRsyncFile)
        if archive_name is not None:
            stmt = stmt.where(SupRsyncFile.archive_name == archive_name)
        with self.Session() as session:
            return int(session.scalar(stmt))

    def archives(self) -> dict[str, int]:
        """Archive name -> number of rows."""
        stmt = (
            select(SupRsyncFile.archive_name, func.count())
            .group_by(SupRsyncFile.archive_name)
            .order_by(SupRsyncFile.archive_name)
        )
        with self.Session() as session:
            return {name: n for name, n in session.execute(stmt).tuples()}

    def files(
        self,
        archive_name: str | None = None,
        limit: int | None = None,
        uncopied_only: bool = False,
        newest_first: bool = True,
    ) -> list[dict]:
        stmt = select(SupRsyncFile)
        if archive_name is not None:
            stmt = stmt.where(SupRsyncFile.archive_name == archive_name)
        if uncopied_only:
            stmt = stmt.where(
                SupRsyncFile.removed.is_(None),
                SupRsyncFile.remote_md5sum.is_distinct_from(SupRsyncFile.local_md5sum),
            )
        order = SupRsyncFile.id.desc() if newest_first else SupRsyncFile.id.asc()
        stmt = stmt.order_by(order)
        if limit is not None:
            stmt = stmt.limit(limit)
        with self.Session() as session:
            return [f.as_dict() for f in session.scalars(stmt)]

    def file_by_id(self, file_id: int) -> dict | None:
        with self.Session() as session:
            row = session.get(SupRsyncFile, file_id)
            return None if row is None else row.as_dict()

    def timecode_dirs(self, archive_name: str | None = None) -> list[dict]:
        stmt = select(TimecodeDir).order_by(TimecodeDir.archive_name, TimecodeDir.timecode)
        if archive_name is not None:
            stmt = stmt.where(TimecodeDir.archive_name == archive_name)
        with self.Session() as session:
            return [t.as_dict() for t in session.scalars(stmt)]

    def archive_stats(self, archive_name: str) -> dict:
        """The figures socs's SupRsync reports per archive, computed in SQL."""
        f = SupRsyncFile
        differs = f.local_md5sum.is_distinct_from(f.remote_md5sum)
        with self.Session() as session:
            num_files = session.scalar(select(func.count()).where(f.archive_name == archive_name))
            uncopied = session.scalar(
                select(func.count()).where(
                    f.archive_name == archive_name, f.ignore.is_not(True), differs
                )
            )
            first_uncopied = session.scalar(
                select(func.min(f.timestamp)).where(
                    f.archive_name == archive_name, f.ignore.is_not(True), differs
                )
            )
            last_added = session.scalar(
                select(f.local_path)
                .where(f.archive_name == archive_name)
                .order_by(f.timestamp.desc())
                .limit(1)
            )
            last_copied = session.scalar(
                select(f.local_path)
                .where(f.archive_name == archive_name, f.local_md5sum == f.remote_md5sum)
                .order_by(f.timestamp.desc())
                .limit(1)
            )
        return {
            "num_files": int(num_files or 0),
            "uncopied_files": int(uncopied or 0),
            "finalized_until": (first_uncopied - 1) if first_uncopied is not None else time.time(),
            "last_file_added": last_added or "",
            "last_file_copied": last_copied or "",
        }
