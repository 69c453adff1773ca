"""Run N task calls through a real ``OCSAgent``'s ``start``/``wait`` on a real reactor (no
hub: the calls are what ocs's ``ops`` procedure makes); print, as JSON, how many
``OpSession`` objects are still alive and what ``status``/``wait`` answer afterwards.

    python ops_sessions_probe.py N release|keep

Run by tests/unit/test_ops_sessions.py in a subprocess (ocs fixes txaio's framework for the
whole process).
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time

from autobahn.wamp.types import ComponentConfig
from ocs import ocs_agent
from twisted.internet import defer, reactor, task

from socs_agents.agents._ops import release_finished_sessions, stop_sessions_promptly


class Probe:
    """Tasks of every kind the agents have: on the reactor, on a thread, refused by its
    parameter check, failing; and one process that keeps running."""

    def ping(self, session, params):
        session.data = {"response": "pong", "blob": "x" * 1000}
        return True, "pong"

    @ocs_agent.param("n", type=int, check=lambda n: 0 <= n < 10)
    def work(self, session, params):
        session.data = {"n": params["n"]}
        return True, f"worked {params['n']}"

    def fails(self, session, params):
        raise ValueError("refused inside the task")

    def loop(self, session, params):
        self.running = defer.Deferred()
        return self.running

    def stop_loop(self, session, params):
        self.running.callback((True, "stopped"))
        return True, "stopping"


def live_sessions() -> int:
    gc.collect()
    return sum(isinstance(o, ocs_agent.OpSession) for o in gc.get_objects())


@defer.inlineCallbacks
def drive(agent: ocs_agent.OCSAgent, calls: int, out: dict):
    try:
        agent.start("loop")
        ops = [("ping", None), ("work", {"n": 3}), ("work", {"n": 99}), ("fails", None)]
        started = 0
        for i in range(calls):
            op, params = ops[i % len(ops)]
            reply = agent.start(op, params=params)
            if reply[0] == 0:
                started += 1
                yield agent.wait(op, timeout=5)
        out["started"] = started
        out["live_sessions"] = live_sessions()
        loop = agent.sessions["loop"]
        out["loop_purger_armed"] = not loop.purger.called
        status = agent.status("ping")
        out["ping_status"] = [status[0], status[2]["status"], status[2]["success"]]
        out["ping_data"] = status[2]["data"].get("response")
        waited = yield agent.wait("fails", timeout=1)
        out["fails_wait"] = [waited[0], waited[2]["status"], waited[2]["success"]]
        agent.stop("loop")
        yield agent.wait("loop", timeout=5)
        out["loop_after_stop"] = agent.sessions["loop"].status
        # a shutdown with the process running: how long ocs's stop of every session takes
        agent.start("loop")
        yield task.deferLater(reactor, 0.2, lambda: None)  # ocs launches it on the next turn
        t0 = time.monotonic()
        yield agent._stop_all_running_sessions()
        out["stop_all_s"] = time.monotonic() - t0
        out["loop_after_stop_all"] = agent.sessions["loop"].status
    except Exception as e:  # reported to the test, not lost in the reactor
        out["error"] = repr(e)
    finally:
        reactor.stop()


def main() -> None:
    calls, mode = int(sys.argv[1]), sys.argv[2]
    site_args = argparse.Namespace(
        instance_id="probe",
        access_policy=None,
        log_dir=None,
        working_dir=None,
        address_root="probe",
    )
    agent = ocs_agent.OCSAgent(ComponentConfig("probe_realm", {}), site_args, address="p.a")
    if mode == "release":
        release_finished_sessions(agent)
        release_finished_sessions(agent)  # idempotent
        stop_sessions_promptly(agent)
    probe = Probe()
    agent.register_task("ping", probe.ping, blocking=False)
    agent.register_task("work", probe.work)
    agent.register_task("fails", probe.fails)
    agent.register_process("loop", probe.loop, probe.stop_loop, blocking=False)
    out: dict = {}
    reactor.callWhenRunning(drive, agent, calls, out)
    reactor.run()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
