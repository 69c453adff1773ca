"""Gap, status and duplicate tracking, --on-gap record and fail."""

from hypothesis import given
from hypothesis import strategies as st

from socs_agents.agents.daq_writer.gaps import FAIL, SKIP, WRITE, GapTracker


def test_consecutive_good_images_are_clean():
    t = GapTracker("record")
    assert [t.check(i, 0) for i in range(10, 15)] == [WRITE] * 5
    assert t.clean and t.describe() == "" and t.summary()["n_gaps"] == 0


def test_record_mode_counts_gaps_and_statuses_and_goes_on():
    t = GapTracker("record")
    verdicts = [t.check(i, s) for i, s in ((1, 0), (2, 0), (5, 0), (6, 1), (9, 2))]
    assert verdicts == [WRITE] * 5
    s = t.summary()
    assert (s["n_gaps"], s["n_missing"], s["n_bad_status"]) == (2, 4, 2)
    assert s["gaps"] == [[2, 5], [6, 9]] and s["bad_status"] == [[6, 1], [9, 2]]
    assert "2 gap(s), 4 image id(s) missing" in t.describe()


def test_duplicates_and_stale_ids_are_never_written():
    t = GapTracker("record")
    assert [t.check(i, 0) for i in (1, 2, 2, 1, 3)] == [WRITE, WRITE, SKIP, SKIP, WRITE]
    assert t.n_not_forward == 2 and t.last_id == 3


def test_fail_mode_fails_at_the_first_problem_and_says_why():
    t = GapTracker("fail")
    assert t.check(1, 0) == WRITE and t.check(3, 0) == FAIL
    assert "1 missing between 1 and 3" in t.problem
    t = GapTracker("fail")
    assert t.check(1, 0) == WRITE and t.check(2, 1) == FAIL
    assert "status 1 (missing_packets)" in t.problem
    t = GapTracker("fail")
    assert t.check(4, 0) == WRITE and t.check(4, 0) == FAIL


@given(st.lists(st.tuples(st.integers(0, 50), st.integers(0, 2)), max_size=60))
def test_written_ids_strictly_increase_and_counts_add_up(images):
    t = GapTracker("record")
    written = [i for i, s in images if t.check(i, s) == WRITE]
    assert written == sorted(set(written))
    assert t.n_not_forward == len(images) - len(written)
    assert t.n_missing == sum(b - a - 1 for a, b in zip(written, written[1:], strict=False))
