"""The data buffer's rules as plain functions: what a body must hold, how a chunk is stored,
when the store freezes, how archives and tokens are named. No OCS, Twisted or I/O here.

Every refusal is a :class:`BadInput` with a short ``reason`` code (counted by the agent) and
a message naming the field; the HTTP layer maps the codes to status codes in one table.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import re
import time
from dataclasses import dataclass

import orjson

#: Names of stored chunks, as the reference writes them: ``gwb<time.Now().UnixNano()>.json``.
CHUNK_NAME = re.compile(r"^gwb(\d+)\.json$")
OPERATIONAL = "OPERATIONAL"
FROZEN = "FROZEN"


class BadInput(ValueError):
    """A request the buffer refuses; nothing was stored and no counter changed.

    Attributes:
        reason: a short code (``malformed_json``, ``bad_h``, ...), used for counters.
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def _reject_constant(name: str) -> float:
    raise BadInput(
        "not_finite", f"{name} is not a number JSON allows (NaN and Infinity are refused)"
    )


def parse_object(raw: bytes, parse_int=None) -> dict:
    """The JSON object of a request body (``parse_int``: as for :func:`json.loads`).

    Raises:
        BadInput: ``empty_body``, ``not_utf8``, ``malformed_json``, ``not_finite``
            (``NaN``/``Infinity`` literals) or ``not_an_object``.
    """
    if not raw or not raw.strip():
        raise BadInput("empty_body", "the body is empty; a JSON object is required")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise BadInput("not_utf8", "the body is not UTF-8 text") from None
    try:
        body = json.loads(text, parse_constant=_reject_constant, parse_int=parse_int)
    except BadInput:
        raise
    except (ValueError, RecursionError) as e:
        raise BadInput("malformed_json", f"malformed JSON: {e}") from None
    if not isinstance(body, dict):
        raise BadInput(
            "not_an_object", f"the body must be a JSON object, not {type(body).__name__}"
        )
    return body


def _numbers(body: dict, name: str, raw_has_bools: bool) -> list[float]:
    """``body[name]`` as a non-empty list of finite float64 values (the body was parsed with
    integers as floats)."""
    if name not in body:
        raise BadInput(f"missing_{name}", f"missing field {name!r}")
    values = body[name]
    if not isinstance(values, list):
        raise BadInput(f"bad_{name}", f"field {name!r} must be a list of numbers")
    if not values:
        raise BadInput(f"empty_{name}", f"field {name!r} is empty")
    # One C-speed sum clears nearly every good chunk: a string, null or list raises
    # TypeError, a non-finite value (1e999 parses to inf) makes the sum non-finite. Only
    # then, or when the raw text holds true/false at all, is every element looked at.
    try:
        clean = math.isfinite(math.fsum(values)) and not raw_has_bools
    except (TypeError, OverflowError, ValueError):
        clean = False
    if not clean:
        for i, x in enumerate(values):
            if type(x) is not float:
                raise BadInput(
                    f"bad_{name}", f"{name}[{i}] must be a number, not {json.dumps(x)[:40]}"
                )
            if not math.isfinite(x):
                raise BadInput(
                    "not_finite", f"{name}[{i}] is not finite (or does not fit a float64)"
                )
    return values


@dataclass(frozen=True)
class Chunk:
    """A validated strain chunk: ``h`` samples and ``t`` in one of its two forms."""

    h: list[float]
    t: list[float]

    @property
    def t0(self) -> float:
        return self.t[0]

    @property
    def per_sample_times(self) -> bool:
        return len(self.t) == len(self.h) and len(self.t) != 2


def check_times(h: list[float], t: list[float]) -> None:
    """``t`` is ``[t0, dt]`` with ``dt > 0`` (the documented form and the gwclient's), or one
    strictly increasing time per sample (the shell client's fixture)."""
    if len(t) == 2 and t[1] > 0:
        return  # [t0, dt]; with two samples also a valid pair of increasing times
    if len(t) == len(h):
        for i in range(1, len(t)):
            if not t[i] > t[i - 1]:
                raise BadInput("bad_t", f"t[{i}] = {t[i]!r} is not after t[{i - 1}] = {t[i - 1]!r}")
        return
    if len(t) == 2:
        raise BadInput("bad_dt", f"dt = t[1] must be greater than 0, not {t[1]!r}")
    raise BadInput(
        "bad_t_length",
        f"t must be [t0, dt] or one time per sample ({len(h)}), not {len(t)} values",
    )


def parse_chunk(raw: bytes) -> Chunk:
    """Validate a ``/streamdata`` body ``{"h": [...], "t": [t0, dt] | [t per sample]}``.

    A body of float lists (what every client sends) is parsed by orjson, about ten times
    faster than the standard library; every other body (a refusal, an integer, a boolean,
    anything orjson does not take) goes through :func:`parse_chunk_stdlib`, which decides
    the refusal reason, so every reason is the same whichever parser read the body.
    """
    chunk = _parse_float_chunk(raw)
    return chunk if chunk is not None else parse_chunk_stdlib(raw)


def _all_finite_floats(values: object) -> bool:
    if type(values) is not list or not values:
        return False
    # the type of every element, counted in C: an int, a bool, a string, null or a list
    # among them sends the body to the standard path (which converts or refuses it)
    if list(map(type, values)).count(float) != len(values):
        return False
    # orjson refuses NaN and 1e999 already; a sum that overflows only costs the standard path
    return math.isfinite(sum(values))


