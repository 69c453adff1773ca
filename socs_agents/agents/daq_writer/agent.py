"""DAQWriter: the detector image writer (PSI std_daq's writer) as an OCS agent.

A thin OCS shell over :mod:`.engine` (one request at a time: the next N images of the
ZeroMQ stream into one HDF5 file), :mod:`.requests` (refusals), :mod:`.gaps`,
:mod:`.h5file`, :mod:`.outcomes` (kept across restarts) and :mod:`.http_api` (the
reference's web API for ``std_daq_client``).
"""

from __future__ import annotations

import argparse
import os

from ocs import ocs_agent
from twisted.internet import reactor

from ...db import SupRsyncDB
from ...db.entries import AllowedRoots, add_allowed_root_option
from ...runtime import SerialWorker
from ...runtime.http import ClientAllowList, add_http_allow_option
from ..shell import CONTROL_PRIVS, AgentShell, Operation, agent_options, run_agent, task
from .engine import SOCKET_TYPES, Busy, EngineConfig, WriteEngine
from .gaps import ON_GAP_CHOICES
from .h5file import COMPRESSIONS, hdf5plugin_available
from .http_api import SYNC_TIMEOUT_S, WriterAPI, WriterResource
from .outcomes import OutcomeStore
from .requests import DEFAULT_IMAGE_BYTES, DEFAULT_RESERVE_BYTES, RequestRefused, WriterLimits

FEED = "daq_writer"
#: Credential level of the operations that change state (write and its abort).
PROGRESS_INTERVAL_S = 0.5
#: Outcome fields published to the feed (numbers and strings only).
FEED_FIELDS = ("n_images", "n_written", "n_gaps", "n_missing", "n_bad_status", "n_bad_frames")


