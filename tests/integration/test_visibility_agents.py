"""Three VisibilityRecorders and their VisibilityManager as real processes on a real hub."""

import os
import signal
import sqlite3
import time

import h5py
import pytest

from socs_agents.agents.visibility_recorder.schedule import DONE, RECORDING, Schedule
from socs_agents.db import SupRsyncDB, md5_file
from socs_agents.dev.sim.sntp import SNTPResponder
from socs_agents.dev.testing import FeedSubscriber, WampCaller, wait_for
from socs_agents.timeutil import unix_to_mjd_mpm

pytestmark = pytest.mark.integration

RECORDERS = ["vis-r0", "vis-r1", "vis-r2"]
MANAGER, DISCOVERING = "vis-mgr", "vis-mgr-auto"
PW2, PW3 = "test-pw2", "test-pw3"
POLICY = ["--access-policy", f"override:{PW2},{PW3}"]
LEAD = 0.6
STALE = 1.5


class Fleet:
    def __init__(self, site, root):
        self.site = site
        self.data_dir = os.path.join(root, "data")
        self.db_path = os.path.join(root, "db", "suprsync.db")
        self.agents = {}

    def recorder_args(self):
        return [
            ["--mode", "fast"],
            ["--data-dir", self.data_dir],
            ["--db-path", self.db_path],
            ["--integration-time", 0.2],
            ["--integrations-per-file", 2],
            ["--n-antennas", 4],
            ["--n-channels", 16],
            ["--now-lead", LEAD],
            ["--monitor-interval", 0.25],
            POLICY,
        ]

    def manager_args(self, pipelines):
        # One manager reads the recorders' password from a file (kept out of the process
        # list), the other takes it as an argument.
        password_file = os.path.join(os.path.dirname(self.data_dir), "recorder-password")
        with open(password_file, "w") as f:
            f.write(f"{PW2}\n")
        os.chmod(password_file, 0o600)
        password = (
            ["--recorder-password-file", password_file]
            if pipelines
            else ["--recorder-password", PW2]
        )
        args = [
            ["--mode", "fast"],
            ["--timeout", 1.5],
            ["--monitor-interval", 0.25],
            ["--stale-after", STALE],
            ["--now-lead", LEAD],
            password,
            ["--cleared-note-hold", 30],
            POLICY,
        ]
        return args + ([["--pipelines", *pipelines]] if pipelines else [])

    def start(self, iid):
        self.agents[iid] = self.site.start_agent(iid)
        return self.agents[iid]

    def client(self, iid=MANAGER, privs=None):
        return self.site.client(iid, privs=privs)

    def schedule(self, iid):
        s = Schedule(os.path.join(self.data_dir, f".{iid}.schedule.sqlite"))
        try:
            return s.operations()
        finally:
            s.close()

    def monitor(self, iid=MANAGER):
        return self.client(iid).monitor.status().session["data"]


@pytest.fixture(scope="module")
def fleet(site, tmp_path_factory):
    f = Fleet(site, str(tmp_path_factory.mktemp("vis")))
    for iid in RECORDERS:
        site.add_instance("VisibilityRecorder", iid, f.recorder_args())
    site.add_instance("VisibilityManager", MANAGER, f.manager_args(RECORDERS))
    site.add_instance("VisibilityManager", DISCOVERING, f.manager_args(None))
    try:
        for iid in RECORDERS + [MANAGER, DISCOVERING]:
            f.start(iid)
        wait_for(lambda: f.monitor()["summary"] == "normal", 10, "all pipelines reporting")
        yield f
    finally:
        # Stop them together: each graceful stop takes several seconds.
        for agent in f.agents.values():
            agent.send_signal(signal.SIGCONT)
            agent.send_signal(signal.SIGTERM)
        for agent in f.agents.values():
            agent.stop()
            if agent in site.agents:
                site.agents.remove(agent)


def answers(reply):
    return reply.session["data"], reply.session["messages"]


def message_of(reply):
    return [m for _, m in reply.session["messages"] if not m.startswith("Status is now")][-1]


def mjd_mpm(t):
    return dict(zip(("mjd", "mpm"), unix_to_mjd_mpm(t), strict=False))


