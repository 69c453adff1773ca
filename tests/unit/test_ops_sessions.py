"""An agent keeps its memory bounded however many task calls arrive, and refuses any task
parameter cleanly.

ocs (0.12) re-arms a purge timer on the reactor for every ``OpSession`` for ever, so every
session ever started stays alive (the fuzz's 100,000 hostile task calls took a recorder from
115 to 367 MiB). :func:`socs_agents.agents._ops.release_finished_sessions` stops the timer
when a session ends. The probe runs a real ``OCSAgent``'s ``start``/``wait`` on a real
reactor in a subprocess (ocs fixes txaio's framework for the whole process).
"""

import json
import os
import subprocess
import sys

PROBE = os.path.join(os.path.dirname(__file__), "ops_sessions_probe.py")
CALLS = 1000


def probe(mode: str) -> dict:
    out = subprocess.run(
        [sys.executable, PROBE, str(CALLS), mode], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert "error" not in result, result
    return result


def test_finished_sessions_are_freed_and_still_answer():
    result = probe("release")
    # three calls in four start a session (one is refused by its parameter check)
    assert result["started"] == CALLS * 3 // 4
    # what is left: the current session of each operation and the few a wait() timer still
    # holds for its timeout, never one per call
    assert result["live_sessions"] < 50
    # a running process keeps its purger; a finished session still answers status and wait
    assert result["loop_purger_armed"] is True
    assert result["ping_status"] == [0, "done", True]
    assert result["ping_data"] == "pong"
    assert result["fails_wait"] == [0, "done", False]
    assert result["loop_after_stop"] == "done"
    # the shutdown's stop of every session waits for the process to end, not a fixed 3 s
    assert result["loop_after_stop_all"] == "done"
    assert result["stop_all_s"] < 1.5, result["stop_all_s"]


def test_without_the_release_ocs_keeps_every_session():
    """What the release is for: should ocs stop keeping them, this fails and the
    workaround in _ops.py can go."""
    result = probe("keep")
    assert result["live_sessions"] > result["started"]
    # and ocs's own stop of every session sleeps 3 s whatever runs
    assert result["stop_all_s"] >= 3.0


def test_no_task_parameter_of_any_agent_crashes_ocs_checks():
    """A huge integer, NaN, an infinity, a wrong type: each ``@ocs_agent.param`` refuses it
    with a ParamError (a clear message naming the parameter), never another exception (ocs
    answers those ``CRASH: during param pre-processing``; ``type=float`` on a 10**400 raised
    OverflowError in the DAQ writer's ``write`` and the GW buffer's ``monitor``)."""
    out = subprocess.run(
        [sys.executable, os.path.join(os.path.dirname(__file__), "ops_params_probe.py")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["checked"] > 500
    assert result["failures"] == []
