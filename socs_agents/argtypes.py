"""Argument types shared by the agents' parsers (no OCS or Twisted imports)."""

from __future__ import annotations

import argparse
from typing import Any


def str2bool(text: Any) -> bool:
    """``True``/``False`` from what site-configs write: booleans, 1/0, yes/no, on/off."""
    if isinstance(text, bool):
        return text
    value = str(text).strip().lower()
    if value in ("1", "true", "yes", "y", "on"):
        return True
    if value in ("0", "false", "no", "n", "off", ""):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")