class DAQWriter(AgentShell):
    """Writes the next N detector images of a ZeroMQ stream into an HDF5 file per request."""

    agent_class = "DAQWriter"

    def __init__(self, agent: ocs_agent.OCSAgent, args: argparse.Namespace) -> None:
        super().__init__(agent, args)
        report = self.report
        if args.compression != "none" and not hdf5plugin_available():
            raise SystemExit(
                f"--compression {args.compression} needs the hdf5plugin package "
                "(pip install 'socs-agents[daq]')"
            )
        os.makedirs(args.data_root, exist_ok=True)
        state_db = args.state_db or os.path.join(
            args.data_root, f".daq-writer-{args.instance_id}.sqlite"
        )
        self.store = OutcomeStore(state_db)
        self.db = (
            SupRsyncDB(args.suprsync_db) if args.suprsync_db not in (None, "", "none") else None
        )
        limits = WriterLimits(
            data_root=args.data_root,
            max_images=args.max_images,
            max_timeout=args.max_timeout,
            reserve_bytes=args.reserve_bytes,
        )
        config = EngineConfig(
            stream_url=args.stream_url,
            limits=limits,
            socket_type=args.socket_type,
            detector=args.detector_name,
            compression=args.compression,
            on_gap=args.on_gap,
            rcv_hwm=args.rcv_hwm,
            default_image_bytes=args.image_bytes,
        )
        self.engine = WriteEngine(
            config,
            self.store,
            self.db,
            AllowedRoots(args.allowed_root or [args.data_root]),
            args.archive_name,
            report,
        )
        recovered = self.engine.recover()
        self.log.info(
            "DAQWriter ready: stream {url} ({kind}), data root {root}; {n} temporary file(s) "
            "of interrupted writes removed",
            url=args.stream_url,
            kind=args.socket_type,
            root=args.data_root,
            n=len(recovered["removed_temp_files"]),
        )
        # The web API's work (validation touches the disk) runs here, off the reactor.
        self.requests = SerialWorker("daq-requests", max_queue=100)
        self.http_port = None
        self.agent.register_feed(FEED, record=True, agg_params={"frame_length": 60}, buffer_time=0)

    # ---- tasks ---------------------------------------------------------------------------

    @ocs_agent.param("run_id", default=None)
    # no type=float: ocs would convert a huge integer and crash (OverflowError); the
    # request's own check refuses anything but a number within the bounds (bad_timeout)
    @ocs_agent.param("timeout", default=None)
    @ocs_agent.param("output_file", type=str)
    @ocs_agent.param("n_images", type=int)
    def write(self, session, params):
        """write(n_images, output_file, timeout=None, run_id=None)

        **Task** - Write the next ``n_images`` images of the stream, in order, into the new
        HDF5 file ``output_file``. Abort it to end early: the images written so far stay in
        a valid file.

        Parameters:
            n_images (int): images to write, 1 to ``--max-images``.
            output_file (str): absolute path of a new file under ``--data-root`` (never
                overwritten; its folder must exist).
            timeout (float): seconds to wait for the first image, and for each next one
                (default ``--default-timeout``).
            run_id (str or int): stored in the file and the outcome (default: the time).

        Notes:
            Refused before anything touches the disk, with the reason, for a bad
            ``n_images``, a relative path, a path outside the data root (after ``..`` and
            links), an existing file, a missing or unwritable folder, too little free
            disk, or while another write runs. ``success`` is True only for a completed
            write; an abort, a timeout or a failure says so in the message. While it
            runs, ``session.data`` is the progress (``state`` ``waiting_images``,
            ``acquiring_images``, ``flushing_images``); at the end the outcome::

                >>> response.session['data']
                {'n_images': 100, 'output_file': '/data/daq/run1.h5', 'timeout': 10.0,
                 'run_id': 'run1', 'requested_at': 1700000000.0, 'source': 'ocs',
                 'state': 'completed', 'success': True,
                 'message': 'completed: wrote 100 of 100 images to /data/daq/run1.h5',
                 'n_written': 100, 'bytes_written': 209715200,
                 'output_file_written': '/data/daq/run1.h5',
                 'first_image_id': 5310, 'last_image_id': 5409,
                 'start_time': 1700000000.0, 'first_image_time': 1700000000.01,
                 'stop_time': 1700000000.9, 'images_per_s': 112.4,
                 'on_gap': 'record', 'n_gaps': 0, 'n_missing': 0, 'n_bad_status': 0,
                 'n_not_forward': 0, 'gaps': [], 'bad_status': [], 'n_bad_frames': 0,
                 'suprsync': None}

            ``state`` is ``completed``, ``aborted``, ``timeout`` or ``failed``; after a
            refusal ``session.data`` is ``{'refused': 'file_exists', 'message': ...}``.
        """
        try:
            acq = self.engine.start(
                params["n_images"],
                params["output_file"],
                self.args.default_timeout if params["timeout"] is None else params["timeout"],
                params["run_id"],
                source="ocs",
            )
        except (RequestRefused, Busy) as e:
            session.data = {"refused": e.code, "message": str(e)}
            return False, str(e)
        self._write_acq = acq
        session.set_status("running")
        while not acq.done.wait(PROGRESS_INTERVAL_S):
            session.data = acq.progress()
            self._publish("progress", session.data)
        outcome = acq.outcome
        session.data = outcome
        self._publish("outcome", outcome)
        return outcome["success"], outcome["message"]

    def _abort_write(self, session, params=None):
        acq = getattr(self, "_write_acq", None)
        if acq is None or acq.done.is_set():
            return True, "no write was running"
        self.engine.stop("through OCS: abort of the write task")
        return True, "abort requested"

    def operations(self) -> list[Operation]:
        return [
            task("write", self.write, aborter=self._abort_write, min_privs=CONTROL_PRIVS),
            task("status", self.status, blocking=False),
        ]

    def begin(self) -> None:
        self.listen()

    def status(self, session, params=None):
        """status()

        **Task** - The writer's state, the running request's progress, the outcomes of
        the last requests (kept across restarts) and counters since start.

        Notes:
            ``last`` lists outcomes newest first, as ``write`` returns them, each with
            its ``request_number``; a request cut short by a crash is ``interrupted``.
            ``suprsync`` of an outcome is filled once the file is registered::

                >>> response.session['data']
                {'state': 'idle', 'current': None,
                 'last': [{'state': 'completed', 'success': True, 'message': '...',
                           'n_written': 100, ..., 'request_number': 12,
                           'suprsync': {'registered': True, 'archive': 'daq',
                                        'remote_path': 'run1.h5',
                                        'md5': '0cc175b9c0f1b6a831c399e269772661'}}],
                 'counters': {'requests': 12, 'refused': 3, 'images_written': 1200,
                              'bytes_written': 2516582400, 'completed': 10, 'aborted': 1,
                              'timeout': 1},
                 'stream_url': 'tcp://127.0.0.1:8300', 'socket_type': 'sub'}
        """
        session.data = self.engine.status()
        return True, f"writer is {session.data['state']}"

    # ---- feed ----------------------------------------------------------------------------

    def _publish(self, block: str, data: dict) -> None:
        fields = {k: data[k] for k in FEED_FIELDS if isinstance(data.get(k), int | float)}
        fields["state"] = str(data.get("state"))
        fields["run_id"] = str(data.get("run_id"))
        self.agent.publish_to_feed(
            FEED, {"block_name": block, "timestamp": data.get("stop_time") or 0, "data": fields}
        )

    # ---- web API -------------------------------------------------------------------------

    def listen(self) -> None:
        if not self.args.http_port:
            return
        from twisted.web.server import Site

        api = WriterAPI(
            self.engine,
            self.args.default_timeout,
            allow=ClientAllowList.from_option(self.args.http_allow),
            sync_timeout=self.args.sync_timeout,
        )
        resource = WriterResource(
            api,
            self.requests,
            reactor,
            on_error=lambda path, e: self.log.error("web API {p} failed: {e!r}", p=path, e=e),
        )
        site = Site(resource)
        site.log = lambda request: None
        self.http_port = reactor.listenTCP(
            self.args.http_port, site, interface=self.args.http_interface
        )
        self.log.info(
            "web API on http://{host}:{port}",
            host=self.args.http_interface,
            port=self.args.http_port,
        )

    # ---- life cycle ----------------------------------------------------------------------

    def _shutdown(self) -> bool:
        clean = self.engine.shutdown(5.0)
        self.store.close()
        if self.db is not None:
            self.db.close()
        return clean

    def shutdown(self):
        d = self.requests.submit(self._shutdown)
        d.addErrback(lambda f: self.log.error("shutdown failed: {f}", f=f))
        return d


