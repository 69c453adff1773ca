"""FileOrchestrator: read-next throughput, discovery latency and restart time.

    .venv/bin/python benchmarks/file_orchestrator.py            # full run, about 2 minutes
    .venv/bin/python benchmarks/file_orchestrator.py --quick    # shorter scenarios
    .venv/bin/python benchmarks/file_orchestrator.py --scenarios throughput --write-docs

The agent runs as a real process on a real crossbar hub (loopback). Dispatchers are separate
processes (no shared GIL), each with one HTTP/1.1 keep-alive connection, like the real
client; they share the machine's cores with the agent and the hub.

The reference (a Flask app under gunicorn, one worker, two threads) is not installable here;
the spec gives no measured figures for it, so only its design limits are stated.
"""

from __future__ import annotations

import argparse
import functools
import http.client
import json
import multiprocessing
import os
import re
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _plots import percentile_list, record  # noqa: E402
from _report import emit, median, percentile, rst_table, run_scenario  # noqa: E402

from socs_agents.dev.sim.dune import DuneWriter, OrchestratorClient  # noqa: E402
from socs_agents.dev.testing import AgentProcess, LocalSite, free_port, wait_for  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
DOCS = os.path.join(HERE, "..", "docs", "figures", "file_orchestrator.rst")
SCENARIOS = ["throughput", "discovery", "restart"]
HOST = "bench-host"
# the tasks that change the state (request_record) need credential level 2
PW2 = "bench-level-2"
POLICY = ["--access-policy", f"override:{PW2},bench-level-3"]


class Bench:
    def __init__(self, site: LocalSite, workdir: str) -> None:
        self.site, self.workdir = site, workdir
        self.n = 0

    def start(self, lease_timeout: float = 600.0):
        self.n += 1
        port = free_port()
        root = os.path.join(self.workdir, f"orch-{self.n}")
        iid = f"bench-orchestrator-{self.n}"
        self.site.add_instance(
            "FileOrchestrator",
            iid,
            [
                ["--volume", os.path.join(root, "vol")],
                ["--http-interface", "127.0.0.1"],
                ["--http-port", port],
                ["--state-db", os.path.join(root, "state.db")],
                ["--host-name", HOST],
                ["--lease-timeout", lease_timeout],
                # add_records() announces files of this host under /data/bench
                ["--allowed-root", os.path.join(root, "vol"), "/data/bench"],
            ],
        )
        agent = self.site.start_agent(iid, POLICY)
        return agent, port, root, iid

    def kill(self, agent) -> None:
        agent.kill()
        if agent in self.site.agents:
            self.site.agents.remove(agent)


def add_records(port: int, n: int, per_file: int = 10_000, prefix: str = "bench") -> None:
    c = OrchestratorClient(f"http://127.0.0.1:{port}", timeout=120)
    try:
        number = 1
        for i in range(0, n, per_file):
            k = min(per_file, n - i)
            status, answer = c.new_file(
                HOST,
                f"/data/bench/{prefix}_run000001_{i // per_file:04d}.hdf5",
                1,
                "TriggerRecord",
                [[number + j, 0] for j in range(k)],
            )
            assert status == 200, answer
            number += k
    finally:
        c.close()


def add_credits(site: LocalSite, iid: str, n: int) -> None:
    reply = site.client(iid, privs=PW2).request_record(count=n)
    assert reply.session["success"], reply


