"""Speed of the simulated detector front-end: events/s generated as link frames and sent
over a real loopback TCP socket (a reader thread drains it), for the paper's 9 species on
a 256 x 256 raster in MultiHarp T3 records. Compared in the same run with a vectorised
numpy generator of the same stream (Poisson counts per pixel, uniform times, markers and
records from tests/support/tttr_synth.py, frames with zlib's CRC-32).

    make bench          # or: pytest benchmarks/test_sim_emitter_speed.py --benchmark-only -s

Prints events/s of both and the ratio; the target is 20 M events/s for the emitter.
OPSIMS_BENCH_FRAMES sets the number of raster frames (about 1 M events each).
"""

from __future__ import annotations

import os
import socket
import struct
import threading
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from opsims import DetectorEmitter
from support.tttr_synth import (
    REC_MULTIHARP_T3,
    Polarity,
    RasterSpec,
    encode_t3_generic,
    marker_times,
)

FRAMES = int(os.environ.get("OPSIMS_BENCH_FRAMES", 20))
TICK_S = 80e-9
SPEC = RasterSpec(
    nx=256, ny=256, dwell_ticks=64, line_settle_ticks=32, flyback_ticks=128,
    frame_gap_ticks=0, frames=1, frame_mask=4, line_start_mask=1, line_stop_mask=2,
    polarities=(
        Polarity((0,), ("Na+", "Si+", "Zr+", "ZrO+")),
        Polarity((1,), ("O-", "P-", "SiO2-", "PO2-", "ZrO2-")),
    ),
)  # fmt: skip
#: Mean counts per pixel and polarity: 8, i.e. about 1 M events per frame.
MEAN = 8.0
STEPS_PER_FRAME = 16  # emit_until calls per frame: 16 lines each
HEADER = struct.Struct("<4sHHQIIQQQQQIBBBB4s")
RESULTS: dict[str, float] = {}


def rate_maps() -> npt.NDArray[np.float64]:
    """Counts/s per species and pixel: smooth structure around the mean."""
    y, x = np.mgrid[0 : SPEC.ny, 0 : SPEC.nx] / SPEC.nx
    maps = [1 + 0.5 * np.sin(6 * x + s) * np.cos(4 * y - s) for s in range(SPEC.n_species)]
    return np.array(maps) * MEAN / (SPEC.dwell_ticks * TICK_S)


@contextmanager
def loopback() -> Iterator[tuple[socket.socket, dict[str, int]]]:
    """A connected TCP pair on 127.0.0.1; a thread drains and counts the far end."""
    server = socket.create_server(("127.0.0.1", 0))
    sender = socket.create_connection(server.getsockname())
    receiver, _ = server.accept()
    server.close()
    got = {"bytes": 0}

    def drain() -> None:
        buf = bytearray(1 << 22)
        while n := receiver.recv_into(buf):
            got["bytes"] += n

    reader = threading.Thread(target=drain)
    reader.start()
    try:
        yield sender, got
    finally:
        sender.shutdown(socket.SHUT_WR)
        reader.join()
        sender.close()
        receiver.close()


def native_stream(rates: npt.NDArray[np.float64]) -> tuple[int, int, int]:
    """(events, bytes sent, bytes received) of FRAMES frames from the emitter."""
    polarities = [(f"p{i}", list(p.channels), list(p.species), p.switching, p.settle_ticks)
                  for i, p in enumerate(SPEC.polarities)]  # fmt: skip
    em = DetectorEmitter(
        REC_MULTIHARP_T3, TICK_S, SPEC.nx, SPEC.ny, SPEC.dwell_ticks, polarities,
        line_settle_ticks=SPEC.line_settle_ticks, flyback_ticks=SPEC.flyback_ticks,
        frame_marker=4, line_start_marker=1, line_stop_marker=2, seed=1,
    )  # fmt: skip
    em.set_rates(rates)
    step = em.frame_period_ticks // STEPS_PER_FRAME
    sent = 0
    with loopback() as (sock, got):
        for k in range(1, FRAMES * STEPS_PER_FRAME + 1):
            for frame in em.emit_until(k * step):
                sock.sendall(frame)
                sent += len(frame)
    return em.truth_counters()["events"], sent, got["bytes"]


