"""Every refusal of a write request, decided before anything touches the disk."""

import os

import pytest
from hypothesis import given
from hypothesis import strategies as st

from socs_agents.agents.daq_writer.requests import RequestRefused, WriterLimits, check_request

GB = 1 << 30


def limits(root, **kw):
    return WriterLimits(data_root=str(root), max_images=1000, reserve_bytes=0, **kw)


def refused(root, *args, free=100 * GB, image_bytes=1000, **kw):
    before = sorted(os.listdir(root))
    with pytest.raises(RequestRefused) as e:
        check_request(*args, limits(root, **kw), image_bytes, free_bytes=lambda p: free)
    assert sorted(os.listdir(root)) == before, "a refusal touched the disk"
    return e.value


def test_a_good_request(tmp_path):
    r = check_request(5, str(tmp_path / "a.h5"), 2.0, "r1", limits(tmp_path))
    assert (r.n_images, r.output_file, r.timeout, r.run_id) == (
        5,
        str(tmp_path / "a.h5"),
        2.0,
        "r1",
    )
    assert check_request(5, str(tmp_path / "b.h5"), 2, None, limits(tmp_path)).run_id


@pytest.mark.parametrize("n", [0, -5, 1.5, "3", True, None])
def test_n_images_below_one_or_not_an_int(tmp_path, n):
    e = refused(tmp_path, n, str(tmp_path / "a.h5"), 1.0, "r")
    assert e.code == "bad_n_images" and ">= 1" in e.reason


def test_n_images_above_max(tmp_path):
    e = refused(tmp_path, 1001, str(tmp_path / "a.h5"), 1.0, "r")
    assert e.code == "too_many_images" and "--max-images" in e.reason


@pytest.mark.parametrize("timeout", [0, -1, 1e9, "x", None, True])
def test_bad_timeouts(tmp_path, timeout):
    assert refused(tmp_path, 1, str(tmp_path / "a.h5"), timeout, "r").code == "bad_timeout"


def test_relative_path(tmp_path):
    e = refused(tmp_path, 1, "relative/x.h5", 1.0, "r")
    assert e.code == "relative_path" and "absolute" in e.reason


def test_outside_root_directly_by_dotdot_and_by_link(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    (tmp_path / "elsewhere").mkdir()
    os.symlink(tmp_path / "elsewhere", root / "link")
    for path in ("/etc/x.h5", f"{root}/../elsewhere/x.h5", f"{root}/link/x.h5", str(root)):
        e = refused(root, 1, path, 1.0, "r")
        assert e.code == "outside_data_root" and "--data-root" in e.reason, path


def test_existing_file_and_dangling_link_are_never_overwritten(tmp_path):
    (tmp_path / "old.h5").write_bytes(b"keep")
    assert refused(tmp_path, 1, str(tmp_path / "old.h5"), 1.0, "r").code == "file_exists"
    os.symlink(tmp_path / "nowhere.h5", tmp_path / "dangling.h5")
    assert refused(tmp_path, 1, str(tmp_path / "dangling.h5"), 1.0, "r").code == "file_exists"
    assert (tmp_path / "old.h5").read_bytes() == b"keep"


def test_parent_missing_not_a_folder_not_writable(tmp_path):
    assert refused(tmp_path, 1, str(tmp_path / "no" / "x.h5"), 1.0, "r").code == "no_parent"
    (tmp_path / "file").write_text("x")
    e = refused(tmp_path, 1, str(tmp_path / "file" / "x.h5"), 1.0, "r")
    assert e.code == "parent_not_dir"
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        if os.access(ro, os.W_OK):
            pytest.skip("running as root: every folder is writable")
        e = refused(tmp_path, 1, str(ro / "x.h5"), 1.0, "r")
        assert e.code == "parent_not_writable" and "not writable" in e.reason
    finally:
        ro.chmod(0o700)


def test_not_enough_free_disk(tmp_path):
    e = refused(tmp_path, 1000, str(tmp_path / "a.h5"), 1.0, "r", free=999_999, image_bytes=1000)
    assert e.code == "disk_full" and "MB free" in e.reason
    check_request(
        1000, str(tmp_path / "a.h5"), 1.0, "r", limits(tmp_path), 1000, lambda p: 1_000_000
    )


def test_bad_run_id(tmp_path):
    assert refused(tmp_path, 1, str(tmp_path / "a.h5"), 1.0, ["x"]).code == "bad_run_id"


@given(st.text(max_size=40), st.integers(-3, 2000))
def test_any_input_is_accepted_under_the_root_or_refused(tmp_path_factory, path, n):
    root = tmp_path_factory.getbasetemp() / "fuzzroot"
    root.mkdir(exist_ok=True)
    try:
        r = check_request(n, path, 1.0, "r", limits(root), 1, lambda p: GB)
    except RequestRefused as e:
        assert e.reason and e.code
        return
    assert 1 <= n <= 1000
    assert r.output_file.startswith(os.path.realpath(root) + "/")
    assert not os.path.exists(r.output_file)
