"""Discovery against real files on disk: what may not be taken is refused and counted by
reason, an unchanged refused file is not counted again, and nothing stops the loop."""

import os

import pytest

from socs_agents.agents.file_orchestrator.discovery import Discovery
from socs_agents.dev.sim.dune import DuneWriter
from socs_agents.dev.testing import wait_for


class Sink:
    def __init__(self, fail=0):
        self.added, self.removed, self.refusals = [], [], []
        self.fail = fail

    def add(self, path, layout):
        if self.fail:
            self.fail -= 1
            raise RuntimeError("state busy")
        self.added.append(path)

    def refuse(self, reason, detail):
        self.refusals.append(reason)


def make(volume, sink, **kw):
    kw.setdefault("retry_timeout", -1)  # give up at the first failed read
    return Discovery(
        [str(volume)],
        ["*.hdf5"],
        added=sink.add,
        removed=sink.removed.append,
        on_refusal=sink.refuse,
        rescan_interval=0,
        **kw,
    )


@pytest.fixture
def volume(tmp_path):
    v = tmp_path / "vol"
    v.mkdir()
    return v


def test_each_bad_file_is_refused_by_reason(tmp_path, volume):
    good, _ = DuneWriter(str(volume / "run1"), run_number=1).write_file(records=2)
    # a link in the volume to a file outside it (a secret, a key): never read
    outside = tmp_path / "secret"
    outside.mkdir()
    secret, _ = DuneWriter(str(outside), run_number=9).write_file(records=1)
    os.symlink(secret, volume / "run1" / "link_run000009.hdf5")
    # a folder named like a file
    (volume / "dir_run000002.hdf5").mkdir()
    # not HDF5 at all
    (volume / "text_run000003.hdf5").write_bytes(b"hello, this is no HDF5 file\n" * 10)
    # a real HDF5 file cut in half
    whole, _ = DuneWriter(str(tmp_path / "w"), run_number=4).write_file(records=20)
    data = open(whole, "rb").read()
    (volume / "cut_run000004.hdf5").write_bytes(data[: len(data) // 2])
    # HDF5 without any record group
    import h5py

    with h5py.File(volume / "empty_run000005.hdf5", "w") as f:
        f.attrs["run_number"] = 5
    sink = Sink()
    d = make(volume, sink)
    d._scan()
    assert sink.added == [good]
    got = {k[len("refused_") :]: v for k, v in d.counters.items() if k.startswith("refused_")}
    assert got == {
        "outside_allowed_root": 1,
        "not_a_file": 1,
        "not_hdf5": 1,
        "truncated": 1,
        "not_record_file": 1,
    }
    assert sorted(sink.refusals) == sorted(got)
    # a second scan reads none of them again: nothing counted twice
    d._scan()
    assert sum(v for k, v in d.counters.items() if k.startswith("refused_")) == 5
    assert sink.added == [good]
    # a refused file that changes is looked at again (now a real record file)
    fixed, _ = DuneWriter(str(tmp_path / "w2"), run_number=3).write_file(records=1)
    os.replace(fixed, volume / "text_run000003.hdf5")
    d._scan()
    assert str(volume / "text_run000003.hdf5") in sink.added


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_an_unreadable_file_is_refused(volume):
    path, _ = DuneWriter(str(volume), run_number=1).write_file(records=1)
    os.chmod(path, 0)
    sink = Sink()
    d = make(volume, sink)
    d._scan()
    assert d.counters["refused_unreadable"] == 1 and sink.added == []


def test_a_file_the_state_cannot_take_now_is_tried_again(volume):
    path, _ = DuneWriter(str(volume), run_number=1).write_file(records=1)
    sink = Sink(fail=1)
    d = make(volume, sink)
    d._scan()
    assert sink.added == [] and d.counters["add_failed"] == 1 and path not in d.known
    d._scan()
    assert sink.added == [path] and path in d.known


def test_the_loop_survives_bad_files_and_failing_callbacks(tmp_path, volume):
    (volume / "text_run000003.hdf5").write_bytes(b"no")
    sink = Sink(fail=1)

    def removed(path):
        raise RuntimeError("state busy")

    d = Discovery(
        [str(volume)],
        ["*.hdf5"],
        added=sink.add,
        removed=removed,
        on_refusal=sink.refuse,
        rescan_interval=0,
        retry_timeout=0.2,
    )
    d.start()
    try:
        path, _ = DuneWriter(str(volume / "r"), run_number=1).write_file(records=1)
        wait_for(lambda: d.counters["add_failed"] == 1, 10, "the failed add")
        d.rescan()
        wait_for(lambda: path in sink.added, 10, "the file added at the next scan")
        # the rename's own event may come after the scan and add it once more (adding a
        # known file again is how appended records are taken; the state is idempotent)
        assert set(sink.added) == {path}
        os.remove(path)
        wait_for(lambda: d.counters["errors"] >= 1, 10, "the failing removal counted")
        assert path in d.known  # not forgotten: a later scan removes it
        # not HDF5: retried like a file its writer still holds, then refused, once
        wait_for(lambda: d.counters["refused_not_hdf5"] == 1, 10, "the text file refused")
        assert d.running and d._thread.is_alive()
    finally:
        d.stop()
    assert d._thread is None
