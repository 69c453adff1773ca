"""GWDataBuffer: /streamdata writes per second and latency with keep-alive writers, freeze
latency, clean time with 10,000 stored files, CPU per write, kill -9 during writing.

    .venv/bin/python benchmarks/gw_data_buffer.py              # full run (a quiet machine)
    .venv/bin/python benchmarks/gw_data_buffer.py --quick      # short: checks the script
    .venv/bin/python benchmarks/gw_data_buffer.py --write-docs # records docs/figures/

Every write is durable before its answer (file fsync, then the folder's). The load
generator runs on the same machine as the agent and the hub (loopback).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Sequence

sys.path.insert(0, os.path.dirname(__file__))
from _plots import record  # noqa: E402
from _report import emit, percentile, rst_table, run_scenario  # noqa: E402

from socs_agents.dev.sim.gw import (  # noqa: E402
    DAG_TRAIN_BODY,
    DT,
    FrontClient,
    chunks,
    simulated_strain,
    stream,
)
from socs_agents.dev.testing import LocalSite, free_port, wait_for  # noqa: E402

DOCS = os.path.join(os.path.dirname(__file__), "..", "docs", "figures", "gw_data_buffer.rst")
#: The spec's figures of the reference (trainmod: Go + Flask + FastAPI), same kind of machine.
REFERENCE = {
    (4096, 1): "41 w/s, p50 22 / p99 59 ms",
    (4096, 4): "40-54 w/s, p50 70-91 / p99 144-246 ms",
    (4096, 8): "68 w/s, p50 112 / p99 260 ms",
    (300, 1): "98 w/s",
    (300, 4): "113 w/s, p99 86 ms",
}
TARGETS = {(4096, 4): "≥ 150 w/s, p99 ≤ 50 ms", (4096, 1): "≥ 120 w/s, p99 ≤ 20 ms"}


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process (Linux /proc)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Bench:
    def __init__(self, site: LocalSite, root: str, max_size: int = 10**15) -> None:
        self.site, self.root = site, root
        self.port = free_port()
        self.iid = f"gw-bench-{self.port}"
        self.url = f"http://127.0.0.1:{self.port}"
        self.data_dir = os.path.join(root, "vol", "datavar")
        self.max_size = max_size
        self.agent = None

    def start(self):
        self.site.add_instance(
            "GWDataBuffer",
            self.iid,
            [
                ["--data-dir", self.data_dir],
                ["--state-db", os.path.join(self.root, "gw.db")],
                ["--http-port", self.port],
                ["--max-size", self.max_size],
                ["--test-mode"],
            ],
        )
        self.agent = self.site.start_agent(self.iid)
        return self.agent

    def stop(self, sig=signal.SIGTERM):
        self.agent.stop(sig)
        if self.agent in self.site.agents:
            self.site.agents.remove(self.agent)


GPS_START = 1126259400.0
#: Distinct strain chunks simulated (and JSON-encoded) once per chunk size and seed; longer
#: runs reuse them with their own time stamps (the buffer's work does not depend on the
#: values, and simulating 8,100 chunks in pure Python took longer than the measurement).
POOL_CHUNKS = 32


@functools.lru_cache(maxsize=8)
def _encoded_strain(size: int, seed: int) -> tuple[bytes, ...]:
    strain = simulated_strain(POOL_CHUNKS * size / 4096 + 0.01, seed=seed, chirp_at=1.0)
    return tuple(
        json.dumps(c["h"]).encode() for c in list(chunks(strain, GPS_START, size))[:POOL_CHUNKS]
    )


class Bodies(Sequence):
    """``n`` ``/streamdata`` bodies of ``size`` samples, each built when read (so a long run
    holds no gigabyte of bodies): body ``i`` is ``json.dumps({"h": ..., "t": [t0, dt]})``
    byte for byte, with the strain of pool chunk ``i % POOL_CHUNKS`` and the absolute time
    of chunk ``i`` (every stored file is told apart by its ``t0``). A slice is a view."""

    def __init__(self, n: int, size: int, seed: int = 0, start: int = 0) -> None:
        self.n, self.size, self.seed, self.start = n, size, seed, start
        self.h = _encoded_strain(size, seed)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i):
        if isinstance(i, slice):
            a, b, step = i.indices(self.n)
            if step != 1:
                raise ValueError("only contiguous slices")
            return Bodies(max(0, b - a), self.size, self.seed, self.start + a)
        if not -self.n <= i < self.n:
            raise IndexError(i)
        k = self.start + i % self.n
        t = json.dumps([GPS_START + k * self.size * DT, DT]).encode()
        return b'{"h": ' + self.h[k % POOL_CHUNKS] + b', "t": ' + t + b"}"


def make_bodies(n: int, size: int, seed: int = 0) -> Bodies:
    return Bodies(n, size, seed)


def sc_throughput(site, root, quick: bool) -> dict:
    out = {}
    seconds = 3.0 if quick else 10.0
    cases = (
        [(4096, 1), (4096, 4)] if quick else [(4096, 1), (4096, 4), (4096, 8), (300, 1), (300, 4)]
    )
    for size, writers in cases:
        bench = Bench(site, os.path.join(root, f"t{size}-{writers}"))
        bench.start()
        try:
            bodies = make_bodies(int(seconds * 800) + 100, size)
            # a short warm-up, then a timed run until the deadline
            stream(bench.url, bodies[:20], writers)
            pid = bench.agent.proc.pid
            cpu0, t0 = cpu_seconds(pid), time.monotonic()
            results = stream(bench.url, bodies[20:], writers, deadline=t0 + seconds)
            took = time.monotonic() - t0
            cpu = cpu_seconds(pid) - cpu0
            ok = [r for r in results if r[3] == "CREATED"]
            lat = [r[1] * 1e3 for r in ok]
            assert len(ok) == len(results), f"{len(results) - len(ok)} writes not CREATED"
            label = f"{size}-sample chunks, {writers} writer(s)"
            out[label] = (
                f"{len(ok) / took:.0f} w/s, p50 {percentile(lat, 50):.1f} / p99 "
                f"{percentile(lat, 99):.1f} ms, {cpu / len(ok) * 1e3:.2f} ms CPU/write"
            )
            out[label] += f" | ref: {REFERENCE.get((size, writers), '-')}"
            if (size, writers) in TARGETS:
                out[label] += f" | target {TARGETS[(size, writers)]}"
        finally:
            bench.stop()
    return out


def sc_freeze(site, root, quick: bool) -> dict:
    """Writers stream; /train is posted once MAX_SIZE is reached: the FROZEN answer's
    latency, its distance to the last acknowledged write, writes acknowledged after it."""
    rounds = 2 if quick else 5
    lat, gaps, late_total, n_f_ok = [], [], 0, True
    for r in range(rounds):
        bench = Bench(site, os.path.join(root, f"f{r}"), max_size=2_000_000)
        bench.start()
        try:
            bodies = make_bodies(400, 4096, seed=r)
            results = []
            th = threading.Thread(
                target=lambda b=bench, bs=bodies, res=results: res.extend(stream(b.url, bs, 4)),
                daemon=True,
            )
            c = FrontClient(bench.url)
            th.start()
            while True:
                t0 = time.monotonic()
                status, answer = c.post("/train", DAG_TRAIN_BODY)
                t1 = time.monotonic()
                if answer.get("resp") == "FROZEN":
                    break
                time.sleep(0.005)
            th.join(60)
            c.close()
            created = [x for x in results if x[3] == "CREATED"]
            last_ack = max(x[0] + x[1] for x in created)
            late_total += sum(1 for x in created if x[0] > t1)
            lat.append((t1 - t0) * 1e3)
            gaps.append(max(0.0, t1 - last_ack) * 1e3)
            n_f_ok &= answer["n_f"] == len(created)
        finally:
            bench.stop()
    return {
        "freeze under 4 writers: /train FROZEN answer, median / max": (
            f"{percentile(lat, 50):.1f} / {max(lat):.1f} ms; after the last acknowledged "
            f"write: {percentile(gaps, 50):.1f} / {max(gaps):.1f} ms; writes sent after "
            f"FROZEN and acknowledged: {late_total}; n_f = acknowledged writes: {n_f_ok} "
            f"({rounds} rounds) | target ≤ 10 ms, 0 after"
        )
    }


def sc_clean(site, root, quick: bool) -> dict:
    n = 1000 if quick else 10_000
    bench = Bench(site, os.path.join(root, "clean"))
    os.makedirs(bench.data_dir, exist_ok=True)
    body = json.dumps({"h": [1e-21] * 300, "t": [1126259400.0, 1 / 4096]})
    base = time.time_ns()
    for i in range(n):
        with open(os.path.join(bench.data_dir, f"gwb{base + i}.json"), "w") as f:
            f.write(body)
    bench.start()
    try:
        c = FrontClient(bench.url)
        assert c.stats()[1]["n_itm"] == n
        t0 = time.monotonic()
        status, answer = c.cleanbuf()
        took = (time.monotonic() - t0) * 1e3
        assert answer["resp"] == "CLEANED", answer
        assert c.stats()[1]["n_itm"] == 0
        c.close()
    finally:
        bench.stop()
    return {f"/cleanbuf with {n:,} stored files": f"{took:.1f} ms (ref: one rename, then resets)"}


def sc_kill(site, root, quick: bool) -> dict:
    bench = Bench(site, os.path.join(root, "kill"))
    bench.start()
    bodies = make_bodies(1500, 4096, seed=9)
    results = []
    th = threading.Thread(target=lambda: stream(bench.url, bodies, 4, results=results), daemon=True)
    th.start()
    wait_for(lambda: len(results) >= (50 if quick else 300), 60, "acknowledged writes")
    bench.stop(signal.SIGKILL)
    th.join(60)
    acked = {r[4] for r in results if r[3] == "CREATED"}
    stored, broken = set(), 0
    for name in os.listdir(bench.data_dir):
        try:
            with open(os.path.join(bench.data_dir, name)) as f:
                stored.add(json.load(f)["t"][0])
        except ValueError:
            broken += 1
    lost = sum(1 for i in acked if json.loads(bodies[i])["t"][0] not in stored)
    return {
        "kill -9 while 4 writers stream": (
            f"{len(acked)} acknowledged, {lost} lost, {broken} partial files under a final "
            f"name, {len(stored) - len(acked) + lost} stored but unacknowledged (in flight) "
            "| target 0 lost, 0 partial"
        )
    }


SCENARIOS = ("throughput", "freeze", "clean", "kill")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="short scenarios")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    parser.add_argument("--write-docs", action="store_true")
    args = parser.parse_args()
    load0 = os.getloadavg()[0]
    results: dict[str, str] = {}
    with tempfile.TemporaryDirectory() as tmp, LocalSite(os.path.join(tmp, "site")) as site:
        for name in [s for s in args.scenarios.split(",") if s]:
            t0 = time.monotonic()
            fn = globals()[f"sc_{name}"]
            out = run_scenario(
                lambda fn=fn, n=name: fn(site, os.path.join(tmp, n), args.quick), name, site
            )
            results.update(out)
            print(f"{name} ({time.monotonic() - t0:.0f} s): {out}", flush=True)
    rows = []
    for label, text in results.items():
        parts = [p.strip() for p in text.split("|")]
        ours = parts[0]
        ref = next((p[4:].strip() for p in parts if p.startswith("ref:")), "")
        target = next((p[6:].strip() for p in parts if p.startswith("target")), "")
        rows.append([label, ours, ref, target])
    title = ("Quick run." if args.quick else "Full run.") + (
        f" Load average {load0:.1f} at start (other work on the machine)."
    )
    header = ["what", "socs-agents GWDataBuffer", "reference (spec)", "target"]
    emit(rst_table(header, rows, title), DOCS if args.write_docs else None)
    if args.write_docs:
        for path in record("gw_data_buffer", header, rows, title):
            print(f"(written to {path})")


if __name__ == "__main__":
    main()
