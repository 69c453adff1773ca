"""FileOrchestrator as a real process on a real hub, driven over HTTP as the DAQ does and
over OCS; files written by the DUNE simulator into a watched volume."""

import html.parser
import http.client
import json
import os
import signal
import socket

import pytest
import sqlalchemy.exc

from socs_agents.db import SupRsyncDB
from socs_agents.dev.sim.dune import DuneWriter, OrchestratorClient, check_record, run_chain
from socs_agents.dev.testing import FeedSubscriber, free_port, wait_for

pytestmark = pytest.mark.integration

HOST = "daq-test-01"
PW2, PW3 = "orch-level-2", "orch-level-3"
POLICY = ["--access-policy", f"override:{PW2},{PW3}"]


class Orchestrator:
    def __init__(self, site, root, iid, port, lease_timeout=3.0):
        self.site, self.iid, self.port = site, iid, port
        self.root = root
        self.volume = os.path.join(root, "vol")
        self.state_db = os.path.join(root, "state", "orchestrator.db")
        self.url = f"http://127.0.0.1:{port}"
        self.arguments = [
            ["--volume", self.volume],
            ["--http-interface", "127.0.0.1"],
            ["--http-port", port],
            ["--state-db", self.state_db],
            ["--host-name", HOST],
            ["--lease-timeout", lease_timeout],
            ["--feed-interval", 0.5],
            ["--rescan-interval", 0],
            ["--suprsync-db", os.path.join(root, "suprsync.db")],
            ["--archive-name", "dune"],
            # files of this host announced over HTTP in these tests lie under /data
            # ocs keeps one entry per option name: several values after one
            ["--allowed-root", self.volume, "/data"],
            ["--register-retry-interval", 1],
            ["--max-body-bytes", 1 << 20],
        ]
        self.agent = None
        self.runs = 0

    def start(self):
        self.site.add_instance("FileOrchestrator", self.iid, self.arguments)
        self.agent = self.site.start_agent(self.iid, POLICY)
        return self.agent

    def stop(self, sig=signal.SIGTERM):
        self.agent.stop(sig)
        if self.agent in self.site.agents:
            self.site.agents.remove(self.agent)

    def client(self, privs=None):
        return self.site.client(self.iid, privs=privs)

    def http(self):
        return OrchestratorClient(self.url)

    def counts(self):
        c = self.http()
        try:
            status, body = c.stats()
        finally:
            c.close()
        assert status == 200
        return body["counts"]

    def writer(self, sub):
        self.runs += 1
        return DuneWriter(os.path.join(self.volume, sub), run_number=100 + self.runs)


@pytest.fixture(scope="module")
def shared(site, tmp_path_factory):
    port = free_port()
    orch = Orchestrator(
        site, str(tmp_path_factory.mktemp("orchestrator")), f"orchestrator-{port}", port
    )
    orch.start()
    yield orch
    orch.stop()


@pytest.fixture
def orch(shared):
    """The shared agent, reset (level 2) before each test: no file, record or credit."""
    reply = shared.client(PW2).reset()
    assert reply.session["success"] is True, reply
    wait_for(lambda: all(v == 0 for v in shared.counts().values()), 10, "a reset state")
    return shared


def wait_counts(orch, timeout=10, **want):
    def match():
        c = orch.counts()
        return c if all(c[k] == v for k, v in want.items()) else None

    return wait_for(match, timeout, f"counts {want}")


def test_reset_needs_credential_level_2(shared):
    c = shared.http()
    c.new_file("elsewhere", "/data/x.hdf5", 1, "TriggerRecord", [[1, 0]])
    c.close()
    reply = shared.client().reset()
    assert reply.status != 0 and "credential level" in reply.msg
    assert shared.counts()["pending"] == 1
    reply = shared.client(PW2).reset()
    assert reply.session["success"] is True
    assert reply.session["data"]["before"]["pending"] == 1
    assert shared.counts()["pending"] == 0


