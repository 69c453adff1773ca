"""The outcomes of the last requests, kept across restarts (SQLite, crash-safe).

A request gets its row when it starts (state ``writing``) and its outcome when it ends; a
row still ``writing`` when the agent starts again was cut short by a crash or ``kill -9``
and becomes ``interrupted``. Every call runs on the store's own :class:`SerialWorker`
(``call`` returns a Future), so any thread may use it.
"""

from __future__ import annotations

import json
import time
from concurrent.futures import Future

from ...runtime import Durability, SerialWorker, connect, transaction

SCHEMA = """
CREATE TABLE IF NOT EXISTS requests (
    id INTEGER PRIMARY KEY,
    run_id TEXT NOT NULL,
    output_file TEXT NOT NULL,
    state TEXT NOT NULL,
    updated REAL NOT NULL,
    data TEXT NOT NULL
)
"""
INTERRUPTED_MESSAGE = (
    "interrupted: the agent stopped (crash or kill) during the write; no file was "
    "written under the final name, the temporary file was removed at restart"
)


class OutcomeStore:
    def __init__(self, path: str, keep: int = 1000) -> None:
        self.path = path
        self.keep = keep
        self.worker = SerialWorker("daq-outcomes", max_queue=1000)
        self.con = self.worker.call(connect, path, Durability.CRASH_SAFE).result()
        self.worker.call(self.con.execute, SCHEMA).result()

    # ---- on the worker thread ------------------------------------------------------------

    def _start(self, data: dict) -> int:
        with transaction(self.con):
            cur = self.con.execute(
                "INSERT INTO requests (run_id, output_file, state, updated, data) "
                "VALUES (?, ?, ?, ?, ?)",
                (data["run_id"], data["output_file"], data["state"], time.time(), json.dumps(data)),
            )
            self.con.execute("DELETE FROM requests WHERE id <= ?", (cur.lastrowid - self.keep,))
            return cur.lastrowid

    def _update(self, row: int, data: dict) -> None:
        with transaction(self.con):
            self.con.execute(
                "UPDATE requests SET state = ?, updated = ?, data = ? WHERE id = ?",
                (data["state"], time.time(), json.dumps(data), row),
            )

    def _merge(self, row: int, extra: dict) -> dict | None:
        with transaction(self.con):
            found = self.con.execute("SELECT data FROM requests WHERE id = ?", (row,)).fetchone()
            if found is None:
                return None
            data = {**json.loads(found[0]), **extra}
            self.con.execute(
                "UPDATE requests SET updated = ?, data = ? WHERE id = ?",
                (time.time(), json.dumps(data), row),
            )
            return data

    def _last(self, n: int) -> list[dict]:
        rows = self.con.execute(
            "SELECT id, data FROM requests ORDER BY id DESC LIMIT ?", (n,)
        ).fetchall()
        return [{**json.loads(data), "request_number": row} for row, data in rows]

    def _mark_interrupted(self) -> list[dict]:
        marked = []
        with transaction(self.con):
            for row, data in self.con.execute(
                "SELECT id, data FROM requests WHERE state = 'writing'"
            ).fetchall():
                data = {
                    **json.loads(data),
                    "state": "interrupted",
                    "success": False,
                    "message": INTERRUPTED_MESSAGE,
                    "output_file_written": None,
                }
                self.con.execute(
                    "UPDATE requests SET state = 'interrupted', updated = ?, data = ? WHERE id = ?",
                    (time.time(), json.dumps(data), row),
                )
                marked.append(data)
        return marked

    # ---- from any thread -----------------------------------------------------------------

    def start(self, data: dict) -> Future:
        return self.worker.call(self._start, data)

    def update(self, row: int, data: dict) -> Future:
        return self.worker.call(self._update, row, data)

    def merge(self, row: int, extra: dict) -> Future:
        return self.worker.call(self._merge, row, extra)

    def last(self, n: int) -> Future:
        return self.worker.call(self._last, n)

    def mark_interrupted(self) -> Future:
        return self.worker.call(self._mark_interrupted)

    def close(self) -> None:
        self.worker.call(self.con.close)
        self.worker.stop(drain=True, timeout=5.0)
