"""A stand-in for the DUNE DAQ around the orchestrator: HDF5 writers and the HTTP clients.

Files are written in the hdf5libs layout, under a temporary name renamed when done::

    <root>/<prefix>_run<run>_<index>_<app>.hdf5
        attrs: run_number, file_index, creation_timestamp (ms), record_type,
               application_name, filelayout_version, filelayout_params (JSON),
               recorded_size and closing_timestamp (at close)
        TriggerRecord000001.0000/RawData/<source id>_TriggerRecordHeader   (bytes)
        TriggerRecord000001.0000/RawData/<source id>_<fragment type>       (bytes)
        TimeSlice000001/RawData/...

Like the real writers, the file is renamed from ``.writing`` to its final name just before its
last close (``rename_before_close``), so a watcher may find it still locked.

:class:`OrchestratorClient` makes the HTTP calls of DUNE's ``FilterOrchestratorClient`` (one
persistent HTTP/1.1 connection, no ``Host`` header on ``request-tr``/``request-ts``) plus the
README's; :func:`run_chain` plays the Data Filter, the Dispatcher and the Filter Writer.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import sys
import time
from collections.abc import Sequence
from urllib.parse import urlparse

TRIGGER_RECORD = "TriggerRecord"
TIME_SLICE = "TimeSlice"
FRAGMENT_TYPES = ("WIBEth", "Trigger_Primitive")


class DuneWriter:
    """Writes DUNE record files for one run.

    Args:
        root: folder of the files (created).
        run_number: run number of every file.
        record_digits, sequence_digits: zero padding of the group names.
        sources: source ids per record (one header plus one fragment dataset each).
        fragment_bytes: size of each fragment dataset.
    """

    def __init__(
        self,
        root: str,
        run_number: int = 1,
        application: str = "dataflow0",
        record_digits: int = 6,
        sequence_digits: int = 4,
        sources: int = 2,
        fragment_bytes: int = 64,
        temp_suffix: str = ".writing",
    ) -> None:
        self.root = os.path.abspath(root)
        os.makedirs(self.root, exist_ok=True)
        self.run_number = run_number
        self.application = application
        self.record_digits = record_digits
        self.sequence_digits = sequence_digits
        self.sources = sources
        self.fragment_bytes = fragment_bytes
        self.temp_suffix = temp_suffix
        self.file_index = 0
        self.next_number = {TRIGGER_RECORD: 1, TIME_SLICE: 1}
        #: wall-clock time of the last rename into place
        self.renamed_at: float | None = None

    def group_name(self, record_type: str, number: int, seq: int = 0) -> str:
        if record_type == TRIGGER_RECORD:
            return f"TriggerRecord{number:0{self.record_digits}d}.{seq:0{self.sequence_digits}d}"
        return f"TimeSlice{number:0{self.record_digits}d}"

    def path_for(self, index: int, prefix: str = "swtest") -> str:
        return os.path.join(
            self.root, f"{prefix}_run{self.run_number:06d}_{index:04d}_{self.application}.hdf5"
        )

    def write_file(
        self,
        records: int = 5,
        record_type: str = TRIGGER_RECORD,
        sequences: int = 1,
        rename: bool = True,
        rename_before_close: bool = True,
        before_close_delay: float = 0.0,
    ) -> tuple[str, list[tuple[int, int]]]:
        """Write one file of ``records`` records (each with ``sequences`` sequence numbers).

        Returns (final path, [(record number, sequence number), ...]). With ``rename``
        false, the file keeps its temporary name (and the returned path is that name).
        """
        import h5py
        import numpy as np

        final = self.path_for(self.file_index)
        self.file_index += 1
        temp = final + self.temp_suffix
        ids = []
        first = self.next_number[record_type]
        self.next_number[record_type] += records
        seqs = range(sequences) if record_type == TRIGGER_RECORD else range(1)
        params = {
            "record_name_prefix": record_type,
            "digits_for_record_number": self.record_digits,
            "digits_for_sequence_number": self.sequence_digits,
        }
        f = h5py.File(temp, "w")
        try:
            f.attrs["run_number"] = np.uint32(self.run_number)
            f.attrs["file_index"] = np.uint64(self.file_index - 1)
            f.attrs["creation_timestamp"] = np.uint64(int(time.time() * 1000))
            f.attrs["record_type"] = record_type
            f.attrs["application_name"] = self.application
            f.attrs["filelayout_version"] = np.uint32(7)
            f.attrs["filelayout_params"] = json.dumps(params)
            for number in range(first, first + records):
                for seq in seqs:
                    raw = f.create_group(f"{self.group_name(record_type, number, seq)}/RawData")
                    header = (
                        number.to_bytes(8, "little")
                        + seq.to_bytes(2, "little")
                        + self.run_number.to_bytes(4, "little")
                    )
                    for sid in range(self.sources):
                        name = f"{sid:08x}"
                        kind = (
                            "TriggerRecordHeader"
                            if record_type == TRIGGER_RECORD
                            else "TimeSliceHeader"
                        )
                        raw.create_dataset(
                            f"{name}_{kind}", data=np.frombuffer(header, dtype=np.uint8)
                        )
                        raw.create_dataset(
                            f"{name}_{FRAGMENT_TYPES[sid % 2]}",
                            data=np.frombuffer(os.urandom(self.fragment_bytes), dtype=np.uint8),
                        )
                    ids.append((number, seq))
            f.attrs["recorded_size"] = np.uint64(
                len(ids) * self.sources * (self.fragment_bytes + 14)
            )
            f.attrs["closing_timestamp"] = np.uint64(int(time.time() * 1000))
            f.flush()
            if rename and rename_before_close:
                os.rename(temp, final)
                self.renamed_at = time.time()
                if before_close_delay:
                    time.sleep(before_close_delay)
        finally:
            f.close()
        if rename and not rename_before_close:
            os.rename(temp, final)
            self.renamed_at = time.time()
        return (final if rename else temp), ids


class OrchestratorClient:
    """The HTTP calls of DUNE's FilterOrchestratorClient, on one persistent connection.

    Each method returns ``(status, answer)`` with the JSON answer decoded (``None`` when the
    body is not JSON).
    """

    def __init__(self, url: str = "http://127.0.0.1:6000", timeout: float = 10.0) -> None:
        u = urlparse(url)
        self.host, self.port = u.hostname or "127.0.0.1", u.port or 6000
        self.conn = http.client.HTTPConnection(self.host, self.port, timeout=timeout)

    def close(self) -> None:
        self.conn.close()

    def call(
        self, method: str, path: str, body=None, raw: bytes | None = None, host_header: bool = True
    ) -> tuple[int, dict | None]:
        data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        c = self.conn
        c.putrequest(method, path, skip_host=not host_header, skip_accept_encoding=True)
        if data is not None:
            c.putheader("Content-Type", "application/json")
            c.putheader("Content-Length", str(len(data)))
        c.endheaders(data)
        resp = c.getresponse()
        payload = resp.read()
        try:
            return resp.status, json.loads(payload)
        except ValueError:
            return resp.status, None

    # the real client (dfmodules FilterOrchestratorClient)
    def request_tr(self):
        return self.call("GET", "/request-tr", host_header=False)

    def request_ts(self):
        return self.call("GET", "/request-ts", host_header=False)

    def read_next_triggerrecord(self, host: str, file: str = ""):
        return self.call("POST", "/read-next-triggerrecord", {"host": host, "file": file})

    def read_next_timeslice(self, host: str, file: str = ""):
        return self.call("POST", "/read-next-timeslice", {"host": host, "file": file})

    def complete(
        self, run_number: int, trigger_number: int, sequence_number: int, type: str = TRIGGER_RECORD
    ):
        return self.call(
            "POST",
            "/complete",
            {
                "file": "",
                "run_number": run_number,
                "trigger_number": trigger_number,
                "sequence_number": sequence_number,
                "type": type,
            },
        )

    # the README's endpoints (filesystem monitors, operators)
    def new_file(
        self,
        host: str,
        file: str,
        run_number: int,
        record_type: str,
        record_ids: Sequence[Sequence[int]],
    ):
        return self.call(
            "POST",
            "/new-file",
            {
                "host": host,
                "file": file,
                "run_number": run_number,
                "record_type": record_type,
                "record_ids": [list(r) for r in record_ids],
            },
        )

    def remove_file(self, host: str, file: str):
        return self.call("POST", "/remove-file", {"host": host, "file": file})

    def read_next_tr(self, host: str):
        return self.call("GET", "/read-next-tr", {"host": host})

    def tr_complete(self, run_number: int, trigger_number: int, sequence_number: int):
        return self.call(
            "POST",
            "/tr-complete",
            {
                "run_number": run_number,
                "trigger_number": trigger_number,
                "sequence_number": sequence_number,
            },
        )

    def stats(self):
        return self.call("GET", "/stats")


def check_record(
    path: str,
    record_type: str,
    number: int,
    seq: int,
    record_digits: int = 6,
    sequence_digits: int = 4,
) -> int:
    """What the Dispatcher does with an answer: open the file and read the record's
    datasets. Returns the bytes read (raises if the record is not there)."""
    import h5py

    name = (
        f"TriggerRecord{number:0{record_digits}d}.{seq:0{sequence_digits}d}"
        if record_type == TRIGGER_RECORD
        else f"TimeSlice{number:0{record_digits}d}"
    )
    total = 0
    with h5py.File(path, "r") as f:
        for ds in f[name]["RawData"].values():
            total += len(ds[()])
    return total


def run_chain(
    client: OrchestratorClient,
    host: str,
    count: int,
    record_type: str = TRIGGER_RECORD,
    poll_interval: float = 0.05,
    timeout: float = 30.0,
    verify: bool = True,
) -> list[dict]:
    """Data Filter, Dispatcher and Filter Writer for ``count`` records, one at a time:
    request a credit, poll read-next until a record comes (404/429: sleep and retry, as
    the real Dispatcher), read it from its file, complete it (trigger records only, as the
    real Filter Writer). Returns the read-next answers in order."""
    done: list[dict] = []
    deadline = time.monotonic() + timeout
    read = (
        client.read_next_triggerrecord
        if record_type == TRIGGER_RECORD
        else client.read_next_timeslice
    )
    request = client.request_tr if record_type == TRIGGER_RECORD else client.request_ts
    while len(done) < count:
        status, _ = request()
        if status != 200:
            raise RuntimeError(f"request answered {status}")
        while True:
            status, answer = read(host)
            if status == 200:
                break
            if status not in (404, 429):
                raise RuntimeError(f"read-next answered {status}: {answer}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(done)} of {count} records after {timeout} s")
            time.sleep(poll_interval)
        if verify:
            check_record(
                answer["file"], answer["type"], answer["trigger_number"], answer["sequence_number"]
            )
        if record_type == TRIGGER_RECORD:
            status, _ = client.complete(
                answer["run_number"],
                answer["trigger_number"],
                answer["sequence_number"],
                answer["type"],
            )
            if status != 200:
                raise RuntimeError(f"complete answered {status}")
        done.append(answer)
    return done


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="socs-agents simulate-dune", description=__doc__.split("\n")[0]
    )
    p.add_argument(
        "--root",
        required=True,
        help="folder to write the HDF5 files in (a "
        "volume the orchestrator watches, unless --announce)",
    )
    p.add_argument("--url", default="http://127.0.0.1:6000", help="the orchestrator's HTTP API")
    p.add_argument(
        "--host", default=None, help="host name the Dispatcher sends (default: this host's name)"
    )
    p.add_argument("--run", type=int, default=1, help="run number")
    p.add_argument("--files", type=int, default=3, help="files to write")
    p.add_argument("--records", type=int, default=5, help="records per file")
    p.add_argument("--type", choices=[TRIGGER_RECORD, TIME_SLICE], default=TRIGGER_RECORD)
    p.add_argument(
        "--announce",
        action="store_true",
        help="also POST /new-file for each file, like a remote host's filesystem monitor",
    )
    p.add_argument(
        "--process",
        action="store_true",
        help="then play Data Filter, Dispatcher and Filter Writer until every record is processed",
    )
    p.add_argument("--timeout", type=float, default=60.0)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    import socket

    args = make_parser().parse_args(argv)
    host = args.host or socket.gethostname()
    writer = DuneWriter(args.root, args.run)
    client = OrchestratorClient(args.url)
    written = []
    for _ in range(args.files):
        path, ids = writer.write_file(args.records, args.type)
        written.append(path)
        if args.announce:
            status, answer = client.new_file(host, path, args.run, args.type, ids)
            print(f"POST /new-file {os.path.basename(path)} -> {status} {answer}")
    print(f"wrote {len(written)} files of {args.records} {args.type}(s) in {writer.root}")
    if args.process:
        t0 = time.monotonic()
        done = run_chain(client, host, args.files * args.records, args.type, timeout=args.timeout)
        print(
            f"processed {len(done)} records in {time.monotonic() - t0:.2f} s "
            f"(request, read-next, read from the file"
            f"{', complete' if args.type == TRIGGER_RECORD else ''})"
        )
        print("GET /stats ->", client.stats()[1].get("counts"))
    client.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
