"""SNTP (RFC 4330): the 48-byte packet, a client query, and setting the clock when allowed.

No OCS or Twisted here; :func:`query` blocks for at most ``timeout`` seconds.
"""

from __future__ import annotations

import errno
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass

#: Seconds from the NTP epoch (1900-01-01) to the unix epoch (1970-01-01).
NTP_UNIX_OFFSET = 2208988800
PACKET = struct.Struct("!BBbbII4sQQQQ")
MODE_CLIENT, MODE_SERVER, MODE_BROADCAST = 3, 4, 5
LI_UNSYNCHRONIZED = 3


class SNTPError(RuntimeError):
    """No usable answer from the server; the message says why."""


def to_ntp(t: float) -> int:
    """Unix seconds to the 64-bit NTP timestamp (32.32 fixed point)."""
    return int(round((t + NTP_UNIX_OFFSET) * (1 << 32)))


def from_ntp(value: int) -> float:
    return value / (1 << 32) - NTP_UNIX_OFFSET


@dataclass(frozen=True)
class Packet:
    li: int = 0
    version: int = 4
    mode: int = MODE_CLIENT
    stratum: int = 0
    poll: int = 0
    precision: int = 0
    root_delay: float = 0.0
    root_dispersion: float = 0.0
    ref_id: bytes = b"\x00\x00\x00\x00"
    reference: int = 0
    originate: int = 0
    receive: int = 0
    transmit: int = 0

    def encode(self) -> bytes:
        first = ((self.li & 3) << 6) | ((self.version & 7) << 3) | (self.mode & 7)
        return PACKET.pack(
            first,
            self.stratum,
            self.poll,
            self.precision,
            int(self.root_delay * 65536) & 0xFFFFFFFF,
            int(self.root_dispersion * 65536) & 0xFFFFFFFF,
            self.ref_id,
            self.reference,
            self.originate,
            self.receive,
            self.transmit,
        )

    @classmethod
    def decode(cls, data: bytes) -> Packet:
        if len(data) < PACKET.size:
            raise SNTPError(f"short SNTP packet: {len(data)} bytes, expected {PACKET.size}")
        (
            first,
            stratum,
            poll,
            precision,
            rdelay,
            rdisp,
            ref_id,
            reference,
            originate,
            receive,
            transmit,
        ) = PACKET.unpack_from(data)
        return cls(
            li=first >> 6,
            version=(first >> 3) & 7,
            mode=first & 7,
            stratum=stratum,
            poll=poll,
            precision=precision,
            root_delay=rdelay / 65536,
            root_dispersion=rdisp / 65536,
            ref_id=ref_id,
            reference=reference,
            originate=originate,
            receive=receive,
            transmit=transmit,
        )


@dataclass(frozen=True)
class SNTPResult:
    server: str
    port: int
    offset_s: float
    delay_s: float
    stratum: int
    ref_id: str
    server_time: float

    def as_dict(self) -> dict:
        return {
            "server": self.server,
            "port": self.port,
            "offset_s": round(self.offset_s, 6),
            "delay_s": round(self.delay_s, 6),
            "stratum": self.stratum,
            "ref_id": self.ref_id,
            "server_time": self.server_time,
        }


def _ref_id_text(stratum: int, ref_id: bytes) -> str:
    if stratum <= 1:
        return ref_id.rstrip(b"\x00").decode("ascii", "replace")
    return ".".join(str(b) for b in ref_id)


def query(
    server: str, port: int = 123, timeout: float = 2.0, clock: Callable[[], float] = time.time
) -> SNTPResult:
    """Ask ``server`` for the time once; return offset (server minus us), delay, stratum.

    Raises:
        SNTPError: no answer within ``timeout``, an unresolvable name, or an answer that is
            not a valid synchronised server reply to this request.
    """
    try:
        infos = socket.getaddrinfo(server, port, type=socket.SOCK_DGRAM)
    except OSError as e:  # gaierror, or a port getaddrinfo does not take (True)
        raise SNTPError(f"cannot resolve NTP server {server!r}: {e}") from None
    family, _, _, _, addr = infos[0]
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        t1 = clock()
        request = Packet(transmit=to_ntp(t1))
        try:
            sock.sendto(request.encode(), addr)
            deadline = time.monotonic() + timeout
            while True:
                sock.settimeout(max(0.001, deadline - time.monotonic()))
                data, peer = sock.recvfrom(512)
                t4 = clock()
                reply = Packet.decode(data)
                if reply.originate == request.transmit:
                    break  # anything else is a stray or late answer to someone else
        except TimeoutError:
            raise SNTPError(
                f"no answer from NTP server {server}:{port} within {timeout:g} s"
            ) from None
        except OSError as e:
            raise SNTPError(f"NTP server {server}:{port}: {e.strerror or e}") from None
    if reply.mode not in (MODE_SERVER, MODE_BROADCAST):
        raise SNTPError(
            f"NTP server {server}:{port} answered with mode {reply.mode}, not a server reply"
        )
    if reply.stratum == 0:
        code = reply.ref_id.rstrip(b"\x00").decode("ascii", "replace")
        raise SNTPError(f"NTP server {server}:{port} sent a kiss-of-death ({code})")
    if reply.li == LI_UNSYNCHRONIZED:
        raise SNTPError(f"NTP server {server}:{port} says its clock is not synchronised")
    t2, t3 = from_ntp(reply.receive), from_ntp(reply.transmit)
    offset = ((t2 - t1) + (t3 - t4)) / 2.0
    delay = (t4 - t1) - (t3 - t2)
    return SNTPResult(
        server=server,
        port=port,
        offset_s=offset,
        delay_s=delay,
        stratum=reply.stratum,
        ref_id=_ref_id_text(reply.stratum, reply.ref_id),
        server_time=t4 + offset,
    )


def set_clock(
    offset_s: float, allowed: bool, settime: Callable[[float], None] | None = None
) -> tuple[bool, str]:
    """Step the system clock by ``offset_s`` when ``allowed`` and the OS permits it.

    Returns:
        ``(clock_set, note)``: whether the clock was set, and what happened.
    """
    if not allowed:
        return (
            False,
            "clock not set: setting it is not allowed (agent argument "
            "--allow-set-clock and the sync argument set_clock are both needed)",
        )
    if settime is None:

        def settime(t):
            time.clock_settime(time.CLOCK_REALTIME, t)

    try:
        settime(time.time() + offset_s)
    except PermissionError:
        return False, "clock not set: the OS does not permit it (needs CAP_SYS_TIME)"
    except OSError as e:
        if e.errno in (errno.EPERM, errno.EACCES):
            return False, "clock not set: the OS does not permit it (needs CAP_SYS_TIME)"
        return False, f"clock not set: {e.strerror or e}"
    return True, f"clock stepped by {offset_s:+.6f} s"
