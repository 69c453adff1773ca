"""suprsync-db output and the crossbar config rendered from a site-config."""

import json

import pytest

from socs_agents.db import SupRsyncDB, make_entry
from socs_agents.db.cli import main as db_main
from socs_agents.hub import HubConfigError, hub_settings, render_crossbar_config


@pytest.fixture
def filled_db(tmp_path):
    path = str(tmp_path / "s.db")
    db = SupRsyncDB(path)
    f = tmp_path / "a.dat"
    f.write_bytes(b"abc")
    db.add_files([make_entry(str(f), "17000/p/a.dat", "smurf")])
    db.close()
    return path


def test_suprsync_db_commands(filled_db, capsys):
    assert db_main(["--db", filled_db, "--json", "archives"]) == 0
    assert json.loads(capsys.readouterr().out) == {"smurf": 1}
    assert db_main(["--db", filled_db, "count", "--archive", "smurf"]) == 0
    assert capsys.readouterr().out.strip() == "1"
    assert db_main(["--db", filled_db, "list", "--archive", "smurf"]) == 0
    assert "17000/p/a.dat" in capsys.readouterr().out
    assert db_main(["--db", filled_db, "timecodes"]) == 0
    assert "17000" in capsys.readouterr().out
    assert db_main(["--db", filled_db, "--json", "stats", "smurf"]) == 0
    assert json.loads(capsys.readouterr().out)["uncopied_files"] == 1
    assert db_main(["--db", filled_db, "--json", "show", "1"]) == 0
    assert json.loads(capsys.readouterr().out)["local_md5sum"] == "900150983cd24fb0d6963f7d28e17f72"


def test_suprsync_db_errors(filled_db, tmp_path, capsys):
    assert db_main(["--db", str(tmp_path / "none.db"), "archives"]) == 2
    assert "no database" in capsys.readouterr().err
    assert db_main(["--db", filled_db, "count", "--archive", "nosuch"]) == 2
    assert "archive 'nosuch' has no rows" in capsys.readouterr().err
    assert db_main(["--db", filled_db, "show", "99"]) == 2


HUB = {
    "wamp_server": "ws://127.0.0.1:8001/ws",
    "wamp_http": "http://127.0.0.1:8001/call",
    "wamp_realm": "test_realm",
    "address_root": "observatory",
}


def test_render_has_what_ocs_and_crossbar_need():
    settings = hub_settings(HUB)
    cfg = render_crossbar_config(settings)
    router = cfg["workers"][0]
    assert router["realms"][0]["name"] == "test_realm"
    roles = {r["name"]: r["permissions"][0] for r in router["realms"][0]["roles"]}
    assert roles["iocs_agent"]["uri"] == "observatory."
    assert roles["iocs_agent"]["allow"]["register"] is True
    assert roles["iocs_controller"]["allow"]["register"] is False
    transport = router["transports"][0]
    assert transport["endpoint"] == {"type": "tcp", "port": 8001, "interface": "127.0.0.1"}
    paths = transport["paths"]
    assert 12 <= paths["ws"]["options"]["auto_ping_size"] <= 125
    assert paths["call"]["type"] == "caller" and paths["call"]["role"] == "iocs_controller"
    assert paths["info"] == {"type": "nodeinfo"}


def test_interface_from_site_config():
    s = hub_settings(dict(HUB, interface="0.0.0.0"))
    assert s.interface == "0.0.0.0" and s.wamp_server == "ws://127.0.0.1:8001/ws"


@pytest.mark.parametrize(
    "change,message",
    [
        ({"wamp_server": None}, "lacks wamp_server"),
        ({"wamp_server": "http://x:1/ws"}, "must look like"),
        ({"wamp_server": "ws://x/ws"}, "must look like"),
        ({"wamp_http": "http://127.0.0.1:9/call"}, "same port"),
    ],
)
def test_bad_hub_sections(change, message):
    with pytest.raises(HubConfigError, match=message):
        hub_settings(dict(HUB, **change))


def _settings(port):
    return hub_settings(
        {
            "wamp_server": f"ws://127.0.0.1:{port}/ws",
            "wamp_realm": "r",
            "address_root": "observatory",
        }
    )


def test_port_check_refuses_a_listener_but_not_connections_left_in_time_wait():
    import socket

    from socs_agents.hub.control import HubError, _check_port_free

    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    port = listener.getsockname()[1]
    client = socket.create_connection(("127.0.0.1", port), timeout=5)
    accepted, _ = listener.accept()
    with pytest.raises(HubError, match=f"port {port} on 127.0.0.1 is taken"):
        _check_port_free(_settings(port))
    # The listening side closes first, so its end of the connection stays in TIME_WAIT on
    # the port, as after `socs-agents demo stop`.
    accepted.close()
    client.close()
    listener.close()
    _check_port_free(_settings(port))


def test_hub_stop_never_signals_a_process_that_is_not_its_crossbar(tmp_path):
    """A stale hub.pid naming another program (pid reused) must not get it killed."""
    import subprocess

    from socs_agents.hub import control

    site = {
        "hub": {
            "wamp_server": "ws://127.0.0.1:18999/ws",
            "wamp_http": "http://127.0.0.1:18999/call",
            "wamp_realm": "r",
            "address_root": "observatory",
        }
    }
    settings = hub_settings(site["hub"])
    node_dir = tmp_path / "hub"
    node_dir.mkdir()
    bystander = subprocess.Popen(["sleep", "30"], start_new_session=True)
    try:
        (node_dir / "hub.pid").write_text(str(bystander.pid))
        assert not control.is_hub_process(bystander.pid, str(node_dir))
        assert not control.status(settings, str(node_dir)).alive
        assert control.stop(settings, str(node_dir), timeout=1) is False
        assert bystander.poll() is None, "the bystander was signalled"
        assert not (node_dir / "hub.pid").exists()
    finally:
        bystander.kill()
        bystander.wait()
