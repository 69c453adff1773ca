"""PysmurfMonitor: a drop-in for socs's agent of the same name.

Listens on UDP for the pysmurf publisher and the smurf-streamer, registers every announced
file in the SupRsync database (within milliseconds, batched, idempotent, journaled), forwards
session data to ``pysmurf_session_data`` and streamer metadata to ``<stream_id>_meta``.
"""

from __future__ import annotations

import argparse
import socket
import threading
import time
from collections import Counter

from ocs import ocs_agent, ocs_feed
from twisted.internet import reactor, udp
from twisted.internet.protocol import DatagramProtocol
from twisted.internet.task import LoopingCall

from ...argtypes import str2bool
from ...db.entries import AllowedRoots, add_allowed_root_option
from ...db.suprsync import SupRsyncDB
from ...runtime import RateLimit, run_blocking
from ..shell import AgentShell, Operation, agent_options, process, run_agent, stopper_for
from .journal import Journal, default_journal_dir
from .messages import (
    REJECT_REASONS,
    FileAnnouncement,
    Ignored,
    MetadataMessage,
    Rejected,
    SessionMessage,
    parse_datagram,
)
from .registrar import Registrar, RegistrarConfig
from .rules import DEFAULT_RULES, parse_archive_rule

SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)
STATS_FEED = "monitor_stats"
#: After reading what the socket holds, the reactor rests this long before reading again,
#: and ``BUSY_REST_SECONDS`` after a read of ``BUSY_DATAGRAMS`` or more: under load, every
#: wake-up then reads more datagrams, and costs less per datagram.
REST_SECONDS = 0.001
BUSY_REST_SECONDS = 0.004
BUSY_DATAGRAMS = 8
#: Where the pysmurf publisher and the smurf-streamer write (socs's convention); nothing
#: else of the host may become a SupRsync row.
DEFAULT_ALLOWED_ROOTS = ("/data/smurf_data", "/data/so/timestreams")
#: Bounds of what a metadata datagram can make the agent keep.
MAX_METADATA_PATH = 255
MAX_FIELDS_PER_STREAM = 1000


def kernel_udp_rcvbuf_errors() -> int | None:
    """System-wide UDP datagrams the kernel dropped for full receive buffers."""
    try:
        with open("/proc/net/snmp") as f:
            rows = [line.split() for line in f if line.startswith("Udp:")]
        return int(rows[1][rows[0].index("RcvbufErrors")])
    except (OSError, ValueError, IndexError):
        return None


class RestingUDPPort(udp.Port):
    """A UDP port that reads every datagram the socket holds, tells the protocol
    (``datagramsRead``, which returns how many datagrams that was), then rests ``rest``
    seconds before it reads again, or ``busy_rest`` seconds after ``busy`` datagrams or more.

    A lone datagram is read the moment it arrives; under load the reactor wakes once per
    rest instead of once per datagram, and the kernel's receive buffer holds what arrives
    meanwhile. At 10,000 datagrams a second this halves the CPU the reactor spends.
    """

    def __init__(
        self,
        port: int,
        proto: DatagramProtocol,
        interface: str = "",
        maxPacketSize: int = 65536,
        reactor=None,
        rest: float = 0.001,
        busy_rest: float | None = None,
        busy: int = BUSY_DATAGRAMS,
    ) -> None:
        super().__init__(port, proto, interface, maxPacketSize, reactor)
        self.rest = rest
        self.busy_rest = rest if busy_rest is None else busy_rest
        self.busy = busy
        self._resume = None

    def doRead(self) -> None:
        try:
            super().doRead()
        finally:
            count = self.protocol.datagramsRead() or 0
            rest = self.busy_rest if count >= self.busy else self.rest
            if rest > 0 and self._resume is None and self.connected:
                self.stopReading()
                self._resume = self.reactor.callLater(rest, self._resume_reading)

    def _resume_reading(self) -> None:
        self._resume = None
        if self.connected:
            self.startReading()

    def connectionLost(self, reason=None) -> None:
        if self._resume is not None and self._resume.active():
            self._resume.cancel()
        self._resume = None
        super().connectionLost(reason)


