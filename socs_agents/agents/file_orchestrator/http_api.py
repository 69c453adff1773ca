"""The orchestrator's HTTP API: the real client's endpoints and the README's, on twisted.web.

Validation is plain functions (:func:`parse_body` and the ``check_*`` helpers) that raise
:class:`BadRequest`; nothing touches the state before a request is fully validated, so a
rejected request changes nothing. The state raises domain errors (:mod:`.state`);
:data:`ERROR_STATUS` here is the one table that maps them to status codes. Every answer is
JSON; a 4xx never closes the connection (the real client keeps one socket and does not
reconnect).

The site runs on the state's own thread (:class:`~.service.StateService`): a request that
needs the state is a job there, answered when the job is done, at once unless the database
is locked (``NOT_DONE_YET``); ``GET /stats`` and ``GET /`` answer from the snapshot and
never wait for a locked database. twisted.web's
``HTTPChannel`` reads the next pipelined request of a connection only after the current one
is answered, so answers stay in order per connection.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from typing import Any

from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from ...runtime.http import ClientAllowList
from .page import status_page
from .state import (
    MAX_ID,
    RECORD_TYPES,
    TIME_SLICE,
    TRIGGER_RECORD,
    Busy,
    DomainError,
    Invalid,
    NoCredit,
    NotFound,
    Overloaded,
    Refused,
    State,
)

#: Bodies larger than this are refused (a file of 100,000 records is about 1.5 MB).
MAX_BODY_BYTES = 32 << 20
#: Client networks served by default: this host only.
#: Content types taken for a JSON body (curl -d sends form-urlencoded, as the README does);
#: no Content-Type at all is taken too.
JSON_CONTENT_TYPES = ("application/json", "text/plain", "application/x-www-form-urlencoded")
#: Suffixes of files still being written: never handed out as a file name.
DEFAULT_TEMP_SUFFIXES = (".writing",)


class BadRequest(Invalid):
    """A request body that is not what the endpoint takes; the message names the field and
    the reason."""


class NoEndpoint(DomainError):
    """No such path; the answer lists the endpoints."""

    def __init__(self, message: str, endpoints: list[str]) -> None:
        super().__init__(message)
        self.endpoints = endpoints


class WrongMethod(DomainError):
    """The path exists but does not take this method."""


class WrongContentType(DomainError):
    """A body whose Content-Type says it is not JSON."""


class BodyTooLarge(DomainError):
    """A body over the limit (from its Content-Length, or while it streams in)."""


class ClientNotAllowed(DomainError):
    """A client outside ``--http-allow``."""


#: The one place where the orchestrator's errors become status codes, and the counter each
#: refusal is counted under (None: an ordinary answer of the protocol, not a refusal).
ERROR_STATUS: tuple[tuple[type[DomainError], int, str | None], ...] = (
    (Invalid, 400, "bad_request"),
    (ClientNotAllowed, 403, "client_not_allowed"),
    (Refused, 403, None),  # counted under its own reason
    (NotFound, 404, None),
    (NoEndpoint, 404, "no_endpoint"),
    (WrongMethod, 405, "wrong_method"),
    (BodyTooLarge, 413, "body_too_large"),
    (WrongContentType, 415, "wrong_content_type"),
    (NoCredit, 429, None),
    (Busy, 503, "state_locked"),
    (Overloaded, 503, "state_queue_full"),
)


def error_status(exc: DomainError) -> tuple[int, str | None]:
    """The status code of ``exc`` and the counter of the refusal (None: not counted)."""
    for cls, status, reason in ERROR_STATUS:
        if isinstance(exc, cls):
            return status, exc.reason if isinstance(exc, Refused) else reason
    return 400, "bad_request"


def error_answer(exc: DomainError) -> tuple[int, dict]:
    """The status and JSON body of a refused request."""
    status, _ = error_status(exc)
    body: dict = {"error": str(exc)}
    if isinstance(exc, NoEndpoint):
        body["endpoints"] = exc.endpoints
    if isinstance(exc, Refused):
        body["reason"] = exc.reason
    elif isinstance(exc, (ClientNotAllowed, BodyTooLarge, WrongContentType)):
        body["reason"] = error_status(exc)[1]
    return status, body


# ---- validation (pure) -----------------------------------------------------------------


def parse_body(raw: bytes, required: bool = True) -> dict:
    """The JSON object of a request body. An empty body is ``{}`` when not ``required``."""
    if not raw.strip():
        if required:
            raise BadRequest("a JSON object body is required")
        return {}
    if len(raw) > MAX_BODY_BYTES:
        raise BodyTooLarge(f"body over {MAX_BODY_BYTES} bytes")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest("body is not UTF-8") from None
    try:
        body = json.loads(text)
    except RecursionError:
        # the C decoder counts its depth against the interpreter's limit and stops cleanly
        raise BadRequest("JSON nested too deeply") from None
    except ValueError as e:  # also numbers of more than 4,300 digits
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
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate ("\ud800"): no UTF-8, no SQLite text
            raise BadRequest(f"field {name!r} is not valid Unicode text") from None
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


# ---- routing (no twisted.web) ----------------------------------------------------------

#: a handler: ``handler(state, raw body) -> answer`` (runs on the state's thread)
Handler = Callable[[State, bytes], dict]


class OrchestratorAPI:
    """Routes a (method, path) to a handler; free of twisted.web so tests drive it directly.

    Args:
        stats: returns the ``GET /stats`` answer from the snapshot (any thread).
        temp_suffixes: suffixes of unfinished files, refused in ``/new-file``.
        check_new_file: called with the validated ``/new-file`` arguments before the state
            sees them; raises :class:`~.state.Refused` for a file that may not be taken.
    """

    def __init__(
        self,
        stats: Callable[[], dict],
        temp_suffixes=DEFAULT_TEMP_SUFFIXES,
        check_new_file: Callable[[dict], None] | None = None,
    ) -> None:
        self.stats = stats
        self.temp_suffixes = tuple(temp_suffixes)
        self.check_new_file = check_new_file
        tr, ts = TRIGGER_RECORD, TIME_SLICE
        #: path -> (allowed methods, handler of the state)
        self.routes: dict[str, tuple[tuple[str, ...], Handler]] = {
            "/new-file": (("POST",), self._new_file),
            "/remove-file": (("POST",), self._remove_file),
            "/request-tr": (("GET", "POST"), lambda state, raw: state.request(tr)),
            "/request-ts": (("GET", "POST"), lambda state, raw: state.request(ts)),
            "/read-next-triggerrecord": (
                ("POST", "GET"),
                lambda state, raw: self._read_next(state, raw, tr),
            ),
            "/read-next-tr": (("GET", "POST"), lambda state, raw: self._read_next(state, raw, tr)),
            "/read-next-timeslice": (
                ("POST", "GET"),
                lambda state, raw: self._read_next(state, raw, ts),
            ),
            "/read-next-ts": (("GET", "POST"), lambda state, raw: self._read_next(state, raw, ts)),
            "/complete": (("POST",), self._complete),
            "/tr-complete": (("POST",), self._complete),
        }
        #: path -> answer from the snapshot, never waiting for the state
        self.snapshot_routes: dict[str, Callable[[], dict]] = {
            "/": self._index,
            "/stats": self.stats,
        }
        self.endpoints = sorted([*self.routes, *self.snapshot_routes])

    def route(self, method: str, path: str) -> tuple[str, Handler | None, Callable | None]:
        """``(path, state handler, snapshot answer)``: one of the two is None.

        Raises:
            NoEndpoint, WrongMethod.
        """
        path = path.split("?", 1)[0]
        if len(path) > 1:
            path = path.rstrip("/")
        if method == "HEAD":
            method = "GET"
        snapshot = self.snapshot_routes.get(path)
        if snapshot is not None:
            if method != "GET":
                raise WrongMethod(f"{method} not allowed on {path} (use GET)")
            return path, None, snapshot
        route = self.routes.get(path)
        if route is None:
            raise NoEndpoint(f"no endpoint {path}", self.endpoints)
        methods, handler = route
        if method not in methods:
            raise WrongMethod(f"{method} not allowed on {path} (use {' or '.join(methods)})")
        return path, handler, None

    def handle(self, state: State, method: str, path: str, raw: bytes) -> tuple[int, dict]:
        """Route and run in the calling thread; ``(status, answer)``. For tests and tools."""
        try:
            _, handler, snapshot = self.route(method, path)
            return 200, snapshot() if handler is None else handler(state, raw)
        except DomainError as e:
            return error_answer(e)

    def _index(self) -> dict:
        return {"service": "FileOrchestrator", "endpoints": self.endpoints, "stats": self.stats()}

    def new_file_args(self, body: dict) -> dict:
        """The validated arguments of a new file (HTTP and the OCS task)."""
        args = new_file_args(body, self.temp_suffixes)
        if self.check_new_file is not None:
            self.check_new_file(args)
        return args

    def _new_file(self, state: State, raw: bytes) -> dict:
        return state.add_file(**self.new_file_args(parse_body(raw)))

    def _remove_file(self, state: State, raw: bytes) -> dict:
        return state.remove_file(**remove_file_args(parse_body(raw)))

    def _read_next(self, state: State, raw: bytes, record_type: str) -> dict:
        args = read_next_args(parse_body(raw))
        return state.read_next(args["host"], record_type, args["file"]).answer()

    def _complete(self, state: State, raw: bytes) -> dict:
        return state.complete(**complete_args(parse_body(raw)))


def content_type_ok(value: bytes | None) -> bool:
    """Whether a request's Content-Type may hold a JSON body (absent is fine)."""
    if value is None:
        return True
    kind = value.split(b";", 1)[0].strip().lower().decode("latin-1")
    return kind in JSON_CONTENT_TYPES or kind.endswith("+json") or not kind


