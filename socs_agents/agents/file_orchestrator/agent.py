"""FileOrchestrator: the DUNE data-filter orchestrator as an OCS agent.

Serves the orchestrator's HTTP API (the real ``FilterOrchestratorClient`` endpoints and the
README's), watches volumes for closed HDF5 files, hands trigger
records and time slices to Dispatchers against credits from the Data Filter, leases what it
hands out, and keeps all of it in SQLite so that a restart loses nothing.

Threads: the state (and its SQLite connection) and the HTTP API live on one thread with a
reactor of its own (:class:`~.service.StateService`), so a request runs its job where it
was read; OCS tasks, discovery and the loops submit their jobs to it. The agent's reactor
runs OCS and the loops' timers and never touches SQLite. SupRsync registration and WAL
checkpoints have a worker each; discovery has its loop thread.
"""

from __future__ import annotations

import argparse
import os
import socket
import threading
import time

from ocs import ocs_agent
from twisted.internet.task import LoopingCall

from ... import runtime
from ...argtypes import str2bool
from ...db.entries import AllowedRoots, BadFileEntry, add_allowed_root_option
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
from .counters import Faults
from .discovery import Discovery
from .http_api import (
    DEFAULT_TEMP_SUFFIXES,
    MAX_BODY_BYTES,
    OrchestratorAPI,
    OrchestratorResource,
    OrchestratorSite,
    complete_args,
    error_answer,
    read_next_args,
    remove_file_args,
)
from .layout import FileLayout
from .options import env_debug, remote_path_for, uint_param
from .service import StateService
from .state import (
    MAX_CREDITS,
    RECORD_TYPES,
    TRIGGER_RECORD,
    DomainError,
    FileInfo,
    Refused,
    State,
    checkpoint_file,
)

COUNTS_FEED = "orchestrator_counts"
#: discovery's own counters of faults that are not refusals of a file
DISCOVERY_FAULTS = ("add_failed", "errors", "inbox_full", "refused_memory_full")
#: registrations waiting at most; more wait in the state (unregistered) for the next pass
MAX_REGISTER_QUEUE = 1000


