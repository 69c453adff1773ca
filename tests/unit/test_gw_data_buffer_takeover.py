"""Switching over from the reference: its folders as it leaves them (built here, in its own
formats), the state taken over at the first start, counters recounted, the token kept as a
hash only, the reference's log left alone."""

import json
import os

import pytest

from socs_agents.agents.gw_data_buffer import rules, takeover
from socs_agents.agents.gw_data_buffer.service import BufferConfig, BufferService
from socs_agents.agents.gw_data_buffer.storage import DataStore, stage_chunk

TOKEN = "airflow-secret-token-4711"


def go_chunk(k: int) -> bytes:
    # Go's re-encoding: shortest float64, no spaces, 0 for 0.0
    return b'{"h":[1e-21,-2.5e-22,0,3.75e-22],"t":[%d.5,0.000244140625]}' % (1126259400 + k)


def reference_layout(root, dstatus="FROZEN", user="airflow", token=TOKEN, stat_desc=True):
    """What the reference leaves: data/datavar with gwb files (and an orphan of a refused
    body), an old archive beside it, appdata/adm and appdata/log."""
    data = root / "data" / "datavar"
    data.mkdir(parents=True)
    sizes = 0
    for k in range(3):
        raw = go_chunk(k)
        (data / f"gwb172417068860597{k:04d}.json").write_bytes(raw)
        sizes += len(raw)
    (data / "gwb1724170688609999999.json").write_bytes(b'{"h":null,"t":null}')
    (root / "data" / "Tue Aug 20 18:07").mkdir()
    adm = root / "appdata" / "adm"
    adm.mkdir(parents=True)
    if stat_desc:
        # the reference does not count the orphan
        (adm / "StatDesc.json").write_text(json.dumps({"n_itm": 3, "buff_size": sizes}))
    (adm / "Dsstat.json").write_text(json.dumps({"dstatus": dstatus, "user": user, "token": token}))
    log = root / "appdata" / "log"
    log.mkdir(parents=True)
    (log / "LogStream.json").write_text(
        "".join(
            json.dumps(
                {
                    "level": "info",
                    "id": 0,
                    "size": len(go_chunk(k)),
                    "name": f"gwb172417068860597{k:04d}.json",
                    "time": "2024-08-20T18:04:48+02:00",
                    "message": "Write file",
                }
            )
            + "\n"
            for k in range(3)
        )
    )
    return {"data": str(data), "adm": str(adm), "log": str(log / "LogStream.json")}


@pytest.fixture
def ref(tmp_path):
    return reference_layout(tmp_path / "ref")


def open_store(tmp_path, ref, reports=None, max_size=10**9):
    extra = (
        {"report": lambda level, text: reports.append((level, text))} if reports is not None else {}
    )
    return DataStore(
        data_dir=ref["data"],
        archive_dir=str(tmp_path / "ref" / "data" / "archive"),
        state_db=str(tmp_path / "state" / "gw.db"),
        max_size=max_size,
        reference_adm_dir=ref["adm"],
        **extra,
    )


def write(store, raw: bytes):
    return store.commit(stage_chunk(raw, store.staging_dir))


def test_a_frozen_reference_stays_frozen_with_its_user_and_only_a_hash_of_its_token(tmp_path, ref):
    reports = []
    log_before = open(ref["log"], "rb").read()
    store = open_store(tmp_path, ref, reports)
    assert store.freeze.frozen and store.freeze.user == "airflow"
    assert store.freeze.token_sha256 == rules.token_hash(TOKEN)
    assert store.freeze.since == pytest.approx(
        os.stat(os.path.join(ref["adm"], "Dsstat.json")).st_mtime
    )
    # counters equal the directory (the orphan included), the reference's are reported
    files = os.listdir(ref["data"])
    assert store.counts.n_itm == len(files) == 4
    assert store.counts.buff_size == sum(
        os.path.getsize(os.path.join(ref["data"], n)) for n in files
    )
    record = store.takeover
    assert record["dstatus"] == "FROZEN" and record["frozen_by"] == "airflow"
    assert record["token_kept_as_sha256"] is True
    assert record["reference_counts"]["n_itm"] == 3
    assert record["recounted"] == {"n_itm": 4, "buff_size": store.counts.buff_size}
    assert record["orphans"] == 1 and record["orphan_names"] == ["gwb1724170688609999999.json"]
    # one log line says what was taken over (a warning: there is an orphan), no token
    ((level, text),) = [r for r in reports if "took over" in r[1]]
    assert level == "warn" and "FROZEN" in text and "airflow" in text and "orphan" in text
    assert TOKEN not in repr(reports) and TOKEN not in json.dumps(record)
    # frozen: a write stores nothing; /train answers FROZEN with what the directory holds
    assert not write(store, b'{"h": [1.5], "t": [0.5, 0.25]}').stored
    result = store.train("someone", None)
    assert result.frozen and not result.newly and result.n_f == 4
    store.close()
    # the token is nowhere in clear in the state; the reference's log is left as it was
    assert TOKEN.encode() not in open(tmp_path / "state" / "gw.db", "rb").read()
    assert open(ref["log"], "rb").read() == log_before
    assert sorted(os.listdir(ref["data"])) == sorted(files)  # nothing moved or removed