# ---- twisted.web -----------------------------------------------------------------------

#: submits ``handler(state, raw)`` to the state: a Deferred of the answer
Submit = Callable[[Handler, bytes], Any]
#: ``on_refusal(endpoint, reason, detail)`` for every refused request
OnRefusal = Callable[[str, str, str], None]


class OrchestratorResource(Resource):
    """The twisted.web face of :class:`OrchestratorAPI` (a leaf: it routes every path).

    Args:
        api: the routes.
        submit: runs a handler on the state (``StateService.submit_here``): a Deferred.
        log_request: ``log_request(method, path, status, seconds)`` after every answer.
        on_refusal: ``on_refusal(endpoint, reason, detail)`` for every refused request,
            and with reason ``internal_error`` for an exception that is no domain error.
    """

    isLeaf = True

    def __init__(
        self,
        api: OrchestratorAPI,
        submit: Submit,
        log_request: Callable[[str, str, int, float], None] | None = None,
        on_refusal: OnRefusal | None = None,
    ) -> None:
        super().__init__()
        self.api = api
        self.submit = submit
        self.log_request = log_request
        self.on_refusal = on_refusal

    def render(self, request):
        t0 = time.perf_counter()
        method = request.method.decode("latin-1")
        path = request.path.decode("latin-1", "replace")
        try:
            path, handler, snapshot = self.api.route(method, path)
            if handler is None:
                if path == "/" and wants_html(request):
                    return self._page(request, method, path, t0)
                return self._body(request, method, path, 200, snapshot(), t0)
            raw = request.content.read() if request.content is not None else b""
        except DomainError as e:
            return self._body(request, method, path, *self._refused(path, e), t0)
        gone: list[bool] = []
        request.notifyFinish().addErrback(lambda _f: gone.append(True))

        def answer(result) -> None:
            if isinstance(result, dict):
                status, body = 200, result
            else:
                status, body = self._failure_answer(path, result)
            if gone:  # the client left while the job ran: nobody to answer
                return
            request.write(self._body(request, method, path, status, body, t0))
            request.finish()

        self.submit(handler, raw).addBoth(answer)
        return NOT_DONE_YET

    def _page(self, request, method: str, path: str, t0: float) -> bytes:
        """The status page for a browser (the same figures as ``/stats``)."""
        body = status_page(self.api.stats()).encode()
        request.setResponseCode(200)
        request.setHeader(b"content-type", b"text/html; charset=utf-8")
        request.setHeader(b"content-length", b"%d" % len(body))
        if self.log_request is not None:
            self.log_request(method, path, 200, time.perf_counter() - t0)
        return body

    def _refused(self, path: str, exc: DomainError) -> tuple[int, dict]:
        status, reason = error_status(exc)
        if reason is not None and self.on_refusal is not None:
            self.on_refusal(path, reason, str(exc))
        return error_answer(exc)

    def _failure_answer(self, path: str, failure) -> tuple[int, dict]:
        exc = failure.value
        if isinstance(exc, DomainError):
            return self._refused(path, exc)
        # a bug: say so in JSON, count and log it, keep serving
        if self.on_refusal is not None:
            self.on_refusal(path, "internal_error", f"{type(exc).__name__}: {exc}")
        return 500, {"error": f"internal error: {type(exc).__name__}: {exc}"}

    def _body(self, request, method: str, path: str, status: int, answer: dict, t0: float):
        body = json.dumps(answer).encode()
        request.setResponseCode(status)
        request.setHeader(b"content-type", b"application/json")
        # a length, not chunks, also for answers written later (NOT_DONE_YET): the answer
        # the real client expects
        request.setHeader(b"content-length", b"%d" % len(body))
        if self.log_request is not None:
            self.log_request(method, path, status, time.perf_counter() - t0)
        return body


