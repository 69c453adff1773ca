"""The manager's rules: fan-out answers and the monitoring precedence."""

from socs_agents.agents.visibility_manager.aggregate import (
    aggregate_monitoring,
    classify_direct,
    classify_exception,
    overall,
)


def test_classify_replies():
    assert classify_direct(
        {"success": True, "message": "pong", "data": {"response": "pong", "mode": "slow"}}
    ) == {"status": "success", "response": "pong"}
    assert classify_direct({"success": True, "message": "", "data": {"x": 1}}) == {
        "status": "success",
        "response": {"x": 1},
    }
    refused = (
        "The action requires credential level 2-ADVANCED but the client has only level 1-BASIC"
    )
    assert classify_direct({"success": False, "message": refused, "data": {}}) == {
        "status": "error",
        "response": refused,
    }
    assert classify_direct(
        {
            "success": False,
            "message": "Insufficient advanced notice: the start time ...",
            "data": {},
        }
    ) == {"status": "error", "response": "Insufficient advanced notice: the start time ..."}
    assert classify_exception("wamp.error.no_such_procedure", "", 5) == {
        "status": "timeout",
        "response": "no answer: not registered on the hub (agent not running)",
    }
    assert classify_exception("TimeoutError", "", 0.5) == {
        "status": "timeout",
        "response": "no answer within 0.5 s",
    }
    assert classify_exception("wamp.error.runtime_error", "boom", 5) == {
        "status": "error",
        "response": "wamp.error.runtime_error: boom",
    }


def test_overall_needs_every_pipeline():
    ok = {"status": "success", "response": "pong"}
    assert overall("ping", {"a": ok, "b": ok}) == (True, "ping: all 2 pipelines succeeded")
    assert overall(
        "start",
        {
            "a": ok,
            "c": {"status": "timeout", "response": ""},
            "b": {"status": "error", "response": "x"},
        },
    ) == (False, "start: 2 of 3 pipelines failed: b (error), c (timeout)")
    assert overall("ping", {}) == (False, "ping: no pipelines to send it to")


def report(summary="normal", op_type="idle", op_tag="", info="idle", received=100.0):
    return {
        "summary": summary,
        "info": info,
        "op_type": op_type,
        "op_tag": op_tag,
        "received": received,
    }


def test_precedence_stale_then_bad_then_warning_then_normal():
    ids = ["a", "b", "c"]
    reports = {
        "a": report(),
        "b": report("warning", info="disk 96% full"),
        "c": report("error", info="file write failed: x"),
    }
    r = aggregate_monitoring(ids, reports, 101.0, 120)
    assert (r["summary"], r["info"]) == ("error", "c=error: file write failed: x")
    reports["c"] = report("booting", info="starting up")
    assert aggregate_monitoring(ids, reports, 101.0, 120)["info"] == "c=booting: starting up"
    reports["c"] = report()
    r = aggregate_monitoring(ids, reports, 101.0, 120)
    assert (r["summary"], r["info"]) == ("warning", "b=disk 96% full")
    # A stale pipeline outranks everything, and one never heard of is stale.
    reports["a"] = report(received=100.0 - 121)
    r = aggregate_monitoring(ids + ["d"], reports, 101.0, 120)
    assert (r["summary"], r["info"]) == ("error", "2 pipelines have not updated in 120 s: a, d")
    assert r["pipelines"]["d"]["info"] == "never reported" and r["n_stale"] == 2
    assert aggregate_monitoring([], {}, 0, 120)["summary"] == "error"
    # Just after the manager started, a pipeline not heard from yet is booting, not stale.
    r = aggregate_monitoring(["a", "b"], {"a": report()}, 101.0, 120, started=90.0)
    assert (r["summary"], r["info"], r["n_stale"]) == ("error", "b=booting: no report yet", 0)
    r = aggregate_monitoring(["a", "b"], {"a": report(received=215)}, 215.0, 120, started=90.0)
    assert r["info"] == "1 pipeline has not updated in 120 s: b"


def test_normal_with_cleared_note_held_then_dropped():
    ids = ["a", "b"]
    stale = aggregate_monitoring(ids, {"a": report()}, 101.0, 120)
    assert stale["info"] == "1 pipeline has not updated in 120 s: b"
    r = aggregate_monitoring(ids, {"a": report(), "b": report()}, 102.0, 120, stale, 10)
    assert r["summary"] == "normal"
    assert r["info"] == (
        "all 2 pipelines normal (cleared: error: 1 pipeline has not updated in 120 s: b)"
    )
    again = aggregate_monitoring(ids, {"a": report(), "b": report()}, 105.0, 120, r, 10)
    assert again["info"] == r["info"]
    later = aggregate_monitoring(
        ids, {"a": report(received=112), "b": report(received=112)}, 112.5, 120, again, 10
    )
    assert later["info"] == "all 2 pipelines normal"


def test_op_type_and_tags():
    ids = ["a", "b", "c"]
    rec = {p: report(op_type="recording", op_tag=f"tag-{p}") for p in ids}
    r = aggregate_monitoring(ids, rec, 101.0, 120)
    assert (r["op_type"], r["op_tag"]) == ("recording", "tag-a; tag-b; tag-c")
    idle = {p: report() for p in ids}
    assert aggregate_monitoring(ids, idle, 101.0, 120)["op_type"] == "idle"
    mixed = dict(rec, b=report(), c=report(received=0))
    assert aggregate_monitoring(ids, mixed, 200.0, 150)["op_type"] == (
        "1 recording; 1 idle; 1 timed out"
    )
    waiting = dict(idle, a=report(op_type="waiting", op_tag="next"))
    assert aggregate_monitoring(ids, waiting, 101.0, 120)["op_type"] == (
        "0 recording; 1 waiting; 2 idle; 0 timed out"
    )
