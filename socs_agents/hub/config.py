"""Render an OCS crossbar configuration from a site-config's ``hub`` section.

The layout matches the template that ocs ships (realm, roles ``iocs_agent`` and
``iocs_controller`` on the ``address_root`` prefix, websocket at ``/ws`` and the HTTP caller
bridge at ``/call``), with what crossbar releases on PyPI need today: a websocket
``auto_ping_size`` within 12-125, an explicit listening interface, and a ``/info`` node-info
path that ``ocs.testing.check_crossbar_connection`` polls.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

import yaml

DEFAULT_INTERFACE = "127.0.0.1"


class HubConfigError(ValueError):
    """The site-config's hub section cannot describe a local hub."""


@dataclass(frozen=True)
class HubSettings:
    realm: str
    address_root: str
    port: int
    interface: str = DEFAULT_INTERFACE
    ws_path: str = "ws"
    http_path: str = "call"

    @property
    def connect_host(self) -> str:
        """Where a local client reaches the hub (a wildcard interface is reached on loopback)."""
        return "127.0.0.1" if self.interface in ("0.0.0.0", "", "::") else self.interface

    @property
    def wamp_server(self) -> str:
        return f"ws://{self.connect_host}:{self.port}/{self.ws_path}"

    @property
    def wamp_http(self) -> str:
        return f"http://{self.connect_host}:{self.port}/{self.http_path}"

    @property
    def info_url(self) -> str:
        return f"http://{self.connect_host}:{self.port}/info"


def load_site_config(site_file: str) -> dict:
    if not os.path.exists(site_file):
        raise HubConfigError(f"site-config file {site_file!r} does not exist")
    with open(site_file) as f:
        data = yaml.safe_load(f)
    if not isinstance(data, dict) or not isinstance(data.get("hub"), dict):
        raise HubConfigError(f"{site_file}: no 'hub' section")
    return data


def hub_settings(hub: dict) -> HubSettings:
    """Read realm, address root, port, paths and interface from a site-config hub section.

    ``interface`` is an optional key of this package (ocs ignores it): the address crossbar
    listens on, 127.0.0.1 unless the operator asks for another.
    """
    missing = [k for k in ("wamp_server", "wamp_realm", "address_root") if not hub.get(k)]
    if missing:
        raise HubConfigError(f"hub section lacks {', '.join(missing)}")
    ws = urlparse(str(hub["wamp_server"]))
    if ws.scheme not in ("ws", "wss") or ws.port is None:
        raise HubConfigError(f"wamp_server {hub['wamp_server']!r} must look like ws://HOST:PORT/ws")
    http_path = "call"
    if hub.get("wamp_http"):
        http = urlparse(str(hub["wamp_http"]))
        if http.port is not None and http.port != ws.port:
            raise HubConfigError(
                f"wamp_http and wamp_server must use the same port (got {http.port} and {ws.port})"
            )
        http_path = http.path.strip("/") or "call"
    return HubSettings(
        realm=str(hub["wamp_realm"]),
        address_root=str(hub["address_root"]),
        port=int(ws.port),
        interface=str(hub.get("interface", DEFAULT_INTERFACE)),
        ws_path=ws.path.strip("/") or "ws",
        http_path=http_path,
    )


def _role(name: str, address_root: str, register: bool) -> dict:
    return {
        "name": name,
        "permissions": [
            {
                "uri": f"{address_root}.",
                "match": "prefix",
                "allow": {"call": True, "register": register, "publish": True, "subscribe": True},
                "disclose": {"caller": False, "publisher": False},
                "cache": True,
            }
        ],
    }


def render_crossbar_config(
    settings: HubSettings, extra_paths: dict[str, Any] | None = None
) -> dict:
    """The crossbar node configuration (as a dict, to be written as config.json)."""
    paths: dict[str, Any] = {
        settings.ws_path: {
            "type": "websocket",
            "auth": {"anonymous": {"type": "static", "role": "iocs_agent"}},
            "options": {
                "open_handshake_timeout": 2500,
                "close_handshake_timeout": 1000,
                "auto_ping_interval": 10000,
                "auto_ping_timeout": 5000,
                # crossbar refuses sizes outside 12..125 (ocs's template has 4)
                "auto_ping_size": 12,
            },
        },
        settings.http_path: {
            "type": "caller",
            "realm": settings.realm,
            "role": "iocs_controller",
            "options": {},
        },
        "info": {"type": "nodeinfo"},
    }
    paths.update(extra_paths or {})
    return {
        "version": 2,
        "workers": [
            {
                "type": "router",
                "realms": [
                    {
                        "name": settings.realm,
                        "roles": [
                            _role("iocs_agent", settings.address_root, True),
                            _role("iocs_controller", settings.address_root, False),
                        ],
                    }
                ],
                "transports": [
                    {
                        "type": "web",
                        "endpoint": {
                            "type": "tcp",
                            "port": settings.port,
                            "interface": settings.interface,
                        },
                        "paths": paths,
                    }
                ],
            }
        ],
    }