def wants_html(request) -> bool:
    """A browser asks for ``text/html`` first; the DUNE clients and scripts that read
    ``GET /`` ask for nothing in particular and keep getting JSON."""
    accept = request.getHeader(b"accept") or b""
    return b"text/html" in accept.split(b",", 1)[0]


def early_answer(exc: DomainError) -> bytes:
    """A whole HTTP answer that closes the connection: for requests refused before their
    body is read (the connection cannot be reused after a body left unread)."""
    status, answer = error_answer(exc)
    body = json.dumps(answer).encode()
    phrase = {403: b"Forbidden", 413: b"Payload Too Large", 415: b"Unsupported Media Type"}
    return (
        b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
        b"connection: close\r\n\r\n" % (status, phrase.get(status, b"Refused"), len(body))
    ) + body


class OrchestratorRequest(Request):
    """A request refused as soon as its headers are in when its client is outside
    ``--http-allow`` (403), its Content-Length is over the limit (413) or its body is
    declared as something else than JSON (415), and cut off with 413 when a body without a
    length (chunked) grows past the limit. twisted.web would read the whole body before
    :meth:`OrchestratorResource.render` sees the request (and parse a multipart body
    itself, answering a bare 400 when it fails)."""

    refused = False
    _received = 0

    def gotLength(self, length: int | None) -> None:
        site = self.channel.site
        host = getattr(self.getClientAddress(), "host", "")
        ctype = self.requestHeaders.getRawHeaders(b"content-type", [None])[0]
        if site.allowed_clients is not None and not site.allowed_clients.allows(host):
            self._refuse_early(ClientNotAllowed(f"client {host} is not allowed"))
        elif length is not None and length > site.max_body_bytes:
            self._refuse_early(BodyTooLarge(f"body of {length} bytes over {site.max_body_bytes}"))
        elif length != 0 and not content_type_ok(ctype):
            self._refuse_early(
                WrongContentType(
                    "the body must be JSON (Content-Type application/json), not "
                    f"{ctype.decode('latin-1')[:60]!r}"
                )
            )
        super().gotLength(0 if self.refused else length)

    def handleContentChunk(self, data: bytes) -> None:
        if self.refused:
            return
        self._received += len(data)
        limit = self.channel.site.max_body_bytes
        if self._received > limit:
            self._refuse_early(BodyTooLarge(f"body over {limit} bytes while streaming"))
            return
        super().handleContentChunk(data)

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        # twisted parses a POST body's form fields for request.args, which this API never
        # reads, and parses the Content-Type with the email package to decide (about
        # 170 us a request, a fifth of its CPU, measured): hide the header for that step
        # (gotLength has checked it already).
        ctype = self.requestHeaders.getRawHeaders(b"content-type")
        if ctype is not None:
            self.requestHeaders.removeHeader(b"content-type")
        super().requestReceived(command, path, version)

    def process(self) -> None:
        if not self.refused:
            super().process()

    def _refuse_early(self, exc: DomainError) -> None:
        self.refused = True
        # the request line is in the channel until the request is processed (twisted sets
        # self.uri only then): read it there to count the refusal per endpoint
        uri = getattr(self.channel, "_path", None) or b""
        path = uri.split(b"?", 1)[0].decode("latin-1", "replace")
        on_refusal = self.channel.site.on_refusal
        reason = error_status(exc)[1]
        if on_refusal is not None and reason is not None:
            on_refusal(path, reason, str(exc))
        self.channel.transport.write(early_answer(exc))
        self.channel.loseConnection()


class OrchestratorSite(Site):
    """A ``Site`` that sets TCP_NODELAY on every connection and keeps idle connections for
    12 hours (the real client never reconnects), and refuses early what
    :class:`OrchestratorRequest` refuses. Access logging goes through the agent's request
    log instead of Twisted's.

    Args:
        resource: the root resource.
        max_body_bytes: the body limit.
        allowed_clients: client networks served (None: all).
        on_refusal: as for :class:`OrchestratorResource`.
        reactor: the reactor the site runs on (its timeouts): the state's thread's.
    """

    requestFactory = OrchestratorRequest

    def __init__(
        self,
        resource: Resource,
        timeout: float = 12 * 3600,
        max_body_bytes: int = MAX_BODY_BYTES,
        allowed_clients: ClientAllowList | None = None,
        on_refusal: OnRefusal | None = None,
        reactor=None,
    ) -> None:
        super().__init__(resource, timeout=timeout, reactor=reactor)
        self.max_body_bytes = max_body_bytes
        self.allowed_clients = allowed_clients
        self.on_refusal = on_refusal

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
