"""Clients of the GW data buffer, sending exactly what the real ones send.

* :class:`FrontClient`: one keep-alive HTTP/1.1 connection (``http.client``), with the
  requests of the Airflow DAG (``train``/``stats``), the shell scripts (``streamdata.sh``,
  ``train.sh``, ``clean.sh``, ``stats.sh``) and the gwclient (``streamdata``).
* :func:`simulated_strain`: seeded coloured noise with an injected chirp, at 4096 Hz.
* :func:`read_strain`: strain from local files (HDF5, text; GWF with gwpy installed).
* :func:`chunks`: cut strain into ``{"h": [...], "t": [t0, dt]}`` bodies with absolute GPS
  times (none of the gwclient's defects: no relative time, no re-sent chunk, no off-by-one).
* :func:`stream`: send chunks from several keep-alive writers; per-write latencies.
"""

from __future__ import annotations

import argparse
import http.client
import json
import math
import random
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from urllib.parse import urlparse

SAMPLE_RATE = 4096
DT = 1.0 / SAMPLE_RATE
#: GW150914's GPS time, as the gwclient's default event.
GW150914_GPS = 1126259462.4
#: The shell client's fixture testgw1.json: 4 samples, one absolute GPS time each.
SHELL_FIXTURE_T0 = 1126259452.39990234
DAG_TRAIN_BODY = {"user": "airflow", "token": "airflow"}
CLEAN_BODY = {"msg": "see you space cowboy"}


def shell_fixture() -> dict:
    """A body like testgw1.json (4 samples, ``t`` = 4 absolute GPS times)."""
    return {
        "h": [2.0e-22, -1.5e-22, 7.5e-23, -3.0e-23],
        "t": [SHELL_FIXTURE_T0 + k / SAMPLE_RATE for k in range(4)],
    }


def simulated_strain(
    seconds: float, seed: int = 0, rate: int = SAMPLE_RATE, chirp_at: float | None = None
) -> list[float]:
    """Seeded red-ish noise (an AR(1) process) of strain amplitude ~1e-21, with a chirp
    (frequency rising 35 -> 250 Hz over 0.2 s) injected at ``chirp_at`` seconds."""
    rng = random.Random(seed)
    n = int(seconds * rate)
    out, x = [], 0.0
    for _ in range(n):
        x = 0.95 * x + rng.gauss(0.0, 1.0)
        out.append(x * 3e-22)
    if chirp_at is not None:
        start = int(chirp_at * rate)
        length = int(0.2 * rate)
        for i in range(max(0, start), min(n, start + length)):
            tau = (i - start) / rate
            f = 35 + (250 - 35) * (tau / 0.2) ** 3
            amp = 1e-21 * (0.3 + tau / 0.2)
            out[i] += amp * math.sin(2 * math.pi * f * tau)
    return out


def chunks(strain: Sequence[float], gps_start: float, size: int, dt: float = DT) -> Iterator[dict]:
    """Consecutive bodies of ``size`` samples; the chunk starting at sample k is at GPS
    ``gps_start + k*dt`` (absolute, and the first sample's own time)."""
    for k in range(0, len(strain), size):
        yield {"h": [float(x) for x in strain[k : k + size]], "t": [gps_start + k * dt, dt]}


def read_strain(path: str) -> tuple[list[float], float, float]:
    """Strain from a local file: ``(samples, gps_start, dt)``.

    * HDF5 (``.hdf5``, ``.h5``): the GWOSC layout, dataset ``strain/Strain`` with attributes
      ``Xstart`` (GPS) and ``Xspacing`` (dt).
    * Text (anything else): one ``gps strain`` pair per line (dt from the first two times)
      or one strain value per line (GPS 0, 4096 Hz); ``#`` comments skipped.
    * GWF (``.gwf``): through gwpy, when it is installed (``TimeSeries.read(path, channel)``
      with the channel after a colon: ``file.gwf:L1:GWOSC-4KHZ_R1_STRAIN``).
    """
    lower = path.lower()
    if lower.endswith((".hdf5", ".h5")):
        import h5py

        with h5py.File(path, "r") as f:
            ds = f["strain/Strain"]
            return (
                [float(x) for x in ds[()]],
                float(ds.attrs["Xstart"]),
                float(ds.attrs["Xspacing"]),
            )
    if ".gwf" in lower:
        from gwpy.timeseries import TimeSeries  # optional: only for GWF files

        file_path, _, channel = path.partition(":")
        ts = TimeSeries.read(file_path, channel)
        return [float(x) for x in ts.value], float(ts.t0.value), float(ts.dt.value)
    times, values = [], []
    with open(path) as f:
        for line in f:
            line = line.split("#", 1)[0].split()
            if not line:
                continue
            if len(line) >= 2:
                times.append(float(line[0]))
                values.append(float(line[1]))
            else:
                values.append(float(line[0]))
    if times and len(times) >= 2:
        return values, times[0], times[1] - times[0]
    return values, times[0] if times else 0.0, DT