def test_discovered_files_through_request_read_complete(orch):
    w = orch.writer("tr")
    written = [w.write_file(records=3) for _ in range(2)]
    unfinished, _ = w.write_file(records=2, rename=False)  # stays .writing: ignored
    wait_counts(orch, files=2, pending=6)
    client = orch.http()
    try:
        answers = run_chain(client, HOST, 6, poll_interval=0.02)
        # oldest first, each record once, every answer an absolute final path
        assert [(a["file"], a["trigger_number"], a["sequence_number"]) for a in answers] == [
            (p, n, s) for p, ids in written for n, s in ids
        ]
        assert all(
            a["run_number"] == w.run_number and a["type"] == "TriggerRecord" for a in answers
        )
        c = orch.counts()
        assert (c["pending"], c["active"], c["done"], c["completed"], c["credits_tr"]) == (
            0,
            0,
            6,
            6,
            0,
        )
        assert client.read_next_triggerrecord(HOST)[0] == 429
        client.request_tr()
        assert client.read_next_triggerrecord(HOST)[0] == 404
    finally:
        client.close()
    assert not any(a["file"] == unfinished for a in answers)
    # every record of both files done: both registered in SupRsync, paths from the volume

    def registered():
        db = SupRsyncDB(os.path.join(orch.root, "suprsync.db"), create_all=False)
        try:
            rows = {r["local_path"]: r for r in db.files(archive_name="dune")}
        except sqlalchemy.exc.OperationalError:  # the agent creates it at the first file
            return None
        finally:
            db.close()
        return rows if all(p in rows for p, _ in written) else None

    rows = wait_for(registered, 10, "the finished files in SupRsync")
    assert rows[written[0][0]]["remote_path"] == "tr/" + os.path.basename(written[0][0])
    assert unfinished not in rows


def test_time_slices(orch):
    w = orch.writer("ts")
    path, ids = w.write_file(records=4, record_type="TimeSlice")
    wait_counts(orch, pending_ts=4)
    client = orch.http()
    try:
        answers = run_chain(client, HOST, 4, record_type="TimeSlice", poll_interval=0.02)
    finally:
        client.close()
    assert [(a["file"], a["trigger_number"], a["type"]) for a in answers] == [
        (path, n, "TimeSlice") for n, _ in ids
    ]
    c = orch.counts()
    # nothing completes time slices, and none stays active
    assert (c["pending_ts"], c["active_ts"], c["done"], c["credits_ts"]) == (0, 0, 4, 0)


def _read_response(sock, buf):
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        assert chunk, "connection closed by the server"
        buf += chunk
    head, buf = buf.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
    length = int(headers["content-length"])
    while len(buf) < length:
        chunk = sock.recv(65536)
        assert chunk, "connection closed by the server"
        buf += chunk
    return status, headers, json.loads(buf[:length]), buf[length:]


def _request(method, path, body=b"", host=True):
    lines = [f"{method} {path} HTTP/1.1"]
    if host:
        lines.append("Host: orchestrator")
    if body:
        lines += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def test_429_404_400_on_one_pipelined_connection_without_host(orch):
    read = json.dumps({"host": HOST, "file": ""}).encode()
    nobody = json.dumps({"host": "nobody", "file": ""}).encode()
    sock = socket.create_connection(("127.0.0.1", orch.port), timeout=10)
    try:
        # all in one send: the real client's two threads share a socket without a lock
        sock.sendall(
            _request("POST", "/read-next-triggerrecord", read, host=False)
            + _request("GET", "/request-tr", host=False)
            + _request("POST", "/read-next-triggerrecord", nobody, host=False)
            + _request("POST", "/complete", b"{broken", host=False)
            + _request("POST", "/read-next-timeslice", read, host=False)
            + _request("GET", "/stats")
        )
        buf = b""
        got = []
        for _ in range(6):
            status, headers, body, buf = _read_response(sock, buf)
            assert headers["content-type"] == "application/json"
            assert headers.get("connection", "").lower() != "close"
            got.append((status, body))
        assert [s for s, _ in got] == [429, 200, 404, 400, 429, 200]
        assert "error" in got[3][1]
        assert got[5][1]["counts"]["credits_tr"] == 1
        # the same connection still serves a hand-out after all those errors
        c = orch.http()
        c.new_file(HOST, "/data/remote/a_run000001.hdf5", 1, "TriggerRecord", [[9, 0]])
        c.close()
        sock.sendall(_request("POST", "/read-next-triggerrecord", read, host=False))
        status, _, body, buf = _read_response(sock, buf)
        assert status == 200 and body["trigger_number"] == 9
    finally:
        sock.close()