class PysmurfMonitor(AgentShell, DatagramProtocol):
    """Monitor for the pysmurf UDP publisher and the smurf-streamer."""

    agent_class = "PysmurfMonitor"

    def __init__(self, agent: ocs_agent.OCSAgent, args: argparse.Namespace) -> None:
        super().__init__(agent, args)
        roots = AllowedRoots(args.allowed_root or DEFAULT_ALLOWED_ROOTS)
        self.db = SupRsyncDB(
            args.db_path, create_all=args.create_table, echo=args.echo_sql, allowed_roots=roots
        )
        rules = dict(DEFAULT_RULES)
        rules.update(parse_archive_rule(spec) for spec in args.archive or [])
        journal = None
        if args.journal_dir != "none":
            journal = Journal(
                args.journal_dir
                or default_journal_dir(args.db_path, getattr(args, "instance_id", None))
            )
        config = RegistrarConfig(
            big_workers=args.big_file_threads,
            missing_file_timeout=args.missing_file_timeout,
            max_pending=args.max_pending,
        )
        self.registrar = Registrar(
            self.db, journal, rules, config, report=self.report, allowed_roots=roots
        )
        self.log.info("files are registered only under {roots}", roots=", ".join(roots.configured))
        # <stream_id>_meta feed name -> the fields published on it (bounded: --max-streams)
        self._stream_feeds: dict[str, set[str]] = {}
        self._journal_retry = LoopingCall(self.registrar.retry_journal)
        self.counters: Counter = Counter()
        self.rejected: Counter = Counter()
        # One line per reason per second at most: a flood must not flood the log too.
        self._log_limited = RateLimit(self.report, interval=1.0)
        self.udp: dict = {}
        # File announcements of one read of the socket: journaled and queued together.
        self._announced: list[FileAnnouncement] = []
        self._datagrams_in_read = 0
        self.port = None
        self._run_stop = threading.Event()
        self._shut_down = False

        self.agent.register_feed("pysmurf_session_data")
        self.agent.register_feed(
            STATS_FEED, record=True, agg_params={"frame_length": 60}, buffer_time=1
        )

    # ---- UDP (reactor thread) ------------------------------------------------------------

    def listen(self, port: int, host: str = "", rcvbuf: int = 64 << 20) -> None:
        # Twisted reads 8,192 bytes per datagram by default; the publisher sends up to 64,000.
        self.port = RestingUDPPort(
            port,
            self,
            host,
            maxPacketSize=65536,
            reactor=reactor,
            rest=REST_SECONDS,
            busy_rest=BUSY_REST_SECONDS,
        )
        self.port.startListening()
        sock = self.port.socket
        how = "SO_RCVBUFFORCE"
        try:
            sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, rcvbuf)
        except OSError:
            how = "SO_RCVBUF (raise net.core.rmem_max for more)"
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        granted = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
        self.udp = {
            "host": host or "0.0.0.0",
            "port": self.port.getHost().port,
            "rcvbuf_requested": rcvbuf,
            "rcvbuf_granted": granted,
            "rcvbuf_via": how,
        }
        self.log.info(
            "listening on UDP {host}:{port}; receive buffer {granted} bytes granted "
            "({requested} requested, via {how})",
            host=self.udp["host"],
            port=self.udp["port"],
            granted=granted,
            requested=rcvbuf,
            how=how,
        )

    def startProtocol(self) -> None:
        self.registrar.start()
        # Journals what a failed journal write left in memory, once the disk allows it.
        self._journal_retry.start(1.0, now=False).addErrback(
            lambda f: self.log.error("journal retry stopped: {f}", f=f)
        )

    def datagramReceived(self, data: bytes, addr: tuple) -> None:
        """Called by the reactor for every datagram: classify, then hand on (never blocks,
        never raises)."""
        self._datagrams_in_read += 1
        parsed = parse_datagram(data)
        if type(parsed) is FileAnnouncement:
            self._announced.append(parsed)
            return
        try:
            if isinstance(parsed, SessionMessage):
                self.agent.publish_to_feed("pysmurf_session_data", parsed.data, from_reactor=True)
                self.counters["session_messages"] += 1
            elif isinstance(parsed, MetadataMessage):
                self._publish_metadata(parsed, addr)
            elif isinstance(parsed, Ignored):
                self.counters["ignored"] += 1
            else:
                self._reject(parsed, addr)
        except Exception as e:  # e.g. a session message the feed cannot carry
            self._reject(Rejected("internal_error", f"{type(e).__name__}: {e}"[:200]), addr)

    def datagramsRead(self) -> int:
        """Called by the port once it has read what the socket held: journal and queue the
        files of all those datagrams together (one write, one hand-over). Returns how many
        datagrams that read brought."""
        count, self._datagrams_in_read = self._datagrams_in_read, 0
        self.counters["received"] += count
        if self._announced:
            announced, self._announced = self._announced, []
            try:
                self.registrar.submit_many(announced)
            except Exception as e:  # never out of here: the port would close for good
                self.rejected["internal_error"] += len(announced)
                self._log_limited("submit", "error", f"hand-over failed: {e!r}")
        return count

    def read_pending(self, limit: int = 1_000_000) -> int:
        """Read every datagram the socket holds now, without waiting for the port's rest,
        and hand the files over (reactor thread). Returns how many datagrams were read."""
        if self.port is None or getattr(self.port, "socket", None) is None:
            return 0
        sock, read = self.port.socket, 0
        try:
            while read < limit:
                data, addr = sock.recvfrom(65536)
                self.datagramReceived(data, addr)
                read += 1
        except OSError:  # BlockingIOError: nothing more to read
            pass
        self.datagramsRead()
        return read

    def _publish_metadata(self, msg: MetadataMessage, addr: tuple) -> None:
        if len(msg.path) > MAX_METADATA_PATH or len(msg.stream_id) > MAX_METADATA_PATH:
            self._reject(Rejected("wrong_type", "metadata path or stream id too long"), addr)
            return
        field = ocs_feed.Feed.enforce_field_name_rules(msg.path)
        feed_name = ocs_feed.Feed.enforce_field_name_rules(f"{msg.stream_id}_meta")
        fields = self._stream_feeds.get(feed_name)
        if fields is None:
            if len(self._stream_feeds) >= self.args.max_streams:
                self._reject(
                    Rejected(
                        "over_max_streams",
                        f"stream {msg.stream_id[:80]!r}: already {len(self._stream_feeds)} "
                        f"streams (--max-streams)",
                    ),
                    addr,
                )
                return
            fields = self._stream_feeds[feed_name] = set()
        if field not in fields and len(fields) >= MAX_FIELDS_PER_STREAM:
            self._reject(
                Rejected(
                    "over_max_streams",
                    f"stream {msg.stream_id[:80]!r}: already {len(fields)} metadata fields",
                ),
                addr,
            )
            return
        try:
            if feed_name not in self.agent.feeds:
                self.agent.register_feed(feed_name, record=True, buffer_time=1)
            fields.add(field)
            self.agent.publish_to_feed(
                feed_name,
                {"block_name": field, "timestamp": msg.timestamp, "data": {field: msg.value}},
                from_reactor=True,
            )
            self.counters["metadata"] += 1
        except Exception as e:  # e.g. a value ocs cannot record (list, dict)
            self._reject(Rejected("wrong_type", f"metadata {msg.path[:80]}: {e}"), addr)

    def _reject(self, rejected: Rejected, addr: tuple) -> None:
        reason = rejected.reason
        self.rejected[reason] += 1
        self._log_limited(
            reason,
            "warn",
            f"datagram from {addr[0]}:{addr[1]} rejected ({reason}): {rejected.detail}",
        )

    # ---- figures -------------------------------------------------------------------------

    def snapshot(self) -> dict:
        reg = self.registrar
        rejected = {r: 0 for r in REJECT_REASONS}
        rejected.update(self.rejected)
        for reason, n in list(reg.rejected.items()):
            rejected[reason] = rejected.get(reason, 0) + n
        counters = {
            "received": self.counters["received"],
            "files_announced": reg.counters["announced"],
            "registered": reg.counters["registered"],
            "duplicates": reg.counters["duplicates"],
            "timecode_dirs_created": reg.counters["timecode_dirs_created"],
            "replayed_from_journal": reg.counters["replayed"],
            "session_messages": self.counters["session_messages"],
            "metadata": self.counters["metadata"],
            "ignored": self.counters["ignored"],
            "db_errors": reg.counters["db_errors"],
            "journal_errors": reg.counters["journal_errors"] + reg.counters["journal_sync_errors"],
            "journal_syncs": reg.counters["journal_syncs"],
            "journal_backlog": reg.journal_backlog,
            "streams": len(self._stream_feeds),
        }
        reasons = []
        if reg.degraded:
            reasons.append(reg.last_error or "database writes failing")
        if reg.journal_error:
            reasons.append(reg.journal_error)
        return {
            "timestamp": time.time(),
            "udp": dict(self.udp),
            "counters": counters,
            "rejected": rejected,
            "pending": reg.pending(),
            "lag_s": round(reg.lag(), 4),
            "degraded": bool(reasons),
            "degraded_reasons": reasons,
            "last_error": reg.last_error,
            "last_commit_ms": round(reg.last_commit_ms, 3),
            "kernel_udp_rcvbuf_errors": kernel_udp_rcvbuf_errors(),
        }

    def _publish_stats(self, snap: dict) -> None:
        data = dict(snap["counters"])
        data.update({f"rejected_{k}": v for k, v in snap["rejected"].items()})
        data.update(pending=snap["pending"], lag_s=snap["lag_s"], degraded=int(snap["degraded"]))
        self.agent.publish_to_feed(
            STATS_FEED, {"block_name": "stats", "timestamp": snap["timestamp"], "data": data}
        )

    # ---- operations ----------------------------------------------------------------------

    @ocs_agent.param("test_mode", default=False, type=bool)
    def run(self, session: ocs_agent.OpSession, params: dict | None = None):
        """run(test_mode=False)

        **Process** - Report the monitor's counters while it registers files. Files are
        registered from the moment the agent starts, whether or not this process runs;
        stopping it waits until every file announced before the stop is in the database
        (datagrams still waiting in the socket are read first).

        Parameters:
            test_mode (bool, optional): Return once at least one file was announced and
                every announced file is settled. Meant for tests. Default is False.

        Notes:
            ``session.data`` is refreshed every second (every 50 ms in test mode)::

                >>> response.session['data']
                {'timestamp': 1700000000.0,
                 'udp': {'host': '0.0.0.0', 'port': 8200, 'rcvbuf_requested': 67108864,
                         'rcvbuf_granted': 8388608, 'rcvbuf_via': 'SO_RCVBUF ...'},
                 'counters': {'received': 120, 'files_announced': 100, 'registered': 99,
                              'duplicates': 1, 'timecode_dirs_created': 1,
                              'replayed_from_journal': 0, 'session_messages': 12,
                              'metadata': 8, 'ignored': 0, 'db_errors': 0,
                              'journal_errors': 0, 'journal_syncs': 0,
                              'journal_backlog': 0, 'streams': 1},
                 'rejected': {'oversize': 0, 'bad_json': 0, 'too_deep': 0,
                              'outside_allowed_root': 0, 'over_max_pending': 0, ...},
                 'pending': 0, 'lag_s': 0.0, 'degraded': False, 'degraded_reasons': [],
                 'last_error': '', 'last_commit_ms': 1.2, 'kernel_udp_rcvbuf_errors': 0}

            ``degraded_reasons`` says why the session is degraded (database writes failing,
            journal not writable); every reason of ``rejected`` is listed on the docs page
            with what to do about it.
        """
        test_mode = params["test_mode"]
        self._run_stop.clear()
        period = 0.05 if test_mode else 1.0
        last_feed = 0.0
        while not self._run_stop.wait(period):
            snap = self.snapshot()
            session.data = snap
            session.degraded = snap["degraded"]
            if time.monotonic() - last_feed >= 10.0:
                self._publish_stats(snap)
                last_feed = time.monotonic()
            if test_mode and snap["counters"]["files_announced"] and not snap["pending"]:
                break
        # What was sent before the stop but still waits in the socket (the port may be
        # resting) counts as received: read it now, then drain.
        # (not blockingCallFromThread: at shutdown the reactor may never run it)
        read = threading.Event()
        reactor.callFromThread(lambda: (self.read_pending(), read.set()))
        read.wait(5.0)
        drained = self.registrar.drain(self.args.drain_timeout)
        session.data = self.snapshot()
        self._publish_stats(session.data)
        if not drained:
            return False, (
                f"{session.data['pending']} file(s) not yet written (kept in the "
                f"journal): {session.data['last_error']}"
            )
        return True, "Monitor exited cleanly."

    @classmethod
    def check_args(cls, args: argparse.Namespace) -> None:
        for spec in args.archive or []:
            parse_archive_rule(spec)  # fail before connecting, naming the bad argument

    def operations(self) -> list[Operation]:
        stop_run = stopper_for(self._run_stop, "Stopping; files received so far are being written.")
        return [process("run", self.run, stop_run, startup=not self.args.test_mode)]

    def begin(self) -> None:
        self.listen(self.args.udp_port, self.args.udp_host, self.args.udp_rcvbuf)

    # ---- shutdown ------------------------------------------------------------------------

    def shutdown(self):
        """Stop listening, read what the kernel still holds, write everything, stop."""
        if self._shut_down:
            return None
        self._shut_down = True
        if self.port is not None:
            self.read_pending()
            self.port.stopListening()
        self.datagramsRead()
        if self._journal_retry.running:
            self._journal_retry.stop()
        self.registrar.retry_journal()
        d = run_blocking(self.registrar.stop, self.args.drain_timeout, name="pysmurf-stop")

        def done(drained):
            snap = self.snapshot()
            self.log.info(
                "stopped: {n} registered, {p} pending{kept}",
                n=snap["counters"]["registered"],
                p=snap["pending"],
                kept=" (kept in the journal)" if not drained else "",
            )
            self.db.close()

        d.addCallback(done)
        d.addErrback(lambda f: self.log.error("shutdown failed: {f}", f=f))
        return d


