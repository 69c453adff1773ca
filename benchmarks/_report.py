"""Small helpers shared by the benchmark scripts: percentiles and an RST table."""

from __future__ import annotations

import datetime
import os
import platform
import statistics
from collections.abc import Callable, Sequence


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[k]


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def rst_table(header: Sequence[str], rows: Sequence[Sequence[str]], title: str = "") -> str:
    cols = list(zip(header, *rows, strict=False))
    widths = [max(len(str(c)) for c in col) for col in cols]
    rule = "  ".join("=" * w for w in widths)
    fmt = lambda r: "  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=False)).rstrip()  # noqa: E731
    machine = f"{os.cpu_count()} cores, Python {platform.python_version()}"
    lines = [
        f"Measured {datetime.date.today().isoformat()} ({machine}). {title}".rstrip(),
        "",
        rule,
        fmt(header),
        rule,
        *[fmt(r) for r in rows],
        rule,
        "",
    ]
    return "\n".join(lines)


def emit(text: str, docs_file: str | None) -> None:
    print(text)
    if docs_file:
        with open(docs_file, "w") as f:
            f.write(text)
        print(f"(written to {docs_file})")


def run_scenario(scenario: Callable[[], dict], name: str, site) -> dict:
    """Run one scenario; a failure becomes its row (and kills the site's agents), so one
    failed scenario never hides the others."""
    try:
        return scenario()
    except Exception as e:
        for agent in list(site.agents):
            agent.kill()
            site.agents.remove(agent)
        return {name: f"failed: {type(e).__name__}: {e}"[:200]}


def read_rst_table(path: str) -> tuple[str, list[list[str]]]:
    """The first line and the rows (header first) of a table written by :func:`rst_table`."""
    with open(path) as f:
        lines = f.read().splitlines()
    rules = [i for i, line in enumerate(lines) if line.startswith("=") and set(line) <= {"=", " "}]
    spans, pos = [], 0
    for segment in lines[rules[0]].split("  "):
        spans.append((pos, pos + len(segment)))
        pos += len(segment) + 2

    def cut(line: str) -> list[str]:
        return [
            line[a : b if i < len(spans) - 1 else None].strip() for i, (a, b) in enumerate(spans)
        ]

    rows = [cut(lines[rules[0] + 1])] + [cut(line) for line in lines[rules[1] + 1 : rules[2]]]
    return lines[0], rows