BAD = [
    ("POST", "/new-file", b"{nope"),
    (
        "POST",
        "/new-file",
        json.dumps(
            {
                "host": HOST,
                "file": "/d/x.hdf5",
                "run_number": 1,
                "record_type": "Slice",
                "record_ids": [[1, 0]],
            }
        ),
    ),
    (
        "POST",
        "/new-file",
        json.dumps(
            {
                "host": HOST,
                "file": "/d/x.hdf5",
                "run_number": "1",
                "record_type": "TriggerRecord",
                "record_ids": [[1, 0]],
            }
        ),
    ),
    (
        "POST",
        "/new-file",
        json.dumps(
            {"host": HOST, "run_number": 1, "record_type": "TriggerRecord", "record_ids": [[1, 0]]}
        ),
    ),
    ("POST", "/remove-file", json.dumps({"host": HOST})),
    ("POST", "/read-next-triggerrecord", json.dumps({"file": ""})),
    ("POST", "/read-next-timeslice", json.dumps(["host"])),
    ("GET", "/read-next-tr", b""),
    (
        "POST",
        "/complete",
        json.dumps({"run_number": 1, "trigger_number": 1, "sequence_number": 0, "type": "Other"}),
    ),
    (
        "POST",
        "/tr-complete",
        json.dumps({"run_number": 1, "trigger_number": True, "sequence_number": 0}),
    ),
]


def test_every_bad_input_is_400_and_changes_nothing(orch):
    c = orch.http()
    try:
        c.new_file(HOST, "/data/remote/b_run000002.hdf5", 2, "TriggerRecord", [[1, 0], [2, 0]])
        c.request_tr()
        c.request_tr()
        assert c.read_next_triggerrecord(HOST)[0] == 200
        before = orch.counts()
        for method, path, body in BAD:
            raw = body if isinstance(body, bytes) else body.encode()
            status, answer = c.call(method, path, raw=raw)
            assert status == 400, (path, body, answer)
            assert isinstance(answer, dict) and answer["error"], (path, answer)
        assert orch.counts() == before
        # and the connection is still good
        assert c.read_next_triggerrecord(HOST)[1]["trigger_number"] == 2
    finally:
        c.close()


def test_remote_files_and_withdrawal(orch):
    c = orch.http()
    try:
        path = "/data/daq-remote/c_run000003.hdf5"
        assert (
            c.new_file("daq-remote", path, 3, "TriggerRecord", [[1, 0], [2, 0], [3, 0]])[0] == 200
        )
        c.request_tr()
        c.request_tr()
        assert c.read_next_triggerrecord(HOST)[0] == 404  # not on this host
        status, answer = c.call("GET", "/read-next-tr", {"host": "daq-remote"})  # README
        assert status == 200 and answer["file"] == path and answer["trigger_number"] == 1
        status, answer = c.remove_file("daq-remote", path)
        assert status == 200 and answer["withdrawn"] == 2
        assert c.read_next_triggerrecord("daq-remote")[0] == 404
        # the record handed out before the removal still completes (README name)
        assert c.tr_complete(3, 1, 0)[0] == 200
        assert c.complete(3, 2, 0)[0] == 404 or orch.counts()["withdrawn"] == 2
    finally:
        c.close()
    c = orch.counts()
    assert (c["done"], c["withdrawn"], c["pending"], c["active"]) == (1, 2, 0, 0)


def test_deleted_file_withdraws_its_pending_records(orch):
    path, _ = orch.writer("del").write_file(records=3)
    wait_counts(orch, pending=3)
    os.remove(path)
    c = wait_counts(orch, pending=0, withdrawn=3)
    assert c["files"] == 0 and c["files_removed"] == 1


def test_an_expired_lease_is_handed_out_again(orch):
    c = orch.http()
    try:
        c.new_file(HOST, "/data/remote/d_run000004.hdf5", 4, "TriggerRecord", [[5, 0], [6, 0]])
        for _ in range(3):
            c.request_tr()
        first = c.read_next_triggerrecord(HOST)[1]
        assert first["trigger_number"] == 5
        # the filter "crashes": nothing completes record 5; the lease (3 s) runs out
        wait_counts(orch, timeout=15, leases_expired=1, active=0, pending=2)
        again = c.read_next_triggerrecord(HOST)[1]
        assert again == first
        assert c.read_next_triggerrecord(HOST)[1]["trigger_number"] == 6
        assert c.complete(4, 5, 0)[0] == 200
    finally:
        c.close()


