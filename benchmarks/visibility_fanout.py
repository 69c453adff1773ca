"""VisibilityManager fan-out to N real recorders, next to a serial fan-out and the floor.

    .venv/bin/python benchmarks/visibility_fanout.py [--quick] [--write-docs]

For each N (1, 8, 32; --quick: 1, 8), on a hub of its own: N VisibilityRecorder agents, a
VisibilityManager and the same manager with ``--serial``, all real processes. One WAMP
session in this process (asyncio autobahn, in a thread) times, each over the same session:

* manager ping and start/stop: the manager's OCS task (``start``, then ``wait``, as any OCS
  client calls it), which calls all N recorders' direct procedures concurrently over its own
  WAMP session;
* the manager's own fan-out time (from its log): from the first pipeline call to the last
  answer, inside the manager;
* the same through the serial manager (the same direct calls, one after another);
* the serial fan-out of the spec's figures ("the same task calls one after another"): the
  floor agent's ``serial_tasks`` task calls each recorder's OCS task (``start``, then
  ``wait``) and only then the next one's, over its own session, end to end and inside it;
* floor (agent): the manager's shape with none of its work: an OCS agent
  (``_floor_agent.py``) whose ``ping`` task makes N concurrent bare WAMP calls (each
  recorder's management procedure, which does no work) over its own session: what the hub
  and the CPU allow. Its task round trip is the floor of the manager's; its fan-out, timed
  inside it as the manager times its own, is the floor of the manager's fan-out;
* floor (bare): the same N bare calls from this session;
* floor (tasks): N concurrent calls of the recorders' ``ping`` OCS task (``start`` + ``wait``)
  from this session;
* N concurrent calls of the recorders' direct ``ping`` procedure from this session (what the
  manager does, without the manager);
* start spread: for each ``start_mjd="now"``, latest minus earliest actual start among the
  recorders (from their schedules);
* CPU per pipeline: what the hub, the recorders and the manager under test used (all
  threads, ``/proc/<pid>/task/*/schedstat``) while the manager pings and starts ran, over
  the number of pipelines called;
* site CPU and cores busy: the CPU of the hub and every agent during one call, and that over
  the call's wall time (how many of the cores the call kept busy), medians.

Also the manager's ping through ``OCSClient`` (HTTP, what scripts see).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import signal
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(__file__))
from _plots import percentile_list, record  # noqa: E402
from _report import emit, median, percentile, rst_table  # noqa: E402

from socs_agents.agents.visibility_recorder.schedule import Schedule  # noqa: E402
from socs_agents.dev.testing import AgentProcess, LocalSite, WampCaller  # noqa: E402

DOCS = os.path.join(os.path.dirname(__file__), "..", "docs", "figures", "visibility_manager.rst")
PW2 = "bench-pw2"
POLICY = ["--access-policy", f"override:{PW2},bench-pw3"]
LEAD = 0.3


class BenchCaller(WampCaller):
    """The benchmark's WAMP session: OCS task calls as a client makes them, and timing."""

    async def task(self, iid: str, op: str, params=None, password=None):
        kw = {"password": password} if password else {}
        uri = f"observatory.{iid}.ops"
        code, msg, _ = await self.session.call(uri, "start", op, params or {}, **kw)
        if code != 0:
            raise RuntimeError(f"{iid}.{op} refused: {msg}")
        code, msg, session = await self.session.call(uri, "wait", op, timeout=30, **kw)
        return session

    async def timed(self, make):
        t0 = time.perf_counter()
        result = await make()
        return (time.perf_counter() - t0) * 1e3, result


def process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants (crossbar runs its router in a child process)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += children.get(p, [])
    return out


def cpu_ms(pids) -> float:
    """CPU time (ms) used so far by every thread of these processes (schedstat: ns)."""
    total = 0
    for pid in pids:
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for tid in tids:
            try:
                with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                    total += int(f.read().split()[0])
            except (OSError, ValueError, IndexError):
                pass
    return total / 1e6


