"""PysmurfMonitor as a real process on a real hub, fed by the smurf simulator over UDP."""

import json
import signal

import pytest

from socs_agents.db import SupRsyncDB
from socs_agents.dev.sim.smurf import SmurfSimulator
from socs_agents.dev.testing import FeedSubscriber, free_udp_port, wait_for

pytestmark = pytest.mark.integration


@pytest.fixture
def monitor(agent_runner, site, tmp_path):
    """A running monitor with its own database and UDP port; yields (agent, client, ...)."""
    port = free_udp_port()
    db_path = str(tmp_path / "db" / "suprsync.db")
    iid = f"pysmurf-monitor-{port}"
    agent = agent_runner(
        "PysmurfMonitor",
        iid,
        [
            ["--udp-port", port],
            ["--udp-host", "127.0.0.1"],
            ["--db-path", db_path],
            ["--create-table", True],
            ["--missing-file-timeout", 2],
            ["--allowed-root", str(tmp_path / "smurf_data")],
        ],
    )
    client = site.client(iid)
    sim = SmurfSimulator(str(tmp_path / "smurf_data"), port=port)
    yield agent, client, sim, db_path, iid
    sim.close()


def rows(db_path):
    db = SupRsyncDB(db_path, create_all=False)
    try:
        return db.files(limit=None), db.timecode_dirs()
    finally:
        db.close()


def run_data(client):
    return client.run.status().session["data"]


def test_files_rows_feeds_and_counters(monitor, site):
    agent, client, sim, db_path, iid = monitor
    session_feed = FeedSubscriber(site, iid, "pysmurf_session_data")
    try:
        files = sim.files(20, g3_every=5)
        for _, dg in files:
            sim.send(dg)
        sent_session = [sim.session_data({"band": 3}), sim.session_log("hello")]
        for dg in sent_session:
            sim.send(dg)
        sim.send(sim.metadata(value=7))
        wait_for(lambda: len(rows(db_path)[0]) == 20, 10, "20 rows")
        wait_for(lambda: len(session_feed.messages) == 2, 10, "2 session messages")
    finally:
        session_feed.close()
    files_rows, tcdirs = rows(db_path)
    assert sorted(r["local_path"] for r in files_rows) == sorted(p for p, _ in files)
    assert {r["archive_name"] for r in files_rows} == {"smurf", "timestreams"}
    assert all(r["failed_copy_attempts"] == 0 and r["ignore"] is False for r in files_rows)
    assert {(t["archive_name"]) for t in tcdirs} == {"smurf", "timestreams"}
    # Session messages are the whole datagram, republished unchanged.
    assert [m[0] for m in session_feed.messages] == [json.loads(d) for d in sent_session]
    data = wait_for(
        lambda: (lambda d: d if d.get("counters", {}).get("metadata") else None)(run_data(client)),
        5,
        "counters in session.data",
    )
    c = data["counters"]
    assert c["files_announced"] == 20 and c["registered"] == 20
    assert c["session_messages"] == 2 and c["metadata"] == 1
    assert data["pending"] == 0 and data["degraded"] is False
    assert data["udp"]["port"] == sim.target[1] and data["udp"]["rcvbuf_granted"] > 200_000


def test_bad_input_is_counted_and_never_a_row(monitor):
    agent, client, sim, db_path, iid = monitor
    bad = [
        b"{nope",
        b"\xff\xfe",
        b"[1]",
        json.dumps({"id": "x"}).encode(),
        sim.envelope("surprise", {}),
        sim.envelope("data_file", {"path": "/tmp/x.npy", "timestamp": 1}),
        sim.envelope(
            "data_file",
            {"path": "relative/x.txt", "action": "a", "action_ts": 1, "timestamp": 1700000000},
        ),
    ]
    for dg in bad:
        sim.send(dg)
    # The same file announced twice is one row.
    _, dg = sim.data_file()
    sim.send(dg)
    sim.send(dg)
    # A datagram over Twisted's default 8,192 bytes is read whole.
    path, big = sim.data_file(fmt="txt")
    payload = json.loads(big)
    payload["payload"]["pysmurf_version"] = "x" * 20_000
    sim.send(json.dumps(payload).encode())
    wait_for(lambda: len(rows(db_path)[0]) == 2, 10, "2 rows")

    def settled():
        d = run_data(client)
        return d if d.get("counters", {}).get("duplicates") == 1 else None

    data = wait_for(settled, 10, "duplicate counted")
    r = data["rejected"]
    assert (
        r["bad_json"],
        r["not_utf8"],
        r["not_object"],
        r["missing_field"],
        r["unknown_type"],
        r["missing_action"],
        r["relative_path"],
    ) == (1, 1, 1, 1, 1, 1, 1)
    assert agent.alive()
    assert "rejected (bad_json)" in agent.log_text()


def test_clean_stop_loses_nothing(monitor):
    agent, client, sim, db_path, iid = monitor
    files = sim.files(300, g3_every=0)
    sim.send_paced([dg for _, dg in files], rate=2000)
    assert agent.stop(signal.SIGTERM, timeout=30) == 0
    files_rows, _ = rows(db_path)
    assert len(files_rows) == 300
    assert sorted(r["local_path"] for r in files_rows) == sorted(p for p, _ in files)