class FileOrchestrator(AgentShell):
    """The orchestrator: HTTP API, volume watcher and the state machine behind both."""

    agent_class = "FileOrchestrator"

    def __init__(self, agent: ocs_agent.OCSAgent, args: argparse.Namespace) -> None:
        super().__init__(agent, args)
        self.host_name = args.host_name or socket.gethostname()
        self.volumes = [os.path.abspath(v) for v in (args.volume or [])]
        self.patterns = [p for p in args.pattern.split(",") if p]
        self.temp_suffixes = tuple(args.temp_suffix or DEFAULT_TEMP_SUFFIXES)
        self.debug = args.debug if args.debug is not None else env_debug()
        roots = args.allowed_root or self.volumes
        #: where local files may lie (links resolved); None: no local file may be taken
        self.allowed = AllowedRoots(roots) if roots else None
        self.allowed_clients = ClientAllowList.from_option(args.http_allow)
        t0 = time.perf_counter()
        self.service = StateService(
            lambda: State(
                args.state_db,
                lease_timeout=args.lease_timeout,
                lease_timeslices=args.lease_timeslices,
                on_file_done=self._file_done,
            ),
            lock_limit=args.lock_timeout,
            report=self.report,
        )
        c = self.service.snapshot
        self.log.info(
            "state {db} loaded in {ms:.0f} ms: {files} files, {p} pending, {a} active, {d} done",
            db=os.path.abspath(args.state_db),
            ms=(time.perf_counter() - t0) * 1e3,
            files=c["files"],
            p=c["pending"],
            a=c["active"],
            d=c["done"],
        )
        self.api = OrchestratorAPI(
            self._stats_now, temp_suffixes=self.temp_suffixes, check_new_file=self._check_local
        )
        self.faults = Faults((*self.api.endpoints, "discovery", "suprsync"), self.report)
        self.http_port = None
        self.http: dict = {}
        # SupRsync registration (md5 of whole files) and WAL checkpoints (fsync) each have a
        # thread of their own, so the state's worker never waits for them.
        self.registrar = runtime.SerialWorker("orchestrator-suprsync", max_queue=MAX_REGISTER_QUEUE)
        self._registering: set[int] = set()
        self._registering_lock = threading.Lock()
        self.checkpointer = runtime.SerialWorker("orchestrator-checkpoint", max_queue=1)
        self.suprsync = None
        self.discovery: Discovery | None = None
        self._watch_stop = threading.Event()
        self._expiring = False
        self._stopped = False
        self._loops: list[LoopingCall] = []
        self.agent.register_feed(
            COUNTS_FEED, record=True, agg_params={"frame_length": 60}, buffer_time=1
        )

    # ---- reactor side --------------------------------------------------------------------

    def listen(self) -> None:
        resource = OrchestratorResource(
            self.api,
            self.service.submit_here,
            log_request=self._log_request,
            on_refusal=self._http_refusal,
        )
        site = OrchestratorSite(
            resource,
            max_body_bytes=self.args.max_body_bytes,
            allowed_clients=self.allowed_clients,
            on_refusal=self._http_refusal,
            reactor=self.service.loop,
        )
        self.http_port = self.service.listen_tcp(
            self.args.http_port, site, interface=self.args.http_interface
        )
        self.http = {"interface": self.args.http_interface, "port": self.http_port.getHost().port}
        self.log.info(
            "HTTP API on {i}:{p}{dbg}",
            i=self.http["interface"],
            p=self.http["port"],
            dbg=" (debug: every request logged)" if self.debug else "",
        )

    def start_loops(self) -> None:
        """Lease expiry, checkpoints, feed and SupRsync retries: timers on the reactor that
        hand their work to the workers."""
        period = max(0.05, min(1.0, self.args.lease_timeout / 4))
        for fn, every, now in (
            (self._expire, period, True),
            (self._checkpoint, 10.0, False),
            (self._publish_counts, self.args.feed_interval, True),
            (self._register_done_files, self.args.register_retry_interval, True),
        ):
            loop = LoopingCall(fn)
            d = loop.start(every, now=now)
            d.addErrback(
                lambda f, name=fn.__name__: self.log.error(
                    "{name} loop failed: {f}", name=name, f=f
                )
            )
            self._loops.append(loop)

    def _expire(self) -> None:
        if self._expiring:  # the last one still waits (a locked database): no pile-up
            return
        self._expiring = True

        def done(n) -> None:
            self._expiring = False
            if n:
                self.log.warn("{n} lease(s) expired; the records are pending again", n=n)

        def failed(f) -> None:
            self._expiring = False
            self.log.warn("lease expiry failed (tried again): {e}", e=f.value)

        self.service.submit(State.expire_leases).addCallbacks(done, failed)

    def _checkpoint(self) -> None:
        d = self.checkpointer.submit(checkpoint_file, os.path.abspath(self.args.state_db))
        d.addErrback(lambda f: self.log.warn("checkpoint failed: {e}", e=f.value))

    def _publish_counts(self) -> None:
        now = time.time()
        self.agent.publish_to_feed(
            COUNTS_FEED,
            {"block_name": "counts", "timestamp": now, "data": self.service.snapshot},
            from_reactor=True,
        )
        faults = self.faults.feed_fields()
        state = self.service.figures()
        faults["state_lock_waits"] = state["lock_waits"]
        faults["state_lock_timeouts"] = state["lock_timeouts"]
        found = self.discovery.counters if self.discovery is not None else {}
        for name in DISCOVERY_FAULTS:
            faults[f"discovery_{name}"] = found.get(name, 0)
        self.agent.publish_to_feed(
            COUNTS_FEED,
            {"block_name": "faults", "timestamp": now, "data": faults},
            from_reactor=True,
        )

    def _log_request(self, method: str, path: str, status: int, seconds: float) -> None:
        if self.debug:
            self.log.info(
                "{m} {p} -> {s} ({ms:.2f} ms)", m=method, p=path, s=status, ms=seconds * 1e3
            )

    def _http_refusal(self, endpoint: str, reason: str, detail: str) -> None:
        level = "error" if reason == "internal_error" else "warn"
        self.faults.hit(endpoint, reason, detail, level)

    def _check_local(self, args: dict) -> None:
        """A file of this host must lie under an allowed root once links are resolved; a
        file of another host cannot be resolved here (and is never registered here)."""
        if args["host"] != self.host_name:
            return
        if self.allowed is None:
            raise Refused(
                f"{args['path']!r}: no allowed root is configured (--allowed-root, --volume)",
                "outside_allowed_root",
            )
        try:
            self.allowed.check(args["path"])
        except BadFileEntry as e:
            raise Refused(str(e), e.code) from None
        except (OSError, ValueError) as e:  # a path the OS cannot resolve (too long)
            raise Refused(f"{args['path']!r}: {e}", "bad_path") from None

    # ---- discovery (its own thread; waits for the state's worker) -----------------------

    def _make_discovery(self) -> Discovery:
        # Only files under the volumes: a file of this host announced by POST /new-file
        # elsewhere must not be withdrawn because a scan does not find it.
        roots = tuple(v.rstrip("/") + "/" for v in self.volumes)
        host = self.host_name

        def known_paths(state: State) -> list[str]:
            return [
                f.path
                for f in state.files.values()
                if f.host == host and not f.removed and f.path.startswith(roots)
            ]

        return Discovery(
            self.volumes,
            self.patterns,
            added=self._file_found,
            removed=self._file_gone,
            report=self.report,
            known=self.service.run(known_paths),
            allowed=self.allowed,
            on_refusal=lambda reason, detail: self.faults.hit("discovery", reason, detail),
            temp_suffixes=self.temp_suffixes,
            retry_timeout=self.args.read_retry_timeout,
            rescan_interval=self.args.rescan_interval,
        )

    def _file_found(self, path: str, layout: FileLayout) -> None:
        """Add a discovered file (discovery thread; raises if the state refuses it, so the
        file is tried again later)."""
        for record_type, ids in layout.records.items():
            out = self.service.run(
                State.add_file,
                self.host_name,
                path,
                layout.run_number,
                record_type,
                ids,
                layout.created,
            )
            if self.debug or out["added"]:
                self.log.info(
                    "{path}: run {run}, {n} {t}(s) added",
                    path=path,
                    run=layout.run_number,
                    n=out["added"],
                    t=record_type,
                )

    def _file_gone(self, path: str) -> None:
        out = self.service.run(State.remove_file, self.host_name, path)
        self.log.info(
            "{path} deleted: {n} pending record(s) withdrawn", path=path, n=out["withdrawn"]
        )

    # ---- SupRsync ------------------------------------------------------------------------

    def _file_done(self, info: FileInfo) -> None:
        """Every record of ``info`` is done (state worker): register it, on the registrar."""
        if self.args.suprsync_db and info.host == self.host_name and not info.registered:
            self._register(info.id, info.path)

    def _register_done_files(self) -> None:
        if not self.args.suprsync_db:
            return
        host = self.host_name

        def todo(state: State) -> list[tuple[int, str]]:
            return [(f.id, f.path) for f in state.files_to_register() if f.host == host]

        d = self.service.submit(todo)
        d.addCallback(lambda files: [self._register(i, p) for i, p in files])
        d.addErrback(lambda f: self.log.warn("SupRsync retry pass failed: {e}", e=f.value))

    def _register(self, file_id: int, path: str) -> None:
        """Queue the registration of one finished file (any thread). A file already queued
        is not queued twice; one that does not fit the bounded queue, or whose registration
        fails, stays unregistered in the state and is queued again by the next pass
        (``--register-retry-interval``), also after a restart."""
        with self._registering_lock:
            if file_id in self._registering:
                return
            self._registering.add(file_id)
        future = self.registrar.call(self._register_now, file_id, path)
        future.add_done_callback(lambda f: self._registered(f, file_id, path))

    def _register_now(self, file_id: int, path: str):
        """On the registrar: one SupRsync row, then the state's ``registered`` flag."""
        from ...db import SupRsyncDB, make_entry

        if self.allowed is None:
            raise BadFileEntry(path, "no allowed root is configured", "outside_allowed_root")
        self.allowed.check(path)
        if self.suprsync is None:
            self.suprsync = SupRsyncDB(self.args.suprsync_db)
        entry = make_entry(
            path, remote_path_for(path, self.volumes), self.args.archive_name, known_archives=None
        )
        result = self.suprsync.add_files([entry])
        self.service.run(State.mark_registered, file_id)
        return result

    def _registered(self, future, file_id: int, path: str) -> None:
        with self._registering_lock:
            self._registering.discard(file_id)
        exc = future.exception()
        if exc is not None:
            if isinstance(exc, runtime.QueueFull):
                reason = "queue_full"
            elif isinstance(exc, BadFileEntry):
                reason = exc.code
            elif runtime.is_locked(exc):
                reason = "database_locked"
            else:
                reason = "failed"
            self.faults.hit("suprsync", reason, f"{path} (retried later): {exc}")
            return
        self.log.info(
            "{p}: every record done; registered in SupRsync archive {a}{dup}",
            p=path,
            a=self.args.archive_name,
            dup=" (already there)" if future.result().duplicates else "",
        )

    # ---- operations ----------------------------------------------------------------------

    def _run_task(self, session, what: str, fn, *args):
        """Run ``fn(state, *args)`` on the state's worker for a task; the answer, with the
        HTTP endpoint's status, becomes ``session.data``."""
        try:
            status, body = 200, self.service.run(fn, *args)
        except DomainError as e:
            status, body = error_answer(e)
        session.data = {"status": status, **body}
        if status == 200:
            return True, f"{what}: done"
        return False, f"{what}: {status} {body.get('error', '')}".rstrip()

    @ocs_agent.param("host", default=None, type=str)
    @ocs_agent.param("file", type=str)
    @ocs_agent.param("run_number", type=int, check=uint_param)
    @ocs_agent.param("record_type", default=TRIGGER_RECORD, choices=list(RECORD_TYPES))
    @ocs_agent.param("record_ids", type=list)
    def new_file(self, session, params):
        """new_file(host=None, file, run_number, record_type='TriggerRecord', record_ids)

        **Task** - Register a file and its records, like ``POST /new-file`` (needs
        credential level 2). A file of this host must lie under an allowed root.

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
        return self._run_task(
            session, "new_file", lambda state: state.add_file(**self.api.new_file_args(body))
        )

    @ocs_agent.param("host", default=None, type=str)
    @ocs_agent.param("file", type=str)
    def remove_file(self, session, params):
        """remove_file(host=None, file)

        **Task** - Withdraw a file's pending records, like ``POST /remove-file`` (needs
        credential level 2).

        Parameters:
            host (str, optional): Host holding the file. Default: this agent's host.
            file (str): Path of the file.

        Notes:
            ::

                >>> response.session['data']
                {'status': 200, 'host': 'daq01', 'file': '/data/run1.hdf5',
                 'withdrawn': 2, 'known': True}
        """
        body = dict(params, host=params["host"] or self.host_name)
        return self._run_task(
            session, "remove_file", lambda state: state.remove_file(**remove_file_args(body))
        )

    @ocs_agent.param("record_type", default=TRIGGER_RECORD, choices=list(RECORD_TYPES))
    @ocs_agent.param("count", default=1, type=int, check=lambda n: 1 <= n <= MAX_CREDITS)
    def request_record(self, session, params):
        """request_record(record_type='TriggerRecord', count=1)

        **Task** - Add Data Filter credits, like ``GET /request-tr`` (``/request-ts``;
        needs credential level 2).

        Parameters:
            record_type (str, optional): 'TriggerRecord' or 'TimeSlice'.
            count (int, optional): Credits to add (1 to 1,000,000). Default 1.

        Notes:
            ::

                >>> response.session['data']
                {'status': 200, 'type': 'TriggerRecord', 'credits': 3}
        """
        return self._run_task(
            session, "request_record", State.request, params["record_type"], params["count"]
        )

    @ocs_agent.param("host", default=None, type=str)
    @ocs_agent.param("record_type", default=TRIGGER_RECORD, choices=list(RECORD_TYPES))
    @ocs_agent.param("file", default="", type=str)
    def read_next(self, session, params):
        """read_next(host=None, record_type='TriggerRecord', file='')

        **Task** - Hand out the next record (needs credential level 2), like
        ``POST /read-next-triggerrecord`` (``/read-next-timeslice``). Fails (status 429)
        without a Data Filter credit, and (status 404) when no record of a file on ``host``
        is pending.

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
        body = dict(params, host=params["host"] or self.host_name)

        def read(state: State) -> dict:
            args = read_next_args(body)
            return state.read_next(args["host"], params["record_type"], args["file"]).answer()

        return self._run_task(session, "read_next", read)

    @ocs_agent.param("run_number", type=int, check=uint_param)
    @ocs_agent.param("trigger_number", type=int, check=uint_param)
    @ocs_agent.param("sequence_number", default=0, type=int, check=uint_param)
    @ocs_agent.param("record_type", default=TRIGGER_RECORD, choices=list(RECORD_TYPES))
    @ocs_agent.param("file", default="", type=str)
    def complete(self, session, params):
        """complete(run_number, trigger_number, sequence_number=0,
        record_type='TriggerRecord', file='')

        **Task** - Mark a record done, like ``POST /complete`` (needs credential level 2).
        Fails (status 404) when the record is unknown.

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
        return self._run_task(
            session, "complete", lambda state: state.complete(**complete_args(body))
        )

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
                 'state': {'queued': 0, 'lock_waits': 0, 'lock_timeouts': 0,
                           'lock_waiting_s': 0.0},
                 'faults': {'total': 0, 'by_reason': {}, 'by_place': {}},
                 'discovery': {'watching': True, 'queued': 0, 'discovered': 3, ...},
                 'files': [{'host': 'daq01', 'file': '/data/daq/run1_0.hdf5',
                            'run_number': 1, 'record_type': 'TriggerRecord', 'open': 4,
                            'done': 1, 'removed': False, 'registered': False}]}
        """
        n = params["files"]
        out = self._stats_now()
        if n:
            out["files"] = self.service.run(State.file_table, n)
        session.data = out
        return True, "stats: done"

    def _stats_now(self) -> dict:
        """The ``GET /stats`` answer, from the state worker's snapshot (any thread; never
        waits for the state)."""
        out = {
            "timestamp": time.time(),
            "host": self.host_name,
            "counts": self.service.snapshot,
            "http": dict(self.http),
            "volumes": list(self.volumes),
            "lease_timeout": self.args.lease_timeout,
            "state": self.service.figures(),
            "faults": self.faults.as_data(),
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
        before = self.service.run(State.reset)
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
                 'state': {'queued': 0, 'lock_waits': 0, 'lock_timeouts': 0,
                           'lock_waiting_s': 0.0},
                 'faults': {'total': 1, 'by_reason': {'not_hdf5': 1},
                            'by_place': {'discovery': {'not_hdf5': 1}}},
                 'discovery': {'watching': True, 'queued': 0, 'discovered': 3,
                               'retries': 1, 'removed': 0, 'scans': 1,
                               'refused_not_hdf5': 1}}
        """
        self._watch_stop.clear()
        if not self.volumes:
            session.data = self._stats_now()
            return False, "no --volume to watch"
        discovery = self._make_discovery()
        discovery.start()
        self.discovery = discovery
        period = 0.2 if params["test_mode"] else 1.0
        try:
            while not self._watch_stop.is_set():
                session.data = self._stats_now()
                if params["test_mode"] and discovery.counters["scans"] and not discovery.pending():
                    break
                self._watch_stop.wait(period)
        finally:
            discovery.stop()
            session.data = self._stats_now()
        return True, "Stopped watching."

    def operations(self) -> list[Operation]:
        # tasks that change the state need credential level 2; reading stays level 1
        changes = ("new_file", "remove_file", "request_record", "read_next", "complete", "reset")
        return [
            *(task(name, getattr(self, name), min_privs=CONTROL_PRIVS) for name in changes),
            task("stats", self.stats),
            process(
                "watch",
                self.watch,
                stopper_for(self._watch_stop, "Stopping the watch."),
                startup=bool(self.volumes) and not self.args.test_mode,
            ),
        ]

    def begin(self) -> None:
        self.listen()
        self.start_loops()

    # ---- shutdown ------------------------------------------------------------------------

    def shutdown(self):
        """Stop serving, let the state's thread finish what it was given, close."""
        if self._stopped:
            return None
        self._stopped = True
        self._watch_stop.set()
        for loop in self._loops:
            if loop.running:
                loop.stop()
        if self.discovery is not None:
            self.discovery.stop(1.0)
        d = self.service.close()  # stops listening first

        def close(_=None):
            self.checkpointer.stop(drain=False, timeout=1.0)
            if self.suprsync is not None:
                self.registrar.call(self.suprsync.close)
            self.registrar.stop(drain=True, timeout=2.0)
            self.log.info("stopped; state in {db}", db=os.path.abspath(self.args.state_db))

        return d.addBoth(close)


