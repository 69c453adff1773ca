"""What ``socs-agents demo start`` shows of a FileOrchestrator: the simulator writes DUNE files
into its volume, then plays Data Filter, Dispatcher and Filter Writer over HTTP."""

from __future__ import annotations

import os
import socket
import time

from ..sim.dune import DuneWriter, OrchestratorClient, run_chain
from ..testing import wait_for


def show(site_file: str, inst: dict, workdir: str) -> None:
    args = {a[0]: a[1] for a in inst.get("arguments", []) if len(a) == 2}
    volume = args.get("--volume")
    host = args.get("--host-name") or socket.gethostname()
    iface = args.get("--http-interface", "127.0.0.1")
    url = f"http://{'127.0.0.1' if iface == '0.0.0.0' else iface}:{args.get('--http-port', 6000)}"
    if volume is None:
        print(f"\n{inst['instance-id']}: no --volume; nothing to show")
        return
    if not os.path.isabs(volume):
        volume = os.path.join(workdir, volume)  # agents run in the HostManager's folder
    client = OrchestratorClient(url)
    try:
        before = client.stats()[1]["counts"]
        run = int(time.time()) % 100000
        writer = DuneWriter(os.path.join(volume, f"run{run:06d}"), run_number=run)
        t0 = time.monotonic()
        files = [writer.write_file(records=4) for _ in range(3)]
        slices = writer.write_file(records=3, record_type="TimeSlice")
        want = before["pending"] + 15

        def found():
            c = client.stats()[1]["counts"]
            return c if c["pending"] >= want else None

        wait_for(found, 15, "the orchestrator to find the simulated files")
        seen = time.monotonic() - t0
        print(
            f"\n{inst['instance-id']}: the simulator wrote {len(files)} trigger-record files "
            f"and 1 time-slice file under {writer.root} (each as .writing, renamed when "
            f"done); all 15 records were pending {seen:.2f} s after the first write"
        )
        t0 = time.monotonic()
        trs = run_chain(client, host, 12, poll_interval=0.02)
        tss = run_chain(client, host, 3, record_type="TimeSlice", poll_interval=0.02)
        took = time.monotonic() - t0
        print(
            f"  Data Filter -> GET /request-tr, Dispatcher -> POST /read-next-triggerrecord, "
            f"Filter Writer -> POST /complete: {len(trs)} trigger records and {len(tss)} "
            f"time slices in {took:.2f} s, oldest first:"
        )
        for a in trs[:2] + tss[:1]:
            print(
                f"    {a['type']:<13} run {a['run_number']} #{a['trigger_number']}."
                f"{a['sequence_number']}  {os.path.basename(a['file'])}"
            )
        status, _ = client.read_next_triggerrecord(host)
        print(f"  one more read-next without a Data Filter request: {status} (429 = no credit)")
        counts = client.stats()[1]["counts"]
        print(
            f"  GET /stats: files {counts['files']}, pending {counts['pending']}, active "
            f"{counts['active']}, done {counts['done']}, leases expired "
            f"{counts['leases_expired']}"
        )
        if args.get("--suprsync-db"):
            db_path = args["--suprsync-db"]
            if not os.path.isabs(db_path):
                db_path = os.path.join(workdir, db_path)
            _show_suprsync(
                db_path, args.get("--archive-name", "dune"), [p for p, _ in files + [slices]]
            )
    finally:
        client.close()
    print(
        f"  try: curl -s {url}/stats ; .venv/bin/socs-agents simulate-dune --root "
        f"{volume}/more --url {url} --process"
    )


def _show_suprsync(db_path: str, archive: str, paths: list[str]) -> None:
    from ...db.suprsync import SupRsyncDB

    def registered():
        db = SupRsyncDB(db_path, create_all=False)
        try:
            rows = [
                r for r in db.files(archive_name=archive, limit=1000) if r["local_path"] in paths
            ]
        finally:
            db.close()
        return rows if len(rows) == len(paths) else None

    try:
        rows = wait_for(registered, 10, "the finished files in SupRsync")
    except TimeoutError:
        print(f"  SupRsync {db_path}: finished files not registered yet")
        return
    print(
        f"  every record of {len(rows)} files done: registered in SupRsync archive "
        f"{archive!r} ({db_path}), e.g. {rows[0]['remote_path']}"
    )
