"""VisibilityRecorder: one visibility recording pipeline (``fast`` or ``slow`` mode).

A thin OCS shell over :mod:`.schedule` (requests, validation, SQLite schedule), :mod:`.engine`
(the recording and writer threads), :mod:`.writer` (HDF5 files, SupRsync registration) and
:mod:`.sntp` (clock check).
"""

from __future__ import annotations

import argparse
import os
import threading
import time
import zlib
from collections.abc import Callable
from typing import Any

from ocs import access, ocs_agent, site_config
from twisted.internet import defer, reactor, threads

from ...db import SupRsyncDB
from .correlator import SimulatedCorrelator
from .engine import EngineConfig, RecordingEngine
from .request_thread import RequestThread
from .schedule import DEFAULT_NOW_LEAD_S, Schedule, ScheduleError
from .sntp import SNTPError, query, set_clock
from .writer import VisibilityWriter

STATUS_FEED = "visibility_status"
#: Credential level needed by the operations that change state (start, stop, sync).
CONTROL_PRIVS = 2
#: The direct procedure, registered at ``<agent address>.<DIRECT_PROCEDURE>``: one WAMP call
#: runs an operation's work and returns its answer, without an OCS session (see
#: :meth:`VisibilityRecorder.direct`).
DIRECT_PROCEDURE = "direct"

#: An operation's outcome: (ok, message, session data).
Outcome = tuple[bool, str, dict]

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
    "last_file",
    "last_error",
    "data_rate",
)


def _time_params(func):
    """The four time arguments of start/stop, in both spellings."""
    for name in ("mpm", "mjd"):
        func = ocs_agent.param(name, default=None)(func)
    return func


