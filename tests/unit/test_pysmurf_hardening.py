"""PysmurfMonitor hardening: hostile datagrams, allowed roots, bounds, journal and database
faults. Real files, real SQLite, real journal; faults injected at the syscall the journal
makes (a full disk cannot be made without root)."""

from __future__ import annotations

import errno
import json
import math
import os
import sqlite3

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from socs_agents.agents.pysmurf_monitor import journal as journal_module
from socs_agents.agents.pysmurf_monitor.journal import Journal
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
from socs_agents.agents.pysmurf_monitor.registrar import Registrar, RegistrarConfig
from socs_agents.agents.pysmurf_monitor.rules import (
    DEFAULT_RULES,
    plan_file,
    relative_rule,
    smurf_remote_path,
    tail_rule,
)
from socs_agents.db import BadFileEntry, SupRsyncDB
from socs_agents.db.entries import (
    AllowedRoots,
    RootedFiles,
    check_remote_path,
    md5_small_file_under,
)
from socs_agents.dev.sim.smurf import SmurfSimulator
from socs_agents.dev.testing import wait_for

PARSED = (FileAnnouncement, SessionMessage, MetadataMessage, Ignored, Rejected)
FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=30),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5)
    ),
    max_leaves=30,
)
FIELD_NAMES = ["path", "timestamp", "action", "action_ts", "plot", "format", "archive_name"]


def envelope(msg_type, payload, **extra) -> bytes:
    data = {"id": "crate1slot2", "type": msg_type, "payload": payload, "time": 1.7e9}
    data.update(extra)
    return json.dumps(data).encode()


def check_parsed(raw: bytes):
    parsed = parse_datagram(raw)
    assert isinstance(parsed, PARSED)
    if isinstance(parsed, Rejected):
        assert parsed.reason in REJECT_REASONS
    return parsed


# ---- datagrams: any bytes, any JSON, any depth -------------------------------------------


@FUZZ
@given(st.binary(max_size=2000))
def test_any_bytes_are_classified_never_raised(raw):
    check_parsed(raw)


@FUZZ
@given(json_values)
def test_any_json_shape_is_classified(value):
    check_parsed(json.dumps(value).encode())


@FUZZ
@given(
    st.sampled_from(["data_file", "g3_file", "metadata", "session_data", "log", "x"]),
    st.dictionaries(st.sampled_from(FIELD_NAMES + ["value"]), json_values, max_size=7),
    json_values,
)
def test_any_envelope_and_payload_is_classified_and_plans_safely(msg_type, payload, time):
    parsed = check_parsed(envelope(msg_type, payload, time=time))
    if isinstance(parsed, FileAnnouncement):
        try:
            planned = plan_file(parsed.payload, parsed.pub_id, parsed.archive, DEFAULT_RULES)
        except BadFileEntry:
            return
        assert planned.local_path.startswith("/")
        assert check_remote_path(planned.remote_path) == planned.remote_path
    if isinstance(parsed, MetadataMessage):
        assert math.isfinite(parsed.timestamp)


@pytest.mark.parametrize(
    "raw",
    [
        b"[" * MAX_DATAGRAM_BYTES,
        b"[" * 50_000 + b"]" * 10_000,
        (b'{"a":' * 20_000) + b"1" + b"}" * 20_000,
        envelope("data_file", {"path": "/x"}).replace(b'"/x"', b"[" * 30_000 + b"]" * 30_000),
    ],
)
def test_deeply_nested_json_is_refused_not_raised(raw):
    parsed = check_parsed(raw[:MAX_DATAGRAM_BYTES])
    assert isinstance(parsed, Rejected) and parsed.reason in ("too_deep", "bad_json", "oversize")


def test_datagram_sizes_up_to_the_udp_limit():
    assert check_parsed(b" " * 65_507).reason == "oversize"
    assert check_parsed(b"1" * 5000).reason == "bad_json"  # a number of 5,000 digits


SMURF_PAYLOAD = {
    "path": "/data/smurf_data/20231101/c/1700000000_tune/outputs/x.txt",
    "format": "txt",
    "timestamp": 1700000001.0,
    "action": "tune",
    "action_ts": 1700000000,
}


@pytest.mark.parametrize(
    "field, text",
    [
        ("timestamp", "NaN"),
        ("timestamp", "Infinity"),
        ("timestamp", "-Infinity"),
        ("timestamp", "1e400"),
        ("timestamp", "1" + "0" * 300),
        ("timestamp", "-5"),
        ("action_ts", "NaN"),
        ("action_ts", "1e999"),
    ],
)
def test_non_finite_or_absurd_numbers_in_file_fields_are_refused(field, text):
    raw = envelope("data_file", dict(SMURF_PAYLOAD, **{field: "@"})).replace(b'"@"', text.encode())
    parsed = check_parsed(raw)
    assert isinstance(parsed, Rejected) and parsed.reason == "non_finite", parsed