def feed_samples(feed):
    """Every sample of block ``counts`` received so far, as dicts (ocs sends buffered
    blocks: ``{'counts': {'timestamps': [...], 'data': {field: [...]}}}``)."""
    out = []
    for message, _info in list(feed.messages):
        block = message.get("counts")
        if block:
            data = block["data"]
            out += [{k: v[i] for k, v in data.items()} for i in range(len(block["timestamps"]))]
    return out


def test_ocs_tasks_and_feed_agree_with_http(orch, site):
    feed = FeedSubscriber(site, orch.iid, "orchestrator_counts")
    try:
        client = orch.client(PW2)
        r = client.new_file(
            file="/data/ocs/e_run000005.hdf5", run_number=5, record_ids=[[1, 0], [2, 0]]
        )
        assert r.session["success"] and r.session["data"]["added"] == 2
        r = client.read_next()
        assert r.session["success"] is False and r.session["data"]["status"] == 429
        r = client.request_record(count=2)
        assert r.session["data"]["credits"] == 2
        r = client.read_next(host="elsewhere")
        assert r.session["data"]["status"] == 404
        r = client.read_next()
        assert r.session["success"] and r.session["data"] == {
            "status": 200,
            "file": "/data/ocs/e_run000005.hdf5",
            "run_number": 5,
            "trigger_number": 1,
            "sequence_number": 0,
            "type": "TriggerRecord",
        }
        # what OCS did is what HTTP sees, and the other way round
        h = orch.http()
        try:
            status, answer = h.read_next_triggerrecord(HOST)
            assert status == 200 and answer["trigger_number"] == 2
            assert h.complete(5, 2, 0)[0] == 200
        finally:
            h.close()
        r = client.complete(run_number=5, trigger_number=1)
        assert r.session["success"]
        assert client.complete(run_number=5, trigger_number=99).session["data"]["status"] == 404
        r = client.new_file(file="relative.hdf5", run_number=5, record_ids=[[1, 0]])
        assert r.session["success"] is False and r.session["data"]["status"] == 400
        r = orch.client().stats(files=5)  # reading needs level 1 only
        counts = orch.counts()
        assert r.session["data"]["counts"] == counts
        assert counts["done"] == 2 and counts["reads"] == 2
        assert r.session["data"]["files"][0]["file"] == "/data/ocs/e_run000005.hdf5"
        r = client.remove_file(file="/data/ocs/e_run000005.hdf5")
        assert r.session["data"]["known"] is True
        counts = orch.counts()
        wait_for(lambda: counts in feed_samples(feed), 10, "a feed sample with the HTTP counts")
        watch = client.watch.status().session
        assert watch["status"] == "running"
        assert watch["data"]["discovery"]["watching"] is True
    finally:
        feed.close()


def test_kill_9_and_restart_lose_nothing(site, tmp_path):
    port = free_port()
    orch = Orchestrator(site, str(tmp_path), f"orchestrator-k{port}", port, lease_timeout=600)
    orch.start()
    try:
        c = orch.http()
        path = "/data/remote/f_run000006.hdf5"
        c.new_file(HOST, path, 6, "TriggerRecord", [[n, 0] for n in range(1, 11)])
        for _ in range(6):
            c.request_tr()
        handed = [c.read_next_triggerrecord(HOST)[1]["trigger_number"] for _ in range(4)]
        assert handed == [1, 2, 3, 4]
        assert c.complete(6, 1, 0)[0] == 200 and c.complete(6, 2, 0)[0] == 200
        c.close()
        before = orch.counts()
        assert (before["pending"], before["active"], before["done"], before["credits_tr"]) == (
            6,
            2,
            2,
            2,
        )
        orch.agent.kill()
        orch.site.agents.remove(orch.agent)
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=2).close()
        wait_for(lambda: not site.answers(orch.iid), 15, "the killed agent to unregister")
        orch.agent = site.start_agent(orch.iid, POLICY)
        assert orch.counts() == before
        c = orch.http()
        # the active records are still leased to their filters and complete now
        assert c.complete(6, 3, 0)[0] == 200 and c.complete(6, 4, 0)[0] == 200
        # the two credits left hand out the next records, none handed out before
        got = [c.read_next_triggerrecord(HOST)[1]["trigger_number"] for _ in range(2)]
        assert got == [5, 6]
        assert c.read_next_triggerrecord(HOST)[0] == 429
        c.close()
        after = orch.counts()
        assert (after["pending"], after["active"], after["done"], after["completed"]) == (
            4,
            2,
            4,
            4,
        )
    finally:
        orch.stop(signal.SIGKILL)


