"""A stand-in for the pysmurf publisher and the smurf-streamer: real files, real datagrams.

Files go where pysmurf and the streamer put them::

    <root>/<ctime5>/<pub id>/<action_ts>_<action>/{outputs,plots}/<ts>_<name>.{npy,txt,png}
    <root>/timestreams/<ctime5>/<stream id>/<ts>_000.g3

and each is announced with the publisher's envelope (host, id, script, time, seq_no, type,
payload), as are session data, session logs and streamer metadata.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import socket
import sys
import time
from collections.abc import Iterable, Sequence

import numpy as np

ACTIONS = ("take_noise", "tune_band", "take_iv", "setup_notches", "take_bias_steps")
PNG_HEADER = b"\x89PNG\r\n\x1a\n"


class SmurfSimulator:
    def __init__(
        self,
        root: str,
        host: str = "127.0.0.1",
        port: int = 8200,
        pub_id: str = "crate1slot2",
        stream_id: str = "crate1slot2",
        file_bytes: int = 256,
    ) -> None:
        self.root = os.path.abspath(root)
        self.target = (host, port)
        self.pub_id = pub_id
        self.stream_id = stream_id
        self.file_bytes = file_bytes
        self._seq = itertools.count()
        self._n = itertools.count()
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sent = 0

    def close(self) -> None:
        self.sock.close()

    def envelope(self, msg_type: str, payload, pub_id: str | None = None) -> bytes:
        return json.dumps(
            {
                "host": socket.gethostname(),
                "id": pub_id or self.pub_id,
                "script": "simulate-smurf",
                "time": time.time(),
                "seq_no": next(self._seq),
                "type": msg_type,
                "payload": payload,
            }
        ).encode()

    # ---- files ---------------------------------------------------------------------------

    def data_file(
        self,
        fmt: str = "npy",
        plot: bool = False,
        action: str | None = None,
        size: int | None = None,
        now: float | None = None,
    ) -> tuple[str, bytes]:
        """Write one pysmurf output or plot; return (path on disk, data_file datagram)."""
        now = time.time() if now is None else now
        n = next(self._n)
        action = action or ACTIONS[n % len(ACTIONS)]
        action_ts = int(now) - (int(now) % 60)
        ts = f"{now:.6f}"
        folder = os.path.join(
            self.root, ts[:5], self.pub_id, f"{action_ts}_{action}", "plots" if plot else "outputs"
        )
        os.makedirs(folder, exist_ok=True)
        stem = os.path.join(folder, f"{int(now)}_{n:06d}_{action}")
        size = self.file_bytes if size is None else size
        announced = stem
        if plot:
            fmt = "png"
            path = stem + ".png"
            _write(path, PNG_HEADER + os.urandom(max(size - len(PNG_HEADER), 0)))
            announced = path
        elif fmt == "npy":
            path = stem + ".npy"
            np.save(path, np.frombuffer(os.urandom(max(size - 128, 8) // 8 * 8), dtype="f8"))
            # pysmurf announces np.save's argument, often without the suffix
            announced = stem if n % 2 else path
        else:
            fmt = "txt"
            path = stem + ".txt"
            _write(path, os.urandom(size))
            announced = path
        payload = {
            "path": announced,
            "type": action.split("_")[-1],
            "format": fmt,
            "timestamp": now,
            "action": action,
            "action_ts": action_ts,
            "plot": plot,
            "pysmurf_version": "8.0.0-sim",
        }
        return path, self.envelope("data_file", payload)

    def big_file(self, size: int, now: float | None = None) -> tuple[str, bytes]:
        """A large output file written in 8 MiB blocks (for checksum-load benchmarks)."""
        path, datagram = self.data_file(fmt="txt", size=16, now=now)
        block = os.urandom(8 << 20)
        with open(path, "wb") as f:
            for _ in range(size // len(block)):
                f.write(block)
            f.write(block[: size % len(block)])
        return path, datagram

    def g3_file(
        self, frames: int = 2, channels: int = 4, now: float | None = None
    ) -> tuple[str, bytes]:
        """Write a G3 timestream file with so3g; return (path, g3_file datagram)."""
        from so3g.spt3g import core

        now = time.time() if now is None else now
        n = next(self._n)
        folder = os.path.join(self.root, "timestreams", f"{now:.0f}"[:5], self.stream_id)
        os.makedirs(folder, exist_ok=True)
        path = os.path.join(folder, f"{int(now)}_{n:03d}.g3")
        writer = core.G3Writer(path)
        rate = 200.0
        for i in range(frames):
            t0 = now + i
            frame = core.G3Frame(core.G3FrameType.Scan)
            tsmap = core.G3TimestreamMap()
            for ch in range(channels):
                ts = core.G3Timestream(np.random.default_rng(ch + i).normal(size=int(rate)))
                ts.start = core.G3Time(int(t0 * core.G3Units.s))
                ts.stop = core.G3Time(int((t0 + 1 - 1 / rate) * core.G3Units.s))
                tsmap[f"r{ch:04d}"] = ts
            frame["data"] = tsmap
            frame["sostream_id"] = self.stream_id
            writer(frame)
        writer(core.G3Frame(core.G3FrameType.EndProcessing))
        del writer
        payload = {"path": path, "archive_name": "timestreams"}
        return path, self.envelope("g3_file", payload, pub_id=f"STREAMER:{self.stream_id}")

    # ---- other messages ------------------------------------------------------------------

    def session_data(self, value=None) -> bytes:
        return self.envelope(
            "session_data", value if value is not None else {"band": 2, "noise_median_pA": 42.0}
        )

    def session_log(self, text: str = "tuning band 2") -> bytes:
        return self.envelope("session_log", text)

    def metadata(self, path: str = "AMCc.SmurfProcessor.SOStream.open_g3stream", value=1) -> bytes:
        return self.envelope(
            "metadata",
            {"path": path, "value": value, "type": "int"},
            pub_id=f"STREAMER:{self.stream_id}",
        )

    # ---- sending -------------------------------------------------------------------------

    def send(self, datagram: bytes) -> None:
        self.sock.sendto(datagram, self.target)
        self.sent += 1

    def send_paced(
        self, datagrams: Iterable[bytes], rate: float, max_seconds: float = 3600.0
    ) -> list[float]:
        """Send at ``rate`` per second (bounded by ``max_seconds``); return send times."""
        times = []
        start = time.perf_counter()
        deadline = start + max_seconds
        for i, dg in enumerate(datagrams):
            due = start + i / rate
            now = time.perf_counter()
            if now > deadline:
                break
            if due > now:
                time.sleep(due - now)
            self.send(dg)
            times.append(time.time())
        return times

    def files(self, count: int, g3_every: int = 10) -> list[tuple[str, bytes]]:
        """``count`` announced files: pysmurf outputs and plots, and G3 files."""
        out = []
        for i in range(count):
            if g3_every and i % g3_every == g3_every - 1:
                out.append(self.g3_file())
            else:
                out.append(self.data_file(fmt=("npy", "txt")[i % 2], plot=(i % 5 == 4)))
        return out


def _write(path: str, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="socs-agents simulate-smurf", description=__doc__.split("\n")[0]
    )
    p.add_argument("--root", required=True, help="folder to write the files under")
    p.add_argument("--host", default="127.0.0.1", help="where the monitor listens")
    p.add_argument("--port", type=int, default=8200)
    p.add_argument("--count", type=int, default=20, help="files to write and announce")
    p.add_argument("--rate", type=float, default=10.0, help="datagrams per second")
    p.add_argument("--file-bytes", type=int, default=256, help="size of each small file")
    p.add_argument("--g3-every", type=int, default=10, help="every Nth file is a G3 file (0: none)")
    p.add_argument("--pub-id", default="crate1slot2")
    p.add_argument("--stream-id", default="crate1slot2")
    p.add_argument(
        "--session-every",
        type=int,
        default=5,
        help="send session data, a log line and metadata every N files (0: never)",
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    sim = SmurfSimulator(
        args.root, args.host, args.port, args.pub_id, args.stream_id, args.file_bytes
    )
    datagrams = []
    for i, (_, dg) in enumerate(sim.files(args.count, args.g3_every)):
        datagrams.append(dg)
        if args.session_every and i % args.session_every == 0:
            datagrams += [sim.session_data(), sim.session_log(), sim.metadata(value=i)]
    sim.send_paced(datagrams, args.rate)
    print(
        f"wrote {args.count} files under {sim.root}; sent {sim.sent} datagrams to "
        f"{args.host}:{args.port}"
    )
    sim.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