def make_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    parser, pgroup = agent_options(parser)
    pgroup.add_argument(
        "--udp-port",
        type=int,
        default=8200,
        help="UDP port the pysmurf publisher sends to (SMURFPUB_UDP_PORT).",
    )
    pgroup.add_argument(
        "--udp-host", default="", help="Interface address to bind; all interfaces by default."
    )
    pgroup.add_argument(
        "--udp-rcvbuf",
        type=int,
        default=64 << 20,
        help="Socket receive buffer to ask for, in bytes. Without root or "
        "CAP_NET_ADMIN the kernel grants at most twice net.core.rmem_max; "
        "the log and session.data say what was granted.",
    )
    pgroup.add_argument(
        "--create-table",
        type=str2bool,
        default=True,
        help="Create the SupRsync tables if they do not exist.",
    )
    pgroup.add_argument(
        "--db-path",
        type=str,
        default="/data/so/databases/suprsync.db",
        help="Path to the SupRsync sqlite database.",
    )
    pgroup.add_argument("--echo-sql", action="store_true", help="Log every SQL statement.")
    pgroup.add_argument(
        "--test-mode",
        action="store_true",
        help="Do not start the run process at startup (for tests).",
    )
    pgroup.add_argument(
        "--archive",
        action="append",
        metavar="NAME=RULE",
        help="An additional archive and its remote-path rule: NAME=tail:N "
        "(last N path components) or NAME=relative:/base/dir. Repeatable.",
    )
    pgroup.add_argument(
        "--journal-dir",
        default=None,
        help="Folder of the journal of received file announcements (kill -9 "
        "safety). Default: .<instance-id>.journal beside the database; "
        "'none' disables it.",
    )
    pgroup.add_argument(
        "--missing-file-timeout",
        type=float,
        default=10.0,
        help="Seconds to keep retrying a file that does not exist yet.",
    )
    pgroup.add_argument(
        "--big-file-threads",
        type=int,
        default=2,
        help="Threads computing md5 sums of files over 16 MiB.",
    )
    add_allowed_root_option(pgroup, " and ".join(DEFAULT_ALLOWED_ROOTS))
    pgroup.add_argument(
        "--max-pending",
        type=int,
        default=200_000,
        help="Most files received and not yet written; more are refused and counted "
        "(over_max_pending) until the database catches up.",
    )
    pgroup.add_argument(
        "--max-streams",
        type=int,
        default=256,
        help="Most smurf-streamer streams with a <stream_id>_meta feed; metadata of more "
        "streams is refused and counted (over_max_streams).",
    )
    pgroup.add_argument(
        "--drain-timeout",
        type=float,
        default=30.0,
        help="Seconds a stop waits for pending files to be written.",
    )
    return parser


def main(args: list | None = None) -> None:
    run_agent(PysmurfMonitor, make_parser, args)


if __name__ == "__main__":
    main()
