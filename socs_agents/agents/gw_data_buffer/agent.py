"""GWDataBuffer: the gravitational-wave strain datastore (trainmod's buffer, logic and front)
as one OCS agent.

Serves the front's HTTP API from the agent's reactor (the Airflow DAG, the streaming client,
the shell scripts keep working unchanged), stores each chunk as ``gwb<ns>.json`` in the data
directory the preprocessing job reads, freezes atomically when ``MAX_SIZE`` bytes are stored,
archives batches on clean and registers them in the SupRsync database.
"""

from __future__ import annotations

import argparse
import os
import threading
import time

from ocs import ocs_agent
from twisted.internet import reactor, threads

from ...db.entries import add_allowed_root_option
from ...runtime import SerialWorker, run_blocking
from ...runtime.http import ClientAllowList, add_http_allow_option
from ..shell import (
    CONTROL_PRIVS,
    AgentShell,
    Operation,
    agent_options,
    process,
    run_agent,
    stopper_for,
    task,
)
from . import rules
from .http_api import FrontAPI, FrontResource, FrontSite
from .service import BufferConfig, BufferService, archive_remote_dir

FEED = "gw_buffer"
#: Feed fields of refusals: every reason code falls in one group (fixed field names).
REFUSAL_GROUPS = {
    "frozen": "refused_frozen",
    "body_too_large": "refused_too_large",
    "token_required": "refused_auth",
    "token_refused": "refused_auth",
    "client_not_allowed": "refused_auth",
    "busy": "refused_busy",
    "not_found": "refused_bad_request",
    "method_not_allowed": "refused_bad_request",
    "storage_error": "failures",
    "internal_error": "failures",
}
FEED_REFUSAL_FIELDS = (
    "refused_frozen",
    "refused_bad_input",
    "refused_too_large",
    "refused_auth",
    "refused_busy",
    "refused_bad_request",
    "failures",
)
#: Files registered in SupRsync per transaction.
REGISTER_BATCH = 500


def refusal_fields(refusals: dict) -> dict:
    """Refusals by reason code -> the feed's fixed refusal fields."""
    out = dict.fromkeys(FEED_REFUSAL_FIELDS, 0)
    for reason, n in refusals.items():
        out[REFUSAL_GROUPS.get(reason, "refused_bad_input")] += n
    return out


def _positive_seconds(value) -> bool:
    """A number of seconds in (0, 1 day], of any numeric type, never converted."""
    return isinstance(value, int | float) and not isinstance(value, bool) and 0 < value <= 86400


