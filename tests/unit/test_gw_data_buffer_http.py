"""The front API on the real service and store (workers, files, SQLite): every endpoint,
body, ``resp`` value and status code of the contract, every refusal with its reason."""

import json
import os
import threading

import pytest

from socs_agents.agents.gw_data_buffer import rules
from socs_agents.agents.gw_data_buffer.http_api import FrontAPI, status_of
from socs_agents.agents.gw_data_buffer.service import BufferConfig, BufferService
from socs_agents.runtime.http import ClientAllowList


class DirectReactor:
    """Delivers worker results in the worker's thread (the tests wait on an Event)."""

    def callFromThread(self, f, *args, **kwargs):
        f(*args, **kwargs)


def resolve(d, timeout=20.0):
    done, out = threading.Event(), []
    d.addBoth(lambda v: (out.append(v), done.set()))
    assert done.wait(timeout), "no answer"
    return out[0]


@pytest.fixture
def make(tmp_path):
    made = []

    def build(max_size=1000, tokens=None, allow=(), cleans=None):
        service = BufferService(
            BufferConfig(
                data_dir=str(tmp_path / "vol" / "datavar"),
                archive_dir=str(tmp_path / "vol" / "archive"),
                state_db=str(tmp_path / "gw.db"),
                max_size=max_size,
            ),
            on_clean=cleans.append if cleans is not None else None,
            reactor=DirectReactor(),
        )
        made.append(service)
        api = FrontAPI(service, tokens=tokens, allow=ClientAllowList(allow))

        def call(method, path, raw=b"", **kw):
            kw.setdefault("client", "127.0.0.1")
            return resolve(api.handle(method, path, raw, **kw))

        call.service = service
        return call

    yield build
    for s in made:
        s.stop()


CHUNK = json.dumps({"h": [1e-21, -2e-21, 3.5e-22], "t": [1126259462.0, 0.000244140625]})


def test_streamdata_answers_as_the_reference(make):
    call = make()
    status, answer = call("POST", "/streamdata", CHUNK.encode())
    assert status == 200 and answer["resp"] == "CREATED"
    inner = json.loads(answer["body"])
    assert inner["code"] == "RES_CREATE"
    name = sorted(os.listdir(call.service.store.data_dir))[0]
    size = os.path.getsize(os.path.join(call.service.store.data_dir, name))
    assert inner["body"] == f"Written {name}for {size} bytes"  # sic, as the reference
    assert call("GET", "/stats") == (200, {"n_itm": 1, "buff_size": size})
    assert call("GET", "/dumpbuf") == (200, {"nmlist": [name]})
    assert call("GET", "/desc") == (200, {"resp": "OPERATIONAL"})
    assert call("HEAD", "/stats/")[0] == 200
    assert call("GET", "/stats?x=1")[0] == 200


def test_train_waiting_then_frozen_then_writes_refused(make):
    call = make(max_size=150)
    train = b'{"user": "airflow", "token": "airflow"}'
    assert call("POST", "/train", train) == (200, {"resp": "WAITING"})
    for _ in range(3):
        call("POST", "/streamdata", CHUNK.encode())
    size = call.service.counts.buff_size
    assert call("POST", "/train", train) == (200, {"resp": "FROZEN", "n_f": 3, "bt_wrt": size})
    assert call("POST", "/streamdata", CHUNK.encode()) == (
        200,
        {"resp": "FROZEN", "body": "Datastore frozen."},
    )
    assert call("GET", "/desc") == (200, {"resp": "FROZEN"})
    assert call.service.refusals["frozen"] == 1
    assert call("POST", "/train", train)[1]["n_f"] == 3


def test_cleanbuf_archives_and_unfreezes(make):
    cleans = []
    call = make(max_size=1, cleans=cleans)
    call("POST", "/streamdata", CHUNK.encode())
    call("POST", "/train", b'{"user": "u", "token": "t"}')
    status, answer = call("POST", "/cleanbuf", b'{"msg": "see you space cowboy"}')
    assert status == 200 and answer["resp"] == "CLEANED"
    assert json.loads(answer["body"]) == {"code": "STAT_UPD", "body": "Buffer cleaned"}
    assert cleans and cleans[0]["files"] == 1 and cleans[0]["name"] == answer["archive"]
    assert call("GET", "/stats") == (200, {"n_itm": 0, "buff_size": 0})
    assert call("GET", "/desc") == (200, {"resp": "OPERATIONAL"})


