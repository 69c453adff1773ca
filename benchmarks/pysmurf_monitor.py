"""Our PysmurfMonitor next to socs's, driven with the same datagrams in one run.

    .venv/bin/python benchmarks/pysmurf_monitor.py            # full run, about 15 minutes
    .venv/bin/python benchmarks/pysmurf_monitor.py --quick    # shorter scenarios
    .venv/bin/python benchmarks/pysmurf_monitor.py --only ours --scenarios latency,burst

socs's agent is installed from PyPI into a virtual environment of its own
(``--socs-venv``, created on first use). Both agents run as real processes on one real
crossbar hub; the simulator writes real files and sends the publisher's datagrams; a watcher
thread reads the database every 2 ms to see when each row appears.
"""

from __future__ import annotations

import argparse
import functools
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _plots import percentile_list, record  # noqa: E402
from _report import emit, median, percentile, read_rst_table, rst_table, run_scenario  # noqa: E402

from socs_agents.agents.pysmurf_monitor.agent import kernel_udp_rcvbuf_errors  # noqa: E402
from socs_agents.dev.sim.smurf import SmurfSimulator  # noqa: E402
from socs_agents.dev.testing import LocalSite, free_udp_port, wait_for  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
DOCS = os.path.join(HERE, "..", "docs", "figures", "pysmurf_monitor.rst")
SOCS_VERSION = "0.6.4"
SCENARIOS = ["latency", "rate", "burst", "bigfiles", "kill9", "cleanstop", "dblock"]
#: what the table cannot hold, saved with --write-docs: {implementation: {series: data}}
SERIES: dict[str, dict] = {}


def ensure_socs_venv(path: str) -> str:
    python = os.path.join(path, "bin", "python")
    if not os.path.exists(os.path.join(path, ".socs-installed")):
        print(f"installing socs {SOCS_VERSION} into {path} (first run only) ...", flush=True)
        subprocess.run([sys.executable, "-m", "venv", path], check=True)
        subprocess.run([python, "-m", "pip", "install", "-q", f"socs=={SOCS_VERSION}"], check=True)
        open(os.path.join(path, ".socs-installed"), "w").close()
    return python


class RowWatcher:
    """Polls the database every 2 ms and notes when each local path first appears."""

    def __init__(self, db_path: str) -> None:
        self.db_path = db_path
        self.seen: dict[str, float] = {}
        self.rows = 0
        self._last_id = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        con = None
        while not self._stop.wait(0.002):
            try:
                if con is None:
                    if not os.path.exists(self.db_path):
                        continue
                    con = sqlite3.connect(f"file:{self.db_path}?mode=ro", uri=True, timeout=1)
                now = time.time()
                for rid, path in con.execute(
                    "SELECT id, local_path FROM supersync_v0 WHERE id > ? ORDER BY id",
                    (self._last_id,),
                ):
                    self._last_id = rid
                    self.rows += 1
                    self.seen.setdefault(path, now)
            except sqlite3.Error:
                continue

    def wait_rows(self, paths, timeout: float) -> bool:
        try:
            wait_for(lambda: all(p in self.seen for p in paths), timeout, "rows", 0.01)
            return True
        except TimeoutError:
            return False

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)


class Bench:
    def __init__(self, site: LocalSite, kind: str, python: str | None, workdir: str):
        self.site, self.kind, self.python, self.workdir = site, kind, python, workdir
        self.n = 0

    def start(self, extra: list | None = None):
        """A fresh agent with a fresh database; returns (agent, sim, watcher, paths)."""
        self.n += 1
        port = free_udp_port()
        db_path = os.path.join(self.workdir, f"{self.kind}-{self.n}", "suprsync.db")
        iid = f"bench-{self.kind}-{self.n}"
        args = [["--udp-port", port], ["--db-path", db_path]]
        if self.kind == "ours":
            args.append(["--udp-host", "127.0.0.1"])
            args.append(["--allowed-root", self.workdir])
        self.site.add_instance("PysmurfMonitor", iid, args + (extra or []))
        agent = self.site.start_agent(iid, python=self.python)
        sim = SmurfSimulator(os.path.join(self.workdir, f"data-{self.kind}-{self.n}"), port=port)
        return agent, sim, RowWatcher(db_path), db_path, iid

    def restart(self, iid: str):
        return self.site.start_agent(iid, python=self.python)


#: ext4 allows 65,000 links to one file; start a new base file well before that.
LINKS_PER_BASE = 50_000


def mass_files(sim: SmurfSimulator, n: int) -> list[tuple[str, bytes]]:
    """``n`` distinct announced files cheaply: hard links to a few small real files."""
    import json

    out: list[tuple[str, bytes]] = []
    for i in range(n):
        if i % LINKS_PER_BASE == 0:
            base, dg = sim.data_file(fmt="txt")
            payload = json.loads(dg)["payload"]
            folder = os.path.dirname(base)
            out.append((base, dg))
            continue
        path = os.path.join(folder, f"link_{i:07d}.txt")
        os.link(base, path)
        out.append((path, sim.envelope("data_file", dict(payload, path=path))))
    return out


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def stop_agent(bench: Bench, agent, watcher: RowWatcher, sim: SmurfSimulator) -> None:
    watcher.close()
    sim.close()
    agent.kill()
    if agent in bench.site.agents:
        bench.site.agents.remove(agent)


