"""The status page (``GET /dspage`` and ``/``): one HTML page a person reads at a glance.
Plain function of the data; never shows a token; works on an empty store."""

from __future__ import annotations

import html
import time

from . import rules


def _fmt_bytes(n: int) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n} B"  # pragma: no cover


def _when(ts: float | None) -> str:
    if not ts:
        return ""
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ts))


def sparkline(values: list[float], width: int = 480, height: int = 90) -> str:
    """An inline SVG polyline of ``values`` (empty text when there are none)."""
    if len(values) < 2:
        return '<p class="muted">no strain stored yet</p>'
    lo, hi = min(values), max(values)
    span = (hi - lo) or 1.0
    step = width / (len(values) - 1)
    points = " ".join(
        f"{i * step:.1f},{height - (v - lo) / span * (height - 4) - 2:.1f}"
        for i, v in enumerate(values)
    )
    return (
        f'<svg width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
        f'role="img" aria-label="latest strain chunk"><polyline fill="none" '
        f'stroke="#2a6fdb" stroke-width="1" points="{points}"/></svg>'
        f'<p class="muted">range {lo:.3e} .. {hi:.3e}</p>'
    )


def render(data: dict, max_size: int, now: float) -> bytes:
    """The page for ``data`` (:meth:`BufferService.page_data`)."""
    c = data["counts"]
    state = data["state"]
    frozen = state["dstatus"] == rules.FROZEN
    frac = rules.fill_fraction(c.buff_size, max_size)
    pct = min(100.0, frac * 100)
    esc = html.escape
    rows = "".join(f"<li><code>{esc(n)}</code></li>" for n in reversed(data["names"]))
    more = c.n_itm - len(data["names"])
    archives = "".join(
        f"<tr><td><code>{esc(a['name'])}</code></td><td>{a['files']}</td>"
        f"<td>{_fmt_bytes(a['bytes'])}</td><td>{esc(_when(a['cleaned_at']))}</td>"
        f"<td>{'yes' if a['registered'] else 'no'}</td></tr>"
        for a in data["archives"]
    )
    frozen_line = (
        f"<p>frozen by <b>{esc(str(state['user']))}</b> at {esc(_when(state['frozen_since']))}</p>"
        if frozen
        else ""
    )
    body = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>GW data buffer</title>
<meta http-equiv="refresh" content="10">
<style>
body {{ font-family: sans-serif; margin: 2em; max-width: 60em; }}
.state {{ display: inline-block; padding: .2em .6em; border-radius: .3em; color: white;
         background: {"#c0392b" if frozen else "#27ae60"}; }}
.bar {{ width: 30em; height: 1.2em; border: 1px solid #888; background: #eee; }}
.fill {{ height: 100%; width: {pct:.1f}%; background: {"#c0392b" if frac >= 1 else "#2a6fdb"}; }}
.muted {{ color: #777; font-size: 90%; }}
table {{ border-collapse: collapse; }} td, th {{ padding: .2em .8em; text-align: left; }}
</style></head><body>
<h1>GW data buffer</h1>
<p>state: <span class="state">{state["dstatus"]}</span></p>
{frozen_line}
<p>{c.n_itm} files, {c.buff_size} bytes ({_fmt_bytes(c.buff_size)}) of MAX_SIZE {max_size}
 ({frac * 100:.1f} %)</p>
<div class="bar"><div class="fill"></div></div>
<h2>Latest chunk</h2>
<p class="muted">{esc(data["preview_name"] or "")}</p>
{sparkline(data["preview"])}
<h2>Files (newest first)</h2>
<ul>{rows or "<li class='muted'>none</li>"}</ul>
{f"<p class='muted'>and {more} older</p>" if more > 0 else ""}
<h2>Archives</h2>
<table><tr><th>batch</th><th>files</th><th>bytes</th><th>cleaned</th><th>in SupRsync</th></tr>
{archives or "<tr><td class='muted' colspan='5'>none</td></tr>"}</table>
<p class="muted">{esc(_when(now))}</p>
</body></html>
"""
    return body.encode("utf-8")
