"""What ``socs-agents demo`` shows of a DAQWriter: the simulator streams, a write of the next
N images, a refused request, an abort that keeps a valid partial file, the file read back
with its metadata, and the SupRsync row with its md5."""

from __future__ import annotations

import os
import time

from ..testing import wait_for


def _args(inst: dict) -> dict:
    out = {}
    for a in inst.get("arguments", []):
        if a:
            out[str(a[0])] = [str(v) for v in a[1:]]
    return out


def _first(args: dict, key: str, default=None):
    values = args.get(key)
    return values[0] if values else default


def _abs(path: str, workdir: str) -> str:
    return path if os.path.isabs(path) else os.path.join(workdir, path)


def show(site_file: str, inst: dict, workdir: str) -> None:
    import h5py
    from ocs.ocs_client import OCSClient

    from ...db.suprsync import SupRsyncDB
    from ..sim.detector import DetectorSimulator, expected_image

    args = _args(inst)
    iid = inst["instance-id"]
    cargs = ["--site-file", site_file, "--site-host", "localhost"]
    url = _first(args, "--stream-url", "tcp://127.0.0.1:8300")
    root = _abs(_first(args, "--data-root", "/data/daq"), workdir)
    db_path = _abs(_first(args, "--suprsync-db", "/data/so/databases/suprsync.db"), workdir)
    detector = _first(args, "--detector-name", "detector")
    shape = (256, 256)
    reader = OCSClient(iid, args=cargs)
    # privs=2: the level-2 password of the OCS password file (make demo writes one)
    writer = OCSClient(iid, privs=2, args=cargs)
    stamp = time.strftime("%Y%m%d_%H%M%S")
    path = os.path.join(root, f"demo_{stamp}.h5")
    partial = os.path.join(root, f"demo_{stamp}_aborted.h5")

    print(f"\n{iid}: simulator streams {shape[0]}x{shape[1]} uint16 images on {url} (PUB, 100/s)")
    with DetectorSimulator(url, shape, "uint16", rate=100).start():
        time.sleep(0.3)
        refused = reader.write(n_images=20, output_file=path)
        print(f"  write without the level-2 password -> refused: {refused.msg}")
        reply = writer.write(n_images=20, output_file=path, run_id=f"demo-{stamp}")
        d = reply.session["data"]
        print(f"  write(n_images=20) -> success={reply.session['success']}: {d['message']}")
        again = writer.write(n_images=20, output_file=path)
        print(f"  the same path again -> refused: {again.session['data']['message']}")
        outside = writer.write(n_images=5, output_file="/etc/demo.h5")
        print(f"  a path outside the data root -> refused: {outside.session['data']['message']}")
        writer.write.start(n_images=10000, output_file=partial, run_id=f"demo-{stamp}-abort")
        wait_for(
            lambda: (writer.write.status().session.get("data") or {}).get("n_written", 0) >= 30,
            15,
            "images being written",
        )
        writer.write.abort()
        reply = writer.write.wait(timeout=15)
        print(
            f"  write(n_images=10000), then abort -> success={reply.session['success']}: "
            f"{reply.session['data']['message']}"
        )
    with h5py.File(path) as f:
        g = f[detector]
        ids = g["image_id"][:]
        same = all(
            g["data"][j].tobytes() == expected_image(int(i), shape, "uint16").tobytes()
            for j, i in enumerate(ids)
        )
        print(
            f"  {path}: /{detector}/data {g['data'].shape} {g['data'].dtype}, image ids "
            f"{ids[0]}..{ids[-1]}, status {sorted(set(g['status'][:].tolist()))}, "
            f"byte-identical to the simulator's images: {same}"
        )
        attrs = {k: g.attrs[k] for k in ("run_id", "state", "n_images_written")}
        print("  attributes: " + ", ".join(f"{k}={v}" for k, v in attrs.items()))
    with h5py.File(partial) as f:
        g = f[detector]
        print(
            f"  {partial}: {g['data'].shape[0]} images, image_id {g['image_id'].shape[0]}, "
            f"state {g.attrs['state']!r}"
        )

    def registered():
        last = reader.status().session["data"]["last"]
        return last if last and last[0].get("suprsync") else None

    last = wait_for(registered, 30, "the SupRsync registration")
    status = reader.status().session["data"]
    print(f"  status: state {status['state']!r}, counters {status['counters']}")
    db = SupRsyncDB(db_path, create_all=False)
    try:
        for row in db.files(archive_name=_first(args, "--archive-name", "daq"), limit=2):
            print(f"  SupRsync row: {row['remote_path']} md5 {row['local_md5sum']}")
    finally:
        db.close()
    print(f"  outcome of the last request: {last[0]['state']}, suprsync {last[0]['suprsync']}")