def dispatcher(port: int, start_at: float, seconds: float, out) -> None:
    """One Dispatcher: read-next in a loop on one keep-alive connection; latencies in ms."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    body = json.dumps({"host": HOST, "file": ""}).encode()
    headers = {"Content-Type": "application/json"}
    lat, codes = [], {}
    while time.time() < start_at:
        time.sleep(0.001)
    end = start_at + seconds
    while time.time() < end:
        t0 = time.perf_counter()
        conn.request("POST", "/read-next-triggerrecord", body, headers)
        resp = conn.getresponse()
        resp.read()
        lat.append((time.perf_counter() - t0) * 1e3)
        codes[resp.status] = codes.get(resp.status, 0) + 1
    conn.close()
    out.put((lat, codes))


def cycle(port: int, start_at: float, seconds: float, out) -> None:
    """Data Filter + Dispatcher + Filter Writer on one connection: request, read, complete."""
    c = OrchestratorClient(f"http://127.0.0.1:{port}")
    n = 0
    while time.time() < start_at:
        time.sleep(0.001)
    end = start_at + seconds
    while time.time() < end:
        c.request_tr()
        status, a = c.read_next_triggerrecord(HOST)
        if status == 200:
            c.complete(a["run_number"], a["trigger_number"], a["sequence_number"])
            n += 1
    c.close()
    out.put(n)


def run_workers(target, port: int, workers: int, seconds: float) -> list:
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    start_at = time.time() + 1.5  # let the spawned interpreters come up first
    procs = [
        ctx.Process(target=target, args=(port, start_at, seconds, out)) for _ in range(workers)
    ]
    for p in procs:
        p.start()
    results = [out.get(timeout=seconds + 60) for _ in procs]
    for p in procs:
        p.join(10)
    return results


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# ---- scenarios: each returns {row label: figure text} ------------------------------------


#: what the table cannot hold (latency distributions), saved with --write-docs
SERIES: dict[str, dict] = {}


def sc_throughput(b: Bench, q: bool) -> dict:
    seconds = 5 if q else 20
    agent, port, _, iid = b.start()
    records = 60_000 if q else 200_000
    add_records(port, records)
    add_credits(b.site, iid, records)
    cpu0 = cpu_seconds(agent.proc.pid)
    results = run_workers(dispatcher, port, 4, seconds)
    cpu = cpu_seconds(agent.proc.pid) - cpu0
    lat = [x for r, _ in results for x in r]
    SERIES["read_next_ms"] = percentile_list(lat)
    codes: dict = {}
    for _, c in results:
        for k, v in c.items():
            codes[k] = codes.get(k, 0) + v
    ok = codes.get(200, 0)
    out = {
        f"read-next, 4 dispatchers, keep-alive ({seconds} s)": (
            f"{len(lat) / seconds:,.0f}/s ({ok:,} records handed out; statuses "
            f"{dict(sorted(codes.items()))})"
        ),
        "read-next latency, median / p99 / max": (
            f"{median(lat):.2f} / {percentile(lat, 99):.2f} / {max(lat):.1f} ms"
        ),
        "agent CPU per read-next": f"{cpu / max(len(lat), 1) * 1e6:.0f} us",
    }
    b.kill(agent)
    # the full loop: request-tr, read-next, complete
    agent, port, _, iid = b.start()
    add_records(port, 100_000 if not q else 30_000)
    done = sum(run_workers(cycle, port, 4, seconds))
    out["request + read-next + complete, 4 clients"] = f"{done / seconds:,.0f} records/s"
    b.kill(agent)
    return out


def sc_discovery(b: Bench, q: bool) -> dict:
    agent, port, root, iid = b.start()
    add_credits(b.site, iid, 10_000)
    c = OrchestratorClient(f"http://127.0.0.1:{port}")
    lat = []
    n = 10 if q else 40
    for i in range(n):
        w = DuneWriter(os.path.join(root, "vol", f"run{i:03d}"), run_number=1000 + i)
        if i % 2 == 0:
            os.makedirs(w.root, exist_ok=True)  # half in a folder that already existed
            time.sleep(0.05)
        path, ids = w.write_file(records=10, sequences=1)
        t0 = w.renamed_at
        deadline = time.time() + 5
        while time.time() < deadline:
            status, a = c.read_next_triggerrecord(HOST, path)
            if status == 200:
                lat.append((time.time() - t0) * 1e3)
                break
            time.sleep(0.001)
        time.sleep(0.05)
    c.close()
    b.kill(agent)
    SERIES["discovery_ms"] = percentile_list(lat)
    return {
        f"file renamed into place -> first record handed out ({n} files)": (
            f"median {median(lat):.0f} / p99 {percentile(lat, 99):.0f} / max "
            f"{max(lat):.0f} ms" + ("" if len(lat) == n else f" ({n - len(lat)} never)")
        )
    }


def sc_restart(b: Bench, q: bool) -> dict:
    records = 100_000
    agent, port, root, iid = b.start()
    add_records(port, records)
    add_credits(b.site, iid, 5_000)
    c = OrchestratorClient(f"http://127.0.0.1:{port}")
    for _ in range(5_000):  # some active leases too
        c.read_next_triggerrecord(HOST)
    c.close()
    before = OrchestratorClient(f"http://127.0.0.1:{port}").stats()[1]["counts"]
    times, loads = [], []
    for _ in range(1 if q else 3):
        b.kill(agent)
        wait_for(lambda: not b.site.answers(iid), 15, "the killed agent to unregister")
        agent = AgentProcess(b.site, iid, POLICY)
        b.site.agents.append(agent)
        t0 = time.monotonic()
        agent.start()

        def serving():
            try:
                s = OrchestratorClient(f"http://127.0.0.1:{port}", timeout=1)
                try:
                    return s.stats()
                finally:
                    s.close()
            except OSError:
                return None

        status, body = wait_for(serving, 30, "HTTP after restart", interval=0.005)
        times.append(time.monotonic() - t0)
        assert body["counts"] == before, (body["counts"], before)
        wait_for(lambda agent=agent: "loaded in" in agent.log_text(), 10, "the load line")
        m = re.findall(r"loaded in (\d+) ms", agent.log_text())
        loads.append(int(m[-1]))
    b.kill(agent)
    return {
        f"kill -9, restart with {records:,} records ({before['pending']:,} pending, "
        f"{before['active']:,} active): process start to HTTP serving": " / ".join(
            f"{t:.2f}" for t in times
        )
        + " s (state loaded in "
        + " / ".join(f"{x}" for x in loads)
        + " ms); nothing lost"
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="shorter scenarios")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    parser.add_argument("--write-docs", action="store_true")
    args = parser.parse_args()
    wanted = [s for s in args.scenarios.split(",") if s]
    results: dict[str, str] = {}
    load0 = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp, LocalSite(os.path.join(tmp, "site")) as site:
        for name in wanted:
            bench = Bench(site, os.path.join(tmp, name))
            t0 = time.monotonic()
            out = run_scenario(
                functools.partial(globals()[f"sc_{name}"], bench, args.quick), name, site
            )
            results.update(out)
            print(f"{name} ({time.monotonic() - t0:.0f} s): {out}", flush=True)
    targets = {
        "read-next": "≥ 1,000/s",
        "read-next latency": "p99 ≤ 10 ms",
        "file renamed": "≤ 200 ms",
        "kill -9": "≤ 2 s",
    }
    rows = []
    for label, text in results.items():
        target = next(
            (
                t
                for k, t in sorted(targets.items(), key=lambda kv: -len(kv[0]))
                if label.startswith(k)
            ),
            "",
        )
        rows.append([label, text, target])
    title = (
        "Quick run." if args.quick else "Full run."
    ) + f" Load average {load0:.1f} at start (other work on the machine)."
    header = ["what", "socs-agents FileOrchestrator", "target"]
    emit(rst_table(header, rows, title), DOCS if args.write_docs else None)
    if args.write_docs:
        for path in record("file_orchestrator", header, rows, title, SERIES):
            print(f"(written to {path})")


if __name__ == "__main__":
    main()
