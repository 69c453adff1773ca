"""runtime.http: the body-size-limited request and the client allow-list."""

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport
from twisted.web import resource, server

from socs_agents.runtime.http import ClientAllowList, limited_request_factory


class Echo(resource.Resource):
    isLeaf = True

    def render(self, request):
        if request.body_too_large:
            request.setResponseCode(413)
            return b"too large"
        return b"got %d" % len(request.content.read())


def exchange(raw: bytes, limit: int = 100) -> bytes:
    site = server.Site(Echo(), requestFactory=limited_request_factory(limit))
    proto = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 1234))
    transport = StringTransport()
    proto.makeConnection(transport)
    proto.dataReceived(raw)
    out = transport.value()
    proto.connectionLost(None)
    return out


def post(body: bytes, chunked: bool = False) -> bytes:
    if chunked:
        data = b"".join(
            b"%x\r\n%s\r\n" % (len(body[i : i + 30]), body[i : i + 30])
            for i in range(0, len(body), 30)
        )
        return (
            b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
            + data
            + b"0\r\n\r\n"
        )
    return b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)


@pytest.mark.parametrize("chunked", [False, True])
def test_body_at_the_limit_is_read(chunked):
    out = exchange(post(b"x" * 100, chunked))
    assert out.startswith(b"HTTP/1.1 200") and out.endswith(b"got 100")


@pytest.mark.parametrize("chunked", [False, True])
def test_body_over_the_limit_is_dropped_and_flagged(chunked):
    out = exchange(post(b"x" * 101, chunked))
    assert out.startswith(b"HTTP/1.1 413") and out.endswith(b"too large")


def test_connection_stays_usable_after_an_oversize_body():
    out = exchange(post(b"x" * 500) + post(b"y" * 10))
    assert out.count(b"HTTP/1.1 413") == 1 and out.endswith(b"got 10")


def test_negative_limit_is_refused():
    with pytest.raises(ValueError):
        limited_request_factory(-1)


def test_allow_list():
    allow = ClientAllowList(["127.0.0.1", "10.0.0.0/8", "::1"])
    assert allow
    assert allow.allows("127.0.0.1") and allow.allows("10.2.3.4") and allow.allows("::1")
    assert allow.allows("::ffff:10.1.1.1")  # IPv4-mapped
    assert not allow.allows("192.168.1.1") and not allow.allows("127.0.0.2")
    assert not allow.allows("not-an-ip") and not allow.allows(None)
    everyone = ClientAllowList()
    assert not everyone and everyone.allows("8.8.8.8") and everyone.allows(None)
    with pytest.raises(ValueError):
        ClientAllowList(["10.0.0.0/33"])


@given(st.ip_addresses(v=4), st.integers(0, 32), st.ip_addresses(v=4))
def test_allow_list_is_network_membership(net_addr, prefix, client):
    net = ipaddress.ip_network(f"{net_addr}/{prefix}", strict=False)
    assert ClientAllowList([str(net)]).allows(str(client)) == (client in net)
