"""FileOrchestrator: the DUNE data-filter orchestrator as an OCS agent.

Serves the orchestrator's HTTP API (the real ``FilterOrchestratorClient`` endpoints and the
README's) from the agent's reactor, watches volumes for closed HDF5 files, hands trigger
records and time slices to Dispatchers against credits from the Data Filter, leases what it
hands out, and keeps all of it in SQLite so that a restart loses nothing.
"""

from __future__ import annotations

import argparse
import os
import socket
import threading
import time

from ocs import ocs_agent, site_config
from twisted.internet import reactor, task, threads

from ...argtypes import str2bool
from .discovery import Discovery
from .http_api import (
    DEFAULT_TEMP_SUFFIXES,
    BadRequest,
    OrchestratorAPI,
    OrchestratorResource,
    OrchestratorSite,
    complete_args,
    new_file_args,
    read_next_args,
    remove_file_args,
)
from .layout import FileLayout
from .options import env_debug, remote_path_for
from .state import RECORD_TYPES, TRIGGER_RECORD, FileInfo, State

COUNTS_FEED = "orchestrator_counts"


class FileOrchestrator:
    """The orchestrator: HTTP API, volume watcher and the state machine behind both.

    Args:
        agent (ocs.ocs_agent.OCSAgent): the OCS agent.
        args (argparse.Namespace): parsed arguments (see :func:`make_parser`).
    """

    def __init__(self, agent: ocs_agent.OCSAgent, args: argparse.Namespace) -> None:
        self.agent = agent
        self.log = agent.log
        self.args = args
        self.host_name = args.host_name or socket.gethostname()
        self.volumes = [os.path.abspath(v) for v in (args.volume or [])]
        self.patterns = [p for p in args.pattern.split(",") if p]
        self.temp_suffixes = tuple(args.temp_suffix or DEFAULT_TEMP_SUFFIXES)
        self.debug = args.debug if args.debug is not None else env_debug()
        t0 = time.perf_counter()
        self.state = State(
            args.state_db,
            lease_timeout=args.lease_timeout,
            lease_timeslices=args.lease_timeslices,
            on_file_done=self._file_done,
        )
        c = self.state.counts()
        self.log.info(
            "state {db} loaded in {ms:.0f} ms: {files} files, {p} pending, {a} active, {d} done",
            db=self.state.db_path,
            ms=(time.perf_counter() - t0) * 1e3,
            files=c["files"],
            p=c["pending"],
            a=c["active"],
            d=c["done"],
        )
        self.api = OrchestratorAPI(self.state, self._stats_now, temp_suffixes=self.temp_suffixes)
        self.http_port = None
        self.http: dict = {}
        self.suprsync = None
        self._registering: set[int] = set()
        self.discovery: Discovery | None = None
        self._watch_stop = threading.Event()
        self._stopped = False
        self.agent.register_feed(
            COUNTS_FEED, record=True, agg_params={"frame_length": 60}, buffer_time=1
        )
        self._loops = []

    # ---- reactor side --------------------------------------------------------------------

    def listen(self) -> None:
        resource = OrchestratorResource(
            self.api, log_request=self._log_request, on_error=self._http_error
        )
        self.http_port = reactor.listenTCP(
            self.args.http_port, OrchestratorSite(resource), interface=self.args.http_interface
        )
        self.http = {"interface": self.args.http_interface, "port": self.http_port.getHost().port}
        self.log.info(
            "HTTP API on {i}:{p}{dbg}",
            i=self.http["interface"],
            p=self.http["port"],
            dbg=" (debug: every request logged)" if self.debug else "",
        )

    def start_loops(self) -> None:
        """Lease expiry, checkpoints, feed and SupRsync retries, all on the reactor."""
        period = max(0.05, min(1.0, self.args.lease_timeout / 4))
        for fn, every, now in (
            (self._expire, period, True),
            (self._checkpoint, 10.0, False),
            (self._publish_counts, self.args.feed_interval, True),
            (self._register_done_files, 30.0, True),
        ):
            loop = task.LoopingCall(self._guarded, fn)
            d = loop.start(every, now=now)
            d.addErrback(
                lambda f, name=fn.__name__: self.log.error(
                    "{name} loop failed: {f}", name=name, f=f
                )
            )
            self._loops.append(loop)

    def _guarded(self, fn) -> None:
        """One turn of a loop; an error is logged and the loop goes on."""
        try:
            fn()
        except Exception as e:
            self.log.error("{name} failed: {t}: {e}", name=fn.__name__, t=type(e).__name__, e=e)

    def _expire(self) -> None:
        n = self.state.expire_leases()
        if n:
            self.log.warn("{n} lease(s) expired; the records are pending again", n=n)

    def _checkpoint(self) -> None:
        d = threads.deferToThread(self.state.checkpoint)
        d.addErrback(lambda f: self.log.warn("checkpoint failed: {e}", e=f.value))

    def _publish_counts(self) -> None:
        data = self.state.counts()
        self.agent.publish_to_feed(
            COUNTS_FEED,
            {"block_name": "counts", "timestamp": time.time(), "data": data},
            from_reactor=True,
        )

    def _log_request(self, method: str, path: str, status: int, seconds: float) -> None:
        if self.debug:
            self.log.info(
                "{m} {p} -> {s} ({ms:.2f} ms)", m=method, p=path, s=status, ms=seconds * 1e3
            )

    def _http_error(self, path: str, err: BaseException) -> None:
        self.log.error("HTTP {p} failed: {t}: {e}", p=path, t=type(err).__name__, e=err)

    # ---- discovery (thread -> reactor) ---------------------------------------------------

    def _make_discovery(self) -> Discovery:
        # Only files under the volumes: a file of this host announced by POST /new-file
        # elsewhere must not be withdrawn because a scan does not find it.
        roots = tuple(v.rstrip("/") + "/" for v in self.volumes)
        known = [
            f.path
            for f in self.state.files.values()
            if f.host == self.host_name and not f.removed and f.path.startswith(roots)
        ]
        return Discovery(
            self.volumes,
            self.patterns,
            added=lambda p, lay: reactor.callFromThread(self._file_found, p, lay),
            removed=lambda p: reactor.callFromThread(self._file_gone, p),
            report=lambda level, text: getattr(self.log, level)("{t}", t=text),
            known=known,
            temp_suffixes=self.temp_suffixes,
            retry_timeout=self.args.read_retry_timeout,
            rescan_interval=self.args.rescan_interval,
        )

    def _file_found(self, path: str, layout: FileLayout) -> None:
        try:
            for record_type, ids in layout.records.items():
                out = self.state.add_file(
                    self.host_name,
                    path,
                    layout.run_number,
                    record_type,
                    ids,
                    created=layout.created,
                )
                if self.debug or out.body["added"]:
                    self.log.info(
                        "{path}: run {run}, {n} {t}(s) added",
                        path=path,
                        run=layout.run_number,
                        n=out.body["added"],
                        t=record_type,
                    )
        except Exception as e:
            self.log.error("could not add {path}: {e}", path=path, e=e)

    def _file_gone(self, path: str) -> None:
        try:
            out = self.state.remove_file(self.host_name, path)
            self.log.info(
                "{path} deleted: {n} pending record(s) withdrawn",
                path=path,
                n=out.body["withdrawn"],
            )
        except Exception as e:
            self.log.error("could not remove {path}: {e}", path=path, e=e)

    # ---- SupRsync ------------------------------------------------------------------------

    def _file_done(self, info: FileInfo) -> None:
        if self.args.suprsync_db and info.host == self.host_name and not info.registered:
            self._register(info)

    def _register_done_files(self) -> None:
        if self.args.suprsync_db:
            for info in self.state.files_to_register():
                if info.host == self.host_name:
                    self._register(info)

    def _register(self, info: FileInfo) -> None:
        if info.id in self._registering:
            return
        self._registering.add(info.id)
        path, archive = info.path, self.args.archive_name

        def work():
            from ...db import SupRsyncDB, make_entry

            if self.suprsync is None:
                self.suprsync = SupRsyncDB(self.args.suprsync_db)
            entry = make_entry(
                path, remote_path_for(path, self.volumes), archive, known_archives=None
            )
            return self.suprsync.add_files([entry])

        def done(result):
            self._registering.discard(info.id)
            self.state.mark_registered(info.id)
            self.log.info(
                "{p}: every record done; registered in SupRsync archive {a}{dup}",
                p=path,
                a=archive,
                dup=" (already there)" if result.duplicates else "",
            )

        def failed(f):
            self._registering.discard(info.id)
            self.log.warn(
                "{p}: SupRsync registration failed (retried later): {e}", p=path, e=f.value
            )

        threads.deferToThread(work).addCallbacks(done, failed)

    # ---- operations ----------------------------------------------------------------------

    def _call(self, fn, *args, **kwargs):
        """Run ``fn`` on the reactor thread from an operation's worker thread."""
        return threads.blockingCallFromThread(reactor, fn, *args, **kwargs)

    def _answer(self, session, status: int, body: dict, what: str):
        session.data = {"status": status, **body}
        if status == 200:
            return True, f"{what}: done"
        return False, f"{what}: {status} {body.get('error', '')}".rstrip()

    @ocs_agent.param("host", default=None, type=str)
    @ocs_agent.param("file", type=str)
    @ocs_agent.param("run_number", type=int)
    @ocs_agent.param("record_type", default=TRIGGER_RECORD, choices=list(RECORD_TYPES))
    @ocs_agent.param("record_ids", type=list)
    def new_file(self, session, params):
        """new_file(host=None, file, run_number, record_type='TriggerRecord', record_ids)

        **Task** - Register a file and its records, like ``POST /new-file``.

        Parameters:
            host (str, optional): Host holding the file. Default: this agent's host.
            file (str): Absolute path of the file on that host.
            run_number (int): Run number.
            record_type (str, optional): 'TriggerRecord' or 'TimeSlice'.
            record_ids (list): [record number, sequence number] pairs.

        Notes:
            The answer of the HTTP endpoint, with its status::

                >>> response.session['data']
                {'status': 200, 'host': 'daq01', 'file': '/data/run1.hdf5',
                 'added': 2, 'known': 0}
        """
        body = dict(params, host=params["host"] or self.host_name)
        try:
            args = new_file_args(body, self.temp_suffixes)
        except BadRequest as e:
            return self._answer(session, 400, {"error": str(e)}, "new_file")
        out = self._call(self.state.add_file, **args)
        return self._answer(session, out.status, out.body, "new_file")

    @ocs_agent.param("host", default=None, type=str)
    @ocs_agent.param("file", type=str)
    def remove_file(self, session, params):
        """remove_file(host=None, file)

        **Task** - Withdraw a file's pending records, like ``POST /remove-file``.

        Parameters:
            host (str, optional): Host holding the file. Default: this agent's host.
            file (str): Path of the file.

        Notes:
            ::

                >>> response.session['data']
                {'status': 200, 'host': 'daq01', 'file': '/data/run1.hdf5',
                 'withdrawn': 2, 'known': True}
        """
        try:
            args = remove_file_args(dict(params, host=params["host"] or self.host_name))
        except BadRequest as e:
            return self._answer(session, 400, {"error": str(e)}, "remove_file")
        out = self._call(self.state.remove_file, **args)
        return self._answer(session, out.status, out.body, "remove_file")

    @ocs_agent.param("record_type", default=TRIGGER_RECORD, choices=list(RECORD_TYPES))
    @ocs_agent.param("count", default=1, type=int, check=lambda n: 1 <= n <= 1_000_000)
    def request_record(self, session, params):
        """request_record(record_type='TriggerRecord', count=1)

        **Task** - Add Data Filter credits, like ``GET /request-tr`` (``/request-ts``).

        Parameters:
            record_type (str, optional): 'TriggerRecord' or 'TimeSlice'.
            count (int, optional): Credits to add (1 to 1,000,000). Default 1.

        Notes:
            ::

                >>> response.session['data']
                {'status': 200, 'type': 'TriggerRecord', 'credits': 3}
        """
        out = self._call(self.state.request, params["record_type"], params["count"])
        return self._answer(session, out.status, out.body, "request_record")

    @ocs_agent.param("host", default=None, type=str)
    @ocs_agent.param("record_type", default=TRIGGER_RECORD, choices=list(RECORD_TYPES))
    @ocs_agent.param("file", default="", type=str)
    def read_next(self, session, params):
        """read_next(host=None, record_type='TriggerRecord', file='')

        **Task** - Hand out the next record, like ``POST /read-next-triggerrecord``
        (``/read-next-timeslice``). Fails (status 429) without a Data Filter credit, and
        (status 404) when no record of a file on ``host`` is pending.

        Parameters:
            host (str, optional): The Dispatcher's host. Default: this agent's host.
            record_type (str, optional): 'TriggerRecord' or 'TimeSlice'.
            file (str, optional): Only records of this file. Default: any file.

        Notes:
            ::

                >>> response.session['data']
                {'status': 200, 'file': '/data/run1.hdf5', 'run_number': 1,
                 'trigger_number': 2, 'sequence_number': 0, 'type': 'TriggerRecord'}
        """
        args = read_next_args(dict(params, host=params["host"] or self.host_name))
        out = self._call(self.state.read_next, args["host"], params["record_type"], args["file"])
        return self._answer(session, out.status, out.body, "read_next")

    @ocs_agent.param("run_number", type=int)
    @ocs_agent.param("trigger_number", type=int)
    @ocs_agent.param("sequence_number", default=0, type=int)
    @ocs_agent.param("record_type", default=TRIGGER_RECORD, choices=list(RECORD_TYPES))
    @ocs_agent.param("file", default="", type=str)
    def complete(self, session, params):
        """complete(run_number, trigger_number, sequence_number=0,
        record_type='TriggerRecord', file='')

        **Task** - Mark a record done, like ``POST /complete``. Fails (status 404) when the
        record is unknown.

        Parameters:
            run_number (int): Run number.
            trigger_number (int): Record (or time slice) number.
            sequence_number (int, optional): Sequence number. Default 0.
            record_type (str, optional): 'TriggerRecord' or 'TimeSlice'.
            file (str, optional): Only a record of this file. Default: any file.

        Notes:
            ::

                >>> response.session['data']
                {'status': 200, 'file': '/data/run1.hdf5'}
        """
        body = {k: params[k] for k in ("run_number", "trigger_number", "sequence_number", "file")}
        body["type"] = params["record_type"]
        try:
            args = complete_args(body)
        except BadRequest as e:
            return self._answer(session, 400, {"error": str(e)}, "complete")
        out = self._call(self.state.complete, **args)
        return self._answer(session, out.status, out.body, "complete")

    @ocs_agent.param("files", default=0, type=int, check=lambda n: 0 <= n <= 10000)
    def stats(self, session, params):
        """stats(files=0)

        **Task** - The figures of ``GET /stats``, and optionally the newest files.

        Parameters:
            files (int, optional): List this many of the newest files (0 to 10,000).

        Notes:
            ::

                >>> response.session['data']
                {'timestamp': 1700000000.0, 'host': 'daq01',
                 'counts': {'files': 3, 'files_removed': 0, 'pending': 10, 'active': 1,
                            'done': 5, 'pending_tr': 10, 'pending_ts': 0, 'active_tr': 1,
                            'active_ts': 0, 'credits_tr': 0, 'credits_ts': 0,
                            'requests_tr': 6, 'requests_ts': 0, 'reads': 6,
                            'completed': 5, 'leases_expired': 0, 'withdrawn': 0},
                 'http': {'interface': '0.0.0.0', 'port': 6000},
                 'volumes': ['/data/daq'], 'lease_timeout': 300.0,
                 'discovery': {'watching': True, 'queued': 0, 'discovered': 3, ...},
                 'files': [{'host': 'daq01', 'file': '/data/daq/run1_0.hdf5',
                            'run_number': 1, 'record_type': 'TriggerRecord', 'open': 4,
                            'done': 1, 'removed': False, 'registered': False}]}
        """
        n = params["files"]

        def collect():
            out = self._stats_now()
            if n:
                out["files"] = self.state.file_table(n)
            return out

        session.data = self._call(collect)
        return True, "stats: done"

    def _stats_now(self) -> dict:
        out = {
            "timestamp": time.time(),
            "host": self.host_name,
            "counts": self.state.counts(),
            "http": dict(self.http),
            "volumes": list(self.volumes),
            "lease_timeout": self.state.lease_timeout,
        }
        if self.discovery is not None:
            out["discovery"] = {
                "watching": self.discovery.running,
                "queued": self.discovery.pending(),
                **dict(self.discovery.counters),
            }
        return out

    @ocs_agent.param("rescan", default=False, type=bool)
    def reset(self, session, params):
        """reset(rescan=False)

        **Task** - Forget every file, record, lease, credit and counter (needs credential
        level 2). Files on the watched volumes are not read again unless ``rescan``.

        Parameters:
            rescan (bool, optional): Read the files on the volumes again and make their
                records pending. Default False.

        Notes:
            The counts before the reset::

                >>> response.session['data']
                {'before': {'files': 3, 'pending': 10, ...}, 'rescan': False}
        """
        before = self._call(self.state.reset)
        if self.discovery is not None:
            if params["rescan"]:
                self.discovery.rescan(forget=True)
            else:
                self.discovery.mark_all_known()
        self.log.warn(
            "state reset: {f} files, {p} pending and {a} active records forgotten",
            f=before["files"],
            p=before["pending"],
            a=before["active"],
        )
        session.data = {"before": before, "rescan": params["rescan"]}
        return True, "reset: done"

    @ocs_agent.param("test_mode", default=False, type=bool)
    def watch(self, session, params):
        """watch(test_mode=False)

        **Process** - Watch the volumes for closed HDF5 files and report the counts. A file
        appears when it is closed or renamed into place; its records become pending. A
        deleted file's pending records are withdrawn. The HTTP API serves whether or not
        this process runs.

        Parameters:
            test_mode (bool, optional): Stop after the first scan of the volumes is done.

        Notes:
            ``session.data`` is refreshed every second::

                >>> response.session['data']
                {'timestamp': 1700000000.0, 'host': 'daq01', 'counts': {...},
                 'http': {'interface': '0.0.0.0', 'port': 6000},
                 'volumes': ['/data/daq'], 'lease_timeout': 300.0,
                 'discovery': {'watching': True, 'queued': 0, 'discovered': 3,
                               'retries': 1, 'removed': 0, 'scans': 1}}
        """
        self._watch_stop.clear()
        if not self.volumes:
            session.data = self._call(self._stats_now)
            return False, "no --volume to watch"
        discovery = self._call(self._make_discovery)
        discovery.start()
        self.discovery = discovery
        session.set_status("running")
        period = 0.2 if params["test_mode"] else 1.0
        try:
            while True:
                session.data = self._call(self._stats_now)
                if params["test_mode"] and discovery.counters["scans"] and not discovery.pending():
                    break
                if self._watch_stop.wait(period):
                    break
        finally:
            discovery.stop()
            session.data = self._call(self._stats_now)
        return True, "Stopped watching."

    def _stop_watch(self, session, params=None):
        self._watch_stop.set()
        session.set_status("stopping")
        return True, "Stopping the watch."

    # ---- shutdown ------------------------------------------------------------------------

    def shutdown(self):
        if self._stopped:
            return None
        self._stopped = True
        self._watch_stop.set()
        for loop in self._loops:
            if loop.running:
                loop.stop()
        if self.discovery is not None:
            self.discovery.stop(1.0)
        d = self.http_port.stopListening() if self.http_port is not None else None

        def close(_=None):
            self.state.close()
            if self.suprsync is not None:
                self.suprsync.close()
            self.log.info("stopped; state in {db}", db=self.state.db_path)

        if d is not None:
            d.addBoth(close)
            return d
        close()
        return None