@pytest.mark.parametrize("text", ["NaN", "Infinity", "1e400", "1" + "0" * 400])
def test_non_finite_metadata_time_is_refused(text):
    raw = envelope("metadata", {"path": "p", "value": 1}, time="@").replace(b'"@"', text.encode())
    parsed = check_parsed(raw)
    assert isinstance(parsed, Rejected) and parsed.reason == "non_finite"


# ---- remote-path rules -------------------------------------------------------------------

path_text = st.lists(
    st.sampled_from(list("ab/._- \t\n0123456789") + ["..", "/..", "\x00", "é"]), max_size=20
).map("".join)


@FUZZ
@given(path_text, st.integers(1, 5), path_text)
def test_remote_rules_never_leave_the_archive(local, n, base):
    local = "/" + local
    rules = [tail_rule(n), relative_rule("/" + base.strip("/") if base.strip("/") else "/b")]
    for rule in rules:
        try:
            remote = check_remote_path(rule(local, {}, "c"), local)
        except BadFileEntry:
            continue
        assert not remote.startswith("/") and ".." not in remote.split("/")


@FUZZ
@given(json_values, json_values, json_values, st.text(max_size=20))
def test_smurf_remote_path_is_safe_or_refused(ts, action, action_ts, pub):
    payload = {"timestamp": ts, "action": action, "action_ts": action_ts}
    try:
        remote = check_remote_path(smurf_remote_path("/d/x.txt", payload, pub), "/d/x.txt")
    except BadFileEntry:
        return
    assert not remote.startswith("/") and ".." not in remote.split("/")


# ---- allowed roots -----------------------------------------------------------------------


@pytest.fixture
def sim(tmp_path):
    s = SmurfSimulator(str(tmp_path / "smurf_data"), port=9)
    yield s
    s.close()


@pytest.fixture
def db(tmp_path):
    d = SupRsyncDB(str(tmp_path / "db" / "suprsync.db"), busy_timeout_ms=100)
    yield d
    d.close()


def make(db, tmp_path, roots=None, journal=True, **cfg):
    j = Journal(str(tmp_path / "journal")) if journal else None
    reports = []
    reg = Registrar(
        db,
        j,
        config=RegistrarConfig(**cfg),
        report=lambda level, text: reports.append((level, text)),
        allowed_roots=AllowedRoots(roots) if roots else None,
    )
    reg.reports = reports
    return reg


def secret_and_link(tmp_path, sim):
    """A secret file outside the root and a link inside the root pointing to it, both
    announced as the publisher would."""
    secret = tmp_path / "home" / "id_rsa"
    secret.parent.mkdir()
    secret.write_bytes(b"-----BEGIN PRIVATE KEY-----\n")
    _, dg = sim.data_file(fmt="txt")
    inside = os.path.join(sim.root, "17000", "link_to_key.txt")
    os.makedirs(os.path.dirname(inside), exist_ok=True)
    os.symlink(secret, inside)
    payload = json.loads(dg)["payload"]
    return [
        sim.envelope("data_file", dict(payload, path=str(secret))),
        sim.envelope("data_file", dict(payload, path=inside)),
        sim.envelope("g3_file", {"path": str(secret), "archive_name": "timestreams"}),
    ]


def test_files_outside_the_allowed_root_are_refused_counted_never_rows(db, sim, tmp_path):
    reg = make(db, tmp_path, roots=[sim.root])
    reg.start()
    good = sim.files(3, g3_every=0)
    reg.submit_many([parse_datagram(d) for d in secret_and_link(tmp_path, sim)])
    reg.submit_many([parse_datagram(dg) for _, dg in good])
    assert reg.drain(10)
    reg.stop()
    assert reg.rejected["outside_allowed_root"] == 3
    paths = {r["local_path"] for r in db.files(limit=None)}
    assert paths == {p for p, _ in good}
    assert not any("id_rsa" in p or "link_to_key" in p for p in paths)
    assert any("outside_allowed_root" in text for _, text in reg.reports)


