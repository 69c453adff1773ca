"""The manager's rules: shaping fan-out answers, and aggregating the pipelines' monitoring.

No OCS or Twisted here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ..visibility_recorder.contract import (
    REPLY_DATA,
    REPLY_MESSAGE,
    REPLY_SUCCESS,
    STATUS_FIELDS,
)

SUCCESS, FAILED, TIMED_OUT = "success", "error", "timeout"
BAD_SUMMARIES = ("booting", "shutdown", "error")
#: Longest text kept of a pipeline's status field (the rest is cut).
MAX_TEXT = 2000


def _text(value: Any) -> str:
    text = value if isinstance(value, str) else str(value)
    return text if len(text) <= MAX_TEXT else text[:MAX_TEXT] + "..."


def classify_direct(reply: Any) -> dict:
    """The result of one pipeline from its direct procedure's answer
    (``{'success': bool, 'message': str, 'data': dict}``); anything else is an error."""
    if not isinstance(reply, Mapping):
        return {"status": FAILED, "response": f"unreadable answer: {_text(repr(reply))}"}
    if reply.get(REPLY_SUCCESS) is True:
        data = reply.get(REPLY_DATA)
        if not isinstance(data, Mapping):
            return {"status": SUCCESS, "response": data}
        return {"status": SUCCESS, "response": data.get("response", dict(data))}
    return {"status": FAILED, "response": _text(reply.get(REPLY_MESSAGE, ""))}


def read_status(data: Any, root: str, block_name: str) -> tuple[dict, str]:
    """The pipeline id and latest fields of one status feed message, as the manager's
    subscription receives it (``(message, feed)``).

    Only :data:`~socs_agents.agents.visibility_recorder.contract.STATUS_FIELDS` are kept,
    as text.

    Raises:
        ValueError: the message does not have the feed's shape (the text says what).
    """
    try:
        message, feed = data[0], data[1]
        address = feed["agent_address"]
        block = message[block_name]["data"]
    except (KeyError, IndexError, TypeError) as e:
        raise ValueError(f"not a status feed message ({type(e).__name__}: {e})") from None
    if not isinstance(address, str) or not address.startswith(root + "."):
        raise ValueError(f"agent address {_text(repr(address))} is not under {root!r}")
    if not isinstance(block, Mapping):
        raise ValueError("the block's data is not a mapping")
    pid = address[len(root) + 1 :]
    if not pid or len(pid) > 200:
        raise ValueError("no usable pipeline id in the agent address")
    fields = {}
    for key in STATUS_FIELDS:
        values = block.get(key)
        if isinstance(values, list | tuple) and values:
            fields[key] = _text(values[-1])
    return fields, pid


def classify_exception(error: str, text: str, timeout: float) -> dict:
    """The result of one pipeline whose call raised.

    Args:
        error: the WAMP error URI (``wamp.error.no_such_procedure``...) or the exception
            class name (``TimeoutError``, ``CancelledError``).
        text: its message.
    """
    if error == "wamp.error.no_such_procedure":
        return {
            "status": TIMED_OUT,
            "response": "no answer: not registered on the hub (agent not running)",
        }
    if error in ("TimeoutError", "CancelledError"):
        return {"status": TIMED_OUT, "response": f"no answer within {timeout:g} s"}
    return {"status": FAILED, "response": f"{error}: {text}" if text else error}


def overall(command: str, results: Mapping[str, dict]) -> tuple[bool, str]:
    """The manager task's outcome: success only when every pipeline succeeded."""
    if not results:
        return False, f"{command}: no pipelines to send it to"
    failed = {pid: r["status"] for pid, r in results.items() if r["status"] != SUCCESS}
    if not failed:
        return True, f"{command}: all {len(results)} pipelines succeeded"
    names = ", ".join(f"{pid} ({status})" for pid, status in sorted(failed.items()))
    return False, f"{command}: {len(failed)} of {len(results)} pipelines failed: {names}"


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def aggregate_monitoring(
    pipelines: Sequence[str],
    reports: Mapping[str, Mapping[str, Any]],
    now: float,
    stale_after: float,
    previous: Mapping[str, Any] | None = None,
    cleared_hold: float = 60.0,
    started: float | None = None,
) -> dict:
    """The manager's monitoring points, by the reference's precedence rules.

    Args:
        pipelines: the pipelines the manager is responsible for.
        reports: pipeline id -> its latest monitoring points, with ``received`` (when the
            manager got them, same clock as ``now``).
        stale_after: seconds without an update after which a pipeline counts as timed out.
        previous: the previous result, for the note when a condition clears.
        cleared_hold: seconds the ``normal`` info keeps naming the condition that cleared.
        started: when the manager started: a pipeline it has not heard from yet counts as
            ``booting`` until ``stale_after`` seconds after that, then as timed out.

    Rules: ``error`` if any pipeline has not updated within ``stale_after`` (or never);
    else ``error`` if any is booting, shutdown or error; else ``warning`` if any warns;
    else ``normal``, with a note naming the condition that cleared (kept for
    ``cleared_hold`` seconds).
    """
    per: dict[str, dict] = {}
    stale: list[str] = []
    for pid in pipelines:
        r = reports.get(pid)
        age = None if r is None else max(0.0, now - r["received"])
        waiting = r is None and started is not None and now - started <= stale_after
        if (r is None and not waiting) or (age is not None and age > stale_after):
            stale.append(pid)
        per[pid] = {
            "summary": r.get("summary", "") if r else ("booting" if waiting else ""),
            "info": r.get("info", "") if r else ("no report yet" if waiting else "never reported"),
            "op_type": r.get("op_type", "") if r else "",
            "op_tag": r.get("op_tag", "") if r else "",
            "age_s": None if age is None else round(age, 3),
            "stale": pid in stale,
        }
    fresh = [pid for pid in pipelines if pid not in stale]
    bad = [pid for pid in fresh if per[pid]["summary"] in BAD_SUMMARIES]
    warn = [pid for pid in fresh if per[pid]["summary"] == "warning"]
    if not pipelines:
        summary, info = "error", "no pipelines known"
    elif stale:
        summary = "error"
        info = (
            f"{_plural(len(stale), 'pipeline')} ha{'s' if len(stale) == 1 else 've'} "
            f"not updated in {stale_after:g} s: {', '.join(stale)}"
        )
    elif bad:
        summary = "error"
        info = "; ".join(f"{pid}={per[pid]['summary']}: {per[pid]['info']}" for pid in bad)
    elif warn:
        summary = "warning"
        info = "; ".join(f"{pid}={per[pid]['info']}" for pid in warn)
    else:
        summary = "normal"
        info = f"all {_plural(len(pipelines), 'pipeline')} normal"
    cleared, cleared_at = "", None
    if summary == "normal" and previous:
        if previous.get("summary") not in (None, "normal"):
            cleared, cleared_at = f"{previous['summary']}: {previous.get('info', '')}", now
        elif previous.get("cleared") and now - previous["cleared_at"] < cleared_hold:
            cleared, cleared_at = previous["cleared"], previous["cleared_at"]
    if cleared:
        info += f" (cleared: {cleared})"
    kinds = {"recording": 0, "waiting": 0, "idle": 0}
    for pid in fresh:
        kind = per[pid]["op_type"]
        kinds[kind if kind in kinds else "idle"] += 1
    if not stale and kinds["recording"] == len(pipelines):
        op_type = "recording"
    elif not stale and kinds["idle"] == len(pipelines):
        op_type = "idle"
    else:
        parts = [f"{n} {k}" for k, n in kinds.items() if n or k != "waiting"]
        op_type = "; ".join(parts + [f"{len(stale)} timed out"])
    op_tag = "; ".join(per[pid]["op_tag"] for pid in pipelines if per[pid]["op_tag"])
    return {
        "timestamp": now,
        "summary": summary,
        "info": info,
        "op_type": op_type,
        "op_tag": op_tag,
        "n_pipelines": len(pipelines),
        "n_stale": len(stale),
        "cleared": cleared,
        "cleared_at": cleared_at,
        "pipelines": per,
    }
