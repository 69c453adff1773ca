"""Shared fixtures: one real crossbar hub per test session, agents as real processes."""

import pytest

from socs_agents.dev.testing import LocalSite


@pytest.fixture(scope="session")
def site(tmp_path_factory):
    """A site-config plus a running crossbar hub on a free loopback port.

    Every agent that a test starts through it is stopped at the end, hub last, even when
    tests fail.
    """
    local = LocalSite(str(tmp_path_factory.mktemp("site")))
    local.start_hub()
    try:
        yield local
    finally:
        local.stop_all()


@pytest.fixture
def agent_runner(site):
    """Start agents of ``site`` for one test; each is stopped when the test ends."""
    started = []

    def run(agent_class, instance_id, arguments=(), extra_args=()):
        site.add_instance(agent_class, instance_id, arguments)
        agent = site.start_agent(instance_id, extra_args)
        started.append(agent)
        return agent

    yield run
    for agent in reversed(started):
        agent.stop()
        if agent in site.agents:
            site.agents.remove(agent)