# ---- scenarios: each returns {row label: figure text} ------------------------------------


def sc_latency(b: Bench, q: bool) -> dict:
    agent, sim, w, _, _ = b.start()
    files = sim.files(60 if q else 200, g3_every=0)
    sent = sim.send_paced([dg for _, dg in files], rate=20)
    w.wait_rows([p for p, _ in files], 10)
    lat = [(w.seen[p] - t) * 1e3 for (p, _), t in zip(files, sent, strict=False) if p in w.seen]
    SERIES.setdefault(b.kind, {})["send_to_row_ms"] = percentile_list(lat)
    stop_agent(b, agent, w, sim)
    return {
        "send to row, median / p99 (1 per 50 ms)": (
            f"{median(lat):.1f} / {percentile(lat, 99):.1f} ms"
            + ("" if len(lat) == len(files) else f" ({len(files) - len(lat)} lost)")
        )
    }


def sc_rate(b: Bench, q: bool) -> dict:
    seconds = 5 if q else 30
    best, cpu_per_file, detail = None, None, []
    for rate in (2000, 5000, 10000):
        agent, sim, w, _, _ = b.start()
        files = mass_files(sim, rate * seconds)
        drops0, cpu0 = kernel_udp_rcvbuf_errors(), cpu_seconds(agent.proc.pid)
        sim.send_paced([dg for _, dg in files], rate=rate, max_seconds=seconds * 3)
        w.wait_rows([p for p, _ in files], 20)
        cpu = cpu_seconds(agent.proc.pid) - cpu0
        lost = sum(1 for p, _ in files if p not in w.seen)
        drops = (kernel_udp_rcvbuf_errors() or 0) - (drops0 or 0)
        detail.append(f"{rate}/s: {lost} lost ({drops} kernel drops)")
        if lost == 0:
            best = rate
            cpu_per_file = cpu / len(files) * 1e6
        stop_agent(b, agent, w, sim)
        if lost:
            break
    return {
        f"highest paced rate with nothing lost ({seconds} s)": (
            f"{best}/s" if best else "below 2000/s"
        )
        + f" [{'; '.join(detail)}]",
        "CPU per file (agent process, at that rate)": f"{cpu_per_file:.0f} us"
        if cpu_per_file
        else "n/a",
    }


def sc_burst(b: Bench, q: bool) -> dict:
    best, detail = 0, []
    for n in (166, 2000, 20000) if q else (166, 2000, 20000, 50000):
        agent, sim, w, _, _ = b.start()
        files = mass_files(sim, n)
        for _, dg in files:
            sim.send(dg)
        w.wait_rows([p for p, _ in files], 30)
        lost = sum(1 for p, _ in files if p not in w.seen)
        detail.append(f"{n}: {lost} lost")
        stop_agent(b, agent, w, sim)
        if lost:
            break
        best = n
    return {"largest burst with nothing lost": f"{best} [{'; '.join(detail)}]"}


def sc_bigfiles(b: Bench, q: bool) -> dict:
    size = (100 if q else 500) << 20
    agent, sim, w, _, _ = b.start()
    bigs = [sim.big_file(size) for _ in range(4)]
    small = sim.files(40, g3_every=0)
    for _, dg in bigs:
        sim.send(dg)
    sent = sim.send_paced([dg for _, dg in small], rate=20)
    w.wait_rows([p for p, _ in small + bigs], 120)
    lat = [(w.seen[p] - t) * 1e3 for (p, _), t in zip(small, sent, strict=False) if p in w.seen]
    for p, _ in bigs:
        os.remove(p)
    stop_agent(b, agent, w, sim)
    return {
        f"small-file latency during four {size >> 20} MB checksums, median / p99": (
            f"{median(lat):.0f} / {percentile(lat, 99):.0f} ms"
        )
    }


def _interrupted(b: Bench, q: bool, sig: int) -> tuple[int, int, Bench, tuple]:
    agent, sim, w, db, iid = b.start()
    files = mass_files(sim, 5000)
    cut = 2000  # the signal goes out after this many datagrams, at 1000/s
    sim.send_paced([dg for _, dg in files[:cut]], rate=1000)
    if sig == signal.SIGKILL:
        agent.kill()
    else:
        agent.send_signal(sig)
    sim.send_paced([dg for _, dg in files[cut : cut + 500]], rate=1000)
    if sig != signal.SIGKILL:
        agent.proc.wait(30)
    w.wait_rows([p for p, _ in files[:cut]], 5)
    lost = sum(1 for p, _ in files[:cut] if p not in w.seen)
    if agent in b.site.agents:
        b.site.agents.remove(agent)
    return lost, cut, b, (sim, w, iid, files)


