"""Parse pysmurf publisher / smurf-streamer datagrams (plain functions, no OCS, no Twisted).

Every datagram becomes exactly one of: :class:`FileAnnouncement`, :class:`SessionMessage`,
:class:`MetadataMessage`, :class:`Ignored` (types the publisher sends that carry no file), or
:class:`Rejected` with a short reason code used for the agent's counters.
"""

from __future__ import annotations

import json
import math
import numbers
from dataclasses import dataclass
from typing import Any, NamedTuple

#: The pysmurf publisher drops anything larger itself.
MAX_DATAGRAM_BYTES = 64_000

#: Types that carry no file and need no action (the reference ignores them too).
NO_ACTION_TYPES = frozenset({"start", "stop", "log", "general"})
FILE_TYPES = frozenset({"data_file", "g3_file"})
SESSION_TYPES = frozenset({"session_data", "session_log"})

#: Every reason a datagram can be refused for; each has a counter.
REJECT_REASONS = (
    "oversize",
    "not_utf8",
    "bad_json",
    "too_deep",
    "not_object",
    "missing_field",
    "wrong_type",
    "non_finite",
    "unknown_type",
    "missing_action",
    "bad_path",
    "relative_path",
    "dotdot_path",
    "remote_escape",
    "bad_remote_path",
    "unknown_archive",
    "missing_file",
    "unreadable_file",
    "outside_allowed_root",
    "over_max_pending",
    "over_max_streams",
    "internal_error",
)

#: Above this, a ctime is no ctime (year 5138): its first five digits would not be a timecode.
MAX_CTIME = 1e11


class FileAnnouncement(NamedTuple):
    """A file to register (a named tuple: one is made for every file announced)."""

    pub_id: str
    msg_type: str
    archive: str
    payload: dict
    raw: bytes


@dataclass(frozen=True)
class SessionMessage:
    data: dict


@dataclass(frozen=True)
class MetadataMessage:
    stream_id: str
    path: str
    value: Any
    timestamp: float


@dataclass(frozen=True)
class Ignored:
    msg_type: str


@dataclass(frozen=True)
class Rejected:
    reason: str
    detail: str


Parsed = FileAnnouncement | SessionMessage | MetadataMessage | Ignored | Rejected


def _is_number(v: Any) -> bool:
    t = type(v)
    if t is float or t is int:  # what JSON gives; the ABC check below is slow
        return True
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def _finite(v: Any) -> bool:
    """A number that converts to a finite float (NaN, Infinity and ints beyond a float's
    range are not)."""
    try:
        return math.isfinite(v)
    except (OverflowError, TypeError, ValueError):
        return False


def parse_datagram(raw: bytes) -> Parsed:
    """Classify one datagram; never raises (any bytes, any JSON shape or depth)."""
    try:
        return _parse(raw)
    except Exception as e:  # a bug must cost one datagram, not the agent
        return Rejected("internal_error", f"{type(e).__name__}: {e}"[:200])


def _parse(raw: bytes) -> Parsed:
    if len(raw) > MAX_DATAGRAM_BYTES:
        return Rejected("oversize", f"{len(raw)} bytes > {MAX_DATAGRAM_BYTES}")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        return Rejected("not_utf8", f"invalid UTF-8 at byte {e.start}")
    try:
        data = json.loads(text)
    except ValueError as e:  # also numbers of more than 4,300 digits
        return Rejected("bad_json", str(e)[:120])
    except RecursionError:
        return Rejected("too_deep", "JSON nested too deeply")
    if not isinstance(data, dict):
        return Rejected("not_object", f"JSON {type(data).__name__}, not an object")
    try:
        pub_id, msg_type, payload = data["id"], data["type"], data["payload"]
    except KeyError:
        missing = [k for k in ("id", "type", "payload") if k not in data]
        return Rejected("missing_field", f"no {', '.join(missing)}")
    if not isinstance(pub_id, str) or not isinstance(msg_type, str):
        return Rejected("wrong_type", "id and type must be strings")

    if msg_type in FILE_TYPES:
        return _file_announcement(pub_id, msg_type, payload, raw)
    if msg_type in SESSION_TYPES:
        return SessionMessage(data)
    if msg_type == "metadata":
        return _metadata(pub_id, data, payload)
    if msg_type in NO_ACTION_TYPES:
        return Ignored(msg_type)
    return Rejected("unknown_type", f"type {msg_type[:40]!r}")


def _file_announcement(pub_id: str, msg_type: str, payload: Any, raw: bytes) -> Parsed:
    if not isinstance(payload, dict):
        return Rejected("wrong_type", f"{msg_type} payload must be an object")
    if "path" not in payload:
        return Rejected("missing_field", f"{msg_type} payload has no path")
    if not isinstance(payload["path"], str):
        return Rejected("wrong_type", "payload.path must be a string")
    archive = payload.get("archive_name", "smurf" if msg_type == "data_file" else "timestreams")
    if not isinstance(archive, str):
        return Rejected("wrong_type", "payload.archive_name must be a string")
    if archive == "smurf":
        # pysmurf core files: the remote path is built from these
        action, action_ts = payload.get("action"), payload.get("action_ts")
        if action is None or action == "" or action_ts is None or action_ts == "":
            absent = [k for k in ("action", "action_ts") if payload.get(k) in (None, "")]
            return Rejected("missing_action", f"{payload['path'][:200]}: no {' or '.join(absent)}")
        if "timestamp" not in payload:
            return Rejected("missing_field", f"{payload['path'][:200]}: no timestamp")
        ts = payload["timestamp"]
        if not (_is_number(ts) or (isinstance(ts, str) and ts[:5].isdigit())):
            return Rejected("wrong_type", "payload.timestamp must be a ctime")
        if not isinstance(action, str) or not (isinstance(action_ts, str) or _is_number(action_ts)):
            return Rejected(
                "wrong_type", "payload.action must be a string and action_ts a string or number"
            )
        if _is_number(ts) and not (_finite(ts) and 0 <= ts < MAX_CTIME):
            return Rejected("non_finite", f"payload.timestamp {str(ts)[:40]} is not a ctime")
        if _is_number(action_ts) and not _finite(action_ts):
            return Rejected("non_finite", "payload.action_ts is not a finite number")
    return FileAnnouncement(pub_id, msg_type, archive, payload, raw)


def _metadata(pub_id: str, data: dict, payload: Any) -> Parsed:
    if not isinstance(payload, dict):
        return Rejected("wrong_type", "metadata payload must be an object")
    if "path" not in payload or "value" not in payload:
        return Rejected("missing_field", "metadata payload needs path and value")
    if not isinstance(payload["path"], str) or not payload["path"]:
        return Rejected("wrong_type", "metadata path must be a non-empty string")
    ts = data.get("time")
    if not _is_number(ts):
        return Rejected(
            "wrong_type" if "time" in data else "missing_field",
            "metadata needs a numeric envelope time",
        )
    if not _finite(ts):
        return Rejected("non_finite", "metadata envelope time is not a finite number")
    # The streamer's publisher id is ``STREAMER:<stream_id>``.
    stream_id = pub_id.split(":")[1] if ":" in pub_id else pub_id
    return MetadataMessage(stream_id, payload["path"], payload["value"], float(ts))
