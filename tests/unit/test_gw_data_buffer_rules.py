"""The data buffer's rules: body validation (fuzzed), the stored format, freeze, names,
tokens."""

import json
import math
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from socs_agents.agents.gw_data_buffer import rules
from socs_agents.agents.gw_data_buffer.rules import BadInput

finite = st.floats(allow_nan=False, allow_infinity=False)
strain = st.lists(finite, min_size=1, max_size=300)


def body(h, t) -> bytes:
    return json.dumps({"h": h, "t": t}).encode()


def reason_of(raw: bytes, parse=rules.parse_chunk) -> str:
    with pytest.raises(BadInput) as e:
        parse(raw)
    return e.value.reason


# ---- valid chunks: exact float64 round trip ---------------------------------------------


@given(strain, finite, st.floats(min_value=1e-300, max_value=1e300))
def test_t0_dt_form_round_trips_exactly(h, t0, dt):
    chunk = rules.parse_chunk(body(h, [t0, dt]))
    stored = json.loads(rules.encode_chunk(chunk))
    assert list(stored) == ["h", "t"]
    # bit-exact float64 (also -0.0 vs 0.0)
    pack = lambda xs: [struct.pack("<d", float(x)) for x in xs]  # noqa: E731
    assert pack(stored["h"]) == pack(h)
    assert pack(stored["t"]) == pack([t0, dt])


@given(st.lists(st.integers(-(10**6), 10**6), min_size=1, max_size=50))
def test_integers_are_stored_as_floats(h):
    chunk = rules.parse_chunk(body(h, [0, 1]))
    assert all(type(x) is float for x in chunk.h) and chunk.h == [float(x) for x in h]
    assert b" " not in rules.encode_chunk(chunk)


@given(st.integers(1, 64), st.floats(1e8, 2e9), st.floats(1e-6, 1.0))
def test_per_sample_times_form(n, t0, dt):
    t = [t0 + k * dt for k in range(n)]
    if any(b <= a for a, b in zip(t, t[1:], strict=False)):
        return  # rounding made two equal times: not a valid series
    h = [1e-21] * n
    chunk = rules.parse_chunk(body(h, t))
    assert chunk.t == t and chunk.t0 == t0


@given(strain, finite, st.floats(min_value=1e-300, max_value=1e300), st.booleans())
def test_stored_form_is_compact_and_exact(h, t0, dt, spaced):
    seps = (", ", ": ") if spaced else (",", ":")
    raw = json.dumps({"h": h, "t": [t0, dt]}, separators=seps).encode()
    stored = rules.encode_chunk(rules.parse_chunk(raw))
    assert b" " not in stored and stored.startswith(b'{"h":[')
    back = json.loads(stored)
    pack = lambda xs: [struct.pack("<d", x) for x in xs]  # noqa: E731
    assert list(back) == ["h", "t"] and pack(back["h"]) == pack(h)
    assert pack(back["t"]) == pack([t0, dt])


@pytest.mark.parametrize(
    "raw",
    [
        b'{"t": [0.0, 1.0], "h": [1.5]}',  # t first
        b'{"h": [1, 2.5], "t": [0.0, 1.0]}',  # an integer
        b'{"h": [1.5], "t": [0.0, 1.0], "x": "a b"}',  # another key
        b'{"h": [-0], "t": [0.0, 1.0]}',  # an integer minus zero
    ],
)
def test_other_bodies_are_stored_in_the_one_form(raw):
    chunk = rules.parse_chunk(raw)
    stored = rules.encode_chunk(chunk)
    assert stored.startswith(b'{"h":[') and b'"x"' not in stored and b" " not in stored
    back = json.loads(stored)
    assert all(type(x) is float for x in back["h"] + back["t"])
    assert [struct.pack("<d", x) for x in back["h"]] == [struct.pack("<d", x) for x in chunk.h]


# ---- the two parsers: orjson for float bodies, the standard library for the rest ----------


def outcome(parse, raw: bytes):
    """What a parser makes of a body: the refusal (reason, message) or the float64 bits."""
    try:
        chunk = parse(raw)
    except BadInput as e:
        return ("refused", e.reason, str(e))
    pack = lambda xs: [(type(x), struct.pack("<d", x)) for x in xs]  # noqa: E731
    return ("chunk", pack(chunk.h), pack(chunk.t))


