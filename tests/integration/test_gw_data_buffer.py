"""GWDataBuffer as a real process on a real hub, driven over HTTP as the Airflow DAG, the
shell scripts and the streaming client do, and over OCS."""

import html.parser
import json
import os
import signal
import threading
import time

import pytest

from socs_agents.db import SupRsyncDB
from socs_agents.dev.sim.gw import (
    DAG_TRAIN_BODY,
    FrontClient,
    chunks,
    shell_fixture,
    simulated_strain,
    stream,
)
from socs_agents.dev.testing import FeedSubscriber, free_port, wait_for

pytestmark = pytest.mark.integration

PW2, PW3 = "gw-level-2", "gw-level-3"
POLICY = ["--access-policy", f"override:{PW2},{PW3}"]


class PageText(html.parser.HTMLParser):
    """The visible text and the title of an HTML page."""

    def __init__(self) -> None:
        super().__init__()
        self.parts: list[str] = []
        self.title = ""
        self._skip = self._in_title = False

    def handle_starttag(self, tag, attrs):
        self._skip = tag in ("style", "script")
        self._in_title = tag == "title"

    def handle_endtag(self, tag):
        self._skip = self._in_title = False

    def handle_data(self, data):
        if self._in_title:
            self.title += data
        elif not self._skip:
            self.parts.append(data)

    @property
    def text(self) -> str:
        return " ".join(" ".join(self.parts).split())


class Buffer:
    def __init__(self, site, root, iid, port, max_size=2000, extra=()):
        self.site, self.iid, self.port, self.root = site, iid, port, root
        self.data_dir = os.path.join(root, "gwdata", "datavar")
        self.archive_dir = os.path.join(root, "gwdata", "archive")
        self.suprsync_db = os.path.join(root, "suprsync.db")
        self.url = f"http://127.0.0.1:{port}"
        self.arguments = [
            ["--data-dir", self.data_dir],
            ["--archive-dir", self.archive_dir],
            ["--state-db", os.path.join(root, "state", "gw.db")],
            ["--http-port", port],
            ["--max-size", max_size],
            ["--monitor-interval", 0.3],
            ["--suprsync-db", self.suprsync_db],
            ["--archive-name", "gw"],
            *[list(a) for a in extra],
        ]
        self.agent = None

    def start(self):
        self.site.add_instance("GWDataBuffer", self.iid, self.arguments)
        self.agent = self.site.start_agent(self.iid, POLICY)
        return self.agent

    def stop(self, sig=signal.SIGTERM):
        self.agent.stop(sig)
        if self.agent in self.site.agents:
            self.site.agents.remove(self.agent)

    def client(self, privs=None):
        return self.site.client(self.iid, privs=privs)

    def http(self):
        return FrontClient(self.url)

    def files(self):
        return sorted(n for n in os.listdir(self.data_dir) if not n.startswith("."))

    def stored_bytes(self):
        return sum(os.path.getsize(os.path.join(self.data_dir, n)) for n in self.files())


def bodies(n, size=300, seed=0, gps=1126259450.0):
    strain = simulated_strain(n * size / 4096 + 0.01, seed=seed)
    return [json.dumps(c).encode() for c in list(chunks(strain, gps, size))[:n]]


@pytest.fixture
def buffer(site, tmp_path):
    port = free_port()
    buf = Buffer(site, str(tmp_path), f"gw-buffer-{port}", port, max_size=20_000)
    buf.start()
    yield buf
    if buf.agent is not None and buf.agent.alive():
        buf.stop()
        # the agent fixture of conftest does not know this one


def clean(buf):
    reply = buf.client(privs=PW2).clean()
    assert reply.session["success"], reply
    return reply.session["data"]