class CpuMeter:
    """CPU used while a call runs, per kind: by the hub, the recorders and the calling agent
    (a manager or the floor agent), and by the whole site (the hub and every agent; not this
    process, whose CPU is mostly the reading of /proc) over the call's wall time: how many
    of the cores the call kept busy."""

    def __init__(self, groups: dict) -> None:
        self.groups = groups  # name -> pids
        self.used: dict = {}  # kind -> {group: ms}, with "calls", "machine", "wall"

    def around(self, kind: str, caller: str, call):
        names = ("hub", "recorders", caller)
        before = [cpu_ms(self.groups[g]) for g in names]
        site = cpu_ms(self.groups["site"])
        t0 = time.perf_counter()
        result = call()
        wall = (time.perf_counter() - t0) * 1e3
        site = cpu_ms(self.groups["site"]) - site
        used = self.used.setdefault(
            kind, {"calls": 0, "hub": 0.0, "recorders": 0.0, "manager": 0.0, "site": [], "busy": []}
        )
        used["calls"] += 1
        used["site"].append(site)
        used["busy"].append(site / wall)
        for key, g, b in zip(("hub", "recorders", "manager"), names, before, strict=False):
            used[key] += cpu_ms(self.groups[g]) - b
        return result


FANOUT_LOG = re.compile(r"(\w+) to (\d+) pipelines in ([0-9.]+) ms")


def fanout_times(agent: AgentProcess, offset: int, op: str) -> list[float]:
    """The manager's own fan-out times for ``op`` (from its log, after ``offset`` bytes):
    from its task starting the calls to the last pipeline's answer."""
    with open(agent.log_path, "rb") as f:
        f.seek(offset)
        text = f.read().decode(errors="replace")
    return [float(m.group(3)) for m in FANOUT_LOG.finditer(text) if m.group(1) == op]


def log_size(agent: AgentProcess) -> int:
    return os.path.getsize(agent.log_path)


def start_agents(site: LocalSite, ids, extra=()) -> list[AgentProcess]:
    agents = [AgentProcess(site, iid) for iid in ids] + list(extra)
    for a in agents:
        site.agents.append(a)
        a.start()
    for a in agents:
        a.wait_callable(120)
    return agents


FLOOR_AGENT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_floor_agent.py")


def floor_agent(site: LocalSite, iid: str) -> AgentProcess:
    """The floor agent (``_floor_agent.py``, not a plugin of the package) as a process."""
    agent = AgentProcess(site, iid)
    agent.cmd = [
        sys.executable,
        "-u",
        FLOOR_AGENT,
        "--instance-id",
        iid,
        *site.client_args,
        "--crossbar-timeout",
        "20",
    ]
    return agent


def stop_agents(agents) -> None:
    for a in agents:
        a.send_signal(signal.SIGTERM)
    for a in agents:
        a.stop(timeout=30)


