"""What an HDF5 file of the DUNE hdf5libs layout holds: run number and record ids (h5py).

Top-level groups are records, ``TriggerRecord<number>.<sequence>`` or ``TimeSlice<number>``,
zero-padded to widths a site configures: the names are parsed with a pattern, not fixed
widths. The run number is the ``run_number`` file attribute (else ``run<digits>`` in the file
name). Reading blocks: call from a worker thread.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

from .state import TIME_SLICE, TRIGGER_RECORD

RECORD_GROUP = re.compile(r"^(?:(TriggerRecord)(\d+)(?:\.(\d+))?|(TimeSlice)(\d+))$")
RUN_IN_NAME = re.compile(r"run_?(\d+)", re.IGNORECASE)


class LayoutError(ValueError):
    """The file is readable but is not a DUNE record file (no records, no run number)."""


@dataclass
class FileLayout:
    path: str
    run_number: int
    #: record type -> sorted (record number, sequence number)
    records: dict[str, list[tuple[int, int]]] = field(default_factory=dict)
    attrs: dict = field(default_factory=dict)

    @property
    def created(self) -> float | None:
        """The file's ``creation_timestamp`` attribute (ms) in seconds, if it has one."""
        value = self.attrs.get("creation_timestamp")
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
            return value / 1000.0
        return None

    @property
    def count(self) -> int:
        return sum(len(v) for v in self.records.values())


def parse_group_name(name: str) -> tuple[str, int, int] | None:
    """``TriggerRecord000012.0001`` -> ('TriggerRecord', 12, 1); ``TimeSlice07`` ->
    ('TimeSlice', 7, 0); anything else -> None."""
    m = RECORD_GROUP.match(name)
    if m is None:
        return None
    if m.group(1):
        return TRIGGER_RECORD, int(m.group(2)), int(m.group(3) or 0)
    return TIME_SLICE, int(m.group(5)), 0


def _plain(value):
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    return value


def read_layout(path: str) -> FileLayout:
    """Read the record ids and run number of one file.

    Raises:
        OSError: the file cannot be opened (missing, still locked by its writer, truncated).
        LayoutError: the file opens but holds no record groups or no run number.
    """
    import h5py

    with h5py.File(path, "r") as f:
        attrs = {k: _plain(v) for k, v in f.attrs.items()}
        records: dict[str, list[tuple[int, int]]] = {}
        for name in f.keys():
            parsed = parse_group_name(name)
            if parsed is not None:
                records.setdefault(parsed[0], []).append(parsed[1:])
    if not records:
        raise LayoutError(f"{path}: no TriggerRecord or TimeSlice groups")
    run = attrs.get("run_number")
    if not isinstance(run, int) or isinstance(run, bool) or run < 0:
        m = RUN_IN_NAME.search(os.path.basename(path))
        if m is None:
            raise LayoutError(f"{path}: no run_number attribute and no run number in the name")
        run = int(m.group(1))
    for ids in records.values():
        ids.sort()
    return FileLayout(path, run, records, attrs)
