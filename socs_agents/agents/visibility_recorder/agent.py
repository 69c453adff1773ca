"""VisibilityRecorder: one visibility recording pipeline (``fast`` or ``slow`` mode).

A thin OCS shell over :mod:`.schedule` (requests, validation, SQLite schedule), :mod:`.engine`
(the recording and writer threads), :mod:`.writer` (HDF5 files, SupRsync registration) and
:mod:`.sntp` (clock check). What the manager relies on is in :mod:`.contract`.
"""

from __future__ import annotations

import argparse
import os
import threading
import time
import zlib
from collections.abc import Callable
from typing import Any

from ocs import access, ocs_agent
from twisted.internet import defer

from ... import runtime
from ...db import SupRsyncDB
from ...db.entries import AllowedRoots, add_allowed_root_option
from ..shell import AgentShell, Operation, agent_options, process, run_agent, stopper_for, task
from .contract import (
    CONTROL_PRIVS,
    DIRECT_PROCEDURE,
    NO_SUCH_OPERATION,
    REPLY_DATA,
    REPLY_MESSAGE,
    REPLY_SUCCESS,
    SHUTTING_DOWN,
    STATUS_BLOCK,
    STATUS_FEED,
)
from .correlator import SimulatedCorrelator
from .engine import COUNTERS, EngineConfig, RecordingEngine
from .params import Bounded, finite_arg
from .schedule import DEFAULT_NOW_LEAD_S, Schedule, ScheduleError
from .sntp import SNTPError, query, set_clock
from .writer import VisibilityWriter

#: What an operation's work gives back: (ok, message, its session data).
OperationResult = tuple[bool, str, dict]

#: Schedule requests waiting for the request worker before more are refused.
MAX_QUEUED_REQUESTS = 1000
#: NTP queries at once (each waits up to its timeout on the network).
SYNC_THREADS = 2

MODE_DEFAULTS = {
    # mode: (integration time s, integrations per file, archive)
    "slow": (10.0, 1, "drv_slow"),
    "fast": (0.1, 100, "drv_fast"),
}

#: The fields of the status feed, in order (numbers and strings only, as ocs records them).
FEED_FIELDS = (
    "summary",
    "info",
    "op_type",
    "op_tag",
    "mode",
    "pipeline_id",
    "disk_size",
    "disk_free",
    "disk_used_pct",
    "files_written",
    "bytes_written",
    "write_errors",
    "files_registered",
    "pending_registration",
    "last_file",
    "last_error",
    "data_rate",
) + tuple(f"n_{reason}" for reason in COUNTERS)


def _time_params(func):
    """The four time arguments of start/stop, in both spellings."""
    for name in ("mpm", "mjd"):
        func = ocs_agent.param(name, default=None)(func)
    return func


