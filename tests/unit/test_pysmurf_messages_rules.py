"""Datagram parsing and file rules of the PysmurfMonitor: every rule, every bad-input reason."""

import json

import pytest

from socs_agents.agents.pysmurf_monitor.messages import (
    MAX_DATAGRAM_BYTES,
    REJECT_REASONS,
    FileAnnouncement,
    Ignored,
    MetadataMessage,
    Rejected,
    SessionMessage,
    parse_datagram,
)
from socs_agents.agents.pysmurf_monitor.rules import (
    parse_archive_rule,
    plan_file,
    smurf_deletable,
    smurf_remote_path,
)
from socs_agents.db import BadFileEntry


def dg(msg_type="data_file", payload=None, **env):
    data = {
        "host": "h",
        "id": "crate1slot2",
        "script": "s",
        "time": 1700000000.5,
        "seq_no": 1,
        "type": msg_type,
        "payload": payload,
    }
    data.update(env)
    return json.dumps(data).encode()


SMURF = {
    "path": "/data/smurf_data/20231101/crate1slot2/1700000000/outputs/1700000001_tune",
    "type": "tune",
    "format": "npy",
    "timestamp": 1700000001.25,
    "action": "tune_band",
    "action_ts": 1700000000,
    "plot": False,
    "pysmurf_version": "8",
}


def test_data_file_is_an_announcement_in_smurf():
    p = parse_datagram(dg(payload=SMURF))
    assert isinstance(p, FileAnnouncement) and p.archive == "smurf" and p.pub_id == "crate1slot2"


def test_g3_file_defaults_to_timestreams():
    p = parse_datagram(
        dg("g3_file", {"path": "/data/so/timestreams/17000/s/1.g3"}, id="STREAMER:s")
    )
    assert isinstance(p, FileAnnouncement) and p.archive == "timestreams"


@pytest.mark.parametrize("t", ["session_data", "session_log"])
def test_session_messages_keep_the_whole_datagram(t):
    p = parse_datagram(dg(t, {"x": 1} if t == "session_data" else "text"))
    assert isinstance(p, SessionMessage) and p.data["type"] == t and p.data["seq_no"] == 1


def test_metadata_stream_id_and_time():
    p = parse_datagram(
        dg("metadata", {"path": "A.B", "value": 3, "type": "int"}, id="STREAMER:crate1slot2")
    )
    assert p == MetadataMessage("crate1slot2", "A.B", 3, 1700000000.5)
    p = parse_datagram(dg("metadata", {"path": "A", "value": 3}, id="unidentified"))
    assert p.stream_id == "unidentified"


@pytest.mark.parametrize("t", ["start", "stop", "log", "general"])
def test_no_file_types_are_ignored(t):
    assert parse_datagram(dg(t, {})) == Ignored(t)


@pytest.mark.parametrize(
    "raw,reason",
    [
        (b"x" * (MAX_DATAGRAM_BYTES + 1), "oversize"),
        (b"\xff\xfe{}", "not_utf8"),
        (b"{not json", "bad_json"),
        (b"[1, 2]", "not_object"),
        (json.dumps({"type": "data_file", "payload": {}}).encode(), "missing_field"),
        (json.dumps({"id": "a", "payload": {}}).encode(), "missing_field"),
        (json.dumps({"id": "a", "type": "data_file"}).encode(), "missing_field"),
        (json.dumps({"id": 3, "type": "data_file", "payload": {}}).encode(), "wrong_type"),
        (dg("data_file", "not an object"), "wrong_type"),
        (dg("data_file", {"format": "npy"}), "missing_field"),
        (dg("data_file", {"path": 5}), "wrong_type"),
        (dg("data_file", dict(SMURF, archive_name=3)), "wrong_type"),
        (dg("data_file", {k: v for k, v in SMURF.items() if k != "action"}), "missing_action"),
        (dg("data_file", {k: v for k, v in SMURF.items() if k != "action_ts"}), "missing_action"),
        (dg("data_file", {k: v for k, v in SMURF.items() if k != "timestamp"}), "missing_field"),
        (dg("data_file", dict(SMURF, timestamp="soon")), "wrong_type"),
        (dg("data_file", dict(SMURF, action=["x"])), "wrong_type"),
        (dg("metadata", {"path": "a"}), "missing_field"),
        (dg("metadata", {"path": 1, "value": 1}), "wrong_type"),
        (dg("metadata", ["x"]), "wrong_type"),
        (dg("metadata", {"path": "a", "value": 1}, time="later"), "wrong_type"),
        (dg("surprise", {}), "unknown_type"),
    ],
)
def test_bad_datagrams_are_rejected_with_a_reason(raw, reason):
    p = parse_datagram(raw)
    assert isinstance(p, Rejected) and p.reason == reason and p.reason in REJECT_REASONS
    assert p.detail