def make_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    parser, pgroup = agent_options(parser)
    pgroup.add_argument(
        "--volume",
        action="extend",
        nargs="+",
        metavar="DIR",
        help="Folder(s) to watch (recursively) for closed HDF5 files. Repeatable, or several "
        "after one --volume (the site-config keeps one entry per option name). Without "
        "one, files come only through POST /new-file.",
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
        "--http-interface",
        default="127.0.0.1",
        help="Interface address for the HTTP API: this host only unless told otherwise "
        "(0.0.0.0 with --http-allow for remote Dispatchers).",
    )
    add_http_allow_option(pgroup)
    pgroup.add_argument(
        "--max-body-bytes",
        type=int,
        default=MAX_BODY_BYTES,
        help="Largest request body; a larger Content-Length is answered 413 before the "
        "body is read. Default 32 MiB (a file of 100,000 records is about 1.5 MB).",
    )
    add_allowed_root_option(
        pgroup,
        "the --volume folders (files of this host announced over HTTP or by new_file "
        "are checked too)",
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
        "--register-retry-interval",
        type=float,
        default=30.0,
        help="Seconds between passes that register finished files not registered yet "
        "(a failed registration, one over the queue's bound, or one from before a "
        "restart). A pass also runs at start.",
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
        "--lock-timeout",
        type=float,
        default=120.0,
        help="Seconds an operation waits for the state database while another process "
        "holds its write lock (requests wait in order meanwhile); after that it fails "
        "with 503.",
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
    run_agent(FileOrchestrator, make_parser, args)


if __name__ == "__main__":
    main()
