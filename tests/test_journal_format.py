"""The run journal from Python (docs/journal.md): round trips, the on-disk layout read
with struct alone, corruption reports, recovery, refusal beyond the queue bound."""

from __future__ import annotations

import json
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from opsims import (
    JournalError,
    JournalFullError,
    JournalReader,
    JournalWriter,
    encode_link_frame,
    recover_journal,
)

SEGMENT = struct.Struct("<8sHHIq36sI")
BLOCK = struct.Struct("<4sBBBBQqIIIIII")


def link_frames(n: int) -> list[bytes]:
    """Real link frames (80-byte header + records) with varied record counts."""
    records = (np.arange(n * n, dtype=np.uint64) * 2_654_435_761 % 2**32).astype(np.uint32)
    return [
        encode_link_frame(i, 0x00010307, records[i * n : i * n + i], tick_fs=80_000_000)
        for i in range(n)
    ]


def test_round_trip_every_kind(tmp_path: Path) -> None:
    run = tmp_path / "run"
    frames = link_frames(50)
    sent = []
    with JournalWriter(run, run_id="run-1", flush_interval_s=0.01) as w:
        for i, frame in enumerate(frames):
            w.append_frame(1_000 + i, frame)
            if i % 10 == 0:
                for kind in ("potentiostat", "clock", "safety", "control", "step", "note"):
                    payload = json.dumps({"kind": kind, "i": i}).encode()
                    w.append(kind, -i, payload)
                    sent.append((kind, -i, payload))
    reader = JournalReader(run)
    got = list(reader.frames())
    assert [f for _, _, f in got] == frames
    assert [ns for _, ns, _ in got] == [1_000 + i for i in range(len(frames))]
    opaque = [
        (k, ns, p) for k, _, ns, p in reader.blocks() if k not in ("detector_frames", "closed")
    ]
    assert opaque == sent
    report = reader.report()
    assert report["closed"] and report["run_id"] == "run-1"
    assert report["frames"] == len(frames)
    assert report["corrupt"] == [] and report["gaps"] == [] and report["torn_tail"] is None
    seqs = [seq for _, seq, _, _ in reader.blocks()]
    assert seqs == list(range(len(seqs)))


def test_layout_matches_the_documented_format(tmp_path: Path) -> None:
    """Every header field at its documented offset, both CRC-32s as zlib computes them."""
    run = tmp_path / "run"
    with JournalWriter(run, run_id="layout") as w:
        w.append("note", 42, b"hello")
    data = (run / "segment-000000.ojs").read_bytes()
    magic, version, hlen, index, _created, run_id, crc = SEGMENT.unpack_from(data)
    assert (magic, version, hlen, index) == (b"OPSJRNL\0", 1, 64, 0)
    assert run_id.rstrip(b"\0") == b"layout"
    assert crc == zlib.crc32(data[:60])
    at = 64
    fields = BLOCK.unpack_from(data, at)
    magic, version, kind, codec, flags, seq, host_ns, raw, stored, items, _, hcrc, crc = fields
    assert (magic, version, kind, codec, flags) == (b"OPJB", 1, 7, 0, 0)
    assert (seq, host_ns, raw, stored, items) == (0, 42, 5, 5, 1)
    assert hcrc == zlib.crc32(data[at : at + 40])
    assert crc == zlib.crc32(data[at + 48 : at + 53], zlib.crc32(data[at : at + 44]))
    assert data[at + 48 : at + 53] == b"hello"
    closed = BLOCK.unpack_from(data, at + 53)
    assert closed[2] == 126 and closed[5] == 1
    assert len(data) == at + 53 + 48 + 24


def test_corruption_is_reported_and_skipped(tmp_path: Path) -> None:
    run = tmp_path / "run"
    with JournalWriter(run) as w:
        for i in range(5):
            w.append("step", i, os.urandom(100))
    path = run / "segment-000000.ojs"
    data = bytearray(path.read_bytes())
    victim = 64 + 2 * (48 + 100)
    data[victim + 60] ^= 1
    path.write_bytes(bytes(data))
    reader = JournalReader(run)
    assert [seq for _, seq, _, _ in reader.blocks()] == [0, 1, 3, 4, 5]
    report = reader.report()
    [span] = report["corrupt"]
    assert (span["segment"], span["offset"], span["len"]) == (0, victim, 148)
    assert "CRC" in span["reason"]
    assert report["gaps"] == [(2, 3)]


def test_recover_cuts_a_torn_tail(tmp_path: Path) -> None:
    run = tmp_path / "run"
    w = JournalWriter(run)
    w.append("potentiostat", 7, b"sample")
    del w  # left open, as after a crash
    path = run / "segment-000000.ojs"
    good = path.stat().st_size
    with path.open("ab") as f:
        f.write(b"OPJB" + bytes(30))
    assert JournalReader(run).report()["torn_tail"]["offset"] == good
    r = recover_journal(run)
    assert (r["blocks"], r["last_seq"], r["last_host_ns"], r["bytes_cut"]) == (1, 0, 7, 34)
    assert r["marker_written"] and not r["was_closed"]
    again = recover_journal(run)
    assert again["bytes_cut"] == 0 and not again["marker_written"]
    report = JournalReader(run).report()
    assert report["recovered"] and report["torn_tail"] is None


def test_full_queue_refuses(tmp_path: Path) -> None:
    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full")
    run = tmp_path / "run"
    w = JournalWriter(run, segment_bytes=4096, queue_bytes=10_000, retry_interval_s=0.01)
    (run / "segment-000001.ojs").symlink_to("/dev/full")
    refused = 0
    for i in range(60):
        try:
            w.append("note", i, os.urandom(1000))
        except JournalFullError:
            refused += 1
    status = w.status()
    assert refused > 0 and status["refused_appends"] == refused
    assert status["queued_bytes"] <= 10_000
    (run / "segment-000001.ojs").unlink()
    final = w.close()
    assert final["closed"] and final["queued_bytes"] == 0
    assert JournalReader(run).report()["refused_appends"] == refused


def test_bad_use_raises(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "other").write_text("x")
    with pytest.raises(JournalError, match="not empty"):
        JournalWriter(run)
    with JournalWriter(tmp_path / "ok") as w, pytest.raises(JournalError, match="unknown"):
        w.append("closed", 0, b"")
