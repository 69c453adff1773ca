"""Every ``@ocs_agent.param`` of every agent in the plugin table, given hostile values one
parameter at a time through ocs's own ``ParamHandler``; print, as JSON, how many were
checked and each one that raised anything but ``ParamError`` (ocs answers those with
``CRASH: during param pre-processing``).

Run by tests/unit/test_ops_sessions.py in a subprocess (ocs fixes txaio's framework for the
whole process).
"""

from __future__ import annotations

import importlib
import inspect
import json

from ocs import ocs_agent

from socs_agents import plugin

HOSTILE = [
    10**400,
    -(10**400),
    2**63,
    -(2**63) - 1,
    float("nan"),
    float("inf"),
    float("-inf"),
    1e308,
    -1e308,
    1e-320,
    -1,
    0,
    True,
    "x",
    "",
    "nan",
    "inf",
    "a\x00b",
    [],
    [1e308],
    {},
    {"a": float("nan")},
]


def main() -> None:
    checked, failures = 0, []
    for spec in plugin.agents.values():
        module = importlib.import_module(spec["module"])
        for class_name, cls in inspect.getmembers(module, inspect.isclass):
            if cls.__module__ != module.__name__:
                continue
            for op_name, op in inspect.getmembers(cls, inspect.isfunction):
                for key, kwargs in getattr(op, "_ocs_prescreen", []):
                    if key.startswith("_"):  # ocs's own switches (_no_check_strays)
                        continue
                    for value in HOSTILE:
                        checked += 1
                        try:
                            ocs_agent.ParamHandler({key: value}).get(key, **kwargs)
                        except ocs_agent.ParamError:
                            pass
                        except Exception as e:
                            shown = repr(value)[:30]
                            failures.append(
                                f"{class_name}.{op_name}({key}={shown}): {type(e).__name__}: {e}"
                            )
    print(json.dumps({"checked": checked, "failures": failures}))


if __name__ == "__main__":
    main()