def test_what_the_clients_send_takes_the_fast_path():
    from socs_agents.dev.sim.gw import chunks, shell_fixture, simulated_strain

    for c in list(chunks(simulated_strain(0.2), 1126259400.0, 300)) + [shell_fixture()]:
        for seps in ((", ", ": "), (",", ":")):
            raw = json.dumps(c, separators=seps).encode()
            fast = rules._parse_float_chunk(raw)
            assert fast is not None and fast.h == c["h"] and fast.t == c["t"]


@pytest.mark.parametrize(
    "raw",
    [
        b'{"h": [1, 2.5], "t": [0.0, 1.0]}',  # an integer: converted by the standard path
        b'{"h": [true], "t": [0.0, 1.0]}',
        b'{"h": [1.5], "t": [0.0, 1.0], "x": 1}',  # another key
        b'{"h": [[1.5]], "t": [0.0, 1.0]}',
        b'{"h": [1.5], "h": [1.5], "t": [0.0, 1.0]}',  # a duplicate key
        b'{"h": [NaN], "t": [0.0, 1.0]}',
        b'{"h": [1e999], "t": [0.0, 1.0]}',
        b'{"h": [], "t": [0.0, 1.0]}',
        b'{"h": [1e308, 1e308], "t": [0.0, 1.0]}',  # a sum that overflows
        b'{"h": [1.5], "t": [0.0, 1.0], "x": "\ud800"}',  # orjson refuses, json takes it
    ],
)
def test_every_other_body_goes_the_standard_way(raw):
    assert rules._parse_float_chunk(raw) is None
    assert outcome(rules.parse_chunk, raw) == outcome(rules.parse_chunk_stdlib, raw)


digits = st.text("0123456789", min_size=1, max_size=25)
number_text = st.builds(
    lambda sign, whole, frac, exp: sign + whole.lstrip("0").rjust(1, "0") + frac + exp,
    st.sampled_from(["", "-"]),
    digits,
    st.one_of(st.just(""), digits.map(lambda d: "." + d)),
    st.one_of(
        st.just(""),
        st.builds(
            lambda e, sign, n: f"{e}{sign}{n}",
            st.sampled_from("eE"),
            st.sampled_from(["", "+", "-"]),
            st.integers(0, 400),
        ),
    ),
)


@settings(max_examples=500)
@given(st.lists(number_text, min_size=1, max_size=20), number_text, number_text)
def test_both_parsers_read_every_number_text_to_the_same_float64(h, t0, dt):
    # long mantissas, exponents to +-400 (overflow, subnormals, underflow to 0), integers
    raw = ('{"h": [' + ", ".join(h) + '], "t": [' + t0 + ", " + dt + "]}").encode()
    assert outcome(rules.parse_chunk, raw) == outcome(rules.parse_chunk_stdlib, raw)


@settings(max_examples=1000)
@given(number_text.filter(lambda x: any(c in x for c in ".eE")))
def test_orjson_reads_a_float_text_as_python_does(text):
    # the fast path's premise, one number at a time (its refusal of 1e999 included)
    raw = ('{"h": [' + text + '], "t": [0.5, 0.25]}').encode()
    expected = float(text)
    fast = rules._parse_float_chunk(raw)
    if math.isfinite(expected):
        assert fast is not None and struct.pack("<d", fast.h[0]) == struct.pack("<d", expected)
    else:
        assert fast is None and reason_of(raw) == "not_finite"


@settings(max_examples=500)
@given(
    st.dictionaries(
        st.sampled_from(["h", "t", "x"]),
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=3),
            lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=2), kids),
            max_leaves=12,
        ),
    ),
    st.booleans(),
)
def test_both_parsers_agree_on_any_body(value, spaced):
    seps = (", ", ": ") if spaced else (",", ":")
    raw = json.dumps(value, separators=seps).encode()  # NaN and Infinity literals too
    assert outcome(rules.parse_chunk, raw) == outcome(rules.parse_chunk_stdlib, raw)


@settings(max_examples=300)
@given(st.binary(max_size=200))
def test_both_parsers_agree_on_any_bytes(raw):
    assert outcome(rules.parse_chunk, raw) == outcome(rules.parse_chunk_stdlib, raw)


def test_shell_fixture_is_accepted():
    t0 = 1126259452.39990234
    rules.parse_chunk(body([1e-22, 2e-22, 3e-22, 4e-22], [t0 + k / 4096 for k in range(4)]))


# ---- bad chunks: each refused with its reason --------------------------------------------