def test_ping_and_access_control(fleet):
    reply = fleet.client().ping()
    assert reply.session["success"] is True
    assert reply.session["data"] == {
        iid: {"status": "success", "response": "pong"} for iid in RECORDERS
    }
    # Changing state needs level 2: without the password, the manager refuses...
    refused = fleet.client().start(start_mjd="now")
    assert refused.status == -1
    assert "requires credential level 2-ADVANCED but the client has only level 1" in refused.msg
    # ...and so do the pipelines when called directly.
    assert "requires credential level 2" in fleet.client(RECORDERS[0]).stop(stop_mjd="now").msg
    assert "requires credential level 2" in fleet.client(privs="wrong").sync(server="127.0.0.1").msg
    # Stopping the monitoring is a control too; reading it is not.
    for iid in (MANAGER, RECORDERS[0]):
        assert "requires credential level 2" in fleet.client(iid).monitor.stop().msg
        assert fleet.client(iid).monitor.status().session["status"] == "running"
    assert all(not ops for ops in map(fleet.schedule, RECORDERS))
    # The docstrings users read in OCSClient show the signature.
    assert fleet.client().start.start.__doc__.startswith("start(start_mjd=None")


def test_direct_procedure_checks_credentials(fleet, site):
    """The recorders' direct procedure (what the manager calls) refuses what the tasks
    refuse: start, stop and sync need credential level 2 there too."""
    caller = WampCaller(site)
    uri = f"observatory.{RECORDERS[0]}.direct"
    try:
        for password in (None, "wrong", PW3[:-1]):
            kw = {"password": password} if password else {}
            for op, params in (
                ("start", {"start_mjd": "now"}),
                ("stop", {"stop_mjd": "now"}),
                ("sync", {"server": "127.0.0.1"}),
            ):
                reply = caller.call(uri, op, params, **kw)
                assert reply["success"] is False, (op, password)
                assert reply["message"].startswith(
                    "The action requires credential level 2-ADVANCED but the client has "
                    "only level 1-BASIC"
                ), reply
        assert caller.call(uri, "ping", {}) == {
            "success": True,
            "message": "pong",
            "data": {
                "response": "pong",
                "pipeline_id": RECORDERS[0],
                "mode": "fast",
                "timestamp": pytest.approx(time.time(), abs=5),
            },
        }
        # With the level-2 password, the parameters are checked as the task checks them.
        bad = caller.call(uri, "sync", {"server": "127.0.0.1", "port": 0}, password=PW2)
        assert bad["success"] is False and "port" in bad["message"]
        assert (
            caller.call(uri, "abort", {}, password=PW3)["message"] == 'No operation called "abort"'
        )
        # Hostile shapes are answers, not crashes, and are counted.
        assert caller.call(uri, 12, {}, password=PW3)["message"] == 'No operation called "?"'
        assert caller.call(uri, "start", [1, 2], password=PW3)["message"] == (
            "params must be a dict"
        )
        huge = caller.call(uri, "start", {"start_mjd": 10**30, "start_mpm": 0}, password=PW2)
        assert huge["success"] is False and huge["message"].startswith("start_mjd must be")
        inf = caller.call(uri, "sync", {"server": "127.0.0.1", "timeout": 1e308}, password=PW2)
        assert inf["success"] is False and "Param 'timeout'" in inf["message"]
    finally:
        caller.close()
    assert all(not ops for ops in map(fleet.schedule, RECORDERS))
    counters = wait_for(
        lambda: (lambda c: c if c["direct_bad_request"] >= 4 else None)(
            fleet.client(RECORDERS[0]).monitor.status().session["data"]["counters"]
        ),
        5,
        "the refusals counted",
    )
    assert counters["direct_underprivileged"] >= 9


