"""A multi-host site on one machine: one site-config, one hub, two hosts each with its own
HostManager (``--site-host``), agents of both driven through OCSClient.

The DAQ node runs a visibility recorder; the orchestration host runs the manager that drives
it across hosts, as in docs/multi_host.rst.
"""

from __future__ import annotations

import os
import secrets

import pytest

from socs_agents.dev.testing import wait_for

pytestmark = pytest.mark.integration

PW2, PW3 = "mh-pw2", "mh-pw3"
POLICY = ["--access-policy", f"override:{PW2},{PW3}"]


def _answers(site, iid) -> bool:
    return site.answers(iid)


def test_two_host_managers_one_site_config(site, tmp_path):
    tag = secrets.token_hex(3)
    daq, orch = f"daq-node-{tag}", f"orch-host-{tag}"
    hm_daq, hm_orch = f"hm-daq-{tag}", f"hm-orch-{tag}"
    recorder, manager = f"drvs-{tag}", f"drvs-manager-{tag}"
    data_dir = str(tmp_path / "visibilities")
    db_path = str(tmp_path / "databases" / "suprsync.db")
    hm_args = [["--initial-state", "up"], ["--quiet"]]

    site.add_host_instance(daq, "HostManager", hm_daq, hm_args)
    site.add_host_instance(
        daq,
        "VisibilityRecorder",
        recorder,
        [
            ["--mode", "slow"],
            ["--data-dir", data_dir],
            ["--db-path", db_path],
            ["--integration-time", 1],
            ["--monitor-interval", 0.5],
            POLICY,
        ],
    )
    site.add_host_instance(orch, "HostManager", hm_orch, hm_args)
    site.add_host_instance(
        orch,
        "VisibilityManager",
        manager,
        [
            ["--mode", "slow"],
            ["--pipelines", recorder],
            ["--recorder-password", PW2],
            ["--monitor-interval", 0.5],
            POLICY,
        ],
    )
    hosts = [
        site.start_agent(hm_daq, ["--site-host", daq, "--working-dir", str(tmp_path)]),
        site.start_agent(hm_orch, ["--site-host", orch, "--working-dir", str(tmp_path)]),
    ]
    try:
        # each HostManager launches only the agents of its own block
        wait_for(lambda: _answers(site, recorder), 60, f"{recorder} launched by {hm_daq}")
        wait_for(lambda: _answers(site, manager), 60, f"{manager} launched by {hm_orch}")

        def child_states(hm_id):
            data = site.client(hm_id).manager.status().session["data"]
            return {c["instance_id"]: c["next_action"] for c in data["child_states"]}

        assert set(child_states(hm_daq)) == {recorder}
        assert set(child_states(hm_orch)) == {manager}

        # the manager on one host drives the recorder on the other, through the one hub
        ping = site.client(manager).ping()
        assert ping.status == 0, ping
        assert ping.session["data"][recorder]["status"] == "success"
        rec_status = site.client(recorder).ping()
        assert rec_status.status == 0

        # level 2 is enforced across hosts as well
        refused = site.client(manager).start(start_mjd="now")
        assert refused.status != 0
        assert "credential" in refused.msg
        started = site.client(manager, privs=PW2).start(start_mjd="now")
        assert started.status == 0, started
        stopped = site.client(manager, privs=PW2).stop(stop_mjd="now")
        assert stopped.status == 0, stopped
        assert os.path.isdir(data_dir)
    finally:
        for hm_id in (hm_daq, hm_orch):
            try:
                site.client(hm_id).update(requests=[("all", "down")])
            except Exception:
                pass
        for iid in (recorder, manager):
            try:
                wait_for(lambda iid=iid: not _answers(site, iid), 30, f"{iid} to stop")
            except TimeoutError:
                pass
        for agent in hosts:
            agent.stop()
            site.agents.remove(agent)
