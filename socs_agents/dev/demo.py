"""``socs-agents demo start|stop``: the site of ``site-config.yaml`` on this machine.

Start brings up the hub, then ocs's HostManager, which launches every agent the site-config
lists for ``localhost``; it waits until each answers, shows them working, and leaves them
running. Stop ends the HostManager (and with it its agents) and the hub.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import yaml

from .. import hub
from ..hub.control import _pid_alive, state_dir
from .testing import wait_for


def _demo_dir() -> str:
    path = os.path.join(state_dir(), "demo")
    os.makedirs(path, exist_ok=True)
    return path


def _export_password_file(site: dict, workdir: str) -> None:
    """Write an OCS password file for the hub's ``override:`` policy and point
    ``OCS_PASSWORDS_FILE`` at it, for this process and the agents the HostManager starts: the
    manager reaches its recorders and the showcases call level-2 operations the way a site's
    clients do, with no password on any command line."""
    policy = str((site.get("hub") or {}).get("access_policy") or "")
    if not policy.startswith("override:"):
        return
    levels = policy.split(":", 1)[1].split(",")
    entry = {"default": True, "password_2": levels[0]}
    if len(levels) > 1:
        entry["password_3"] = levels[1]
    path = os.path.join(workdir, "ocs-passwords.yaml")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        yaml.safe_dump([entry], f)
    os.environ["OCS_PASSWORDS_FILE"] = path


def _instances(site: dict) -> list[dict]:
    host = (site.get("hosts") or {}).get("localhost") or {}
    return list(host.get("agent-instances") or [])


def _client(site_file: str, instance_id: str):
    from ocs.ocs_client import OCSClient

    return OCSClient(instance_id, args=["--site-file", site_file, "--site-host", "localhost"])


def _try_client(site_file: str, instance_id: str):
    try:
        return _client(site_file, instance_id)
    except Exception:
        return None


def _show_operations(site_file: str, inst: dict) -> None:
    client = _client(site_file, inst["instance-id"])
    api = client._client.get_api()
    ops = [name for name, *_ in api["tasks"]] + [name for name, *_ in api["processes"]]
    print(f"\n{inst['instance-id']}: operations {', '.join(ops)}")


def _show_pysmurf_monitor(site_file: str, inst: dict) -> None:
    """Send simulated smurf files to the monitor; show the rows and the session feed."""
    from ..db.suprsync import SupRsyncDB
    from .sim.smurf import SmurfSimulator

    args = {a[0]: a[1] for a in inst.get("arguments", []) if len(a) == 2}
    workdir = _demo_dir()
    db_path = args.get("--db-path", "/data/so/databases/suprsync.db")
    if not os.path.isabs(db_path):
        db_path = os.path.join(workdir, db_path)  # agents run in the HostManager's folder
    client = _client(site_file, inst["instance-id"])
    before = client.run.status().session.get("data", {}).get("counters", {})
    sim = SmurfSimulator(
        os.path.join(workdir, "smurf_data"),
        args.get("--udp-host", "127.0.0.1"),
        int(args.get("--udp-port", 8200)),
    )
    files = sim.files(20, g3_every=5)
    t0 = time.monotonic()
    sim.send_paced([dg for _, dg in files] + [sim.session_data(), sim.metadata()], rate=200)
    sim.close()
    want = before.get("files_announced", 0) + len(files)

    def caught_up():
        data = client.run.status().session.get("data", {})
        c = data.get("counters", {})
        return data if c.get("files_announced", 0) >= want and not data.get("pending") else None

    data = wait_for(caught_up, 15, "the monitor to register the simulated files")
    print(
        f"\n{inst['instance-id']}: simulator wrote {len(files)} files under "
        f"{sim.root} and announced them over UDP; the run session (refreshed every "
        f"second) showed all of them settled {time.monotonic() - t0:.2f} s after the first "
        "was sent"
    )
    c = data["counters"]
    print(
        f"  counters: received {c['received']}, registered {c['registered']}, duplicates "
        f"{c['duplicates']}, session messages {c['session_messages']}, metadata "
        f"{c['metadata']}; rejected {sum(data['rejected'].values())}"
    )
    db = SupRsyncDB(db_path, create_all=False)
    try:
        print(f"  SupRsync database {db_path}: {db.archives()}")
        for row in db.files(limit=4):
            print(f"    {row['archive_name']:<11} {row['remote_path']}")
        print(
            f"  timecode dirs: {[(t['archive_name'], t['timecode']) for t in db.timecode_dirs()]}"
        )
    finally:
        db.close()
    print(f"  look further: .venv/bin/suprsync-db --db {db_path} list")


#: agent class -> module of .showcases whose ``show(site_file, inst, workdir)`` the demo runs
#: once an instance answers
SHOWCASES: dict[str, str] = {
    "FileOrchestrator": "file_orchestrator",
    "VisibilityManager": "visibility",
    "GWDataBuffer": "gw_data_buffer",
    "DAQWriter": "daq_writer",
}


def _show(site_file: str, inst: dict) -> None:
    agent_class = inst["agent-class"]
    if agent_class == "PysmurfMonitor":
        _show_pysmurf_monitor(site_file, inst)
    elif agent_class in SHOWCASES:
        import importlib

        module = importlib.import_module(f"{__package__}.showcases.{SHOWCASES[agent_class]}")
        module.show(site_file, inst, _demo_dir())
    else:
        _show_operations(site_file, inst)


def start(site_file: str, timeout: float = 60.0) -> int:
    site_file = os.path.abspath(site_file)
    site = hub.load_site_config(site_file)
    settings = hub.hub_settings(site["hub"])
    workdir = _demo_dir()
    _export_password_file(site, workdir)
    if hub.status(settings).answering:
        print(f"hub already running at {settings.wamp_server}")
    else:
        _, seconds = hub.start(settings)
        print(
            f"hub up in {seconds:.2f} s at {settings.wamp_server} "
            f"(node dir {hub.default_node_dir(settings)})"
        )

    managers = [i for i in _instances(site) if i.get("agent-class") == "HostManager"]
    managed = [
        i
        for i in _instances(site)
        if i.get("agent-class") != "HostManager"
        and i.get("manage", "host/up") in ("host/up", "host", "up", "yes")
    ]
    if not managers:
        print("site-config lists no HostManager for localhost; nothing to launch")
        return 1
    hm_id = managers[0]["instance-id"]
    if _try_client(site_file, hm_id) is None:
        log = open(os.path.join(workdir, f"{hm_id}.log"), "ab")
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "ocs.agent_cli",
                "--instance-id",
                hm_id,
                "--site-file",
                site_file,
                "--site-host",
                "localhost",
                "--working-dir",
                workdir,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=workdir,
            start_new_session=True,
        )
        with open(os.path.join(workdir, "hostmanager.pid"), "w") as f:
            f.write(str(proc.pid))
    t0 = time.monotonic()
    wait_for(lambda: _try_client(site_file, hm_id), timeout, f"HostManager {hm_id}")
    print(
        f"HostManager {hm_id} answering after {time.monotonic() - t0:.2f} s; it launches "
        f"{len(managed)} agent(s) of the site-config"
    )
    for inst in managed:
        iid = inst["instance-id"]
        wait_for(lambda iid=iid: _try_client(site_file, iid), timeout, f"agent {iid}")
        print(f"  {inst['agent-class']:<20} {iid:<24} answering")

    for inst in managed:
        _show(site_file, inst)

    target, op = (managed[0]["instance-id"], "run") if managed else (hm_id, "manager")
    print(
        "\nThe site keeps running. Try, from this folder:\n"
        f'  .venv/bin/python -c "from ocs.ocs_client import OCSClient; '
        f"print(OCSClient('{target}', args=['--site-file', 'site-config.yaml'])"
        f'.{op}.status())"\n'
        "Stop everything with:  make demo-stop"
    )
    return 0


def stop(site_file: str) -> int:
    site = hub.load_site_config(site_file)
    settings = hub.hub_settings(site["hub"])
    pid_file = os.path.join(_demo_dir(), "hostmanager.pid")
    pid: int | None = None
    try:
        with open(pid_file) as f:
            pid = int(f.read())
    except (OSError, ValueError):
        pass
    if pid and _pid_alive(pid):
        # SIGTERM lets the HostManager stop its agents before it exits.
        os.kill(pid, signal.SIGTERM)
        try:
            wait_for(lambda: not _pid_alive(pid), 30.0, "the HostManager to exit", 0.2)
            print("HostManager and its agents stopped")
        except TimeoutError:
            os.killpg(pid, signal.SIGKILL)
            print("HostManager did not exit in 30 s; killed")
    if os.path.exists(pid_file):
        os.remove(pid_file)
    print("hub stopped" if hub.stop(settings) else "hub was not running")
    return 0