def test_an_operational_reference_takes_writes_and_keeps_no_user(tmp_path):
    ref = reference_layout(tmp_path / "ref", dstatus="OPERATIONAL", user="databuf", token="databuf")
    store = open_store(tmp_path, ref)
    assert not store.freeze.frozen and store.freeze.user is None
    assert store.freeze.token_sha256 is None
    assert store.takeover["dstatus"] == "OPERATIONAL"
    assert store.takeover["token_kept_as_sha256"] is False
    before = store.counts.n_itm
    assert write(store, b'{"h": [1.5], "t": [0.5, 0.25]}').stored
    assert store.counts.n_itm == before + 1 == len(os.listdir(ref["data"]))
    store.close()


def test_the_state_is_taken_over_once_then_this_agent_s_own_state_rules(tmp_path, ref):
    store = open_store(tmp_path, ref)
    first = store.takeover
    store.clean()  # the batch is archived, the store unfrozen
    assert not store.freeze.frozen
    store.close()
    # the reference's files still say FROZEN: a restart must not freeze again
    reports = []
    store = open_store(tmp_path, ref, reports)
    assert not store.freeze.frozen
    assert store.takeover == first  # the record of the switch-over is kept
    assert not [r for r in reports if "took over" in r[1]]
    store.close()


def test_not_taken_over_when_this_agent_has_state_of_its_own(tmp_path, ref):
    own = reference_layout(tmp_path / "own", dstatus="OPERATIONAL")
    store = DataStore(
        data_dir=ref["data"],
        archive_dir=str(tmp_path / "archive"),
        state_db=str(tmp_path / "state" / "gw.db"),
        max_size=1,
    )
    store.train("ops", None)  # this agent froze it itself, before the option was given
    store.clean()
    store.close()
    reports = []
    store = open_store(tmp_path, own, reports)
    assert store.takeover is None and not store.freeze.frozen
    assert any(level == "warn" and "not taken over" in text for level, text in reports)
    store.close()


@pytest.mark.parametrize(
    "content",
    [None, b"", b"{oops", b"[]", b'{"dstatus": "MELTED"}', b'{"user": "x"}'],
)
def test_an_unreadable_reference_state_stops_the_start(tmp_path, ref, content):
    path = os.path.join(ref["adm"], "Dsstat.json")
    if content is None:
        os.unlink(path)
    else:
        with open(path, "wb") as f:
            f.write(content)
    with pytest.raises(takeover.TakeoverError, match="Dsstat.json"):
        open_store(tmp_path, ref)


def test_go_field_names_match_without_regard_to_case(tmp_path, ref):
    with open(os.path.join(ref["adm"], "Dsstat.json"), "w") as f:
        json.dump({"Dstatus": "FROZEN", "User": "airflow", "Token": TOKEN}, f)
    store = open_store(tmp_path, ref)
    assert store.freeze.frozen and store.freeze.user == "airflow"
    store.close()


@pytest.mark.parametrize("stat_desc", [None, b"{bad", b'{"n_itm": -1, "buff_size": 3}'])
def test_a_missing_or_bad_stat_desc_is_reported_and_the_directory_counted(tmp_path, stat_desc):
    ref = reference_layout(tmp_path / "ref", stat_desc=stat_desc is not None)
    if stat_desc is not None:
        with open(os.path.join(ref["adm"], "StatDesc.json"), "wb") as f:
            f.write(stat_desc)
    store = open_store(tmp_path, ref)
    assert store.freeze.frozen
    assert "StatDesc.json" in store.takeover["reference_counts"]["error"]
    assert store.counts.n_itm == 4
    assert "unreadable" in takeover.describe(store.takeover)
    store.close()


def test_the_takeover_is_in_the_stats(tmp_path, ref):
    service = BufferService(
        BufferConfig(
            data_dir=ref["data"],
            archive_dir=str(tmp_path / "archive"),
            state_db=str(tmp_path / "state" / "gw.db"),
            max_size=10**9,
            reference_adm_dir=ref["adm"],
        )
    )
    try:
        stats = service.stats()
        assert stats["dstatus"] == "FROZEN" and stats["frozen_by"] == "airflow"
        assert stats["takeover"]["recounted"]["n_itm"] == stats["n_itm"] == 4
        assert TOKEN not in json.dumps(stats)
    finally:
        service.stop()