def test_start_stop_files_registered_and_errors(fleet):
    mgr = fleet.client(privs=PW2)
    missing = mgr.start()
    assert missing.session["success"] is False
    assert message_of(missing) == (
        "Missing required keyword(s): start_mjd (or mjd), start_mpm (or mpm)"
    )
    past = mgr.start(**mjd_mpm(time.time() - 10))  # the reference code's spelling
    assert past.session["success"] is False
    assert {r["status"] for r in past.session["data"].values()} == {"error"}
    assert all(
        r["response"].startswith("Insufficient advanced notice")
        for r in past.session["data"].values()
    )
    assert message_of(past) == (
        "start: 3 of 3 pipelines failed: vis-r0 (error), vis-r1 (error), vis-r2 (error)"
    )

    started = mgr.start(start_mjd="now")
    assert started.session["success"] is True, message_of(started)
    dirs = {iid: r["response"] for iid, r in started.session["data"].items()}
    assert set(dirs) == set(RECORDERS)
    assert all(r["status"] == "success" for r in started.session["data"].values())
    assert all(
        d.startswith(fleet.data_dir) and d.endswith(f"_fast_{iid}") for iid, d in dirs.items()
    )
    # "now" was resolved once by the manager: every pipeline has the same start instant.
    ops = {iid: fleet.schedule(iid)[-1] for iid in RECORDERS}
    assert len({op.start for op in ops.values()}) == 1
    overlap = mgr.start(start_mjd="now")
    assert overlap.session["success"] is False
    assert all(
        "Operation overlaps with a previously scheduled operation" in r["response"]
        for r in overlap.session["data"].values()
    )
    wait_for(lambda: fleet.monitor()["op_type"] == "recording", 5, "all recording")

    stop_at = time.time() + 1.2
    stopped = mgr.stop(stop_mjd=unix_to_mjd_mpm(stop_at)[0], stop_mpm=unix_to_mjd_mpm(stop_at)[1])
    assert stopped.session["success"] is True
    assert {iid: r["response"] for iid, r in stopped.session["data"].items()} == dirs
    # A stop ends the recording at the requested time, not at once.
    assert fleet.monitor()["op_type"] == "recording"
    assert all(fleet.schedule(iid)[-1].state == RECORDING for iid in RECORDERS)
    wait_for(
        lambda: all(fleet.schedule(iid)[-1].state == DONE for iid in RECORDERS),
        10,
        "recordings done",
    )
    wait_for(lambda: fleet.monitor()["op_type"] == "idle", 5, "all idle")
    nothing = mgr.stop(stop_mjd="now")
    assert all(
        r["response"].startswith("No operation active at the requested stop time")
        for r in nothing.session["data"].values()
    )

    db = SupRsyncDB(fleet.db_path, create_all=False)
    try:
        rows = db.files(archive_name="drv_fast")
    finally:
        db.close()
    for iid, op in ((iid, fleet.schedule(iid)[-1]) for iid in RECORDERS):
        assert op.actual_stop >= op.stop - 0.05 and op.stop == pytest.approx(stop_at, abs=2e-3)
        names = sorted(os.listdir(dirs[iid]))
        assert names and len(names) == op.files and not [n for n in names if n.endswith(".tmp")]
        mine = {r["local_path"]: r for r in rows if r["local_path"].startswith(dirs[iid])}
        assert sorted(mine) == [os.path.join(dirs[iid], n) for n in names]
        for path, row in mine.items():
            assert row["local_md5sum"] == md5_file(path)
            code, tag, name = row["remote_path"].split("/")
            assert len(code) == 5 and code.isdigit() and tag == op.tag
        with h5py.File(os.path.join(dirs[iid], names[0])) as f:
            assert f.attrs["pipeline_id"] == iid and f.attrs["mode"] == "fast"
            assert f.attrs["start_time"] == pytest.approx(op.start)
            assert f["visibilities"].shape == (2, 10, 16, 4)
    status = fleet.client(RECORDERS[0]).monitor.status().session["data"]
    assert status["files_written"] >= 2 and status["write_errors"] == 0


