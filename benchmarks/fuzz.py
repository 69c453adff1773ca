"""Fuzz the live agents on a real hub: every input surface, generated hostile inputs.

.venv/bin/python benchmarks/fuzz.py [--count 100000] [--surfaces udp,http,ocs,files,gw,daq]
                                    [--seed 1] [--write-docs] [--memtrace DIR]

For each surface the script records the agent's state, its counters and its RSS, sends
``--count`` generated inputs that are all invalid by construction (random bytes, JSON of any
shape and depth, the right shape with wrong types, NaN/Infinity/huge numbers, files outside
the allowed roots and links pointing out of them, oversize bodies, garbage files on a watched
volume), then checks and prints:

* sent, and refused by reason (the agent's own counters, or the HTTP answers),
* crashes: the agent process died, a traceback in its log, an HTTP 500, a stopped process
  (must be 0),
* state changes: SupRsync rows, the orchestrator's records and credits, a recorder's
  schedule (must be 0),
* the agent's RSS at the start, after the warm-up (the first 10 % of the inputs) and at the
  end: what a bounded agent may still grow by is its warm-up (caches, first allocations),
  never in proportion to the inputs after it.

``--memtrace DIR`` runs each agent under tracemalloc (:mod:`socs_agents.dev.memtrace`) and
prints, at the end of each surface, the source lines whose memory grew most between the
end of the warm-up and the end (snapshots are left in ``DIR``): the way to find what grows.
"""

from __future__ import annotations

import argparse
import http.client
import json
import math
import os
import random
import re
import signal
import sqlite3
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator

sys.path.insert(0, os.path.dirname(__file__))
from _report import emit, rst_table  # noqa: E402

from socs_agents.dev import memtrace  # noqa: E402
from socs_agents.dev.testing import (  # noqa: E402
    LocalSite,
    WampCaller,
    free_port,
    free_udp_port,
    wait_for,
)

DOCS = os.path.join(os.path.dirname(__file__), "..", "docs", "figures", "fuzz.rst")
MAX_UDP = 65507
#: the recorder's level-2 password: the fuzzed parameters must reach its checks
FUZZ_PW2 = "fuzz-pw2"
#: the share of the inputs sent before the "after warm-up" RSS
WARMUP_SHARE = 0.1
#: set by ``--memtrace``: agents run under tracemalloc, snapshots go there
MEMTRACE_DIR: str | None = None

# ---- generators ---------------------------------------------------------------------------

HOSTILE_NUMBERS = [
    float("nan"),
    float("inf"),
    float("-inf"),
    1e308,
    -1e308,
    10**30,
    -(10**30),
    2**63,
    -(2**63) - 1,
    10**400,
    1e-320,
    -1,
    0,
    2**31,
    86400 * 1e6,
]


def hostile_number(rng: random.Random):
    return rng.choice(HOSTILE_NUMBERS)


def random_scalar(rng: random.Random):
    kind = rng.randrange(7)
    if kind == 0:
        return hostile_number(rng)
    if kind == 1:
        return rng.choice([True, False, None])
    if kind == 2:
        return "".join(chr(rng.randrange(1, 0x2FFF)) for _ in range(rng.randrange(0, 40)))
    if kind == 3:
        return rng.choice(["", "later", "../../etc/passwd", "/etc/shadow", "a\x00b", "x" * 5000])
    if kind == 4:
        return rng.uniform(-1e9, 1e9)
    if kind == 5:
        return rng.randrange(-(2**70), 2**70)
    return []


def random_json(rng: random.Random, depth: int = 0):
    if depth > 4 or rng.random() < 0.4:
        return random_scalar(rng)
    if rng.random() < 0.5:
        return [random_json(rng, depth + 1) for _ in range(rng.randrange(0, 5))]
    return {
        str(random_scalar(rng))[:20]: random_json(rng, depth + 1)
        for _ in range(rng.randrange(0, 5))
    }


def dumps(value) -> bytes:
    """JSON as a careless peer writes it: NaN and Infinity literals, huge integers."""
    return json.dumps(value, allow_nan=True).encode()