def test_fill_freeze_clean_as_the_clients_do(buffer):
    c = buffer.http()
    # stats.sh / the DAG's sensor on an empty store
    assert c.stats() == (200, {"n_itm": 0, "buff_size": 0})
    assert c.desc() == (200, {"resp": "OPERATIONAL"})
    assert c.dumpbuf() == (200, {"nmlist": []})
    # the page works on an empty store
    status, html = c.request("GET", "/dspage")
    assert status == 200 and "OPERATIONAL" in html
    # the DAG's first /train: WAITING, 200
    assert c.post("/train", DAG_TRAIN_BODY) == (200, {"resp": "WAITING"})
    # the shell client's fixture (one absolute time per sample) and gwclient-like chunks
    status, answer = c.streamdata(shell_fixture())
    assert status == 200 and answer["resp"] == "CREATED"
    assert json.loads(answer["body"])["code"] == "RES_CREATE"
    sent = bodies(3)
    for b in sent:
        assert c.streamdata(b)[1]["resp"] == "CREATED"
    # the page a person opens shows the state and what is stored
    page = PageText()
    page.feed(c.request("GET", "/dspage")[1])
    assert page.title == "GW data buffer"
    assert "state: OPERATIONAL" in page.text
    assert f"{len(buffer.files())} files, " in page.text
    assert all(name in page.text for name in buffer.files())
    # files hold exactly the floats sent, in the reference's layout
    names = buffer.files()
    assert len(names) == 4 and all(n.startswith("gwb") and n.endswith(".json") for n in names)
    stored = [json.load(open(os.path.join(buffer.data_dir, n))) for n in names]
    assert stored[0] == shell_fixture()
    assert [s["h"] for s in stored[1:]] == [json.loads(b)["h"] for b in sent]
    assert c.stats() == (200, {"n_itm": 4, "buff_size": buffer.stored_bytes()})
    assert c.dumpbuf() == (200, {"nmlist": names})
    # bad input: 4xx with a reason, no file, no counter change
    for raw, status_code in (
        (b"", 400),
        (b"{not json", 400),
        (b'{"h": [NaN], "t": [0, 1]}', 422),
        (b'{"h": [1e999], "t": [0, 1]}', 422),
        (b'{"h": [], "t": [0, 1]}', 422),
        (b'{"h": [1.0], "t": [0, 0]}', 422),
        (b'{"h": ["1.0"], "t": [0, 1]}', 422),
        (b'{"t": [0, 1]}', 422),
    ):
        status, answer = c.post("/streamdata", raw)
        assert status == status_code and answer["resp"] == "REFUSED", (raw, answer)
        assert answer["reason"]
    assert len(buffer.files()) == 4
    assert c.stats()[1]["n_itm"] == 4
    # the DAG's second /train: FROZEN with the exact counts, 200
    status, answer = c.post("/train", DAG_TRAIN_BODY)
    assert status == 200 and answer == {
        "resp": "FROZEN",
        "n_f": 4,
        "bt_wrt": buffer.stored_bytes(),
    }
    assert c.streamdata(sent[0]) == (200, {"resp": "FROZEN", "body": "Datastore frozen."})
    assert len(buffer.files()) == 4
    status, html = c.request("GET", "/")
    assert "FROZEN" in html and "airflow" in html
    # clean.sh twice within one second: both archive, into distinct space-free names
    t0 = time.monotonic()
    a1 = c.cleanbuf()
    assert c.streamdata(sent[1])[1]["resp"] == "CREATED"
    a2 = c.cleanbuf()
    assert time.monotonic() - t0 < 1.0
    assert a1[0] == a2[0] == 200 and a1[1]["resp"] == a2[1]["resp"] == "CLEANED"
    archives = sorted(os.listdir(buffer.archive_dir))
    assert len(archives) == 2 and not any(" " in a for a in archives)
    counts = sorted(len(os.listdir(os.path.join(buffer.archive_dir, a))) for a in archives)
    assert counts == [1, 4]
    assert c.stats() == (200, {"n_itm": 0, "buff_size": 0})
    assert c.desc() == (200, {"resp": "OPERATIONAL"})
    c.close()
    # the archived batches are registered in SupRsync
    db = SupRsyncDB(buffer.suprsync_db)
    try:
        rows = wait_for(lambda: db.count("gw") == 5 and db.files("gw"), 10, "SupRsync rows")
        assert all(r["remote_path"].startswith("batch-") for r in rows)
    finally:
        db.close()


def test_freeze_races_concurrent_writers(site, tmp_path):
    port = free_port()
    buf = Buffer(site, str(tmp_path), f"gw-race-{port}", port, max_size=150_000)
    buf.start()
    try:
        sent = bodies(400, size=1024)
        results = []
        writer = threading.Thread(
            target=lambda: results.extend(stream(buf.url, sent, writers=4)), daemon=True
        )
        c = buf.http()
        writer.start()
        frozen = None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            status, answer = c.post("/train", DAG_TRAIN_BODY)
            if answer["resp"] == "FROZEN":
                frozen = (time.monotonic(), answer)
                break
        writer.join(120)
        assert frozen is not None, "never froze"
        at, answer = frozen
        created = [r for r in results if r[3] == "CREATED"]
        # a write sent after FROZEN was answered is never stored...
        late = [r for r in created if r[0] > at]
        assert not late, f"{len(late)} writes sent after FROZEN were acknowledged"
        assert any(r[3] == "FROZEN" for r in results)
        # ...and every acknowledged write is in n_f: none was acknowledged after the freeze
        # took effect. n_f / bt_wrt equal what is stored.
        assert answer["n_f"] == len(created) == len(buf.files())
        assert answer["bt_wrt"] == buf.stored_bytes()
        c.close()
    finally:
        buf.stop()


def test_restart_keeps_state_and_recounts(site, tmp_path):
    port = free_port()
    buf = Buffer(site, str(tmp_path), f"gw-restart-{port}", port)
    buf.start()
    try:
        c = buf.http()
        for b in bodies(3):
            assert c.streamdata(b)[1]["resp"] == "CREATED"
        assert c.train()[1]["resp"] == "FROZEN"
        c.close()
        buf.stop(signal.SIGKILL)
        # a file dropped in while it was down is counted too
        with open(os.path.join(buf.data_dir, "gwb1.json"), "w") as f:
            json.dump({"h": [1.0], "t": [0.0, 1.0]}, f)
        buf.start()
        c = buf.http()
        assert c.desc() == (200, {"resp": "FROZEN"})
        assert c.stats() == (200, {"n_itm": 4, "buff_size": buf.stored_bytes()})
        assert c.streamdata(bodies(1)[0])[1]["resp"] == "FROZEN"
        stats = buf.client().stats().session["data"]
        assert stats["frozen_by"] == "airflow" and stats["dstatus"] == "FROZEN"
        c.close()
    finally:
        buf.stop()


