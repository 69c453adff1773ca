"""The manager and the recorder share a WAMP contract module, not the recorder's agent."""

import subprocess
import sys

from socs_agents.agents.visibility_manager import agent as manager_agent
from socs_agents.agents.visibility_recorder import agent as recorder_agent
from socs_agents.agents.visibility_recorder import contract


def test_importing_the_manager_does_not_import_h5py_or_the_recorder_agent():
    code = (
        "import sys\n"
        "import socs_agents.agents.visibility_manager.agent\n"
        "heavy = [m for m in ('h5py', 'numpy', 'socs_agents.agents.visibility_recorder.agent',"
        " 'socs_agents.agents.visibility_recorder.writer') if m in sys.modules]\n"
        "print(heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_both_sides_use_the_contract():
    assert manager_agent.DIRECT_PROCEDURE is contract.DIRECT_PROCEDURE
    assert manager_agent.STATUS_FEED is recorder_agent.STATUS_FEED is contract.STATUS_FEED
    assert manager_agent.CONTROL_PRIVS == recorder_agent.CONTROL_PRIVS == 2
    # every field the manager reads is one the recorder publishes
    assert set(contract.STATUS_FIELDS) <= set(recorder_agent.FEED_FIELDS)