def numpy_frames(
    records: npt.NDArray[np.uint32], sequence: int, base: int, position: tuple[int, int]
) -> tuple[list[bytes], int, tuple[int, int]]:
    """Cut records into link frames of at most 65536 records, as the emitter does, with
    the overflow base and raster position before each frame's first record."""
    special = (records >> 31) == 1
    ch = (records >> 25) & 63
    ovf = special & (ch == 63)
    count = np.where(ovf, np.maximum(records & 1023, 1), 0).astype(np.int64)
    bases = np.concatenate([[0], np.cumsum(count)]) * 1024 + base
    is_frame = special & ~ovf & ((ch & 4) != 0)
    is_start = special & ~ovf & ((ch & 1) != 0)
    frames_seen = np.concatenate([[0], np.cumsum(is_frame)]) + position[0]
    starts = np.concatenate([[0], np.cumsum(is_start)])
    idx = np.arange(records.size)
    last_frame = np.concatenate([[-1], np.maximum.accumulate(np.where(is_frame, idx, -1))])

    def at(c: int) -> tuple[int, int, int]:
        """Base, frame markers and line starts since the last, before record c."""
        lf = int(last_frame[c])
        lines = int(starts[c] - starts[lf]) if lf >= 0 else position[1] + int(starts[c])
        return int(bases[c]), int(frames_seen[c]), lines

    out = []
    for c in range(0, max(records.size, 1), 65536):
        b, fm, ls = at(c)
        head = HEADER.pack(
            b"OPSD", 1, 80, sequence, REC_MULTIHARP_T3, min(65536, records.size - c),
            round(TICK_S * 1e15), 1 << 10, b, 0, fm, ls, 4, 1, 2, 0, b"\0" * 4,
        )  # fmt: skip
        payload = records[c : c + 65536].astype("<u4").tobytes()
        crc = zlib.crc32(payload, zlib.crc32(head))
        out.append(head + struct.pack("<I", crc) + payload)
        sequence += 1
    _, fm, ls = at(records.size)
    return out, sequence, (fm, ls)


def numpy_stream(rates: npt.NDArray[np.float64]) -> tuple[int, int, int]:
    """The same stream built with numpy: per frame, Poisson counts per pixel at uniform
    ticks in the pixel, merged with the frame's markers and encoded as generic T3."""
    rng = np.random.default_rng(1)
    nx, ny, dwell = SPEC.nx, SPEC.ny, SPEC.dwell_ticks
    period = SPEC.line_period * ny
    pixel0 = (np.arange(ny)[:, None] * SPEC.line_period + SPEC.line_settle_ticks
              + np.arange(nx)[None, :] * dwell).ravel()  # fmt: skip
    means = rates * (dwell * TICK_S)
    offsets = [0, len(SPEC.polarities[0].species)]
    events = sent = sequence = origin = 0
    position = (0, 0)
    with loopback() as (sock, got):
        for f in range(FRAMES):
            start = f * period
            ticks, chans = [], []
            for p, pol in enumerate(SPEC.polarities):
                s = offsets[p] + f % len(pol.species)
                counts = rng.poisson(means[s].ravel())
                idx = np.repeat(np.arange(nx * ny), counts)
                ticks.append(start + pixel0[idx] + rng.integers(0, dwell, idx.size))
                chans.append(np.full(idx.size, pol.channels[0], np.int64))
            t = np.concatenate(ticks)
            order = np.argsort(t, kind="stable")
            mt, mm = marker_times(replace(SPEC, start_tick=start))
            rec = encode_t3_generic(t[order], np.concatenate(chans)[order], mt, mm, rng,
                                    origin=origin)  # fmt: skip
            frames, sequence, position = numpy_frames(rec, sequence, origin, position)
            for fr in frames:
                sock.sendall(fr)
                sent += len(fr)
            events += t.size
            origin = (int(t[order][-1]) if t.size else start) // 1024 * 1024
            origin = max(origin, int(mt[-1]) // 1024 * 1024)
    return events, sent, got["bytes"]


@pytest.fixture(scope="module")
def rates() -> npt.NDArray[np.float64]:
    return rate_maps()


def _run(name: str, fn: Callable[[Any], tuple[int, int, int]], benchmark: Any, rates: Any) -> None:
    events, sent, received = benchmark.pedantic(fn, args=(rates,), rounds=3)
    assert received == sent > 0
    assert events == pytest.approx(FRAMES * MEAN * 2 * SPEC.nx * SPEC.ny, rel=0.05)
    RESULTS[name] = events / benchmark.stats.stats.min
    print(f"\n{name}: {RESULTS[name] / 1e6:.1f} M events/s over loopback TCP ({events:,} events)")
    if len(RESULTS) == 2:
        ratio = RESULTS["emitter"] / RESULTS["numpy"]
        target = "meets" if RESULTS["emitter"] >= 20e6 else "misses"
        print(f"emitter / numpy: {ratio:.1f}x; emitter {target} the 20 M events/s target")


def test_numpy_generator(benchmark: Any, rates: npt.NDArray[np.float64]) -> None:
    _run("numpy", numpy_stream, benchmark, rates)


def test_detector_emitter(benchmark: Any, rates: npt.NDArray[np.float64]) -> None:
    _run("emitter", native_stream, benchmark, rates)
