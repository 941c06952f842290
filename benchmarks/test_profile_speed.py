"""Speed of one depth profile: 9 species, 256 x 256 pixels x 200 slices each (u32 counts
of a sodiated specimen at 2e7 counts/s, so voxels hold 0 to ~50 counts), dead time
corrected voxel by voxel (20 ns), summed over an island mask of ~20 000 pixels with
Poisson errors. opsims (a histogram of each slice's counts, corrected per count) against
a straightforward numpy version that corrects the whole cube in float64 and sums it under
the mask, in the same run; both must give the same numbers.

    make bench          # or: pytest benchmarks/test_profile_speed.py --benchmark-only -s

Prints the time per profile of both and the ratio. The target is well under 1 s.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from opsims.analysis.cubeset import CubeSet, SimsParameters, parameters_from_document
from opsims.analysis.profile import extract_profile
from opsims.analysis.roi import Roi
from opsims.sim.specimen import Specimen, SpecimenConfig, SpecimenState
from support.simproc import default_document

SLICES = 200
TAU_S = 20e-9
TARGET_S = 1.0
RESULTS: dict[str, float] = {}
Sums = dict[str, tuple[npt.NDArray[Any], ...]]


@pytest.fixture(scope="module")
def cubes() -> CubeSet:
    detector, _ = parameters_from_document(default_document())  # 256 x 256, 20 frames a slice
    sims = SimsParameters.from_mapping(
        {"fov_um": 150.0, "sputter_rate_nm_per_frame": 0.25, "dead_time_ns": TAU_S * 1e9},
        tuple(p.name for p in detector.polarities),
    )
    frames = np.full(SLICES, detector.frames_per_slice)
    cs = CubeSet({}, detector, sims, frames, "benchmark")
    state = SpecimenState(plated_charge_c=1e-4, peak_plating_density_ua_um2=0.2, sei_fraction=0.5)
    spec = Specimen(SpecimenConfig(total_rate_hz=2e7), detector.species, 256, 256, seed=1)
    rates = spec.rates(50.0, state)
    rng = np.random.default_rng(1)
    out = {}
    for i, s in enumerate(detector.species):
        mean = rates[i] * cs.live_time_s(s)[0]
        # Poisson counts thinned by dead time, as the detector records them.
        rec = mean / (1 + rates[i] * TAU_S)
        out[s] = rng.poisson(np.broadcast_to(rec, (SLICES, 256, 256))).astype(np.uint32)
    return CubeSet(out, detector, sims, frames, "benchmark")


@pytest.fixture(scope="module")
def roi() -> Roi:
    y, x = np.mgrid[:256, :256]
    return Roi((x - 128) ** 2 + (y - 128) ** 2 < 80**2, "disc of 80 px")


def opsims_profile(cs: CubeSet, region: Roi) -> Sums:
    p = extract_profile(cs, roi=region)
    return {s: (q.raw, q.corrected, q.corrected_sigma, q.saturated) for s, q in p.profiles.items()}


def numpy_profile(cs: CubeSet, region: Roi) -> Sums:
    """The same estimator, written the obvious way: the whole cube in float64."""
    out: Sums = {}
    mask = region.mask
    for s in cs.species:
        c = cs.cubes[s].astype(np.float64)
        a = (TAU_S / cs.live_time_s(s))[:, None, None]
        free = 1.0 - a * c
        sat = free <= 0
        corrected = np.where(sat, np.nan, c * (1.0 - a) / free)
        var = np.where(sat, np.nan, c * (1.0 - a) ** 2 / free**2)
        out[s] = (
            (c * mask).sum(axis=(1, 2)).astype(np.int64),
            (corrected * mask).sum(axis=(1, 2)),
            np.sqrt((var * mask).sum(axis=(1, 2))),
            (sat & mask).sum(axis=(1, 2)),
        )
    return out


def _run(name: str, fn: Any, benchmark: Any, cs: CubeSet, region: Roi) -> None:
    rounds = 5 if name == "opsims" else 2
    sums = benchmark.pedantic(fn, args=(cs, region), rounds=rounds, warmup_rounds=1)
    RESULTS[name] = benchmark.stats.stats.median
    RESULTS_SUMS[name] = sums
    voxels = len(cs.species) * SLICES * region.area_px
    print(
        f"\n{name}: {RESULTS[name] * 1e3:.0f} ms per profile (9 species x {SLICES} slices, "
        f"{region.area_px} px ROI, {voxels / RESULTS[name] / 1e6:.0f} M ROI voxels/s)"
    )
    if len(RESULTS) == 2:
        ours, base = RESULTS["opsims"], RESULTS["numpy"]
        verdict = "meets" if ours <= TARGET_S else "misses"
        print(f"numpy / opsims: {base / ours:.1f}x; opsims {verdict} the {TARGET_S:g} s target")
        a, b = RESULTS_SUMS["opsims"], RESULTS_SUMS["numpy"]
        for s in a:
            np.testing.assert_array_equal(a[s][0], b[s][0])
            np.testing.assert_allclose(a[s][1], b[s][1], rtol=1e-9)
            np.testing.assert_allclose(a[s][2], b[s][2], rtol=1e-9)
            np.testing.assert_array_equal(a[s][3], b[s][3])


RESULTS_SUMS: dict[str, Sums] = {}


def test_opsims_profile(benchmark: Any, cubes: CubeSet, roi: Roi) -> None:
    _run("opsims", opsims_profile, benchmark, cubes, roi)


def test_numpy_profile(benchmark: Any, cubes: CubeSet, roi: Roi) -> None:
    _run("numpy", numpy_profile, benchmark, cubes, roi)