class VisibilityRecorder:
    """A visibility recording pipeline.

    Args:
        agent (ocs.ocs_agent.OCSAgent): the OCS agent.
        args (argparse.Namespace): parsed arguments (see :func:`make_parser`).
    """

    def __init__(self, agent: ocs_agent.OCSAgent, args: argparse.Namespace) -> None:
        self.agent = agent
        self.log = agent.log
        self.args = args
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
            args.data_dir, args.mode, self.pipeline_id, self.integration_time, self.db, self.archive
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
        )
        self.engine = RecordingEngine(self.schedule, writer, correlator, config, log=self._log)
        self._monitor_stop = threading.Event()
        self.requests = RequestThread()
        # ocs's access checks take an ActionContext; one per operation is enough.
        self._contexts = {
            op: access.ActionContext(op_name=op, action="start") for op in self._direct_work()
        }
        self.agent.register_feed(
            STATUS_FEED, record=True, agg_params={"frame_length": 60}, buffer_time=0
        )

    def _log(self, level: str, text: str) -> None:
        getattr(self.log, level)("{text}", text=text)

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
        ok, message, session.data = self._ping({})
        return ok, message

    def _ping(self, params: dict) -> Outcome:
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

    @ocs_agent.param("timeout", default=2.0, type=float, check=lambda x: 0 < x <= 30)
    @ocs_agent.param("set_clock", default=False, type=bool)
    @ocs_agent.param("port", default=123, type=int, check=lambda p: 0 < p < 65536)
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
        ok, message, session.data = self._sync(params)
        return ok, message

    def _sync(self, params: dict) -> Outcome:
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
        ok, message, session.data = self._start(params)
        return ok, message

    def _start(self, params: dict) -> Outcome:
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
        ok, message, session.data = self._stop(params)
        return ok, message

    def _stop(self, params: dict) -> Outcome:
        """Blocking: writes the schedule (SQLite)."""
        try:
            data = self.engine.request_stop(params)
        except ScheduleError as e:
            return False, str(e), {}
        return True, f"recording {data['tag']} will stop", data

    # ---- the direct procedure ------------------------------------------------------------

    def _direct_work(self) -> dict[str, tuple[Callable[[dict], Outcome], str]]:
        """Operation name -> (its work, where it runs: the reactor, the request thread
        (schedule writes, short) or the thread pool (waits on the network))."""
        return {
            "ping": (self._ping, "reactor"),
            "sync": (self._sync, "pool"),
            "start": (self._start, "requests"),
            "stop": (self._stop, "requests"),
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

        def answer(outcome: Outcome) -> dict:
            ok, message, data = outcome
            return {"success": bool(ok), "message": message, "data": data}

        work = self._direct_work().get(op_name)
        op = self.agent.tasks.get(op_name)
        if work is None or op is None:
            return defer.succeed(answer((False, f'No operation called "{op_name}"', {})))
        level, detail = access.agent_get_creds(
            password,
            self.agent.access_config,
            self.agent.access_config.agent,
            self._contexts[op_name],
        )
        if level < op.min_privs:
            self.log.info("rejected underprivileged direct {op} request", op=op_name)
            return defer.succeed(
                answer((False, access.agent_rejection_message(level, op.min_privs, detail), {}))
            )
        prescreen = getattr(op.launcher, "_ocs_prescreen", None)
        if prescreen is not None:
            try:
                params = ocs_agent.ParamHandler(params or {}).batch(prescreen)
            except ocs_agent.ParamError as e:
                return defer.succeed(answer((False, e.msg, {})))
        func, where = work
        # Blocking work (SQLite, the network) leaves the reactor; ping stays on it, like
        # the task registered with blocking=False.
        if where == "requests":
            if self.requests.closed:
                return defer.succeed(answer((False, "the recorder is shutting down", {})))
            d = self.requests.submit(func, params or {})
        elif where == "pool":
            d = threads.deferToThread(func, params or {})
        else:
            d = defer.maybeDeferred(func, params or {})
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

    @ocs_agent.param("interval", default=None, type=float)
    def monitor(self, session, params):
        """monitor(interval=None)

        **Process** - Publish the pipeline's monitoring points to the ``visibility_status``
        feed and ``session.data`` (every ``--monitor-interval`` seconds by default).

        Notes:
            ``summary`` is ``booting``, ``normal``, ``warning`` (disk above
            ``--disk-warning`` %), ``error`` (disk above ``--disk-error`` %, a failed file
            write, move or registration, a dead thread) or ``shutdown``::

                >>> response.session['data']
                {'timestamp': 1700000000.0, 'mode': 'slow', 'pipeline_id': 'drvs-1',
                 'summary': 'normal', 'info': 'recording 20261121_101515_slow_drvs-1',
                 'op_type': 'recording', 'op_tag': '20261121_101515_slow_drvs-1',
                 'disk_size': 1000000000000, 'disk_free': 400000000000,
                 'disk_used_pct': 60.0, 'files_written': 12, 'bytes_written': 1843200,
                 'write_errors': 0, 'last_file': '/data/drv/20261121_.../..._00011.h5',
                 'last_error': '', 'data_rate': 30720.0, 'resumed': ''}
        """
        interval = params["interval"] or self.args.monitor_interval
        self._monitor_stop.clear()
        session.set_status("running")
        while True:
            status = self.engine.status()
            session.data = status
            session.degraded = status["summary"] in ("warning", "error")
            self.agent.publish_to_feed(
                STATUS_FEED,
                {
                    "block_name": "status",
                    "timestamp": status["timestamp"],
                    "data": {k: status[k] for k in FEED_FIELDS},
                },
            )
            if self._monitor_stop.wait(interval):
                break
        return True, "monitoring stopped"

    def _stop_monitor(self, session, params=None):
        self._monitor_stop.set()
        return True, "stopping"

    # ---- life cycle ----------------------------------------------------------------------

    def _shutdown_threads(self, timeout: float) -> bool:
        self.requests.stop(timeout)
        return self.engine.shutdown(timeout)

    def shutdown(self):
        d = threads.deferToThread(self._shutdown_threads, 10.0)

        def done(clean):
            self.log.info(
                "recorder stopped{how}", how="" if clean else " (threads still busy after 10 s)"
            )
            self.schedule.close()
            if self.db is not None:
                self.db.close()

        d.addCallback(done)
        d.addErrback(lambda f: self.log.error("shutdown failed: {f}", f=f))
        return d


def make_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    if parser is None:
        parser = argparse.ArgumentParser()
    pgroup = parser.add_argument_group("Agent Options")
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
    pgroup.add_argument(
        "--integration-time",
        type=float,
        default=None,
        help="Seconds per integration. Default: 10 (slow) or 0.1 (fast).",
    )
    pgroup.add_argument(
        "--integrations-per-file",
        type=int,
        default=None,
        help="Integrations per HDF5 file. Default: 1 (slow) or 100 (fast).",
    )
    pgroup.add_argument(
        "--n-antennas",
        type=int,
        default=8,
        help="Antennas of the simulated correlator (baselines include autos).",
    )
    pgroup.add_argument(
        "--n-channels", type=int, default=64, help="Frequency channels of the simulated correlator."
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
        type=float,
        default=DEFAULT_NOW_LEAD_S,
        help="Seconds after a request that 'now' means.",
    )
    pgroup.add_argument(
        "--disk-warning",
        type=float,
        default=95.0,
        help="Percent of the data disk used above which the summary is 'warning'.",
    )
    pgroup.add_argument(
        "--disk-error",
        type=float,
        default=99.0,
        help="Percent of the data disk used above which the summary is 'error'.",
    )
    pgroup.add_argument(
        "--monitor-interval",
        type=float,
        default=5.0,
        help="Seconds between monitoring updates (feed and session.data).",
    )
    pgroup.add_argument(
        "--allow-set-clock",
        action="store_true",
        help="Let sync(set_clock=True) step the system clock (the OS must "
        "permit it too: CAP_SYS_TIME).",
    )
    return parser


def main(args: list | None = None) -> None:
    parser = make_parser()
    args = site_config.parse_args(agent_class="VisibilityRecorder", parser=parser, args=args)
    agent, runner = ocs_agent.init_site_agent(args)
    recorder = VisibilityRecorder(agent, args)
    agent.register_task("ping", recorder.ping, blocking=False)
    agent.register_task("sync", recorder.sync, min_privs=CONTROL_PRIVS)
    agent.register_task("start", recorder.start, min_privs=CONTROL_PRIVS)
    agent.register_task("stop", recorder.stop, min_privs=CONTROL_PRIVS)
    agent.register_process("monitor", recorder.monitor, recorder._stop_monitor, startup=True)
    agent.on("join", recorder.register_direct)
    recorder.engine.start()
    reactor.addSystemEventTrigger("before", "shutdown", recorder.shutdown)
    runner.run(agent, auto_reconnect=True)


if __name__ == "__main__":
    main()