@pytest.mark.parametrize(
    "raw, reason",
    [
        (b"", "empty_body"),
        (b"   \n", "empty_body"),
        (b"\xff\xfe", "not_utf8"),
        (b"{", "malformed_json"),
        (b"[1, 2]", "not_an_object"),
        (b'"x"', "not_an_object"),
        (b'{"t": [0, 1]}', "missing_h"),
        (b'{"h": [1.0]}', "missing_t"),
        (b'{"h": 1.0, "t": [0, 1]}', "bad_h"),
        (b'{"h": [], "t": [0, 1]}', "empty_h"),
        (b'{"h": [1.0], "t": []}', "empty_t"),
        (b'{"h": ["1.0"], "t": [0, 1]}', "bad_h"),
        (b'{"h": [true], "t": [0, 1]}', "bad_h"),
        (b'{"h": [null], "t": [0, 1]}', "bad_h"),
        (b'{"h": [[1.0]], "t": [0, 1]}', "bad_h"),
        (b'{"h": [1.0], "t": [0, false]}', "bad_t"),
        (b'{"h": [NaN], "t": [0, 1]}', "not_finite"),
        (b'{"h": [Infinity], "t": [0, 1]}', "not_finite"),
        (b'{"h": [-Infinity], "t": [0, 1]}', "not_finite"),
        (b'{"h": [1e999], "t": [0, 1]}', "not_finite"),
        (b'{"h": [1e308, 1e308, -1e999], "t": [0, 1]}', "not_finite"),
        (b'{"h": [1.0], "t": [0, 1e999]}', "not_finite"),
        (b'{"h": [1.0, 2.0, 3.0], "t": [0, 0]}', "bad_dt"),
        (b'{"h": [1.0, 2.0, 3.0], "t": [0, -1]}', "bad_dt"),
        (b'{"h": [1.0, 2.0, 3.0], "t": [0, 1, 2, 3]}', "bad_t_length"),
        (b'{"h": [1.0, 2.0, 3.0], "t": [0]}', "bad_t_length"),
        (b'{"h": [1.0, 2.0, 3.0], "t": [0, 2, 1]}', "bad_t"),
        (b'{"h": [1.0, 2.0, 3.0], "t": [0, 1, 1]}', "bad_t"),
        (b'{"h": [1.0, 2.0], "t": [0, -1]}', "bad_t"),
    ],
)
def test_bad_chunks(raw, reason):
    assert reason_of(raw) == reason


@given(strain, st.integers(0, 299), st.sampled_from(["NaN", "Infinity", "-Infinity", "1e400"]))
def test_one_non_finite_sample_anywhere_is_refused(h, pos, literal):
    h = list(h)
    pos = min(pos, len(h) - 1)
    parts = [json.dumps(x) for x in h]
    parts[pos] = literal
    raw = ('{"h": [' + ", ".join(parts) + '], "t": [0, 0.000244140625]}').encode()
    assert reason_of(raw) == "not_finite"


@given(
    strain,
    st.integers(0, 299),
    st.one_of(st.text(max_size=5), st.booleans(), st.none(), st.lists(finite, max_size=2)),
)
def test_one_non_number_anywhere_is_refused(h, pos, junk):
    h = list(h)
    h[min(pos, len(h) - 1)] = junk
    assert reason_of(body(h, [0, 1])) == "bad_h"


@settings(max_examples=300)
@given(st.binary(max_size=200))
def test_any_bytes_either_parse_or_are_refused_with_a_reason(raw):
    try:
        chunk = rules.parse_chunk(raw)
    except BadInput as e:
        assert e.reason and str(e)
    else:
        assert chunk.h and all(math.isfinite(x) for x in chunk.h + chunk.t)


@settings(max_examples=300)
@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | finite | st.text(max_size=4),
        lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=3), kids),
        max_leaves=20,
    )
)
def test_any_json_either_parses_or_is_refused(value):
    raw = json.dumps({"h": value, "t": value}).encode()
    try:
        chunk = rules.parse_chunk(raw)
    except BadInput as e:
        assert e.reason
    else:
        assert all(type(x) is float and math.isfinite(x) for x in chunk.h + chunk.t)


# ---- train and clean bodies ----------------------------------------------------------------


def test_train_body():
    req = rules.parse_train(b'{"user": "airflow", "token": "airflow"}')
    assert (req.user, req.token) == ("airflow", "airflow")