def test_simulator_command_against_the_agent(orch, tmp_path):
    """``socs-agents simulate-dune --announce --process`` as a remote host would run it."""
    import subprocess
    import sys

    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "socs_agents.cli",
            "simulate-dune",
            "--root",
            str(tmp_path / "remote"),
            "--url",
            orch.url,
            "--host",
            "daq-remote-2",
            "--files",
            "2",
            "--records",
            "3",
            "--announce",
            "--process",
            "--timeout",
            "30",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "processed 6 records" in out.stdout
    c = orch.counts()
    assert (c["done"], c["pending"], c["active"]) == (6, 0, 0)
    # files on another "host" are checked where they are: the simulator read each record
    assert (
        check_record(
            str(tmp_path / "remote" / "swtest_run000001_0000_dataflow0.hdf5"), "TriggerRecord", 3, 0
        )
        > 0
    )


def test_a_write_locked_state_database_stalls_nothing_and_loses_nothing(orch):
    """Another process holds the state database's write lock for 10 s: ``GET /stats`` and
    OCS ``status`` answer within 50 ms throughout; every request made meanwhile (HTTP on
    several connections, two pipelined on one socket, an OCS task) is answered correctly
    after the lock is released, and the state holds all of it."""
    import sqlite3
    import threading
    import time

    host = "lock-host"
    c = orch.http()
    c.new_file(host, "/data/lock/a_run000007.hdf5", 7, "TriggerRecord", [[1, 0], [2, 0], [3, 0]])
    c.request_tr()
    assert c.read_next_triggerrecord(host)[1]["trigger_number"] == 1
    c.close()
    client = orch.client(PW2)
    stats = orch.http()
    before = orch.counts()
    # the watch process refreshes its session.data every second
    wait_for(lambda: client.watch.status().session["data"]["counts"] == before, 5, "watch status")
    answers: dict = {}

    def http_call(name, fn):
        h = OrchestratorClient(orch.url, timeout=60)
        try:
            answers[name] = fn(h)
        finally:
            h.close()

    def ocs_call():
        answers["ocs"] = client.request_record(count=2).session

    locker = sqlite3.connect(orch.state_db, isolation_level=None, timeout=5)
    locker.execute("BEGIN IMMEDIATE")
    locked_at = time.monotonic()
    pipe = socket.create_connection(("127.0.0.1", orch.port), timeout=60)
    try:
        read = json.dumps({"host": host, "file": ""}).encode()
        # the Dispatcher's way: two requests in one send on one socket
        pipe.sendall(
            _request("GET", "/request-tr", host=False)
            + _request("POST", "/read-next-triggerrecord", read, host=False)
        )
        threads = [
            threading.Thread(target=http_call, args=(name, fn))
            for name, fn in (
                (
                    "new",
                    lambda h: h.new_file(
                        host, "/data/lock/b_run000008.hdf5", 8, "TriggerRecord", [[10, 0]]
                    ),
                ),
                ("complete", lambda h: h.complete(7, 1, 0)),
            )
        ] + [threading.Thread(target=ocs_call)]
        for t in threads:
            t.start()
        wait_for(
            lambda: stats.stats()[1]["state"]["lock_waiting_s"] > 0, 5, "a job held by the lock"
        )
        stats_s, status_s = [], []
        while time.monotonic() - locked_at < 10:
            t0 = time.perf_counter()
            status, body = stats.stats()
            stats_s.append(time.perf_counter() - t0)
            assert status == 200 and body["counts"] == before
            t0 = time.perf_counter()
            watch = client.watch.status().session
            status_s.append(time.perf_counter() - t0)
            assert watch["data"]["counts"] == before
            time.sleep(0.1)
        assert len(stats_s) >= 20
        stats_s.sort()
        status_s.sort()
        print(
            f"during a 10 s lock: GET /stats median {stats_s[len(stats_s) // 2] * 1e3:.1f} ms, "
            f"worst {stats_s[-1] * 1e3:.1f} ms; OCS status median "
            f"{status_s[len(status_s) // 2] * 1e3:.1f} ms, worst {status_s[-1] * 1e3:.1f} ms "
            f"({len(stats_s)} each)"
        )
        # Nine answers in ten within 50 ms, and none waiting for the lock: the test shares
        # two cores with the hub and the agent, so one scheduling delay may exceed 50 ms.
        for what, times in (("GET /stats", stats_s), ("OCS status", status_s)):
            p90 = times[int(len(times) * 0.9)]
            assert p90 < 0.05, f"{what}: 90 % took up to {p90 * 1e3:.1f} ms during the lock"
            assert times[-1] < 1.0, f"{what} waited {times[-1]:.1f} s during the lock"
        assert not answers, answers  # nothing answered while locked
        assert all(t.is_alive() for t in threads)
    finally:
        locker.execute("ROLLBACK")
        locker.close()
    try:
        buf = b""
        first, _, body1, buf = _read_response(pipe, buf)
        second, _, body2, buf = _read_response(pipe, buf)
    finally:
        pipe.close()
    for t in threads:
        t.join(30)
    assert (first, body1["status"]) == (200, "ok")
    assert second == 200 and body2["trigger_number"] == 2
    assert answers["new"] == (
        200,
        {
            "status": "ok",
            "host": host,
            "file": "/data/lock/b_run000008.hdf5",
            "added": 1,
            "known": 0,
        },
    )
    assert answers["complete"] == (200, {"status": "ok", "file": "/data/lock/a_run000007.hdf5"})
    assert answers["ocs"]["success"] is True
    after = orch.counts()
    assert (after["files"], after["pending"], after["active"], after["done"]) == (2, 2, 1, 1)
    assert (after["credits_tr"], after["requests_tr"], after["reads"]) == (2, 4, 2)
    stats.close()


