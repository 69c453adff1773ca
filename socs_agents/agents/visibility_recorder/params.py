"""Number checks for OCS task parameters, shared by the recorder and the manager.

``@ocs_agent.param(..., type=float)`` alone turns a huge integer (``10**400``) into an
``OverflowError`` traceback and lets ``inf`` and ``nan`` through; a :class:`Bounded` cast
refuses them before any work, and ocs's message then names the parameter and the range:
``Param 'timeout'=inf could not be cast to a finite number within 0..30 (0 excluded).``
No OCS or Twisted here.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from typing import Any


class Bounded:
    """``cast=`` for a finite number within ``low..high`` (``low`` excluded unless
    ``low_inclusive``); integers of any size and booleans are refused cheaply."""

    def __init__(self, low: float, high: float, low_inclusive: bool = False) -> None:
        self.low = low
        self.high = high
        self.low_inclusive = low_inclusive

    def __repr__(self) -> str:
        excluded = "" if self.low_inclusive else f" ({self.low:g} excluded)"
        return f"a finite number within {self.low:g}..{self.high:g}{excluded}"

    def __call__(self, value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise TypeError(f"not a number: {value!r}")
        # compare before converting: float(10**400) raises OverflowError
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError("not finite")
        if value > self.high or value < self.low or (value == self.low and not self.low_inclusive):
            raise ValueError("out of range")
        return float(value)


def finite_arg(kind: type, low: float = 0.0) -> Callable[[str], Any]:
    """argparse ``type=``: a finite ``int`` or ``float`` of at least ``low``."""

    def parse(text: str):
        value = kind(text)
        if not math.isfinite(value) or value < low:
            raise argparse.ArgumentTypeError(f"{text!r} is not a finite number >= {low:g}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its error
    return parse
