"""The local hub and ocs's own HostManager, run for real and called through OCSClient."""

import json
import urllib.request

import pytest

from socs_agents import hub
from socs_agents.dev.testing import LocalSite

pytestmark = pytest.mark.integration


def test_hub_serves_info_and_http_bridge(site):
    with urllib.request.urlopen(site.settings.info_url, timeout=2) as resp:
        assert resp.status == 200
    st = hub.status(site.settings, site.node_dir)
    assert st.alive and st.answering
    # The HTTP bridge answers a call to an unknown procedure with a WAMP error, not HTTP 404.
    req = urllib.request.Request(
        site.settings.wamp_http,
        method="POST",
        data=json.dumps({"procedure": "observatory.nobody", "args": [], "kwargs": {}}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=2) as resp:
        assert b"no_such_procedure" in resp.read()


def test_second_hub_on_same_port_is_refused(site, tmp_path):
    with pytest.raises(hub.HubError, match=f"port {site.port} .* is taken"):
        hub.start(site.settings, str(tmp_path / "other"))


def test_host_manager_answers_through_ocsclient(agent_runner, site):
    agent = agent_runner("HostManager", "hm-test", [["--quiet"]])
    client = site.client("hm-test")
    reply = client.manager.status()
    assert reply.session["op_name"] == "manager"
    assert agent.callable_after is not None and agent.callable_after < 30


def test_stale_instance_cannot_be_started_twice(agent_runner, site):
    agent_runner("HostManager", "hm-dup", [["--quiet"]])
    with pytest.raises(RuntimeError, match="already answers as 'hm-dup'"):
        site.start_agent("hm-dup")


def test_sites_are_isolated_by_realm(tmp_path, site):
    other = LocalSite(str(tmp_path / "other"))
    assert other.realm != site.realm and other.port != site.port