def deep_nesting(rng: random.Random, limit: int) -> bytes:
    open_, close = rng.choice([("[", "]"), ('{"a":', "}")])
    n = rng.randrange(100, (limit - 1) // (len(open_) + len(close)))
    return (open_ * n + "1" + close * n).encode()


def random_bytes(rng: random.Random, limit: int) -> bytes:
    size = rng.choice([0, 1, 7, 100, 1000, rng.randrange(0, limit + 1)])
    return rng.randbytes(min(size, limit))


def generic_body(rng: random.Random, limit: int) -> bytes:
    kind = rng.randrange(6)
    if kind == 0:
        return random_bytes(rng, limit)
    if kind == 1:
        return deep_nesting(rng, limit)
    if kind == 2:
        return dumps(random_json(rng))[:limit]
    if kind == 3:
        return b"\xff\xfe" + rng.randbytes(20)
    if kind == 4:
        return dumps(random_json(rng))[: rng.randrange(1, 50)]  # truncated JSON
    return b'{"a": ' + b"9" * rng.randrange(400, 5000) + b"}"


# ---- agents and their state ---------------------------------------------------------------


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def flat_numbers(value, prefix: str = "") -> dict[str, float]:
    out: dict[str, float] = {}
    if isinstance(value, dict):
        for k, v in value.items():
            out.update(flat_numbers(v, f"{prefix}{k}."))
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        out[prefix.rstrip(".")] = value
    return out


def counter_diff(before: dict, after: dict, keep: Callable[[str], bool]) -> dict[str, int]:
    a, b = flat_numbers(after), flat_numbers(before)
    return {
        k: int(a[k] - b.get(k, 0))
        for k in sorted(a)
        if keep(k) and isinstance(a[k], (int, float)) and a[k] - b.get(k, 0) > 0
    }


def suprsync_rows(path: str) -> int:
    if not os.path.exists(path):
        return 0
    with sqlite3.connect(path) as con:
        try:
            return con.execute("SELECT COUNT(*) FROM supersync_v0").fetchone()[0]
        except sqlite3.OperationalError:
            return 0


def tracebacks(agent) -> int:
    text = agent.log_text()
    return text.count("Traceback (most recent call last)") + text.count("Unhandled Error")


class Surface:
    """One input surface of one live agent."""

    name = ""

    def __init__(self, site: LocalSite, workdir: str, rng: random.Random) -> None:
        self.site, self.workdir, self.rng = site, workdir, rng
        self.agent = None
        self.crashes = Counter()
        self.refused = Counter()
        self.accepted = 0
        self.warmup = 0  # inputs before the warm-up RSS (set by run_surface)
        self.rss_warm: int | None = None
        self.snapshots: list[str] = []
        self.notes: list[str] = []
        self.succeeded = Counter()  # tasks that succeeded, by operation

    def start_agent(self, instance_id: str):
        """Start an instance of the site-config (under tracemalloc with ``--memtrace``)."""
        python = None
        if MEMTRACE_DIR is not None:
            out = os.path.join(MEMTRACE_DIR, instance_id)
            python = memtrace.wrapper_script(os.path.join(self.workdir, "python"), out)
        return self.site.start_agent(instance_id, timeout=300 if python else 60, python=python)

    def snapshot(self) -> None:
        """With ``--memtrace``: have the agent dump a tracemalloc snapshot; wait for it."""
        if MEMTRACE_DIR is None:
            return
        path = os.path.join(
            MEMTRACE_DIR, self.agent.instance_id, f"snapshot-{len(self.snapshots)}.tracemalloc"
        )
        os.kill(self.agent.proc.pid, signal.SIGUSR2)
        wait_for(lambda: os.path.exists(path), 300, "a tracemalloc snapshot")
        self.snapshots.append(path)

    def tick(self, i: int) -> None:
        """After input ``i`` (0-based): the warm-up RSS once, a liveness check now and then."""
        if self.rss_warm is None and i + 1 >= self.warmup:
            self.rss_warm = rss_kib(self.agent.proc.pid)
            self.snapshot()
        if i % 20000 == 19999:
            self.alive_check()

    def start(self) -> None: ...

    def state(self) -> object: ...

    def counters(self) -> dict:
        return {}

    def send(self, count: int) -> None: ...

    def settle(self) -> None: ...

    def alive_check(self) -> None:
        if not self.agent.alive():
            self.crashes["agent process died"] += 1


def outside_targets(workdir: str, inside: str) -> list[str]:
    """A secret outside every root, a link inside the root pointing to it, a link to a folder
    outside, and system files."""
    secret = os.path.join(workdir, "secret_id_rsa")
    with open(secret, "w") as f:
        f.write("-----BEGIN PRIVATE KEY-----\n")
    os.makedirs(inside, exist_ok=True)
    link = os.path.join(inside, "innocent.dat")
    if not os.path.lexists(link):
        os.symlink(secret, link)
    dirlink = os.path.join(inside, "up")
    if not os.path.lexists(dirlink):
        os.symlink(workdir, dirlink)
    return [
        secret,
        link,
        os.path.join(dirlink, "secret_id_rsa"),
        os.path.join(inside, "..", "secret_id_rsa"),
        "/etc/passwd",
        "/etc/hostname",
        "relative/path.dat",
        "",
        inside + "/\x00x",
    ]


# ---- PysmurfMonitor: UDP datagrams --------------------------------------------------------


class UdpSurface(Surface):
    name = "PysmurfMonitor UDP datagrams"

    def start(self) -> None:
        self.root = os.path.join(self.workdir, "smurf_data")
        self.db = os.path.join(self.workdir, "suprsync.db")
        self.port = free_udp_port()
        self.site.add_instance(
            "PysmurfMonitor",
            "fuzz-monitor",
            [
                ["--udp-port", self.port],
                ["--udp-host", "127.0.0.1"],
                ["--db-path", self.db],
                ["--create-table", True],
                ["--allowed-root", self.root],
            ],
        )
        self.agent = self.start_agent("fuzz-monitor")
        self.client = self.site.client("fuzz-monitor")
        self.targets = outside_targets(self.workdir, os.path.join(self.root, "17000"))
        import socket

        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)

    def status(self) -> dict:
        return self.client.run.status().session.get("data") or {}

    def state(self) -> object:
        data = self.status()
        return suprsync_rows(self.db), data.get("counters", {}).get("registered") or 0

    def counters(self) -> dict:
        return self.status()

    def datagram(self) -> bytes:
        rng = self.rng
        kind = rng.randrange(5)
        if kind == 0:
            return random_bytes(rng, MAX_UDP)
        if kind == 1:
            return deep_nesting(rng, MAX_UDP)
        if kind == 2:
            return dumps(random_json(rng))[:MAX_UDP]
        msg_type = rng.choice(["data_file", "g3_file", "metadata", "session_data", "nope", 7])
        payload = {
            "path": rng.choice(self.targets) if rng.random() < 0.8 else random_scalar(rng),
            "timestamp": hostile_number(rng) if rng.random() < 0.5 else 1.7e9,
            "action": rng.choice(["take_noise", random_scalar(rng)]),
            "action_ts": rng.choice([hostile_number(rng), "1700000000"]),
            "archive_name": rng.choice(["smurf", "timestreams", random_scalar(rng)]),
        }
        if rng.random() < 0.3:
            payload[str(random_scalar(rng))[:10]] = random_json(rng)
        if msg_type in ("metadata", "session_data"):
            payload = random_json(rng) if rng.random() < 0.5 else [hostile_number(rng)]
        envelope = {
            "host": "fuzz",
            "id": rng.choice(["crate1slot2", random_scalar(rng)]),
            "script": "fuzz",
            "time": hostile_number(rng),
            "type": msg_type,
            "payload": payload,
        }
        if msg_type == "session_data":
            envelope["id"] = 12  # a session message needs a string id: always refused
        return dumps(envelope)[:MAX_UDP]

    def send(self, count: int) -> None:
        target = ("127.0.0.1", self.port)
        for i in range(count):
            self.sock.sendto(self.datagram(), target)
            if i % 200 == 199:
                time.sleep(0.002)  # stay under the socket buffer: loss is not what is tested
            self.tick(i)

    def settle(self) -> None:
        def quiet():
            data = self.status()
            return data.get("pending", 1) == 0 and data

        wait_for(quiet, 120, "the monitor to settle", interval=0.5)


