"""What every agent's shell shares: the class preamble, the table of its operations, the
stopper of a blocking loop, and ``main()``.

An agent class derives from :class:`AgentShell`, names its site-config class in
``agent_class``, lists what it offers in :meth:`AgentShell.operations` and does its own
start-up in :meth:`AgentShell.begin`; its module's ``main()`` is one call of
:func:`run_agent`. Registration, logging, the shutdown hook and the reconnecting runner are
therefore written once, here.
"""

from __future__ import annotations

import argparse
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from ocs import ocs_agent, site_config
from twisted.internet import reactor

from ..runtime import reporter, start_logging
from . import CONTROL_PRIVS  # noqa: F401  (the agents import it from here)
from ._ops import release_finished_sessions, stop_sessions_promptly


@dataclass(frozen=True)
class Operation:
    """One OCS task or process, as :meth:`ocs.ocs_agent.OCSAgent.register_task` and
    ``register_process`` take it."""

    name: str
    start: Callable
    #: a process's stopper or a task's aborter
    stop: Callable | None = None
    is_process: bool = False
    blocking: bool = True
    startup: bool = False
    min_privs: int = 1

    def register(self, agent: ocs_agent.OCSAgent) -> None:
        if self.is_process:
            agent.register_process(
                self.name,
                self.start,
                self.stop,
                blocking=self.blocking,
                startup=self.startup,
                min_privs=self.min_privs,
            )
        else:
            agent.register_task(
                self.name,
                self.start,
                blocking=self.blocking,
                aborter=self.stop,
                min_privs=self.min_privs,
            )


def task(
    name: str,
    start: Callable,
    *,
    aborter: Callable | None = None,
    blocking: bool = True,
    min_privs: int = 1,
) -> Operation:
    return Operation(name, start, aborter, False, blocking, False, min_privs)


def process(
    name: str,
    start: Callable,
    stopper: Callable,
    *,
    blocking: bool = True,
    startup: bool = False,
    min_privs: int = 1,
) -> Operation:
    return Operation(name, start, stopper, True, blocking, startup, min_privs)


def stopper_for(stop_event: threading.Event, message: str) -> Callable:
    """The stopper of a blocking process whose loop waits on ``stop_event``."""

    def stop(session: ocs_agent.OpSession, params: dict | None = None) -> tuple[bool, str]:
        session.set_status("stopping")
        stop_event.set()
        return True, message

    return stop


def agent_options(
    parser: argparse.ArgumentParser | None,
) -> tuple[argparse.ArgumentParser, argparse._ArgumentGroup]:
    """The parser (a new one unless ocs gives one) and its "Agent Options" group."""
    if parser is None:
        parser = argparse.ArgumentParser()
    return parser, parser.add_argument_group("Agent Options")


class AgentShell:
    """Base of every agent class: keeps the OCS agent, its log, a one-line reporter and the
    parsed arguments.

    Args:
        agent (ocs.ocs_agent.OCSAgent): the OCS agent.
        args (argparse.Namespace): parsed arguments (see the module's ``make_parser``).
    """

    #: the agent's class name in the site-config
    agent_class: ClassVar[str] = ""

    def __init__(self, agent: ocs_agent.OCSAgent, args: argparse.Namespace) -> None:
        self.agent = agent
        self.log = agent.log
        self.report = reporter(agent.log)
        self.args = args

    @classmethod
    def check_args(cls, args: argparse.Namespace) -> None:
        """Refuse bad arguments before connecting to the hub (raise SystemExit)."""

    def operations(self) -> list[Operation]:
        """The tasks and processes the agent offers."""
        raise NotImplementedError

    def begin(self) -> None:
        """Start what runs beside the operations (listening sockets, loops); called once,
        after the operations are registered and before the reactor runs."""

    def shutdown(self) -> Any:
        """Stop cleanly when the reactor stops; may return a Deferred the reactor waits for."""
        return None


def run_agent(
    shell_class: type[AgentShell],
    make_parser: Callable[[], argparse.ArgumentParser],
    args: list | None = None,
) -> None:
    """Parse the site-config and the command line, build the agent, run it until it stops."""
    start_logging()
    parsed = site_config.parse_args(
        agent_class=shell_class.agent_class, parser=make_parser(), args=args
    )
    shell_class.check_args(parsed)
    agent, runner = ocs_agent.init_site_agent(parsed)
    release_finished_sessions(agent)  # else ocs keeps every session: see _ops.py
    stop_sessions_promptly(agent)  # else every stop takes 6 s: see _ops.py
    shell = shell_class(agent, parsed)
    for operation in shell.operations():
        operation.register(agent)
    shell.begin()
    reactor.addSystemEventTrigger("before", "shutdown", shell.shutdown)
    runner.run(agent, auto_reconnect=True)
