"""``suprsync-db``: look into a SupRsync database without writing to it.

Examples::

    suprsync-db --db /data/so/databases/suprsync.db archives
    suprsync-db --db suprsync.db list --archive smurf --limit 20 --uncopied
    suprsync-db --db suprsync.db stats smurf
    suprsync-db --db suprsync.db timecodes --archive timestreams
    suprsync-db --db suprsync.db show 42
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence

from .suprsync import SupRsyncDB

DEFAULT_DB = "/data/so/databases/suprsync.db"


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="suprsync-db", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--db",
        default=os.environ.get("SUPRSYNC_DB", DEFAULT_DB),
        help="SupRsync database file (default: $SUPRSYNC_DB or %(default)s)",
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("archives", help="rows per archive")
    p = sub.add_parser("count", help="number of rows (of one archive)")
    p.add_argument("--archive")
    p = sub.add_parser("list", help="rows, newest first")
    p.add_argument("--archive")
    p.add_argument("--limit", type=int, default=20)
    p.add_argument("--uncopied", action="store_true", help="only rows not yet copied")
    p = sub.add_parser("stats", help="SupRsync's figures for an archive")
    p.add_argument("archive")
    p = sub.add_parser("timecodes", help="timecode directories")
    p.add_argument("--archive")
    p = sub.add_parser("show", help="every column of one row")
    p.add_argument("id", type=int)
    return parser


def _print_rows(rows: list[dict], columns: Sequence[str]) -> None:
    widths = {c: max([len(c)] + [len(str(r[c])) for r in rows]) for c in columns}
    print("  ".join(c.ljust(widths[c]) for c in columns))
    for r in rows:
        print("  ".join(str(r[c]).ljust(widths[c]) for c in columns))


def main(argv: Sequence[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    if not os.path.exists(args.db):
        print(f"suprsync-db: no database at {args.db}", file=sys.stderr)
        return 2
    db = SupRsyncDB(args.db, create_all=False)
    try:
        archives = db.archives()
        archive = getattr(args, "archive", None)
        if archive is not None and archive not in archives:
            print(
                f"suprsync-db: archive {archive!r} has no rows in {args.db} "
                f"(archives: {', '.join(archives) or 'none'})",
                file=sys.stderr,
            )
            return 2
        if args.command == "archives":
            out = archives
        elif args.command == "count":
            out = db.count(archive)
        elif args.command == "list":
            out = db.files(archive, limit=args.limit, uncopied_only=args.uncopied)
        elif args.command == "stats":
            out = db.archive_stats(archive)
        elif args.command == "timecodes":
            out = db.timecode_dirs(archive)
        else:
            out = db.file_by_id(args.id)
            if out is None:
                print(f"suprsync-db: no row with id {args.id}", file=sys.stderr)
                return 2
        if args.json:
            print(json.dumps(out, indent=1))
        elif args.command == "list":
            _print_rows(
                out,
                [
                    "id",
                    "archive_name",
                    "timestamp",
                    "deletable",
                    "local_md5sum",
                    "remote_path",
                    "local_path",
                ],
            )
        elif args.command == "timecodes":
            _print_rows(out, ["id", "archive_name", "timecode", "completed", "synced", "finalized"])
        elif isinstance(out, dict):
            for k, v in out.items():
                print(f"{k}: {v}")
        else:
            print(out)
        return 0
    finally:
        db.close()


if __name__ == "__main__":
    sys.exit(main())
