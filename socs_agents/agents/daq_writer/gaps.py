"""What the stream did during one request: gaps in image ids, statuses other than good,
ids that do not move forward (duplicates, stale images).

:meth:`GapTracker.check` decides for each arriving image whether it is written, skipped or
ends the request (``--on-gap fail``); :meth:`GapTracker.summary` is what the outcome reports.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .metadata import STATUS_GOOD, STATUS_NAMES

ON_GAP_CHOICES = ("fail", "record")
WRITE, SKIP, FAIL = "write", "skip", "fail"
#: How many gaps and bad images an outcome lists one by one (the counts are always total).
LISTED = 20


@dataclass
class GapTracker:
    on_gap: str = "record"
    last_id: int | None = None
    n_gaps: int = 0
    n_missing: int = 0
    n_bad_status: int = 0
    n_not_forward: int = 0
    gaps: list[tuple[int, int]] = field(default_factory=list)  # (last id written, next id)
    bad_status: list[tuple[int, int]] = field(default_factory=list)  # (id, status)
    problem: str = ""

    def __post_init__(self) -> None:
        if self.on_gap not in ON_GAP_CHOICES:
            raise ValueError(f"on_gap must be one of {ON_GAP_CHOICES}, got {self.on_gap!r}")

    def check(self, image_id: int, status: int) -> str:
        """``WRITE`` the image, ``SKIP`` it (an id that does not move forward: a duplicate
        or stale image is never written), or ``FAIL`` the request (``on_gap='fail'``;
        :attr:`problem` says why). Updates the counts."""
        last = self.last_id
        if last is not None and image_id <= last:
            self.n_not_forward += 1
            self.problem = f"image id {image_id} after {last} does not move forward"
            return FAIL if self.on_gap == "fail" else SKIP
        verdict = WRITE
        if last is not None and image_id != last + 1:
            self.n_gaps += 1
            self.n_missing += image_id - last - 1
            if len(self.gaps) < LISTED:
                self.gaps.append((last, image_id))
            self.problem = (
                f"gap in image ids: {image_id - last - 1} missing between {last} and {image_id}"
            )
            if self.on_gap == "fail":
                verdict = FAIL
        if status != STATUS_GOOD:
            self.n_bad_status += 1
            if len(self.bad_status) < LISTED:
                self.bad_status.append((image_id, status))
            if verdict == WRITE:
                name = STATUS_NAMES.get(status, "unknown")
                self.problem = f"image {image_id} has status {status} ({name})"
                if self.on_gap == "fail":
                    verdict = FAIL
        if verdict == WRITE:
            self.last_id = image_id
        return verdict

    @property
    def clean(self) -> bool:
        return not (self.n_gaps or self.n_bad_status or self.n_not_forward)

    def summary(self) -> dict:
        return {
            "on_gap": self.on_gap,
            "n_gaps": self.n_gaps,
            "n_missing": self.n_missing,
            "n_bad_status": self.n_bad_status,
            "n_not_forward": self.n_not_forward,
            "gaps": [list(g) for g in self.gaps],
            "bad_status": [list(b) for b in self.bad_status],
        }

    def describe(self) -> str:
        """One phrase for the outcome message ('' when the stream was clean)."""
        parts = []
        if self.n_gaps:
            parts.append(f"{self.n_gaps} gap(s), {self.n_missing} image id(s) missing")
        if self.n_bad_status:
            parts.append(f"{self.n_bad_status} image(s) with a status other than good")
        if self.n_not_forward:
            parts.append(f"{self.n_not_forward} duplicate or stale image(s) skipped")
        return "; ".join(parts)
