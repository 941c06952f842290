"""Cost of one raster frame's rates from the specimen model (9 species, 256 x 256): with
the lateral masks cached (depth changes only, the common case while sputtering) against a
frame whose state moved the island outline, so every mask is recomputed. Prints both and
the ratio.

    pytest benchmarks/test_specimen_speed.py --benchmark-only -s
"""

from __future__ import annotations

from typing import Any

import pytest
from opsims.sim.specimen import Specimen, SpecimenConfig, SpecimenState

SPECIES = ("Na+", "Si+", "Zr+", "ZrO+", "O-", "P-", "SiO2-", "PO2-", "ZrO2-")
RESULTS: dict[str, float] = {}


def failed_island(density_ua_um2: float) -> SpecimenState:
    return SpecimenState(
        plated_charge_c=1e-5,
        peak_plating_density_ua_um2=density_ua_um2,
        failed=True,
        sei_fraction=0.5,
    )


@pytest.fixture
def specimen() -> Specimen:
    return Specimen(SpecimenConfig(), SPECIES, 256, 256, seed=3)


def test_cached_masks(benchmark: Any, specimen: Specimen) -> None:
    state = failed_island(0.1)
    specimen.rates(0.0, state)
    depths = iter(range(10**9))
    benchmark(lambda: specimen.rates(float(next(depths)), state))
    RESULTS["cached"] = benchmark.stats.stats.median


def test_moving_outline(benchmark: Any, specimen: Specimen) -> None:
    # Each call widens the island by a few µm, more than the quarter pixel that triggers
    # a recompute.
    steps = iter(range(1, 10**9))
    benchmark(lambda: specimen.rates(10.0, failed_island(0.1 + 0.01 * (next(steps) % 40))))
    RESULTS["recomputed"] = benchmark.stats.stats.median
    cached = RESULTS.get("cached")
    if cached:
        moved = RESULTS["recomputed"]
        print(f"\nspecimen frame: cached {cached * 1e3:.2f} ms, masks recomputed "
              f"{moved * 1e3:.2f} ms, ratio {moved / cached:.1f}x")  # fmt: skip