def measure(n: int, workdir: str, ping_reps: int, ss_reps: int) -> dict:
    site = LocalSite(os.path.join(workdir, f"n{n}"))
    data_dir = os.path.join(site.workdir, "data")
    rec_ids = [f"drv-{i:02d}" for i in range(n)]
    for iid in rec_ids:
        site.add_instance(
            "VisibilityRecorder",
            iid,
            [
                ["--mode", "slow"],
                ["--data-dir", data_dir],
                ["--db-path", os.path.join(site.workdir, "suprsync.db")],
                ["--integration-time", 0.5],
                ["--n-antennas", 4],
                ["--n-channels", 16],
                ["--now-lead", LEAD],
                ["--monitor-interval", 5],
                POLICY,
            ],
        )
    for iid, extra in (("mgr", []), ("mgr-serial", [["--serial"]])):
        site.add_instance(
            "VisibilityManager",
            iid,
            [
                ["--mode", "slow"],
                ["--pipelines", *rec_ids],
                ["--timeout", 10],
                ["--now-lead", LEAD],
                ["--recorder-password", PW2],
                ["--monitor-interval", 5],
                *extra,
                POLICY,
            ],
        )
    site.add_instance("BenchFloor", "floor", [["--targets", *rec_ids]])
    out: dict = {"n": n}
    with site:
        t0 = time.monotonic()
        agents = start_agents(site, rec_ids + ["mgr", "mgr-serial"], [floor_agent(site, "floor")])
        out["start_s"] = time.monotonic() - t0
        out["load_before"] = os.getloadavg()[0]
        caller = BenchCaller(site)
        mgr, serial, floor = agents[-3], agents[-2], agents[-1]
        groups = {
            "hub": process_tree(site.hub_pid),
            "recorders": [p for a in agents[:n] for p in process_tree(a.proc.pid)],
            "mgr": process_tree(mgr.proc.pid),
            "mgr-serial": process_tree(serial.proc.pid),
            "floor": process_tree(floor.proc.pid),
        }
        groups["site"] = [p for g in groups.values() for p in g]
        meter = CpuMeter(groups)
        try:
            w = caller

            def check_all(session):
                data = session["data"]
                assert session["success"], session["messages"][-2:]
                assert len(data) == n and all(r["status"] == "success" for r in data.values())

            # warm-up (first calls set up subscriptions, thread pools, caches)
            for _ in range(3):
                check_all(w.run(w.task("mgr", "ping")))
                check_all(w.run(w.task("mgr-serial", "ping")))

            async def floor_tasks():
                return await asyncio.gather(*[w.task(i, "ping") for i in rec_ids])

            async def floor_bare():
                return await asyncio.gather(
                    *[w.session.call(f"observatory.{i}", "get_agent_class") for i in rec_ids]
                )

            async def floor_direct():
                return await asyncio.gather(
                    *[w.session.call(f"observatory.{i}.direct", "ping", {}) for i in rec_ids]
                )

            w.run(floor_tasks())
            w.run(floor_bare())
            w.run(floor_direct())
            for _ in range(3):
                w.run(w.task("floor", "ping"))

            async def floor_agent_task():
                session = await w.task("floor", "ping")
                return session["data"]["fan_out_ms"]

            def serial_tasks(op: str, params=None):
                """The spec's serial fan-out: each recorder's OCS task, one after another,
                from the floor agent; returns its fan-out time (timed inside it)."""

                async def run():
                    session = await w.task(
                        "floor",
                        "serial_tasks",
                        {"op": op, "params": params or {}, "password": PW2, "lead": LEAD},
                    )
                    assert session["success"], session["messages"][-2:]
                    return session["data"]["fan_out_ms"]

                return run

            # Interleaved rounds: a drift in the machine's load hits every series alike.
            kinds = {
                "ping": lambda: w.task("mgr", "ping"),
                "ping_serial": lambda: w.task("mgr-serial", "ping"),
                "floor_agent": floor_agent_task,
                "floor_bare": floor_bare,
                "floor_tasks": floor_tasks,
                "floor_direct": floor_direct,
                "ping_serial_tasks": serial_tasks("ping"),
            }
            for key in kinds:
                out[key] = []
            out["floor_agent_inside"] = []
            out["ping_serial_tasks_inside"] = []
            offsets = log_size(mgr), log_size(serial)
            callers = {"ping": "mgr", "ping_serial": "mgr-serial", "ping_serial_tasks": "floor"}
            for _ in range(ping_reps):
                for key, make in kinds.items():
                    if key in callers:
                        ms, result = meter.around(
                            key, callers[key], lambda make=make: w.run(w.timed(make))
                        )
                    else:
                        ms, result = w.run(w.timed(make))
                    out[key].append(ms)
                    if key in ("floor_agent", "ping_serial_tasks"):
                        out[
                            f"{key}_inside" if key != "floor_agent" else "floor_agent_inside"
                        ].append(result)
            time.sleep(0.2)  # the log lines of the last calls reach the files
            out["ping_inside"] = fanout_times(mgr, offsets[0], "ping")[-ping_reps:]
            out["ping_serial_inside"] = fanout_times(serial, offsets[1], "ping")[-ping_reps:]
            client = site.client("mgr")
            ocs_ms = []
            for _ in range(ping_reps):
                t1 = time.perf_counter()
                client.ping()
                ocs_ms.append((time.perf_counter() - t1) * 1e3)
            out["ping_ocsclient"] = ocs_ms

            def start_stop(iid: str, key: str) -> None:
                ms, s = meter.around(
                    f"start{key}",
                    iid,
                    lambda: w.run(w.timed(lambda: w.task(iid, "start", {"start_mjd": "now"}, PW2))),
                )
                check_all(s)
                out[f"start{key}"].append(ms)
                time.sleep(LEAD + 0.15)
                ms, s = w.run(w.timed(lambda: w.task(iid, "stop", {"stop_mjd": "now"}, PW2)))
                check_all(s)
                out[f"stop{key}"].append(ms)
                time.sleep(LEAD + 0.1)

            def start_stop_serial_tasks() -> None:
                ms, inside = meter.around(
                    "start_serial_tasks",
                    "floor",
                    lambda: w.run(w.timed(serial_tasks("start", {"start_mjd": "now"}))),
                )
                out["start_serial_tasks"].append(ms)
                out["start_serial_tasks_inside"].append(inside)
                time.sleep(LEAD + 0.15)
                w.run(serial_tasks("stop", {"stop_mjd": "now"})())
                time.sleep(LEAD + 0.1)

            for key in (
                "start",
                "stop",
                "start_serial",
                "stop_serial",
                "start_serial_tasks",
                "start_serial_tasks_inside",
            ):
                out[key] = []
            offsets = log_size(mgr), log_size(serial)
            for _ in range(ss_reps):  # interleaved, as the pings
                start_stop("mgr", "")
                start_stop("mgr-serial", "_serial")
                start_stop_serial_tasks()
            time.sleep(0.2)
            out["start_inside"] = fanout_times(mgr, offsets[0], "start")[-ss_reps:]
            out["start_serial_inside"] = fanout_times(serial, offsets[1], "start")[-ss_reps:]
            out["load_after"] = os.getloadavg()[0]
            out["cpu"] = {
                kind: {
                    g: used[g] / (used["calls"] * n) * 1e3 for g in ("hub", "recorders", "manager")
                }
                for kind, used in meter.used.items()
            }
            out["busy"] = {
                kind: (median(used["busy"]), median(used["site"]))
                for kind, used in meter.used.items()
            }
        finally:
            caller.close()
            t0 = time.monotonic()
            stop_agents(agents)
            out["stop_s"] = time.monotonic() - t0
            site.agents.clear()
    # Start spread per common "now": actual starts of the same scheduled instant.
    by_start: dict = {}
    late = []
    for iid in rec_ids:
        s = Schedule(os.path.join(data_dir, f".{iid}.schedule.sqlite"))
        for op in s.operations():
            if op.actual_start is not None:
                by_start.setdefault(round(op.start, 3), []).append(op.actual_start)
                late.append((op.actual_start - op.start) * 1e3)
        s.close()
    out["spread"] = [(max(v) - min(v)) * 1e3 for v in by_start.values() if len(v) == n]
    out["late"] = late
    out["missed"] = 3 * ss_reps * n - len(late)  # manager, serial manager, serial tasks
    return out