@pytest.mark.parametrize(
    "raw, reason",
    [
        (b"", "empty_body"),
        (b"{code:FREEZE}", "malformed_json"),  # the shell-mangled body of the old curlrq
        (b'{"token": "x"}', "missing_user"),
        (b'{"user": "x"}', "missing_token"),
        (b'{"user": 1, "token": "x"}', "bad_user"),
        (b'{"user": "x", "token": null}', "bad_token"),
        (b'{"user": "a\\u0000", "token": "x"}', "bad_user"),
    ],
)
def test_bad_train_bodies(raw, reason):
    assert reason_of(raw, rules.parse_train) == reason


@given(st.text(max_size=300), st.text(max_size=300))
def test_train_any_strings(user, token):
    raw = json.dumps({"user": user, "token": token}).encode()
    try:
        req = rules.parse_train(raw)
    except BadInput as e:
        assert e.reason in ("bad_user", "bad_token")
        assert "\x00" in user + token or len(user) > 256
    else:
        assert (req.user, req.token) == (user, token)


def test_clean_body():
    assert rules.parse_clean(b'{"msg": "see you space cowboy"}') is None
    assert rules.parse_clean(b'{"msg": "", "token": "t"}') == "t"
    assert reason_of(b"{}", rules.parse_clean) == "missing_msg"
    assert reason_of(b'{"msg": 3}', rules.parse_clean) == "bad_msg"


# ---- freeze, names, archives ------------------------------------------------------------------


@given(st.integers(0, 10**12), st.integers(0, 10**12))
def test_freeze_rule_is_the_references(size, max_size):
    assert rules.should_freeze(size, max_size) == (size >= max_size)


@given(st.integers(0, 2**63), st.integers(0, 2**63))
def test_chunk_names_always_increase(last, now):
    ns = rules.next_chunk_ns(last, now)
    assert ns > last and ns >= now
    assert rules.CHUNK_NAME.match(rules.chunk_name(ns)).group(1) == str(ns)


@given(st.integers(1, 999_999), st.floats(0, 4e9))
def test_archive_names_are_unique_and_space_free(seq, when):
    a = rules.archive_dir_name(seq, when)
    b = rules.archive_dir_name(seq + 1, when)
    assert a != b and " " not in a and "/" not in a and a.startswith("batch-")


# ---- tokens ----------------------------------------------------------------------------------


def test_token_file_and_check():
    digest = rules.token_hash("hashed-one")
    tokens = rules.TokenSet.parse(f"# comment\n\nplain-one\nsha256:{digest.upper()}\n")
    assert len(tokens) == 2
    assert tokens.check("plain-one") == rules.token_hash("plain-one")
    assert tokens.check("hashed-one") == digest
    with pytest.raises(BadInput) as e:
        tokens.check("airflow")
    assert e.value.reason == "token_refused" and "airflow" not in str(e.value)
    with pytest.raises(BadInput) as e:
        tokens.check(None)
    assert e.value.reason == "token_required"
    with pytest.raises(ValueError):
        rules.TokenSet.parse("# nothing\n")
    with pytest.raises(ValueError):
        rules.TokenSet.parse("sha256:abc\n")


@given(st.text(min_size=1, max_size=50).filter(lambda s: s.strip() == s and "\n" not in s))
def test_any_token_line_is_accepted_as_itself(token):
    if token.startswith("#") or token.startswith("sha256:") or not token:
        return
    assert rules.TokenSet.parse(token + "\n").check(token) == rules.token_hash(token)


@pytest.mark.parametrize(
    "header, token",
    [
        ("Bearer abc", "abc"),
        ("bearer  abc ", "abc"),
        ("Basic abc", None),
        ("Bearer", None),
        ("", None),
        (None, None),
    ],
)
def test_bearer_token(header, token):
    assert rules.bearer_token(header) == token


@given(st.text(max_size=40), st.text(max_size=40))
def test_bearer_token_any_header(scheme, value):
    header = f"{scheme} {value}"
    token = rules.bearer_token(header)
    if token is not None:
        assert (
            scheme.strip().lower() == "bearer" or header.strip().split(" ")[0].lower() == "bearer"
        )
        assert token == token.strip() and token


@given(st.one_of(st.none(), st.text(max_size=50), st.integers(), st.booleans()), st.booleans())
def test_clean_body_any_msg(msg, with_token):
    body = {"msg": msg}
    if with_token:
        body["token"] = "tok"
    raw = json.dumps(body).encode()
    try:
        token = rules.parse_clean(raw)
    except BadInput as e:
        assert not isinstance(msg, str) or "\x00" in msg
        assert e.reason == "bad_msg"
    else:
        assert isinstance(msg, str) and token == ("tok" if with_token else None)
