"""The orchestrator's HTTP API: the real client's endpoints and the README's, on twisted.web.

Validation is plain functions (:func:`parse_body` and the ``check_*`` helpers) that raise
:class:`BadRequest`; nothing touches the state before a request is fully validated, so a
rejected request changes nothing. Every answer is JSON; a 4xx never closes the connection
(the real client keeps one socket and does not reconnect).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from typing import Any

from twisted.web.resource import Resource
from twisted.web.server import Site

from .state import MAX_ID, RECORD_TYPES, TIME_SLICE, TRIGGER_RECORD, State, StateError

#: Bodies larger than this are refused (a file of 100,000 records is about 1.5 MB).
MAX_BODY_BYTES = 32 << 20
#: Suffixes of files still being written: never handed out as a file name.
DEFAULT_TEMP_SUFFIXES = (".writing",)


class BadRequest(ValueError):
    """A request answered 400; the message names the field and the reason."""


# ---- validation (pure) -----------------------------------------------------------------


def parse_body(raw: bytes, required: bool = True) -> dict:
    """The JSON object of a request body. An empty body is ``{}`` when not ``required``."""
    if not raw.strip():
        if required:
            raise BadRequest("a JSON object body is required")
        return {}
    if len(raw) > MAX_BODY_BYTES:
        raise BadRequest(f"body over {MAX_BODY_BYTES} bytes")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest("body is not UTF-8") from None
    try:
        body = json.loads(text)
    except ValueError as e:
        raise BadRequest(f"malformed JSON: {e}") from None
    if not isinstance(body, dict):
        raise BadRequest(f"body must be a JSON object, not {type(body).__name__}")
    return body


def check_str(body: dict, name: str, default: str | None = None, nonempty: bool = False) -> str:
    if name not in body:
        if default is None:
            raise BadRequest(f"missing field {name!r}")
        return default
    value = body[name]
    if not isinstance(value, str):
        raise BadRequest(f"field {name!r} must be a string, not {type(value).__name__}")
    if nonempty and not value:
        raise BadRequest(f"field {name!r} must not be empty")
    if "\x00" in value:
        raise BadRequest(f"field {name!r} contains a NUL character")
    return value


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_uint(body: dict, name: str) -> int:
    if name not in body:
        raise BadRequest(f"missing field {name!r}")
    value = body[name]
    if not _is_int(value):
        raise BadRequest(f"field {name!r} must be an integer, not {type(value).__name__}")
    if not 0 <= value <= MAX_ID:
        raise BadRequest(f"field {name!r} must be between 0 and {MAX_ID}, not {value}")
    return value


def check_type(body: dict, name: str, default: str | None = None) -> str:
    value = check_str(body, name, default)
    if value not in RECORD_TYPES:
        raise BadRequest(
            f"unknown record type {value!r} in field {name!r} (known: {', '.join(RECORD_TYPES)})"
        )
    return value


def check_path(body: dict, temp_suffixes=DEFAULT_TEMP_SUFFIXES) -> str:
    path = check_str(body, "file", nonempty=True)
    if not os.path.isabs(path):
        raise BadRequest(f"field 'file' must be an absolute path, not {path!r}")
    if any(path.endswith(s) for s in temp_suffixes):
        raise BadRequest(f"field 'file' names a file still being written ({path!r})")
    return path


def check_record_ids(body: dict) -> list[tuple[int, int]]:
    if "record_ids" not in body:
        raise BadRequest("missing field 'record_ids'")
    ids = body["record_ids"]
    if not isinstance(ids, list):
        raise BadRequest(f"field 'record_ids' must be a list, not {type(ids).__name__}")
    out = []
    for i, item in enumerate(ids):
        if _is_int(item):
            item = [item, 0]
        if (
            not isinstance(item, list)
            or len(item) != 2
            or not all(_is_int(v) and 0 <= v <= MAX_ID for v in item)
        ):
            raise BadRequest(
                f"record_ids[{i}] must be [record number, sequence number] "
                f"(non-negative integers), not {json.dumps(item)[:60]}"
            )
        out.append((item[0], item[1]))
    return out


def new_file_args(body: dict, temp_suffixes=DEFAULT_TEMP_SUFFIXES) -> dict:
    return {
        "host": check_str(body, "host", nonempty=True),
        "path": check_path(body, temp_suffixes),
        "run_number": check_uint(body, "run_number"),
        "record_type": check_type(body, "record_type"),
        "record_ids": check_record_ids(body),
    }


def remove_file_args(body: dict) -> dict:
    return {
        "host": check_str(body, "host", nonempty=True),
        "path": check_str(body, "file", nonempty=True),
    }


def read_next_args(body: dict) -> dict:
    return {"host": check_str(body, "host"), "file": check_str(body, "file", default="")}


def complete_args(body: dict) -> dict:
    return {
        "run_number": check_uint(body, "run_number"),
        "trigger_number": check_uint(body, "trigger_number"),
        "sequence_number": check_uint(body, "sequence_number"),
        "record_type": check_type(body, "type", default=TRIGGER_RECORD),
        "file": check_str(body, "file", default=""),
    }


# ---- twisted.web -----------------------------------------------------------------------


class OrchestratorAPI:
    """Routes a (method, path, body) to the state; returns (status, answer dict).

    Free of twisted.web so it can be driven directly in tests.

    Args:
        state: the state machine (called on the reactor thread only).
        stats: returns the ``GET /stats`` answer.
        on_change: called after every request that changed the state (e.g. to refresh feeds).
        temp_suffixes: suffixes of unfinished files, refused in ``/new-file``.
    """

    def __init__(
        self,
        state: State,
        stats: Callable[[], dict],
        on_change: Callable[[str], None] | None = None,
        temp_suffixes=DEFAULT_TEMP_SUFFIXES,
    ) -> None:
        self.state = state
        self.stats = stats
        self.on_change = on_change
        self.temp_suffixes = tuple(temp_suffixes)
        tr, ts = TRIGGER_RECORD, TIME_SLICE
        # path -> (allowed methods, handler)
        self.routes: dict[str, tuple[tuple[str, ...], Callable[[bytes], tuple[int, dict]]]] = {
            "/": (("GET",), self._index),
            "/stats": (("GET",), lambda raw: (200, self.stats())),
            "/new-file": (("POST",), self._new_file),
            "/remove-file": (("POST",), self._remove_file),
            "/request-tr": (("GET", "POST"), lambda raw: self._request(tr)),
            "/request-ts": (("GET", "POST"), lambda raw: self._request(ts)),
            "/read-next-triggerrecord": (("POST", "GET"), lambda raw: self._read_next(raw, tr)),
            "/read-next-tr": (("GET", "POST"), lambda raw: self._read_next(raw, tr)),
            "/read-next-timeslice": (("POST", "GET"), lambda raw: self._read_next(raw, ts)),
            "/read-next-ts": (("GET", "POST"), lambda raw: self._read_next(raw, ts)),
            "/complete": (("POST",), self._complete),
            "/tr-complete": (("POST",), self._complete),
        }

    def handle(self, method: str, path: str, raw: bytes) -> tuple[int, dict]:
        path = path.split("?", 1)[0]
        if len(path) > 1:
            path = path.rstrip("/")
        route = self.routes.get(path)
        if route is None:
            return 404, {"error": f"no endpoint {path}", "endpoints": sorted(self.routes)}
        methods, handler = route
        if method == "HEAD":
            method = "GET"
        if method not in methods:
            return 405, {"error": f"{method} not allowed on {path} (use {' or '.join(methods)})"}
        try:
            status, answer = handler(raw)
        except BadRequest as e:
            return 400, {"error": str(e)}
        except StateError as e:
            return e.status, {"error": str(e)}
        if self.on_change is not None and path not in ("/", "/stats") and status == 200:
            self.on_change(path)
        return status, answer

    def _index(self, raw: bytes) -> tuple[int, dict]:
        return 200, {
            "service": "FileOrchestrator",
            "endpoints": sorted(self.routes),
            "stats": self.stats(),
        }

    def _new_file(self, raw: bytes) -> tuple[int, dict]:
        args = new_file_args(parse_body(raw), self.temp_suffixes)
        out = self.state.add_file(**args)
        return out.status, out.body

    def _remove_file(self, raw: bytes) -> tuple[int, dict]:
        out = self.state.remove_file(**remove_file_args(parse_body(raw)))
        return out.status, out.body

    def _request(self, record_type: str) -> tuple[int, dict]:
        out = self.state.request(record_type)
        return out.status, out.body

    def _read_next(self, raw: bytes, record_type: str) -> tuple[int, dict]:
        args = read_next_args(parse_body(raw))
        out = self.state.read_next(args["host"], record_type, args["file"])
        return out.status, out.body

    def _complete(self, raw: bytes) -> tuple[int, dict]:
        out = self.state.complete(**complete_args(parse_body(raw)))
        return out.status, out.body


class OrchestratorResource(Resource):
    """The twisted.web face of :class:`OrchestratorAPI` (a leaf: it routes every path)."""

    isLeaf = True

    def __init__(
        self,
        api: OrchestratorAPI,
        log_request: Callable[[str, str, int, float], None] | None = None,
        on_error: Callable[[str, BaseException], None] | None = None,
    ) -> None:
        super().__init__()
        self.api = api
        self.log_request = log_request
        self.on_error = on_error

    def render(self, request) -> bytes:
        t0 = time.perf_counter()
        method = request.method.decode("latin-1")
        path = request.path.decode("latin-1", "replace")
        try:
            raw = request.content.read() if request.content is not None else b""
            status, answer = self.api.handle(method, path, raw)
        except Exception as e:  # a bug or a database error: 500, and keep serving
            if self.on_error is not None:
                self.on_error(path, e)
            status, answer = 500, {"error": f"internal error: {type(e).__name__}: {e}"}
        body = json.dumps(answer).encode()
        request.setResponseCode(status)
        request.setHeader(b"content-type", b"application/json")
        if self.log_request is not None:
            self.log_request(method, path, status, time.perf_counter() - t0)
        return body


class OrchestratorSite(Site):
    """A ``Site`` that sets TCP_NODELAY on every connection and keeps idle connections for
    12 hours (the real client never reconnects). Access logging goes through the agent's
    request log instead of Twisted's."""

    def __init__(self, resource: Resource, timeout: float = 12 * 3600) -> None:
        super().__init__(resource, timeout=timeout)

    def buildProtocol(self, addr):
        proto = super().buildProtocol(addr)
        made = proto.connectionMade

        def connection_made():
            made()
            try:
                proto.transport.setTcpNoDelay(True)
            except Exception:  # not TCP (tests on a fake transport)
                pass

        proto.connectionMade = connection_made
        return proto

    def log(self, request) -> None:
        pass
