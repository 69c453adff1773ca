"""The SupRsync database shared with socs's SupRsync agents.

The entry rules (:mod:`.entries`) import without SQLAlchemy. The database's classes are
imported when first asked for (``from socs_agents.db import SupRsyncDB`` works as ever), so
an agent that opens the database only later, or only checks paths, starts without loading
SQLAlchemy: 0.4 s of the FileOrchestrator's start, measured with ``python -X importtime``.
"""

from __future__ import annotations

import importlib
from typing import Any

from .entries import DEFAULT_ARCHIVES, BadFileEntry, FileEntry, make_entry, md5_file, timecode_of

#: the names that need SQLAlchemy, and the module of each
_DATABASE = {
    "SupRsyncFile": "models",
    "TimecodeDir": "models",
    "AddResult": "suprsync",
    "FileRow": "suprsync",
    "RowsAdded": "suprsync",
    "SupRsyncDB": "suprsync",
}

__all__ = [
    "DEFAULT_ARCHIVES",
    "BadFileEntry",
    "FileEntry",
    "make_entry",
    "md5_file",
    "timecode_of",
    *_DATABASE,
]


def __getattr__(name: str) -> Any:
    module = _DATABASE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # asked for once
    return value