def make_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    parser, p = agent_options(parser)
    p.add_argument(
        "--stream-url",
        default="tcp://127.0.0.1:8300",
        help="ZeroMQ endpoint of the image stream (the source binds, the writer connects "
        "while a request runs). Messages: [56-byte 2021 ImageMetadata struct, pixels].",
    )
    p.add_argument(
        "--socket-type",
        choices=sorted(SOCKET_TYPES),
        default="sub",
        help="'sub' for a PUB source (it never waits: loss shows as gaps), 'pull' for a "
        "PUSH source (it waits for the writer).",
    )
    p.add_argument(
        "--data-root",
        default="/data/daq",
        help="Folder under which every output_file must lie (after resolving '..' and links).",
    )
    p.add_argument(
        "--detector-name", default="detector", help="HDF5 group of the images: /<name>/data."
    )
    p.add_argument("--max-images", type=int, default=100_000, help="Largest n_images of a request.")
    p.add_argument(
        "--default-timeout",
        type=float,
        default=10.0,
        help="Seconds a request waits for its first image (and for each next) when it "
        "gives no timeout.",
    )
    p.add_argument(
        "--max-timeout", type=float, default=3600.0, help="Largest timeout a request may give."
    )
    p.add_argument(
        "--on-gap",
        choices=ON_GAP_CHOICES,
        default="record",
        help="A gap in image ids or a status other than good: 'record' it (per image, in "
        "the file and the outcome) and go on, or 'fail' the request there.",
    )
    p.add_argument(
        "--compression",
        choices=COMPRESSIONS,
        default="none",
        help="Compression of raw images in the file (bitshuffle-lz4 needs hdf5plugin; the "
        "filter is always declared, so readers without it get an error, not wrong pixels).",
    )
    p.add_argument(
        "--rcv-hwm",
        type=int,
        default=100,
        help="Images the socket may queue while the disk is slow (ZeroMQ RCVHWM).",
    )
    p.add_argument(
        "--image-bytes",
        type=int,
        default=DEFAULT_IMAGE_BYTES,
        help="Bytes per image for the free-disk check until an image has shown the stream's size.",
    )
    p.add_argument(
        "--reserve-bytes",
        type=int,
        default=DEFAULT_RESERVE_BYTES,
        help="Free disk a request must leave beyond its estimated size.",
    )
    p.add_argument(
        "--state-db",
        default=None,
        help="SQLite file of the last requests' outcomes (kept across restarts). Default: "
        ".daq-writer-<instance-id>.sqlite in the data root.",
    )
    p.add_argument(
        "--suprsync-db",
        default="/data/so/databases/suprsync.db",
        help="SupRsync database where finished files are registered with their md5; "
        "'none' to write files without registering them.",
    )
    p.add_argument("--archive-name", default="daq", help="SupRsync archive of the files.")
    add_allowed_root_option(p, "the --data-root")
    p.add_argument(
        "--http-port",
        type=int,
        default=5000,
        help="Port of the reference's web API (std_daq_client); 0 to serve none.",
    )
    p.add_argument(
        "--http-interface",
        default="127.0.0.1",
        help="Address the web API binds (loopback unless told otherwise).",
    )
    add_http_allow_option(p, "the web API")
    p.add_argument(
        "--sync-timeout",
        type=float,
        default=SYNC_TIMEOUT_S,
        help="Longest wait of POST /writer/write_sync (the acquisition goes on after it).",
    )
    return parser


def main(args: list | None = None) -> None:
    run_agent(DAQWriter, make_parser, args)


if __name__ == "__main__":
    main()