# ---- FileOrchestrator: HTTP ---------------------------------------------------------------

ORCH_ENDPOINTS = [
    "/",
    "/stats",
    "/new-file",
    "/remove-file",
    "/read-next-triggerrecord",
    "/read-next-tr",
    "/read-next-timeslice",
    "/read-next-ts",
    "/complete",
    "/tr-complete",
    "/nope",
    "/" + "a" * 3000,
]


class HttpSurface(Surface):
    name = "FileOrchestrator HTTP API"
    #: more arguments of the orchestrator's instance
    extra_args: list = []

    def start(self) -> None:
        self.volume = os.path.join(self.workdir, "dune_data")
        self.http_port = free_port()
        self.site.add_instance(
            "FileOrchestrator",
            "fuzz-orchestrator",
            [
                ["--volume", self.volume],
                ["--http-interface", "127.0.0.1"],
                ["--http-port", self.http_port],
                ["--state-db", os.path.join(self.workdir, "orch.db")],
                ["--suprsync-db", os.path.join(self.workdir, "suprsync.db")],
                ["--archive-name", "dune"],
                *self.extra_args,
            ],
        )
        self.agent = self.start_agent("fuzz-orchestrator")
        self.targets = outside_targets(self.workdir, self.volume)
        self.conn = http.client.HTTPConnection("127.0.0.1", self.http_port, timeout=10)

    def get_stats(self) -> dict:
        conn = http.client.HTTPConnection("127.0.0.1", self.http_port, timeout=10)
        conn.request("GET", "/stats")
        body = json.loads(conn.getresponse().read())
        conn.close()
        return body

    def state(self) -> object:
        stats = self.get_stats()
        return {k: v for k, v in stats.items() if k in ("counts", "credits", "files")}

    def counters(self) -> dict:
        return self.get_stats()

    def body_for(self, path: str) -> bytes:
        rng = self.rng
        if rng.random() < 0.5:
            return generic_body(rng, 200_000)
        shaped = {
            "host": rng.choice(["np04", random_scalar(rng)]),
            "path": rng.choice(self.targets) if rng.random() < 0.7 else random_scalar(rng),
            "file": rng.choice(self.targets + [random_scalar(rng)]),
            "record": [hostile_number(rng), hostile_number(rng)],
            "records": [[hostile_number(rng), random_scalar(rng)]],
            "count": hostile_number(rng),
            "type": random_scalar(rng),
        }
        for key in rng.sample(sorted(shaped), rng.randrange(0, 3)):
            del shaped[key]
        return dumps(shaped)

    def request(self, method: str, path: str, body: bytes, headers: dict) -> tuple[int, bytes]:
        for attempt in range(2):
            try:
                self.conn.request(method, path, body=body, headers=headers)
                resp = self.conn.getresponse()
                return resp.status, resp.read()
            except (http.client.HTTPException, OSError):
                self.conn.close()
                self.conn = http.client.HTTPConnection("127.0.0.1", self.http_port, timeout=10)
                if attempt:
                    self.refused["connection closed by the agent"] += 1
                    return 0, b""
        return 0, b""

    def oversize(self) -> None:
        """A Content-Length of 1 GB with a few bytes sent: the answer must come before the
        body."""
        import socket

        with socket.create_connection(("127.0.0.1", self.http_port), timeout=10) as s:
            s.sendall(
                b"POST /new-file HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b'Content-Length: 1000000000\r\n\r\n{"path":'
            )
            try:
                head = s.recv(200)
            except TimeoutError:
                head = b""
        status = head.split(b" ")[1].decode() if head.count(b" ") >= 2 else "no answer"
        self.refused[f"oversize body: {status}"] += 1

    def send(self, count: int) -> None:
        rng = self.rng
        for i in range(count):
            if i % 5000 == 4999:
                self.oversize()
                self.alive_check()
                self.tick(i)
                continue
            path = rng.choice(ORCH_ENDPOINTS)
            method = rng.choice(["GET", "POST", "POST", "POST", "PUT", "DELETE"])
            body = b"" if method == "GET" and rng.random() < 0.5 else self.body_for(path)
            headers = {
                "Content-Type": rng.choice(
                    ["application/json", "text/plain", "application/x-www-form-urlencoded"]
                )
            }
            status, raw = self.request(method, path, body, headers)
            if status == 500:
                self.crashes["HTTP 500"] += 1
            if status == 200 and path not in ("/", "/stats"):
                self.accepted += 1
            reason = ""
            try:
                answer = json.loads(raw)
                if isinstance(answer, dict):
                    reason = str(answer.get("error") or answer.get("reason") or "")
            except ValueError:
                reason = "(not JSON)" if status not in (0, 200) else ""
            words = " ".join(reason.replace(":", " ").split()[:3])[:40]
            self.refused[f"{status} {words}".strip()] += 1
            self.tick(i)