def test_the_database_refuses_rows_outside_its_roots_whatever_the_caller(tmp_path, sim):
    from socs_agents.db import make_entry

    root = sim.root
    ((path, _),) = sim.files(1, g3_every=0)
    secret = tmp_path / "secret.txt"
    secret.write_text("x")
    link = os.path.join(root, "link.txt")
    os.symlink(secret, link)
    db = SupRsyncDB(str(tmp_path / "r.db"), allowed_roots=AllowedRoots([root]))
    rows = [
        (path, "a" * 32, "smurf", "17000/a", 1.0, True),
        (str(secret), "b" * 32, "smurf", "17000/b", 1.0, True),
        (root + "/../secret.txt", "c" * 32, "smurf", "17000/c", 1.0, True),
    ]
    result = db.add_rows(rows)
    assert (result.inserted, result.refused) == (1, 2)
    added = db.add_files(
        [make_entry(link, "17000/l", "smurf"), make_entry(str(secret), "17000/s", "smurf")]
    )
    assert len(added.refused) == 2 and not added.inserted
    assert [r["local_path"] for r in db.files(limit=None)] == [path]
    db.close()


def test_a_fifo_inside_the_root_is_refused_without_blocking(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    fifo = root / "pipe"
    os.mkfifo(fifo)
    with pytest.raises(BadFileEntry) as info:
        md5_small_file_under(str(fifo), 1 << 20, RootedFiles(AllowedRoots([str(root)])))
    assert info.value.code == "bad_path"


def test_real_path_is_what_the_row_carries(tmp_path):
    real_root = tmp_path / "disk" / "smurf_data"
    real_root.mkdir(parents=True)
    (real_root / "f.txt").write_bytes(b"abc")
    os.symlink(real_root, tmp_path / "smurf_data")  # /data -> /mnt/disk style
    files = RootedFiles(AllowedRoots([str(tmp_path / "smurf_data")]))
    md5, real = md5_small_file_under(str(tmp_path / "smurf_data" / "f.txt"), 1 << 20, files)
    assert real == str(real_root / "f.txt") and md5 == "900150983cd24fb0d6963f7d28e17f72"
    # A link as the last component, inside the root and pointing inside it, is fine; one
    # pointing out is not, even in a folder already checked.
    os.symlink(real_root / "f.txt", real_root / "inside.txt")
    assert md5_small_file_under(str(real_root / "inside.txt"), 1 << 20, files)[1] == real
    (tmp_path / "outside.txt").write_bytes(b"secret")
    os.symlink(tmp_path / "outside.txt", real_root / "out.txt")
    with pytest.raises(BadFileEntry) as info:
        md5_small_file_under(str(real_root / "out.txt"), 1 << 20, files)
    assert info.value.code == "outside_allowed_root"
    files.close()


def test_a_folder_replaced_by_a_link_out_of_the_root_is_refused(tmp_path):
    root = tmp_path / "smurf_data"
    (root / "d").mkdir(parents=True)
    (root / "d" / "f.txt").write_bytes(b"abc")
    files = RootedFiles(AllowedRoots([str(root)]), ttl=0.0)
    assert md5_small_file_under(str(root / "d" / "f.txt"), 1 << 20, files)[1].endswith("d/f.txt")
    os.rename(root / "d", tmp_path / "moved")
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "f.txt").write_bytes(b"secret")
    os.symlink(tmp_path / "elsewhere", root / "d")
    with pytest.raises(BadFileEntry) as info:
        md5_small_file_under(str(root / "d" / "f.txt"), 1 << 20, files)
    assert info.value.code == "outside_allowed_root"
    files.close()


# ---- bounds ------------------------------------------------------------------------------


def test_over_max_pending_is_refused_and_counted_not_dropped_silently(db, sim, tmp_path):
    reg = make(db, tmp_path, max_pending=5, backoff_max=0.05)
    reg.start()
    locker = sqlite3.connect(db.db_path, isolation_level=None)
    locker.execute("BEGIN IMMEDIATE")
    files = sim.files(8, g3_every=0)
    refused = reg.submit_many([parse_datagram(dg) for _, dg in files])
    assert refused == 3 and reg.rejected["over_max_pending"] == 3 and reg.pending() == 5
    assert any("over_max_pending" in text for _, text in reg.reports)
    locker.execute("ROLLBACK")
    locker.close()
    assert reg.drain(10)
    reg.stop()
    assert [r["local_path"] for r in db.files(limit=None, newest_first=False)] == [
        p for p, _ in files[:5]
    ]


# ---- journal and database faults ---------------------------------------------------------


def failing_write(monkeypatch, failing: list):
    """The journal's ``os.write`` raises ENOSPC while ``failing[0]`` is true."""
    real_write = os.write

    def write(fd, data):
        if failing[0]:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(journal_module.os, "write", write)


