"""The agent shell every agent is built on: the operations each agent offers, their
credential levels and the stopper of a blocking loop.

The shell imports ocs (and so autobahn's Twisted flavour, which txaio then holds for the
whole process): it runs in a subprocess, so that the harness's asyncio clients keep working
in the same pytest run.
"""

import json
import subprocess
import sys


def run_python(code: str):
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_operations_register_as_ocs_takes_them_and_the_stopper_sets_its_event():
    result = run_python(
        """
import json, threading
from ocs import ocs_agent
from socs_agents.agents.shell import process, stopper_for, task

class Agent:
    def __init__(self):
        self.calls = []
    def register_task(self, name, func, **kw):
        self.calls.append(["task", name, kw["blocking"], kw["min_privs"], kw["aborter"] is None])
    def register_process(self, name, start, stop, **kw):
        self.calls.append(["process", name, kw["blocking"], kw["min_privs"], kw["startup"]])

class Session:
    status = "running"
    def set_status(self, status):
        self.status = status

agent = Agent()
stop = threading.Event()
ops = [
    task("read", print),
    task("write", print, aborter=print, blocking=False, min_privs=2),
    process("watch", print, stopper_for(stop, "bye"), startup=True, min_privs=2),
]
for op in ops:
    op.register(agent)
session = Session()
answer = ops[2].stop(session, None)
print(json.dumps({"calls": agent.calls, "answer": list(answer), "status": session.status,
                  "stopped": stop.is_set()}))
"""
    )
    assert result["calls"] == [
        ["task", "read", True, 1, True],
        ["task", "write", False, 2, False],
        ["process", "watch", True, 2, True],
    ]
    assert result["answer"] == [True, "bye"]
    assert result["status"] == "stopping" and result["stopped"]


AGENTS = {
    "pysmurf_monitor": "PysmurfMonitor",
    "file_orchestrator": "FileOrchestrator",
    "visibility_recorder": "VisibilityRecorder",
    "visibility_manager": "VisibilityManager",
    "gw_data_buffer": "GWDataBuffer",
    "daq_writer": "DAQWriter",
}


def test_every_agent_is_a_shell_named_as_its_site_config_class():
    result = run_python(
        f"""
import importlib, json
from socs_agents.agents.shell import AgentShell
out = {{}}
for module, name in {AGENTS!r}.items():
    cls = getattr(importlib.import_module(f"socs_agents.agents.{{module}}.agent"), name)
    out[module] = [issubclass(cls, AgentShell), cls.agent_class,
                   cls.operations is not AgentShell.operations]
print(json.dumps(out))
"""
    )
    assert result == {module: [True, name, True] for module, name in AGENTS.items()}


def test_state_changing_operations_need_level_2():
    """Every operation that changes state is registered with credential level 2; the
    read-only ones (status, stats, ping) stay level 1 (checked on the live agents' own
    operation tables, built on a stand-in OCS agent)."""
    result = run_python(
        """
import argparse, json, threading
from socs_agents.agents.file_orchestrator.agent import FileOrchestrator
from socs_agents.agents.daq_writer.agent import DAQWriter
from socs_agents.agents.gw_data_buffer.agent import GWDataBuffer
from socs_agents.agents.visibility_manager.agent import VisibilityManager
out = {}
for cls in (FileOrchestrator, DAQWriter, GWDataBuffer, VisibilityManager):
    shell = cls.__new__(cls)
    # operations() reads only bound methods, flags and the stop events of the instance
    shell.args = argparse.Namespace(test_mode=False)
    shell.volumes = []
    for attr in ("_watch_stop", "_monitor_stop"):
        setattr(shell, attr, threading.Event())
    out[cls.agent_class] = {op.name: op.min_privs for op in shell.operations()}
print(json.dumps(out))
"""
    )
    assert result["FileOrchestrator"] == {
        "new_file": 2,
        "remove_file": 2,
        "request_record": 2,
        "read_next": 2,
        "complete": 2,
        "reset": 2,
        "stats": 1,
        "watch": 1,
    }
    assert result["DAQWriter"] == {"write": 2, "status": 1}
    assert result["GWDataBuffer"] == {"freeze": 2, "clean": 2, "stats": 1, "monitor": 1}
    assert result["VisibilityManager"] == {
        "ping": 1,
        "sync": 2,
        "start": 2,
        "stop": 2,
        "monitor": 2,
    }