# ---- OCS task parameters -------------------------------------------------------------------


class OcsSurface(Surface):
    name = "VisibilityRecorder task parameters"

    def start(self) -> None:
        self.data_dir = os.path.join(self.workdir, "vis")
        self.db = os.path.join(self.workdir, "suprsync.db")
        self.schedule_db = os.path.join(self.workdir, "schedule.db")
        self.site.add_instance(
            "VisibilityRecorder",
            "fuzz-recorder",
            [
                ["--mode", "slow"],
                ["--data-dir", self.data_dir],
                ["--db-path", self.db],
                ["--integration-time", 1],
                ["--schedule-db", self.schedule_db],
                ["--access-policy", f"override:{FUZZ_PW2},fuzz-pw3"],
            ],
        )
        self.agent = self.start_agent("fuzz-recorder")
        self.caller = WampCaller(self.site)
        self.uri = f"{self.site.hub_section['address_root']}.fuzz-recorder.ops"

    def state(self) -> object:
        """Rows of every table of the recorder's schedule, and SupRsync rows."""
        with sqlite3.connect(self.schedule_db) as con:
            tables = [
                r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")
            ]
            rows = {t: con.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] for t in tables}
        return rows, suprsync_rows(self.db)

    #: each op's parameters: the fuzzed values must reach the agent's own checks
    OP_KEYS = {
        "start": ["start_mjd", "start_mpm"],
        "stop": ["stop_mjd", "stop_mpm"],
        "sync": ["port", "timeout"],
        "ping": ["junk"],
    }

    def params(self, op: str) -> dict:
        rng = self.rng
        out = {}
        keys = self.OP_KEYS[op]
        # at least one hostile value each time: a request with every value missing or valid
        # is a real one (a sync would wait its 2 s timeout on this machine's absent server)
        hostile = rng.choice(keys)
        for key in keys:
            if key != hostile and rng.random() < 0.2:
                continue
            value = (
                hostile_number(rng) if key == hostile or rng.random() < 0.6 else random_scalar(rng)
            )
            if isinstance(value, float) and not math.isfinite(value) and rng.random() < 0.5:
                value = str(value)  # what a JSON client without NaN support sends
            out[key] = value
        if op == "sync":
            # only ever this machine, and never the clock: the fuzz must not reach out
            out.update(server="127.0.0.1", set_clock=False)
        return out

    def send(self, count: int) -> None:
        rng = self.rng
        for i in range(count):
            op = rng.choice(["start", "stop", "sync", "ping"])
            params = self.params(op)
            try:
                reply = self.caller.call(self.uri, "start", op, params, None, FUZZ_PW2)
            except Exception as e:  # refused before the agent: the serializer, the hub
                self.refused[f"not sendable: {type(e).__name__}"] += 1
                continue
            code, message = reply[0], str(reply[1])
            if crashed(message):
                self.crashes["traceback or CRASH in the answer"] += 1
            if code == 0:  # ocs.OK: the op started, so ocs's checks let it through
                self.task_outcome(op)
            else:
                self.refused[reason_of(message)] += 1
            self.tick(i)

    def task_outcome(self, op: str) -> None:
        """Wait for a started task; count it accepted if it succeeded, else refused by the
        first words of its last message (what the agent's own checks answered)."""
        try:
            done = self.caller.call(self.uri, "wait", op, None, 10, FUZZ_PW2)
        except Exception as e:
            self.refused[f"wait failed: {type(e).__name__}"] += 1
            return
        session = done[2] if len(done) > 2 else {}
        if session.get("success"):
            self.accepted += 1
            self.succeeded[op] += 1
            return
        msgs = [m for _, m in session.get("messages", []) if not m.startswith("Status is now")]
        if any(crashed(m) for m in msgs):
            self.crashes["traceback or CRASH in the task's messages"] += 1
        self.refused[f"in the task: {reason_of(' '.join(msgs[-1:])) or 'ended'}"] += 1


