"""The benchmarks' figures as data and as plots.

Each benchmark's ``--write-docs`` records its table in ``docs/figures/<bench>.rst`` (as
before) and calls :func:`record`, which saves the results as data in
``docs/figures/data/<bench>.json`` (date, machine, the table, and the series the plots need:
percentile lists rather than every sample) and draws ``docs/figures/<bench>.png``.

Redraw every plot from the saved data, without running a benchmark::

    .venv/bin/python benchmarks/_plots.py

``--from-recorded-tables`` first rebuilds the data files from the tables already recorded in
``docs/figures/*.rst`` (:func:`data_from_recorded_tables`, a one-off conversion for figures
measured before the benchmarks saved data; the tables hold medians and p99s, not whole
distributions, so those plots show what the tables hold).
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import re
import sys
from collections.abc import Callable, Sequence

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _report import read_rst_table  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
FIGURES = os.path.normpath(os.path.join(HERE, "..", "docs", "figures"))
BENCHES = (
    "pysmurf_monitor",
    "file_orchestrator",
    "visibility_fanout",
    "gw_data_buffer",
    "daq_writer",
)
#: the recorded table of each benchmark (the fan-out's page predates the script's name)
TABLES = {b: f"{b}.rst" for b in BENCHES} | {"visibility_fanout": "visibility_manager.rst"}
#: percentiles kept of a latency distribution (instead of every sample)
PERCENTILES = (0, 1, 5, 10, 25, 50, 75, 90, 95, 99, 99.9, 100)

OURS, REFERENCE, FLOOR, TARGET = "#1f77b4", "#d62728", "#7f7f7f", "#2ca02c"


# ---- data --------------------------------------------------------------------------------


def machine() -> str:
    """This machine in one line: cores, CPU model, OS, Python."""
    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            model = next(
                (ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), ""
            )
    except OSError:
        pass
    parts = [f"{os.cpu_count()} cores", model, f"{platform.system()} {platform.machine()}"]
    return ", ".join(p for p in parts if p) + f", Python {platform.python_version()}"


def percentile_list(values: Sequence[float]) -> dict[str, float]:
    """A latency distribution, compactly: ``{"50": median, "99": p99, ...}``."""
    ordered = sorted(values)
    if not ordered:
        return {}
    out = {}
    for q in PERCENTILES:
        k = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
        out[f"{q:g}"] = round(ordered[k], 4)
    return out


def data_path(bench: str, figures: str = FIGURES) -> str:
    return os.path.join(figures, "data", f"{bench}.json")


def record(
    bench: str,
    header: Sequence[str],
    rows: Sequence[Sequence[str]],
    title: str,
    series: dict | None = None,
    figures: str = FIGURES,
) -> list[str]:
    """Save a benchmark's results as data and draw its plots; returns the files written.

    ``series`` holds what the table cannot (e.g. percentile lists); everything the plots
    need from the table is parsed from its rows, the same way for new runs and for the
    recorded tables."""
    data = {
        "bench": bench,
        "date": datetime.date.today().isoformat(),
        "machine": machine(),
        "title": title,
        "table": {"header": list(header), "rows": [list(r) for r in rows]},
        "series": {**PARSERS[bench](list(header), [list(r) for r in rows]), **(series or {})},
    }
    return save_and_draw(data, figures)


def save_and_draw(data: dict, figures: str = FIGURES) -> list[str]:
    path = data_path(data["bench"], figures)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(data, f, indent=1, ensure_ascii=False)
        f.write("\n")
    return [path, *draw(data, figures)]


def numbers(text: str) -> list[float]:
    return [float(x.replace(",", "")) for x in re.findall(r"-?\d[\d,]*\.?\d*", text)]


def _cells(header: list[str], rows: list[list[str]]) -> dict[str, dict[str, str]]:
    """``{column: {row label: cell}}``."""
    return {col: {r[0]: r[i] for r in rows if i < len(r)} for i, col in enumerate(header) if i}


def _find(cells: dict[str, str], prefix: str) -> str:
    return next((v for k, v in cells.items() if k.startswith(prefix)), "")


def parse_pysmurf_monitor(header: list[str], rows: list[list[str]]) -> dict:
    out = {}
    for impl, cells in _cells(header, rows).items():
        s: dict = {}
        lat = numbers(_find(cells, "send to row").split("ms")[0])
        if len(lat) >= 2:
            s["send_to_row_ms"] = {"50": lat[0], "99": lat[1]}
        rate = _find(cells, "highest paced rate")
        s["rate_lost"] = [
            [int(r), int(lost)] for r, lost in re.findall(r"(\d+)/s: (\d+) lost", rate)
        ]
        burst = _find(cells, "largest burst")
        s["burst_lost"] = [
            [int(n), int(lost)] for n, lost in re.findall(r"(\d+): (\d+) lost", burst)
        ]
        out[impl] = s
    return {"implementations": out}


def parse_file_orchestrator(header: list[str], rows: list[list[str]]) -> dict:
    cells = _cells(header, rows)[header[1]]
    out: dict = {}
    rate = numbers(_find(cells, "read-next, 4 dispatchers").split("/s")[0])
    if rate:
        out["read_next_per_s"] = rate[0]
    lat = numbers(_find(cells, "read-next latency").split("ms")[0])
    if len(lat) >= 3:
        out["read_next_ms"] = {"50": lat[0], "99": lat[1], "100": lat[2]}
    disc = numbers(_find(cells, "file renamed").split("ms")[0])
    if len(disc) >= 3:
        out["discovery_ms"] = {"50": disc[0], "99": disc[1], "100": disc[2]}
    cycle = numbers(_find(cells, "request + read-next + complete"))
    if cycle:
        out["cycle_per_s"] = cycle[-1]
    restart = numbers(_find(cells, "kill -9, restart").split("s (")[0].split(":")[-1])
    if restart:
        out["restart_s"] = restart
    out["targets"] = {
        "read_next_per_s": 1000,
        "read_next_p99_ms": 10,
        "discovery_ms": 200,
        "restart_s": 2,
    }
    return out


#: the fan-out rows drawn, by row label (before ", median / p99") -> series name
FANOUT_ROWS = {
    "manager ping (WAMP)": "ping",
    "serial manager ping": "ping_serial",
    "serial task fan-out (the spec's): ping": "ping_serial_tasks",
    "floor: N concurrent bare WAMP calls": "floor_bare",
    "floor: agent task making N concurrent bare calls": "floor_agent",
    "manager start": "start",
    "serial manager start": "start_serial",
    "serial task fan-out (the spec's): start": "start_serial_tasks",
    "manager stop": "stop",
}


def parse_visibility_fanout(header: list[str], rows: list[list[str]]) -> dict:
    sizes = [int(numbers(h)[0]) for h in header[1:]]
    out: dict = {"n": sizes}
    for r in rows:
        name = FANOUT_ROWS.get(r[0].split(", median / p99")[0])
        if name and r[0].endswith("median / p99"):
            pairs = [numbers(c) for c in r[1 : 1 + len(sizes)]]
            out[name] = [{"50": p[0], "99": p[1]} if len(p) >= 2 else {} for p in pairs]
    return out


#: the reference's figures from its spec (4096-sample bodies, 10 s runs on a machine like ours):
#: trainmod's writers -> (w/s low, high), (p99 ms low, high); the stdlib stand-in's w/s
GW_TRAINMOD = {1: ((41, 41), (59, 59)), 4: ((40, 54), (144, 246)), 8: ((68, 68), (260, 260))}
GW_STANDIN = {1: 100, 4: 105, 8: 104}


def parse_gw_data_buffer(header: list[str], rows: list[list[str]]) -> dict:
    ours, ref, target = [], [], []
    for r in rows:
        m = re.match(r"4096-sample chunks, (\d+) writer", r[0])
        if not m:
            continue
        w = int(m.group(1))
        o = re.match(r"([\d.]+) w/s, p50 ([\d.]+) / p99 ([\d.]+) ms", r[1])
        if o:
            ours.append(
                {
                    "writers": w,
                    "w_per_s": float(o.group(1)),
                    "p50_ms": float(o.group(2)),
                    "p99_ms": float(o.group(3)),
                }
            )
        rm = re.match(
            r"([\d.]+)(?:-([\d.]+))? w/s"  # "41 w/s" or "40-54 w/s", then maybe latencies
            r"(?:, p50 ([\d.]+)(?:-[\d.]+)? / p99 ([\d.]+)(?:-([\d.]+))? ms)?",
            r[2] if len(r) > 2 else "",
        )
        if rm:
            lo = float(rm.group(1))
            ref.append(
                {
                    "writers": w,
                    "w_per_s": [lo, float(rm.group(2) or lo)],
                    "p99_ms": [float(rm.group(4)), float(rm.group(5) or rm.group(4))]
                    if rm.group(4)
                    else None,
                }
            )
        t = re.search(r"≥ (\d+) w/s, p99 ≤ (\d+) ms", r[3] if len(r) > 3 else "")
        if t:
            target.append({"writers": w, "w_per_s": float(t.group(1)), "p99_ms": float(t.group(2))})
    # the table's reference column is the spec's; the spec also has writers a quick run skips
    seen = {d["writers"] for d in ref}
    ref += [
        {"writers": w, "w_per_s": list(r), "p99_ms": list(p)}
        for w, (r, p) in GW_TRAINMOD.items()
        if w not in seen
    ]
    return {
        "ours": ours,
        "reference": ref,
        "target": target,
        "standin": [{"writers": w, "w_per_s": v} for w, v in GW_STANDIN.items()],
    }


def parse_daq_writer(header: list[str], rows: list[list[str]]) -> dict:
    shapes: dict[str, dict] = {}
    for r in rows:
        m = re.match(r"floor (\d+x\d+): ZMQ receive \+ h5py (direct chunk|bitshuffle/LZ4)", r[0])
        if m:
            codec = "raw" if m.group(2) == "direct chunk" else "bitshuffle/LZ4"
            shapes.setdefault(m.group(1), {}).setdefault(codec, {})["floor_mb_s"] = numbers(r[1])[0]
            continue
        m = re.match(r"floor (\d+x\d+): h5py (direct chunk|bitshuffle/LZ4)$", r[0])
        if m:
            codec = "raw" if m.group(2) == "direct chunk" else "bitshuffle/LZ4"
            shapes.setdefault(m.group(1), {}).setdefault(codec, {})["h5_mb_s"] = numbers(r[1])[0]
            continue
        m = re.match(r"agent (\d+x\d+) (raw|bitshuffle/LZ4): highest loss-free", r[0])
        if m:
            shapes.setdefault(m.group(1), {}).setdefault(m.group(2), {})["agent_mb_s"] = numbers(
                r[1]
            )[0]
    disk = next((numbers(r[1])[0] for r in rows if r[0].startswith("floor: os.write")), None)
    return {"shapes": shapes, "disk_mb_s": disk}


PARSERS: dict[str, Callable[[list[str], list[list[str]]], dict]] = {
    "pysmurf_monitor": parse_pysmurf_monitor,
    "file_orchestrator": parse_file_orchestrator,
    "visibility_fanout": parse_visibility_fanout,
    "gw_data_buffer": parse_gw_data_buffer,
    "daq_writer": parse_daq_writer,
}


def _recorded(path: str) -> tuple[str, str, str, list[str], list[list[str]]]:
    """(date, machine, title, header, rows) of a recorded table."""
    first, rows = read_rst_table(path)
    m = re.match(r"Measured (\S+) \(([^)]*)\)\.?\s*(.*)", first)
    date, mach, title = (m.group(1), m.group(2), m.group(3)) if m else ("", "", first)
    return date, mach, title, rows[0], rows[1:]


def data_from_recorded_tables(figures: str = FIGURES) -> list[str]:
    """One-off conversion: the data files from the tables recorded in ``docs/figures/*.rst``
    by the runs made before the benchmarks saved data (the machine is the tables' own
    description). The PysmurfMonitor's socs 0.6.4 column, not re-run since, comes from the
    previous table (``previous/pysmurf_monitor.rst``) with its own date."""
    written = []
    for bench in BENCHES:
        date, mach, title, header, rows = _recorded(os.path.join(figures, TABLES[bench]))
        series = PARSERS[bench](header, rows)
        if bench == "pysmurf_monitor":
            p_date, _, _, p_header, p_rows = _recorded(
                os.path.join(figures, "previous", "pysmurf_monitor.rst")
            )
            prev = PARSERS[bench](p_header, p_rows)["implementations"]
            for impl, s in prev.items():
                key = impl if impl != "socs-agents" else "socs-agents (previous code)"
                series["implementations"][key] = {**s, "date": p_date}
            series["implementations"]["socs-agents"]["date"] = date
        data = {
            "bench": bench,
            "date": date,
            "machine": mach + " (converted from the recorded table)",
            "title": title,
            "table": {"header": header, "rows": rows},
            "series": series,
        }
        written += save_and_draw(data, figures)
    return written


# ---- plots -------------------------------------------------------------------------------


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _finish(fig, data: dict, what: str, figures: str) -> str:
    from matplotlib.ticker import FixedLocator, FuncFormatter, LogLocator, NullFormatter

    plain = FuncFormatter(lambda v, _: f"{v:g}")
    for ax in fig.axes:  # log axes read 2, 5, 10, 100, not 2x10^0
        for axis, scale, lim in (
            (ax.xaxis, ax.get_xscale(), ax.get_xlim()),
            (ax.yaxis, ax.get_yscale(), ax.get_ylim()),
        ):
            if scale == "log":
                if not isinstance(axis.get_major_locator(), FixedLocator):  # set_xticks
                    narrow = lim[1] / max(lim[0], 1e-12) < 200  # 1, 2, 5 fit; else decades
                    subs = (1.0, 2.0, 5.0) if narrow else (1.0,)
                    axis.set_major_locator(LogLocator(base=10, subs=subs))
                axis.set_major_formatter(plain)
                axis.set_minor_formatter(NullFormatter())
        if ax.get_ylabel() == "files lost":
            top = max(10.0, ax.get_ylim()[1])
            ax.set_ylim(-0.04 * top, top)  # zero losses drawn above the axis, not on it
    fig.suptitle(f"{what}\nmeasured {data['date']} on {data['machine']}", fontsize=10)
    fig.tight_layout()
    path = os.path.join(figures, f"{data['bench']}.png")
    fig.savefig(path, dpi=110)
    _pyplot().close(fig)
    return path


def _legend(ax, **kw) -> None:
    """A legend where something is drawn; a panel with no data says so."""
    if ax.get_legend_handles_labels()[0]:
        ax.legend(**kw)
    if not ax.lines and not ax.patches and not ax.collections:
        ax.text(
            0.5,
            0.5,
            "not measured in this run",
            ha="center",
            va="center",
            transform=ax.transAxes,
            color=FLOOR,
        )


def _percentile_line(
    ax, dist: dict[str, float], label: str, color: str, marker: str = "o", notes: bool = True
):
    qs = sorted(dist, key=float)
    ax.plot(
        [dist[q] for q in qs],
        [float(q) for q in qs],
        marker=marker,
        color=color,
        label=label,
        linestyle="-" if len(qs) > 2 else ":",
    )
    for q in qs if notes else ():
        if q in ("50", "99"):
            ax.annotate(
                f"p{q} {dist[q]:.3g}",
                (dist[q], float(q)),
                textcoords="offset points",
                xytext=(5, 2 if q == "50" else 4),
                fontsize=7,
                color=color,
            )


def draw_pysmurf_monitor(data: dict, figures: str) -> list[str]:
    plt = _pyplot()
    impls = data["series"]["implementations"]
    colors = {"socs-agents": OURS, "socs-agents (previous code)": "#9ecae1"}
    fig, (a, b, c) = plt.subplots(1, 3, figsize=(13, 4.2))
    # whole distributions where the run saved them, else the table's median and p99
    dists = data["series"].get("send_to_row_ms", {})
    for name, s in impls.items():
        color = colors.get(name, REFERENCE)
        label = name + (f" ({s['date']})" if s.get("date") else "")
        dist = dists.get(name) or s.get("send_to_row_ms")
        if dist:
            _percentile_line(a, dist, label, color, notes="previous" not in name)
        if s.get("rate_lost"):
            b.plot(
                [r for r, _ in s["rate_lost"]],
                [lost for _, lost in s["rate_lost"]],
                marker="o",
                color=color,
                label=label,
            )
        if s.get("burst_lost"):
            c.plot(
                [n for n, _ in s["burst_lost"]],
                [lost for _, lost in s["burst_lost"]],
                marker="o",
                color=color,
                label=label,
            )
    a.set(
        xscale="log",
        xlabel="send → row latency (ms, log)",
        ylabel="percentile",
        title="send → row, 1 file per 50 ms",
    )
    b.set(xlabel="paced rate (files/s)", ylabel="files lost", title="loss against rate")
    c.set(
        xscale="log",
        xlabel="burst (files sent at once, log)",
        ylabel="files lost",
        title="loss against burst size",
    )
    for ax in (a, b, c):
        ax.grid(alpha=0.3)
        _legend(ax, fontsize=7)
    return [_finish(fig, data, "PysmurfMonitor next to socs's", figures)]


def draw_file_orchestrator(data: dict, figures: str) -> list[str]:
    plt = _pyplot()
    s = data["series"]
    t = s["targets"]
    fig, (a, b, c) = plt.subplots(1, 3, figsize=(13, 4.2))
    for key, label, color, marker in (
        ("read_next_ms", "read-next (4 dispatchers)", OURS, "o"),
        ("discovery_ms", "file renamed → first record", "#ff7f0e", "s"),
    ):
        if s.get(key):
            _percentile_line(a, s[key], label, color, marker)
    a.axvline(t["read_next_p99_ms"], color=TARGET, ls="--", label="target: read-next p99 10 ms")
    a.axvline(t["discovery_ms"], color=TARGET, ls=":", label="target: discovery 200 ms")
    a.set(
        xscale="log", xlabel="latency (ms, log)", ylabel="percentile (100 = max)", title="latency"
    )
    rates = [
        ("read-next", s.get("read_next_per_s", 0)),
        ("request + read\n+ complete", s.get("cycle_per_s", 0)),
    ]
    b.bar([r[0] for r in rates], [r[1] for r in rates], color=OURS)
    for i, (_, v) in enumerate(rates):
        b.annotate(f"{v:,.0f}/s", (i, v), ha="center", va="bottom", fontsize=8)
    b.axhline(t["read_next_per_s"], color=TARGET, ls="--", label="target: read-next 1,000/s")
    b.set(ylabel="records per second", title="throughput, 4 keep-alive clients")
    b.set_ylim(0, 1.15 * max([t["read_next_per_s"]] + [v for _, v in rates]))
    restart = s.get("restart_s", [])
    c.bar([f"run {i + 1}" for i in range(len(restart))], restart, color=OURS)
    c.axhline(t["restart_s"], color=TARGET, ls="--", label="target 2 s")
    if not restart:
        c.text(
            0.5,
            0.5,
            "not measured in this run",
            ha="center",
            va="center",
            transform=c.transAxes,
            color=FLOOR,
        )
    c.set(ylabel="seconds", title="kill -9: start to serving\n100,000 records")
    for ax in (a, b, c):
        ax.grid(alpha=0.3)
        _legend(ax, fontsize=7)
    return [_finish(fig, data, "FileOrchestrator", figures)]


def draw_visibility_fanout(data: dict, figures: str) -> list[str]:
    plt = _pyplot()
    s = data["series"]
    n = s["n"]
    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4.5))
    styles = {
        "ping": ("manager (concurrent)", OURS, "o"),
        "ping_serial": ("manager, serial fan-out", "#ff7f0e", "s"),
        "ping_serial_tasks": ("serial task fan-out (the spec's)", REFERENCE, "^"),
        "floor_agent": ("floor: an agent task, concurrent bare calls", FLOOR, "x"),
        "floor_bare": ("floor: concurrent bare WAMP calls", "#bcbcbc", "+"),
        "start": ("manager (concurrent)", OURS, "o"),
        "start_serial": ("manager, serial fan-out", "#ff7f0e", "s"),
        "start_serial_tasks": ("serial task fan-out (the spec's)", REFERENCE, "^"),
        "stop": ("manager stop", "#9467bd", "v"),
    }
    for ax, keys, what in (
        (a, ("ping", "ping_serial", "ping_serial_tasks", "floor_agent", "floor_bare"), "ping"),
        (b, ("start", "start_serial", "start_serial_tasks", "stop"), "start / stop"),
    ):
        for key in keys:
            if key not in s:
                continue
            label, color, marker = styles[key]
            med = [d.get("50", math.nan) for d in s[key]]
            p99 = [d.get("99", math.nan) for d in s[key]]
            ax.plot(n, med, marker=marker, color=color, label=f"{label}: median")
            ax.plot(n, p99, marker=marker, color=color, ls=":", alpha=0.7, label="p99")
        ax.set(
            xscale="log",
            yscale="log",
            xlabel="pipelines (recorders), log",
            ylabel="call to answer (ms, log)",
            title=f"{what}: median (solid), p99 (dotted)",
        )
        ax.set_xticks(n, [str(x) for x in n])
        ax.grid(alpha=0.3, which="both")
        handles, labels = ax.get_legend_handles_labels()
        keep = [i for i, lb in enumerate(labels) if lb != "p99"]
        ax.legend([handles[i] for i in keep], [labels[i] for i in keep], fontsize=7)
    return [_finish(fig, data, "VisibilityManager: fan-out time against pipelines", figures)]


def draw_gw_data_buffer(data: dict, figures: str) -> list[str]:
    plt = _pyplot()
    s = data["series"]
    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4.5))
    ours = sorted(s["ours"], key=lambda d: d["writers"])
    ref = sorted(s["reference"], key=lambda d: d["writers"])
    w = [d["writers"] for d in ours]
    a.plot(w, [d["w_per_s"] for d in ours], "o-", color=OURS, label="socs-agents GWDataBuffer")
    for d in ours:
        a.annotate(
            f"{d['w_per_s']:g}",
            (d["writers"], d["w_per_s"]),
            xytext=(4, 4),
            textcoords="offset points",
            fontsize=7,
            color=OURS,
        )
    rw = [d["writers"] for d in ref]
    lo = [d["w_per_s"][0] for d in ref]
    hi = [d["w_per_s"][1] for d in ref]
    a.fill_between(rw, lo, hi, color=REFERENCE, alpha=0.2)
    a.plot(
        rw,
        [(x + y) / 2 for x, y in zip(lo, hi, strict=True)],
        "s--",
        color=REFERENCE,
        label="trainmod (the spec's figures; band: its range)",
    )
    standin = s.get("standin", [])
    a.plot(
        [d["writers"] for d in standin],
        [d["w_per_s"] for d in standin],
        "^:",
        color=FLOOR,
        label="stdlib stand-in (the spec's)",
    )
    for t in s.get("target", []):
        a.plot([t["writers"]], [t["w_per_s"]], "_", ms=20, mew=2, color=TARGET)
    a.plot([], [], "_", ms=12, mew=2, color=TARGET, label="target")
    a.set(
        xlabel="keep-alive writers",
        ylabel="durable writes per second",
        title="4096-sample /streamdata writes",
    )
    a.set_ylim(bottom=0)
    b.plot(w, [d["p99_ms"] for d in ours], "o-", color=OURS, label="socs-agents: p99")
    b.plot(w, [d["p50_ms"] for d in ours], "o:", color=OURS, label="socs-agents: median")
    rp = [d for d in ref if d.get("p99_ms")]
    b.plot(
        [d["writers"] for d in rp],
        [sum(d["p99_ms"]) / 2 for d in rp],
        "s--",
        color=REFERENCE,
        label="trainmod: p99 (the spec's)",
    )
    for t in s.get("target", []):
        b.plot([t["writers"]], [t["p99_ms"]], "_", ms=20, mew=2, color=TARGET)
    b.plot([], [], "_", ms=12, mew=2, color=TARGET, label="target p99")
    b.set(xlabel="keep-alive writers", ylabel="write latency (ms)", title="latency")
    b.set_ylim(bottom=0)
    for ax in (a, b):
        ticks = sorted({*w, *rw})
        ax.set_xticks(ticks, [str(x) for x in ticks])
        ax.grid(alpha=0.3)
        _legend(ax, fontsize=7)
    return [_finish(fig, data, "GWDataBuffer: writes per second against writers", figures)]


def draw_daq_writer(data: dict, figures: str) -> list[str]:
    plt = _pyplot()
    s = data["series"]
    groups = [
        (shape, codec, v) for shape, codecs in s["shapes"].items() for codec, v in codecs.items()
    ]
    fig, ax = plt.subplots(figsize=(max(6, 1.9 * len(groups) + 2), 4.5))
    width = 0.27
    for i, (_, _, v) in enumerate(groups):
        bars = [
            (v.get("h5_mb_s"), "floor: h5py alone", "#d9d9d9"),
            (v.get("floor_mb_s"), "floor: ZMQ receive + h5py, one process", FLOOR),
            (v.get("agent_mb_s"), "agent: highest loss-free rate", OURS),
        ]
        for j, (val, label, color) in enumerate(bars):
            if val is None:
                continue
            ax.bar(i + (j - 1) * width, val, width, color=color, label=label if i == 0 else None)
            ax.annotate(
                f"{val:.0f}", (i + (j - 1) * width, val), ha="center", va="bottom", fontsize=7
            )
        if v.get("agent_mb_s") and v.get("floor_mb_s"):
            ax.annotate(
                f"{v['agent_mb_s'] / v['floor_mb_s']:.2f} x floor",
                (i + width, v["agent_mb_s"] / 2),
                ha="center",
                rotation=90,
                fontsize=7,
                color="white",
            )
    if s.get("disk_mb_s"):
        ax.axhline(
            s["disk_mb_s"],
            color=REFERENCE,
            ls="--",
            label=f"disk: os.write + fsync {s['disk_mb_s']:.0f} MB/s",
        )
    ax.set_xticks(range(len(groups)), [f"{shape}\n{codec}" for shape, codec, _ in groups])
    ax.set(ylabel="MB/s", title="image throughput against the machine's floor")
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=7, loc="upper right")
    return [_finish(fig, data, "DAQWriter", figures)]


DRAWERS: dict[str, Callable[[dict, str], list[str]]] = {
    "pysmurf_monitor": draw_pysmurf_monitor,
    "file_orchestrator": draw_file_orchestrator,
    "visibility_fanout": draw_visibility_fanout,
    "gw_data_buffer": draw_gw_data_buffer,
    "daq_writer": draw_daq_writer,
}


def draw(data: dict, figures: str = FIGURES) -> list[str]:
    return DRAWERS[data["bench"]](data, figures)


def redraw_all(figures: str = FIGURES) -> list[str]:
    """Every plot from the saved data (no benchmark runs)."""
    written = []
    for bench in BENCHES:
        path = data_path(bench, figures)
        if os.path.exists(path):
            with open(path) as f:
                written += draw(json.load(f), figures)
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description="Redraw the benchmarks' plots from the data.")
    parser.add_argument("--figures", default=FIGURES, help="the docs' figures folder")
    parser.add_argument(
        "--from-recorded-tables",
        action="store_true",
        help="first rebuild the data from the recorded tables (one-off conversion)",
    )
    args = parser.parse_args()
    if args.from_recorded_tables:
        written = data_from_recorded_tables(args.figures)
    else:
        written = redraw_all(args.figures)
    for path in written:
        print(f"written {path}")


if __name__ == "__main__":
    main()
