"""The HTTP API's routing and validation, driven directly (no reactor, no socket)."""

import json
import sqlite3

import pytest

from socs_agents.agents.file_orchestrator.http_api import OrchestratorAPI
from socs_agents.agents.file_orchestrator.state import State


class Driven:
    """The API and its state, driven in the test's thread (no reactor, no worker)."""

    def __init__(self, state):
        self.state = state
        self.api = OrchestratorAPI(lambda: {"counts": state.counts()})

    def handle(self, method, path, raw):
        return self.api.handle(self.state, method, path, raw)


@pytest.fixture
def api(tmp_path):
    state = State(str(tmp_path / "s.db"))
    yield Driven(state)
    state.close()


def call(api, method, path, body=None, raw=None):
    if raw is None:
        raw = b"" if body is None else json.dumps(body).encode()
    return api.handle(method, path, raw)


NEW = {
    "host": "daq1",
    "file": "/data/run1_0.hdf5",
    "run_number": 1,
    "record_type": "TriggerRecord",
    "record_ids": [[1, 0], [2, 0]],
}
DONE = {
    "file": "",
    "run_number": 1,
    "trigger_number": 1,
    "sequence_number": 0,
    "type": "TriggerRecord",
}


def test_client_endpoints_round_trip(api):
    assert call(api, "POST", "/new-file", NEW)[0] == 200
    assert call(api, "POST", "/read-next-triggerrecord", {"host": "daq1", "file": ""})[0] == 429
    status, body = call(api, "GET", "/request-tr")
    assert status == 200 and body["credits"] == 1
    assert call(api, "POST", "/read-next-triggerrecord", {"host": "daq9", "file": ""})[0] == 404
    status, body = call(api, "POST", "/read-next-triggerrecord", {"host": "daq1", "file": ""})
    assert status == 200
    assert body == {
        "file": "/data/run1_0.hdf5",
        "run_number": 1,
        "trigger_number": 1,
        "sequence_number": 0,
        "type": "TriggerRecord",
    }
    assert call(api, "POST", "/complete", DONE)[0] == 200
    assert call(api, "POST", "/complete", dict(DONE, trigger_number=77))[0] == 404
    assert call(api, "GET", "/request-ts")[0] == 200
    assert call(api, "POST", "/read-next-timeslice", {"host": "daq1", "file": ""})[0] == 404


def test_readme_aliases(api):
    assert call(api, "POST", "/new-file", NEW)[0] == 200
    assert call(api, "GET", "/request-tr")[0] == 200
    # GET with the host in the body, as the README says
    status, body = call(api, "GET", "/read-next-tr", {"host": "daq1"})
    assert status == 200 and body["trigger_number"] == 1
    # tr-complete without "type" or "file"
    status, _ = call(
        api, "POST", "/tr-complete", {"run_number": 1, "trigger_number": 1, "sequence_number": 0}
    )
    assert status == 200
    status, body = call(api, "GET", "/stats")
    assert status == 200 and body["counts"]["done"] == 1
    status, body = call(api, "GET", "/")
    assert status == 200 and "/read-next-triggerrecord" in body["endpoints"]
    status, body = call(api, "POST", "/remove-file", {"host": "daq1", "file": NEW["file"]})
    assert status == 200 and body["withdrawn"] == 1


def test_unknown_path_and_method(api):
    status, body = call(api, "GET", "/nope")
    assert status == 404 and "error" in body
    assert call(api, "GET", "/complete")[0] == 405
    assert call(api, "DELETE", "/new-file", NEW)[0] == 405
    # a trailing slash or a query string do not matter
    assert call(api, "GET", "/stats/?x=1")[0] == 200


BAD = [
    ("/new-file", b"{nope"),
    ("/new-file", b"\xff\xfe"),
    ("/new-file", b"[1, 2]"),
    ("/new-file", b""),
    ("/new-file", {k: v for k, v in NEW.items() if k != "host"}),
    ("/new-file", {k: v for k, v in NEW.items() if k != "record_ids"}),
    ("/new-file", dict(NEW, host=3)),
    ("/new-file", dict(NEW, host="")),
    ("/new-file", dict(NEW, file="relative.hdf5")),
    ("/new-file", dict(NEW, file="/data/x.hdf5.writing")),
    ("/new-file", dict(NEW, run_number="1")),
    ("/new-file", dict(NEW, run_number=True)),
    ("/new-file", dict(NEW, run_number=-1)),
    ("/new-file", dict(NEW, run_number=2**64)),
    ("/new-file", dict(NEW, record_type="Slice")),
    ("/new-file", dict(NEW, record_ids="1,0")),
    ("/new-file", dict(NEW, record_ids=[[1, 0], [2]])),
    ("/new-file", dict(NEW, record_ids=[[1, 0], [2, "0"]])),
    ("/new-file", dict(NEW, record_ids=[[1, 0], [2, -1]])),
    ("/remove-file", {"file": "/data/run1_0.hdf5"}),
    ("/remove-file", {"host": "daq1", "file": 5}),
    ("/read-next-triggerrecord", b"not json"),
    ("/read-next-triggerrecord", {"file": ""}),
    ("/read-next-triggerrecord", {"host": None, "file": ""}),
    ("/read-next-triggerrecord", {"host": "daq1", "file": 0}),
    ("/read-next-timeslice", b"null"),
    ("/read-next-tr", b""),
    ("/complete", {k: v for k, v in DONE.items() if k != "trigger_number"}),
    ("/complete", dict(DONE, type="SuperRecord")),
    ("/complete", dict(DONE, sequence_number=1.5)),
    ("/complete", dict(DONE, run_number=None)),
    ("/tr-complete", {"run_number": 1}),
]


@pytest.mark.parametrize("path,body", BAD, ids=[f"{p}-{i}" for i, (p, _) in enumerate(BAD)])
def test_bad_input_is_400_and_changes_nothing(api, path, body):
    # something in every state first, so a wrong change would show
    call(api, "POST", "/new-file", NEW)
    call(api, "GET", "/request-tr")
    call(api, "GET", "/request-tr")
    call(api, "POST", "/read-next-triggerrecord", {"host": "daq1", "file": ""})
    dump = list(sqlite3.connect(api.state.db_path).iterdump())
    counts = api.state.counts()
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    status, answer = call(api, "POST" if path != "/read-next-tr" else "GET", path, raw=raw)
    assert status == 400
    assert isinstance(answer["error"], str) and answer["error"]
    assert list(sqlite3.connect(api.state.db_path).iterdump()) == dump
    assert api.state.counts() == counts


@pytest.mark.parametrize(
    "value,expected", [("1", True), ("2", True), ("0", False), ("", False), ("yes", False)]
)
def test_the_reference_debug_switch(monkeypatch, value, expected):
    from socs_agents.agents.file_orchestrator.options import env_debug

    monkeypatch.setenv("ORCHESTRATOR_FLASK_DEBUG", value)
    assert env_debug() is expected
    monkeypatch.delenv("ORCHESTRATOR_FLASK_DEBUG")
    assert env_debug() is False


def test_remote_paths_for_suprsync():
    from socs_agents.agents.file_orchestrator.options import remote_path_for

    assert remote_path_for("/data/daq/run1/a.hdf5", ["/data/other", "/data/daq/"]) == "run1/a.hdf5"
    assert remote_path_for("/elsewhere/a.hdf5", ["/data/daq"]) == "a.hdf5"
    assert remote_path_for("/data/daqx/a.hdf5", ["/data/daq"]) == "a.hdf5"
