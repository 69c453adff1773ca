"""What ``socs-agents demo`` shows of a VisibilityManager: one call drives every pipeline.

Pings the pipelines, schedules a short recording on all of them with ``"now"``, stops it,
and prints the aggregated answers, the files written and the rows registered.
"""

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


def show(site_file: str, inst: dict, workdir: str, recording_s: float = 3.0) -> None:
    from ocs.ocs_client import OCSClient

    from ...db.suprsync import SupRsyncDB
    from ...hub import load_site_config

    args = _args(inst)
    iid = inst["instance-id"]
    cargs = ["--site-file", site_file, "--site-host", "localhost"]
    password = _first(args, "--recorder-password")
    password_file = _first(args, "--recorder-password-file")
    if password is None and password_file is not None:
        with open(_abs(password_file, workdir), encoding="utf-8") as f:
            password = f.read().strip()
    client = OCSClient(iid, args=cargs)
    # privs=2: the level-2 password of the OCS password file (make demo writes one)
    admin = OCSClient(iid, privs=password or 2, args=cargs)

    reply = client.ping()
    print(f"\n{iid}: ping -> {reply.session['data']}")
    refused = client.start(start_mjd="now")
    print(f"  start without the level-2 password -> refused: {refused.msg}")

    reply = admin.start(start_mjd="now")
    data = reply.session["data"]
    print(f"  start(start_mjd='now') -> success={reply.session['success']}")
    for pid, r in sorted(data.items()):
        print(f"    {pid:<12} {r['status']:<8} {r['response']}")
    if not reply.session["success"]:
        return
    lead = float(_first(args, "--now-lead", 15))
    time.sleep(lead + recording_s)
    reply = admin.stop(stop_mjd="now")
    print(
        f"  stop(stop_mjd='now') -> success={reply.session['success']}; the recordings "
        f"end {lead:g} s later, at the time the manager resolved once for all"
    )
    time.sleep(lead + 0.5)

    def idle():
        d = client.monitor.status().session.get("data") or {}
        return d if d.get("op_type") == "idle" else None

    mon = wait_for(idle, 30, "the pipelines to finish recording")
    print(
        f"  monitor: summary={mon['summary']!r}, op_type={mon['op_type']!r}, info={mon['info']!r}"
    )

    site = load_site_config(site_file)
    recorders = {
        i["instance-id"]: _args(i)
        for i in site["hosts"]["localhost"]["agent-instances"]
        if i.get("agent-class") == "VisibilityRecorder"
    }
    db_paths = set()
    for pid, r in sorted(data.items()):
        folder = _abs(r["response"], workdir)
        files = sorted(os.listdir(folder)) if os.path.isdir(folder) else []
        print(f"    {pid:<12} {len(files)} file(s) in {folder}")
        status = OCSClient(pid, args=cargs).monitor.status().session.get("data") or {}
        faults = {k: n for k, n in (status.get("counters") or {}).items() if n}
        print(
            f"    {'':<12} registered {status.get('files_registered')}, waiting "
            f"{status.get('pending_registration')}, refusals/faults {faults or 'none'}"
        )
        rargs = recorders.get(pid, {})
        db_paths.add(_abs(_first(rargs, "--db-path", "/data/so/databases/suprsync.db"), workdir))
    for db_path in sorted(db_paths):
        db = SupRsyncDB(db_path, create_all=False)
        try:
            print(f"  SupRsync database {db_path}: {db.archives()}")
            for row in db.files(limit=3):
                print(f"    {row['archive_name']:<9} {row['remote_path']}")
        finally:
            db.close()
