"""The soak's journal check (benchmarks/soak.py), segment by segment while the run goes
on, so that an hour at 10 M events/s (about 90 GB of journal) needs a few segments of
disk, not the whole run:

    python benchmarks/soak_journal.py RUN_DIR OUT_JSON [--keep]

Each segment the daemon has finished (a later one exists, or the run has closed) is read
once through a hard link of its own: its detector reads go, in order and with their
arrival times, into a replay of the run's pipeline (`opsims.replay.new_core`, what
`opsims replay` does over the whole journal) and through a walk of the link frame
headers (sequence numbers and record counts); its potentiostat samples are kept, and
the daemon's live digest is taken from its notes. Then the segment is deleted (``--keep``
keeps it). Block sequence numbers must run on from one segment to the next, segment
indices too, and only the run's last block may close it.

When the run has left ``recording`` (or on SIGTERM, the daemon gone) the remaining
segments follow, and ``OUT_JSON`` gets the walk, the merged reader reports and the
replay's verdict, with the samples beside it (``.npy``).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import sys
import time
from collections import Counter
from pathlib import Path
from types import FrameType
from typing import Any

import msgpack
import numpy as np
import numpy.typing as npt
from opsims import JournalReader
from opsims.replay import JOURNAL_SAMPLE_DTYPE, new_core, run_info

#: Link frame header (docs/detector-link.md).
FRAME_MAGIC, FRAME_HEADER = b"OPSD", 80
SEGMENT_NAME = re.compile(r"^segment-(\d{6,})\.ojs$")


class FrameWalker:
    """Walks a detector link byte stream header by header (docs/detector-link.md):
    sequence numbers and record counts, no decoding."""

    def __init__(self) -> None:
        self.seqs: list[int] = []
        self.records = 0
        self.bytes = 0
        self.bad: str | None = None
        self._skip = 0
        self._head = b""

    def push(self, data: memoryview) -> None:
        i, n = 0, len(data)
        self.bytes += n
        while i < n and self.bad is None:
            if self._skip:
                take = min(self._skip, n - i)
                self._skip -= take
                i += take
                continue
            need = FRAME_HEADER - len(self._head)
            piece = bytes(data[i : i + need])
            self._head += piece
            i += len(piece)
            if len(self._head) < FRAME_HEADER:
                return
            head, self._head = self._head, b""
            if head[:4] != FRAME_MAGIC:
                self.bad = f"no frame header after frame {len(self.seqs)}"
                return
            self.seqs.append(int.from_bytes(head[8:16], "little"))
            count = int.from_bytes(head[20:24], "little")
            self.records += count
            self._skip = 4 * count

    def summary(self) -> dict[str, Any]:
        seqs = np.array(self.seqs, np.int64)
        steps = np.diff(seqs)
        at = np.flatnonzero(steps != 1)
        return {
            "frames": int(seqs.size),
            "first_seq": int(seqs[0]) if seqs.size else None,
            "last_seq": int(seqs[-1]) if seqs.size else None,
            "holes": [(int(seqs[i] + 1), int(steps[i] - 1)) for i in at],  # (first lost, n)
            "records": self.records,
            "raw_frame_bytes": self.bytes,
            "walk_error": self.bad,
        }


def segments(journal: Path) -> list[tuple[int, Path]]:
    found = []
    for path in journal.iterdir():
        m = SEGMENT_NAME.match(path.name)
        if m:
            found.append((int(m.group(1)), path))
    return sorted(found)


class SegmentCheck:
    """The running state of the check: the replay, the walk, the samples, the merged
    report."""

    def __init__(self, run_dir: Path, scratch: Path) -> None:
        self.core = new_core(run_info(run_dir), run_dir)
        self.scratch = scratch
        self.walker = FrameWalker()
        self.samples: list[npt.NDArray[Any]] = []
        self.kinds: Counter[str] = Counter()
        self.totals: Counter[str] = Counter()
        self.reads = 0
        self.read_bytes = 0
        self.next_index = 0
        self.next_seq = 0
        self.run_id: str | None = None
        self.closed = False
        self.recovered = False
        self.refused_appends = 0
        self.corrupt: list[Any] = []
        self.torn_tails: list[Any] = []
        self.gaps: list[tuple[int, int]] = []
        self.missing_segments: list[int] = []
        self.live_digest: dict[str, Any] | None = None
        self.checked = 0

    def check(self, index: int, path: Path) -> None:
        if index != self.next_index:
            self.missing_segments.extend(range(self.next_index, index))
        self.next_index = index + 1
        link = self.scratch / path.name
        os.link(path, link)
        try:
            reader = JournalReader(self.scratch)
            for _seq, host_ns, frame in reader.frames():
                self.core.feed_link(frame, host_ns)
                self.walker.push(memoryview(frame))
                self.reads += 1
                self.read_bytes += len(frame)
            blocks = reader.blocks()
            for kind, _seq, _host_ns, payload in blocks:
                self.kinds[kind] += 1
                if kind == "potentiostat":
                    self.samples.append(np.frombuffer(payload, JOURNAL_SAMPLE_DTYPE))
                elif kind == "note":
                    note = msgpack.unpackb(payload)
                    if note.get("type") == "live_digest":
                        self.live_digest = note.get("digest")
            report = blocks.report()
        finally:
            link.unlink()
        self._merge(index, report)
        self.checked += 1

    def _merge(self, index: int, r: dict[str, Any]) -> None:
        for k in ("blocks", "frames", "raw_bytes", "stored_bytes"):
            self.totals[k] += int(r.get(k) or 0)
        if self.run_id is None:
            self.run_id = r.get("run_id")
        elif r.get("run_id") not in (None, self.run_id):
            self.corrupt.append(f"segment {index} of run {r.get('run_id')!r}")
        self.corrupt.extend(r.get("corrupt") or [])
        if r.get("torn_tail"):
            self.torn_tails.append(r["torn_tail"])
        first, last = r.get("first_seq"), r.get("last_seq")
        # The reader expects a journal to begin at block 0: a later segment's first
        # block is a "gap" to it, and the check is that it continues the one before.
        gaps = [tuple(g) for g in r.get("gaps") or []]
        if first is not None and gaps and gaps[0] == (0, first):
            gaps = gaps[1:]
        if first is not None and first != self.next_seq:
            gaps.insert(0, (self.next_seq, first))
        self.gaps.extend((int(a), int(b)) for a, b in gaps)
        if last is not None:
            self.next_seq = int(last) + 1
            # Only the run's last block may close it: a closed block followed by more
            # would show as closed False at the end.
            self.closed = bool(r.get("closed"))
            self.recovered = bool(r.get("recovered"))
        self.refused_appends += int(r.get("refused_appends") or 0)

    def result(self) -> dict[str, Any]:
        digest = self.core.digest()
        live = self.live_digest
        return {
            **self.walker.summary(),
            "blocks": dict(self.kinds),
            "segments_checked": self.checked,
            "report": {
                **{k: self.totals[k] for k in ("blocks", "frames", "raw_bytes", "stored_bytes")},
                "closed": self.closed,
                "recovered": self.recovered,
                "corrupt": self.corrupt,
                "torn_tail": self.torn_tails or None,
                "gaps": self.gaps,
                "refused_appends": self.refused_appends,
                "missing_segments": self.missing_segments,
            },
            "replay": {
                "identical": None if live is None else digest == live,
                "reads": self.reads,
                "bytes": self.read_bytes,
                "n_slices": digest.get("n_slices"),
            },
            "live_digest_found": live is not None,
        }


def follow(run_dir: Path, out: Path, keep: bool, stop: list[bool], poll_s: float = 1.0) -> int:
    journal = run_dir / "journal"
    scratch = out.parent / f"{out.stem}-segment"
    scratch.mkdir(parents=True, exist_ok=True)
    check = SegmentCheck(run_dir, scratch)
    most_on_disk = most_waiting = 0
    t0 = time.monotonic()
    while True:
        # The state first: once the run has closed, every segment listed after is final.
        over = stop[0] or run_info(run_dir).get("state") != "recording"
        on_disk = segments(journal)
        most_on_disk = max(most_on_disk, len(on_disk))
        found = [s for s in on_disk if s[0] >= check.next_index]
        ready = found if over else found[:-1]
        most_waiting = max(most_waiting, len(ready))
        for index, path in ready:
            check.check(index, path)
            if not keep:
                path.unlink()
        if over:
            break
        time.sleep(poll_s)
    result = check.result() | {
        "most_segments_on_disk": most_on_disk,
        "most_segments_waiting": most_waiting,
        "check_s": time.monotonic() - t0,
        "kept": keep,
    }
    samples = np.concatenate(check.samples) if check.samples else np.zeros(0, JOURNAL_SAMPLE_DTYPE)
    np.save(out.with_suffix(".npy"), samples)
    out.write_text(json.dumps(result, default=str))
    scratch.rmdir()
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("run_dir", type=Path)
    p.add_argument("out", type=Path, help="the result (JSON; the samples beside it, .npy)")
    p.add_argument("--keep", action="store_true", help="keep the segments once checked")
    args = p.parse_args(argv)
    stop = [False]

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop[0] = True

    signal.signal(signal.SIGTERM, on_signal)
    # Behind the daemon and the simulator: this may lag, they may not.
    os.nice(10)
    return follow(args.run_dir, args.out, args.keep, stop)


if __name__ == "__main__":
    sys.exit(main())
