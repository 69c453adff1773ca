"""A real crossbar hub and real agent processes for tests, benchmarks and the demo.

Each :class:`LocalSite` gets its own port and a realm of its own, so an agent left over from
another run (same instance-id, still retrying its connection) can never answer for a new one.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence

import yaml

from .. import hub

AGENT_START_TIMEOUT = 30.0


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def free_udp_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def wait_for(
    condition: Callable[[], object], timeout: float, what: str, interval: float = 0.05
) -> object:
    """Poll ``condition`` until it returns something true; raise TimeoutError naming ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout:.1f} s waiting for {what}")
        time.sleep(interval)


class LocalSite:
    """A site-config file plus a crossbar hub on loopback, for one test session.

    Args:
        workdir: folder for the site-config, the hub's node dir and the agents' logs.
        instances: ``agent-instances`` entries for host ``localhost``.
        port: the hub's port (a free one by default).
    """

    def __init__(
        self,
        workdir: str,
        instances: Sequence[dict] = (),
        port: int | None = None,
        realm: str | None = None,
    ) -> None:
        self.workdir = os.path.abspath(workdir)
        os.makedirs(self.workdir, exist_ok=True)
        self.port = port or free_port()
        self.realm = realm or f"test_{secrets.token_hex(4)}"
        self.site_file = os.path.join(self.workdir, "site-config.yaml")
        self.node_dir = os.path.join(self.workdir, "hub")
        self.log_dir = os.path.join(self.workdir, "logs")
        os.makedirs(self.log_dir, exist_ok=True)
        self.instances: list[dict] = list(instances)
        #: host blocks besides ``localhost`` (a multi-host site on one machine)
        self.other_hosts: dict[str, list[dict]] = {}
        self.agents: list[AgentProcess] = []
        self.hub_start_seconds: float | None = None
        self.hub_pid: int | None = None
        self.write_site_config()

    @property
    def hub_section(self) -> dict:
        return {
            "wamp_server": f"ws://127.0.0.1:{self.port}/ws",
            "wamp_http": f"http://127.0.0.1:{self.port}/call",
            "wamp_realm": self.realm,
            "address_root": "observatory",
        }

    @property
    def settings(self) -> hub.HubSettings:
        return hub.hub_settings(self.hub_section)

    def write_site_config(self) -> None:
        hosts = {"localhost": {"log-dir": self.log_dir, "agent-instances": self.instances}}
        for host, instances in self.other_hosts.items():
            hosts[host] = {"log-dir": self.log_dir, "agent-instances": instances}
        data = {"hub": self.hub_section, "hosts": hosts}
        with open(self.site_file, "w") as f:
            yaml.safe_dump(data, f, sort_keys=False)

    def add_instance(
        self, agent_class: str, instance_id: str, arguments: Sequence[Sequence] = ()
    ) -> None:
        self.instances = [i for i in self.instances if i["instance-id"] != instance_id]
        self.instances.append(
            {
                "agent-class": agent_class,
                "instance-id": instance_id,
                "arguments": [list(a) for a in arguments],
            }
        )
        self.write_site_config()

    def add_host_instance(
        self, host: str, agent_class: str, instance_id: str, arguments: Sequence[Sequence] = ()
    ) -> None:
        """An instance in the block of ``host`` (run it with ``--site-host host``)."""
        entries = [i for i in self.other_hosts.get(host, []) if i["instance-id"] != instance_id]
        entries.append(
            {
                "agent-class": agent_class,
                "instance-id": instance_id,
                "arguments": [list(a) for a in arguments],
            }
        )
        self.other_hosts[host] = entries
        self.write_site_config()

    @property
    def client_args(self) -> list[str]:
        return ["--site-file", self.site_file, "--site-host", "localhost"]

    def start_hub(self) -> float:
        # generous: a loaded 2-core machine has taken over 20 s to bring crossbar up
        self.hub_pid, self.hub_start_seconds = hub.start(self.settings, self.node_dir, 60.0)
        return self.hub_start_seconds

    def stop_hub(self) -> None:
        hub.stop(self.settings, self.node_dir)

    def client(self, instance_id: str, privs=None):
        from ocs.ocs_client import OCSClient

        return OCSClient(instance_id, privs=privs, args=self.client_args)

    def answers(self, instance_id: str) -> bool:
        try:
            self.client(instance_id)
            return True
        except Exception:
            return False

    def start_agent(
        self,
        instance_id: str,
        extra_args: Sequence[str] = (),
        timeout: float = AGENT_START_TIMEOUT,
        python: str | None = None,
    ) -> AgentProcess:
        """Run ``ocs-agent-cli`` for an instance of the site-config; wait until callable."""
        if self.answers(instance_id):
            raise RuntimeError(
                f"an agent already answers as {instance_id!r}; refusing to start a second one"
            )
        agent = AgentProcess(self, instance_id, extra_args, python)
        self.agents.append(agent)
        agent.start()
        agent.wait_callable(timeout)
        return agent

    def stop_all(self) -> None:
        for agent in reversed(self.agents):
            agent.stop()
        self.agents.clear()
        self.stop_hub()

    def __enter__(self) -> LocalSite:
        self.start_hub()
        return self

    def __exit__(self, *exc) -> None:
        self.stop_all()


