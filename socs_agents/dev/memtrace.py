"""Developer hook: run a Python module under tracemalloc, dump a snapshot on ``SIGUSR2``.

    python -m socs_agents.dev.memtrace OUT_DIR [-u] -m MODULE [ARGS...]

runs ``MODULE`` as ``python -m MODULE ARGS`` would, with tracemalloc tracing
(``$MEMTRACE_FRAMES`` frames per allocation, 10 by default); each ``SIGUSR2`` writes
``OUT_DIR/snapshot-<n>.tracemalloc`` (load it with ``tracemalloc.Snapshot.load``).
:func:`wrapper_script` writes an executable that stands in for ``python`` where a harness
only lets one choose the interpreter (``LocalSite.start_agent(python=...)``).

For finding what grows in a live agent (compare two snapshots with
``snapshot.compare_to(other, "traceback")``); never used by the agents themselves.
"""

from __future__ import annotations

import itertools
import os
import runpy
import signal
import stat
import sys
import tracemalloc


def wrapper_script(path: str, out_dir: str, python: str | None = None) -> str:
    """Write an executable at ``path`` that runs ``python`` (default: this interpreter)
    under this hook, dumping into ``out_dir``; return ``path``."""
    with open(path, "w") as f:
        f.write(
            f'#!/bin/sh\nexec "{python or sys.executable}" -m socs_agents.dev.memtrace '
            f'"{out_dir}" "$@"\n'
        )
    os.chmod(path, os.stat(path).st_mode | stat.S_IXUSR)
    return path


def main(argv: list[str]) -> None:
    out_dir, rest = argv[0], list(argv[1:])
    while rest and rest[0] == "-u":  # unbuffered: already so under $PYTHONUNBUFFERED
        rest.pop(0)
    if len(rest) < 2 or rest[0] != "-m":
        raise SystemExit(__doc__)
    module, args = rest[1], rest[2:]
    os.makedirs(out_dir, exist_ok=True)
    numbers = itertools.count()

    def dump(signum, frame) -> None:
        path = os.path.join(out_dir, f"snapshot-{next(numbers)}.tracemalloc")
        tracemalloc.take_snapshot().dump(path + ".part")
        os.replace(path + ".part", path)

    tracemalloc.start(int(os.environ.get("MEMTRACE_FRAMES", "10")))
    signal.signal(signal.SIGUSR2, dump)
    sys.argv = [module, *args]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main(sys.argv[1:])
