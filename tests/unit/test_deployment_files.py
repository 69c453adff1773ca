"""docker-compose.yml, Dockerfile and site-config.yaml agree (no Docker engine runs here)."""

import os
import re

import yaml

from socs_agents import plugin
from socs_agents.hub import hub_settings

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def load(name):
    with open(os.path.join(ROOT, name)) as f:
        return yaml.safe_load(f)


def site_instances():
    return {
        i["instance-id"]: i
        for i in load("site-config.yaml")["hosts"]["localhost"]["agent-instances"]
    }


def test_site_config_hub_renders():
    assert hub_settings(load("site-config.yaml")["hub"]).interface == "127.0.0.1"


def test_every_site_agent_class_is_known():
    ours = set(plugin.agents)
    for inst in site_instances().values():
        assert inst["agent-class"] in ours | {"HostManager"}, inst


def test_every_compose_service_names_a_site_instance():
    compose = load("docker-compose.yml")
    instances = site_instances()
    agents = {name: svc for name, svc in compose["services"].items() if name != "crossbar"}
    for name, svc in agents.items():
        env = dict(e.split("=", 1) for e in svc["environment"])
        assert env["INSTANCE_ID"] in instances, name
        assert env["SITE_HUB"].startswith("ws://") and env["SITE_HTTP"].startswith("http://")
        assert svc["network_mode"] == "host"
        assert any(v.endswith(":/config:ro") or v.endswith(":/config") for v in svc["volumes"])
    in_compose = {
        dict(e.split("=", 1) for e in s["environment"])["INSTANCE_ID"] for s in agents.values()
    }
    managed = {iid for iid, i in instances.items() if i["agent-class"] != "HostManager"}
    assert managed <= in_compose, "every agent of the site-config has a compose service"


def test_dockerfile_copies_files_that_exist():
    with open(os.path.join(ROOT, "Dockerfile")) as f:
        text = f.read()
    sources = []
    for line in text.splitlines():
        m = re.match(r"COPY\s+(.+)\s+\S+$", line.strip())
        if m:
            sources += m.group(1).split()
    assert sources
    for src in sources:
        assert os.path.exists(os.path.join(ROOT, src)), src
    compose = load("docker-compose.yml")
    for svc in compose["services"].values():
        if "build" in svc:
            assert os.path.exists(os.path.join(ROOT, svc["build"], "Dockerfile"))
