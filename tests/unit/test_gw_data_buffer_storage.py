"""The data directory and its state on a real filesystem and a real SQLite file."""

import json
import os

import pytest

from socs_agents.agents.gw_data_buffer import rules
from socs_agents.agents.gw_data_buffer.storage import (
    DataStore,
    StorageError,
    stage_chunk,
)


def body(n=4, t0=1126259452.0, seed=1.0):
    return json.dumps({"h": [seed * (k + 1) * 1e-21 for k in range(n)], "t": [t0, 1 / 4096]})


@pytest.fixture
def paths(tmp_path):
    return {
        "data_dir": str(tmp_path / "vol" / "datavar"),
        "archive_dir": str(tmp_path / "vol" / "archive"),
        "state_db": str(tmp_path / "state" / "gw.db"),
    }


def open_store(paths, max_size=1000):
    return DataStore(max_size=max_size, **paths)


def write(store, raw):
    return store.commit(stage_chunk(raw.encode(), store.staging_dir))


def listing(folder):
    return sorted(n for n in os.listdir(folder))


def test_commit_stores_the_exact_chunk_and_counts_it(paths):
    store = open_store(paths)
    raw = body()
    result = write(store, raw)
    assert result.stored and rules.CHUNK_NAME.match(result.name)
    path = os.path.join(store.data_dir, result.name)
    with open(path) as f:
        assert json.load(f) == json.loads(raw)
    assert result.size == os.path.getsize(path)
    assert (store.counts.n_itm, store.counts.buff_size) == (1, result.size)
    assert listing(store.staging_dir) == []  # the staged file is gone
    names = [write(store, body(seed=2.0)).name for _ in range(5)]
    assert names == sorted(names) and len(set(names)) == 5
    assert store.list_names() == listing(store.data_dir)


def test_bad_body_leaves_nothing(paths):
    store = open_store(paths)
    with pytest.raises(rules.BadInput):
        stage_chunk(b'{"h": [NaN], "t": [0, 1]}', store.staging_dir)
    assert listing(store.data_dir) == [] and listing(store.staging_dir) == []
    assert store.counts.n_itm == 0


def test_train_freezes_at_max_size_and_nothing_is_stored_after(paths):
    store = open_store(paths, max_size=150)
    w = write(store, body())
    assert w.size < 150
    result = store.train("airflow", rules.token_hash("airflow"))
    assert not result.frozen and not store.counts.frozen
    w2 = write(store, body(seed=3.0))
    result = store.train("airflow", None)
    assert result.frozen and result.newly
    assert (result.n_f, result.bt_wrt) == (2, w.size + w2.size)
    staged = stage_chunk(body().encode(), store.staging_dir)
    assert not store.commit(staged).stored
    assert not os.path.exists(staged.tmp_path)
    assert len(listing(store.data_dir)) == 2
    # again while frozen: FROZEN, same figures, the first user kept
    again = store.train("someone-else", None)
    assert again.frozen and not again.newly and again.n_f == 2
    assert store.state()["user"] == "airflow"


def test_state_survives_reopening_and_counters_are_recounted(paths):
    store = open_store(paths, max_size=1)
    write(store, body())
    store.train("airflow", rules.token_hash("tok"))
    store.close()  # as after kill -9: the state is in SQLite, the files in the folder
    data_dir = paths["data_dir"]
    with open(os.path.join(data_dir, "foreign.json"), "w") as f:
        f.write('{"h": [1.0], "t": [0, 1]}')
    os.makedirs(os.path.join(data_dir, "subdir"))
    with open(os.path.join(data_dir, ".hidden"), "w") as f:
        f.write("x")
    staging = os.path.join(os.path.dirname(data_dir), ".gwb-staging")
    with open(os.path.join(staging, ".gwb.deadbeef.part"), "w") as f:
        f.write('{"h": [')  # a write interrupted by kill -9
    store = open_store(paths, max_size=1)
    assert store.counts.frozen and store.state()["user"] == "airflow"
    assert store.freeze.token_sha256 == rules.token_hash("tok")
    sizes = sum(
        os.path.getsize(os.path.join(data_dir, n))
        for n in os.listdir(data_dir)
        if not n.startswith(".") and os.path.isfile(os.path.join(data_dir, n))
    )
    assert (store.counts.n_itm, store.counts.buff_size) == (2, sizes)
    assert os.listdir(staging) == []


def test_clean_twice_in_one_second_archives_both(paths):
    store = open_store(paths, max_size=1)
    write(store, body())
    write(store, body(seed=2.0))
    store.train("airflow", None)
    first = store.clean()
    assert first.before == {"n_itm": 2, "buff_size": first.archive["bytes"], "dstatus": "FROZEN"}
    write(store, body(seed=4.0))
    second = store.clean()
    third = store.clean()  # an empty batch archives too
    names = [a.archive["name"] for a in (first, second, third)]
    assert len(set(names)) == 3 and not any(" " in n for n in names)
    assert listing(paths["archive_dir"]) == sorted(names)
    assert [a.archive["files"] for a in (first, second, third)] == [2, 1, 0]
    assert len(listing(first.archive["path"])) == 2
    assert store.counts.n_itm == 0 and not store.counts.frozen
    assert store.state() == {"dstatus": "OPERATIONAL", "user": None, "frozen_since": None}
    assert [a["seq"] for a in store.archives()] == [3, 2, 1]
    assert write(store, body()).stored  # unfrozen


def test_failed_clean_changes_nothing(paths):
    store = open_store(paths, max_size=1)
    write(store, body())
    store.train("airflow", None)
    # the archive folder is gone and a file holds its name: the move must fail
    os.rmdir(paths["archive_dir"])
    with open(paths["archive_dir"], "w") as f:
        f.write("not a folder")
    with pytest.raises(StorageError) as e:
        store.clean()
    assert "moving" in str(e.value)
    assert store.counts.frozen and store.counts.n_itm == 1
    assert len(listing(paths["data_dir"])) == 1
    assert store.archives() == []


def test_archive_registration_marks(paths):
    store = open_store(paths, max_size=1)
    write(store, body())
    a = store.clean().archive
    assert [x["seq"] for x in store.unregistered_archives()] == [a["seq"]]
    store.mark_registered(a["seq"], "some error")
    assert store.archives()[0]["register_error"] == "some error"
    store.mark_registered(a["seq"])
    assert store.unregistered_archives() == [] and store.archives()[0]["registered"] is True


def test_preview_is_the_latest_chunk_and_survives_restart(paths):
    store = open_store(paths)
    write(store, body(n=10, seed=1.0))
    last = write(store, body(n=1000, seed=5.0))
    assert store.preview_name == last.name and len(store.preview) == 256
    store.close()
    store = open_store(paths)
    assert store.preview_name == last.name and len(store.preview) == 256


def test_staging_failure_is_a_storage_error(paths):
    store = open_store(paths)
    os.rmdir(store.staging_dir)
    with open(store.staging_dir, "w") as f:
        f.write("x")
    with pytest.raises(StorageError):
        stage_chunk(body().encode(), store.staging_dir)
    assert store.counts.n_itm == 0
