"""Speed of decode + map + bin: the native core against the vectorised numpy pipeline
(benchmarks/numpy_pipeline.py) on the same 50 M-event MultiHarp T3 stream, in one run.

    make bench          # or: pytest benchmarks --benchmark-only -s

Prints events/s for both and the ratio. OPSIMS_BENCH_EVENTS sets the stream size.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from opsims import EventCore
from support.tttr_synth import (
    REC_MULTIHARP_T3,
    Polarity,
    RasterSpec,
    encode_t3_generic,
    marker_times,
    random_events,
)

from benchmarks.numpy_pipeline import numpy_decode_map_bin

EVENTS = int(os.environ.get("OPSIMS_BENCH_EVENTS", 50_000_000))
SPEC = RasterSpec(
    nx=256, ny=256, dwell_ticks=64, line_settle_ticks=32, flyback_ticks=128,
    frame_gap_ticks=1000, frames=100, frames_per_slice=9,
    polarities=(
        Polarity((0,), ("Na+", "Si+", "Zr+", "ZrO+")),
        Polarity((1,), ("O-", "P-", "SiO2-", "PO2-", "ZrO2-")),
    ),
)  # fmt: skip
RESULTS: dict[str, float] = {}


@pytest.fixture(scope="module")
def records() -> npt.NDArray[np.uint32]:
    rng = np.random.default_rng(2026)
    ticks, channels = random_events(SPEC, EVENTS, rng, unknown_channel_fraction=0.01)
    mt, mm = marker_times(SPEC)
    return encode_t3_generic(ticks, channels, mt, mm, rng)


def native(records: npt.NDArray[np.uint32]) -> EventCore:
    polarities = [(f"p{i}", list(p.channels), list(p.species), p.switching, p.settle_ticks)
                  for i, p in enumerate(SPEC.polarities)]  # fmt: skip
    core = EventCore(
        REC_MULTIHARP_T3, 80e-9, SPEC.nx, SPEC.ny, SPEC.dwell_ticks, polarities,
        line_settle_ticks=SPEC.line_settle_ticks, flyback_ticks=SPEC.flyback_ticks,
        frames_per_slice=SPEC.frames_per_slice, frame_marker=SPEC.frame_mask,
        line_start_marker=SPEC.line_start_mask, line_stop_marker=SPEC.line_stop_mask or 0,
        memory_budget_bytes=4 << 30,
    )  # fmt: skip
    for batch in np.array_split(records, max(1, records.size >> 20)):
        core.feed(batch)
    core.finish()
    return core


def _report(name: str, benchmark: Any) -> None:
    RESULTS[name] = EVENTS / benchmark.stats.stats.min
    print(f"\n{name}: {RESULTS[name] / 1e6:.1f} M events/s")
    if len(RESULTS) == 2:
        ratio = RESULTS["native"] / RESULTS["numpy"]
        print(f"native / numpy: {ratio:.1f}x")


def test_numpy_pipeline(benchmark: Any, records: npt.NDArray[np.uint32]) -> None:
    cube = benchmark.pedantic(numpy_decode_map_bin, args=(records, SPEC), rounds=3)
    assert int(cube.sum()) > 0.9 * EVENTS * 0.5
    _report("numpy", benchmark)


def test_native_core(benchmark: Any, records: npt.NDArray[np.uint32]) -> None:
    core = benchmark.pedantic(native, args=(records,), rounds=3)
    c = core.counters()
    assert c["events"] == EVENTS
    expected = numpy_decode_map_bin(records, SPEC)
    for s, name in enumerate(core.species):
        np.testing.assert_array_equal(core.cube(name), expected[s])
    _report("native", benchmark)