def fmt(values) -> str:
    return f"{median(values):.1f} / {percentile(values, 99):.1f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="N = 1 and 8, fewer repetitions")
    parser.add_argument("--sizes", type=int, nargs="*", default=None)
    parser.add_argument("--ping-reps", type=int, default=None)
    parser.add_argument("--start-stop-reps", type=int, default=None)
    parser.add_argument("--write-docs", action="store_true")
    args = parser.parse_args()
    sizes = args.sizes or ([1, 8] if args.quick else [1, 8, 32])
    ping_reps = args.ping_reps or (30 if args.quick else 100)
    ss_reps = args.start_stop_reps or (5 if args.quick else 20)

    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in sizes:
            r = measure(n, tmp, ping_reps, ss_reps)
            results.append(r)
            print(
                f"N={n}: agents up in {r['start_s']:.1f} s; ping {fmt(r['ping'])}, serial "
                f"{fmt(r['ping_serial'])}, floor tasks {fmt(r['floor_tasks'])}, floor bare "
                f"{fmt(r['floor_bare'])}; start {fmt(r['start'])}; load "
                f"{r['load_before']:.1f}->{r['load_after']:.1f}",
                flush=True,
            )

    one = next((r for r in results if r["n"] == 1), None)
    rows = []

    def ratio(key: str, base_key: str, base: dict | None = None):
        """A row's cell: the median of ``key`` over the median of ``base_key`` (of the same
        N, or of ``base``)."""
        return lambda r: f"{median(r[key]) / median((base or r)[base_key]):.2f}x"

    def row(label, fn):
        rows.append([label] + [fn(r) for r in results])

    latency_rows = [
        ("manager ping (WAMP), median / p99", "ping"),
        ("manager ping, fan-out inside the manager, median / p99", "ping_inside"),
        ("manager ping (OCSClient, HTTP), median / p99", "ping_ocsclient"),
        ("serial manager ping, median / p99", "ping_serial"),
        ("serial manager ping, fan-out inside it, median / p99", "ping_serial_inside"),
        ("floor: N concurrent task calls, median / p99", "floor_tasks"),
        ("floor: N concurrent bare WAMP calls, median / p99", "floor_bare"),
        ("floor: agent task making N concurrent bare calls, median / p99", "floor_agent"),
        ("floor: that agent's fan-out, timed inside it, median / p99", "floor_agent_inside"),
        ("N concurrent direct ping calls, median / p99", "floor_direct"),
        ("manager start, median / p99", "start"),
        ("manager start, fan-out inside the manager, median / p99", "start_inside"),
        ("manager stop, median / p99", "stop"),
        ("serial manager start, median / p99", "start_serial"),
        ("serial manager start, fan-out inside it, median / p99", "start_serial_inside"),
        ("serial task fan-out (the spec's): ping, median / p99", "ping_serial_tasks"),
        (
            "serial task fan-out (the spec's): ping, fan-out inside the agent, median / p99",
            "ping_serial_tasks_inside",
        ),
        ("serial task fan-out (the spec's): start, median / p99", "start_serial_tasks"),
        (
            "serial task fan-out (the spec's): start, fan-out inside the agent, median / p99",
            "start_serial_tasks_inside",
        ),
    ]
    for label, key in latency_rows:
        row(label, lambda r, key=key: fmt(r[key]))
    ratio_rows = [
        ("ping: manager / floor (tasks)", "ping", "floor_tasks"),
        ("ping: manager / floor (bare)", "ping", "floor_bare"),
        ("ping fan-out inside the manager / floor (bare)", "ping_inside", "floor_bare"),
        ("ping: manager / floor (agent task)", "ping", "floor_agent"),
        (
            "ping: fan-out inside the manager / inside the floor agent",
            "ping_inside",
            "floor_agent_inside",
        ),
        ("start: manager / floor (bare)", "start", "floor_bare"),
        ("ping: serial / manager", "ping_serial", "ping"),
        ("start: serial / manager", "start_serial", "start"),
        ("ping: fan-out inside, serial / concurrent", "ping_serial_inside", "ping_inside"),
        ("start: fan-out inside, serial / concurrent", "start_serial_inside", "start_inside"),
        ("ping: serial task fan-out / manager", "ping_serial_tasks", "ping"),
        ("start: serial task fan-out / manager", "start_serial_tasks", "start"),
        ("ping: fan-out inside, serial task / manager", "ping_serial_tasks_inside", "ping_inside"),
        (
            "start: fan-out inside, serial task / manager",
            "start_serial_tasks_inside",
            "start_inside",
        ),
    ]
    for label, key, base_key in ratio_rows:
        row(label, ratio(key, base_key))
    if one:
        row("ping: manager at N / manager at N=1", ratio("ping", "ping", one))
        row("start: manager at N / manager at N=1", ratio("start", "start", one))
        row("stop: manager at N / manager at N=1", ratio("stop", "stop", one))
    for kind, label in (
        ("ping", "ping"),
        ("ping_serial", "serial ping"),
        ("start", "start"),
        ("start_serial", "serial start"),
    ):
        row(
            f"CPU per pipeline, {label}: hub / recorder / manager (task included)",
            lambda r, kind=kind: (
                " / ".join(f"{r['cpu'][kind][g]:.0f}" for g in ("hub", "recorders", "manager"))
                + " us"
            ),
        )
    for kind, label in (
        ("ping", "ping"),
        ("ping_serial", "serial ping"),
        ("ping_serial_tasks", "serial task ping"),
        ("start", "start"),
        ("start_serial", "serial start"),
        ("start_serial_tasks", "serial task start"),
    ):
        row(
            f"site CPU per call and cores busy during it (medians), {label}",
            lambda r, kind=kind: f"{r['busy'][kind][1]:.1f} ms, {r['busy'][kind][0]:.2f} cores",
        )
    row(
        'start spread for one "now", median / max',
        lambda r: (
            f"{median(r['spread']):.1f} / {max(r['spread']):.1f} ms" if r["spread"] else "n/a"
        ),
    )
    row("actual start after scheduled, median / p99", lambda r: fmt(r["late"]))
    row("recordings missed", lambda r: str(r["missed"]))
    row("agents start / stop (all together)", lambda r: f"{r['start_s']:.1f} / {r['stop_s']:.1f} s")
    row(
        "load average (1 min) before / after",
        lambda r: f"{r['load_before']:.1f} / {r['load_after']:.1f}",
    )
    title = (
        f"{'Quick run. ' if args.quick else ''}{ping_reps} pings and {ss_reps} "
        "start/stop pairs per manager; recorders, managers and the hub share the "
        "machine."
    )
    header = ["what"] + [f"N = {r['n']}" for r in results]
    emit(rst_table(header, rows, title), DOCS if args.write_docs else None)
    if args.write_docs:
        # the latency distributions behind the table's medians and p99s, per N
        dists = {key: [percentile_list(r[key]) for r in results] for _, key in latency_rows}
        for path in record("visibility_fanout", header, rows, title, {"distributions": dists}):
            print(f"(written to {path})")


if __name__ == "__main__":
    main()
