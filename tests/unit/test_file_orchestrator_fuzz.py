"""Hypothesis against the HTTP input rules: parse_body, every check_* validator, each
endpoint's body rules (driven without the reactor on a real SQLite state), the client
network check and the content-type rule. Whatever arrives: a domain answer (never another
exception, never a 500), and a refused request changes nothing."""

import ipaddress
import json
import sqlite3

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from socs_agents.agents.file_orchestrator.http_api import (
    BadRequest,
    OrchestratorAPI,
    check_path,
    check_record_ids,
    check_str,
    check_type,
    check_uint,
    complete_args,
    content_type_ok,
    new_file_args,
    parse_body,
    read_next_args,
    remove_file_args,
)
from socs_agents.agents.file_orchestrator.state import MAX_ID, DomainError, Refused, State
from socs_agents.runtime.http import ClientAllowList

json_leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
)
json_value = st.recursive(
    json_leaf,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=20,
)
FIELDS = [
    "host",
    "file",
    "run_number",
    "record_type",
    "record_ids",
    "trigger_number",
    "sequence_number",
    "type",
]
# bodies that look like the real ones: the endpoints' field names with any values
near_body = st.dictionaries(st.sampled_from(FIELDS), json_value, max_size=8)


def raw_bodies():
    return st.one_of(
        st.binary(max_size=200),
        json_value.map(lambda v: json.dumps(v).encode()),
        near_body.map(lambda v: json.dumps(v).encode()),
        st.integers(min_value=1, max_value=50_000).map(lambda n: b"[" * n + b"]" * n),
        st.integers(min_value=1, max_value=50_000).map(lambda n: b'{"a":' * n + b"1" + b"}" * n),
        st.integers(min_value=4300, max_value=6000).map(lambda n: b'{"run_number": 1' + b"0" * n),
    )


@settings(max_examples=400, deadline=None)
@given(raw_bodies(), st.booleans())
def test_parse_body_answers_a_dict_or_bad_request(raw, required):
    try:
        body = parse_body(raw, required)
    except BadRequest as e:
        assert str(e)
        return
    assert isinstance(body, dict)


def test_deep_nesting_is_400_not_recursion_error():
    for raw in (b"[" * 100_000 + b"]" * 100_000, b'{"a":' * 100_000 + b"1" + b"}" * 100_000):
        with pytest.raises(BadRequest, match="nested too deeply"):
            parse_body(raw)


VALIDATORS = [
    lambda b: check_str(b, "host"),
    lambda b: check_str(b, "host", default="", nonempty=False),
    lambda b: check_str(b, "host", nonempty=True),
    lambda b: check_uint(b, "run_number"),
    lambda b: check_type(b, "type", default="TriggerRecord"),
    lambda b: check_type(b, "record_type"),
    lambda b: check_path(b),
    lambda b: check_record_ids(b),
    lambda b: new_file_args(b),
    lambda b: remove_file_args(b),
    lambda b: read_next_args(b),
    lambda b: complete_args(b),
]


@settings(max_examples=300, deadline=None)
@given(near_body, st.sampled_from(range(len(VALIDATORS))))
def test_every_validator_answers_a_value_or_bad_request(body, which):
    try:
        value = VALIDATORS[which](body)
    except BadRequest as e:
        assert str(e)
        return
    # what passes is what SQLite and the state take
    for v in value.values() if isinstance(value, dict) else [value]:
        if isinstance(v, int):
            assert 0 <= v <= MAX_ID and not isinstance(v, bool)
        if isinstance(v, str):
            v.encode("utf-8")
            assert "\x00" not in v


def test_lone_surrogates_are_400():
    with pytest.raises(BadRequest, match="Unicode"):
        check_str(json.loads('{"host": "\\ud800"}'), "host")


ENDPOINTS = [
    ("POST", "/new-file"),
    ("POST", "/remove-file"),
    ("GET", "/request-tr"),
    ("POST", "/request-ts"),
    ("POST", "/read-next-triggerrecord"),
    ("GET", "/read-next-tr"),
    ("POST", "/read-next-timeslice"),
    ("POST", "/complete"),
    ("POST", "/tr-complete"),
    ("GET", "/stats"),
    ("PUT", "/new-file"),
    ("GET", "/nope"),
]


