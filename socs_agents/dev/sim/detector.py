"""A detector image stream as the DAQWriter reads it: multipart ``[metadata, pixels]``,
metadata the 2021 std_daq ``ImageMetadata`` struct (56 bytes), pixels raw, over ZeroMQ PUB
or PUSH (the source binds, the writer connects).

Pixels are a known pattern of the image id (:func:`expected_image`), so a test can check a
written file byte for byte. Deliberate gaps (skipped ids) and bad statuses are optional.

``socs-agents simulate-detector --url tcp://127.0.0.1:8300 --shape 512 512 --rate 10``
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from collections.abc import Sequence

import numpy as np
import zmq

from ...agents.daq_writer.metadata import STATUS_GOOD, STATUS_MISSING_PACKETS, make_metadata

#: Different base patterns, so that consecutive images differ beyond their stamped id.
N_PATTERNS = 8


def _base(shape: tuple[int, int], dtype: np.dtype, k: int) -> np.ndarray:
    n = shape[0] * shape[1]
    values = (np.arange(n, dtype=np.uint64) * 2654435761 + k * 40503) >> np.uint64(7)
    if dtype.kind == "f":
        return (values % np.uint64(4096)).astype(dtype).reshape(shape)
    return values.astype(dtype).reshape(shape)


class PatternSource:
    """Images whose bytes depend only on (id, shape, dtype)."""

    def __init__(self, shape: tuple[int, int], dtype: str | np.dtype) -> None:
        self.shape = tuple(shape)
        self.dtype = np.dtype(dtype).newbyteorder("<")
        self._bases = [_base(self.shape, self.dtype, k) for k in range(N_PATTERNS)]

    def image(self, image_id: int) -> np.ndarray:
        img = self._bases[image_id % N_PATTERNS].copy()
        raw = img.reshape(-1).view(np.uint8)
        stamp = int(image_id).to_bytes(8, "little")
        n = min(8, raw.size)
        raw[:n] = np.frombuffer(stamp[:n], dtype=np.uint8)
        return img


def expected_image(image_id: int, shape, dtype) -> np.ndarray:
    """The pixels the simulator sends for ``image_id``."""
    return PatternSource(shape, dtype).image(image_id)


class DetectorSimulator:
    """Publishes images on ``url`` (bound) from a thread of its own.

    Args:
        url: ZeroMQ endpoint to bind, e.g. ``tcp://127.0.0.1:8300``.
        shape, dtype: of every image.
        rate: images per second (0: as fast as the socket takes them).
        socket_type: ``"pub"`` (never waits; a slow reader loses images, seen as gaps) or
            ``"push"`` (waits for the reader: back-pressure).
        start_id: first image id.
        gap_every: skip one id after every ``gap_every`` images (0: never).
        bad_status_every: every ``bad_status_every``-th image has status 1 (0: never).
        hwm: send high-water mark (messages queued per reader).
    """

    def __init__(
        self,
        url: str,
        shape: Sequence[int] = (64, 64),
        dtype: str = "uint16",
        rate: float = 100.0,
        socket_type: str = "pub",
        start_id: int = 0,
        gap_every: int = 0,
        bad_status_every: int = 0,
        hwm: int = 100,
    ) -> None:
        self.url = url
        self.source = PatternSource(tuple(shape), dtype)
        self.rate = rate
        self.next_id = start_id
        self.gap_every = gap_every
        self.bad_status_every = bad_status_every
        self.context = zmq.Context()
        self.socket = self.context.socket(zmq.PUB if socket_type == "pub" else zmq.PUSH)
        self.socket.setsockopt(zmq.SNDHWM, hwm)
        self.socket.setsockopt(zmq.LINGER, 0)
        # A PUSH send with no reader waits: wake up to see a stop (the socket must never be
        # closed under a thread still sending on it).
        self.socket.setsockopt(zmq.SNDTIMEO, 100)
        self.socket.bind(url)
        self.sent = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def send_image(self, image_id: int, status: int = STATUS_GOOD) -> None:
        img = self.source.image(image_id)
        meta = make_metadata(image_id, self.source.shape, self.source.dtype, status=status)
        with self._lock:
            self.socket.send_multipart([meta.pack(), img], copy=False)
            self.sent += 1

    def send_raw(self, frames: list[bytes]) -> None:
        """Send any multipart message (garbage, for tests)."""
        with self._lock:
            self.socket.send_multipart(frames)

    def _next(self) -> tuple[int, int]:
        image_id = self.next_id
        n = self.sent + 1
        self.next_id += 1
        if self.gap_every and n % self.gap_every == 0:
            self.next_id += 1
        bad = self.bad_status_every and n % self.bad_status_every == 0
        return image_id, STATUS_MISSING_PACKETS if bad else STATUS_GOOD

    def run(self, count: int = 0) -> int:
        """Send ``count`` images (0: until :meth:`stop`) at the rate; the number sent."""
        t0 = time.monotonic()
        i = 0
        while not self._stop.is_set() and (count == 0 or i < count):
            if self.rate > 0:
                delay = t0 + i / self.rate - time.monotonic()
                if delay > 0 and self._stop.wait(delay):
                    break
            image_id, status = self._next()
            while True:
                try:
                    self.send_image(image_id, status)
                    break
                except zmq.Again:  # a PUSH reader is behind or gone
                    if self._stop.is_set():
                        return i
            i += 1
        return i

    def start(self, count: int = 0) -> DetectorSimulator:
        self._stop.clear()
        self._thread = threading.Thread(
            target=self.run, args=(count,), name="detector-sim", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
            if self._thread.is_alive():
                raise RuntimeError("the simulator's sending thread did not stop")
            self._thread = None

    def close(self, linger_s: float = 0.0) -> None:
        """Stop and close; ``linger_s`` lets queued images still go out (a PUSH reader
        that is behind would otherwise lose the last ones)."""
        self.stop()
        self.socket.close(linger=int(linger_s * 1000))
        self.context.term()

    def __enter__(self) -> DetectorSimulator:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="socs-agents simulate-detector",
        description="Stream detector images over ZeroMQ as the DAQWriter reads them.",
    )
    p.add_argument("--url", default="tcp://127.0.0.1:8300", help="endpoint to bind")
    p.add_argument("--shape", type=int, nargs=2, default=[512, 512], metavar=("H", "W"))
    p.add_argument(
        "--dtype",
        default="uint16",
        choices=["uint8", "uint16", "uint32", "uint64", "float16", "float32", "float64"],
    )
    p.add_argument("--rate", type=float, default=10.0, help="images per second (0: max)")
    p.add_argument("--socket", choices=["pub", "push"], default="pub")
    p.add_argument("--count", type=int, default=0, help="images to send (0: until killed)")
    p.add_argument("--start-id", type=int, default=0)
    p.add_argument("--gap-every", type=int, default=0, help="skip an id every N images")
    p.add_argument("--bad-status-every", type=int, default=0, help="status 1 every N images")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    sim = DetectorSimulator(
        args.url,
        args.shape,
        args.dtype,
        args.rate,
        args.socket,
        args.start_id,
        args.gap_every,
        args.bad_status_every,
    )
    print(
        f"streaming {args.shape[0]}x{args.shape[1]} {args.dtype} images on {args.url} "
        f"({args.socket}, {args.rate:g}/s)",
        flush=True,
    )
    try:
        sim.run(args.count)
    except KeyboardInterrupt:
        pass
    finally:
        print(f"sent {sim.sent} images", flush=True)
        sim.close(linger_s=10.0 if args.count else 0.0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
