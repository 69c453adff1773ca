"""The web API's answers (WriterAPI, no Twisted): routes, HTTP error statuses, --http-allow."""

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from socs_agents.agents.daq_writer.engine import EngineConfig, WriteEngine
from socs_agents.agents.daq_writer.http_api import Answer, Wait, WriterAPI, rest_acquisition
from socs_agents.agents.daq_writer.outcomes import OutcomeStore
from socs_agents.agents.daq_writer.requests import WriterLimits
from socs_agents.dev.testing import free_port


@pytest.fixture
def api(tmp_path):
    root = tmp_path / "data"
    root.mkdir()
    store = OutcomeStore(str(tmp_path / "s.sqlite"))
    engine = WriteEngine(
        EngineConfig(f"tcp://127.0.0.1:{free_port()}", WriterLimits(str(root), 100)), store
    )
    api = WriterAPI(engine, default_timeout=0.2, allow=["127.0.0.0/8", "10.1.0.0/16"])
    api.root = root
    yield api
    engine.shutdown()
    store.close()


def post(api, path, body, host="127.0.0.1"):
    return api.handle("POST", path, json.dumps(body).encode(), host)


def test_status_ready_shape(api):
    a = api.handle("GET", "/writer/status", b"", "127.0.0.1")
    assert a.status == 200 and a.body["status"] == "ok" and a.body["message"] == "Writer is READY"
    assert a.body["writer"]["state"] == "READY"
    assert set(a.body["writer"]["acquisition"]) >= {"state", "message", "info", "stats"}


def test_allow_list(api):
    assert api.handle("GET", "/writer/status", b"", "10.1.2.3").status == 200
    assert api.handle("GET", "/writer/status", b"", "::ffff:127.0.0.1").status == 200
    for host in ("10.2.0.1", "192.168.1.1", "::1", "not-an-ip"):
        a = api.handle("GET", "/writer/status", b"", host)
        assert a.status == 403 and "--http-allow" in a.body["message"]


def test_routes_and_methods(api):
    assert api.handle("GET", "/nope", b"", "127.0.0.1").status == 404
    assert api.handle("GET", "/writer/write_sync", b"", "127.0.0.1").status == 405
    assert api.handle("POST", "/writer/status", b"", "127.0.0.1").status == 405
    logs = api.handle("GET", "/daq/logs/3", b"", "127.0.0.1")
    assert logs.status == 200 and logs.body["logs"] == []


def test_bad_bodies_are_422_and_refusals_400(api):
    assert api.handle("POST", "/writer/write_async", b"{x", "127.0.0.1").status == 422
    assert post(api, "/writer/write_async", [1]).status == 422
    a = post(api, "/writer/write_async", {"n_images": 1})
    assert a.status == 422 and "output_file" in a.body["message"]
    a = post(api, "/writer/write_async", {"n_images": 0, "output_file": str(api.root / "a.h5")})
    assert a.status == 400 and a.body["status"] == "error" and ">= 1" in a.body["message"]
    a = post(api, "/writer/write_sync", {"n_images": 1, "output_file": "/etc/x.h5"})
    assert a.status == 400 and "outside the data root" in a.body["message"]


def test_async_busy_then_sync_wait_outcome_is_an_http_error(api):
    body = {"n_images": 2, "output_file": str(api.root / "a.h5"), "run_id": 17}
    a = post(api, "/writer/write_async", body)
    assert a.status == 200 and a.body["writer"]["state"] == "WRITING"
    assert a.body["writer"]["acquisition"]["info"]["run_id"] == 17
    busy = post(api, "/writer/write_async", {**body, "output_file": str(api.root / "b.h5")})
    assert busy.status == 409 and "a write is running" in busy.body["message"]
    stop = api.handle("POST", "/writer/stop", b"", "127.0.0.1")
    assert isinstance(stop, Wait) and stop.acquisition.done.wait(5)
    done = stop.finish(stop.acquisition.outcome)
    assert done.status == 200 and done.body["writer"]["acquisition"]["state"] == "FAILED"
    assert done.body["writer"]["acquisition"]["message"].startswith("Interrupted.")
    wait = post(api, "/writer/write_sync", {**body, "output_file": str(api.root / "c.h5")})
    assert isinstance(wait, Wait) and wait.acquisition.done.wait(5)
    timeout = wait.finish(wait.acquisition.outcome)
    assert timeout.status == 504 and "timeout" in timeout.body["message"]
    still = wait.finish(None)
    assert still.status == 202 and "still running" in still.body["message"]


def test_rest_states():
    base = {"output_file": "/d/x.h5", "n_images": 3, "run_id": "5", "message": "m"}
    assert rest_acquisition({**base, "state": "completed"})["message"] == "Completed."
    assert rest_acquisition({**base, "state": "aborted"})["state"] == "FAILED"
    assert rest_acquisition({**base, "state": "timeout"})["message"] == "ERROR: m"
    assert rest_acquisition({**base, "state": "acquiring_images"})["state"] == "ACQUIRING_IMAGES"
    assert rest_acquisition({**base, "state": "completed"})["info"]["run_id"] == 5


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.binary(max_size=100), st.sampled_from(["/writer/write_sync", "/writer/write_async"]))
def test_any_body_gets_an_answer_never_an_exception(api, raw, path):
    a = api.handle("POST", path, raw, "127.0.0.1")
    assert isinstance(a, Answer | Wait)
    if isinstance(a, Answer):
        assert a.status in (200, 400, 409, 422) and a.body["status"] in ("ok", "error")
    if isinstance(a, Wait) or a.status == 200:
        api.engine.stop("test")
        api.engine.current.done.wait(5)