def _parse_float_chunk(raw: bytes) -> Chunk | None:
    """The chunk of a body ``{"h": [floats], "t": [floats]}`` and nothing else, else None.

    Returns only what :func:`parse_chunk_stdlib` returns for the same body: with no other
    key and no third bracket, no value that orjson and the standard parser might take
    differently (a nesting past Python's recursion limit, a dropped duplicate key) is there.
    """
    if raw.count(b"[") != 2:
        return None
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    if type(body) is not dict or len(body) != 2:
        return None
    h, t = body.get("h"), body.get("t")
    if not (_all_finite_floats(h) and _all_finite_floats(t)):
        return None
    check_times(h, t)  # on the same float64 values the standard path would see
    return Chunk(h, t)


def parse_chunk_stdlib(raw: bytes) -> Chunk:
    """:func:`parse_chunk` with the standard library's parser, for every body."""
    # integers become floats as they are parsed: the file holds float64 values only
    body = parse_object(raw, parse_int=float)
    has_bools = b"true" in raw or b"false" in raw
    h = _numbers(body, "h", has_bools)
    t = _numbers(body, "t", has_bools)
    check_times(h, t)
    return Chunk(h, t)


def encode_chunk(chunk: Chunk) -> bytes:
    """The stored file: ``{"h":[...],"t":[...]}`` without spaces, each float in its shortest
    round-trip form, so ``json.load`` gives back exactly the float64 values sent (one
    orjson call: about 40 times faster than ``json.dumps``)."""
    return orjson.dumps({"h": chunk.h, "t": chunk.t})


def chunk_name(ns: int) -> str:
    return f"gwb{ns}.json"


def next_chunk_ns(last_ns: int, now_ns: int | None = None) -> int:
    """The time stamp of the next file name: the clock, but always after the last one (two
    writes in one nanosecond, or a clock step back, never reuse a name)."""
    now = time.time_ns() if now_ns is None else now_ns
    return now if now > last_ns else last_ns + 1


def _string_field(body: dict, name: str, required: bool = True, limit: int = 256) -> str | None:
    if name not in body:
        if required:
            raise BadInput(f"missing_{name}", f"missing field {name!r}")
        return None
    value = body[name]
    if not isinstance(value, str):
        raise BadInput(f"bad_{name}", f"field {name!r} must be a string")
    if len(value) > limit:
        raise BadInput(f"bad_{name}", f"field {name!r} is longer than {limit} characters")
    if "\x00" in value:
        raise BadInput(f"bad_{name}", f"field {name!r} contains a NUL character")
    return value


@dataclass(frozen=True)
class TrainRequest:
    user: str
    token: str


def parse_train(raw: bytes) -> TrainRequest:
    """``/train`` body ``{"user": str, "token": str}`` (the DAG's ``airflow``/``airflow``)."""
    body = parse_object(raw)
    return TrainRequest(_string_field(body, "user"), _string_field(body, "token", limit=4096))


def parse_clean(raw: bytes) -> str | None:
    """``/cleanbuf`` body ``{"msg": str}`` (content ignored); returns a ``token`` field if
    the body has one (the other way to pass it is ``Authorization: Bearer``)."""
    body = parse_object(raw)
    _string_field(body, "msg", limit=1 << 16)
    return _string_field(body, "token", required=False, limit=4096)


def should_freeze(buff_size: int, max_size: int) -> bool:
    """The reference's ``DSDesc.isFreeze``: the batch is complete when the stored bytes
    reach ``MAX_SIZE``."""
    return buff_size >= max_size


def fill_fraction(buff_size: int, max_size: int) -> float:
    return buff_size / max_size if max_size > 0 else 1.0


def archive_dir_name(seq: int, when: float) -> str:
    """A unique archive folder name without spaces: ``batch-000007-20260820T180702.123456Z``
    (the sequence number makes two cleans in one second, or one microsecond, distinct)."""
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(when))
    micros = int(round((when % 1) * 1e6)) % 1_000_000
    return f"batch-{seq:06d}-{stamp}.{micros:06d}Z"


# ---- tokens ------------------------------------------------------------------------------


def token_hash(token: str) -> str:
    """What is kept of a token: its SHA-256, hex."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


class TokenSet:
    """The tokens of a ``--token-file``, kept as hashes only.

    File format: one token per line; ``sha256:<hex>`` lines give a token by its hash (so the
    file need not hold the token itself); blank lines and ``#`` comments are skipped.
    """

    def __init__(self, hashes: set[str]) -> None:
        if not hashes:
            raise ValueError("a token file must hold at least one token")
        self._hashes = frozenset(hashes)

    @classmethod
    def parse(cls, text: str) -> TokenSet:
        hashes = set()
        for line in text.split("\n"):  # not splitlines(): \x1e, \x85 ... may be in a token
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            if line.startswith("sha256:"):
                digest = line[len("sha256:") :].strip().lower()
                if not re.fullmatch(r"[0-9a-f]{64}", digest):
                    raise ValueError("a sha256: line must hold 64 hex digits")
                hashes.add(digest)
            else:
                hashes.add(token_hash(line))
        return cls(hashes)

    def __len__(self) -> int:
        return len(self._hashes)

    def check(self, token: str | None) -> str:
        """The hash of ``token`` if it is one of the set.

        Raises:
            BadInput: ``token_required`` or ``token_refused``.
        """
        if not token:
            raise BadInput("token_required", "a token is required (field 'token' or Authorization)")
        digest = token_hash(token)
        # compare against every hash, in constant time each
        if not any(hmac.compare_digest(digest, h) for h in self._hashes):
            raise BadInput("token_refused", "the token is not accepted")
        return digest


def bearer_token(header: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, else None."""
    if not header:
        return None
    scheme, _, value = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    return value.strip()
