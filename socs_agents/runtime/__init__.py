"""The runtime every agent is built on: background workers, SQLite stores, durable file
writes and logging. Plain Python; nothing here imports ocs, so each piece is tested alone.

* :mod:`.workers`: :class:`SerialWorker` and :class:`WorkerPool` (jobs that answer with a
  Deferred on the reactor), :class:`Inbox` and :func:`start_thread` for a long-running loop,
  :class:`ReactorThread` for a server that owns its state on a thread of its own.
* :mod:`.store`: :func:`connect` with a named :class:`Durability`, :func:`transaction`.
* :mod:`.files`: :func:`durable_write`, :func:`durable_file` and :func:`commit_file`.
* :mod:`.logs`: :data:`Report`, :func:`reporter`, :func:`start_logging`, :class:`RateLimit`.
"""

from .files import (
    commit_file,
    durable_file,
    durable_write,
    fsync_dir,
    remove_temp_files,
    temp_path,
)
from .logs import RateLimit, Report, no_report, reporter, start_logging
from .store import (
    Durability,
    apply_pragmas,
    begin_statement,
    checkpoint,
    connect,
    disable_autocheckpoint,
    is_locked,
    transaction,
)
from .workers import (
    Inbox,
    QueueFull,
    ReactorThread,
    SerialWorker,
    WorkerPool,
    WorkerStopped,
    run_blocking,
    start_thread,
)

__all__ = [
    "Durability",
    "Inbox",
    "QueueFull",
    "RateLimit",
    "ReactorThread",
    "Report",
    "SerialWorker",
    "WorkerPool",
    "WorkerStopped",
    "apply_pragmas",
    "begin_statement",
    "checkpoint",
    "commit_file",
    "connect",
    "disable_autocheckpoint",
    "durable_file",
    "durable_write",
    "fsync_dir",
    "is_locked",
    "no_report",
    "remove_temp_files",
    "reporter",
    "run_blocking",
    "start_logging",
    "start_thread",
    "temp_path",
    "transaction",
]
