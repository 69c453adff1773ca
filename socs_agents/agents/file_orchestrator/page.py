"""The status page a person opens in a browser (``GET /`` asking for HTML): files, records,
credits, leases and the newest refusals, from the ``GET /stats`` answer. Plain function of
that answer (no I/O), so it never waits for the state."""

from __future__ import annotations

import html
import time
from collections.abc import Iterable

_STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#222;max-width:960px}
h1{font-size:20px;margin:0 0 4px} h2{font-size:16px;margin:20px 0 6px}
.muted{color:#777} table{border-collapse:collapse;margin:4px 0}
td,th{border:1px solid #ddd;padding:3px 8px;text-align:left}
th{background:#f4f4f4} td.n{text-align:right;font-variant-numeric:tabular-nums}
.ok{color:#1a7f37} .warn{color:#b35900}
"""


def _rows(pairs: Iterable[tuple[str, object]]) -> str:
    return "".join(
        f'<tr><th>{html.escape(str(k))}</th><td class="n">{html.escape(str(v))}</td></tr>'
        for k, v in pairs
    )


def _when(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ts))


def status_page(stats: dict) -> str:
    """The HTML page for one ``GET /stats`` answer."""
    counts = stats.get("counts", {})
    faults = stats.get("faults", {})
    discovery = stats.get("discovery", {})
    http = stats.get("http", {})
    records = _rows(
        (f"{kind} ({label})", counts.get(f"{key}_{suffix}", 0))
        for key, kind in (("pending", "pending"), ("active", "active, leased"))
        for suffix, label in (("tr", "trigger records"), ("ts", "time slices"))
    )
    totals = _rows(
        [
            ("files", counts.get("files", 0)),
            ("files removed", counts.get("files_removed", 0)),
            ("records done", counts.get("done", 0)),
            ("records handed out", counts.get("reads", 0)),
            ("records completed", counts.get("completed", 0)),
            ("leases expired (records pending again)", counts.get("leases_expired", 0)),
        ]
    )
    credits = _rows(
        [
            ("trigger-record credits", counts.get("credits_tr", 0)),
            ("time-slice credits", counts.get("credits_ts", 0)),
            ("trigger-record requests", counts.get("requests_tr", 0)),
            ("time-slice requests", counts.get("requests_ts", 0)),
        ]
    )
    by_reason = faults.get("by_reason", {})
    refusal_table = (
        _rows(sorted(by_reason.items(), key=lambda kv: -kv[1]))
        if by_reason
        else '<tr><td class="ok">none</td></tr>'
    )
    recent = faults.get("recent", [])
    recent_rows = (
        "".join(
            f"<tr><td>{_when(t)}</td><td>{html.escape(where)}</td>"
            f"<td>{html.escape(reason)}</td><td>{html.escape(detail)}</td></tr>"
            for t, where, reason, detail in reversed(recent)
        )
        if recent
        else '<tr><td colspan="4" class="ok">none</td></tr>'
    )
    watching = discovery.get("watching")
    volumes = ", ".join(html.escape(v) for v in stats.get("volumes", [])) or "none"
    lease = stats.get("lease_timeout", "")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="refresh" content="5">
<title>FileOrchestrator on {html.escape(str(stats.get("host", "")))}</title>
<style>{_STYLE}</style></head><body>
<h1>FileOrchestrator on {html.escape(str(stats.get("host", "")))}</h1>
<p class="muted">{_when(stats.get("timestamp", time.time()))} UTC, refreshed every 5 s;
HTTP {html.escape(str(http.get("interface", "")))}:{html.escape(str(http.get("port", "")))};
the same figures as JSON: <a href="/stats">/stats</a>.</p>
<h2>Volumes</h2>
<p>{volumes}: <span class="{"ok" if watching else "warn"}">{
        "watched" if watching else "not watched"
    }</span>, {discovery.get("queued", 0)} file(s) waiting to be read.</p>
<h2>Records</h2><table>{records}</table>
<p class="muted">A leased record returns to pending after {html.escape(str(lease))} s
without a completion.</p>
<h2>Files and totals</h2><table>{totals}</table>
<h2>Credits</h2><table>{credits}</table>
<h2>Refusals and faults ({faults.get("total", 0)})</h2><table>{refusal_table}</table>
<h2>Newest refusals</h2>
<table><tr><th>UTC</th><th>where</th><th>reason</th><th>detail</th></tr>{recent_rows}</table>
</body></html>
"""
