"""Switching over from the reference: what its adm folder says, read once at the first start.

The reference's buffer keeps two files in its ``ADMROOT`` (``appdata/adm/``):
``StatDesc.json`` ``{"n_itm", "buff_size"}`` (its counters) and ``Dsstat.json``
``{"dstatus", "user", "token"}`` (OPERATIONAL or FROZEN, and who froze it). A site that
replaces the reference points ``--data-dir`` at the reference's data folder and
``--reference-adm-dir`` at that adm folder: the state carries over (a frozen store stays
frozen, by the same user), the token is kept only as its SHA-256, and the counters are
recounted from the directory (the reference's are reported next to them, as they drift).

Its ``LogStream.json`` (one line per stored file) is left as it is: no client of the front
reads it (the logic's ``/dumpflog`` and the buffer's ``/dumpLogF`` are cluster-internal).

Plain functions; the only I/O is reading the two small files and the orphans' bytes.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

from . import rules

STAT_DESC = "StatDesc.json"
DS_STAT = "Dsstat.json"
#: What the reference's buffer writes for a body it could not bind (see the spec): a file
#: the preprocessing job aborts on.
ORPHAN_BODIES = ({"h": None, "t": None},)
#: Orphans are 19 bytes; larger files are never read to find them.
ORPHAN_MAX_BYTES = 64


class TakeoverError(ValueError):
    """The reference's state cannot be read; nothing was taken over."""


@dataclass
class ReferenceState:
    """What the reference's adm folder holds (``token`` in clear: never stored or shown)."""

    adm_dir: str
    dstatus: str
    user: str | None
    token: str | None = field(repr=False)
    #: Dsstat.json's modification time: when the reference last changed its state
    changed_at: float
    #: StatDesc.json's counters, or None when it is missing or unreadable (with the reason)
    n_itm: int | None = None
    buff_size: int | None = None
    stat_desc_error: str | None = None

    @property
    def frozen(self) -> bool:
        return self.dstatus == rules.FROZEN


def _json_object(path: str) -> dict:
    with open(path, "rb") as f:
        raw = f.read(1 << 20)
    try:
        value = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise ValueError(f"{path} is not JSON: {e}") from None
    if not isinstance(value, dict):
        raise ValueError(f"{path} holds {type(value).__name__}, not an object")
    # Go's encoding/json matches field names without regard to case; so does this
    return {str(k).lower(): v for k, v in value.items()}


def read_reference(adm_dir: str) -> ReferenceState:
    """Read the reference's ``Dsstat.json`` (required) and ``StatDesc.json`` (optional).

    Raises:
        TakeoverError: ``Dsstat.json`` is missing, not JSON, or its ``dstatus`` is neither
            OPERATIONAL nor FROZEN (starting would guess whether the batch is frozen).
    """
    ds_path = os.path.join(adm_dir, DS_STAT)
    try:
        ds = _json_object(ds_path)
        changed_at = os.stat(ds_path).st_mtime
    except (OSError, ValueError) as e:
        raise TakeoverError(f"cannot read the reference's state {ds_path}: {e}") from None
    dstatus = ds.get("dstatus")
    if dstatus not in (rules.OPERATIONAL, rules.FROZEN):
        raise TakeoverError(f"{ds_path}: dstatus is {dstatus!r}, not OPERATIONAL or FROZEN")
    user, token = ds.get("user"), ds.get("token")
    state = ReferenceState(
        adm_dir=os.path.abspath(adm_dir),
        dstatus=dstatus,
        user=user if isinstance(user, str) else None,
        token=token if isinstance(token, str) and token else None,
        changed_at=changed_at,
    )
    sd_path = os.path.join(adm_dir, STAT_DESC)
    try:
        sd = _json_object(sd_path)
        n_itm, buff_size = sd.get("n_itm"), sd.get("buff_size")
        if not all(type(v) is int and v >= 0 for v in (n_itm, buff_size)):
            raise ValueError("n_itm and buff_size must be counts")
        state.n_itm, state.buff_size = n_itm, buff_size
    except (OSError, ValueError) as e:
        state.stat_desc_error = f"{sd_path}: {e}"
    return state


def find_orphans(data_dir: str, sizes: dict[str, int]) -> list[str]:
    """The files the reference left for bodies it refused (``{"h":null,"t":null}``)."""
    found = []
    for name, size in sorted(sizes.items()):
        if size > ORPHAN_MAX_BYTES:
            continue
        try:
            with open(os.path.join(data_dir, name), "rb") as f:
                if json.loads(f.read()) in ORPHAN_BODIES:
                    found.append(name)
        except (OSError, ValueError, UnicodeDecodeError):
            continue
    return found


def summary(ref: ReferenceState, n_itm: int, buff_size: int, orphans: list[str], at: float) -> dict:
    """The record kept in the state and shown in ``session.data`` (no token)."""
    out = {
        "from": ref.adm_dir,
        "at": at,
        "dstatus": ref.dstatus,
        "frozen_by": ref.user if ref.frozen else None,
        "token_kept_as_sha256": bool(ref.frozen and ref.token),
        "reference_counts": (
            {"n_itm": ref.n_itm, "buff_size": ref.buff_size}
            if ref.stat_desc_error is None
            else {"error": ref.stat_desc_error}
        ),
        "recounted": {"n_itm": n_itm, "buff_size": buff_size},
        "orphans": len(orphans),
        "orphan_names": orphans[:20],
    }
    return out


def describe(record: dict) -> str:
    """One log line of what was taken over."""
    ref = record["reference_counts"]
    counts = (
        f"its counters {ref['n_itm']} files / {ref['buff_size']} bytes"
        if "error" not in ref
        else f"its counters unreadable ({ref['error']})"
    )
    rec = record["recounted"]
    text = (
        f"took over the reference's state from {record['from']}: {record['dstatus']}"
        + (f" (frozen by {record['frozen_by']!r}" if record["dstatus"] == rules.FROZEN else "")
        + (
            ", its token kept as a SHA-256 only)"
            if record["token_kept_as_sha256"]
            else (")" if record["dstatus"] == rules.FROZEN else "")
        )
        + f"; {counts}, recounted {rec['n_itm']} files / {rec['buff_size']} bytes"
    )
    if record["orphans"]:
        text += (
            f'; {record["orphans"]} orphan file(s) {{"h":null,"t":null}} of bodies the '
            "reference refused (the preprocessing job aborts on them: remove them)"
        )
    return text
