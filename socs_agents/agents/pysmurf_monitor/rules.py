"""Where an announced file goes in the archive, and whether SupRsync may delete it.

Plain functions: the rules of socs's PysmurfMonitor, with its substring test for
"semi-permanent" files replaced by a test on whole path-component words.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from typing import NamedTuple

from ...db.entries import BadFileEntry, check_local_path, check_remote_path

#: Words of a path component that mark a file SupRsync must keep (IV, channel-assignment,
#: tune files). Matched against whole words, so ``archive_drive.txt`` stays deletable.
KEEP_WORDS = (("iv",), ("tune",), ("channel", "assignment"))

# One search per path instead of splitting every component into words: a keep phrase is
# made of whole words (ASCII letters and digits) of one path component.
_KEEP = re.compile(
    r"(?<![0-9A-Za-z])(?:"
    + "|".join(r"[^0-9A-Za-z/]+".join(map(re.escape, phrase)) for phrase in KEEP_WORDS)
    + r")(?![0-9A-Za-z])",
    re.IGNORECASE | re.ASCII,
)


class PlannedFile(NamedTuple):
    """Everything but the md5 of a SupRsync row (a named tuple: one is made per file)."""

    local_path: str
    remote_path: str
    archive_name: str
    deletable: bool


RemoteRule = Callable[[str, dict, str], str]


def _component(value: object, what: str, path: str) -> str:
    text = str(value)
    if not text or "/" in text or text in (".", ".."):
        raise BadFileEntry(path, f"{what} {text!r} cannot be a path component", "bad_remote_path")
    return text


def smurf_remote_path(local_path: str, payload: dict, pub_id: str) -> str:
    """``<5 ctime digits>/<pub id>/<action_ts>_<action>/<plots|outputs>/<basename>``."""
    # Joined by hand (no component but the first can start with "/"): this runs per file.
    pub = _component(pub_id, "publisher id", local_path)
    action = _component(f"{payload['action_ts']}_{payload['action']}", "action", local_path)
    kind = "plots" if payload.get("plot") else "outputs"
    remote = f"{pub}/{action}/{kind}/{local_path.rpartition('/')[2]}"
    timecode = f"{str(payload['timestamp']):.5}"
    return f"{timecode}/{remote}" if timecode else remote


def tail_rule(n: int) -> RemoteRule:
    """The last ``n`` components of the normalised local path (timestreams use 3)."""

    def rule(local_path: str, payload: dict, pub_id: str) -> str:
        parts = os.path.normpath(local_path).strip("/").split("/")
        if len(parts) < n:
            raise BadFileEntry(local_path, f"needs at least {n} path components", "bad_remote_path")
        return "/".join(parts[-n:])

    return rule


def relative_rule(base_dir: str) -> RemoteRule:
    """The path relative to ``base_dir``; files outside it are refused."""
    base = os.path.normpath(base_dir)

    def rule(local_path: str, payload: dict, pub_id: str) -> str:
        if os.path.commonpath([base, local_path]) != base or local_path == base:
            raise BadFileEntry(
                local_path, f"is not inside this archive's base dir {base}", "remote_escape"
            )
        return os.path.relpath(local_path, base)

    return rule


DEFAULT_RULES: dict[str, RemoteRule] = {"smurf": smurf_remote_path, "timestreams": tail_rule(3)}


def parse_archive_rule(spec: str) -> tuple[str, RemoteRule]:
    """``NAME=tail:N`` or ``NAME=relative:/base/dir`` (the ``--archive`` argument)."""
    name, sep, rule = spec.partition("=")
    kind, _, arg = rule.partition(":")
    if not sep or not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
        raise ValueError(f"--archive {spec!r}: expected NAME=tail:N or NAME=relative:/dir")
    if kind == "tail" and arg.isdigit() and int(arg) > 0:
        return name, tail_rule(int(arg))
    if kind == "relative" and os.path.isabs(arg):
        return name, relative_rule(arg)
    raise ValueError(f"--archive {spec!r}: rule must be tail:N (N > 0) or relative:/absolute/dir")


def smurf_deletable(local_path: str) -> bool:
    """False outside a timestamped dir (``/data/smurf_data/<digits>/...``) and for IV,
    channel-assignment and tune files."""
    parts = local_path.split("/", 4)  # the last part is everything below the dated dir
    if len(parts) < 5 or not parts[3].isdigit():
        return False
    return _KEEP.search(parts[4]) is None


def plan_file(
    payload: dict, pub_id: str, archive: str, rules: dict[str, RemoteRule] | None = None
) -> PlannedFile:
    """Apply every rule to an announced file.

    Raises:
        BadFileEntry: bad local or remote path, or an archive without a rule.
    """
    rules = DEFAULT_RULES if rules is None else rules
    local_path = payload["path"]
    if payload.get("format") == "npy" and not local_path.endswith(".npy"):
        local_path += ".npy"
    local_path = check_local_path(local_path)
    if archive not in rules:
        raise BadFileEntry(
            local_path,
            f"unknown archive {archive!r} (known: {', '.join(rules)})",
            "unknown_archive",
        )
    remote = check_remote_path(rules[archive](local_path, payload, pub_id), local_path)
    deletable = smurf_deletable(local_path) if archive == "smurf" else True
    return PlannedFile(local_path, remote, archive, deletable)
