"""What every agent's OCS shell needs from ocs's operation machinery beyond ocs itself.

:func:`release_finished_sessions` keeps an agent's memory bounded however many task calls
arrive, and :func:`stop_sessions_promptly` lets an agent stop as soon as its operations
have: :func:`~socs_agents.agents.shell.run_agent` applies both to every agent, right after
``ocs_agent.init_site_agent``.
"""

from __future__ import annotations

import time

import ocs
from ocs import ocs_agent
from twisted.internet import defer, reactor, task


def release_finished_sessions(agent: ocs_agent.OCSAgent) -> None:
    """Let each operation session be freed once it has ended and a newer one replaced it.

    Why: in ocs (0.12), every ``OpSession`` arms a purger on the reactor
    (``task.deferLater(reactor, 720, self.purge_log)``) that re-arms itself for ever, so the
    reactor holds every session ever started, with its messages, ``data`` and Deferreds:
    about 3 KB per call, without bound (a fuzz of 100,000 hostile task calls took a recorder
    from 115 to 367 MiB). The purger only trims the messages of a session still running, so
    stopping it when the session ends changes nothing a client sees: the finished session
    stays ``agent.sessions[op_name]`` (``status()`` and ``wait()`` answer from it) until the
    next start replaces it, and is then garbage.

    Wraps ``agent.start`` (what ocs's ``ops`` procedure and the startup operations call):
    after each started session, one more callback on its Deferred (after ocs's own, which
    mark it done) cancels the purger. Idempotent.
    """
    if getattr(agent.start, "_releases_sessions", False):
        return
    start = agent.start

    def start_and_release(op_name, params=None, password=None):
        reply = start(op_name, params=params, password=password)
        session = agent.sessions.get(op_name) if reply and reply[0] == ocs.OK else None
        finished = getattr(session, "d", None)
        if finished is not None:
            finished.addBoth(_stop_purger, session)
        return reply

    start_and_release._releases_sessions = True
    agent.start = start_and_release


def _stop_purger(result, session: ocs_agent.OpSession):
    """Cancel the session's purge timer; pass the operation's result on untouched."""
    purger = getattr(session, "purger", None)
    if isinstance(purger, defer.Deferred) and not purger.called:
        # deferLater's cancel errbacks with CancelledError: expected, not an error to log.
        purger.addErrback(lambda failure: failure.trap(defer.CancelledError))
        purger.cancel()
    return result


def stop_sessions_promptly(agent: ocs_agent.OCSAgent, limit_s: float = 3.0) -> None:
    """At shutdown, wait for the running operations to end, at most ``limit_s`` seconds,
    rather than always ``limit_s``.

    Why: ocs (0.12) stops every running session and then sleeps a fixed 3 s, twice in a
    shutdown (on the signal and again when the session leaves): every agent took 6 s to
    stop even with nothing running, which a HostManager restart and every test pays. The
    same stop and abort calls are made; only the fixed sleep becomes a bounded wait for
    the sessions to be done.
    """
    if not hasattr(agent, "_stop_all_running_sessions"):
        return  # another ocs: keep its own way

    @defer.inlineCallbacks
    def stop_all_running_sessions():
        agent.log.info("Stopping all running sessions")
        for name, session in list(agent.sessions.items()):
            if session is None or session.status in ("stopping", "done"):
                continue
            agent.log.info("Stopping session {sess}", sess=name)
            if name in agent.tasks:
                yield agent.abort(name)
            elif name in agent.processes:
                yield agent.stop(name)
        deadline = time.monotonic() + limit_s
        while time.monotonic() < deadline and any(
            s is not None and s.status != "done" for s in agent.sessions.values()
        ):
            yield task.deferLater(reactor, 0.05, lambda: None)

    agent._stop_all_running_sessions = stop_all_running_sessions