class GWDataBuffer(AgentShell):
    """The data buffer: HTTP front, store, freeze and clean, SupRsync registration."""

    agent_class = "GWDataBuffer"

    def __init__(self, agent: ocs_agent.OCSAgent, args: argparse.Namespace) -> None:
        super().__init__(agent, args)
        tokens = None
        if args.token_file:
            with open(args.token_file) as f:
                tokens = rules.TokenSet.parse(f.read())
            self.log.info("token file {p}: {n} token(s) accepted", p=args.token_file, n=len(tokens))
        self.allow = ClientAllowList.from_option(args.http_allow)
        archive_dir = args.archive_dir or os.path.join(
            os.path.dirname(os.path.abspath(args.data_dir).rstrip("/")), "archive"
        )
        self.allowed_roots = args.allowed_root or [archive_dir]
        self.registrar = SerialWorker("gw-suprsync") if args.suprsync_db else None
        self.suprsync = None
        t0 = time.perf_counter()
        self.service = BufferService(
            BufferConfig(
                data_dir=args.data_dir,
                archive_dir=archive_dir,
                state_db=args.state_db,
                max_size=args.max_size,
                staging_dir=args.staging_dir,
                reference_adm_dir=args.reference_adm_dir,
            ),
            report=self.report,
            on_clean=self._register_archive,
        )
        c = self.service.counts
        self.log.info(
            "data {d}: {n} files, {b} bytes (recounted in {ms:.0f} ms), {s}; MAX_SIZE {m}",
            d=self.service.store.data_dir,
            n=c.n_itm,
            b=c.buff_size,
            ms=(time.perf_counter() - t0) * 1e3,
            s=rules.FROZEN if c.frozen else rules.OPERATIONAL,
            m=args.max_size,
        )
        self.api = FrontAPI(self.service, tokens=tokens, allow=self.allow)
        self.http_port = None
        self.http: dict = {}
        self._monitor_stop = threading.Event()
        self._stopped = False
        self.agent.register_feed(FEED, record=True, agg_params={"frame_length": 60}, buffer_time=1)

    # ---- reactor side --------------------------------------------------------------------

    def listen(self) -> None:
        site = FrontSite(FrontResource(self.api, self._log_request), self.args.max_body)
        self.http_port = reactor.listenTCP(
            self.args.http_port, site, interface=self.args.http_interface
        )
        self.http = {"interface": self.args.http_interface, "port": self.http_port.getHost().port}
        self.log.info(
            "front API on http://{i}:{p}/ (allow: {a})",
            i=self.http["interface"],
            p=self.http["port"],
            a=", ".join(str(n) for n in self.allow.networks) or "any client",
        )

    def _log_request(self, method: str, path: str, status: int, seconds: float) -> None:
        if self.args.log_requests:
            self.log.info(
                "{m} {p} -> {s} ({ms:.2f} ms)", m=method, p=path, s=status, ms=seconds * 1e3
            )

    # ---- SupRsync --------------------------------------------------------------------------

    def register_pending(self) -> None:
        """Register archives a previous run did not finish registering."""
        if self.registrar is None:
            return
        d = self.service.serial.submit(self.service.store.unregistered_archives)
        d.addCallback(lambda archives: [self._register_archive(a) for a in archives])
        d.addErrback(lambda f: self.log.error("listing archives failed: {e}", e=f.value))

    def _register_archive(self, archive: dict) -> None:
        if self.registrar is None:
            return
        name = self.args.archive_name

        def work() -> int:
            from ...db import SupRsyncDB, make_entry
            from ...db.entries import AllowedRoots

            roots = AllowedRoots(self.allowed_roots)
            if self.suprsync is None:
                self.suprsync = SupRsyncDB(self.args.suprsync_db)
            folder = roots.check(archive["path"])
            remote_dir = archive_remote_dir(archive)
            entries, added = [], 0
            for fname in sorted(os.listdir(folder)):
                path = os.path.join(folder, fname)
                if fname.startswith(".") or not os.path.isfile(path):
                    continue
                roots.check(path)
                entries.append(make_entry(path, f"{remote_dir}/{fname}", name, known_archives=None))
                if len(entries) >= REGISTER_BATCH:
                    added += len(self.suprsync.add_files(entries).inserted)
                    entries = []
            if entries:
                added += len(self.suprsync.add_files(entries).inserted)
            return added

        def done(added: int):
            self.log.info(
                "archive {a}: {n} file(s) registered in SupRsync archive {s}",
                a=archive["name"],
                n=added,
                s=name,
            )
            return self.service.serial.submit(self.service.store.mark_registered, archive["seq"])

        def failed(f):
            self.log.error(
                "archive {a}: SupRsync registration failed: {e}", a=archive["name"], e=f.value
            )
            return self.service.serial.submit(
                self.service.store.mark_registered, archive["seq"], str(f.value)[:500]
            )

        d = self.registrar.submit(work)
        d.addCallbacks(done, failed)
        d.addErrback(lambda f: self.log.error("marking the archive failed: {e}", e=f.value))

    # ---- operations ----------------------------------------------------------------------

    def _call(self, fn, *args, **kwargs):
        """Run ``fn`` on the reactor from an operation's thread; wait for its Deferred."""
        return threads.blockingCallFromThread(reactor, fn, *args, **kwargs)

    @ocs_agent.param("user", default="ocs", type=str)
    @ocs_agent.param("force", default=False, type=bool)
    def freeze(self, session, params):
        """freeze(user='ocs', force=False)

        **Task** - Apply the ``/train`` rule: freeze when the stored bytes reach MAX_SIZE
        (needs credential level 2). Every write acknowledged before is counted; none after
        is stored until ``clean``.

        Parameters:
            user (str, optional): Who froze the store (kept with the state). Default 'ocs'.
            force (bool, optional): Freeze even below MAX_SIZE. Default False.

        Notes:
            The ``/train`` answer::

                >>> response.session['data']
                {'resp': 'FROZEN', 'n_f': 12, 'bt_wrt': 1175346}

            or ``{'resp': 'WAITING', 'n_f': 0, 'bt_wrt': 0}`` below MAX_SIZE.
        """
        result = self._call(self.service.train, params["user"], None, params["force"])
        session.data = {
            "resp": rules.FROZEN if result.frozen else "WAITING",
            "n_f": result.n_f,
            "bt_wrt": result.bt_wrt,
        }
        return True, f"freeze: {session.data['resp']}"

    def clean(self, session, params=None):
        """clean()

        **Task** - Archive the stored batch into a new folder and unfreeze, like
        ``/cleanbuf`` (needs credential level 2). Counters and state are reset only when the
        archive succeeded; the archived files are registered in SupRsync when
        ``--suprsync-db`` is set.

        Notes:
            ::

                >>> response.session['data']
                {'resp': 'CLEANED',
                 'archive': {'seq': 3, 'name': 'batch-000003-20261201T120000.123456Z',
                             'path': '/data/gw/archive/batch-000003-20261201T120000.123456Z',
                             'files': 12, 'bytes': 1175346, 'cleaned_at': 1764590400.12,
                             'frozen_by': 'airflow', 'registered': False},
                 'before': {'n_itm': 12, 'buff_size': 1175346, 'dstatus': 'FROZEN'}}
        """
        try:
            result = self._call(self.service.clean)
        except Exception as e:
            session.data = {"resp": "FS ERR", "error": str(e)}
            return False, f"clean failed: {e}"
        session.data = {"resp": "CLEANED", "archive": result.archive, "before": result.before}
        return True, f"clean: {result.archive['files']} files archived"

    @ocs_agent.param("archives", default=10, type=int, check=lambda n: 0 <= n <= 1000)
    def stats(self, session, params):
        """stats(archives=10)

        **Task** - Counters, state and the latest archives.

        Parameters:
            archives (int, optional): List this many of the latest archives (0 to 1000).

        Notes:
            ::

                >>> response.session['data']
                {'timestamp': 1764590400.0, 'n_itm': 12, 'buff_size': 1175346,
                 'max_size': 2000, 'fill_fraction': 587.7, 'dstatus': 'FROZEN',
                 'frozen_by': 'airflow', 'frozen_since': 1764590399.5,
                 'latest_file': 'gwb1764590399123456789.json', 'writes': 12,
                 'bytes_written': 1175346, 'failures': 0, 'refusals': {'frozen': 3},
                 'data_dir': '/data/gw/datavar', 'archive_dir': '/data/gw/archive',
                 'takeover': None,
                 'http': {'interface': '127.0.0.1', 'port': 8000},
                 'archives': [{'seq': 2, 'name': 'batch-000002-...', 'files': 9, ...}]}

            ``takeover`` is None unless the state was taken over from the reference
            (``--reference-adm-dir``), then what was taken::

                {'from': '/app/appdata/adm', 'at': 1764590400.0, 'dstatus': 'FROZEN',
                 'frozen_by': 'airflow', 'token_kept_as_sha256': True,
                 'reference_counts': {'n_itm': 264, 'buff_size': 25800012},
                 'recounted': {'n_itm': 265, 'buff_size': 25800031},
                 'orphans': 1, 'orphan_names': ['gwb1724170688605972803.json']}
        """
        n = params["archives"]

        def collect():
            out = {"timestamp": time.time(), **self.service.stats(), "http": dict(self.http)}
            if not n:
                return out
            return self.service.archives(n).addCallback(lambda a: {**out, "archives": a})

        session.data = self._call(collect)
        return True, "stats: done"

    # a check, not type=float: ocs would convert a huge integer and crash (OverflowError);
    # a comparison refuses it, and NaN, infinities and intervals <= 0 (a busy loop), cheaply
    @ocs_agent.param("interval", default=None, check=_positive_seconds)
    @ocs_agent.param("test_mode", default=False, type=bool)
    def monitor(self, session, params):
        """monitor(interval=None, test_mode=False)

        **Process** - Publish the buffer's figures to the ``gw_buffer`` feed (recorded)
        and keep ``session.data`` current: files, bytes, fill fraction of MAX_SIZE, state,
        writes per second, refusals by reason. Degraded while writes fail.

        Parameters:
            interval (float, optional): Seconds between publications; default
                ``--monitor-interval``.
            test_mode (bool, optional): Stop after one publication.

        Notes:
            ::

                >>> response.session['data']
                {'timestamp': 1764590400.0, 'writes_per_s': 151.2,
                 'stats': {'n_itm': 12, 'buff_size': 1175346, 'max_size': 2000,
                           'fill_fraction': 587.7, 'dstatus': 'FROZEN', ...},
                 'feed': {'n_files': 12, 'n_bytes': 1175346, 'fill_fraction': 587.7,
                          'frozen': 1, 'writes_per_s': 151.2, 'refused_frozen': 3,
                          'refused_bad_input': 0, 'refused_too_large': 0,
                          'refused_auth': 0, 'refused_busy': 0,
                          'refused_bad_request': 0, 'failures': 0}}
        """
        interval = params["interval"] or self.args.monitor_interval
        self._monitor_stop.clear()
        session.set_status("running")
        last_writes, last_t, last_failures = None, None, None
        while True:
            stats = self._call(self.service.stats)
            now = time.time()
            rate = 0.0
            if last_t is not None and now > last_t:
                rate = (stats["writes"] - last_writes) / (now - last_t)
            failing = last_failures is not None and stats["failures"] > last_failures
            session.degraded = failing
            last_writes, last_t, last_failures = stats["writes"], now, stats["failures"]
            feed = {
                "n_files": stats["n_itm"],
                "n_bytes": stats["buff_size"],
                "fill_fraction": stats["fill_fraction"],
                "frozen": int(stats["dstatus"] == rules.FROZEN),
                "writes_per_s": rate,
                **refusal_fields(stats["refusals"]),
            }
            self.agent.publish_to_feed(
                FEED, {"block_name": "buffer", "timestamp": now, "data": feed}
            )
            session.data = {"timestamp": now, "writes_per_s": rate, "stats": stats, "feed": feed}
            if params["test_mode"] or self._monitor_stop.wait(interval):
                break
        return True, "monitor stopped"

    def operations(self) -> list[Operation]:
        return [
            task("freeze", self.freeze, min_privs=CONTROL_PRIVS),
            task("clean", self.clean, min_privs=CONTROL_PRIVS),
            task("stats", self.stats),
            process(
                "monitor",
                self.monitor,
                stopper_for(self._monitor_stop, "Stopping the monitor."),
                startup=not self.args.test_mode,
            ),
        ]

    def begin(self) -> None:
        self.listen()
        self.register_pending()

    # ---- shutdown ------------------------------------------------------------------------

    def shutdown(self):
        if self._stopped:
            return None
        self._stopped = True
        self._monitor_stop.set()
        d = self.http_port.stopListening() if self.http_port is not None else None

        def close(_=None):
            # drains queued writes (each answered) before the store closes
            return run_blocking(self._close_workers, name="gw-shutdown")

        if d is not None:
            return d.addBoth(close)
        return close()

    def _close_workers(self) -> None:
        self.service.stop(timeout=5)
        if self.registrar is not None:
            self.registrar.stop(drain=True, timeout=5)
        if self.suprsync is not None:
            self.suprsync.close()


