"""SQLAlchemy models of the SupRsync database, column for column as socs's SupRsync reads them.

Table and column names, types, nullability and defaults must not change: sites run the
SupRsync agent of ``socs`` against the same file. Defaults are ORM-side (as in socs), and
every writer in this package stores them explicitly, because socs's own models declare no
server defaults and a NULL ``failed_copy_attempts``/``deletable``/``ignore`` would make a row
silently uncopyable.

Only indexes are added: they make SupRsync's queries fast and change nothing it reads.
"""

from __future__ import annotations

from sqlalchemy import Boolean, Float, ForeignKey, Index, Integer, String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

TABLE_VERSION = 0
FILES_TABLE = f"supersync_v{TABLE_VERSION}"
TIMECODE_TABLE = f"timecode_dirs_v{TABLE_VERSION}"


class Base(DeclarativeBase):
    pass


class SupRsyncFile(Base):
    """One file queued for copying by a SupRsync agent."""

    __tablename__ = FILES_TABLE

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    local_path: Mapped[str] = mapped_column(String, nullable=False)
    local_md5sum: Mapped[str] = mapped_column(String, nullable=False)
    archive_name: Mapped[str] = mapped_column(String, nullable=False)
    remote_path: Mapped[str] = mapped_column(String, nullable=False)
    timestamp: Mapped[float] = mapped_column(Float, nullable=False)
    remote_md5sum: Mapped[str | None] = mapped_column(String)
    copied: Mapped[float | None] = mapped_column(Float)
    removed: Mapped[float | None] = mapped_column(Float)
    failed_copy_attempts: Mapped[int | None] = mapped_column(Integer, default=0)
    deletable: Mapped[bool | None] = mapped_column(Boolean, default=True)
    ignore: Mapped[bool | None] = mapped_column(Boolean, default=False)

    __table_args__ = (
        # SupRsync's copy and delete queries filter on archive and removed.
        Index("ix_socs_agents_files_archive_removed", "archive_name", "removed"),
        # get_archive_stats / get_finalized_until scan an archive in timestamp order.
        Index("ix_socs_agents_files_archive_timestamp", "archive_name", "timestamp"),
        # Our duplicate check: is (archive, local path, md5) known already?
        Index("ix_socs_agents_files_archive_local_path", "archive_name", "local_path"),
        # No index on remote_path: SupRsync selects a timecode dir's files with LIKE 'tc/%',
        # which SQLite's default case-insensitive LIKE never answers from an index, so it
        # would only slow every insert.
    )

    def as_dict(self) -> dict:
        return {c.key: getattr(self, c.key) for c in self.__table__.columns}


class TimecodeDir(Base):
    """One 5-digit ctime directory of an archive, tracked until SupRsync finalizes it."""

    __tablename__ = TIMECODE_TABLE

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    timecode: Mapped[int] = mapped_column(Integer, nullable=False)
    archive_name: Mapped[str] = mapped_column(String, nullable=False)
    completed: Mapped[bool | None] = mapped_column(Boolean, default=False)
    synced: Mapped[bool | None] = mapped_column(Boolean, default=False)
    finalized: Mapped[bool | None] = mapped_column(Boolean, default=False)
    finalize_file_id: Mapped[int | None] = mapped_column(Integer, ForeignKey(f"{FILES_TABLE}.id"))

    __table_args__ = (
        # Not unique: a database that socs already filled may hold duplicates, and a unique
        # index would then fail to build. Our writers check before inserting.
        Index("ix_socs_agents_tcdirs_archive_timecode", "archive_name", "timecode"),
    )

    def as_dict(self) -> dict:
        return {c.key: getattr(self, c.key) for c in self.__table__.columns}