def sc_kill9(b: Bench, q: bool) -> dict:
    lost, cut, b, (sim, w, iid, files) = _interrupted(b, q, signal.SIGKILL)
    text = f"{lost} of {cut}"
    again = b.restart(iid)
    w.wait_rows([p for p, _ in files[:cut]], 15)
    after = sum(1 for p, _ in files[:cut] if p not in w.seen)
    text += f"; {after} after restart"
    stop_agent(b, again, w, sim)
    return {"files lost on kill -9 at 1000/s": text}


def sc_cleanstop(b: Bench, q: bool) -> dict:
    lost, cut, b, (sim, w, _, _) = _interrupted(b, q, signal.SIGTERM)
    w.close()
    sim.close()
    return {"files lost on clean stop (SIGTERM) at 1000/s": f"{lost} of {cut}"}


def sc_dblock(b: Bench, q: bool) -> dict:
    hold = 10 if q else 60
    agent, sim, w, db, _ = b.start()
    warm = sim.files(5, g3_every=0)
    for _, dg in warm:
        sim.send(dg)
    w.wait_rows([p for p, _ in warm], 10)
    locker = sqlite3.connect(db, isolation_level=None, timeout=30)
    locker.execute("BEGIN IMMEDIATE")
    files = sim.files(hold * 20, g3_every=0)
    sim.send_paced([dg for _, dg in files], rate=20)
    unlocked = time.time()
    locker.execute("ROLLBACK")
    locker.close()
    w.wait_rows([p for p, _ in files], 60)
    lost = sum(1 for p, _ in files if p not in w.seen)
    catch_up = max(w.seen.get(p, time.time()) for p, _ in files) - unlocked
    stop_agent(b, agent, w, sim)
    return {
        f"database write-locked {hold} s": f"{lost} lost; all rows {catch_up:.2f} s after unlock"
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="shorter scenarios")
    parser.add_argument("--only", choices=["ours", "socs"], help="run one implementation")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    parser.add_argument(
        "--socs-venv",
        default=os.path.join(
            os.path.expanduser("~"), ".cache", "socs-agents", f"socs-{SOCS_VERSION}-venv"
        ),
    )
    parser.add_argument("--write-docs", action="store_true")
    parser.add_argument(
        "--update-docs",
        action="store_true",
        help="re-measure the given scenarios and replace only their rows in "
        "the docs table (both implementations must run)",
    )
    args = parser.parse_args()
    wanted = [s for s in args.scenarios.split(",") if s]
    kinds = [args.only] if args.only else ["ours", "socs"]
    pythons = {"ours": None}
    if "socs" in kinds:
        pythons["socs"] = ensure_socs_venv(args.socs_venv)

    results: dict[str, dict[str, str]] = {k: {} for k in kinds}
    with tempfile.TemporaryDirectory() as tmp, LocalSite(os.path.join(tmp, "site")) as site:
        for name in wanted:
            for kind in kinds:
                bench = Bench(site, kind, pythons[kind], os.path.join(tmp, name))
                t0 = time.monotonic()
                out = run_scenario(
                    functools.partial(globals()[f"sc_{name}"], bench, args.quick), name, site
                )
                results[kind].update(out)
                print(f"[{kind}] {name} ({time.monotonic() - t0:.0f} s): {out}", flush=True)

    labels = list(dict.fromkeys(k for r in results.values() for k in r))
    header = ["what"] + [("socs-agents" if k == "ours" else f"socs {SOCS_VERSION}") for k in kinds]
    rows = [[label] + [results[k].get(label, "-") for k in kinds] for label in labels]
    title = "Quick run." if args.quick else "Full run."
    if args.update_docs:
        first, old = read_rst_table(DOCS)
        if old[0] != header:
            raise SystemExit(f"--update-docs: the docs table has columns {old[0]}, not {header}")
        fresh = {r[0]: r for r in rows}
        kept = [fresh.pop(r[0], r) for r in old[1:] if r[0] not in wanted]
        rows = kept + list(fresh.values())
        # Keep the table's own title ("Full run." / "Quick run.") and say what was redone.
        title = first.split("). ", 1)[1].split(" Rows of ")[0] if "). " in first else title
        title += (
            f" Rows of {', '.join(wanted)} re-measured {time.strftime('%Y-%m-%d')}, "
            "both implementations in one run."
        )
    emit(rst_table(header, rows, title), DOCS if args.write_docs or args.update_docs else None)
    if args.write_docs or args.update_docs:
        names = dict(zip(kinds, header[1:], strict=True))
        dists = {
            names[k]: s["send_to_row_ms"] for k, s in SERIES.items() if s.get("send_to_row_ms")
        }
        for path in record("pysmurf_monitor", header, rows, title, {"send_to_row_ms": dists}):
            print(f"(written to {path})")


if __name__ == "__main__":
    main()