def test_journal_write_failure_keeps_registering_and_catches_up_in_order(
    db, sim, tmp_path, monkeypatch
):
    failing = [True]
    failing_write(monkeypatch, failing)
    reg = make(db, tmp_path, backoff_max=0.05)
    reg.start()
    locker = sqlite3.connect(db.db_path, isolation_level=None)
    locker.execute("BEGIN IMMEDIATE")  # files stay pending: they must reach the journal
    files = sim.files(30, g3_every=0)
    for i in range(0, 30, 10):
        reg.submit_many([parse_datagram(dg) for _, dg in files[i : i + 10]])  # never raises
    assert reg.journal_error and "No space" in reg.journal_error
    assert reg.counters["journal_errors"] >= 1 and reg.journal_backlog == 3
    assert reg.retry_journal() is False  # still failing: kept in memory
    failing[0] = False
    assert reg.retry_journal() is True and not reg.journal_error
    # Journaled in arrival order.
    (segment,) = os.listdir(tmp_path / "journal")
    with open(tmp_path / "journal" / segment, "rb") as f:
        lines = [json.loads(line)["payload"]["path"] for line in f]
    announced = [json.loads(dg)["payload"]["path"] for _, dg in files]
    assert lines == announced
    # What the journal now holds survives a kill: a new run replays it once the lock goes.
    reg._inbox.close()  # the registration thread ends without writing (database locked)
    reg._thread.join(5)
    os.close(reg.journal._fd)
    locker.execute("ROLLBACK")
    locker.close()
    again = make(db, tmp_path)
    again.start()
    assert again.counters["replayed"] == 30 and again.drain(10)
    again.stop()
    assert [r["local_path"] for r in db.files(limit=None, newest_first=False)] == [
        p for p, _ in files
    ]


def test_journal_failure_with_a_working_database_loses_nothing(db, sim, tmp_path, monkeypatch):
    failing = [True]
    failing_write(monkeypatch, failing)
    reg = make(db, tmp_path)
    reg.start()
    files = sim.files(10, g3_every=0)
    reg.submit_many([parse_datagram(dg) for _, dg in files])
    assert reg.drain(10) and db.count() == 10
    assert reg.retry_journal() is True and not reg.journal_backlog, "settled: nothing to journal"
    reg.stop()


def test_replay_interrupted_at_any_point_loses_nothing(db, sim, tmp_path):
    dead = make(db, tmp_path)  # never started: like a process killed before writing
    files = sim.files(12, g3_every=0)
    dead.submit_many([parse_datagram(dg) for _, dg in files[:6]])
    dead.submit_many([parse_datagram(dg) for _, dg in files[6:]])
    os.close(dead.journal._fd)
    before = sorted(os.listdir(tmp_path / "journal"))
    locker = sqlite3.connect(db.db_path, isolation_level=None)
    locker.execute("BEGIN IMMEDIATE")
    second = make(db, tmp_path, backoff_max=0.05)
    second.start()  # replays, cannot write
    wait_for(lambda: second.degraded, 10, "the replay to hit the lock")
    assert sorted(os.listdir(tmp_path / "journal")) == before, "segments kept while unsettled"
    second._inbox.close()  # killed mid-replay
    second._thread.join(5)
    os.close(second.journal._fd) if second.journal._fd is not None else None
    locker.execute("ROLLBACK")
    locker.close()
    third = make(db, tmp_path)
    third.start()
    assert third.counters["replayed"] == 12 and third.drain(10)
    third.stop()
    assert sorted(r["local_path"] for r in db.files(limit=None)) == sorted(p for p, _ in files)
    assert os.listdir(tmp_path / "journal") == [], "settled segments are removed"


def test_unwritable_database_marks_degraded_then_catches_up_in_order(
    db, sim, tmp_path, monkeypatch
):
    reg = make(db, tmp_path, backoff_max=0.05)
    real_add_rows = db.add_rows
    calls = []

    def read_only_for_a_while(rows):
        calls.append(len(rows))
        if len(calls) <= 3:
            raise sqlite3.OperationalError("attempt to write a readonly database")
        return real_add_rows(rows)

    monkeypatch.setattr(db, "add_rows", read_only_for_a_while)
    reg.start()
    files = sim.files(20, g3_every=0)
    reg.submit_many([parse_datagram(dg) for _, dg in files])
    wait_for(lambda: reg.degraded or len(calls) > 3, 10, "a failed write")
    assert reg.drain(10) and not reg.degraded
    reg.stop()
    assert reg.counters["db_errors"] == 3 and "readonly" in reg.last_error
    assert [r["local_path"] for r in db.files(limit=None, newest_first=False)] == [
        p for p, _ in files
    ]
    assert reg.journal.syncs >= 1, "files that wait are fsynced in the journal"