def suprsync_rows(orch, create=False):
    db = SupRsyncDB(os.path.join(orch.root, "suprsync.db"), create_all=create)
    try:
        return {r["local_path"]: r for r in db.files(archive_name="dune")}
    finally:
        db.close()


def faults(orch):
    c = orch.http()
    try:
        return c.stats()[1]["faults"]
    finally:
        c.close()


def test_state_changing_tasks_need_level_2_and_bad_numbers_are_clear_errors(orch):
    reader = orch.client()
    for call in (
        lambda: reader.new_file(file="/data/x/a_run000001.hdf5", run_number=1, record_ids=[[1, 0]]),
        lambda: reader.remove_file(file="/data/x/a_run000001.hdf5"),
        lambda: reader.request_record(),
        lambda: reader.read_next(),
        lambda: reader.complete(run_number=1, trigger_number=1),
    ):
        reply = call()
        assert reply.status != 0 and "credential level" in reply.msg, reply
    assert reader.stats().session["success"] is True
    writer = orch.client(PW2)
    for call in (
        lambda: writer.request_record(count=10**30),
        lambda: writer.request_record(count=1e308),
        lambda: writer.complete(run_number=2**64, trigger_number=1),
        lambda: writer.complete(run_number=1, trigger_number=-1),
        lambda: writer.new_file(file="/data/x/a.hdf5", run_number=1.5, record_ids=[[1, 0]]),
    ):
        reply = call()
        # refused at the door by @ocs_agent.param: an error reply naming the parameter
        text = str(reply.msg) + json.dumps(reply.session, default=str)
        assert reply.status != 0 or reply.session.get("success") is False, reply
        assert "Param" in text and "Traceback" not in text and "OverflowError" not in text
    assert all(v == 0 for v in orch.counts().values())


def test_a_file_outside_the_roots_is_refused_over_http_and_on_the_volume(orch, tmp_path):
    """A secret outside the volume, and a link to it inside the volume named like a record
    file: neither announcing it over HTTP nor the volume watch takes it; both refusals are
    counted; nothing reaches the state or the SupRsync database."""
    before = faults(orch)["by_reason"].get("outside_allowed_root", 0)
    secret_dir = tmp_path / "private"
    secret_dir.mkdir()
    secret, _ = DuneWriter(str(secret_dir), run_number=66).write_file(records=1)
    link = os.path.join(orch.volume, "leak", "secret_run000066.hdf5")
    os.makedirs(os.path.dirname(link), exist_ok=True)
    os.symlink(secret, link)
    c = orch.http()
    try:
        for path in (link, secret, "/etc/passwd"):
            status, answer = c.new_file(HOST, path, 66, "TriggerRecord", [[1, 0]])
            assert status == 403, answer
            assert answer["reason"] == "outside_allowed_root" and path in answer["error"]
        # another host's file is not resolved here (and never registered here)
        assert c.new_file("elsewhere", "/etc/passwd", 1, "TriggerRecord", [[1, 0]])[0] == 200
        c.remove_file("elsewhere", "/etc/passwd")
    finally:
        c.close()
    # the watch met the link too (its creation): refused, counted under discovery

    def counted():
        f = faults(orch)
        return f if f["by_place"].get("discovery", {}).get("outside_allowed_root") else None

    f = wait_for(counted, 10, "the link refused by discovery")
    assert f["by_place"]["/new-file"]["outside_allowed_root"] >= 3
    assert f["by_reason"]["outside_allowed_root"] >= before + 4
    counts = orch.counts()
    assert counts["files"] == 0 and counts["pending"] == 0
    rows = suprsync_rows(orch)
    assert not any(p in rows for p in (link, secret, os.path.realpath(secret)))
    import sqlite3

    con = sqlite3.connect(orch.state_db)
    try:
        paths = [p for (p,) in con.execute("SELECT path FROM files")]
    finally:
        con.close()
    assert link not in paths and secret not in paths
    os.remove(link)


