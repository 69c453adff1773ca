"""VisibilityManager: drives every recording pipeline of one mode with one call.

Commands are forwarded concurrently over the agent's own WAMP session (no HTTP, no serial
loop), one call of each recorder's direct procedure per pipeline, and answered with one
aggregated result; the pipelines' monitoring feeds are followed by subscription and
summarised by :mod:`.aggregate`'s rules.
"""

from __future__ import annotations

import argparse
import time

from autobahn.wamp.exception import ApplicationError
from ocs import access, ocs_agent
from twisted.internet import defer, reactor
from twisted.internet.defer import inlineCallbacks

from ... import runtime
from ..shell import AgentShell, Operation, agent_options, process, run_agent, task
from ..visibility_recorder.contract import (
    CONTROL_PRIVS,
    DIRECT_PROCEDURE,
    PASSWORD_KWARG,
    STATUS_BLOCK,
    STATUS_FEED,
)
from ..visibility_recorder.params import Bounded, finite_arg
from ..visibility_recorder.schedule import DEFAULT_NOW_LEAD_S, ScheduleError, request_time
from . import aggregate

SUMMARY_FEED = "visibility_summary"
FEED_FIELDS = ("summary", "info", "op_type", "op_tag", "n_pipelines", "n_stale")


def _pipeline_list(values) -> list[str]:
    out: list[str] = []
    for value in values or []:
        out += [v for v in str(value).replace(",", " ").split() if v and v not in out]
    return out


