"""Refusals and faults, counted per reason and per place (an endpoint, ``discovery``,
``suprsync``), each with one rate-limited log line. Plain Python, any thread."""

from __future__ import annotations

import collections
import re
import threading
import time
from collections import Counter

from ...runtime import RateLimit, Report, no_report

_NOT_FIELD = re.compile(r"[^a-zA-Z0-9_]+")


def field_name(text: str) -> str:
    """A feed field name (letters, digits, underscores) from an endpoint or a reason."""
    return _NOT_FIELD.sub("_", text).strip("_") or "root"


#: Every reason counted, so the feed's block keeps one set of fields (ocs refuses a block
#: whose fields change); anything else is counted as ``other``.
REASONS = (
    # HTTP requests
    "bad_request",
    "client_not_allowed",
    "outside_allowed_root",
    "bad_path",
    "no_endpoint",
    "wrong_method",
    "body_too_large",
    "wrong_content_type",
    "state_locked",
    "state_queue_full",
    "internal_error",
    # files on the volumes
    "not_a_file",
    "not_hdf5",
    "unreadable",
    "truncated",
    "not_record_file",
    # SupRsync registration
    "queue_full",
    "database_locked",
    "missing_file",
    "unreadable_file",
    "failed",
    "other",
)


#: refusals the status page lists
RECENT = 20


class Faults:
    """Counts ``reason`` at ``where`` (an endpoint, ``discovery``, ``suprsync``); logs one
    line per (where, reason) every ``log_interval`` seconds at most, saying how many were
    held back.

    Args:
        places: the places the feed has a total field for (others count as ``other``).
    """

    def __init__(
        self, places: tuple[str, ...] = (), report: Report = no_report, log_interval: float = 10.0
    ) -> None:
        self.places = tuple(places)
        self._lock = threading.Lock()
        self._counts: Counter = Counter()
        self._log = RateLimit(report, log_interval)
        #: the newest refusals, for the status page: (unix time, where, reason, detail)
        self.recent: collections.deque = collections.deque(maxlen=RECENT)

    def hit(self, where: str, reason: str, detail: str = "", level: str = "warn") -> None:
        if where not in self.places:
            where = "other"
        if reason not in REASONS:
            reason = "other"
        with self._lock:
            self._counts[(where, reason)] += 1
            self.recent.append((time.time(), where, reason, detail[:200]))
        text = f"{where}: {reason}" + (f": {detail}" if detail else "")
        self._log(f"{where}:{reason}", level, text)

    def count(self, reason: str, where: str | None = None) -> int:
        with self._lock:
            return sum(
                n for (w, r), n in self._counts.items() if r == reason and where in (None, w)
            )

    def as_data(self) -> dict:
        """For ``session.data`` and ``GET /stats``: ``{'total': 3, 'by_reason': {reason: n},
        'by_place': {where: {reason: n}}, 'recent': [[unix time, where, reason, detail],
        ...]}`` (what happened only; ``recent`` holds the newest 20)."""
        with self._lock:
            items = sorted(self._counts.items())
        by_reason: Counter = Counter()
        by_place: dict[str, dict[str, int]] = {}
        for (where, reason), n in items:
            by_reason[reason] += n
            by_place.setdefault(where, {})[reason] = n
        return {
            "total": sum(by_reason.values()),
            "by_reason": dict(by_reason),
            "by_place": by_place,
            "recent": [list(r) for r in self.recent],
        }

    def feed_fields(self) -> dict[str, int]:
        """Fixed fields for the recorded feed: ``total``, one per reason, and
        ``at_<place>`` (the total of each place)."""
        with self._lock:
            items = list(self._counts.items())
        fields = {"total": 0, **{r: 0 for r in REASONS}}
        fields.update({f"at_{field_name(p)}": 0 for p in (*self.places, "other")})
        for (where, reason), n in items:
            fields["total"] += n
            fields[reason] += n
            fields[f"at_{field_name(where)}"] += n
        return fields