def test_a_64000_byte_datagram_is_accepted():
    payload = dict(SMURF, pad="x" * 10)
    raw = dg(payload=payload)
    raw = dg(payload=dict(payload, pad="x" * (MAX_DATAGRAM_BYTES - len(raw) + 10)))
    assert len(raw) == MAX_DATAGRAM_BYTES
    assert isinstance(parse_datagram(raw), FileAnnouncement)


def test_smurf_remote_path_matches_reference():
    assert (
        smurf_remote_path(SMURF["path"] + ".npy", SMURF, "crate1slot2")
        == "17000/crate1slot2/1700000000_tune_band/outputs/1700000001_tune.npy"
    )
    assert smurf_remote_path("/a/b.png", dict(SMURF, plot=True), "p").split("/")[3] == "plots"


def test_npy_suffix_appended_once():
    assert plan_file(SMURF, "c", "smurf").local_path.endswith("_tune.npy")
    already = dict(SMURF, path=SMURF["path"] + ".npy")
    assert plan_file(already, "c", "smurf").local_path.endswith("_tune.npy")
    txt = dict(SMURF, path="/data/smurf_data/1/c/x.txt", format="txt")
    assert plan_file(txt, "c", "smurf").local_path.endswith("x.txt")


def test_timestreams_take_last_three_components():
    p = plan_file(
        {"path": "/data/so/timestreams/17000/crate1slot2/1700000000_000.g3"},
        "STREAMER:x",
        "timestreams",
    )
    assert p.remote_path == "17000/crate1slot2/1700000000_000.g3" and p.deletable


@pytest.mark.parametrize(
    "path,deletable",
    [
        ("/data/smurf_data/20231101/c/1700000000_take_noise/outputs/n.npy", True),
        ("/data/smurf_data/20231101/c/1700000000_take_noise/outputs/archive_drive.txt", True),
        ("/data/smurf_data/20231101/c/1700000000_take_noise/outputs/privileged.txt", True),
        ("/data/smurf_data/20231101/c/1700000000_take_iv/outputs/a.npy", False),
        ("/data/smurf_data/20231101/c/1/outputs/1700000000_iv_info.npy", False),
        ("/data/smurf_data/20231101/c/1/outputs/1700000000_tune.npy", False),
        ("/data/smurf_data/20231101/c/1/outputs/1700000000_channel_assignment_b0.txt", False),
        ("/data/smurf_data/20231101/c/1/outputs/channelassignment.txt", True),
        ("/data/smurf_data/20231101/c/1/outputs/Channel-Assignment.TXT", False),
        ("/data/smurf_data/20231101/c/1/outputs/1700000000_IV.npy", False),
        ("/data/smurf_data/20231101/c/1/outputs/tuned.npy", True),
        ("/data/smurf_data/20231101/c/1/channel/assignment.txt", True),
        ("/data/smurf_data/tune/c/x.npy", False),
        ("/data/smurf_data/sessions/x.npy", False),
        ("/x.npy", False),
    ],
)
def test_deletable_by_path_component_words(path, deletable):
    assert smurf_deletable(path) is deletable


@pytest.mark.parametrize(
    "payload,archive,pub,code",
    [
        (dict(SMURF, path="relative/x"), "smurf", "c", "relative_path"),
        (dict(SMURF, path="/data/../etc/x"), "smurf", "c", "dotdot_path"),
        (SMURF, "smurf", "../..", "bad_remote_path"),
        (SMURF, "smurf", "a/b", "bad_remote_path"),
        (dict(SMURF, action="../x"), "smurf", "c", "bad_remote_path"),
        (dict(SMURF, action="take noise"), "smurf", "c", "bad_remote_path"),
        ({"path": "/x.g3"}, "timestreams", "c", "bad_remote_path"),
        (SMURF, "nosuch", "c", "unknown_archive"),
    ],
)
def test_plan_refuses_bad_paths(payload, archive, pub, code):
    with pytest.raises(BadFileEntry) as err:
        plan_file(payload, pub, archive)
    assert err.value.code == code


def test_extra_archive_rules():
    name, rule = parse_archive_rule("hk=relative:/data/hk")
    rules = {name: rule}
    assert plan_file({"path": "/data/hk/17000/a.g3"}, "p", "hk", rules).remote_path == "17000/a.g3"
    with pytest.raises(BadFileEntry, match="not inside"):
        plan_file({"path": "/data/other/a.g3"}, "p", "hk", rules)
    with pytest.raises(BadFileEntry, match="not inside"):
        plan_file({"path": "/data/hkx/a.g3"}, "p", "hk", rules)
    name, rule = parse_archive_rule("aux=tail:2")
    assert plan_file({"path": "/a/b/c/d"}, "p", "aux", {name: rule}).remote_path == "c/d"
    for bad in ["nope", "x=tail:0", "x=relative:rel", "x=other:1", "bad name=tail:1"]:
        with pytest.raises(ValueError, match="--archive"):
            parse_archive_rule(bad)