@pytest.fixture(scope="module")
def driven(tmp_path_factory):
    state = State(str(tmp_path_factory.mktemp("fuzz") / "s.db"))

    def only_local_root(args):
        if args["host"] == "me" and not args["path"].startswith("/ok/"):
            raise Refused(f"{args['path']!r} outside", "outside_allowed_root")

    api = OrchestratorAPI(lambda: {"counts": state.counts()}, check_new_file=only_local_root)
    state.add_file("daq1", "/d/a.hdf5", 1, "TriggerRecord", [(n, 0) for n in range(50)])
    state.request("TriggerRecord", 10)
    yield api, state
    state.close()


@settings(
    max_examples=600, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.sampled_from(ENDPOINTS), raw_bodies())
def test_every_endpoint_answers_json_and_a_refusal_changes_nothing(driven, endpoint, raw):
    api, state = driven
    method, path = endpoint
    dump = list(sqlite3.connect(state.db_path).iterdump())
    counts = state.counts()
    try:
        status, answer = api.handle(state, method, path, raw)
    except DomainError as e:  # pragma: no cover - handle() maps every domain error
        pytest.fail(f"unmapped {e!r}")
    json.dumps(answer)  # an answer that serialises
    assert status in (200, 400, 403, 404, 405, 429), (status, answer)
    if status != 200:
        assert isinstance(answer["error"], str) and answer["error"]
        if status in (400, 403, 405):
            assert list(sqlite3.connect(state.db_path).iterdump()) == dump
            assert state.counts() == counts


def test_local_file_outside_the_roots_is_403_with_a_reason(driven):
    api, state = driven
    body = {
        "host": "me",
        "file": "/etc/passwd.hdf5",
        "run_number": 1,
        "record_type": "TriggerRecord",
        "record_ids": [[1, 0]],
    }
    before = state.counts()
    status, answer = api.handle(state, "POST", "/new-file", json.dumps(body).encode())
    assert status == 403 and answer["reason"] == "outside_allowed_root"
    assert state.counts() == before


# ---- client networks and content types -------------------------------------------------

LOOPBACK = ClientAllowList.from_option(None)


def test_default_networks_are_loopback_only():
    """The orchestrator's --http-allow is the runtime's: loopback unless the site says."""
    allows = LOOPBACK.allows
    assert allows("127.0.0.1") and allows("127.9.8.7") and allows("::1")
    assert allows("::ffff:127.0.0.1")  # IPv4 on an IPv6 socket
    assert not allows("10.0.0.1") and not allows("::ffff:10.0.0.1")
    assert not allows("fe80::1%eth0") and not allows("") and not allows("not-an-address")
    daq = ClientAllowList.from_option(["10.73.0.0/16", "192.168.1.7"])
    assert daq.allows("10.73.4.5") and daq.allows("192.168.1.7")
    assert not daq.allows("10.74.0.1") and not daq.allows("192.168.1.8")
    with pytest.raises(ValueError):
        ClientAllowList(["10.0.0.0/33"])


@settings(max_examples=300, deadline=None)
@given(st.ip_addresses())
def test_client_check_matches_ipaddress(addr):
    nets = ClientAllowList(["10.0.0.0/8", "fd00::/8"])
    expected = any(addr.version == n.version and addr in n for n in nets.networks)
    assert nets.allows(str(addr)) is expected
    assert isinstance(ipaddress.ip_address(str(addr)), type(addr))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=60))
def test_content_type_rule_never_raises(value):
    assert content_type_ok(value) in (True, False)


def test_content_types():
    assert content_type_ok(None)
    assert content_type_ok(b"application/json")
    assert content_type_ok(b"Application/JSON; charset=utf-8")
    assert content_type_ok(b"application/x-www-form-urlencoded")  # curl -d, as the README
    assert content_type_ok(b"application/problem+json")
    assert not content_type_ok(b"multipart/form-data; boundary=x")
    assert not content_type_ok(b"application/xml")
    assert not content_type_ok(b"application/octet-stream")


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(
        st.integers(min_value=-(2**80), max_value=2**80),
        st.floats(allow_nan=True, allow_infinity=True),
        st.booleans(),
        st.none(),
        st.text(max_size=5),
    )
)
def test_integer_task_parameters_check_never_raises(value):
    from socs_agents.agents.file_orchestrator.options import uint_param

    ok = uint_param(value)
    assert ok is (isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_ID)
