"""Time conventions shared by the agents: MJD + milliseconds past midnight, and ctime codes.

Plain functions on unix timestamps (UTC seconds since 1970): no clock is read here.
"""

from __future__ import annotations

import datetime as _dt
import math

#: The MJD of the unix epoch (1970-01-01T00:00:00 UTC).
MJD_UNIX_EPOCH = 40587
SECONDS_PER_DAY = 86400
MS_PER_DAY = SECONDS_PER_DAY * 1000


def mjd_mpm_to_unix(mjd: int, mpm: int) -> float:
    """Unix time of an integer MJD and milliseconds past that day's UTC midnight."""
    return (int(mjd) - MJD_UNIX_EPOCH) * SECONDS_PER_DAY + int(mpm) / 1000.0


def unix_to_mjd_mpm(t: float) -> tuple[int, int]:
    """Integer MJD and milliseconds past midnight of a unix time (rounded to the ms)."""
    total_ms = int(round(t * 1000.0))
    days, mpm = divmod(total_ms, MS_PER_DAY)
    return days + MJD_UNIX_EPOCH, mpm


def ctime_code(t: float) -> str:
    """The 5-digit code SupRsync groups files by: the first 5 digits of ``int(t)``."""
    return str(int(math.floor(t)))[:5]


def utc_stamp(t: float, fmt: str = "%Y%m%d_%H%M%S") -> str:
    """``t`` formatted in UTC (``20261121_101500`` by default)."""
    return _dt.datetime.fromtimestamp(t, _dt.timezone.utc).strftime(fmt)


def utc_iso(t: float) -> str:
    """ISO 8601 UTC with milliseconds, for messages (``2026-11-21T10:15:00.000Z``)."""
    return (
        _dt.datetime.fromtimestamp(t, _dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    )