def crashed(message: str) -> bool:
    """An answer showing an exception the agent did not handle: ocs says ``CRASH:`` for
    one raised by a parameter check (``during param pre-processing``) or by the task."""
    return any(w in message for w in ("Traceback", "OverflowError", "CRASH"))


def reason_of(message: str) -> str:
    """A refusal message's first words, the refused value and numbers left out (ocs's
    checks name the value: ``Param 'port'=1e+308 is not of required type``), so that
    messages group by reason."""
    value = r"'=.*?(?= is not of| could not be| is not in)"
    message = re.sub(value, "'=<value>", message, count=1, flags=re.S)
    words = " ".join(message.split()[:6])
    return re.sub(r"-?\d[\d_.eE+-]*", "<n>", words)[:60]


# ---- FileOrchestrator: files on a watched volume -----------------------------------------


#: files on the volume at once; the longest a batch waits for the discovery to read it
FILES_BATCH = 2000
FILES_DWELL_S = 120.0


class FilesSurface(HttpSurface):
    name = "FileOrchestrator watched volume (files)"
    # give up on a file that never becomes HDF5 after 2 s (not 10), and scan every 5 s: a
    # folder named like a file is seen by a scan only
    extra_args = [["--read-retry-timeout", 2.0], ["--rescan-interval", 5.0]]

    def counters(self) -> dict:
        return self.get_stats()

    def garbage_files(self, count: int) -> Iterator[str]:
        rng = self.rng
        batch_dir = os.path.join(self.volume, "fuzz")
        os.makedirs(batch_dir, exist_ok=True)
        good_hdf5 = self.small_hdf5()
        for i in range(count):
            path = os.path.join(batch_dir, f"fuzz_{i:07d}.hdf5")
            kind = rng.randrange(5)
            if kind == 0:
                with open(path, "wb") as f:
                    f.write(rng.randbytes(rng.randrange(0, 5000)))
            elif kind == 1:  # truncated HDF5
                with open(path, "wb") as f:
                    f.write(good_hdf5[: rng.randrange(1, len(good_hdf5) - 1)])
            elif kind == 2:
                os.symlink(self.targets[0], path)
            elif kind == 3:
                os.mkdir(path)
            else:
                with open(path, "wb") as f:
                    f.write(b"\x89HDF\r\n\x1a\n" + rng.randbytes(100))
            yield path

    def small_hdf5(self) -> bytes:
        import h5py

        path = os.path.join(self.workdir, "template.h5")
        with h5py.File(path, "w") as f:
            f.create_dataset("x", data=list(range(100)))
        with open(path, "rb") as f:
            return f.read()

    def seen(self) -> int:
        """Files the discovery has finished with: taken, or refused (counted by reason)."""
        found = self.get_stats().get("discovery", {})
        return found.get("discovered", 0) + sum(
            v for k, v in found.items() if k.startswith("refused_") and k != "refused_memory_full"
        )

    def send(self, count: int) -> None:
        import shutil

        paths = []
        self.read_before_deletion = 0
        for i, path in enumerate(self.garbage_files(count)):
            paths.append(path)
            if len(paths) >= FILES_BATCH or i == count - 1:
                # each batch stays until the discovery has read (and refused) all of it, so
                # every file is really read; bounded: a file it never finishes is reported
                target = self.seen_before + len(paths)
                try:
                    wait_for(
                        lambda target=target: self.seen() >= target,
                        FILES_DWELL_S,
                        "the discovery to read the batch",
                        interval=0.2,
                    )
                except TimeoutError:
                    self.refused["batch deleted before discovery read all of it"] += 1
                self.seen_before = self.seen()
                for p in paths:
                    if os.path.isdir(p) and not os.path.islink(p):
                        shutil.rmtree(p)
                    else:
                        os.unlink(p)
                paths.clear()
                self.tick(i)

    def settle(self) -> None:
        read = self.seen() - self.seen_at_start
        self.notes.append(f"the discovery read {read:,} of the files before their deletion")

    def start(self) -> None:
        super().start()
        self.seen_at_start = self.seen_before = self.seen()


