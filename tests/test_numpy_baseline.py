"""The numpy baseline (benchmarks/numpy_pipeline.py) equals the oracle on clean streams."""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from support.tttr_synth import (
    Polarity,
    RasterSpec,
    encode_t3_generic,
    ground_truth,
    marker_times,
    random_events,
)

ROOT = str(Path(__file__).resolve().parent.parent)
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from benchmarks.numpy_pipeline import numpy_decode_map_bin  # noqa: E402

BASE = RasterSpec(
    nx=7,
    ny=5,
    dwell_ticks=13,
    line_settle_ticks=9,
    flyback_ticks=20,
    frame_gap_ticks=31,
    frames=7,
    frames_per_slice=2,
    polarities=(
        Polarity((0,), ("Na+", "Si+", "Zr+", "ZrO+"), "per_frame", 0),
        Polarity((1, 2), ("O-", "P-", "SiO2-"), "per_frame", 0),
    ),
    start_tick=1_234_567,
)

SPECS = {
    "base": BASE,
    "mass_settle": replace(
        BASE,
        polarities=(
            Polarity((0,), ("Na+", "Si+"), "per_frame", 50),
            Polarity((1, 2), ("O-",), "per_frame", 200),
        ),
    ),
    "no_stop": replace(BASE, line_stop_mask=None),
    "coincident": replace(BASE, flyback_ticks=0, frame_gap_ticks=0, line_settle_ticks=0),
    "overrun": replace(BASE, extra_lines=2, frames_per_slice=3),
    "long_dwell": replace(BASE, dwell_ticks=3000, nx=3, ny=2, start_tick=0),
}


@pytest.mark.parametrize("name", sorted(SPECS))
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_baseline_equals_ground_truth(name: str, seed: int) -> None:
    spec = SPECS[name]
    rng = np.random.default_rng(seed)
    ticks, ch = random_events(spec, 20_000, rng, 0.05)
    mt, mm = marker_times(spec, merge=seed != 1)
    rec = encode_t3_generic(ticks, ch, mt, mm, rng)
    want, reasons = ground_truth(spec, ticks, ch)
    assert want.sum() > 0 and sum(reasons.values()) > 0
    got = numpy_decode_map_bin(rec, spec, chunk=[1 << 18, 1000, 7][seed])
    assert got.dtype == np.uint32
    assert np.array_equal(got, want)


def test_baseline_refuses_per_pixel() -> None:
    spec = replace(BASE, polarities=(Polarity((0,), ("a", "b"), "per_pixel", 0),))
    with pytest.raises(NotImplementedError):
        numpy_decode_map_bin(np.zeros(0, np.uint32), spec)


def test_baseline_empty() -> None:
    got = numpy_decode_map_bin(np.zeros(0, np.uint32), BASE)
    assert got.shape == BASE.cube_shape and got.sum() == 0
