"""Hub start time, agent start-to-callable time, and OCSClient call latency on loopback.

.venv/bin/python benchmarks/hub.py [--calls 300] [--write-docs]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(__file__))
from _report import emit, median, percentile, rst_table  # noqa: E402

from socs_agents.dev.testing import LocalSite  # noqa: E402

DOCS = os.path.join(os.path.dirname(__file__), "..", "docs", "figures", "hub.rst")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--hub-starts", type=int, default=3)
    parser.add_argument("--write-docs", action="store_true")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        hub_starts = []
        for i in range(args.hub_starts):
            site = LocalSite(os.path.join(tmp, f"s{i}"))
            hub_starts.append(site.start_hub())
            t0 = time.monotonic()
            site.stop_hub()
            print(f"hub start {hub_starts[-1]:.2f} s, stop {time.monotonic() - t0:.2f} s")

        site = LocalSite(os.path.join(tmp, "bench"))
        site.add_instance("HostManager", "hm-bench", [["--quiet"]])
        with site:
            agent = site.start_agent("hm-bench")
            client = site.client("hm-bench")
            status_ms, task_ms = [], []
            for _ in range(args.calls):
                t0 = time.perf_counter()
                client.manager.status()
                status_ms.append((time.perf_counter() - t0) * 1e3)
            for _ in range(args.calls):
                t0 = time.perf_counter()
                client.update(requests=[], reload_config=False)
                task_ms.append((time.perf_counter() - t0) * 1e3)

    rows = [
        [
            "hub cold start to /info answering",
            f"{median(hub_starts):.2f} s (median of "
            f"{len(hub_starts)}; max {max(hub_starts):.2f} s)",
        ],
        ["agent process start to callable (HostManager)", f"{agent.callable_after:.2f} s"],
        [
            "OCSClient status() (one HTTP call), median / p99",
            f"{median(status_ms):.2f} / {percentile(status_ms, 99):.2f} ms",
        ],
        [
            "OCSClient task() (start + wait), median / p99",
            f"{median(task_ms):.2f} / {percentile(task_ms, 99):.2f} ms",
        ],
    ]
    emit(
        rst_table(["what", "figure"], rows, f"{args.calls} calls each."),
        DOCS if args.write_docs else None,
    )


if __name__ == "__main__":
    main()