class VisibilityRecorder(AgentShell):
    """A visibility recording pipeline."""

    agent_class = "VisibilityRecorder"

    def __init__(self, agent: ocs_agent.OCSAgent, args: argparse.Namespace) -> None:
        super().__init__(agent, args)
        self.pipeline_id = args.pipeline_id or args.instance_id
        integration, per_file, archive = MODE_DEFAULTS[args.mode]
        self.integration_time = args.integration_time or integration
        self.per_file = args.integrations_per_file or per_file
        self.archive = args.archive_name or archive
        os.makedirs(args.data_dir, exist_ok=True)
        self.db = SupRsyncDB(args.db_path) if args.db_path != "none" else None
        schedule_path = args.schedule_db or os.path.join(
            args.data_dir, f".{self.pipeline_id}.schedule.sqlite"
        )
        self.schedule = Schedule(schedule_path)
        writer = VisibilityWriter(
            args.data_dir,
            args.mode,
            self.pipeline_id,
            self.integration_time,
            self.db,
            self.archive,
            AllowedRoots(args.allowed_root or [args.data_dir]),
        )
        correlator = SimulatedCorrelator(
            n_antennas=args.n_antennas,
            n_channels=args.n_channels,
            seed=zlib.crc32(self.pipeline_id.encode()),
        )
        config = EngineConfig(
            mode=args.mode,
            pipeline_id=self.pipeline_id,
            integration_time=self.integration_time,
            integrations_per_file=self.per_file,
            disk_warning_pct=args.disk_warning,
            disk_error_pct=args.disk_error,
            now_lead=args.now_lead,
            max_queued_files=args.max_queued_files,
            max_retry_files=args.max_retry_files,
        )
        self.engine = RecordingEngine(self.schedule, writer, correlator, config, self.report)
        self._monitor_stop = threading.Event()
        # Schedule writes run one after another on a worker of their own: one hand-over and
        # one callFromThread per request (Twisted's thread pool costs more, and the
        # schedule's lock would serialise them anyway).
        self.requests = runtime.SerialWorker("requests", max_queue=MAX_QUEUED_REQUESTS)
        self.ntp = runtime.WorkerPool("sync", size=SYNC_THREADS, max_queue=MAX_QUEUED_REQUESTS)
        # ocs's access checks take an ActionContext; one per operation is enough.
        self._contexts = {
            op: access.ActionContext(op_name=op, action="start") for op in self._direct_work()
        }
        self.agent.register_feed(
            STATUS_FEED, record=True, agg_params={"frame_length": 60}, buffer_time=0
        )

    # ---- tasks ---------------------------------------------------------------------------

    def ping(self, session, params=None):
        """ping()

        **Task** - Answer ``"pong"``: shows the pipeline is responsive.

        Notes:
            ::

                >>> response.session['data']
                {'response': 'pong', 'pipeline_id': 'drvs-1', 'mode': 'slow',
                 'timestamp': 1700000000.0}
        """
        ok, message, session.data = self._answer_ping({})
        return ok, message

    def _answer_ping(self, params: dict) -> OperationResult:
        return (
            True,
            "pong",
            {
                "response": "pong",
                "pipeline_id": self.pipeline_id,
                "mode": self.args.mode,
                "timestamp": time.time(),
            },
        )

    @ocs_agent.param("timeout", default=2.0, type=float, cast=Bounded(0, 30))
    @ocs_agent.param("set_clock", default=False, type=bool)
    @ocs_agent.param("port", default=123, type=int, check=lambda p: p is not True and 0 < p < 65536)
    @ocs_agent.param("server", type=str)
    def sync(self, session, params):
        """sync(server, port=123, set_clock=False, timeout=2.0)

        **Task** - Query an NTP server with SNTP and report the clock offset; set the
        system clock only when asked to, allowed by ``--allow-set-clock`` and permitted by
        the OS.

        Parameters:
            server (str): NTP server name or IP address.
            port (int): its UDP port.
            set_clock (bool): step the system clock by the measured offset.
            timeout (float): seconds to wait for the answer.

        Notes:
            ::

                >>> response.session['data']
                {'response': {'synced': True, 'server': 'ntp.example.org', 'port': 123,
                              'offset_s': -0.000412, 'delay_s': 0.000231, 'stratum': 2,
                              'ref_id': '10.0.0.1', 'server_time': 1700000000.0,
                              'clock_set': False,
                              'clock_note': 'clock not set: setting it is not allowed ...'}}
        """
        return self._in_session(session, self.ntp, self._check_clock, params)

    def _check_clock(self, params: dict) -> OperationResult:
        """Blocking: waits for the NTP server's answer."""
        try:
            result = query(params["server"], params["port"], params["timeout"])
        except SNTPError as e:
            return False, str(e), {"response": {"synced": False, "error": str(e)}}
        answer = {"synced": True, **result.as_dict()}
        if params["set_clock"]:
            answer["clock_set"], answer["clock_note"] = set_clock(
                result.offset_s, allowed=self.args.allow_set_clock
            )
        else:
            answer["clock_set"], answer["clock_note"] = False, "clock not set: not requested"
        self.log.info(
            "sync with {server}: offset {offset:+.6f} s, delay {delay:.6f} s, "
            "stratum {stratum}; {note}",
            server=result.server,
            offset=result.offset_s,
            delay=result.delay_s,
            stratum=result.stratum,
            note=answer["clock_note"],
        )
        return (
            True,
            (
                f"offset {result.offset_s:+.6f} s, delay {result.delay_s:.6f} s, "
                f"stratum {result.stratum}; {answer['clock_note']}"
            ),
            {"response": answer},
        )

    @_time_params
    @ocs_agent.param("start_mpm", default=None)
    @ocs_agent.param("start_mjd", default=None)
    def start(self, session, params):
        """start(start_mjd=None, start_mpm=None)

        **Task** - Schedule a recording from the given time on; it lasts until a ``stop``.

        Parameters:
            start_mjd (int or str): integer MJD, or ``"now"`` for the request time plus the
                lead time (``--now-lead``, 15 s by default). ``mjd`` is accepted too.
            start_mpm (int): milliseconds past midnight of that MJD (ignored with
                ``"now"``). ``mpm`` is accepted too.

        Notes:
            Fails with a message for a missing argument, a start more than 2 s in the past
            ("Insufficient advanced notice"), or a start that overlaps a scheduled
            operation. ``response`` is the recording's directory::

                >>> response.session['data']
                {'response': '/data/drv/20261121_101515_slow_drvs-1',
                 'tag': '20261121_101515_slow_drvs-1', 'mjd': 61365, 'mpm': 36915000,
                 'requested_time': 1795342515.0,
                 'operation': {'id': 3, 'tag': '20261121_101515_slow_drvs-1',
                               'start': 1795342515.0, 'stop': None, 'state': 'scheduled',
                               ...}}
        """
        return self._in_session(session, self.requests, self._request_start, params)

    def _request_start(self, params: dict) -> OperationResult:
        """Blocking: writes the schedule (SQLite)."""
        try:
            data = self.engine.request_start(params)
        except ScheduleError as e:
            return False, str(e), {}
        return True, f"recording scheduled: {data['tag']}", data

    @_time_params
    @ocs_agent.param("stop_mpm", default=None)
    @ocs_agent.param("stop_mjd", default=None)
    def stop(self, session, params):
        """stop(stop_mjd=None, stop_mpm=None)

        **Task** - End the recording active at the given time, at that time.

        Parameters:
            stop_mjd (int or str): integer MJD, or ``"now"`` (the request time plus the lead
                time). ``mjd`` is accepted too.
            stop_mpm (int): milliseconds past midnight of that MJD. ``mpm`` is accepted too.

        Notes:
            Fails when no recording is active at that time. ``response`` is the directory
            of the recording that will stop::

                >>> response.session['data']
                {'response': '/data/drv/20261121_101515_slow_drvs-1',
                 'tag': '20261121_101515_slow_drvs-1', 'mjd': 61365, 'mpm': 36975000,
                 'requested_time': 1795342575.0, 'operation': {...}}
        """
        return self._in_session(session, self.requests, self._request_stop, params)

    def _request_stop(self, params: dict) -> OperationResult:
        """Blocking: writes the schedule (SQLite)."""
        try:
            data = self.engine.request_stop(params)
        except ScheduleError as e:
            return False, str(e), {}
        return True, f"recording {data['tag']} will stop", data

    # ---- the direct procedure ------------------------------------------------------------

    def _in_session(self, session, worker, work, params: dict) -> defer.Deferred:
        """Run a task's work on its worker; its data go to ``session.data``."""

        def done(result: OperationResult) -> tuple[bool, str]:
            ok, message, session.data = result
            return ok, message

        return self._on_worker(worker, work, params).addCallback(done)

    def _on_worker(self, worker, work, params: dict) -> defer.Deferred:
        """``work(params)`` on ``worker``; a refused job is an answer, not a crash."""
        d = worker.submit(work, params)

        def refused(failure) -> OperationResult:
            failure.trap(runtime.QueueFull, runtime.WorkerStopped)
            if failure.check(runtime.WorkerStopped):
                return False, SHUTTING_DOWN, {}
            self.engine.count("requests_busy", f"request refused: {failure.value}")
            return False, f"the recorder is busy: {failure.value}", {}

        return d.addErrback(refused)

    def _direct_work(self) -> dict[str, tuple[Callable[[dict], OperationResult], Any]]:
        """Operation name -> (its work, the worker it runs on: None for the reactor; the
        request worker for schedule writes; the sync pool for waits on the network)."""
        return {
            "ping": (self._answer_ping, None),
            "sync": (self._check_clock, self.ntp),
            "start": (self._request_start, self.requests),
            "stop": (self._request_stop, self.requests),
        }

    def direct(
        self, op_name: str, params: dict | None = None, password: str | None = None
    ) -> defer.Deferred:
        """Run ``ping``, ``sync``, ``start`` or ``stop`` in one WAMP call, for the manager.

        Registered at ``<agent address>.direct``. The same checks as the OCS task, in the
        same order and with ocs's own code: the caller's credential level (from
        ``password``, by the agent's access policy) against the task's ``min_privs``, then
        the task's ``@ocs_agent.param`` validation; then the same work. No OCS session is
        created: one round trip instead of ``start`` plus ``wait``, and nothing shows in
        the task's ``status()``.

        Returns (through the Deferred):
            ``{'success': bool, 'message': str, 'data': dict}``: ``data`` is what the task
            puts in ``session.data``; ``message`` is what it returns (or why the call was
            refused).
        """

        def answer(result: OperationResult) -> dict:
            ok, message, data = result
            return {REPLY_SUCCESS: bool(ok), REPLY_MESSAGE: message, REPLY_DATA: data}

        work = self._direct_work().get(op_name) if isinstance(op_name, str) else None
        op = self.agent.tasks.get(op_name) if work is not None else None
        if work is None or op is None:
            shown = op_name if isinstance(op_name, str) and len(op_name) < 64 else "?"
            self.engine.count("direct_bad_request", f"direct call of unknown {shown!r} refused")
            return defer.succeed(answer((False, NO_SUCH_OPERATION.format(op_name=shown), {})))
        if params is not None and not isinstance(params, dict):
            self.engine.count("direct_bad_request", f"direct {op_name}: params not a dict")
            return defer.succeed(answer((False, "params must be a dict", {})))
        if password is not None and not isinstance(password, str):
            password = None
        level, detail = access.agent_get_creds(
            password,
            self.agent.access_config,
            self.agent.access_config.agent,
            self._contexts[op_name],
        )
        if level < op.min_privs:
            self.engine.count(
                "direct_underprivileged", f"rejected underprivileged direct {op_name} request"
            )
            return defer.succeed(
                answer((False, access.agent_rejection_message(level, op.min_privs, detail), {}))
            )
        prescreen = getattr(op.launcher, "_ocs_prescreen", None)
        if prescreen is not None:
            try:
                params = ocs_agent.ParamHandler(params or {}).batch(prescreen)
            except ocs_agent.ParamError as e:
                self.engine.count("direct_bad_request", f"direct {op_name} refused: {e.msg}")
                return defer.succeed(answer((False, e.msg, {})))
        func, worker = work
        # Blocking work (SQLite, the network) leaves the reactor; ping stays on it, like
        # the task registered with blocking=False.
        if worker is None:
            d = defer.maybeDeferred(func, params or {})
        else:
            d = self._on_worker(worker, func, params or {})
        d.addCallback(answer)

        def crashed(failure) -> dict:
            self.log.error("direct {op} crashed: {f}", op=op_name, f=failure)
            return answer((False, f"CRASH: {failure.value!r}", {}))

        d.addErrback(crashed)
        return d

    def register_direct(self, session: Any, details: Any = None) -> defer.Deferred:
        """Register :meth:`direct` on (every) join of the agent's WAMP session."""
        uri = f"{self.agent.agent_address}.{DIRECT_PROCEDURE}"
        d = defer.maybeDeferred(session.register, self.direct, uri)
        d.addErrback(lambda f: self.log.error("could not register {uri}: {e}", uri=uri, e=f.value))
        return d

    # ---- monitoring ----------------------------------------------------------------------

    @ocs_agent.param("interval", default=None, type=float, cast=Bounded(0, 3600))
    def monitor(self, session, params):
        """monitor(interval=None)

        **Process** - Publish the pipeline's monitoring points to the ``visibility_status``
        feed and ``session.data`` (every ``--monitor-interval`` seconds by default).

        Notes:
            ``summary`` is ``booting``, ``normal``, ``warning`` (disk above
            ``--disk-warning`` %), ``error`` (disk above ``--disk-error`` %, a failed file
            write, a file refused or waiting for registration, a dead thread) or
            ``shutdown``. ``counters`` counts every refusal and fault by reason (the docs
            page says what to do about each); the feed has them as ``n_<reason>``::

                >>> response.session['data']
                {'timestamp': 1700000000.0, 'mode': 'slow', 'pipeline_id': 'drvs-1',
                 'summary': 'normal', 'info': 'recording 20261121_101515_slow_drvs-1',
                 'op_type': 'recording', 'op_tag': '20261121_101515_slow_drvs-1',
                 'disk_size': 1000000000000, 'disk_free': 400000000000,
                 'disk_used_pct': 60.0, 'files_written': 12, 'bytes_written': 1843200,
                 'write_errors': 0, 'files_registered': 12, 'pending_registration': 0,
                 'counters': {'write_failed': 0, 'writer_backlog_full': 0,
                              'outside_allowed_root': 0, 'register_refused': 0,
                              'database_locked': 0, 'database_error': 0,
                              'retry_list_full': 0, 'unreadable_file': 0,
                              'rescan_failed': 0, 'direct_underprivileged': 0,
                              'direct_bad_request': 0, 'requests_busy': 0},
                 'last_file': '/data/drv/20261121_.../..._00011.h5',
                 'last_error': '', 'data_rate': 30720.0, 'resumed': ''}
        """
        interval = params["interval"] or self.args.monitor_interval
        self._monitor_stop.clear()
        while True:
            status = self.engine.status()
            session.data = status
            session.degraded = status["summary"] in ("warning", "error")
            self.agent.publish_to_feed(
                STATUS_FEED,
                {
                    "block_name": STATUS_BLOCK,
                    "timestamp": status["timestamp"],
                    "data": feed_fields(status),
                },
            )
            if self._monitor_stop.wait(interval):
                break
        return True, "monitoring stopped"

    def operations(self) -> list[Operation]:
        return [
            task("ping", self.ping, blocking=False),
            # The tasks hand their work to the recorder's workers and answer with a Deferred.
            task("sync", self.sync, blocking=False, min_privs=CONTROL_PRIVS),
            task("start", self.start, blocking=False, min_privs=CONTROL_PRIVS),
            task("stop", self.stop, blocking=False, min_privs=CONTROL_PRIVS),
            # Stopping the monitoring changes what operators see: level 2, as the controls.
            process(
                "monitor",
                self.monitor,
                stopper_for(self._monitor_stop, "stopping"),
                startup=True,
                min_privs=CONTROL_PRIVS,
            ),
        ]

    def begin(self) -> None:
        self.agent.on("join", self.register_direct)
        self.engine.start()

    # ---- life cycle ----------------------------------------------------------------------

    def _stop_workers(self, timeout: float) -> bool:
        """Finish the requests already taken, then stop recording (blocking)."""
        deadline = time.monotonic() + timeout
        self.ntp.stop(drain=False, timeout=0)  # an NTP wait is not worth waiting for
        clean = self.requests.stop(drain=True, timeout=timeout)
        return self.engine.shutdown(max(0.0, deadline - time.monotonic())) and clean

    def shutdown(self) -> defer.Deferred:
        """Before the reactor stops: stop the workers and the engine off the reactor."""
        # the monitor loop first: it reads the schedule, which is closed at the end
        self._monitor_stop.set()
        stopper = runtime.SerialWorker("shutdown", max_queue=1)
        d = stopper.submit(self._stop_workers, 10.0)

        def done(clean: bool) -> None:
            self.report("info", "recorder stopped" + ("" if clean else " (busy after 10 s)"))
            self.schedule.close()
            if self.db is not None:
                self.db.close()

        d.addCallback(done)
        d.addErrback(lambda f: self.report("error", f"shutdown failed: {f.getTraceback()}"))
        d.addBoth(lambda _: stopper.stop(drain=False, timeout=0))
        return d


