"""Pieces every agent serving HTTP with twisted.web needs: a body-size-limited request and a
client allow-list.

* :func:`limited_request_factory`: a ``twisted.web.server.Request`` class that stops
  buffering a body over ``max_body_bytes`` (by its Content-Length, or as chunks arrive), so
  an oversize body costs no memory and is never parsed; the resource sees
  ``request.body_too_large`` and answers 413.
* :class:`ClientAllowList`: the ``--http-allow`` rule (addresses and networks; empty allows
  everyone who can reach the interface).
"""

from __future__ import annotations

import io
import ipaddress
from collections.abc import Iterable

from twisted.web import server


def limited_request_factory(max_body_bytes: int) -> type[server.Request]:
    """A Request class refusing to buffer bodies over ``max_body_bytes``.

    Such a request reaches the resource with ``body_too_large = True`` and an empty
    ``content``; the rest of the body is read and dropped, so the connection stays usable.
    """
    if max_body_bytes < 0:
        raise ValueError("max_body_bytes must be >= 0")

    class LimitedRequest(server.Request):
        body_too_large = False
        max_body = max_body_bytes
        _body_received = 0

        def gotLength(self, length):
            if length is not None and length > self.max_body:
                self.body_too_large = True
                self.content = io.BytesIO()
                return
            # in memory, whatever the size under the limit (Twisted spools bodies over
            # 100 kB to a temporary file: one 4,096-sample chunk is about that)
            self.content = io.BytesIO()

        def handleContentChunk(self, data: bytes) -> None:
            if self.body_too_large:
                return
            self._body_received += len(data)
            if self._body_received > self.max_body:
                self.body_too_large = True
                self.content = io.BytesIO()
                return
            super().handleContentChunk(data)

    return LimitedRequest


#: the clients an HTTP API serves unless the site-config names others: this host only
LOOPBACK = ("127.0.0.0/8", "::1/128")


def add_http_allow_option(group, what: str = "the HTTP API") -> None:
    """``--http-allow`` for an agent's parser: the same option, text and default in every
    agent that serves HTTP (read it with :meth:`ClientAllowList.from_option`)."""
    group.add_argument(
        "--http-allow",
        action="extend",
        nargs="+",
        metavar="CIDR",
        help=f"Client network or address that {what} serves; others get 403 and are "
        "counted. Several may follow one --http-allow (ocs keeps one site-config entry per "
        "option). Default: this host only (127.0.0.0/8 and ::1); add the site network, "
        "e.g. 10.10.0.0/16, with --http-interface 0.0.0.0 for remote clients.",
    )


class ClientAllowList:
    """Which client addresses may use an HTTP API.

    Args:
        entries: addresses or networks (``127.0.0.1``, ``10.0.0.0/8``, ``::1``). Empty:
            every client is allowed (the listening interface is the only limit).

    Raises:
        ValueError: an entry that is neither an address nor a network.
    """

    def __init__(self, entries: Iterable[str] = ()) -> None:
        self.networks = tuple(ipaddress.ip_network(e.strip(), strict=False) for e in entries)

    @classmethod
    def from_option(cls, values: Iterable[str] | None) -> ClientAllowList:
        """The list of ``--http-allow``: what it names, or :data:`LOOPBACK` when absent."""
        return cls(values or LOOPBACK)

    def __bool__(self) -> bool:
        return bool(self.networks)

    def __repr__(self) -> str:
        return f"ClientAllowList({[str(n) for n in self.networks]!r})"

    def allows(self, host: str | None) -> bool:
        """True when ``host`` (an IP address as text) lies in one of the networks."""
        if not self.networks:
            return True
        try:
            addr = ipaddress.ip_address((host or "").split("%", 1)[0])
        except ValueError:
            return False  # not an IP (a UNIX socket): not on any allowed network
        if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
            addr = addr.ipv4_mapped
        return any(addr.version == n.version and addr in n for n in self.networks)
