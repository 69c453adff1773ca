"""deploy/multi-host: one site-config, four hosts, a docker-compose file each; they agree,
and every argument of our agents' instances is one their parsers accept."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import yaml

from socs_agents import plugin

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEPLOY = os.path.join(ROOT, "deploy", "multi-host")
#: agent classes of ocs and socs the site runs next to ours
OTHERS = {"HostManager", "AccessDirector", "SupRsync"}


def load(*parts):
    with open(os.path.join(DEPLOY, *parts)) as f:
        return yaml.safe_load(f)


def test_each_host_has_a_host_manager_and_a_compose_file_for_its_docker_agents():
    site = load("site-config.yaml")
    assert site["hub"]["access_policy"].startswith("director:")
    for host, block in site["hosts"].items():
        instances = block["agent-instances"]
        managers = [i for i in instances if i["agent-class"] == "HostManager"]
        assert len(managers) == 1, host
        docker = {i["instance-id"] for i in instances if i.get("manage") == "docker"}
        compose = load(host, "docker-compose.yml")
        services = {
            svc["environment"]["INSTANCE_ID"]: name
            for name, svc in compose["services"].items()
            if "INSTANCE_ID" in svc.get("environment", {})
        }
        assert set(services) == docker, host
        for iid, name in services.items():
            assert name == f"ocs-{iid}", "HostManager finds a service as ocs-<instance-id>"
        for inst in instances:
            assert inst["agent-class"] in set(plugin.agents) | OTHERS, inst


def test_our_agents_accept_their_arguments():
    """Each instance's arguments as ocs hands them over (its ArgContainer keeps one entry
    per option) through its agent's own make_parser, in a subprocess (importing the agents
    picks txaio's framework for this test process); what a repeatable option lists must
    all arrive."""
    site = load("site-config.yaml")
    jobs = [
        (plugin.agents[i["agent-class"]]["module"], [str(x) for a in i["arguments"] for x in a])
        for block in site["hosts"].values()
        for i in block["agent-instances"]
        if i["agent-class"] in plugin.agents
    ]
    assert len(jobs) == 7
    script = (
        "import importlib, json, sys\n"
        "from ocs.site_config import ArgContainer\n"
        "for module, argv in json.loads(sys.argv[1]):\n"
        "    given = ArgContainer(argv).to_list()\n"
        "    args = importlib.import_module(module).make_parser().parse_args(given)\n"
        "    if '--allowed-root' in argv:\n"
        "        i = argv.index('--allowed-root') + 1\n"
        "        want = []\n"
        "        while i < len(argv) and not argv[i].startswith('--'):\n"
        "            want.append(argv[i])\n"
        "            i += 1\n"
        "        assert len(want) >= 1 and args.allowed_root == want, (args.allowed_root, want)\n"
        "print('ok')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, json.dumps(jobs)], capture_output=True, text=True
    )
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr[-2000:]
