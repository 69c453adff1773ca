"""The reference's web API (std_daq REST v2, what ``std_daq_client`` 1.3 calls), served by
the agent with twisted.web.

``POST /writer/write_sync``, ``POST /writer/write_async``, ``POST /writer/stop``,
``GET /writer/status``, ``GET /daq/logs/{n}``. Bodies as the reference's; unlike it, an
error is an HTTP error status (the one table :data:`HTTP_STATUS`) with the JSON body
``{"status": "error", "message": ...}``, and only clients from ``--http-allow`` are served.

:class:`WriterAPI` is plain (no Twisted): it turns a request into an :class:`Answer`, or a
:class:`Wait` for a running acquisition; :class:`WriterResource` is the twisted.web face.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from twisted.internet import defer
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from ...runtime.http import LOOPBACK, ClientAllowList
from .engine import ABORTED, COMPLETED, TIMEOUT, Acquisition, Busy, WriteEngine
from .requests import RequestRefused

#: Longest wait of write_sync (the reference's): then 202 and the acquisition goes on.
SYNC_TIMEOUT_S = 60.0
STOP_WAIT_S = 5.0


class BadBody(ValueError):
    """A body that is not the JSON object the endpoint takes (the reference's 422)."""


#: Domain errors and outcomes -> HTTP status: the only place that knows the codes.
HTTP_STATUS = {
    BadBody: 422,
    RequestRefused: 400,
    Busy: 409,
    COMPLETED: 200,
    ABORTED: 409,
    TIMEOUT: 504,
    "failed": 500,
    "interrupted": 500,
    "still_running": 202,
    "forbidden": 403,
    "not_found": 404,
    "bad_method": 405,
}

REST_STATES = {
    "waiting_images": "WAITING_IMAGES",
    "acquiring_images": "ACQUIRING_IMAGES",
    "flushing_images": "FLUSHING_IMAGES",
}


@dataclass
class Answer:
    status: int
    body: dict


@dataclass
class Wait:
    """Answer once ``acquisition`` has ended, or after ``timeout`` s (``finish(None)``)."""

    acquisition: Acquisition
    timeout: float
    finish: Callable[[dict | None], Answer]


def _run_id(value):
    return int(value) if isinstance(value, str) and value.isdigit() else value


def rest_acquisition(data: dict | None) -> dict:
    """An outcome or progress dict in the reference's ``acquisition`` shape."""
    if data is None:
        return {
            "state": "FINISHED",
            "message": "No acquisition yet.",
            "info": {},
            "stats": {},
        }
    state = data["state"]
    if state in REST_STATES:
        rest, message = REST_STATES[state], "Writing."
    elif state == COMPLETED:
        rest, message = "FINISHED", "Completed."
    elif state == ABORTED:
        rest, message = "FAILED", f"Interrupted. {data['message']}"
    else:
        rest, message = "FAILED", f"ERROR: {data['message']}"
    return {
        "state": rest,
        "message": message,
        "info": {
            "output_file": data["output_file"],
            "n_images": data["n_images"],
            "run_id": _run_id(data["run_id"]),
        },
        "stats": {
            "n_write_completed": data.get("n_written", 0),
            "n_write_requested": data.get("n_written", 0),
            "start_time": data.get("start_time"),
            "stop_time": data.get("stop_time"),
        },
        "outcome": state,
    }


def parse_body(raw: bytes) -> dict:
    try:
        body = json.loads(raw or b"{}")
    except ValueError as e:
        raise BadBody(f"body is not JSON: {e}") from None
    if not isinstance(body, dict):
        raise BadBody("body must be a JSON object")
    return body


class WriterAPI:
    """Requests -> answers, over a :class:`WriteEngine`.

    Args:
        allow: networks (CIDR) whose clients are served; others get 403.
    """

    def __init__(
        self,
        engine: WriteEngine,
        default_timeout: float,
        allow: ClientAllowList | Iterable[str] = LOOPBACK,
        sync_timeout: float = SYNC_TIMEOUT_S,
    ) -> None:
        self.engine = engine
        self.default_timeout = default_timeout
        self.allow = allow if isinstance(allow, ClientAllowList) else ClientAllowList(allow)
        self.sync_timeout = sync_timeout

    def allowed(self, host: str) -> bool:
        return self.allow.allows(host)

    def error(self, key, message: str, **extra) -> Answer:
        return Answer(HTTP_STATUS[key], {"status": "error", "message": message, **extra})

    def writer_status(self) -> dict:
        status = self.engine.status()
        if status["current"] is not None:
            return {"state": "WRITING", "acquisition": rest_acquisition(status["current"])}
        last = status["last"][0] if status["last"] else None
        return {"state": "READY", "acquisition": rest_acquisition(last)}

    def ok(self, message: str, **extra) -> Answer:
        return Answer(200, {"status": "ok", "message": message, **extra})

    def handle(self, method: str, path: str, raw: bytes, host: str) -> Answer | Wait:
        if not self.allowed(host):
            return self.error("forbidden", f"client {host} is not in --http-allow")
        routes = {
            "/writer/write_sync": ("POST", lambda: self._write(raw, sync=True)),
            "/writer/write_async": ("POST", lambda: self._write(raw, sync=False)),
            "/writer/stop": ("POST", self._stop),
            "/writer/status": ("GET", self._status),
        }
        logs = re.fullmatch(r"/daq/logs/(\d+)", path)
        if logs:
            routes[path] = ("GET", lambda: self._logs(int(logs.group(1))))
        if path not in routes:
            return self.error("not_found", f"no endpoint {path}")
        want, fn = routes[path]
        if method != want:
            return self.error("bad_method", f"{path} takes {want}, not {method}")
        try:
            return fn()
        except (BadBody, RequestRefused, Busy) as e:
            return self.error(type(e), str(e))

    def _write(self, raw: bytes, sync: bool) -> Answer | Wait:
        body = parse_body(raw)
        missing = [k for k in ("n_images", "output_file") if k not in body]
        if missing:
            raise BadBody(f"field(s) required: {', '.join(missing)}")
        run_id = body.get("run_id")
        acq = self.engine.start(
            body["n_images"],
            body["output_file"],
            body.get("timeout", self.default_timeout),
            time.time_ns() if run_id is None else run_id,
            source="http",
        )
        if not sync:
            return self.ok("Writer started.", writer=self.writer_status())

        def finish(outcome: dict | None) -> Answer:
            writer = self.writer_status()
            if outcome is None:
                return self.error(
                    "still_running",
                    "Your acquisition is still running, just the REST call has ended",
                    writer=writer,
                )
            if outcome["success"]:
                return self.ok(outcome["message"], writer=writer)
            return self.error(outcome["state"], outcome["message"], writer=writer)

        return Wait(acq, self.sync_timeout, finish)

    def _stop(self) -> Answer | Wait:
        acq = self.engine.stop("through the web API: POST /writer/stop")
        if acq is None:
            return self.ok("No acquisition was running.", writer=self.writer_status())

        def finish(outcome: dict | None) -> Answer:
            writer = self.writer_status()
            if outcome is None:
                return self.error("failed", "the writer did not stop within 5 s", writer=writer)
            return self.ok(outcome["message"], writer=writer)

        return Wait(acq, STOP_WAIT_S, finish)

    def _status(self) -> Answer:
        writer = self.writer_status()
        return self.ok(f"Writer is {writer['state']}", writer=writer)

    def _logs(self, n: int) -> Answer:
        recent = self.engine.status()["last"]
        logs = [rest_acquisition(d) for d in recent if d.get("output_file_written")][:n]
        return self.ok(f"{len(logs)} acquisition(s)", logs=logs)


class WriterResource(Resource):
    """twisted.web face of :class:`WriterAPI`; the API's work runs on ``worker`` (it
    touches the disk to validate a request), the waiting on the reactor."""

    isLeaf = True

    def __init__(self, api: WriterAPI, worker, reactor, on_error=None) -> None:
        super().__init__()
        self.api = api
        self.worker = worker
        self.reactor = reactor
        self.on_error = on_error

    def render(self, request):
        method = request.method.decode("latin-1")
        path = request.path.decode("latin-1", "replace")
        raw = request.content.read() if request.content is not None else b""
        host = request.getClientAddress().host
        d = self.worker.submit(self.api.handle, method, path, raw, host)
        d.addCallback(self._wait)
        d.addErrback(self._crashed, path)
        d.addCallback(self._send, request)
        d.addErrback(lambda f: None)  # the client went away
        return NOT_DONE_YET

    def _wait(self, answer: Answer | Wait):
        if isinstance(answer, Answer):
            return answer
        d: defer.Deferred = defer.Deferred()
        timer = self.reactor.callLater(answer.timeout, lambda: d.called or d.callback(None))

        def done(outcome: dict) -> None:
            def fire():
                if timer.active():
                    timer.cancel()
                if not d.called:
                    d.callback(outcome)

            self.reactor.callFromThread(fire)

        answer.acquisition.add_done_callback(done)
        d.addCallback(answer.finish)
        return d

    def _crashed(self, failure, path: str) -> Answer:
        if self.on_error is not None:
            self.on_error(path, failure.value)
        return Answer(500, {"status": "error", "message": f"internal error: {failure.value!r}"})

    def _send(self, answer: Answer, request) -> None:
        request.setResponseCode(answer.status)
        request.setHeader(b"content-type", b"application/json")
        request.write(json.dumps(answer.body).encode())
        request.finish()
