"""The writer engine with a real ZeroMQ stream on loopback, real HDF5 and SQLite files."""

import os

import h5py
import pytest

from socs_agents.agents.daq_writer.engine import TEMP_SUFFIX, Busy, EngineConfig, WriteEngine
from socs_agents.agents.daq_writer.outcomes import OutcomeStore
from socs_agents.agents.daq_writer.requests import RequestRefused, WriterLimits
from socs_agents.db import SupRsyncDB, md5_file
from socs_agents.dev.sim.detector import DetectorSimulator, expected_image
from socs_agents.dev.testing import free_port, wait_for

SHAPE = (16, 8)


@pytest.fixture
def url():
    return f"tcp://127.0.0.1:{free_port()}"


def make_engine(tmp_path, url, **kw):
    root = tmp_path / "data"
    root.mkdir(parents=True, exist_ok=True)
    store = OutcomeStore(str(tmp_path / "state.sqlite"))
    db = SupRsyncDB(str(tmp_path / "suprsync.db"))
    config = EngineConfig(url, WriterLimits(str(root), max_images=1000), **kw)
    engine = WriteEngine(config, store, db, archive="daq")
    engine.recover()
    return engine, root, store, db


def run(engine, *args, wait=20.0, **kw):
    acq = engine.start(*args, **kw)
    assert acq.done.wait(wait), "request did not end"
    return acq.outcome


def test_exact_next_n_images_in_order_registered_with_md5(tmp_path, url):
    engine, root, store, db = make_engine(tmp_path, url)
    with DetectorSimulator(url, SHAPE, "uint16", rate=500, start_id=7).start():
        out = run(engine, 20, str(root / "a.h5"), 5.0, "run-a")
    assert out["success"] and out["state"] == "completed" and out["n_written"] == 20
    with h5py.File(root / "a.h5") as h:
        ids = h["detector/image_id"][:].tolist()
        assert ids == list(range(ids[0], ids[0] + 20))
        for j, image_id in enumerate(ids):
            assert (
                h["detector/data"][j].tobytes()
                == expected_image(image_id, SHAPE, "uint16").tobytes()
            )
        assert h["detector"].attrs["run_id"] == "run-a"
    rows = wait_for(lambda: db.files(), 10, "the SupRsync row")
    assert rows[0]["local_md5sum"] == md5_file(str(root / "a.h5"))
    assert rows[0]["remote_path"] == "a.h5" and rows[0]["archive_name"] == "daq"
    assert not [n for n in os.listdir(root) if n.endswith(TEMP_SUFFIX)]
    wait_for(lambda: engine.status()["last"][0]["suprsync"], 5, "registration in the outcome")
    engine.shutdown()


def test_timeout_leaves_no_file(tmp_path, url):
    engine, root, *_ = make_engine(tmp_path, url)
    out = run(engine, 5, str(root / "t.h5"), 0.3, "r")
    assert out["state"] == "timeout" and not out["success"]
    assert "no image arrived within 0.3 s" in out["message"] and "no file written" in out["message"]
    assert os.listdir(root) == [n for n in os.listdir(root) if n.startswith(".daq")]
    assert not (root / "t.h5").exists()
    engine.shutdown()


def test_abort_keeps_a_valid_partial_file(tmp_path, url):
    engine, root, *_ = make_engine(tmp_path, url)
    with DetectorSimulator(url, SHAPE, "uint16", rate=200).start():
        acq = engine.start(1000, str(root / "p.h5"), 5.0, "r")
        wait_for(lambda: acq.n_written >= 5, 10, "a few images")
        engine.stop("aborted by the test")
        assert acq.done.wait(5)
    out = acq.outcome
    k = out["n_written"]
    assert (
        out["state"] == "aborted" and not out["success"] and "aborted by the test" in out["message"]
    )
    assert f"partial file {root / 'p.h5'} holds {k} images" in out["message"]
    with h5py.File(root / "p.h5") as h:
        g = h["detector"]
        assert g["data"].shape[0] == g["image_id"].shape[0] == g["status"].shape[0] == k
        assert g.attrs["state"] == "aborted" and g.attrs["n_images_written"] == k
    engine.shutdown()


def test_concurrent_request_refused_and_refusals_counted(tmp_path, url):
    engine, root, *_ = make_engine(tmp_path, url)
    acq = engine.start(5, str(root / "a.h5"), 2.0, "r")
    with pytest.raises(Busy) as e:
        engine.start(5, str(root / "b.h5"), 2.0, "r2")
    assert "a write is running" in str(e.value) and "not queued" in str(e.value)
    engine.stop("x")
    acq.done.wait(5)
    with pytest.raises(RequestRefused):
        engine.start(0, str(root / "b.h5"), 2.0, "r2")
    assert engine.status()["counters"]["refused"] == 2
    engine.shutdown()