def test_failed_clean_is_fs_err_500_and_changes_nothing(make, tmp_path):
    call = make(max_size=1)
    call("POST", "/streamdata", CHUNK.encode())
    call("POST", "/train", b'{"user": "u", "token": "t"}')
    archive = str(tmp_path / "vol" / "archive")
    os.rmdir(archive)
    with open(archive, "w") as f:
        f.write("x")
    status, answer = call("POST", "/cleanbuf", b'{"msg": "x"}')
    assert status == 500
    assert answer["resp"] == "FS ERR" and answer["reason"] == "storage_error"
    assert call("GET", "/desc") == (200, {"resp": "FROZEN"})
    assert call("GET", "/stats")[1]["n_itm"] == 1


def test_storage_failure_is_reported_as_such_never_frozen(make):
    call = make()
    staging = call.service.store.staging_dir
    os.rmdir(staging)
    with open(staging, "w") as f:
        f.write("x")
    status, answer = call("POST", "/streamdata", CHUNK.encode())
    assert status == 500 and answer["resp"] == "ERROR" and answer["reason"] == "storage_error"
    assert call.service.failures == 1


@pytest.mark.parametrize(
    "method, path, raw, status, reason",
    [
        ("POST", "/streamdata", b"", 400, "empty_body"),
        ("POST", "/streamdata", b"{oops", 400, "malformed_json"),
        ("POST", "/streamdata", b"[]", 400, "not_an_object"),
        ("POST", "/streamdata", b'{"h": [NaN], "t": [0, 1]}', 422, "not_finite"),
        ("POST", "/streamdata", b'{"h": [1], "t": [0, 0]}', 422, "bad_dt"),
        ("POST", "/streamdata", b'{"h": [], "t": [0, 1]}', 422, "empty_h"),
        ("POST", "/streamdata", b'{"h": [1, 2, 3], "t": [0]}', 422, "bad_t_length"),
        ("POST", "/train", b'{"user": "a"}', 422, "missing_token"),
        ("POST", "/cleanbuf", b"{}", 422, "missing_msg"),
        ("GET", "/streamdata", b"", 405, "method_not_allowed"),
        ("POST", "/stats", b"", 405, "method_not_allowed"),
        ("GET", "/stream", b"", 404, "not_found"),  # urls1's wrong path
    ],
)
def test_refusals(make, method, path, raw, status, reason):
    call = make()
    got_status, answer = call(method, path, raw)
    assert (got_status, answer["reason"], answer["resp"]) == (status, reason, "REFUSED")
    assert call.service.refusals[reason] == 1
    assert call("GET", "/stats") == (200, {"n_itm": 0, "buff_size": 0})
    assert os.listdir(call.service.store.data_dir) == []


def test_oversize_body_is_413(make):
    call = make()
    status, answer = call("POST", "/streamdata", b"", too_large=True)
    assert status == 413 and answer["reason"] == "body_too_large"


def test_client_allow_list(make):
    call = make(allow=["10.0.0.0/8"])
    assert call("GET", "/stats", client="10.1.2.3")[0] == 200
    status, answer = call("GET", "/stats", client="127.0.0.1")
    assert status == 403 and answer["reason"] == "client_not_allowed"


def test_tokens_on_train_and_cleanbuf(make):
    call = make(max_size=1, tokens=rules.TokenSet.parse("good\n"))
    call("POST", "/streamdata", CHUNK.encode())
    assert call("POST", "/train", b'{"user": "a", "token": "airflow"}')[0] == 403
    assert call("GET", "/desc")[1]["resp"] == "OPERATIONAL"
    assert call("POST", "/train", b'{"user": "a", "token": "good"}')[1]["resp"] == "FROZEN"
    assert call.service.store.freeze.token_sha256 == rules.token_hash("good")
    assert call("POST", "/cleanbuf", b'{"msg": "x"}')[0] == 401
    assert call("POST", "/cleanbuf", b'{"msg": "x", "token": "bad"}')[0] == 403
    status, _ = call("POST", "/cleanbuf", b'{"msg": "x"}', authorization="Bearer good")
    assert status == 200