class AgentProcess:
    """One agent instance run as ``python -m ocs.agent_cli`` in a process group of its own."""

    def __init__(
        self,
        site: LocalSite,
        instance_id: str,
        extra_args: Sequence[str] = (),
        python: str | None = None,
    ):
        self.site = site
        self.instance_id = instance_id
        self.log_path = os.path.join(site.log_dir, f"{instance_id}.out")
        # ``python``: another environment's interpreter (benchmarks run socs's agents).
        self.python = python or sys.executable
        self.cmd = [
            self.python,
            "-u",
            "-m",
            "ocs.agent_cli",
            "--instance-id",
            instance_id,
            *site.client_args,
            "--crossbar-timeout",
            "20",
            *extra_args,
        ]
        self.proc: subprocess.Popen | None = None
        self.started_at: float | None = None
        self.callable_after: float | None = None

    def start(self) -> None:
        env = dict(os.environ, OCS_CONFIG_DIR=self.site.workdir, PYTHONUNBUFFERED="1")
        # Agents run from a venv: put its bin first so agents that spawn tools find them.
        env["PATH"] = os.path.dirname(self.python) + os.pathsep + env.get("PATH", "")
        self._log = open(self.log_path, "ab")
        self.started_at = time.monotonic()
        self.proc = subprocess.Popen(
            self.cmd,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
            cwd=self.site.workdir,
        )

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def wait_callable(self, timeout: float = AGENT_START_TIMEOUT):
        def ready():
            if not self.alive():
                raise RuntimeError(
                    f"agent {self.instance_id} exited with code "
                    f"{self.proc.returncode}; log:\n{self.log_tail()}"
                )
            try:
                return self.site.client(self.instance_id)
            except Exception:
                return None

        client = wait_for(ready, timeout, f"agent {self.instance_id} to register")
        self.callable_after = time.monotonic() - self.started_at
        return client

    def log_tail(self, lines: int = 40) -> str:
        try:
            with open(self.log_path, errors="replace") as f:
                return "".join(f.readlines()[-lines:])
        except OSError:
            return ""

    def log_text(self) -> str:
        with open(self.log_path, errors="replace") as f:
            return f.read()

    def send_signal(self, sig: int) -> None:
        if self.alive():
            os.killpg(self.proc.pid, sig)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int | None:
        """Ask the agent to stop (graceful for SIGTERM/SIGINT); SIGKILL after ``timeout``."""
        if self.proc is None:
            return None
        if self.alive():
            self.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.send_signal(signal.SIGKILL)
                self.proc.wait(5)
        self._log.close()
        return self.proc.returncode

    def kill(self) -> None:
        """kill -9: no chance to clean up."""
        self.stop(signal.SIGKILL, timeout=5.0)


class FeedSubscriber:
    """A WAMP subscriber to one OCS feed, in a thread of its own (asyncio autobahn).

    ``messages`` collects the first argument of each event: ``(message, feed_info)`` as ocs
    publishes it.
    """

    def __init__(
        self, site: LocalSite, instance_id: str, feed_name: str, timeout: float = 10.0
    ) -> None:
        import asyncio
        import threading

        from autobahn.asyncio.wamp import ApplicationRunner, ApplicationSession

        self.topic = f"observatory.{instance_id}.feeds.{feed_name}"
        self.messages: list = []
        self._ready = threading.Event()
        self._loop = asyncio.new_event_loop()
        owner = self

        class _Session(ApplicationSession):
            async def onJoin(self, details):
                await self.subscribe(
                    lambda *args, **kw: owner.messages.append(args[0]), owner.topic
                )
                owner._session = self
                owner._ready.set()

        runner = ApplicationRunner(site.settings.wamp_server, site.realm)

        def serve():
            asyncio.set_event_loop(self._loop)
            self._loop.run_until_complete(runner.run(_Session, start_loop=False))
            self._loop.run_forever()

        self._thread = threading.Thread(target=serve, name="feed-subscriber", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise TimeoutError(f"could not subscribe to {self.topic} within {timeout} s")

    def close(self) -> None:
        def leave():
            try:
                self._session.leave()
            finally:
                self._loop.call_later(0.2, self._loop.stop)

        self._loop.call_soon_threadsafe(leave)
        self._thread.join(timeout=5)


class WampCaller:
    """A plain WAMP session (asyncio autobahn) in a thread of its own, for calling procedures
    from tests and benchmarks as any other client of the hub would.

    ``call(uri, *args, **kwargs)`` waits for the answer; ``run(coroutine)`` runs a coroutine
    on the session's loop (``self.session`` is the joined session) and returns its result.
    """

    def __init__(self, site: LocalSite, timeout: float = 10.0) -> None:
        import asyncio
        import threading

        from autobahn.asyncio.wamp import ApplicationRunner, ApplicationSession

        self.loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        owner = self

        class _Session(ApplicationSession):
            async def onJoin(self, details):
                owner.session = self
                owner._ready.set()

        runner = ApplicationRunner(site.settings.wamp_server, site.realm)

        def serve():
            asyncio.set_event_loop(self.loop)
            self.loop.run_until_complete(runner.run(_Session, start_loop=False))
            self.loop.run_forever()

        self._thread = threading.Thread(target=serve, name="wamp-caller", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise TimeoutError(f"WAMP session did not join within {timeout} s")

    def run(self, coroutine, timeout: float = 120.0):
        import asyncio

        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def call(self, uri: str, *args, **kwargs):
        async def one():
            return await self.session.call(uri, *args, **kwargs)

        return self.run(one())

    def close(self) -> None:
        def leave():
            try:
                self.session.leave()
            finally:
                self.loop.call_later(0.2, self.loop.stop)

        self.loop.call_soon_threadsafe(leave)
        self._thread.join(timeout=5)
