"""What ``socs-agents demo start`` shows of a GWDataBuffer: simulated strain streamed as the
streaming client does, the DAG's /train (WAITING, then FROZEN), a write refused while
frozen, a bad body refused with its reason, clean.sh, and the status page."""

from __future__ import annotations

import json
import os
import time

from ..sim.gw import DAG_TRAIN_BODY, FrontClient, chunks, simulated_strain, stream


def show(site_file: str, inst: dict, workdir: str) -> None:
    args = {a[0]: a[1] for a in inst.get("arguments", []) if len(a) == 2}
    iface = args.get("--http-interface", "127.0.0.1")
    host = "127.0.0.1" if iface == "0.0.0.0" else iface
    url = f"http://{host}:{args.get('--http-port', 8000)}"
    max_size = int(args.get("--max-size", 2000))
    c = FrontClient(url)
    try:
        if c.desc()[1].get("resp") == "FROZEN":
            c.cleanbuf()  # a previous demo left it frozen
        before = c.stats()[1]
        print(f"\n{inst['instance-id']}: GET /stats {before}, MAX_SIZE {max_size} bytes")
        print(f"  POST /train (the DAG) -> {c.post('/train', DAG_TRAIN_BODY)[1]}")
        strain = simulated_strain(8.0, seed=int(time.time()) % 1000, chirp_at=4.0)
        bodies = [json.dumps(b).encode() for b in chunks(strain, 1126259457.4, 4096)]
        t0 = time.monotonic()
        results = stream(url, bodies, writers=4)
        took = time.monotonic() - t0
        created = sum(1 for r in results if r[3] == "CREATED")
        print(
            f"  POST /streamdata x{len(bodies)} (4 keep-alive writers, 4,096-sample chunks "
            f"with absolute GPS times): {created} CREATED in {took * 1e3:.0f} ms"
        )
        stats = c.stats()[1]
        print(f"  GET /stats -> {stats} ({stats['buff_size'] / max_size:.0%} of MAX_SIZE)")
        print(f"  POST /train -> {c.post('/train', DAG_TRAIN_BODY)[1]}")
        print(f"  POST /streamdata while frozen -> {c.streamdata(bodies[0])[1]}")
        status, answer = c.post("/streamdata", b'{"h": [NaN], "t": [0, 1]}')
        print(f"  POST /streamdata with NaN -> {status} {answer}")
        status, page = c.request("GET", "/dspage")
        print(f"  GET /dspage -> {status}, {len(page)} characters of HTML")
        status, answer = c.cleanbuf()
        print(
            f"  POST /cleanbuf (clean.sh) -> {status} {answer['resp']} into {answer.get('archive')}"
        )
        print(f"  GET /stats -> {c.stats()[1]}, GET /desc -> {c.desc()[1]}")
        data_dir = args.get("--data-dir")
        if data_dir and not os.path.isabs(data_dir):
            data_dir = os.path.join(workdir, data_dir)
        if data_dir:
            print(f"  data folder {data_dir}; archives beside it in 'archive'")
    finally:
        c.close()
    print(f"  try: open {url}/dspage ; curl -s {url}/stats")