def test_sync_with_local_sntp_server(fleet):
    with SNTPResponder(offset=0.5, stratum=2) as server:
        reply = fleet.client(privs=PW2).sync(server="127.0.0.1", port=server.port, set_clock=True)
        dead = SNTPResponder(silent=True).start()
        try:
            silent = fleet.client(privs=PW2).sync(server="127.0.0.1", port=dead.port, timeout=0.3)
        finally:
            dead.close()
    assert reply.session["success"] is True and server.requests == 3
    for r in reply.session["data"].values():
        assert r["status"] == "success"
        assert r["response"]["offset_s"] == pytest.approx(0.5, abs=0.05)
        assert r["response"]["stratum"] == 2 and r["response"]["clock_set"] is False
        assert "not allowed" in r["response"]["clock_note"]
    assert silent.session["success"] is False
    assert all(
        r["status"] == "error" and "no answer from NTP server" in r["response"]
        for r in silent.session["data"].values()
    )


def test_stalled_pipeline_times_out_goes_stale_and_clears(fleet, site):
    feed = FeedSubscriber(site, MANAGER, "visibility_summary")
    stalled = fleet.agents["vis-r2"]
    try:
        stalled.send_signal(signal.SIGSTOP)
        reply = fleet.client().ping()
        assert reply.session["success"] is False
        assert reply.session["data"]["vis-r2"] == {
            "status": "timeout",
            "response": "no answer within 1.5 s",
        }
        assert all(reply.session["data"][i]["status"] == "success" for i in RECORDERS[:2])
        assert message_of(reply) == "ping: 1 of 3 pipelines failed: vis-r2 (timeout)"
        data = wait_for(
            lambda: (lambda d: d if d["summary"] == "error" else None)(fleet.monitor()),
            2 * STALE + 2,
            "the manager to see the stale pipeline",
        )
        assert data["info"] == f"1 pipeline has not updated in {STALE:g} s: vis-r2"
        assert data["pipelines"]["vis-r2"]["stale"] is True
    finally:
        stalled.send_signal(signal.SIGCONT)
    data = wait_for(
        lambda: (lambda d: d if d["summary"] == "normal" else None)(fleet.monitor()),
        10,
        "the manager back to normal",
    )
    assert data["info"] == (
        f"all 3 pipelines normal (cleared: error: 1 pipeline has not "
        f"updated in {STALE:g} s: vis-r2)"
    )
    wait_for(
        lambda: any("cleared" in m[0]["summary"]["data"]["info"][-1] for m in feed.messages),
        5,
        "the cleared note on the feed",
    )
    feed.close()
    summaries = [m[0]["summary"]["data"]["summary"][-1] for m in feed.messages]
    assert "error" in summaries and summaries[-1] == "normal"


def test_killed_recorder_then_restarted_resumes(fleet, site):
    mgr = fleet.client(privs=PW2)
    assert mgr.start(start_mjd="now").session["success"] is True
    wait_for(lambda: fleet.monitor()["op_type"] == "recording", 5, "recording")
    victim = "vis-r1"
    tag = fleet.schedule(victim)[-1].tag
    wait_for(lambda: fleet.schedule(victim)[-1].files >= 1, 5, "a file before the kill")
    fleet.agents[victim].kill()
    reply = fleet.client().ping()
    assert reply.session["data"][victim] == {
        "status": "timeout",
        "response": "no answer: not registered on the hub (agent not running)",
    }
    assert message_of(reply) == f"ping: 1 of 3 pipelines failed: {victim} (timeout)"
    files_before = fleet.schedule(victim)[-1].files
    fleet.start(victim)
    status = wait_for(
        lambda: (lambda d: d if d.get("op_type") == "recording" else None)(
            fleet.client(victim).monitor.status().session.get("data") or {}
        ),
        10,
        "the restarted recorder recording",
    )
    assert status["op_tag"] == tag and "resumed after a restart" in status["info"]
    wait_for(lambda: fleet.schedule(victim)[-1].files > files_before, 5, "files after restart")
    op = fleet.schedule(victim)[-1]
    assert op.resumed == 1 and op.state == RECORDING
    stopped = mgr.stop(stop_mjd="now")
    assert stopped.session["success"] is True, message_of(stopped)
    wait_for(lambda: all(fleet.schedule(i)[-1].state == DONE for i in RECORDERS), 10, "done")
    names = os.listdir(os.path.join(fleet.data_dir, tag))
    assert len(names) == len(set(names)) == fleet.schedule(victim)[-1].files


