"""``opsims replay RUN``: a run's journal fed through the same native pipeline as the
live daemon (docs/journal.md). Every detector read goes into a new
:class:`~opsims._native.EventCore` in order with its arrival time, so the cubes, the
counters and the clock model come out exactly as the daemon built them; the digest the
daemon recorded when the run ended (``live_digest``) is the check.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import numpy.typing as npt

from opsims._native import EventCore, JournalReader

RUN_FILE = "run.json"
JOURNAL_KEYS = ("blocks", "closed", "recovered", "corrupt", "torn_tail", "gaps")
#: A journal's potentiostat block: the samples as the link thread queued them
#: (docs/journal.md; written by rust/core/src/acquisition/recording.rs).
JOURNAL_SAMPLE_DTYPE = np.dtype(
    [("host_ns", "<i8"), ("arrival_ns", "<i8"), ("tick", "<u8"), ("ewe_v", "<f8"),
     ("current_a", "<f8"), ("mode", "u1"), ("flags", "u1")]
)  # fmt: skip


def names_a_run(path: Path) -> bool:
    """A run directory, or what can only be a run id (no such file, no suffix)."""
    return path.is_dir() or (not path.exists() and not path.suffix)


def find_run(run: str | Path, state_dir: str | Path | None = None) -> Path:
    """A run directory: ``run`` itself if it is one, else ``<state_dir>/runs/<run>``
    (``state_dir``: the argument, ``$OPSIMS_STATE_DIR``, or ``state``)."""
    direct = Path(run)
    if (direct / RUN_FILE).is_file():
        return direct
    base = Path(state_dir or os.environ.get("OPSIMS_STATE_DIR") or "state")
    candidate = base / "runs" / str(run)
    if (candidate / RUN_FILE).is_file():
        return candidate
    raise FileNotFoundError(
        f"no run {str(run)!r}: neither {direct} nor {candidate} has a {RUN_FILE}"
    )


def run_info(run_dir: Path) -> dict[str, Any]:
    info: dict[str, Any] = json.loads((run_dir / RUN_FILE).read_text())
    return info


def new_core(info: dict[str, Any], run_dir: Path) -> EventCore:
    """The run's pipeline, empty: as the daemon's was when the run began."""
    engine = info.get("engine")
    if not isinstance(engine, dict):
        raise ValueError(f"{run_dir / RUN_FILE}: no 'engine' table to rebuild the pipeline from")
    # JSON gave lists where the constructor takes tuples.
    polarities = [tuple(p) for p in engine["polarities"]]
    return EventCore(**{**engine, "polarities": polarities})


@dataclass
class Replay:
    run_dir: Path
    info: dict[str, Any]
    core: EventCore
    reads: int
    bytes: int
    samples: int
    report: dict[str, Any]
    #: The daemon's digest at the end of the run; None after a crash.
    live_digest: dict[str, Any] | None
    #: The rebuilt pipeline's (`EventCore.digest`).
    digest: dict[str, Any]

    @property
    def identical(self) -> bool | None:
        """Whether the rebuilt cubes and counters are the live ones (None: no digest)."""
        return None if self.live_digest is None else self.digest == self.live_digest

    def cubes(self) -> dict[str, npt.NDArray[np.uint32]]:
        return {name: self.core.cube(name) for name in self.core.species}

    def summary(self) -> dict[str, Any]:
        digest = self.digest
        return {
            "run_id": self.info.get("run_id"),
            "state": self.info.get("state"),
            "reads": self.reads,
            "bytes": self.bytes,
            "samples": self.samples,
            "n_slices": digest["n_slices"],
            "counters": {k: digest["counters"][k] for k in ("events", "binned", "link_frames")},
            "identical": self.identical,
            "journal": {k: self.report.get(k) for k in JOURNAL_KEYS},
        }


def replay(run_dir: Path) -> Replay:
    """Rebuild a run's cubes from its journal."""
    info = run_info(run_dir)
    core = new_core(info, run_dir)
    reader = JournalReader(run_dir / "journal")
    reads = nbytes = samples = 0
    for _seq, host_ns, frame in reader.frames():
        core.feed_link(frame, host_ns)
        reads += 1
        nbytes += len(frame)
    live: dict[str, Any] | None = None
    blocks = reader.blocks()
    for kind, _seq, _host_ns, payload in blocks:
        if kind == "potentiostat":
            samples += len(payload) // JOURNAL_SAMPLE_DTYPE.itemsize
        elif kind == "note":
            note = msgpack.unpackb(payload)
            if note.get("type") == "live_digest":
                live = note.get("digest")
    report = blocks.report()
    return Replay(run_dir, info, core, reads, nbytes, samples, report, live, core.digest())
