"""The fan-out floor as an OCS agent: the manager's shape with none of its work.

    python benchmarks/_floor_agent.py --instance-id ID --site-file F --site-host H \
        --targets drv-00 drv-01 ...

An OCS agent (``BenchFloor`` in the site-config) with one task, ``ping``, registered as the
VisibilityManager registers its own (``blocking=False``). It makes one bare WAMP call of
each target's management procedure (``get_agent_class``: no work) concurrently over the
agent's own session and puts the time from the first call to the last answer, timed as the
manager times its fan-out, in ``session.data['fan_out_ms']``.

A second task, ``serial_tasks(op, params, password)``, is the serial fan-out that the spec's
figures describe ("the same task calls one after another"): it calls each target's OCS task
``op`` (``start``, then ``wait``, as any OCS client does) and only then the next target's,
over the agent's own session; ``"now"`` in ``start_mjd``/``stop_mjd`` is resolved once, as the
manager resolves it. Started and stopped by visibility_fanout.py; not a part of the package.
"""

from __future__ import annotations

import argparse
import time

from ocs import ocs_agent, site_config
from twisted.internet import defer
from twisted.internet.defer import inlineCallbacks

from socs_agents.agents.visibility_recorder.schedule import request_time


class BenchFloor:
    def __init__(self, agent: ocs_agent.OCSAgent, targets: list[str]) -> None:
        self.agent = agent
        self.addresses = [f"{agent.site_args.address_root}.{t}" for t in targets]

    @inlineCallbacks
    def ping(self, session, params=None):
        t0 = time.perf_counter()
        yield defer.gatherResults(
            [self.agent.call(address, "get_agent_class") for address in self.addresses]
        )
        session.data = {"fan_out_ms": (time.perf_counter() - t0) * 1e3}
        return True, f"{len(self.addresses)} bare calls answered"

    @inlineCallbacks
    def serial_tasks(self, session, params):
        op = params["op"]
        call_params = dict(params.get("params") or {})
        for which in ("start", "stop"):
            if str(call_params.get(f"{which}_mjd", "")).lower() == "now":
                rt = request_time(call_params, which, time.time(), params.get("lead", 15.0))
                call_params.update({f"{which}_mjd": rt.mjd, f"{which}_mpm": rt.mpm})
        kw = {"password": params["password"]} if params.get("password") else {}
        t0 = time.perf_counter()
        failed = []
        for address in self.addresses:
            code, message, _ = yield self.agent.call(
                f"{address}.ops", "start", op, call_params, **kw
            )
            if code != 0:
                failed.append(f"{address}: {message}")
                continue
            _, _, answer = yield self.agent.call(f"{address}.ops", "wait", op, timeout=30, **kw)
            if not answer.get("success"):
                failed.append(f"{address}: {answer.get('messages', [])[-1:]}")
        session.data = {"fan_out_ms": (time.perf_counter() - t0) * 1e3}
        if failed:
            return False, "; ".join(failed)
        return True, f"{op} on {len(self.addresses)} agents, one after another"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--targets", nargs="+", required=True)
    args = site_config.parse_args(agent_class="BenchFloor", parser=parser)
    agent, runner = ocs_agent.init_site_agent(args)
    floor = BenchFloor(agent, args.targets)
    agent.register_task("ping", floor.ping, blocking=False)
    agent.register_task("serial_tasks", floor.serial_tasks, blocking=False)
    runner.run(agent, auto_reconnect=False)


if __name__ == "__main__":
    main()