def test_status_page_never_shows_the_token(make):
    call = make(max_size=1)
    status, page = call("GET", "/dspage")
    assert status == 200 and b"OPERATIONAL" in page and b"no strain stored yet" in page
    call("POST", "/streamdata", CHUNK.encode())
    call("POST", "/train", b'{"user": "airflow", "token": "very-secret"}')
    status, page = call("GET", "/")
    assert b"FROZEN" in page and b"airflow" in page and b"<svg" in page
    assert b"very-secret" not in page


def test_status_table_is_complete():
    assert status_of("body_too_large") == 413 and status_of("bad_h") == 422
    assert status_of("storage_error") == 500 and status_of("busy") == 503


def test_front_requests_do_not_parse_bodies_as_forms():
    from twisted.web.test.requesthelper import DummyChannel

    from socs_agents.agents.gw_data_buffer import http_api

    req = http_api.front_request_factory(1000)(DummyChannel())
    req.requestHeaders.setRawHeaders(b"content-type", [b"application/x-www-form-urlencoded"])
    req.requestHeaders.setRawHeaders(b"content-length", [b"9"])
    req.gotLength(9)
    req.handleContentChunk(b"a=1&b=2&c")
    req.process = lambda: None  # the resource is not the point here
    req.requestReceived(b"POST", b"/streamdata", b"HTTP/1.1")
    assert req.content.read() == b"a=1&b=2&c"  # the body, unread, for the API
    if http_api._FORMS_OPTIONAL:
        assert req.args == {}  # no form parse (Twisted parses one before 25)
    else:
        assert req.args[b"a"] == [b"1"]


class QueuedReactor:
    """Keeps what the workers hand to the reactor; the test runs it, in the order it picks."""

    def __init__(self):
        self.calls = []
        self.lock = threading.Lock()

    def callFromThread(self, f, *args, **kwargs):
        with self.lock:
            self.calls.append((f, args, kwargs))

    def run(self, index):
        with self.lock:
            f, args, kwargs = self.calls.pop(index)
        f(*args, **kwargs)


def test_frozen_is_answered_only_after_every_write_committed_before_it(tmp_path):
    from socs_agents.dev.testing import wait_for

    reactor = QueuedReactor()
    service = BufferService(
        BufferConfig(
            data_dir=str(tmp_path / "datavar"),
            archive_dir=str(tmp_path / "archive"),
            state_db=str(tmp_path / "gw.db"),
            max_size=1,
        ),
        reactor=reactor,
    )
    try:
        order = []
        service.write(CHUNK.encode()).addCallback(lambda r: order.append(("write", r.stored)))
        # the write is committed and durable; its result waits for the reactor
        wait_for(lambda: reactor.calls, 10, "the write's result")
        assert service.counts.n_itm == 1
        service.train("airflow", None).addCallback(lambda r: order.append(("train", r.frozen)))
        wait_for(lambda: len(reactor.calls) == 2, 10, "the train's result")
        reactor.run(1)  # the reactor sees the freeze first ...
        assert order == []  # ... and holds FROZEN: the write before it is not answered yet
        reactor.run(0)
        assert order == [("write", True), ("train", True)]
        # a write after the freeze stores nothing and needs no wait
        service.write(CHUNK.encode()).addCallback(lambda r: order.append(("write", r.stored)))
        wait_for(lambda: reactor.calls, 10, "the frozen write's result")
        reactor.run(0)
        assert order[-1] == ("write", False) and service.counts.n_itm == 1
    finally:
        service.stage_pool.stop(drain=True, timeout=5)
        service.serial.call(service.store.close).result(5)
        service.serial.stop(drain=True, timeout=5)