def feed_fields(status: dict) -> dict:
    """The feed's fields of a status (numbers and strings; counters flattened)."""
    counters = status["counters"]
    return {
        k: counters[k[2:]] if k.startswith("n_") and k[2:] in counters else status[k]
        for k in FEED_FIELDS
    }


def make_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    parser, pgroup = agent_options(parser)
    pgroup.add_argument(
        "--mode",
        choices=sorted(MODE_DEFAULTS),
        default="slow",
        help="Recording mode: 'slow' (about 10 s integrations, one per file) "
        "or 'fast' (about 0.1 s, many per file).",
    )
    pgroup.add_argument(
        "--pipeline-id",
        default=None,
        help="Name of the pipeline in answers, files and monitoring. Default: the instance-id.",
    )
    pgroup.add_argument(
        "--data-dir",
        default="/data/drv",
        help="Folder of the recordings (one sub-folder per recording).",
    )
    add_allowed_root_option(pgroup, "the --data-dir")
    pgroup.add_argument(
        "--integration-time",
        type=finite_arg(float),
        default=None,
        help="Seconds per integration. Default: 10 (slow) or 0.1 (fast).",
    )
    pgroup.add_argument(
        "--integrations-per-file",
        type=finite_arg(int, 1),
        default=None,
        help="Integrations per HDF5 file. Default: 1 (slow) or 100 (fast).",
    )
    pgroup.add_argument(
        "--n-antennas",
        type=finite_arg(int, 2),
        default=8,
        help="Antennas of the simulated correlator (baselines include autos).",
    )
    pgroup.add_argument(
        "--n-channels",
        type=finite_arg(int, 1),
        default=64,
        help="Frequency channels of the simulated correlator.",
    )
    pgroup.add_argument(
        "--db-path",
        default="/data/so/databases/suprsync.db",
        help="SupRsync database where finished files are registered; "
        "'none' to write files without registering them.",
    )
    pgroup.add_argument(
        "--archive-name",
        default=None,
        help="SupRsync archive of the files. Default: drv_slow or drv_fast.",
    )
    pgroup.add_argument(
        "--schedule-db",
        default=None,
        help="SQLite file of the schedule (survives restarts). Default: "
        ".<pipeline-id>.schedule.sqlite in the data directory.",
    )
    pgroup.add_argument(
        "--now-lead",
        type=finite_arg(float),
        default=DEFAULT_NOW_LEAD_S,
        help="Seconds after a request that 'now' means.",
    )
    pgroup.add_argument(
        "--disk-warning",
        type=finite_arg(float),
        default=95.0,
        help="Percent of the data disk used above which the summary is 'warning'.",
    )
    pgroup.add_argument(
        "--disk-error",
        type=finite_arg(float),
        default=99.0,
        help="Percent of the data disk used above which the summary is 'error'.",
    )
    pgroup.add_argument(
        "--monitor-interval",
        type=finite_arg(float),
        default=5.0,
        help="Seconds between monitoring updates (feed and session.data).",
    )
    pgroup.add_argument(
        "--max-queued-files",
        type=finite_arg(int, 1),
        default=64,
        help="Files integrated and waiting for the writer before more are dropped and "
        "counted (n_writer_backlog_full): bounds memory when the data disk is slow.",
    )
    pgroup.add_argument(
        "--max-retry-files",
        type=finite_arg(int, 1),
        default=10_000,
        help="Written files whose registration failed kept for retry; more are left to "
        "the start-up scan (counted in n_retry_list_full).",
    )
    pgroup.add_argument(
        "--allow-set-clock",
        action="store_true",
        help="Let sync(set_clock=True) step the system clock (the OS must "
        "permit it too: CAP_SYS_TIME).",
    )
    return parser


def main(args: list | None = None) -> None:
    run_agent(VisibilityRecorder, make_parser, args)


if __name__ == "__main__":
    main()