def test_run_stop_drains_and_restart_continues(monitor):
    agent, client, sim, db_path, iid = monitor
    for _, dg in sim.files(50, g3_every=0):
        sim.send(dg)
    client.run.stop()
    reply = client.run.wait(timeout=30)
    assert reply.session["success"] is True
    assert len(rows(db_path)[0]) == 50
    # Files keep being registered while run is stopped; run reports them when restarted.
    for _, dg in sim.files(5, g3_every=0):
        sim.send(dg)
    client.run.start(test_mode=True)
    reply = client.run.wait(timeout=30)
    assert reply.session["success"] is True and len(rows(db_path)[0]) == 55


def test_kill_9_then_restart_replays_the_journal(agent_runner, site, tmp_path):
    port = free_udp_port()
    db_path = str(tmp_path / "k" / "suprsync.db")
    iid = f"pysmurf-monitor-k{port}"
    args = [
        ["--udp-port", port],
        ["--udp-host", "127.0.0.1"],
        ["--db-path", db_path],
        ["--allowed-root", str(tmp_path / "smurf_data")],
    ]
    agent = agent_runner("PysmurfMonitor", iid, args)
    # Lock the database so nothing can be written, then kill the agent.
    import sqlite3

    locker = sqlite3.connect(db_path, isolation_level=None)
    locker.execute("BEGIN IMMEDIATE")
    sim = SmurfSimulator(str(tmp_path / "smurf_data"), port=port)
    for _, dg in sim.files(40, g3_every=0):
        sim.send(dg)
    client = site.client(iid)
    wait_for(
        lambda: run_data(client).get("counters", {}).get("files_announced") == 40,
        10,
        "40 files announced",
    )
    agent.kill()
    locker.execute("ROLLBACK")
    locker.close()
    assert len(rows(db_path)[0]) == 0
    site.agents.remove(agent)
    agent_runner("PysmurfMonitor", iid, args)
    wait_for(lambda: len(rows(db_path)[0]) == 40, 15, "40 rows after restart")
    sim.close()


def test_hostile_datagrams_are_refused_counted_and_the_agent_keeps_going(monitor, tmp_path):
    """A secret file outside the allowed root (and a link inside the root pointing to it),
    JSON nested too deeply, non-finite numbers: refused, counted, never a row."""
    agent, client, sim, db_path, iid = monitor
    secret = tmp_path / "home" / "id_rsa"
    secret.parent.mkdir()
    secret.write_bytes(b"-----BEGIN PRIVATE KEY-----\n")
    link = tmp_path / "smurf_data" / "17000" / "key.txt"
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(secret)
    _, dg = sim.data_file(fmt="txt")
    payload = json.loads(dg)["payload"]
    sim.send(sim.envelope("data_file", dict(payload, path=str(secret))))
    sim.send(sim.envelope("data_file", dict(payload, path=str(link))))
    sim.send(b"[" * 60_000)
    sim.send(sim.envelope("data_file", dict(payload, timestamp="@")).replace(b'"@"', b"NaN"))
    meta = sim.envelope("metadata", {"path": "p", "value": 1})
    sim.send(meta.replace(b'"time": ', b'"time": 1e400, "was": '))
    good, dg = sim.data_file(fmt="txt")
    sim.send(dg)

    def counted():
        d = run_data(client)
        return d if d.get("rejected", {}).get("outside_allowed_root") == 2 else None

    data = wait_for(counted, 10, "two files refused as outside the allowed root")
    r = data["rejected"]
    assert (r["too_deep"], r["non_finite"]) == (1, 2)
    assert [row["local_path"] for row in rows(db_path)[0]] == [good]
    assert agent.alive() and "outside the allowed roots" in agent.log_text()


@pytest.fixture
def tiny_disk(tmp_path):
    """A 64 KiB tmpfs: a journal folder that really fills up (needs root; skipped else)."""
    import subprocess

    mnt = tmp_path / "tiny"
    mnt.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)], capture_output=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_full_journal_disk_keeps_listening_and_catches_up(agent_runner, site, tmp_path, tiny_disk):
    import sqlite3

    port = free_udp_port()
    db_path = str(tmp_path / "f" / "suprsync.db")
    iid = f"pysmurf-monitor-f{port}"
    agent_runner(
        "PysmurfMonitor",
        iid,
        [
            ["--udp-port", port],
            ["--udp-host", "127.0.0.1"],
            ["--db-path", db_path],
            ["--journal-dir", str(tiny_disk / "journal")],
            ["--allowed-root", str(tmp_path / "smurf_data")],
        ],
    )
    client = site.client(iid)
    locker = sqlite3.connect(db_path, isolation_level=None)
    locker.execute("BEGIN IMMEDIATE")  # nothing is written: the journal must hold it all
    sim = SmurfSimulator(str(tmp_path / "smurf_data"), port=port)
    files = sim.files(400, g3_every=0)
    sim.send_paced([dg for _, dg in files], rate=1000)

    def full():
        d = run_data(client)
        c = d.get("counters", {})
        return d if c.get("journal_errors") and c.get("files_announced") == 400 else None

    data = wait_for(full, 15, "the journal to fill up and every file to be received")
    assert data["degraded"] is True
    assert any("No space left" in reason for reason in data["degraded_reasons"])
    locker.execute("ROLLBACK")
    locker.close()
    wait_for(lambda: len(rows(db_path)[0]) == 400, 15, "every file written after the lock")

    def recovered():
        d = run_data(client)
        return d if not d["degraded"] and not d["counters"]["journal_backlog"] else None

    wait_for(recovered, 10, "journal and database healthy again")
    # The port still listens: one more file goes through.
    path, dg = sim.data_file(fmt="txt")
    sim.send(dg)
    wait_for(lambda: path in {r["local_path"] for r in rows(db_path)[0]}, 10, "one more row")
    sim.close()
