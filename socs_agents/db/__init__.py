"""The SupRsync database shared with socs's SupRsync agents."""

from .entries import DEFAULT_ARCHIVES, BadFileEntry, FileEntry, make_entry, md5_file, timecode_of
from .models import SupRsyncFile, TimecodeDir
from .suprsync import AddResult, FileRow, RowsAdded, SupRsyncDB

__all__ = [
    "DEFAULT_ARCHIVES",
    "BadFileEntry",
    "FileEntry",
    "make_entry",
    "md5_file",
    "timecode_of",
    "SupRsyncFile",
    "TimecodeDir",
    "AddResult",
    "FileRow",
    "RowsAdded",
    "SupRsyncDB",
]