def test_access_levels_and_tokens(site, tmp_path):
    port = free_port()
    token_file = tmp_path / "tokens"
    token_file.write_text("# accepted tokens\ns3cret-token\n")
    buf = Buffer(
        site,
        str(tmp_path),
        f"gw-auth-{port}",
        port,
        extra=[["--token-file", str(token_file)], ["--max-body", 200_000]],
    )
    buf.start()
    try:
        c = buf.http()
        # a body over --max-body: 413 before it is parsed, and the connection goes on
        big = json.dumps({"h": [1e-21] * 60_000, "t": [0.0, 1.0]}).encode()
        status, answer = c.post("/streamdata", big)
        assert status == 413 and answer["reason"] == "body_too_large"
        assert c.streamdata(bodies(1)[0])[1]["resp"] == "CREATED"
        # the DAG's airflow/airflow is refused now; the configured token is accepted
        status, answer = c.train("airflow", "airflow")
        assert status == 403 and answer["reason"] == "token_refused"
        status, answer = c.cleanbuf()
        assert status == 401 and answer["reason"] == "token_required"
        assert c.desc()[1]["resp"] == "OPERATIONAL"
        assert c.train("airflow", "s3cret-token")[1]["resp"] == "FROZEN"
        status, answer = c.request(
            "POST",
            "/cleanbuf",
            b'{"msg": "x"}',
            {"Authorization": "Bearer s3cret-token", "Content-Type": "application/json"},
        )
        assert status == 200 and answer["resp"] == "CLEANED"
        # the token is never shown or logged
        assert "s3cret-token" not in c.request("GET", "/dspage")[1]
        c.close()
        # OCS: freeze and clean need level 2; stats is level 1
        for op in ("freeze", "clean"):
            reply = getattr(buf.client(), op)()
            assert not reply.session.get("success"), (op, reply)
            assert "credential level 2" in reply.msg
        assert buf.client().stats().session["success"]
        reply = buf.client(privs=PW2).freeze(force=True, user="operator")
        assert reply.session["data"]["resp"] == "FROZEN"
        assert clean(buf)["resp"] == "CLEANED"
        assert "s3cret-token" not in buf.agent.log_text()
    finally:
        buf.stop()


def test_monitor_feed_as_a_subscriber_gets_it(buffer):
    sub = FeedSubscriber(buffer.site, buffer.iid, "gw_buffer")
    try:
        c = buffer.http()
        for b in bodies(2):
            c.streamdata(b)
        c.post("/streamdata", b"{bad")
        c.close()

        def seen():
            # ocs sends buffered blocks: {'buffer': {'timestamps': [...], 'data': {...}}}
            for msg, _info in list(sub.messages):
                block = msg.get("buffer")
                if block:
                    fields = block["data"]
                    n = fields.get("n_files", [0])
                    bad = fields.get("refused_bad_input", [0])
                    if n and n[-1] == 2 and bad and bad[-1] == 1:
                        return fields
            return None

        fields = wait_for(seen, 15, "a feed message with 2 files and 1 refusal")
        assert set(fields) >= {"n_bytes", "fill_fraction", "frozen", "writes_per_s"}
        status = buffer.client().monitor.status().session
        assert status["status"] == "running"
        assert status["data"]["stats"]["n_itm"] == 2
    finally:
        sub.close()


def test_kill_9_while_writing_loses_no_acknowledged_write(site, tmp_path):
    port = free_port()
    buf = Buffer(site, str(tmp_path), f"gw-kill-{port}", port, max_size=10**12)
    buf.start()
    sent = bodies(2000, size=512, seed=3)
    results = []
    writer = threading.Thread(
        target=lambda: stream(buf.url, sent, writers=4, results=results), daemon=True
    )
    writer.start()
    wait_for(lambda: len(results) >= 30, 60, "30 acknowledged writes")
    buf.stop(signal.SIGKILL)
    writer.join(60)
    acked = {r[4] for r in results if r[3] == "CREATED"}
    stored = {}
    for name in buf.files():
        with open(os.path.join(buf.data_dir, name)) as f:
            chunk = json.load(f)  # every file under a final name is complete JSON
        stored[chunk["t"][0]] = chunk
    for i in acked:
        body = json.loads(sent[i])
        assert stored.get(body["t"][0]) == body, f"acknowledged write {i} lost"
    assert 30 <= len(acked) < len(sent)  # killed while writing
    buf.start()
    try:
        c = buf.http()
        assert c.stats() == (200, {"n_itm": len(buf.files()), "buff_size": buf.stored_bytes()})
        c.close()
    finally:
        buf.stop()
