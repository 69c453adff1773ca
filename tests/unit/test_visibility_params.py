"""Fuzzing the recorder's and manager's validators and rules: any value a caller or a feed
can send gives a clear refusal naming the parameter, never a traceback. (The ocs parameter
checks of the tasks are in test_visibility_contract.py: they need the agent modules.)"""

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from socs_agents.agents.visibility_manager import aggregate
from socs_agents.agents.visibility_recorder.params import Bounded
from socs_agents.agents.visibility_recorder.schedule import (
    MAX_MJD,
    MIN_MJD,
    Schedule,
    ScheduleError,
    request_time,
)
from socs_agents.timeutil import MS_PER_DAY, unix_to_mjd_mpm

NOW = 1_795_254_111.5
HOSTILE_NUMBERS = [1e308, -1e308, math.inf, -math.inf, math.nan, 10**400, -(10**400), 2**63]

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-(10**500), max_value=10**500),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=50),
    st.sampled_from(["now", " NOW ", "61365", "1e308", "nan", "-0", "0x10", "61365.0"]),
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=8,
)


@settings(max_examples=400, deadline=None)
@given(
    which=st.sampled_from(["start", "stop"]),
    params=st.dictionaries(
        st.sampled_from(["start_mjd", "start_mpm", "stop_mjd", "stop_mpm", "mjd", "mpm"]),
        json_values,
        max_size=4,
    ),
)
def test_request_time_refuses_with_schedule_errors_only(which, params):
    try:
        rt = request_time(params, which, NOW, lead=15)
    except ScheduleError as e:
        assert str(e)  # a message the caller sees
        return
    assert math.isfinite(rt.t)
    assert MIN_MJD <= rt.mjd <= MAX_MJD + 1 and 0 <= rt.mpm < MS_PER_DAY
    if not rt.was_now:
        assert unix_to_mjd_mpm(rt.t) == (rt.mjd, rt.mpm)


@pytest.mark.parametrize("value", HOSTILE_NUMBERS)
@pytest.mark.parametrize("key", ["start_mjd", "start_mpm"])
def test_huge_and_non_finite_times_name_the_parameter(key, value):
    params = {"start_mjd": 61365, "start_mpm": 0, key: value}
    with pytest.raises(ScheduleError, match=key):
        request_time(params, "start", NOW)


@settings(max_examples=200, deadline=None)
@given(
    mjd=st.integers(min_value=MIN_MJD, max_value=MAX_MJD),
    mpm=st.integers(min_value=0, max_value=MS_PER_DAY - 1),
)
def test_every_valid_time_can_be_scheduled(mjd, mpm):
    """A time request_time accepts never breaks the schedule (tags, messages)."""
    rt = request_time({"start_mjd": mjd, "start_mpm": mpm}, "start", NOW)
    schedule = Schedule(":memory:")
    try:
        op = schedule.add_start(rt.t, NOW, "tag")
        assert op.describe()
    except ScheduleError as e:
        assert "Insufficient advanced notice" in str(e)
    finally:
        schedule.close()


@settings(max_examples=300, deadline=None)
@given(value=json_values)
def test_bounded_cast_accepts_only_finite_numbers_in_range(value):
    cast = Bounded(0, 30)
    try:
        out = cast(value)
    except (TypeError, ValueError):
        return
    assert isinstance(out, float) and 0 < out <= 30


# ---- the manager's rules -------------------------------------------------------------------

summaries = st.sampled_from(["booting", "normal", "warning", "error", "shutdown", "", "x"])
texts = st.text(max_size=20)
reports = st.fixed_dictionaries(
    {"received": st.floats(min_value=NOW - 1000, max_value=NOW + 10)},
    optional={
        "summary": summaries,
        "info": texts,
        "op_type": st.sampled_from(["idle", "waiting", "recording", "", "other"]),
        "op_tag": texts,
        "mode": st.sampled_from(["fast", "slow"]),
    },
)


@settings(max_examples=400, deadline=None)
@given(
    pipelines=st.lists(st.sampled_from(["a", "b", "c", "d"]), unique=True, max_size=4),
    seen=st.dictionaries(st.sampled_from(["a", "b", "c", "d", "e"]), reports, max_size=5),
    stale_after=st.floats(min_value=0.1, max_value=500),
    started=st.one_of(st.none(), st.floats(min_value=NOW - 1000, max_value=NOW)),
    previous_summary=st.one_of(st.none(), summaries),
)
def test_aggregate_rules_hold_for_any_reports(
    pipelines, seen, stale_after, started, previous_summary
):
    previous = None if previous_summary is None else {"summary": previous_summary, "info": "i"}
    result = aggregate.aggregate_monitoring(
        pipelines, seen, NOW, stale_after, previous, 60.0, started
    )
    assert result["summary"] in ("normal", "warning", "error")
    assert result["n_pipelines"] == len(pipelines) and set(result["pipelines"]) == set(pipelines)
    stale = [p for p in pipelines if result["pipelines"][p]["stale"]]
    assert result["n_stale"] == len(stale)
    if not pipelines or stale:
        assert result["summary"] == "error"  # silence is never "normal"
    fresh = [result["pipelines"][p]["summary"] for p in pipelines if p not in stale]
    if any(s in aggregate.BAD_SUMMARIES for s in fresh):
        assert result["summary"] == "error"
    if result["summary"] == "normal":
        assert all(s not in aggregate.BAD_SUMMARIES + ("warning",) for s in fresh)
        assert pipelines and not stale
    if result["summary"] == "warning":
        assert "warning" in fresh
    if stale:
        assert f"{len(stale)} timed out" in result["op_type"]


@settings(max_examples=400, deadline=None)
@given(data=json_values)
def test_status_messages_of_any_shape_are_read_or_refused(data):
    try:
        fields, pid = aggregate.read_status(data, "observatory", "status")
    except ValueError:
        return
    assert pid and all(isinstance(v, str) for v in fields.values())


def status_message(pid, **fields):
    return (
        {"status": {"data": {k: [v] for k, v in fields.items()}, "timestamps": [1.0]}},
        {"agent_address": f"observatory.{pid}"},
    )


@settings(max_examples=200, deadline=None)
@given(fields=st.dictionaries(st.sampled_from(["summary", "info", "op_type", "mode"]), json_values))
def test_status_fields_of_any_type_become_text(fields):
    read, pid = aggregate.read_status(status_message("drvs-1", **fields), "observatory", "status")
    assert pid == "drvs-1" and set(read) == set(fields)
    assert all(isinstance(v, str) and len(v) <= aggregate.MAX_TEXT + 3 for v in read.values())


def test_status_from_outside_the_address_root_is_refused():
    with pytest.raises(ValueError, match="not under"):
        aggregate.read_status(status_message("x", summary="normal"), "other", "status")


@settings(max_examples=300, deadline=None)
@given(reply=json_values)
def test_any_direct_reply_is_classified(reply):
    result = aggregate.classify_direct(reply)
    assert result["status"] in (aggregate.SUCCESS, aggregate.FAILED)
    if result["status"] == aggregate.SUCCESS:
        assert isinstance(reply, dict) and reply.get("success") is True
