"""The front API of the reference (its GlitchflowAPI) on twisted.web, in the agent's reactor.

The paths, bodies, ``resp`` values, keys and the 200 answers the clients depend on are the
reference's; what it got wrong is fixed (bad input is a 4xx with a JSON reason, a failure is
a 5xx that says what failed, never FROZEN). Domain errors carry a reason code; the one table
:data:`STATUS_OF_REASON` maps them to HTTP status codes.
"""

from __future__ import annotations

import inspect
import json
import time
from collections.abc import Callable

from twisted.internet import defer
from twisted.web import resource, server

from ...runtime import QueueFull, WorkerStopped
from ...runtime.http import ClientAllowList, limited_request_factory
from . import page, rules
from .service import BufferService
from .storage import StorageError

#: Reason code -> HTTP status of a refused request. Anything not listed is 422 (a field).
STATUS_OF_REASON = {
    "body_too_large": 413,
    "empty_body": 400,
    "not_utf8": 400,
    "malformed_json": 400,
    "not_an_object": 400,
    "token_required": 401,
    "token_refused": 403,
    "client_not_allowed": 403,
    "not_found": 404,
    "method_not_allowed": 405,
    "busy": 503,
    "storage_error": 500,
    "internal_error": 500,
}

CREATED_BODY = '{{"code":"RES_CREATE","body":"Written {name}for {size} bytes"}}'
CLEANED_BODY = '{"code":"STAT_UPD","body":"Buffer cleaned"}'
FROZEN_BODY = "Datastore frozen."

GET, POST = ("GET",), ("POST",)


def status_of(reason: str) -> int:
    return STATUS_OF_REASON.get(reason, 422)


def refusal(reason: str, detail: str) -> tuple[int, dict]:
    status = status_of(reason)
    resp = "ERROR" if status >= 500 else "REFUSED"
    return status, {"resp": resp, "reason": reason, "detail": detail}


class FrontAPI:
    """Routes a request to the :class:`BufferService`; answers ``(status, body)`` (a dict
    for JSON, bytes for HTML) through a Deferred. Free of twisted.web's Request, so tests
    drive it directly.

    Args:
        service: the buffer.
        tokens: with a ``--token-file``, ``/train`` and ``/cleanbuf`` need one of its tokens.
        allow: the client allow-list.
    """

    def __init__(
        self,
        service: BufferService,
        tokens: rules.TokenSet | None = None,
        allow: ClientAllowList | None = None,
    ) -> None:
        self.service = service
        self.tokens = tokens
        self.allow = allow or ClientAllowList()
        self.routes: dict[str, tuple[tuple[str, ...], Callable]] = {
            "/": (GET, self._page),
            "/dspage": (GET, self._page),
            "/stats": (GET, self._stats),
            "/desc": (GET, self._desc),
            "/dumpbuf": (GET, self._dumpbuf),
            "/train": (POST, self._train),
            "/streamdata": (POST, self._streamdata),
            "/cleanbuf": (POST, self._cleanbuf),
        }

    def handle(
        self,
        method: str,
        path: str,
        raw: bytes,
        client: str | None = None,
        authorization: str | None = None,
        too_large: bool = False,
    ) -> defer.Deferred:
        """Answer one request: a Deferred firing with ``(status, body)``; never fails."""
        try:
            d = self._dispatch(method, path, raw, client, authorization, too_large)
        except Exception as e:
            d = defer.fail(e)
        return d.addErrback(self._failure, path)

    def _dispatch(self, method, path, raw, client, authorization, too_large) -> defer.Deferred:
        path = path.split("?", 1)[0]
        if len(path) > 1:
            path = path.rstrip("/")
        if not self.allow.allows(client):
            raise rules.BadInput("client_not_allowed", f"client {client} is not allowed")
        route = self.routes.get(path)
        if route is None:
            raise rules.BadInput("not_found", f"no endpoint {path} (see {sorted(self.routes)})")
        methods, handler = route
        if method == "HEAD":
            method = "GET"
        if method not in methods:
            raise rules.BadInput("method_not_allowed", f"{method} not allowed on {path}")
        if too_large:
            raise rules.BadInput("body_too_large", "the body is over the size limit")
        result = handler(raw, authorization)
        return result if isinstance(result, defer.Deferred) else defer.succeed(result)

    def _failure(self, failure, path: str) -> tuple[int, dict]:
        e = failure.value
        if isinstance(e, rules.BadInput):
            reason, detail = e.reason, str(e)
        elif isinstance(e, (QueueFull, WorkerStopped)):
            reason, detail = "busy", f"the buffer is busy or stopping: {e}"
        elif isinstance(e, StorageError):
            reason, detail = "storage_error", str(e)
        else:
            reason, detail = "internal_error", f"{type(e).__name__}: {e}"
        self.service.refuse(reason)
        if status_of(reason) >= 500:
            self.service.failures += 1
            self.service.report("error", f"{path}: {detail}")
        status, body = refusal(reason, detail)
        if path.rstrip("/") == "/cleanbuf" and status >= 500:
            body = {
                "resp": "FS ERR",
                "body": "Broken FS",
                **{k: body[k] for k in ("reason", "detail")},
            }
        return status, body

    # ---- endpoints ---------------------------------------------------------------------

    def _stats(self, raw, auth):
        c = self.service.counts
        return 200, {"n_itm": c.n_itm, "buff_size": c.buff_size}

    def _desc(self, raw, auth):
        return 200, {"resp": rules.FROZEN if self.service.frozen else rules.OPERATIONAL}

    def _dumpbuf(self, raw, auth):
        return self.service.names().addCallback(lambda names: (200, {"nmlist": names}))

    def _page(self, raw, auth):
        d = self.service.page_data()
        return d.addCallback(
            lambda data: (200, page.render(data, self.service.max_size, time.time()))
        )

    def _streamdata(self, raw, auth):
        def answer(result):
            if not result.stored:
                return 200, {"resp": rules.FROZEN, "body": FROZEN_BODY}
            return 200, {
                "resp": "CREATED",
                "body": CREATED_BODY.format(name=result.name, size=result.size),
            }

        return self.service.write(raw).addCallback(answer)

    def _token_hash(self, token: str | None, auth: str | None) -> str | None:
        token = token or rules.bearer_token(auth)
        if self.tokens is None:
            return rules.token_hash(token) if token else None
        return self.tokens.check(token)

    def _train(self, raw, auth):
        req = rules.parse_train(raw)
        digest = self._token_hash(req.token, auth)

        def answer(result):
            if result.frozen:
                return 200, {"resp": rules.FROZEN, "n_f": result.n_f, "bt_wrt": result.bt_wrt}
            return 200, {"resp": "WAITING"}

        return self.service.train(req.user, digest).addCallback(answer)

    def _cleanbuf(self, raw, auth):
        token = rules.parse_clean(raw)
        if self.tokens is not None:
            self._token_hash(token, auth)
        return self.service.clean().addCallback(
            lambda result: (
                200,
                {"resp": "CLEANED", "body": CLEANED_BODY, "archive": result.archive["name"]},
            )
        )


