"""The tracemalloc hook runs a module as ``python -m`` would and dumps a snapshot on
SIGUSR2 (what ``benchmarks/fuzz.py --memtrace`` relies on to find what grows)."""

import os
import subprocess
import sys
import tracemalloc

from socs_agents.dev import memtrace

MODULE = """
import os, signal, sys, time
kept = [bytearray(1000) for _ in range(500)]  # about 500 KB that the snapshot must show
os.kill(os.getpid(), signal.SIGUSR2)
deadline = time.monotonic() + 20
while not os.path.exists(os.path.join(sys.argv[1], "snapshot-0.tracemalloc")):
    assert time.monotonic() < deadline
    time.sleep(0.01)
print("args", sys.argv[1:])
"""


def test_wrapper_runs_the_module_and_dumps_a_snapshot(tmp_path):
    (tmp_path / "grower.py").write_text(MODULE)
    out_dir = tmp_path / "snapshots"
    python = memtrace.wrapper_script(str(tmp_path / "python"), str(out_dir))
    env = dict(os.environ, PYTHONPATH=str(tmp_path) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    done = subprocess.run(
        [python, "-u", "-m", "grower", str(out_dir), "more"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    assert f"args ['{out_dir}', 'more']" in done.stdout
    snapshot = tracemalloc.Snapshot.load(str(out_dir / "snapshot-0.tracemalloc"))
    grower = [
        s for s in snapshot.statistics("filename") if s.traceback[0].filename.endswith("grower.py")
    ]
    assert grower and grower[0].size > 400_000


def test_a_command_without_a_module_is_refused():
    done = subprocess.run(
        [sys.executable, "-m", "socs_agents.dev.memtrace", "/nonexistent", "-c", "1"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    assert "python -m socs_agents.dev.memtrace" in done.stderr
