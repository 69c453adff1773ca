"""Start, stop and check a local crossbar hub for a site-config.

The node directory (config.json, crossbar's keys, ``crossbar.log``, ``hub.pid``) lives outside
the source tree: ``$SOCS_AGENTS_STATE_DIR/hub-<port>``, by default
``${XDG_STATE_HOME:-~/.local/state}/socs-agents/hub-<port>``.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass

from .config import HubSettings, render_crossbar_config


class HubError(RuntimeError):
    """The hub could not be started or stopped; the message says why."""


def state_dir() -> str:
    base = os.environ.get("SOCS_AGENTS_STATE_DIR")
    if not base:
        xdg = os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state")
        base = os.path.join(xdg, "socs-agents")
    return base


def default_node_dir(settings: HubSettings) -> str:
    return os.path.join(state_dir(), f"hub-{settings.port}")


@dataclass
class HubStatus:
    node_dir: str
    pid: int | None
    alive: bool
    answering: bool

    def describe(self, settings: HubSettings) -> str:
        if self.answering:
            return (
                f"hub running (pid {self.pid}) at {settings.wamp_server}, "
                f"HTTP bridge {settings.wamp_http}, realm {settings.realm}; "
                f"node dir {self.node_dir}"
            )
        if self.alive:
            return f"hub process {self.pid} exists but does not answer at {settings.info_url}"
        return f"hub not running (node dir {self.node_dir})"


def _read_pid(node_dir: str) -> int | None:
    try:
        with open(os.path.join(node_dir, "hub.pid")) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


def _pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child (ours, not yet reaped) counts as gone.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


def answering(settings: HubSettings, timeout: float = 0.5) -> bool:
    try:
        with urllib.request.urlopen(settings.info_url, timeout=timeout) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError):
        return False


def status(settings: HubSettings, node_dir: str | None = None) -> HubStatus:
    node_dir = node_dir or default_node_dir(settings)
    pid = _read_pid(node_dir)
    alive = _pid_alive(pid) and is_hub_process(pid, node_dir)
    return HubStatus(node_dir, pid, alive, answering(settings))


def _check_port_free(settings: HubSettings) -> None:
    probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    # As crossbar (Twisted) binds: connections of a hub just stopped, left in TIME_WAIT,
    # do not keep a new hub from listening; only a program listening there does.
    probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        probe.bind((settings.interface, settings.port))
    except OSError as e:
        if e.errno == errno.EADDRINUSE:
            raise HubError(
                f"port {settings.port} on {settings.interface} is taken by another "
                "program; stop it or choose another port in the site-config's "
                "hub.wamp_server"
            ) from None
        raise HubError(f"cannot listen on {settings.interface}:{settings.port}: {e}") from None
    finally:
        probe.close()


def _crossbar_executable() -> str:
    beside = os.path.join(os.path.dirname(sys.executable), "crossbar")
    found = beside if os.path.exists(beside) else shutil.which("crossbar")
    if not found:
        raise HubError("crossbar is not installed: pip install 'socs-agents[hub]'")
    return found


def write_node_config(settings: HubSettings, node_dir: str) -> list[str]:
    """Write config.json into the node dir; return the crossbar command that runs it."""
    os.makedirs(node_dir, exist_ok=True)
    config_path = os.path.join(node_dir, "config.json")
    with open(config_path, "w") as f:
        json.dump(render_crossbar_config(settings), f, indent=2)
    return [
        _crossbar_executable(),
        "start",
        "--cbdir",
        node_dir,
        "--config",
        config_path,
        "--loglevel",
        "info",
        "--color",
        "false",
    ]


def run_foreground(settings: HubSettings, node_dir: str | None = None) -> None:
    """Replace this process by crossbar (for containers and systemd units)."""
    _check_port_free(settings)
    cmd = write_node_config(settings, node_dir or default_node_dir(settings))
    os.execv(cmd[0], cmd)


def start(
    settings: HubSettings, node_dir: str | None = None, timeout: float = 20.0
) -> tuple[int, float]:
    """Start crossbar in the background and wait until it answers.

    Returns:
        (pid, seconds from spawn to the first answer)

    Raises:
        HubError: already running, port taken, crossbar missing, or it did not come up.
    """
    node_dir = node_dir or default_node_dir(settings)
    current = status(settings, node_dir)
    if current.alive:
        raise HubError(f"a hub from {node_dir} is already running (pid {current.pid})")
    _check_port_free(settings)
    cmd = write_node_config(settings, node_dir)
    log_path = os.path.join(node_dir, "crossbar.log")
    t0 = time.monotonic()
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            cmd,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    with open(os.path.join(node_dir, "hub.pid"), "w") as f:
        f.write(str(proc.pid))
    deadline = t0 + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise HubError(
                f"crossbar exited with code {proc.returncode} during start; "
                f"see {log_path}:\n{_tail(log_path)}"
            )
        if answering(settings, timeout=0.25):
            return proc.pid, time.monotonic() - t0
        time.sleep(0.05)
    _terminate(proc.pid, 5.0)
    raise HubError(
        f"crossbar did not answer at {settings.info_url} within {timeout:.0f} s; see {log_path}"
    )


def _tail(path: str, lines: int = 15) -> str:
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-lines:])
    except OSError:
        return ""


def _terminate(pid: int, timeout: float) -> bool:
    """SIGTERM the hub's process group, SIGKILL after ``timeout``; True if it was running."""
    if not _pid_alive(pid):
        return False
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return False
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass
        if not _pid_alive(pid):
            return True
        time.sleep(0.05)
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    return True


def is_hub_process(pid: int, node_dir: str) -> bool:
    """True only if ``pid`` is a crossbar run from ``node_dir``: a stale ``hub.pid`` may name
    a process id that the system has since given to another program, which must never be
    signalled.

    Crossbar renames its process (``crossbar-controller``), so the check reads the process
    name, then the ``node.pid`` that crossbar writes into its node dir (its pid and argv).
    """
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
    except OSError:
        return False
    if not argv or not any(os.path.basename(a).startswith("crossbar") for a in argv[:2]):
        return False
    try:
        with open(os.path.join(node_dir, "node.pid")) as f:
            recorded = json.load(f)
        return int(recorded["pid"]) == pid
    except (OSError, ValueError, KeyError, TypeError):
        pass
    # no node.pid yet (crossbar still starting): its own argv names the node dir
    if "--cbdir" in argv[:-1]:
        cbdir = argv[argv.index("--cbdir") + 1]
        return os.path.realpath(cbdir) == os.path.realpath(node_dir)
    return False


def stop(settings: HubSettings, node_dir: str | None = None, timeout: float = 10.0) -> bool:
    """Stop the hub started from ``node_dir``; False if none was running (a ``hub.pid``
    naming another program is removed, and that program is left alone)."""
    node_dir = node_dir or default_node_dir(settings)
    pid = _read_pid(node_dir)
    ours = bool(pid) and is_hub_process(pid, node_dir)
    stopped = _terminate(pid, timeout) if ours else False
    try:
        os.remove(os.path.join(node_dir, "hub.pid"))
    except FileNotFoundError:
        pass
    return stopped
