"""``socs-agents``: the package's command line (hub, demo, simulators)."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence


def _site_file(arg: str | None) -> str:
    if arg:
        return arg
    if os.environ.get("OCS_CONFIG_DIR"):
        return os.path.join(os.environ["OCS_CONFIG_DIR"], "default.yaml")
    return "site-config.yaml"


def _hub_command(args: argparse.Namespace) -> int:
    from . import hub

    try:
        settings = hub.hub_settings(hub.load_site_config(_site_file(args.site_file))["hub"])
        if args.action == "start":
            pid, seconds = hub.start(settings, args.node_dir, timeout=args.timeout)
            print(
                f"hub started in {seconds:.2f} s (pid {pid}) at {settings.wamp_server}; "
                f"HTTP bridge {settings.wamp_http}; node dir "
                f"{args.node_dir or hub.default_node_dir(settings)}"
            )
        elif args.action == "run":
            hub.run_foreground(settings, args.node_dir)
        elif args.action == "stop":
            was = hub.stop(settings, args.node_dir)
            print("hub stopped" if was else "hub was not running")
        else:
            st = hub.status(settings, args.node_dir)
            print(st.describe(settings))
            return 0 if st.answering else 3
    except (hub.HubError, hub.HubConfigError) as e:
        print(f"socs-agents hub {args.action}: {e}", file=sys.stderr)
        return 2
    return 0


def _demo_command(args: argparse.Namespace) -> int:
    from . import hub
    from .dev import demo

    try:
        if args.action == "start":
            return demo.start(_site_file(args.site_file))
        return demo.stop(_site_file(args.site_file))
    except (hub.HubError, hub.HubConfigError, TimeoutError) as e:
        print(f"socs-agents demo {args.action}: {e}", file=sys.stderr)
        return 2


def _simulate_smurf(argv: list[str]) -> int:
    from .dev.sim.smurf import main as simulate

    return simulate(argv)


def _simulate_dune(argv: list[str]) -> int:
    from .dev.sim.dune import main as simulate

    return simulate(argv)


def _simulate_detector(argv: list[str]) -> int:
    from .dev.sim.detector import main as simulate

    return simulate(argv)


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="socs-agents", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("hub", help="start, stop or check the local crossbar hub")
    p.add_argument(
        "action",
        choices=["start", "stop", "status", "run"],
        help="start in the background, stop, status, or run in the foreground (for containers)",
    )
    p.add_argument(
        "--site-file",
        help="site-config (default: $OCS_CONFIG_DIR/default.yaml, else ./site-config.yaml)",
    )
    p.add_argument(
        "--node-dir",
        help="crossbar node dir (default: "
        "$SOCS_AGENTS_STATE_DIR/hub-<port>, i.e. ~/.local/state/socs-agents/...)",
    )
    p.add_argument("--timeout", type=float, default=20.0, help="seconds to wait for start")
    p.set_defaults(func=_hub_command)

    # Parsed by the simulator itself (main() hands it the rest of the command line).
    sub.add_parser(
        "simulate-smurf",
        add_help=False,
        help="write smurf files and announce them over UDP (see its --help)",
    )

    sub.add_parser(
        "simulate-dune",
        add_help=False,
        help="write DUNE HDF5 files and play the orchestrator's HTTP clients (see its --help)",
    )

    sub.add_parser(
        "simulate-detector",
        add_help=False,
        help="stream detector images over ZeroMQ for the DAQWriter (see its --help)",
    )

    p = sub.add_parser("demo", help="run the site-config's agents here (hub + HostManager)")
    p.add_argument("action", choices=["start", "stop"])
    p.add_argument("--site-file", help="site-config (default: ./site-config.yaml)")
    p.set_defaults(func=_demo_command)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["simulate-smurf"]:
        return _simulate_smurf(argv[1:])
    if argv[:1] == ["simulate-dune"]:
        return _simulate_dune(argv[1:])
    if argv[:1] == ["simulate-detector"]:
        return _simulate_detector(argv[1:])
    args = make_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