def test_http_input_limits(orch):
    """A huge Content-Length is answered 413 before the body is sent; a chunked body that
    grows past the limit is cut off with 413; a non-JSON content type is 415; deep nesting,
    non-UTF-8 and lone surrogates are 400; every answer JSON, each counted."""
    import time

    sock = socket.create_connection(("127.0.0.1", orch.port), timeout=10)
    try:
        t0 = time.monotonic()
        sock.sendall(
            b"POST /new-file HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b'Content-Length: 1000000000000\r\n\r\n{"ho'
        )
        status, headers, body, _ = _read_response(sock, b"")
        assert time.monotonic() - t0 < 5
        assert status == 413 and body["reason"] == "body_too_large"
        assert headers["connection"] == "close"
        assert sock.recv(100) == b""  # closed: the rest of the body is never read
    finally:
        sock.close()
    sock = socket.create_connection(("127.0.0.1", orch.port), timeout=10)
    try:
        sock.sendall(b"POST /new-file HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
        chunk = b"%x\r\n%s\r\n" % (65536, b" " * 65536)
        answer = b""
        try:
            for _ in range(40):  # 2.5 MiB, over the 1 MiB limit
                sock.sendall(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass
        try:
            while b"}" not in answer:
                more = sock.recv(65536)
                if not more:
                    break
                answer += more
        except ConnectionResetError:
            pass
        assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
        assert b'"reason": "body_too_large"' in answer
    finally:
        sock.close()
    c = orch.http()
    try:
        cases = [
            ("/new-file", b"[" * 200_000 + b"]" * 200_000, "application/json", 400),
            ("/complete", b"\xff\xfe{}", "application/json", 400),
            ("/read-next-triggerrecord", b'{"host": "\\ud800", "file": ""}', None, 400),
            ("/complete", b"<xml/>", "application/xml", 415),
            ("/new-file", b"a=1", "multipart/form-data; boundary=x", 415),
        ]
        for path, raw, ctype, want in cases:
            c.conn.putrequest("POST", path)
            if ctype:
                c.conn.putheader("Content-Type", ctype)
            c.conn.putheader("Content-Length", str(len(raw)))
            c.conn.endheaders(raw)
            resp = c.conn.getresponse()
            payload = resp.read()
            assert resp.status == want, (path, resp.status, resp.getheaders(), payload[:200])
            assert json.loads(payload)["error"], (path, payload)
        # curl -d (form-urlencoded), as in the README, still works
        status, _ = c.call("GET", "/request-tr")
        assert status == 200
    finally:
        c.close()
    f = faults(orch)["by_reason"]
    assert f["body_too_large"] >= 2 and f["wrong_content_type"] >= 2 and f["bad_request"] >= 3
    assert "internal_error" not in f


def test_a_registration_that_meets_a_locked_suprsync_db_is_done_later(orch):
    import sqlite3

    suprsync_rows(orch, create=True)  # make sure the database exists
    w = orch.writer("reg")
    path, ids = w.write_file(records=2)
    wait_counts(orch, pending=2)
    locker = sqlite3.connect(os.path.join(orch.root, "suprsync.db"), isolation_level=None)
    locker.execute("BEGIN IMMEDIATE")
    try:
        c = orch.http()
        try:
            for n, seq in ids:
                c.request_tr()
                assert c.read_next_triggerrecord(HOST)[0] == 200
                assert c.complete(w.run_number, n, seq)[0] == 200
        finally:
            c.close()
        wait_counts(orch, done=2, pending=0, active=0)

        def failed():
            f = faults(orch)["by_place"].get("suprsync", {})
            return f.get("database_locked")

        wait_for(failed, 20, "the registration failing on the lock")
        assert path not in suprsync_rows(orch)
    finally:
        locker.execute("ROLLBACK")
        locker.close()
    rows = wait_for(lambda: (r := suprsync_rows(orch)) and path in r and r, 20, "registered")
    assert rows[path]["remote_path"] == "reg/" + os.path.basename(path)


def test_a_file_whose_registration_failed_is_registered_at_the_next_start(site, tmp_path):
    """The SupRsync database cannot be opened (its path is a folder) when a file finishes:
    the failure is counted, the file stays unregistered in the state; after a kill -9 and
    the path repaired, the pass at start registers it."""
    port = free_port()
    orch = Orchestrator(site, str(tmp_path), f"orchestrator-r{port}", port)
    os.makedirs(os.path.join(orch.root, "suprsync.db"))
    orch.start()
    try:
        w = orch.writer("late")
        path, ids = w.write_file(records=2)
        wait_counts(orch, pending=2)
        c = orch.http()
        try:
            for n, seq in ids:
                c.request_tr()
                assert c.read_next_triggerrecord(HOST)[0] == 200
                assert c.complete(w.run_number, n, seq)[0] == 200
        finally:
            c.close()
        wait_for(lambda: faults(orch)["by_place"].get("suprsync"), 20, "the registration failing")
        orch.agent.kill()
        orch.site.agents.remove(orch.agent)
        wait_for(lambda: not site.answers(orch.iid), 15, "the killed agent to unregister")
        os.rmdir(os.path.join(orch.root, "suprsync.db"))
        orch.agent = site.start_agent(orch.iid, POLICY)

        def registered():
            try:
                rows = suprsync_rows(orch)
            except sqlalchemy.exc.OperationalError:  # the agent is creating it now
                return None
            return rows if path in rows else None

        rows = wait_for(registered, 20, "the file registered after the restart")
        assert rows[path]["remote_path"] == "late/" + os.path.basename(path)
    finally:
        orch.stop(signal.SIGKILL)


class _Cells(html.parser.HTMLParser):
    """Text of every table row of a page, as lists of cells."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[list[str]] = []
        self.title = ""
        self._in: str | None = None

    def handle_starttag(self, tag, attrs):
        if tag == "tr":
            self.rows.append([])
        elif tag in ("td", "th", "title"):
            self._in = tag
            if tag != "title":
                self.rows[-1].append("")

    def handle_endtag(self, tag):
        self._in = None

    def handle_data(self, data):
        if self._in == "title":
            self.title += data
        elif self._in in ("td", "th"):
            self.rows[-1][-1] += data


def test_status_page_for_a_browser_json_for_clients(orch):
    """GET / with a browser's Accept header is the HTML status page (records, credits,
    refusals with the newest listed); without it, the JSON index the clients read."""
    w = orch.writer("tr")
    w.write_file(records=3)
    wait_counts(orch, files=1, pending_tr=3)
    client = orch.http()
    client.request_tr()
    status, _ = client.call("POST", "/new-file", raw=b"{not json")  # one refusal
    assert status == 400
    client.close()
    conn = http.client.HTTPConnection("127.0.0.1", orch.port, timeout=10)
    conn.request("GET", "/", headers={"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"})
    resp = conn.getresponse()
    assert resp.status == 200
    assert resp.getheader("content-type").startswith("text/html")
    page = _Cells()
    page.feed(resp.read().decode())
    cells = {row[0]: row[1] for row in page.rows if len(row) == 2}
    assert page.title == f"FileOrchestrator on {HOST}"
    assert cells["pending (trigger records)"] == "3"
    assert cells["files"] == "1"
    assert cells["trigger-record credits"] == "1"
    assert int(cells["bad_request"]) >= 1
    newest = [row for row in page.rows if len(row) == 4 and row[2] == "bad_request"]
    assert newest and newest[0][1] == "/new-file"
    conn.request("GET", "/")
    resp = conn.getresponse()
    assert resp.getheader("content-type") == "application/json"
    assert json.loads(resp.read())["service"] == "FileOrchestrator"
    conn.close()
