"""The HTTP channel's early refusals, driven on twisted's in-memory transport (no reactor,
no socket): a client outside --http-allow gets 403 and a Content-Length over the limit 413,
both JSON, at once after the headers, counted, the body never read, the resource never
called."""

import json

from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport
from twisted.web.resource import Resource

from socs_agents.agents.file_orchestrator.http_api import OrchestratorSite
from socs_agents.runtime.http import ClientAllowList


class Recording(Resource):
    isLeaf = True

    def __init__(self):
        super().__init__()
        self.rendered = []

    def render(self, request):
        self.rendered.append(request.content.read())
        request.setHeader(b"content-type", b"application/json")
        return b'{"status": "ok"}'


def connect(peer_host, max_body=1000, allow=("127.0.0.0/8",)):
    refusals = []
    resource = Recording()
    site = OrchestratorSite(
        resource,
        max_body_bytes=max_body,
        allowed_clients=ClientAllowList(list(allow)),
        on_refusal=lambda path, reason, detail: refusals.append((path, reason)),
    )
    peer = IPv4Address("TCP", peer_host, 40000)
    proto = site.buildProtocol(peer)
    transport = StringTransport(peerAddress=peer)
    proto.makeConnection(transport)
    return proto, transport, resource, refusals


def answer(transport):
    head, _, body = transport.value().partition(b"\r\n\r\n")
    return int(head.split()[1]), head.decode().lower(), json.loads(body) if body else None


def test_a_client_outside_the_networks_gets_403_json_and_is_counted():
    proto, transport, resource, refusals = connect("10.1.2.3")
    proto.dataReceived(b"GET /stats HTTP/1.1\r\nHost: x\r\n\r\n")
    status, head, body = answer(transport)
    assert status == 403 and "connection: close" in head
    assert body["reason"] == "client_not_allowed" and "10.1.2.3" in body["error"]
    assert refusals == [("/stats", "client_not_allowed")]
    assert resource.rendered == [] and transport.disconnecting


def test_an_allowed_client_is_served():
    proto, transport, resource, refusals = connect("127.0.0.1")
    proto.dataReceived(b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}")
    status, _, body = answer(transport)
    assert status == 200 and body == {"status": "ok"} and resource.rendered == [b"{}"]
    assert refusals == [] and not transport.disconnecting


def test_a_huge_content_length_is_413_before_the_body():
    proto, transport, resource, refusals = connect("127.0.0.1")
    proto.dataReceived(
        b'POST /new-file HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999\r\n\r\n{"a'
    )
    status, head, body = answer(transport)
    assert status == 413 and body["reason"] == "body_too_large"
    assert refusals == [("/new-file", "body_too_large")]
    assert transport.disconnecting and resource.rendered == []
    proto.dataReceived(b"x" * 5000)  # whatever still comes is dropped
    assert resource.rendered == []


def test_a_chunked_body_growing_past_the_limit_is_cut_off():
    proto, transport, resource, refusals = connect("127.0.0.1", max_body=1000)
    proto.dataReceived(b"POST /new-file HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
    assert transport.value() == b""
    for _ in range(3):
        proto.dataReceived(b"190\r\n" + b" " * 400 + b"\r\n")
    status, _, body = answer(transport)
    assert status == 413 and body["reason"] == "body_too_large"
    assert refusals == [("/new-file", "body_too_large")] and resource.rendered == []


def test_a_body_at_the_limit_is_taken():
    proto, transport, resource, _ = connect("127.0.0.1", max_body=10)
    proto.dataReceived(b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n0123456789")
    assert answer(transport)[0] == 200 and resource.rendered == [b"0123456789"]


def test_a_body_declared_as_no_json_is_415_before_it_is_read():
    proto, transport, resource, refusals = connect("127.0.0.1")
    proto.dataReceived(
        b"POST /new-file HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=x"
        b"\r\nContent-Length: 3\r\n\r\na=1"
    )
    status, _, body = answer(transport)
    assert status == 415 and body["reason"] == "wrong_content_type"
    assert refusals == [("/new-file", "wrong_content_type")] and resource.rendered == []
    # no body, no content-type question
    proto, transport, resource, _ = connect("127.0.0.1")
    proto.dataReceived(b"GET /stats HTTP/1.1\r\nHost: x\r\nContent-Type: application/xml\r\n\r\n")
    assert answer(transport)[0] == 200
