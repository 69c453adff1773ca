"""SNTP packets, the client against the local responder, and the clock-setting decision."""

import errno
import socket
import time

import pytest

from socs_agents.agents.visibility_recorder.sntp import (
    MODE_CLIENT,
    MODE_SERVER,
    PACKET,
    Packet,
    SNTPError,
    from_ntp,
    query,
    set_clock,
    to_ntp,
)
from socs_agents.dev.sim.sntp import SNTPResponder


def test_packet_round_trip_and_layout():
    p = Packet(
        li=0,
        version=4,
        mode=MODE_CLIENT,
        stratum=2,
        poll=6,
        precision=-20,
        root_delay=0.5,
        root_dispersion=0.25,
        ref_id=b"GPS\x00",
        reference=to_ntp(1.0),
        originate=to_ntp(2.0),
        receive=to_ntp(3.0),
        transmit=to_ntp(1_700_000_000.123456),
    )
    data = p.encode()
    assert len(data) == PACKET.size == 48
    assert data[0] == 0x23  # LI 0, version 4, mode 3: what every SNTP client sends
    assert Packet.decode(data) == p
    assert from_ntp(p.transmit) == pytest.approx(1_700_000_000.123456, abs=1e-6)
    with pytest.raises(SNTPError, match="short SNTP packet"):
        Packet.decode(data[:40])


@pytest.mark.parametrize("offset", [0.0, 2.5, -1.25])
def test_query_measures_the_responders_offset(offset):
    with SNTPResponder(offset=offset, stratum=3) as server:
        result = query("127.0.0.1", server.port, timeout=2)
    assert result.offset_s == pytest.approx(offset, abs=0.02)
    assert 0 <= result.delay_s < 0.1
    assert result.stratum == 3 and result.ref_id == "127.0.0.1"
    assert result.server_time == pytest.approx(time.time() + offset, abs=0.5)
    assert server.requests == 1


def test_query_errors():
    with SNTPResponder(silent=True) as server:
        t0 = time.monotonic()
        with pytest.raises(
            SNTPError, match=f"no answer from NTP server 127.0.0.1:{server.port} within 0.3 s"
        ):
            query("127.0.0.1", server.port, timeout=0.3)
        assert time.monotonic() - t0 < 1.5
    with SNTPResponder(stratum=0) as server:
        with pytest.raises(SNTPError, match="kiss-of-death"):
            query("127.0.0.1", server.port, timeout=2)
    with pytest.raises(SNTPError, match="cannot resolve"):
        query("no-such-host.invalid", 123, timeout=1)
    # a bool is an int, but getaddrinfo raises a plain OSError for it (the fuzz found it)
    with pytest.raises(SNTPError, match="cannot resolve"):
        query("127.0.0.1", True, timeout=1)


def test_a_reply_to_another_request_is_ignored():
    """An answer whose originate time is not our transmit time is not ours."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as fake:
        fake.bind(("127.0.0.1", 0))
        port = fake.getsockname()[1]
        import threading

        def serve():
            data, addr = fake.recvfrom(512)
            req = Packet.decode(data)
            stray = Packet(
                mode=MODE_SERVER,
                stratum=2,
                originate=req.transmit + 1,
                receive=to_ntp(time.time() + 100),
                transmit=to_ntp(time.time() + 100),
            )
            fake.sendto(stray.encode(), addr)
            good = Packet(
                mode=MODE_SERVER,
                stratum=2,
                originate=req.transmit,
                receive=to_ntp(time.time()),
                transmit=to_ntp(time.time()),
            )
            fake.sendto(good.encode(), addr)

        t = threading.Thread(target=serve)
        t.start()
        result = query("127.0.0.1", port, timeout=2)
        t.join()
    assert abs(result.offset_s) < 0.05


def test_set_clock_only_when_allowed_and_permitted():
    calls = []
    assert set_clock(1.0, allowed=False, settime=calls.append)[0] is False
    assert calls == []
    ok, note = set_clock(0.5, allowed=True, settime=calls.append)
    assert ok and note == "clock stepped by +0.500000 s" and len(calls) == 1

    def refuse(_):
        raise PermissionError(errno.EPERM, "Operation not permitted")

    ok, note = set_clock(0.5, allowed=True, settime=refuse)
    assert not ok and "the OS does not permit it" in note
