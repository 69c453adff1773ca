"""A local crossbar hub for a site-config, as a plain process."""

from .config import (
    HubConfigError,
    HubSettings,
    hub_settings,
    load_site_config,
    render_crossbar_config,
)
from .control import HubError, default_node_dir, run_foreground, start, status, stop

__all__ = [
    "HubConfigError",
    "HubSettings",
    "hub_settings",
    "load_site_config",
    "render_crossbar_config",
    "HubError",
    "default_node_dir",
    "run_foreground",
    "start",
    "status",
    "stop",
]