class VisibilityManager(AgentShell):
    """The manager of the visibility recording pipelines of one mode."""

    agent_class = "VisibilityManager"

    def __init__(self, agent: ocs_agent.OCSAgent, args: argparse.Namespace) -> None:
        super().__init__(agent, args)
        self.root = args.address_root
        self.mode = args.mode
        self.configured = _pipeline_list(args.pipelines)
        self.timeout = args.timeout
        #: pipeline id -> latest monitoring points, with ``received`` (unix time)
        self.reports: dict[str, dict] = {}
        self._report_limited = runtime.RateLimit(self.report)
        #: refusals of monitoring input, by reason (see the docs page)
        self.counters = {"unreadable_status": 0, "unknown_pipeline": 0}
        self._recorder_password = read_password(args)
        self._passwords: dict[str, str] = {}
        self._last: dict | None = None
        self.started = time.time()
        self._monitor_on = False
        self._monitor_wake: defer.Deferred | None = None
        self._monitor_call = None
        agent.register_feed(
            SUMMARY_FEED, record=True, agg_params={"frame_length": 60}, buffer_time=0
        )
        agent.subscribe_on_start(
            self._on_status, f"{self.root}..feeds.{STATUS_FEED}", options={"match": "wildcard"}
        )

    # ---- who the pipelines are -----------------------------------------------------------

    def pipelines(self) -> list[str]:
        """The configured pipelines, or every recorder of this mode seen on the hub."""
        if self.configured:
            return list(self.configured)
        return sorted(pid for pid, r in self.reports.items() if r.get("mode") == self.mode)

    def _password(self, pid: str) -> str:
        if self._recorder_password is not None:
            return self._recorder_password
        if pid not in self._passwords:
            try:  # the OCS password file (OCS_PASSWORDS_FILE or ~/.ocs-passwords.yaml)
                pw = access.client_get_password(CONTROL_PRIVS, "VisibilityRecorder", pid)
            except (OSError, TypeError, ValueError):
                pw = ""
            self._passwords[pid] = pw or ""
        return self._passwords[pid]

    # ---- monitoring input (reactor) ------------------------------------------------------

    def _on_status(self, data, *args, **kwargs) -> None:
        try:
            fields, pid = aggregate.read_status(data, self.root, STATUS_BLOCK)
        except ValueError as e:
            self.counters["unreadable_status"] += 1
            self._report_limited(
                "unreadable_status",
                "warn",
                f"unreadable status message ignored: {e} "
                f"[unreadable_status: {self.counters['unreadable_status']}]",
            )
            return
        if fields.get("mode") != self.mode and pid not in self.configured:
            return
        if pid not in self.reports and len(self.reports) >= self.args.max_pipelines:
            # bounded memory whatever publishes on the hub
            self.counters["unknown_pipeline"] += 1
            self._report_limited(
                "unknown_pipeline",
                "warn",
                f"status of {pid!r} ignored: {len(self.reports)} pipelines known already "
                f"(--max-pipelines) [unknown_pipeline: {self.counters['unknown_pipeline']}]",
            )
            return
        before = self.reports.get(pid, {}).get("summary")
        fields["received"] = time.time()
        self.reports[pid] = fields
        if before != fields.get("summary"):
            self._wake_monitor()  # report a change at once, not at the next interval

    # ---- fan-out -------------------------------------------------------------------------

    def _call_pipeline(self, pid: str, op_name: str, params: dict) -> defer.Deferred:
        # One WAMP call per pipeline: the recorder's direct procedure runs the task's checks
        # (credential level, parameters) and work and answers at once, where the task would
        # take a start and a wait and an OCS session.
        pw = self._password(pid)
        kw = {PASSWORD_KWARG: pw} if pw else {}
        d = self.agent.call(f"{self.root}.{pid}.{DIRECT_PROCEDURE}", op_name, params, **kw)
        d.addCallback(aggregate.classify_direct)
        return d

    def _one(self, pid: str, op_name: str, params: dict) -> defer.Deferred:
        d = self._call_pipeline(pid, op_name, params)
        d.addTimeout(self.timeout, reactor)

        def failed(failure):
            err = failure.value
            if isinstance(err, ApplicationError):
                return aggregate.classify_exception(
                    err.error, err.error_message() or "", self.timeout
                )
            return aggregate.classify_exception(type(err).__name__, str(err), self.timeout)

        d.addErrback(failed)
        return d

    @inlineCallbacks
    def _fan_out(self, session, op_name: str, params: dict):
        pipelines = self.pipelines()
        t0 = time.perf_counter()
        if self.args.serial:
            values = []
            for pid in pipelines:
                values.append((yield self._one(pid, op_name, params)))
        else:
            values = yield defer.gatherResults(
                [self._one(pid, op_name, params) for pid in pipelines]
            )
        results = dict(zip(pipelines, values, strict=False))
        session.data = results
        ok, message = aggregate.overall(op_name, results)
        self.log.info(
            "{op} to {n} pipelines in {ms:.1f} ms: {text}",
            op=op_name,
            n=len(pipelines),
            ms=(time.perf_counter() - t0) * 1e3,
            text=message,
        )
        return ok, message

    def _forward_time(self, params: dict, which: str):
        """Resolve the time once (``"now"`` included), so every pipeline gets one instant."""
        rt = request_time(params, which, time.time(), self.args.now_lead)
        return {f"{which}_mjd": rt.mjd, f"{which}_mpm": rt.mpm}

    # ---- tasks ---------------------------------------------------------------------------

    def ping(self, session, params=None):
        """ping()

        **Task** - Ping every pipeline.

        Notes:
            Fails, naming them, unless every pipeline answered::

                >>> response.session['data']
                {'drvs-1': {'status': 'success', 'response': 'pong'},
                 'drvs-2': {'status': 'success', 'response': 'pong'},
                 'drvs-3': {'status': 'timeout',
                            'response': 'no answer within 5 s'}}
        """
        return self._fan_out(session, "ping", {})

    @ocs_agent.param("timeout", default=2.0, type=float, cast=Bounded(0, 30))
    @ocs_agent.param("set_clock", default=False, type=bool)
    @ocs_agent.param("port", default=123, type=int, check=lambda p: p is not True and 0 < p < 65536)
    @ocs_agent.param("server", type=str)
    def sync(self, session, params):
        """sync(server, port=123, set_clock=False, timeout=2.0)

        **Task** - Have every pipeline query the NTP server and report its offset (and
        set its clock, where asked, allowed and permitted). Needs credential level 2.

        Notes:
            ::

                >>> response.session['data']
                {'drvs-1': {'status': 'success',
                            'response': {'synced': True, 'offset_s': 0.0004, ...}}, ...}
        """
        return self._fan_out(session, "sync", dict(params))

    @ocs_agent.param("mpm", default=None)
    @ocs_agent.param("mjd", default=None)
    @ocs_agent.param("start_mpm", default=None)
    @ocs_agent.param("start_mjd", default=None)
    def start(self, session, params):
        """start(start_mjd=None, start_mpm=None)

        **Task** - Schedule a recording on every pipeline from the given time on. Needs
        credential level 2.

        Parameters:
            start_mjd (int or str): integer MJD, or ``"now"``: resolved once by the manager
                (now plus ``--now-lead``), so every pipeline starts at the same instant.
                ``mjd`` is accepted too.
            start_mpm (int): milliseconds past midnight. ``mpm`` is accepted too.

        Notes:
            ``response`` is each pipeline's recording directory, or its error::

                >>> response.session['data']
                {'drvs-1': {'status': 'success',
                            'response': '/data/drv/20261121_101515_slow_drvs-1'},
                 'drvs-2': {'status': 'error', 'response': 'Operation overlaps with a '
                            'previously scheduled operation: ...'}}
        """
        try:
            forward = self._forward_time(params, "start")
        except ScheduleError as e:
            return False, str(e)
        return self._fan_out(session, "start", forward)

    @ocs_agent.param("mpm", default=None)
    @ocs_agent.param("mjd", default=None)
    @ocs_agent.param("stop_mpm", default=None)
    @ocs_agent.param("stop_mjd", default=None)
    def stop(self, session, params):
        """stop(stop_mjd=None, stop_mpm=None)

        **Task** - End, on every pipeline, the recording active at the given time, at that
        time. Needs credential level 2.

        Parameters:
            stop_mjd (int or str): integer MJD or ``"now"`` (resolved once by the manager).
                ``mjd`` is accepted too.
            stop_mpm (int): milliseconds past midnight. ``mpm`` is accepted too.

        Notes:
            ::

                >>> response.session['data']
                {'drvs-1': {'status': 'success',
                            'response': '/data/drv/20261121_101515_slow_drvs-1'}, ...}
        """
        try:
            forward = self._forward_time(params, "stop")
        except ScheduleError as e:
            return False, str(e)
        return self._fan_out(session, "stop", forward)

    # ---- monitoring ----------------------------------------------------------------------

    def _wake_monitor(self) -> None:
        if self._monitor_call is not None and self._monitor_call.active():
            self._monitor_call.cancel()
        d, self._monitor_wake = self._monitor_wake, None
        if d is not None and not d.called:
            d.callback(None)

    def _sleep(self, seconds: float) -> defer.Deferred:
        d = self._monitor_wake = defer.Deferred()
        self._monitor_call = reactor.callLater(seconds, self._wake_monitor)
        return d

    def evaluate(self) -> dict:
        result = aggregate.aggregate_monitoring(
            self.pipelines(),
            self.reports,
            time.time(),
            self.args.stale_after,
            self._last,
            self.args.cleared_note_hold,
            self.started,
        )
        result["mode"] = self.mode
        result["counters"] = dict(self.counters)
        self._last = result
        return result

    @ocs_agent.param("interval", default=None, type=float, cast=Bounded(0, 3600))
    @inlineCallbacks
    def monitor(self, session, params):
        """monitor(interval=None)

        **Process** - Summarise the pipelines' monitoring points (received from their
        ``visibility_status`` feeds) every ``--monitor-interval`` seconds and whenever a
        pipeline's summary changes; publish to the ``visibility_summary`` feed and
        ``session.data``.

        Notes:
            ``summary`` is ``error`` when a pipeline has not updated for
            ``--stale-after`` seconds, else ``error`` when any is booting, shutdown or
            error, else ``warning`` when any warns, else ``normal`` (with a note naming a
            condition that just cleared)::

                >>> response.session['data']
                {'timestamp': 1700000000.0, 'mode': 'slow', 'summary': 'error',
                 'info': '1 pipeline has not updated in 120 s: drvs-3',
                 'op_type': '2 recording; 0 idle; 1 timed out',
                 'op_tag': '20261121_101515_slow_drvs-1; 20261121_101515_slow_drvs-2',
                 'n_pipelines': 3, 'n_stale': 1,
                 'cleared': '', 'cleared_at': None,
                 'counters': {'unreadable_status': 0, 'unknown_pipeline': 0},
                 'pipelines': {'drvs-1': {'summary': 'normal', 'info': 'recording ...',
                                          'op_type': 'recording', 'op_tag': '...',
                                          'age_s': 1.2, 'stale': False}, ...}}

            ``counters`` (the feed's ``n_<reason>``) count status messages ignored:
            ``unreadable_status`` (not the feed's shape), ``unknown_pipeline`` (more
            pipelines than ``--max-pipelines`` publish).
        """
        interval = params["interval"] or self.args.monitor_interval
        self._monitor_on = True
        while self._monitor_on:
            result = self.evaluate()
            session.data = result
            session.degraded = result["summary"] != "normal"
            self.agent.publish_to_feed(
                SUMMARY_FEED,
                {
                    "block_name": "summary",
                    "timestamp": result["timestamp"],
                    "data": {
                        **{k: result[k] for k in FEED_FIELDS},
                        **{f"n_{k}": n for k, n in self.counters.items()},
                    },
                },
            )
            yield self._sleep(interval)
        return True, "monitoring stopped"

    def _stop_monitor(self, session, params=None):
        session.set_status("stopping")
        self._monitor_on = False
        self._wake_monitor()
        return defer.succeed((True, "stopping"))

    def operations(self) -> list[Operation]:
        return [
            task("ping", self.ping, blocking=False),
            task("sync", self.sync, blocking=False, min_privs=CONTROL_PRIVS),
            task("start", self.start, blocking=False, min_privs=CONTROL_PRIVS),
            task("stop", self.stop, blocking=False, min_privs=CONTROL_PRIVS),
            # Stopping the monitoring changes what operators see: level 2, as the controls.
            process(
                "monitor",
                self.monitor,
                self._stop_monitor,
                blocking=False,
                startup=True,
                min_privs=CONTROL_PRIVS,
            ),
        ]