# ---- GWDataBuffer: HTTP ------------------------------------------------------------------

GW_ENDPOINTS = [
    "/streamdata",
    "/streamdata",
    "/streamdata",
    "/train",
    "/cleanbuf",
    "/stats",
    "/dumpbuf",
    "/desc",
    "/dspage",
    "/nope",
]


class GwSurface(HttpSurface):
    name = "GWDataBuffer HTTP API"

    def start(self) -> None:
        self.http_port = free_port()
        token_file = os.path.join(self.workdir, "tokens")
        with open(token_file, "w") as f:
            f.write("a-token-the-fuzz-never-sends\n")
        self.data_dir = os.path.join(self.workdir, "gw", "datavar")
        self.site.add_instance(
            "GWDataBuffer",
            "fuzz-gw",
            [
                ["--data-dir", self.data_dir],
                ["--archive-dir", os.path.join(self.workdir, "gw", "archive")],
                ["--state-db", os.path.join(self.workdir, "gw.db")],
                ["--http-port", self.http_port],
                ["--token-file", token_file],
                ["--max-size", 10_000_000],
            ],
        )
        self.agent = self.start_agent("fuzz-gw")
        self.conn = http.client.HTTPConnection("127.0.0.1", self.http_port, timeout=10)

    def get(self, path: str) -> dict:
        conn = http.client.HTTPConnection("127.0.0.1", self.http_port, timeout=10)
        conn.request("GET", path)
        body = json.loads(conn.getresponse().read())
        conn.close()
        return body

    def state(self) -> object:
        return self.get("/stats"), self.get("/desc"), len(os.listdir(self.data_dir))

    def counters(self) -> dict:
        return {}

    def strain_body(self) -> bytes:
        """h and t with at least one defect each time: the body is never a valid write."""
        rng = self.rng
        h = [rng.uniform(-1e-21, 1e-21) for _ in range(rng.randrange(0, 50))]
        t = [1.4e9, 1.0 / 4096]
        defect = rng.randrange(8)
        if defect == 0 or not h:
            h = []
        elif defect == 1:
            h[rng.randrange(len(h))] = rng.choice([float("nan"), float("inf"), -float("inf")])
        elif defect == 2:
            # not a number: ints and floats of any size are samples the buffer must take
            h[rng.randrange(len(h))] = rng.choice([None, "1e-21", [], {}, True, "x"])
        elif defect == 3:
            t = [1.4e9, rng.choice([0, -1.0, float("nan"), "x"])]
        elif defect == 4:
            t = rng.choice([None, [], [1.4e9], "t", {"t0": 1.4e9}, [1.4e9, "dt"]])
        elif defect == 5:
            return dumps({"h": h})
        elif defect == 6:
            h = [h]
        else:
            return dumps({"h": h, "t": t})[:-1]  # truncated
        return dumps({"h": h, "t": t})

    def body_for(self, path: str) -> bytes:
        rng = self.rng
        if path == "/streamdata" and rng.random() < 0.7:
            return self.strain_body()
        if path in ("/train", "/cleanbuf") and rng.random() < 0.5:
            return dumps(
                {
                    "user": random_scalar(rng),
                    "token": rng.choice(["", "airflow", random_scalar(rng)]),
                    "msg": random_scalar(rng),
                }
            )
        return generic_body(rng, 100_000)

    def send(self, count: int) -> None:
        rng = self.rng
        for i in range(count):
            path = rng.choice(GW_ENDPOINTS)
            method = "GET" if path in ("/stats", "/dumpbuf", "/desc", "/dspage") else "POST"
            if rng.random() < 0.1:
                method = rng.choice(["GET", "PUT", "DELETE", "POST"])
            body = b"" if method == "GET" else self.body_for(path)
            status, raw = self.request(method, path, body, {"Content-Type": "application/json"})
            if status >= 500:
                self.crashes[f"HTTP {status}"] += 1
            reason = ""
            try:
                answer = json.loads(raw)
                if isinstance(answer, dict):
                    reason = str(
                        answer.get("reason")
                        or answer.get("resp")
                        or answer.get("error")
                        or answer.get("detail")
                        or ""
                    )
            except ValueError:
                pass
            if status == 200 and path == "/streamdata" and "CREATED" in reason:
                self.accepted += 1
            self.refused[f"{status} {reason[:30]}".strip()] += 1
            self.tick(i)


