"""The SupRsync database: one engine per file, WAL, busy timeout, batched idempotent writes.

All methods block: call them from a worker thread (``deferToThread``), never the reactor.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Optional, Sequence

from sqlalchemy import Engine, create_engine, event, func, inspect, select
from sqlalchemy.orm import sessionmaker

from .entries import FileEntry
from .models import FILES_TABLE, TIMECODE_TABLE, Base, SupRsyncFile, TimecodeDir

# SQLite accepts at most 32766 bound parameters; stay far below for the IN (...) lookups.
_LOOKUP_CHUNK = 400
_INSERT_FILE = (f"INSERT INTO {FILES_TABLE} (local_path, local_md5sum, archive_name, "
                "remote_path, timestamp, failed_copy_attempts, deletable, ignore) "
                "VALUES (?, ?, ?, ?, ?, 0, ?, 0)")
_INSERT_TIMECODE = (f"INSERT INTO {TIMECODE_TABLE} (timecode, archive_name, completed, "
                    "synced, finalized) VALUES (?, ?, 0, 0, 0)")


def _marks(n: int) -> str:
    return ", ".join("?" * n)


@dataclass
class AddResult:
    """What :meth:`SupRsyncDB.add_files` did."""

    inserted: list[FileEntry] = field(default_factory=list)
    duplicates: list[FileEntry] = field(default_factory=list)
    new_timecodes: list[tuple[int, str]] = field(default_factory=list)


def _install_sqlite_pragmas(engine: Engine, busy_timeout_ms: int) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record):
        # Let SQLAlchemy's "begin" event issue BEGIN itself, so writes can be IMMEDIATE.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn):
        # Writers take the write lock up front: the duplicate check and the insert then see
        # the same snapshot, and a busy database fails at BEGIN, before any work.
        mode = conn.get_execution_options().get("sqlite_begin", "DEFERRED")
        conn.exec_driver_sql(f"BEGIN {mode}")


class SupRsyncDB:
    """Access to a SupRsync SQLite file shared with socs's SupRsync agents.

    Args:
        db_path: the database file; its folder is created if missing.
        create_all: create the tables when they do not exist (socs's ``--create-table``).
        echo: log every SQL statement (socs's ``--echo-sql``).
        busy_timeout_ms: how long a statement waits for another writer's lock.
    """

    def __init__(self, db_path: str, create_all: bool = True, echo: bool = False,
                 busy_timeout_ms: int = 5000) -> None:
        self.db_path = os.path.abspath(db_path)
        os.makedirs(os.path.dirname(self.db_path), exist_ok=True)
        self.engine = create_engine(f"sqlite:///{self.db_path}", echo=echo)
        _install_sqlite_pragmas(self.engine, busy_timeout_ms)
        self.Session = sessionmaker(bind=self.engine)
        self._known_timecodes: set[tuple[int, str]] = set()
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
        if not entries:
            return result
        # Plain SQL on SQLAlchemy's connection: this runs for every batch a monitor writes,
        # and the ORM/Core statement machinery cost ten times the SQLite work here.
        with self.engine.connect().execution_options(sqlite_begin="IMMEDIATE") as conn:
            with conn.begin():
                known = self._existing_keys(conn, entries)
                rows = []
                for entry in entries:
                    key = (entry.archive_name, entry.local_path, entry.local_md5sum)
                    if key in known:
                        result.duplicates.append(entry)
                        continue
                    known.add(key)
                    result.inserted.append(entry)
                    rows.append((entry.local_path, entry.local_md5sum, entry.archive_name,
                                 entry.remote_path, float(entry.timestamp),
                                 int(bool(entry.deletable))))
                if rows:
                    conn.exec_driver_sql(_INSERT_FILE, rows)
                wanted = {(tc, e.archive_name) for e in result.inserted
                          if (tc := e.timecode) is not None} - self._known_timecodes
                if wanted:
                    have = set()
                    for archive in {a for _, a in wanted}:
                        codes = [t for t, a in wanted if a == archive]
                        have.update(conn.exec_driver_sql(
                            f"SELECT timecode, archive_name FROM {TIMECODE_TABLE} "
                            f"WHERE archive_name = ? AND timecode IN ({_marks(len(codes))})",
                            (archive, *codes)).fetchall())
                    missing = sorted(wanted - have)
                    if missing:
                        conn.exec_driver_sql(_INSERT_TIMECODE, missing)
                    result.new_timecodes = missing
        # Only after the commit: SupRsync never deletes timecode rows, so a pair seen once
        # needs no lookup again.
        self._known_timecodes.update(wanted)
        return result

    def _existing_keys(self, conn, entries: Sequence[FileEntry]) -> set[tuple[str, str, str]]:
        # One archive per query: ``archive_name = ? AND local_path IN (...)`` searches the
        # (archive_name, local_path) index, where a row-value IN scans the whole table.
        by_archive: dict[str, set[str]] = {}
        for e in entries:
            by_archive.setdefault(e.archive_name, set()).add(e.local_path)
        found: set[tuple[str, str, str]] = set()
        for archive, paths in by_archive.items():
            ordered = sorted(paths)
            for start in range(0, len(ordered), _LOOKUP_CHUNK):
                chunk = ordered[start:start + _LOOKUP_CHUNK]
                found.update(conn.exec_driver_sql(
                    f"SELECT archive_name, local_path, local_md5sum FROM {FILES_TABLE} "
                    f"WHERE archive_name = ? AND local_path IN ({_marks(len(chunk))})",
                    (archive, *chunk)).fetchall())
        return found

    # ---- reading -------------------------------------------------------------------------

    def count(self, archive_name: Optional[str] = None) -> int:
        stmt = select(func.count()).select_from(SupRsyncFile)
        if archive_name is not None:
            stmt = stmt.where(SupRsyncFile.archive_name == archive_name)
        with self.Session() as session:
            return int(session.scalar(stmt))

    def archives(self) -> dict[str, int]:
        """Archive name -> number of rows."""
        stmt = select(SupRsyncFile.archive_name, func.count()).group_by(
            SupRsyncFile.archive_name).order_by(SupRsyncFile.archive_name)
        with self.Session() as session:
            return {name: n for name, n in session.execute(stmt).tuples()}

    def files(self, archive_name: Optional[str] = None, limit: Optional[int] = None,
              uncopied_only: bool = False, newest_first: bool = True) -> list[dict]:
        stmt = select(SupRsyncFile)
        if archive_name is not None:
            stmt = stmt.where(SupRsyncFile.archive_name == archive_name)
        if uncopied_only:
            stmt = stmt.where(SupRsyncFile.removed.is_(None),
                              SupRsyncFile.remote_md5sum.is_distinct_from(
                                  SupRsyncFile.local_md5sum))
        order = SupRsyncFile.id.desc() if newest_first else SupRsyncFile.id.asc()
        stmt = stmt.order_by(order)
        if limit is not None:
            stmt = stmt.limit(limit)
        with self.Session() as session:
            return [f.as_dict() for f in session.scalars(stmt)]

    def file_by_id(self, file_id: int) -> Optional[dict]:
        with self.Session() as session:
            row = session.get(SupRsyncFile, file_id)
            return None if row is None else row.as_dict()

    def timecode_dirs(self, archive_name: Optional[str] = None) -> list[dict]:
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
            num_files = session.scalar(
                select(func.count()).where(f.archive_name == archive_name))
            uncopied = session.scalar(select(func.count()).where(
                f.archive_name == archive_name, f.ignore.is_not(True), differs))
            first_uncopied = session.scalar(select(func.min(f.timestamp)).where(
                f.archive_name == archive_name, f.ignore.is_not(True), differs))
            last_added = session.scalar(select(f.local_path).where(
                f.archive_name == archive_name).order_by(f.timestamp.desc()).limit(1))
            last_copied = session.scalar(select(f.local_path).where(
                f.archive_name == archive_name, f.local_md5sum == f.remote_md5sum
            ).order_by(f.timestamp.desc()).limit(1))
        return {
            "num_files": int(num_files or 0),
            "uncopied_files": int(uncopied or 0),
            "finalized_until": (first_uncopied - 1) if first_uncopied is not None
            else time.time(),
            "last_file_added": last_added or "",
            "last_file_copied": last_copied or "",
        }
