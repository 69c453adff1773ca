"""The recorder's request thread: outcomes in order, errors as failures, a clean stop."""

import threading

import pytest

from socs_agents.agents.visibility_recorder.request_thread import RequestThread


def in_thread(fire, value):
    fire(value)


def outcome(d):
    box = []
    d.addBoth(box.append)
    return box


def test_results_and_errors_come_back_in_order_from_the_thread():
    worker = RequestThread(deliver=in_thread)
    seen_threads = []

    def work(x):
        seen_threads.append(threading.current_thread().name)
        if x < 0:
            raise ValueError(f"negative: {x}")
        return x * 2

    boxes = [outcome(worker.submit(work, x)) for x in (1, -1, 3)]
    assert worker.stop(5)
    assert boxes[0] == [2] and boxes[2] == [6]
    failure = boxes[1][0]
    assert failure.check(ValueError) and "negative: -1" in str(failure.value)
    assert seen_threads == ["requests"] * 3


def test_stop_finishes_queued_requests_and_refuses_later_ones():
    worker = RequestThread(deliver=in_thread)
    gate = threading.Event()
    first = outcome(worker.submit(lambda _: gate.wait(5) and "first", None))
    second = outcome(worker.submit(lambda _: "second", None))
    stopper = threading.Thread(target=worker.stop, args=(5,))
    stopper.start()
    gate.set()
    stopper.join(5)
    assert first == ["first"] and second == ["second"]
    late = outcome(worker.submit(lambda _: "late", None))
    assert late[0].check(RuntimeError)
    with pytest.raises(RuntimeError, match="shutting down"):
        late[0].raiseException()
