"""The recording schedule's rules: request times, the reference's errors, persistence."""

import pytest

from socs_agents.agents.visibility_recorder.schedule import (
    DONE,
    RECORDING,
    SCHEDULED,
    Schedule,
    ScheduleError,
    request_time,
)
from socs_agents.timeutil import ctime_code, mjd_mpm_to_unix, unix_to_mjd_mpm, utc_stamp

NOW = 1_795_254_111.5  # 2026-11-21T09:41:51.5Z


def test_mjd_mpm_round_trip_and_epoch():
    assert mjd_mpm_to_unix(40587, 0) == 0.0
    assert unix_to_mjd_mpm(0.0) == (40587, 0)
    assert unix_to_mjd_mpm(86400 - 0.001) == (40587, 86_399_999)
    mjd, mpm = unix_to_mjd_mpm(NOW)
    assert (mjd, mpm) == (61365, 34_911_500)
    assert mjd_mpm_to_unix(mjd, mpm) == pytest.approx(NOW, abs=1e-6)
    assert ctime_code(NOW) == "17952" and utc_stamp(NOW) == "20261121_094151"


def test_request_time_both_spellings_and_now():
    mjd, mpm = unix_to_mjd_mpm(NOW + 60)
    a = request_time({"start_mjd": mjd, "start_mpm": mpm}, "start", NOW)
    b = request_time({"mjd": str(mjd), "mpm": float(mpm)}, "start", NOW)
    assert a.t == b.t == pytest.approx(NOW + 60) and not a.was_now
    now = request_time({"stop_mjd": "now"}, "stop", NOW, lead=15)
    assert now.was_now and now.t == NOW + 15 and (now.mjd, now.mpm) == unix_to_mjd_mpm(NOW + 15)
    assert request_time({"mjd": "NOW", "mpm": 5}, "start", NOW, lead=0.5).t == NOW + 0.5


@pytest.mark.parametrize(
    "params, message",
    [
        ({}, "Missing required keyword(s): start_mjd (or mjd), start_mpm (or mpm)"),
        ({"start_mjd": 61365}, "Missing required keyword(s): start_mpm (or mpm)"),
        ({"mpm": 5}, "Missing required keyword(s): start_mjd (or mjd)"),
        ({"start_mjd": "tomorrow", "start_mpm": 0}, "start_mjd must be an integer or 'now'"),
        ({"start_mjd": 61365.5, "start_mpm": 0}, "start_mjd must be an integer"),
        ({"start_mjd": 61365, "start_mpm": 86_400_000}, "start_mpm must be within"),
    ],
)
def test_request_time_errors(params, message):
    with pytest.raises(ScheduleError) as e:
        request_time(params, "start", NOW)
    assert message in str(e.value)


def test_start_in_the_past_is_refused(tmp_path):
    s = Schedule(str(tmp_path / "s.sqlite"))
    s.add_start(NOW - 1.9, NOW, "ok")  # within the 2 s allowance
    with pytest.raises(
        ScheduleError,
        match="Insufficient advanced notice: the start time "
        r"2026-11-21T09:41:48.500Z is 3.0 s in the past",
    ):
        Schedule(":memory:").add_start(NOW - 3, NOW, "late")


def test_overlap_stop_and_reopen(tmp_path):
    s = Schedule(str(tmp_path / "s.sqlite"))
    first = s.add_start(NOW + 10, NOW, "first")
    assert first.state == SCHEDULED and first.stop is None
    # Open-ended: any later start overlaps it; the message names the operation.
    with pytest.raises(
        ScheduleError,
        match="Operation overlaps with a previously scheduled "
        r"operation: first \(.* to open-ended\)",
    ):
        s.add_start(NOW + 100, NOW, "second")
    with pytest.raises(ScheduleError, match="No operation active at the requested stop time"):
        s.add_stop(NOW + 5, NOW)  # before it starts
    with pytest.raises(ScheduleError, match="No operation active"):
        s.add_stop(NOW + 10, NOW)  # at its very start: nothing would be recorded
    stopped = s.add_stop(NOW + 40, NOW)
    assert stopped.tag == "first" and stopped.stop == NOW + 40
    with pytest.raises(ScheduleError, match="overlaps"):
        s.add_start(NOW + 39, NOW, "second")
    second = s.add_start(NOW + 40, NOW, "second")  # back to back is fine
    # A stop moves an end earlier; a later stop of the same one is refused once it ended.
    assert s.add_stop(NOW + 30, NOW).stop == NOW + 30
    with pytest.raises(ScheduleError, match="No operation active"):
        s.add_stop(NOW + 35, NOW)
    assert s.current(NOW + 41).tag == "second" and s.next_start(NOW).tag == "first"
    assert s.current(NOW + 31) is None
    with pytest.raises(ScheduleError, match="Insufficient advanced notice: the stop time"):
        s.add_stop(NOW - 5, NOW)
    assert [o.tag for o in s.operations(open_only=True)] == ["first", "second"]
    assert second.id != first.id


def test_schedule_survives_reopening(tmp_path):
    path = str(tmp_path / "s.sqlite")
    s = Schedule(path)
    op = s.add_start(NOW + 1, NOW, "rec")
    s.mark_recording(op.id, NOW + 1.002)
    s.mark_files(op.id, 4)
    s.close()
    again = Schedule(path)
    (op2,) = again.operations(open_only=True)
    assert (op2.tag, op2.state, op2.actual_start, op2.files) == ("rec", RECORDING, NOW + 1.002, 4)
    again.mark_resumed(op2.id, "resumed after a restart")
    again.mark_finished(op2.id, NOW + 9)
    (done,) = again.operations()
    assert (done.state, done.resumed, done.note) == (DONE, 1, "resumed after a restart")
    assert again.operations(open_only=True) == []