# ---- DAQWriter: OCS task parameters --------------------------------------------------------


class DaqSurface(OcsSurface):
    name = "DAQWriter task parameters"

    def start(self) -> None:
        self.root = os.path.join(self.workdir, "daq")
        os.makedirs(self.root, exist_ok=True)
        self.existing = os.path.join(self.root, "existing.h5")
        with open(self.existing, "wb") as f:
            f.write(b"not overwritten")
        self.outcomes = os.path.join(self.workdir, "daq.db")
        self.site.add_instance(
            "DAQWriter",
            "fuzz-daq",
            [
                ["--stream-url", f"tcp://127.0.0.1:{free_port()}"],
                ["--data-root", self.root],
                ["--state-db", self.outcomes],
                ["--suprsync-db", "none"],
                ["--http-port", free_port()],
                ["--access-policy", f"override:{FUZZ_PW2},fuzz-pw3"],
            ],
        )
        self.agent = self.start_agent("fuzz-daq")
        self.caller = WampCaller(self.site)
        self.uri = f"{self.site.hub_section['address_root']}.fuzz-daq.ops"
        self.targets = outside_targets(self.workdir, self.root) + [
            self.existing,
            os.path.join(self.root, "no", "such", "dir", "f.h5"),
            self.root,
        ]

    def counters(self) -> dict:
        """The writer's own counters (``refused`` counts every request its checks refuse)."""
        self.caller.call(self.uri, "start", "status", {}, None, FUZZ_PW2)
        done = self.caller.call(self.uri, "wait", "status", None, 10, FUZZ_PW2)
        return {"counters": (done[2].get("data") or {}).get("counters", {})}

    def state(self) -> object:
        files = sorted(os.listdir(self.root))
        with sqlite3.connect(self.outcomes) as con:
            tables = [
                r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")
            ]
            rows = {t: con.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] for t in tables}
        return files, rows

    def params(self, op: str) -> dict:
        rng = self.rng
        out = {
            "n_images": hostile_number(rng) if rng.random() < 0.7 else random_scalar(rng),
            "output_file": rng.choice(self.targets) if rng.random() < 0.8 else random_scalar(rng),
        }
        if rng.random() < 0.5:
            out["timeout"] = hostile_number(rng)
        if rng.random() < 0.3:
            out["run_id"] = random_json(rng)
        for key in rng.sample(sorted(out), rng.randrange(0, 2)):
            del out[key]
        return out

    def send(self, count: int) -> None:
        for i in range(count):
            params = self.params("write")
            try:
                reply = self.caller.call(self.uri, "start", "write", params, None, FUZZ_PW2)
            except Exception as e:
                self.refused[f"not sendable: {type(e).__name__}"] += 1
                continue
            code, message = reply[0], str(reply[1])
            if crashed(message):
                self.crashes["traceback or CRASH in the answer"] += 1
            if code == 0:  # the task started: its checks inside refuse the request
                self.task_outcome("write")
            else:
                self.refused[reason_of(message)] += 1
            self.tick(i)


SURFACES = {
    "udp": UdpSurface,
    "http": HttpSurface,
    "ocs": OcsSurface,
    "files": FilesSurface,
    "gw": GwSurface,
    "daq": DaqSurface,
}