class FrontClient:
    """One keep-alive connection to a front (ours or the reference's).

    Every method returns ``(status, answer)``; the answer is the decoded JSON, or the text
    when it is not JSON.
    """

    def __init__(self, url: str, timeout: float = 30.0) -> None:
        parts = urlparse(url)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 8000
        self.timeout = timeout
        self.conn: http.client.HTTPConnection | None = None

    def _connection(self) -> http.client.HTTPConnection:
        if self.conn is None:
            self.conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
        return self.conn

    def request(
        self, method: str, path: str, body: bytes | None = None, headers: dict | None = None
    ) -> tuple[int, object]:
        hdrs = {"Content-Type": "application/json"} if body is not None else {}
        hdrs.update(headers or {})
        for attempt in (0, 1):
            conn = self._connection()
            try:
                conn.request(method, path, body=body, headers=hdrs)
                resp = conn.getresponse()
                data = resp.read()
                break
            except (ConnectionError, http.client.HTTPException):
                self.close()  # the server closed an idle connection: once more, new one
                if attempt:
                    raise
        try:
            return resp.status, json.loads(data)
        except ValueError:
            return resp.status, data.decode("utf-8", "replace")

    def post(self, path: str, body: object, headers: dict | None = None) -> tuple[int, object]:
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        return self.request("POST", path, raw, headers)

    # what the real clients call
    def streamdata(self, body: object) -> tuple[int, object]:
        return self.post("/streamdata", body)

    def train(self, user: str = "airflow", token: str = "airflow") -> tuple[int, object]:
        return self.post("/train", {"user": user, "token": token})

    def cleanbuf(self, token: str | None = None) -> tuple[int, object]:
        body = dict(CLEAN_BODY)
        if token is not None:
            body["token"] = token
        return self.post("/cleanbuf", body)

    def stats(self) -> tuple[int, object]:
        return self.request("GET", "/stats")

    def desc(self) -> tuple[int, object]:
        return self.request("GET", "/desc")

    def dumpbuf(self) -> tuple[int, object]:
        return self.request("GET", "/dumpbuf")

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


def stream(
    url: str,
    bodies: Sequence[bytes],
    writers: int = 1,
    rate: float | None = None,
    deadline: float | None = None,
    results: list | None = None,
) -> list[tuple[float, float, int, str, int]]:
    """Post ``bodies`` to ``/streamdata`` from ``writers`` keep-alive connections (body i
    goes to writer i % writers), at most ``rate`` writes/s in all.

    Returns one ``(sent_at, latency_s, status, resp, body_index)`` per write, in completion
    order (``time.monotonic`` seconds), appended to ``results`` (if given) as they come. A
    writer whose server has gone (killed, stopped) ends there: a write with no answer is
    not a result.
    """
    results = [] if results is None else results
    lock = threading.Lock()
    t_start = time.monotonic()

    def run(index: int) -> None:
        client = FrontClient(url)
        try:
            for i in range(index, len(bodies), writers):
                if deadline is not None and time.monotonic() > deadline:
                    return
                if rate:
                    wait = t_start + i / rate - time.monotonic()
                    if wait > 0:
                        time.sleep(wait)
                t0 = time.monotonic()
                try:
                    status, answer = client.post("/streamdata", bodies[i])
                except OSError:  # the server is gone
                    return
                t1 = time.monotonic()
                resp = answer.get("resp", "") if isinstance(answer, dict) else str(answer)
                with lock:
                    results.append((t0, t1 - t0, status, resp, i))
        finally:
            client.close()

    threads = [threading.Thread(target=run, args=(w,), daemon=True) for w in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Stream simulated strain (seeded coloured noise with a chirp in the "
        "middle) to a GW data buffer's /streamdata, ours or the reference's."
    )
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="The front's URL.")
    parser.add_argument("--seconds", type=float, default=10.0, help="Seconds of strain.")
    parser.add_argument(
        "--chunk", type=int, default=SAMPLE_RATE, help="Samples per chunk (4096 Hz)."
    )
    parser.add_argument(
        "--gps-start",
        type=float,
        default=GW150914_GPS - 5,
        help="Absolute GPS time of the first sample.",
    )
    parser.add_argument("--writers", type=int, default=1, help="Keep-alive connections.")
    parser.add_argument("--rate", type=float, default=None, help="Writes per second in all.")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the noise.")
    parser.add_argument("--train", action="store_true", help="POST /train afterwards.")
    parser.add_argument(
        "--from-file",
        default=None,
        help="Stream strain from a local file instead of simulating it: HDF5 (GWOSC "
        "layout), text ('gps strain' or one value per line), or GWF with gwpy installed "
        "('file.gwf:CHANNEL').",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    a = make_parser().parse_args(argv)
    if a.from_file:
        strain, gps_start, dt = read_strain(a.from_file)
    else:
        strain = simulated_strain(a.seconds, a.seed, chirp_at=a.seconds / 2)
        gps_start, dt = a.gps_start, DT
    bodies = [json.dumps(c).encode() for c in chunks(strain, gps_start, a.chunk, dt)]
    results = stream(a.url.rstrip("/"), bodies, a.writers, a.rate)
    by = {}
    for _, _, status, resp, _ in results:
        by[(status, resp)] = by.get((status, resp), 0) + 1
    print(f"{len(results)} writes: " + ", ".join(f"{s} {r}: {n}" for (s, r), n in by.items()))
    if a.train:
        client = FrontClient(a.url)
        print("train:", client.train())
        client.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