def make_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    parser, pgroup = agent_options(parser)
    pgroup.add_argument(
        "--mode",
        choices=["fast", "slow"],
        default="slow",
        help="The mode of the pipelines this manager drives.",
    )
    pgroup.add_argument(
        "--pipelines",
        nargs="*",
        default=[],
        help="Instance-ids of the pipelines (VisibilityRecorder agents), "
        "space- or comma-separated. Default: every VisibilityRecorder of "
        "this mode that publishes its status on the hub.",
    )
    pgroup.add_argument(
        "--timeout",
        type=finite_arg(float, 0.001),
        default=5.0,
        help="Seconds to wait for each pipeline's answer.",
    )
    pgroup.add_argument(
        "--monitor-interval",
        type=finite_arg(float, 0.01),
        default=15.0,
        help="Seconds between monitoring summaries.",
    )
    pgroup.add_argument(
        "--stale-after",
        type=finite_arg(float),
        default=120.0,
        help="Seconds without an update after which a pipeline counts as "
        "timed out (summary 'error').",
    )
    pgroup.add_argument(
        "--cleared-note-hold",
        type=finite_arg(float),
        default=60.0,
        help="Seconds the 'normal' info keeps naming the condition that cleared.",
    )
    pgroup.add_argument(
        "--now-lead",
        type=finite_arg(float),
        default=DEFAULT_NOW_LEAD_S,
        help="Seconds after a request that 'now' means.",
    )
    pgroup.add_argument(
        "--recorder-password",
        default=None,
        help="Password giving credential level 2 on the pipelines (needed "
        "for start, stop and sync when the site has an access policy). Visible to "
        "every user of the host in the process list: prefer --recorder-password-file "
        "or the OCS password file. Default: the level-2 password of the OCS password "
        "file (OCS_PASSWORDS_FILE or ~/.ocs-passwords.yaml) for each pipeline, if any.",
    )
    pgroup.add_argument(
        "--recorder-password-file",
        default=None,
        help="File whose content (surrounding white space stripped) is the password "
        "of --recorder-password, kept out of the process list (e.g. a Docker secret).",
    )
    pgroup.add_argument(
        "--max-pipelines",
        type=finite_arg(int, 1),
        default=1000,
        help="Most pipelines the manager keeps reports of when it discovers them "
        "(no --pipelines); status from more is ignored and counted.",
    )
    pgroup.add_argument(
        "--serial",
        action="store_true",
        help="Call the pipelines one after the other instead of all at once (for comparison only).",
    )
    return parser


def read_password(args: argparse.Namespace) -> str | None:
    """The recorders' password from ``--recorder-password-file`` or
    ``--recorder-password`` (None: look it up in the OCS password file per pipeline).

    Raises:
        SystemExit: both given, or the file cannot be read (a message names it).
    """
    if args.recorder_password_file is None:
        return args.recorder_password
    if args.recorder_password is not None:
        raise SystemExit("give --recorder-password or --recorder-password-file, not both")
    try:
        with open(args.recorder_password_file, encoding="utf-8") as f:
            return f.read(4096).strip()
    except (OSError, UnicodeDecodeError) as e:
        raise SystemExit(f"--recorder-password-file {args.recorder_password_file}: {e}") from e


def main(args: list | None = None) -> None:
    run_agent(VisibilityManager, make_parser, args)


if __name__ == "__main__":
    main()