def make_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    if parser is None:
        parser = argparse.ArgumentParser()
    pgroup = parser.add_argument_group("Agent Options")
    pgroup.add_argument(
        "--volume",
        action="append",
        metavar="DIR",
        help="A folder to watch (recursively) for closed HDF5 files. "
        "Repeatable. Without one, files come only through POST /new-file.",
    )
    pgroup.add_argument(
        "--pattern",
        default="*.hdf5",
        help="Shell pattern(s) of the file names to take, comma-separated.",
    )
    pgroup.add_argument(
        "--temp-suffix",
        action="append",
        metavar="SUFFIX",
        help="Suffix of files still being written (ignored until renamed). "
        "Repeatable. Default: .writing",
    )
    pgroup.add_argument(
        "--host-name",
        default=None,
        help="This host's name as Dispatchers send it in read-next requests; "
        "files found on the volumes belong to it. Default: the host name.",
    )
    pgroup.add_argument(
        "--http-interface", default="0.0.0.0", help="Interface address for the HTTP API."
    )
    pgroup.add_argument(
        "--http-port",
        type=int,
        default=6000,
        help="Port of the HTTP API (the reference's is 6000).",
    )
    pgroup.add_argument(
        "--state-db",
        default="/data/orchestrator/state.db",
        help="SQLite file holding files, records, leases and credits.",
    )
    pgroup.add_argument(
        "--lease-timeout",
        type=float,
        default=300.0,
        help="Seconds a handed-out record may stay uncompleted before it is "
        "pending again (a crashed filter's record is handed out again).",
    )
    pgroup.add_argument(
        "--lease-timeslices",
        type=str2bool,
        default=False,
        help="Lease time slices like trigger records. Default false: a time "
        "slice is done when handed out, since nothing completes time slices.",
    )
    pgroup.add_argument(
        "--suprsync-db",
        default=None,
        help="SupRsync database: a file whose records are all done is "
        "registered there (local files only). Default: none.",
    )
    pgroup.add_argument(
        "--archive-name", default="dune", help="SupRsync archive of the registered files."
    )
    pgroup.add_argument(
        "--rescan-interval",
        type=float,
        default=60.0,
        help="Seconds between scans of the volumes for files whose events "
        "were missed (0: only at start).",
    )
    pgroup.add_argument(
        "--read-retry-timeout",
        type=float,
        default=10.0,
        help="Seconds to retry a file that cannot be opened yet (still locked by its writer).",
    )
    pgroup.add_argument(
        "--feed-interval",
        type=float,
        default=10.0,
        help="Seconds between publications of the counts feed.",
    )
    pgroup.add_argument(
        "--debug",
        type=str2bool,
        default=None,
        help="Log every HTTP request. Default: true when the environment "
        "variable ORCHESTRATOR_FLASK_DEBUG is a number greater than 0.",
    )
    pgroup.add_argument(
        "--test-mode",
        action="store_true",
        help="Do not start the watch process at startup (for tests).",
    )
    return parser


def main(args: list | None = None) -> None:
    parser = make_parser()
    args = site_config.parse_args(agent_class="FileOrchestrator", parser=parser, args=args)
    agent, runner = ocs_agent.init_site_agent(args)
    orch = FileOrchestrator(agent, args)
    for name in ("new_file", "remove_file", "request_record", "read_next", "complete", "stats"):
        agent.register_task(name, getattr(orch, name))
    agent.register_task("reset", orch.reset, min_privs=2)
    agent.register_process(
        "watch", orch.watch, orch._stop_watch, startup=bool(orch.volumes) and not args.test_mode
    )
    orch.listen()
    orch.start_loops()
    reactor.addSystemEventTrigger("before", "shutdown", orch.shutdown)
    runner.run(agent, auto_reconnect=True)


if __name__ == "__main__":
    main()