def test_discovery_finds_every_recorder_of_its_mode(fleet):
    wait_for(lambda: fleet.monitor(DISCOVERING)["n_pipelines"] == 3, 5, "3 discovered")
    reply = fleet.client(DISCOVERING).ping()
    assert sorted(reply.session["data"]) == RECORDERS
    assert reply.session["success"] is True


def test_locked_database_while_recording_loses_no_registration(fleet):
    """The SupRsync database write-locked by another connection for longer than the
    recorders' busy timeout (5 s): registrations fail, are counted and retried, and every
    file is registered once the lock is released."""
    mgr = fleet.client(privs=PW2)
    assert mgr.start(start_mjd="now").session["success"] is True
    wait_for(lambda: fleet.monitor()["op_type"] == "recording", 5, "recording")
    status = lambda: fleet.client(RECORDERS[0]).monitor.status().session["data"]  # noqa: E731
    locker = sqlite3.connect(fleet.db_path, isolation_level=None)
    try:
        locker.execute("BEGIN IMMEDIATE")
        data = wait_for(
            lambda: (lambda d: d if d["counters"]["database_locked"] >= 1 else None)(status()),
            15,
            "a registration refused by the lock",
        )
        assert data["summary"] == "error" and "not registered" in data["info"]
        assert data["pending_registration"] >= 1
    finally:
        locker.execute("ROLLBACK")
        locker.close()
    wait_for(lambda: status()["pending_registration"] == 0, 15, "the retries registered")
    assert mgr.stop(stop_mjd="now").session["success"] is True
    wait_for(lambda: all(fleet.schedule(i)[-1].state == DONE for i in RECORDERS), 10, "done")
    wait_for(lambda: fleet.monitor()["summary"] == "normal", 10, "all normal again")
    db = SupRsyncDB(fleet.db_path, create_all=False)
    try:
        registered = {r["local_path"] for r in db.files(archive_name="drv_fast")}
    finally:
        db.close()
    for iid in RECORDERS:
        op = fleet.schedule(iid)[-1]
        folder = os.path.join(fleet.data_dir, op.tag)
        on_disk = {os.path.join(folder, n) for n in os.listdir(folder)}
        assert on_disk and on_disk <= registered, iid


def test_recorder_registers_nothing_outside_its_allowed_roots(fleet, site, tmp_path):
    """A recorder whose data dir is outside --allowed-root writes its files but registers
    none; every refusal is counted in session.data and on the recorded feed."""
    iid = "vis-slow-outside"
    data_dir = str(tmp_path / "outside")
    site.add_instance(
        "VisibilityRecorder",
        iid,
        [
            ["--mode", "slow"],
            ["--data-dir", data_dir],
            ["--allowed-root", str(tmp_path / "allowed")],
            ["--db-path", fleet.db_path],
            ["--integration-time", 0.2],
            ["--now-lead", LEAD],
            ["--monitor-interval", 0.25],
            POLICY,
        ],
    )
    fleet.start(iid)
    status = lambda: fleet.client(iid).monitor.status().session.get("data") or {}  # noqa: E731
    wait_for(lambda: status().get("summary") == "normal", 15, "the recorder up")
    feed = FeedSubscriber(site, iid, "visibility_status")
    try:
        assert fleet.client(iid, privs=PW2).start(start_mjd="now").session["success"] is True
        data = wait_for(
            lambda: (lambda d: d if d["counters"]["outside_allowed_root"] >= 2 else None)(status()),
            10,
            "refusals counted",
        )
        assert data["summary"] == "error" and "outside the allowed roots" in data["info"]
        assert data["files_written"] >= 2 and data["files_registered"] == 0
        wait_for(
            lambda: any(
                m[0]["status"]["data"]["n_outside_allowed_root"][-1] >= 1 for m in feed.messages
            ),
            5,
            "the counter on the feed",
        )
        assert fleet.client(iid, privs=PW2).stop(stop_mjd="now").session["success"] is True
    finally:
        feed.close()
    db = SupRsyncDB(fleet.db_path, create_all=False)
    try:
        assert not [r for r in db.files() if r["local_path"].startswith(data_dir)]
    finally:
        db.close()
