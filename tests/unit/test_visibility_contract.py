"""The manager and the recorder share a WAMP contract module, not the recorder's agent.

The agent modules import ocs (and so autobahn's Twisted flavour, which txaio then holds
for the whole process): what needs them runs in a subprocess, so that the test harness's
asyncio clients keep working in the same pytest run.
"""

import json
import subprocess
import sys


def run_python(code: str):
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_importing_the_manager_does_not_import_h5py_or_the_recorder_agent():
    heavy = run_python(
        "import json, sys\n"
        "import socs_agents.agents.visibility_manager.agent\n"
        "print(json.dumps([m for m in ('h5py', 'numpy',"
        " 'socs_agents.agents.visibility_recorder.agent',"
        " 'socs_agents.agents.visibility_recorder.writer') if m in sys.modules]))\n"
    )
    assert heavy == []


def test_both_sides_use_the_contract():
    checks = run_python(
        "import json\n"
        "from socs_agents.agents.visibility_manager import agent as m\n"
        "from socs_agents.agents.visibility_recorder import agent as r, contract as c\n"
        "print(json.dumps([m.DIRECT_PROCEDURE is c.DIRECT_PROCEDURE,\n"
        "    m.STATUS_FEED is r.STATUS_FEED is c.STATUS_FEED,\n"
        "    m.CONTROL_PRIVS == r.CONTROL_PRIVS == 2,\n"
        "    set(c.STATUS_FIELDS) <= set(r.FEED_FIELDS)]))\n"
    )
    assert checks == [True, True, True, True]


HOSTILE = "[1e308, -1e308, float('inf'), float('-inf'), float('nan'), 10**400, -(10**400), '2']"


def test_ocs_param_checks_refuse_huge_numbers_naming_the_parameter():
    """``sync(timeout=...)`` and ``monitor(interval=...)`` of both agents, through ocs's
    own ParamHandler as a task call would: every hostile number is a ParamError naming the
    parameter (never an OverflowError), and a normal value passes."""
    results = run_python(
        "import json\n"
        "from ocs import ocs_agent\n"
        "from socs_agents.agents.visibility_manager.agent import VisibilityManager\n"
        "from socs_agents.agents.visibility_recorder.agent import VisibilityRecorder\n"
        "out = []\n"
        "for op, key in ((VisibilityRecorder.sync, 'timeout'),"
        " (VisibilityRecorder.monitor, 'interval'),"
        " (VisibilityManager.sync, 'timeout'), (VisibilityManager.monitor, 'interval')):\n"
        f"    for value in {HOSTILE} + [2.0]:\n"
        "        params = {key: value, 'server': '127.0.0.1'} if 'sync' in op.__name__ "
        "else {key: value}\n"
        "        try:\n"
        "            got = ocs_agent.ParamHandler(params).batch(op._ocs_prescreen)[key]\n"
        "            out.append([key, repr(value), 'ok', got])\n"
        "        except ocs_agent.ParamError as e:\n"
        "            out.append([key, repr(value), 'refused', e.msg])\n"
        "print(json.dumps(out))\n"
    )
    assert len(results) == 4 * 9
    for key, value, outcome, detail in results:
        if value == "2.0":
            assert (outcome, detail) == ("ok", 2.0)
        else:
            assert outcome == "refused" and detail.startswith(f"Param '{key}'"), (key, value)
            assert "finite number within" in detail or "required type" in detail


def test_the_contract_and_the_summary_rules_do_not_import_ocs():
    """Unit tests import them in the pytest process: importing ocs there would pick
    txaio's Twisted flavour for the whole run and break the harness's asyncio clients."""
    heavy = run_python(
        "import json, sys\n"
        "import socs_agents.agents.visibility_recorder.contract\n"
        "import socs_agents.agents.visibility_manager.aggregate\n"
        "print(json.dumps([m for m in ('ocs', 'autobahn', 'txaio') if m in sys.modules]))\n"
    )
    assert heavy == []