def make_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    parser, pgroup = agent_options(parser)
    pgroup.add_argument(
        "--data-dir",
        default="/data/gw/datavar",
        help="Folder of the stored gwb<ns>.json files (the reference's DATAROOT), which the "
        "preprocessing job reads directly.",
    )
    pgroup.add_argument(
        "--archive-dir",
        default=None,
        help="Folder receiving each cleaned batch as batch-<seq>-<UTC time>. Must be on the "
        "filesystem of --data-dir. Default: 'archive' beside the data folder.",
    )
    pgroup.add_argument(
        "--staging-dir",
        default=None,
        help="Folder of chunks being written (same filesystem as --data-dir; never read by "
        "the preprocessing job). Default: '.gwb-staging' beside the data folder.",
    )
    pgroup.add_argument(
        "--state-db",
        default="/data/gw/gw_data_buffer.db",
        help="SQLite file of the state that survives a restart: frozen or not, who froze "
        "it and when, the archives.",
    )
    pgroup.add_argument(
        "--reference-adm-dir",
        default=None,
        help="Switching over from the reference: its ADMROOT folder (StatDesc.json, "
        "Dsstat.json). At the first start its state is taken over (a frozen store stays "
        "frozen; its token is kept as a SHA-256 only) and the data folder is recounted; "
        "later starts keep this agent's own state. Default: none.",
    )
    pgroup.add_argument(
        "--max-size",
        type=int,
        default=2000,
        help="Stored bytes at which /train freezes the store (the reference's MAX_SIZE).",
    )
    pgroup.add_argument(
        "--http-interface",
        default="127.0.0.1",
        help="Interface address of the HTTP API (0.0.0.0 for every interface).",
    )
    pgroup.add_argument(
        "--http-port", type=int, default=8000, help="Port of the HTTP API (the reference's)."
    )
    add_http_allow_option(pgroup)
    pgroup.add_argument(
        "--max-body",
        type=int,
        default=8 << 20,
        help="Largest request body in bytes; larger ones are answered 413 unread.",
    )
    pgroup.add_argument(
        "--token-file",
        default=None,
        help="File of accepted tokens (one per line, or sha256:<hex>): /train and "
        "/cleanbuf then need one (field 'token' or 'Authorization: Bearer'). Only hashes "
        "are kept; tokens are never logged or shown.",
    )
    pgroup.add_argument(
        "--suprsync-db",
        default=None,
        help="SupRsync database: each cleaned batch's files are registered there, so they "
        "are copied off the host. Default: none.",
    )
    pgroup.add_argument(
        "--archive-name", default="gw", help="SupRsync archive of the registered batches."
    )
    add_allowed_root_option(pgroup, "the --archive-dir")
    pgroup.add_argument(
        "--monitor-interval",
        type=float,
        default=5.0,
        help="Seconds between publications of the gw_buffer feed.",
    )
    pgroup.add_argument(
        "--log-requests", action="store_true", help="Log every HTTP request (method, path, status)."
    )
    pgroup.add_argument(
        "--test-mode",
        action="store_true",
        help="Do not start the monitor process at startup (for tests).",
    )
    return parser


def main(args: list | None = None) -> None:
    run_agent(GWDataBuffer, make_parser, args)


if __name__ == "__main__":
    main()
