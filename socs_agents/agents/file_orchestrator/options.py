"""Small rules of the agent's options, with no OCS or Twisted imports (testable anywhere)."""

from __future__ import annotations

import os

from .state import MAX_ID

DEBUG_ENV = "ORCHESTRATOR_FLASK_DEBUG"


def env_debug(environ=os.environ) -> bool:
    """``ORCHESTRATOR_FLASK_DEBUG`` > 0, the reference's debug switch."""
    try:
        return int(environ.get(DEBUG_ENV, "0") or 0) > 0
    except ValueError:
        return False


def remote_path_for(path: str, volumes: list[str]) -> str:
    """The SupRsync remote path of a local file: relative to the volume holding it, else its
    base name."""
    for volume in volumes:
        volume = os.path.abspath(volume)
        if path.startswith(volume.rstrip("/") + "/"):
            return os.path.relpath(path, volume)
    return os.path.basename(path)


def uint_param(value) -> bool:
    """``check=`` of integer task parameters: 0 to 2**63 - 1 (what SQLite holds), so a huge
    number is a clear parameter error, never an ``OverflowError`` deep in the state."""
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_ID
