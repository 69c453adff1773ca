"""Small rules of the agent's options, with no OCS or Twisted imports (testable anywhere)."""

from __future__ import annotations

import os

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
