"""A small SNTP server for tests and the demo: answers on UDP with a clock of its own.

responder = SNTPResponder(offset=0.25).start()   # 127.0.0.1, a free port
...query('127.0.0.1', responder.port)...
responder.close()
"""

from __future__ import annotations

import socket
import threading
import time

from ...agents.visibility_recorder.sntp import MODE_CLIENT, MODE_SERVER, Packet, to_ntp


class SNTPResponder:
    """Answers SNTP client requests from a thread.

    Args:
        host, port: where to listen (a free port on loopback by default).
        offset: seconds the responder's clock is ahead of this machine's.
        stratum: the stratum it claims (0 sends a kiss-of-death).
        silent: receive but never answer (a dead server).
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        offset: float = 0.0,
        stratum: int = 2,
        silent: bool = False,
    ) -> None:
        self.offset = offset
        self.stratum = stratum
        self.silent = silent
        self.requests = 0
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._sock.bind((host, port))
        self._sock.settimeout(0.2)
        self.host, self.port = self._sock.getsockname()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> SNTPResponder:
        self._thread = threading.Thread(target=self._serve, name="sntp-responder", daemon=True)
        self._thread.start()
        return self

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                data, addr = self._sock.recvfrom(512)
            except TimeoutError:
                continue
            except OSError:
                return
            received = time.time() + self.offset
            try:
                request = Packet.decode(data)
            except Exception:
                continue
            self.requests += 1
            if self.silent or request.mode != MODE_CLIENT:
                continue
            reply = Packet(
                li=0,
                version=request.version,
                mode=MODE_SERVER,
                stratum=self.stratum,
                precision=-20,
                ref_id=b"LOCL" if self.stratum <= 1 else b"\x7f\x00\x00\x01",
                reference=to_ntp(received - 1),
                originate=request.transmit,
                receive=to_ntp(received),
                transmit=to_ntp(time.time() + self.offset),
            )
            try:
                self._sock.sendto(reply.encode(), addr)
            except OSError:
                pass

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
        self._sock.close()

    def __enter__(self) -> SNTPResponder:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()