def run_surface(key: str, site: LocalSite, tmp: str, count: int, seed: int) -> list[str]:
    surface = SURFACES[key](site, os.path.join(tmp, key), random.Random(seed))
    os.makedirs(surface.workdir, exist_ok=True)
    surface.start()
    surface.warmup = max(1, int(count * WARMUP_SHARE))
    pid = surface.agent.proc.pid
    state0, counters0, rss0, tb0 = surface.state(), surface.counters(), rss_kib(pid), 0
    tb0 = tracebacks(surface.agent)
    t0 = time.monotonic()
    surface.send(count)
    surface.settle()
    seconds = time.monotonic() - t0
    surface.alive_check()
    new_tracebacks = tracebacks(surface.agent) - tb0
    if new_tracebacks:
        surface.crashes["tracebacks in the log"] += new_tracebacks
    state1 = surface.state() if surface.agent.alive() else "agent gone"
    counters1 = surface.counters() if surface.agent.alive() else {}
    rss1 = rss_kib(pid) if surface.agent.alive() else 0
    if surface.agent.alive():
        surface.snapshot()
    rss_warm = surface.rss_warm or rss1
    own = counter_diff(
        counters0,
        counters1,
        lambda k: any(
            w in k for w in ("reject", "refus", "bad", "error", "invalid", "outside", "denied")
        ),
    )
    refused = dict(surface.refused)
    for k, v in own.items():
        refused[f"agent counter {k}"] = v
    top = sorted(refused.items(), key=lambda kv: -kv[1])
    shown = "; ".join(f"{k}: {v:,}" for k, v in top[:8])
    if len(top) > 8:
        shown += f"; (+{len(top) - 8} more reasons)"
    every = "; ".join(f"{k}: {v:,}" for k, v in top[:30])
    more = f"; (+{len(top) - 30} more reasons)" if len(top) > 30 else ""
    print(f"[{key}] {count:,} sent in {seconds:.0f} s; refused {every}{more}", flush=True)
    print(
        f"[{key}] accepted {surface.accepted:,}; crashes {dict(surface.crashes)}; "
        f"state {state0} -> {state1}; "
        f"RSS {mib(rss0)} -> {mib(rss_warm)} after {surface.warmup:,} -> {mib(rss1)} MiB "
        f"(after the warm-up: {(rss1 - rss_warm) / 1024:+.1f} MiB)",
        flush=True,
    )
    if isinstance(surface, OcsSurface):
        answered = sum(surface.refused.values()) + surface.accepted
        print(
            f"[{key}] answered {answered:,} of {count:,} calls; succeeded "
            f"{dict(surface.succeeded)}",
            flush=True,
        )
        in_task = sum(v for k, v in surface.refused.items() if k.startswith("in the task"))
        at_call = answered - in_task - surface.accepted
        print(
            f"[{key}] refused at the call (ocs's parameter checks): {at_call:,}; started and "
            f"refused by the agent's own checks: {in_task:,}",
            flush=True,
        )
    for note in surface.notes:
        print(f"[{key}] {note}", flush=True)
    if len(surface.snapshots) >= 2:
        print_growth(key, surface.snapshots[0], surface.snapshots[-1])
    surface.agent.stop()
    site.agents.remove(surface.agent)
    return [
        surface.name,
        f"{count:,}",
        shown or "none",
        str(sum(surface.crashes.values())),
        "0" if state0 == state1 else f"changed: {state0} -> {state1}",
        f"{mib(rss0)} -> {mib(rss_warm)} -> {mib(rss1)} MiB",
        f"{seconds:.0f} s",
    ]


def mib(kib: int) -> str:
    return f"{kib / 1024:.0f}"


def print_growth(key: str, first: str, last: str, lines: int = 12) -> None:
    """The source lines whose traced memory grew most from one snapshot to the other."""
    import tracemalloc

    before, after = tracemalloc.Snapshot.load(first), tracemalloc.Snapshot.load(last)
    print(f"[{key}] tracemalloc, end of warm-up -> end (snapshots {first}, {last}):")
    for stat in after.compare_to(before, "lineno")[:lines]:
        print(f"[{key}]   {stat}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=100_000)
    parser.add_argument("--surfaces", default=",".join(SURFACES))
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--write-docs", action="store_true")
    parser.add_argument("--memtrace", metavar="DIR", help="run the agents under tracemalloc")
    args = parser.parse_args()
    global MEMTRACE_DIR
    MEMTRACE_DIR = os.path.abspath(args.memtrace) if args.memtrace else None
    rows = []
    with tempfile.TemporaryDirectory() as tmp, LocalSite(os.path.join(tmp, "site")) as site:
        for key in args.surfaces.split(","):
            try:
                rows.append(run_surface(key, site, tmp, args.count, args.seed))
            except Exception as e:
                rows.append(
                    [key, "-", f"failed: {type(e).__name__}: {e}"[:150], "-", "-", "-", "-"]
                )
                for agent in list(site.agents):
                    agent.kill()
                    site.agents.remove(agent)
    header = [
        "surface",
        "sent",
        "refused by reason",
        "crashes",
        "state changes",
        "RSS MiB: start, after warm-up, end",
        "time",
    ]
    emit(
        rst_table(header, rows, "Generated hostile inputs to live agents on a real hub."),
        DOCS if args.write_docs else None,
    )


if __name__ == "__main__":
    main()