class FrontResource(resource.Resource):
    """The twisted.web face of :class:`FrontAPI` (a leaf: it routes every path)."""

    isLeaf = True

    def __init__(self, api: FrontAPI, log_request: Callable | None = None) -> None:
        super().__init__()
        self.api = api
        self.log_request = log_request

    def render(self, request):
        t0 = time.perf_counter()
        method = request.method.decode("latin-1")
        path = request.path.decode("latin-1", "replace")
        raw = request.content.read() if request.content is not None else b""
        auth = request.getHeader(b"authorization")
        finished = []
        request.notifyFinish().addBoth(lambda _: finished.append(True))

        def send(answer):
            status, body = answer
            if finished:
                return  # the client went away
            if isinstance(body, bytes):
                request.setHeader(b"content-type", b"text/html; charset=utf-8")
            else:
                body = json.dumps(body).encode()
                request.setHeader(b"content-type", b"application/json")
            request.setResponseCode(status)
            request.setHeader(b"content-length", str(len(body)).encode())
            request.write(body)
            request.finish()
            if self.log_request is not None:
                self.log_request(method, path, status, time.perf_counter() - t0)

        self.api.handle(
            method,
            path,
            raw,
            client=getattr(request.getClientAddress(), "host", None),
            authorization=auth.decode("latin-1") if auth else None,
            too_large=getattr(request, "body_too_large", False),
        ).addCallback(send)
        return server.NOT_DONE_YET


#: Twisted 25 and later parse the Content-Type of every POST with the email package in case
#: the body is a form (a tenth of the reactor's time per write in the benchmark); this API
#: reads JSON only, so it turns that off where Twisted lets it.
_FORMS_OPTIONAL = "parsePOSTFormSubmission" in inspect.signature(server.Request).parameters


def front_request_factory(max_body_bytes: int) -> type[server.Request]:
    """The body-limited request of the runtime, not parsing bodies as forms."""
    limited = limited_request_factory(max_body_bytes)
    if not _FORMS_OPTIONAL:
        return limited

    class FrontRequest(limited):
        def __init__(self, *args, **kwargs) -> None:
            kwargs.setdefault("parsePOSTFormSubmission", False)
            super().__init__(*args, **kwargs)

    return FrontRequest


class FrontSite(server.Site):
    """A ``Site`` with body-limited requests and TCP_NODELAY; access lines go through the
    agent's request log (when asked for), not Twisted's."""

    def __init__(self, res: resource.Resource, max_body_bytes: int, timeout: float = 3600) -> None:
        super().__init__(res, requestFactory=front_request_factory(max_body_bytes), timeout=timeout)

    def buildProtocol(self, addr):
        proto = super().buildProtocol(addr)
        made = proto.connectionMade

        def connection_made():
            made()
            try:
                proto.transport.setTcpNoDelay(True)
            except Exception:  # not TCP
                pass

        proto.connectionMade = connection_made
        return proto

    def log(self, request) -> None:
        pass