def test_gaps_recorded_or_failing(tmp_path, url):
    engine, root, *_ = make_engine(tmp_path, url)
    with DetectorSimulator(url, SHAPE, "uint16", rate=300, gap_every=4, bad_status_every=5).start():
        out = run(engine, 12, str(root / "g.h5"), 5.0, "r")
    assert out["success"] and out["n_gaps"] >= 2 and out["n_bad_status"] >= 2
    assert "gap(s)" in out["message"]
    with h5py.File(root / "g.h5") as h:
        ids = h["detector/image_id"][:]
        assert (ids[1:] > ids[:-1]).all() and h["detector"].attrs["n_gaps"] == out["n_gaps"]
        assert sorted(set(h["detector/status"][:].tolist())) == [0, 1]
    engine.shutdown()
    engine, root, *_ = make_engine(tmp_path / "f", url, on_gap="fail")
    with DetectorSimulator(url, SHAPE, "uint16", rate=300, gap_every=4).start():
        out = run(engine, 12, str(root / "g.h5"), 5.0, "r")
    assert out["state"] == "failed" and "gap in image ids" in out["message"]
    assert "--on-gap fail" in out["message"] and out["n_written"] >= 1
    engine.shutdown()


def test_garbage_messages_are_skipped_and_counted(tmp_path, url):
    engine, root, *_ = make_engine(tmp_path, url)
    sim = DetectorSimulator(url, SHAPE, "uint16", rate=0)
    try:
        acq = engine.start(3, str(root / "x.h5"), 5.0, "r")

        def send():
            sim.send_raw([b"garbage"])
            sim.send_raw([b"\0" * 56, b"x"])
            sim.send_image(sim.next_id)
            sim.next_id += 1
            return acq.done.is_set()

        wait_for(send, 10, "the request to end", interval=0.02)
    finally:
        sim.close()
    assert acq.outcome["success"] and acq.outcome["n_bad_frames"] >= 2
    assert "not images skipped" in acq.outcome["message"]
    engine.shutdown()


def test_outcomes_survive_restart_and_interrupted_requests(tmp_path, url):
    engine, root, store, db = make_engine(tmp_path, url)
    run(engine, 1, str(root / "t.h5"), 0.1, "before")
    engine.shutdown()
    # A request cut short by kill -9: its row says writing, its temporary file remains.
    store.start({"run_id": "cut", "output_file": str(root / "cut.h5"), "state": "writing"}).result()
    (root / f".cut.h5.abcd{TEMP_SUFFIX}").write_bytes(b"half")
    store.close()
    db.close()
    engine, root, *_ = make_engine(tmp_path, url)
    last = engine.status()["last"]
    assert [d["run_id"] for d in last[:2]] == ["cut", "before"]
    assert last[0]["state"] == "interrupted" and "interrupted" in last[0]["message"]
    assert not (root / f".cut.h5.abcd{TEMP_SUFFIX}").exists()
    engine.shutdown()


def test_pull_socket_reads_a_push_source_without_loss(tmp_path, url):
    engine, root, *_ = make_engine(tmp_path, url, socket_type="pull")
    with DetectorSimulator(url, SHAPE, "uint16", rate=0, socket_type="push").start():
        out = run(engine, 200, str(root / "push.h5"), 5.0, "r")
    # PUSH waits for the reader: as fast as it can, and still no gap
    assert out["success"] and out["n_written"] == 200 and out["n_gaps"] == 0
    with h5py.File(root / "push.h5") as h:
        ids = h["detector/image_id"][:].tolist()
        assert ids == list(range(ids[0], ids[0] + 200))
    engine.shutdown()


def test_abort_before_any_image_leaves_no_file(tmp_path, url):
    engine, root, *_ = make_engine(tmp_path, url)
    acq = engine.start(5, str(root / "none.h5"), 30.0, "r")
    engine.stop("stopped early")
    assert acq.done.wait(5)
    out = acq.outcome
    assert out["state"] == "aborted" and out["n_written"] == 0
    assert "after 0 of 5 images; no file written" in out["message"]
    assert not (root / "none.h5").exists()
    assert not [n for n in os.listdir(root) if n.endswith(TEMP_SUFFIX)]
    engine.shutdown()
