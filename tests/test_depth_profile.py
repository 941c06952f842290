"""Depth profiles held to ground truth: cubes come from the simulated detector front-end
(Poisson counts, non-paralysable dead time) binned by the native core as the daemon bins
them, the specimen model gives the rates and the island, and the emitter's event log the
counts lost to dead time. Normalisations are checked by hand on tiny arrays, and the
command on an ``opsims replay --out`` file."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt
import pytest
from opsims import DetectorEmitter
from opsims.analysis.cubeset import CubeSet, SimsParameters, parameters_from_document
from opsims.analysis.profile import (
    DepthProfile,
    ProfileError,
    dead_time_correct,
    dead_time_uncorrect,
    depth_axis,
    extract_profile,
)
from opsims.analysis.profile_cli import main as profile_main
from opsims.analysis.profile_plots import overlay_figure, profile_figure, save_figure
from opsims.analysis.registration import estimate_drift
from opsims.analysis.roi import (
    Roi,
    RoiError,
    parse_rectangle,
    parse_rectangle_um,
    parse_threshold,
    threshold_roi,
)
from opsims.sim.specimen import Specimen, SpecimenConfig, SpecimenState
from scipy.ndimage import binary_erosion
from support.simproc import default_document, to_toml

F64 = npt.NDArray[np.float64]
N = 48  # pixels a side
FOV_UM = 60.0  # 1.25 µm pixels: the 22 µm island of J = 0.04 is ~17 px across
FPS = 20  # 4 positive x 5 negative species: every species measured in every slice
DWELL_TICKS = 2_000_000  # 2 µs at 1 ps
NM_PER_FRAME = 0.25
SODIATED = SpecimenState(plated_charge_c=3.6e-5, peak_plating_density_ua_um2=0.04, sei_fraction=0.3)


def document(nx: int = N, ny: int = N, dead_time_ns: float = 50.0, **sims: Any) -> dict[str, Any]:
    """The default daemon configuration on a small raster with no settle or dark time, so
    every count falls in live pixel time and each voxel's live time is exact."""
    doc = default_document()
    raster = doc["detector"]["raster"]
    raster.update(nx=nx, ny=ny, frames_per_slice=FPS, dwell_ticks=DWELL_TICKS,
                  line_settle_ticks=0, flyback_ticks=1_000_000)  # fmt: skip
    for p in raster["polarities"]:
        p["settle_ticks"] = 0
    doc["sims"] = {"fov_um": FOV_UM, "sputter_rate_nm_per_frame": NM_PER_FRAME,
                   "dead_time_ns": dead_time_ns, **sims}  # fmt: skip
    return doc


@dataclass(frozen=True)
class Run:
    cubes: CubeSet
    #: Counts before dead time per species, ``[z, y, x]``: recorded plus lost.
    true: dict[str, npt.NDArray[np.int64]]
    #: Expected counts before dead time (rate x live time), ``[z, y, x]``.
    expected: dict[str, F64]


def simulate(
    doc: dict[str, Any],
    rates: Callable[[int], F64],
    frames: int,
    seed: int = 1,
    through_core: bool = False,
) -> Run:
    """Frame by frame at the given rates; the counts lost to dead time are put back in
    their voxels from their ticks (the event log gives them no voxel)."""
    detector, sims = parameters_from_document(doc)
    e = detector.engine_args()
    em = DetectorEmitter(
        e["record_type"], e["tick_s"], e["nx"], e["ny"], e["dwell_ticks"], e["polarities"],
        flyback_ticks=e["flyback_ticks"], frames_per_slice=FPS, frame_marker=e["frame_marker"],
        line_start_marker=e["line_start_marker"], line_stop_marker=e["line_stop_marker"],
        mass_switch_marker=e["mass_switch_marker"],
        dead_time_ticks=round(sims.dead_time_s["positive"] / e["tick_s"]),
        seed=seed, record_truth=True, record_events=True,
    )  # fmt: skip
    core = detector.build() if through_core else None
    period, line = em.frame_period_ticks, em.line_period_ticks
    names = em.species
    n_slices = -(-frames // FPS)
    lost = np.zeros((n_slices, len(names), detector.ny, detector.nx), np.int64)
    expected = np.zeros_like(lost, dtype=np.float64)
    pols = [p.species for p in detector.polarities]

    def drain() -> None:
        ev = em.take_events()
        gone = ev["fate"] == 4
        tick = ev["tick"][gone].astype(np.int64)
        f = tick // period
        y = (tick - f * period) // line
        x = (tick - f * period - y * line) // DWELL_TICKS
        assert (x < detector.nx).all()  # no settle, no dark counts: all in pixel time
        np.add.at(lost, (f // FPS, ev["species"][gone], y, x), 1)

    for f in range(frames):
        r = rates(f)
        em.set_rates(r)
        for species in pols:
            i = names.index(species[f % len(species)])  # per-frame switching
            expected[f // FPS, i] += r[i] * DWELL_TICKS * e["tick_s"]
        for n, chunk in enumerate(em.emit_until((f + 1) * period)):
            if core is not None:
                core.feed_link(chunk, 1_000 * (f * 64 + n))
        if f % 20 == 19:
            drain()
    drain()
    cubes = {s: em.truth_cube(s) for s in names}
    if core is not None:
        core.finish()
        assert core.n_slices == n_slices
        for s in names:
            np.testing.assert_array_equal(core.cube(s), cubes[s])
        cubes = {s: core.cube(s) for s in names}
    frames_in = np.full(n_slices, FPS)
    frames_in[-1] = frames - FPS * (n_slices - 1)
    cs = CubeSet(cubes, detector, sims, frames_in, "emitter")
    true = {s: cubes[s].astype(np.int64) + lost[:, i] for i, s in enumerate(names)}
    return Run(cs, true, {s: expected[:, i] for i, s in enumerate(names)})


def specimen(doc: dict[str, Any], total_rate_hz: float, seed: int = 3) -> Specimen:
    species = parameters_from_document(doc)[0].species
    config = SpecimenConfig(fov_um=FOV_UM, total_rate_hz=total_rate_hz)
    return Specimen(config, species, N, N, seed=seed)


@pytest.fixture(scope="module")
def sodiated() -> tuple[Run, Specimen]:
    # 2e7 counts/s in all: Na+ reaches ~3e7 /s on the island, n τ ~ 1.5 at 50 ns.
    doc = document(dead_time_ns=50.0)
    spec = specimen(doc, 2e7)
    run = simulate(doc, lambda f: spec.rates(f * NM_PER_FRAME, SODIATED), 200, through_core=True)
    return run, spec


def island(spec: Specimen, depth_nm: float = 25.0) -> npt.NDArray[np.bool_]:
    mask = spec.composition_truth(depth_nm, SODIATED)["island_mask"]
    assert isinstance(mask, np.ndarray)
    return mask


# --- dead time ------------------------------------------------------------------------------


def test_the_corrected_profile_recovers_the_counts_before_dead_time(
    sodiated: tuple[Run, Specimen],
) -> None:
    run, spec = sodiated
    regions = [None, Roi(island(spec), "island")]
    for region in regions:
        p = extract_profile(run.cubes, roi=region)
        mask = np.ones((N, N), bool) if region is None else region.mask
        for s in run.cubes.species:
            true = run.true[s][:, mask].sum(axis=1)
            sp = p[s]
            np.testing.assert_array_equal(sp.raw, run.cubes.cubes[s][:, mask].sum(axis=1))
            assert np.all(np.abs(sp.corrected - true) < 3 * sp.corrected_sigma), s
            # ... summed over all slices too, where a bias would show first.
            assert abs(sp.corrected.sum() - true.sum()) < 3 * np.sqrt((sp.corrected_sigma**2).sum())
        # The strong species lose tens of percent: the raw counts are off by many sigma.
        for s in ("Na+", "O-"):
            true = run.true[s][:, mask].sum(axis=1)
            assert np.all(true - p[s].raw > 10 * np.sqrt(true)), s
        assert not any(p[s].saturated.any() for s in p.species)


def test_sigma_has_unit_spread_over_seeds() -> None:
    """z = (value - expectation) / sigma over 25 runs of uniform known rates at n τ up to
    0.4: corrected counts, ratios to a matrix species and fractions of the total."""
    doc = document(nx=8, ny=8, dead_time_ns=50.0)
    species = parameters_from_document(doc)[0].species
    levels = np.linspace(1e6, 8e6, len(species))
    rates = np.broadcast_to(levels[:, None, None], (len(species), 8, 8)).copy()
    zs: dict[str, list[float]] = {"corrected": [], "matrix": [], "total": []}
    for seed in range(25):
        run = simulate(doc, lambda f: rates, 40, seed=seed)
        raw = extract_profile(run.cubes)
        mat = extract_profile(run.cubes, normalise="matrix", matrix=["Zr+", "P-"])
        tot = extract_profile(run.cubes, normalise="total")
        for i, s in enumerate(species):
            want = run.expected[s].sum(axis=(1, 2))
            zs["corrected"] += ((raw[s].corrected - want) / raw[s].corrected_sigma).tolist()
            pol = [g for g in species if run.cubes.polarity_of(g) == run.cubes.polarity_of(s)]
            m = "Zr+" if run.cubes.polarity_of(s) == "positive" else "P-"
            if s != m:
                ratio = levels[i] / levels[species.index(m)]
                zs["matrix"] += ((mat[s].value - ratio) / mat[s].sigma).tolist()
            share = levels[i] / sum(levels[species.index(g)] for g in pol)
            zs["total"] += ((tot[s].value - share) / tot[s].sigma).tolist()
    for kind, z in zs.items():
        z_arr = np.array(z)
        assert 0.8 < z_arr.std() < 1.2, (kind, z_arr.std())
        assert abs(z_arr.mean()) < 0.25, (kind, z_arr.mean())


def test_the_correction_is_reversible_and_saturation_is_flagged() -> None:
    rng = np.random.default_rng(4)
    live = rng.uniform(1e-5, 2e-5, (6, 1, 1))
    counts = rng.integers(0, 150, (6, 5, 5))  # m τ up to 0.75
    tau = 50e-9
    corrected, _, saturated = dead_time_correct(counts, live, tau)
    assert not saturated.any() and (corrected >= counts).all()
    np.testing.assert_allclose(dead_time_uncorrect(corrected, live, tau), counts, rtol=1e-12)
    # m τ = 1 and beyond cannot be corrected: flagged, NaN, never clipped to a number.
    c, s, bad = dead_time_correct([99, 100, 120], 5e-6, tau)
    assert bad.tolist() == [False, True, True]
    assert np.isfinite(c[0]) and np.isnan(c[1:]).all() and np.isnan(s[1:]).all()

    cs = tiny_cubes({"Na+": [[[1, 2], [3, 4]], [[250, 0], [1, 1]]]}, dead_time_ns=50.0)
    p = extract_profile(cs, species=["Na+"])
    assert p["Na+"].saturated.tolist() == [0, 1]  # 250 counts in 10 µs: m τ = 1.25
    assert np.isfinite(p["Na+"].value[0]) and np.isnan(p["Na+"].value[1])
    assert p["Na+"].raw.tolist() == [10, 252]
    assert any("saturated" in n for n in p.notes)


# --- depth ----------------------------------------------------------------------------------


def test_depth_from_the_sputter_rate_or_the_crater_depth() -> None:
    frames = [20, 20, 5]
    rate = depth_axis(frames, configured_rate_nm_per_frame=0.25)
    np.testing.assert_allclose(rate.edges, [0, 5, 10, 11.25])
    np.testing.assert_allclose(rate.centres, [2.5, 7.5, 10.625])
    given = depth_axis(frames, sputter_rate_nm_per_frame=1.0, configured_rate_nm_per_frame=0.25)
    np.testing.assert_allclose(given.edges, [0, 20, 40, 45])
    crater = depth_axis(frames, crater_depth_nm=450.0, configured_rate_nm_per_frame=0.25)
    assert crater.source == "crater_depth" and crater.nm_per_frame == pytest.approx(10.0)
    np.testing.assert_allclose(crater.edges, [0, 200, 400, 450])
    bare = depth_axis(frames)
    assert bare.unit == "slice" and bare.edges.tolist() == [0, 1, 2, 3]
    assert "slice index" in bare.describe()
    with pytest.raises(ProfileError, match="not both"):
        depth_axis(frames, sputter_rate_nm_per_frame=1.0, crater_depth_nm=10.0)
    with pytest.raises(ProfileError, match="> 0"):
        depth_axis(frames, crater_depth_nm=0.0)
    cs = tiny_cubes({"Na+": [[[1, 1], [1, 1]]] * 3}, sputter=None)
    p = extract_profile(replace(cs, frames_in_slice=np.array(frames)))
    assert p.depth.unit == "slice" and p.notes[0].startswith("no depth calibration")


# --- normalisations, by hand ----------------------------------------------------------------


def tiny_cubes(
    counts: dict[str, Any], dead_time_ns: float = 0.0, sputter: float | None = 0.25, **sims: Any
) -> CubeSet:
    """2 x 2 pixels, 20 frames per slice: a positive species is measured 5 frames of 2 µs
    per slice (10 µs), a negative one 4 (8 µs)."""
    doc = document(nx=2, ny=2)
    detector, _ = parameters_from_document(doc)
    names = tuple(p.name for p in detector.polarities)
    table = {"dead_time_ns": dead_time_ns, "fov_um": 3.0, **sims}
    if sputter is not None:
        table["sputter_rate_nm_per_frame"] = sputter
    params = SimsParameters.from_mapping(table, names)
    cubes = {s: np.asarray(c, dtype=np.uint32) for s, c in counts.items()}
    n = next(iter(cubes.values())).shape[0]
    return CubeSet(cubes, detector, params, np.full(n, FPS), "tiny")


HAND = {
    "Na+": [[[10, 20], [30, 40]], [[5, 5], [5, 5]]],
    "Si+": [[[1, 2], [3, 4]], [[0, 0], [0, 0]]],
    "Zr+": [[[0, 0], [0, 0]], [[1, 1], [1, 1]]],
    "ZrO+": [[[4, 4], [4, 4]], [[8, 8], [8, 8]]],
    "O-": [[[8, 8], [8, 8]], [[2, 2], [2, 2]]],
    "SiO2-": [[[2, 2], [2, 2]], [[4, 4], [4, 4]]],
}


def test_normalisations_against_hand_computation() -> None:
    cs = tiny_cubes(HAND, primary_current_a=2e-9)
    t_pos, t_neg = 5 * 2e-6, 4 * 2e-6
    roi = parse_rectangle("0:2,0:1", (2, 2))  # the top row: 2 pixels
    kw: dict[str, Any] = {"roi": roi, "correct_dead_time": False}

    raw = extract_profile(cs, **kw)
    assert raw["Na+"].value.tolist() == [30, 10] and raw["Na+"].sigma.tolist() == pytest.approx(
        [np.sqrt(30), np.sqrt(10)]
    )
    assert raw.unit == "counts"

    rate = extract_profile(cs, normalise="rate", **kw)
    np.testing.assert_allclose(rate["Na+"].value, np.array([30, 10]) / (2 * t_pos))
    np.testing.assert_allclose(rate["O-"].value, np.array([16, 4]) / (2 * t_neg))
    np.testing.assert_allclose(rate["O-"].sigma, np.sqrt([16, 4]) / (2 * t_neg))

    primary = extract_profile(cs, normalise="primary", **kw)
    np.testing.assert_allclose(primary["Na+"].value, rate["Na+"].value / 2e-9)
    assert primary.unit == "counts/C"

    # Each species over the matrix species of its own polarity, in rates.
    mat = extract_profile(cs, normalise="matrix", matrix=["ZrO+", "SiO2-"], **kw)
    na, zro = np.array([30.0, 10.0]), np.array([8.0, 16.0])
    np.testing.assert_allclose(mat["Na+"].value, na / zro)
    np.testing.assert_allclose(mat["Na+"].sigma, na / zro * np.sqrt(1 / na + 1 / zro))
    o, sio2 = np.array([16.0, 4.0]), np.array([4.0, 8.0])
    np.testing.assert_allclose(mat["O-"].value, o / sio2)
    assert mat["ZrO+"].value.tolist() == [1.0, 1.0] and mat["ZrO+"].sigma.tolist() == [0, 0]
    # One matrix species divides both polarities (live times differ: rates, not counts).
    one = extract_profile(cs, normalise="matrix", matrix=["ZrO+"], **kw)
    np.testing.assert_allclose(one["O-"].value, (o / t_neg) / (zro / t_pos))

    # The share of the polarity's total rate; the species is part of the total.
    tot = extract_profile(cs, normalise="total", **kw)
    pos = {s: np.array(HAND[s])[:, 0, :].sum(axis=1).astype(float) for s in HAND}
    total_pos = pos["Na+"] + pos["Si+"] + pos["Zr+"] + pos["ZrO+"]
    np.testing.assert_allclose(tot["Na+"].value, pos["Na+"] / total_pos)
    rest = total_pos - pos["Na+"]
    want = np.sqrt(rest**2 * pos["Na+"] + pos["Na+"] ** 2 * rest) / total_pos**2
    np.testing.assert_allclose(tot["Na+"].sigma, want)
    np.testing.assert_allclose(tot["O-"].value, pos["O-"] / (pos["O-"] + pos["SiO2-"]))
    both = extract_profile(cs, normalise="total", total_over="all", **kw)
    rates = {s: pos[s] / (t_neg if s.endswith("-") else t_pos) for s in HAND}
    np.testing.assert_allclose(both["O-"].value, rates["O-"] / sum(rates.values()))

    ratio, sigma = raw.ratio("Na+", "O-")
    np.testing.assert_allclose(ratio, (na / t_pos) / (o / t_neg))
    np.testing.assert_allclose(sigma, ratio * np.sqrt(1 / na + 1 / o))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"species": ["Xe+"]}, "no species Xe+ in the cubes"),
        ({"normalise": "primary"}, "primary_current_a"),
        ({"normalise": "matrix"}, "needs matrix species"),
        ({"normalise": "matrix", "matrix": ["P-"]}, "P- not in the cubes"),
        ({"normalise": "matrix", "matrix": ["Na+", "ZrO+"]}, "two matrix species"),
        ({"normalise": "matrix", "matrix": ["ZrO+", "O-"], "species": ["Na+"]}, None),
        ({"dead_time_s": {"sideways": 1e-9}}, "no polarity named sideways"),
        ({"normalise": "median"}, "unknown normalisation"),
    ],
)
def test_impossible_profiles_say_why(kwargs: dict[str, Any], message: str | None) -> None:
    cs = tiny_cubes(HAND)
    if message is None:
        extract_profile(cs, **kwargs)
        return
    with pytest.raises(ProfileError, match=re.escape(message)):
        extract_profile(cs, **kwargs)


# --- regions --------------------------------------------------------------------------------


def iou(a: npt.NDArray[np.bool_], b: npt.NDArray[np.bool_]) -> float:
    return float((a & b).sum() / (a | b).sum())


def test_the_threshold_island_is_the_specimens_island(sodiated: tuple[Run, Specimen]) -> None:
    run, spec = sodiated
    truth = island(spec)
    depth = depth_axis(run.cubes.frames_in_slice, configured_rate_nm_per_frame=NM_PER_FRAME)
    slices = depth.slices_between(0, 40)  # inside the 100 nm Na layer
    na = run.cubes.cubes["Na+"][slices].sum(axis=0)
    level = 0.5 * (na[truth].mean() + na[~truth].mean())
    roi = threshold_roi(run.cubes, "Na+", level, slices=slices, slices_text="0-40 nm")
    assert iou(roi.mask, truth) > 0.85
    assert roi.area_px == roi.mask.sum() and "0-40 nm" in roi.description
    largest = threshold_roi(run.cubes, "Na+", level, slices=slices, pick="largest")
    assert np.array_equal(largest.mask, roi.mask)
    outside = roi.complement(guard_px=2)
    assert not (outside.mask & roi.mask).any() and outside.area_px < N * N - roi.area_px
    with pytest.raises(RoiError, match="reaches"):
        threshold_roi(run.cubes, "Na+", 1e9, slices=slices)
    with pytest.raises(RoiError, match="no slice"):
        threshold_roi(run.cubes, "Na+", level, slices=depth.slices_between(5000, 6000))


def test_rectangles_in_pixels_and_um() -> None:
    r = parse_rectangle("2:5,:3", (8, 10))
    assert r.area_px == 9 and r.mask[0:3, 2:5].all()
    # 1.25 µm pixels centred on the probe: centres at ±0.625, ±1.875 ... µm.
    um = parse_rectangle_um("-2:2,-0.7:0.7", (N, N), 1.25)
    assert um.area_px == 4 * 2
    assert um.mask[N // 2 - 1 : N // 2 + 1, N // 2 - 2 : N // 2 + 2].all()
    for text in ("3-4", "1:2", "a:b,1:2", "5:2,0:1", "0:99,0:1"):
        with pytest.raises(RoiError):
            parse_rectangle(text, (8, 10))
    with pytest.raises(RoiError, match="fov_um"):
        parse_rectangle_um("-1:1,-1:1", (8, 8), None)
    with pytest.raises(RoiError, match="no pixel centre"):
        parse_rectangle_um("100:200,0:1", (8, 8), 1.0)
    assert parse_threshold("Na+:40:0-100").depth == (0.0, 100.0)
    assert parse_threshold("SiO2-:7.5").species == "SiO2-"
    for text in ("Na+", "Na+:many", "Na+:4:100-0", "Na+:4:x", ":4"):
        with pytest.raises(RoiError):
            parse_threshold(text)


# --- registration ---------------------------------------------------------------------------

FRAMES = 300  # 15 slices, 0-75 nm: inside the Na layer, the island shows throughout


def drift(f: int) -> tuple[int, int]:
    """Injected drift at frame ``f``: 6 px in x, -4 px in y over the run, in whole
    pixels frame by frame."""
    return round(6 * f / FRAMES), round(-4 * f / FRAMES)


@pytest.fixture(scope="module")
def drifted() -> tuple[Run, Run, Specimen]:
    doc = document(dead_time_ns=20.0)
    spec = specimen(doc, 1e7)

    def moved(f: int) -> F64:
        dx, dy = drift(f)
        return np.roll(spec.rates(f * NM_PER_FRAME, SODIATED), (dy, dx), axis=(1, 2))

    still = simulate(doc, lambda f: spec.rates(f * NM_PER_FRAME, SODIATED), FRAMES, seed=5)
    return simulate(doc, moved, FRAMES, seed=6), still, spec


def injected() -> F64:
    return np.array(
        [np.mean([drift(f) for f in range(z * FPS, (z + 1) * FPS)], axis=0)
         for z in range(FRAMES // FPS)]
    )  # fmt: skip


@pytest.mark.parametrize("reference", ["running", "first"])
def test_registration_recovers_an_injected_drift(
    drifted: tuple[Run, Run, Specimen], reference: Any
) -> None:
    run, still, _ = drifted
    reg = estimate_drift(run.cubes, reference=reference)
    assert reg.species == ("Na+", "O-")  # the most counted of each polarity
    assert np.abs(reg.shifts - injected()).max() <= 1.0
    assert np.abs(reg.smoothed - injected()).max() < 1.0
    x0, x1, y0, y1 = reg.valid_box()
    assert (x1 - x0, y1 - y0) == (
        N - int(np.ptp(reg.shifts[:, 0])),
        N - int(np.ptp(reg.shifts[:, 1])),
    )
    # Without drift the shifts stay at 0.
    assert not estimate_drift(still.cubes, reference=reference).shifts.any()


def test_registration_restores_the_island_profile(drifted: tuple[Run, Run, Specimen]) -> None:
    run, still, spec = drifted
    reg = estimate_drift(run.cubes)
    core = Roi(binary_erosion(island(spec), iterations=2), "island core")
    steady = extract_profile(still.cubes, roi=core, species=["Na+"])["Na+"]
    fixed = extract_profile(run.cubes, roi=core, species=["Na+"], registration=reg)
    moved = extract_profile(run.cubes, roi=core, species=["Na+"])["Na+"]
    assert fixed.roi.area_px == core.area_px  # the island is far from the border
    z_fixed = (fixed["Na+"].value - steady.value) / np.hypot(fixed["Na+"].sigma, steady.sigma)
    z_moved = (moved.value - steady.value) / np.hypot(moved.sigma, steady.sigma)
    assert np.abs(z_fixed).max() < 3.5
    assert (z_moved[-5:] < -10).all()
    assert fixed.shifts_px is not None and fixed.shifts_px.tolist() == reg.shifts.tolist()
    # The island drawn from the registered map is the specimen's again.
    na = still.cubes.cubes["Na+"].sum(axis=0)
    truth = island(spec)
    level = 0.5 * (na[truth].mean() + na[~truth].mean())
    blurred = threshold_roi(run.cubes, "Na+", level)
    sharp = threshold_roi(run.cubes, "Na+", level, registration=reg)
    assert iou(sharp.mask, truth) > 0.85 > iou(blurred.mask, truth) + 0.1
    # Registered cubes still hold counts.
    registered = reg.apply(run.cubes.cubes["Na+"])
    assert registered.dtype == np.uint32
    assert registered.sum() <= run.cubes.cubes["Na+"].sum()


def test_registration_bridges_slices_with_few_counts(drifted: tuple[Run, Run, Specimen]) -> None:
    run, _, _ = drifted
    cubes = {s: c.copy() for s, c in run.cubes.cubes.items()}
    for s in cubes:
        cubes[s][[4, 9, 10]] = 0  # e.g. the beam blanked
    reg = estimate_drift(replace(run.cubes, cubes=cubes))
    assert not reg.used[[4, 9, 10]].any()
    assert np.abs(reg.shifts - injected()).max() <= 1.0
    assert any("interpolated" in n for n in reg.notes)


# --- outputs --------------------------------------------------------------------------------


def test_csv_and_json_round_trip(sodiated: tuple[Run, Specimen], tmp_path: Path) -> None:
    run, spec = sodiated
    reg = estimate_drift(run.cubes)
    p = extract_profile(run.cubes, roi=Roi(island(spec), "island"), registration=reg,
                        normalise="matrix", matrix=["ZrO+", "SiO2-"])  # fmt: skip
    path = tmp_path / "profile.csv"
    p.to_csv(path)
    back = DepthProfile.from_csv(path)
    assert back.species == p.species and back.unit == p.unit
    assert back.roi.area_px == p.roi.area_px and back.roi.description == p.roi.description
    assert back.settings == json.loads(json.dumps(p.settings))
    np.testing.assert_array_equal(back.depth.edges, p.depth.edges)
    assert back.shifts_px is not None and p.shifts_px is not None
    np.testing.assert_array_equal(back.shifts_px, p.shifts_px)
    for s in p.species:
        for col in ("raw", "live_time_s", "corrected", "corrected_sigma", "value", "sigma",
                    "saturated"):  # fmt: skip
            np.testing.assert_array_equal(back[s].column(col), p[s].column(col), err_msg=col)
    header = path.read_text().splitlines()[2].split(",")
    assert header[:4] == ["slice", "depth_start_nm", "depth_end_nm", "depth_centre_nm"]
    assert header[4:9] == ["Na+_raw", "Na+_live_time_s", "Na+_corrected", "Na+_corrected_sigma",
                           "Na+_value"]  # fmt: skip
    doc = json.loads(json.dumps(p.to_json(), allow_nan=False))
    assert doc["registration"]["shifts_px"] == reg.shifts.tolist()
    assert doc["profiles"]["Na+"]["raw"] == p["Na+"].raw.tolist()
    with pytest.raises(ProfileError, match="not an opsims depth-profile"):
        (tmp_path / "other.csv").write_text("a,b\n1,2\n")
        DepthProfile.from_csv(tmp_path / "other.csv")


def test_plots_fig4_style_and_two_regions(sodiated: tuple[Run, Specimen], tmp_path: Path) -> None:
    run, spec = sodiated
    region = Roi(island(spec), "sodiated island")
    inside = extract_profile(run.cubes, roi=region, normalise="rate")
    outside = extract_profile(run.cubes, roi=region.complement(2), normalise="rate")
    fig = profile_figure(inside)
    ax = fig.axes[0]
    assert ax.get_yscale() == "log" and ax.get_xlabel() == "depth (µm)"
    styles = {line.get_label(): line.get_linestyle() for line in ax.get_lines()}
    assert styles["Na+"] == "-" and styles["SiO2-"] == "--"
    assert len({line.get_color() for line in ax.get_lines()}) == len(inside.species)
    assert save_figure(fig, tmp_path / "one.png").stat().st_size > 10_000
    two = overlay_figure([outside, inside], ["reference", "sodiated"])
    assert len(two.axes) == 2 and two.axes[0].get_shared_y_axes().joined(*two.axes)
    save_figure(two, tmp_path / "two.svg")
    with pytest.raises(ValueError, match="must end in"):
        save_figure(two, tmp_path / "two.gif")


# --- the command ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def replay_out(sodiated: tuple[Run, Specimen], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """What ``opsims replay --out`` writes, and the daemon configuration beside it."""
    run, _ = sodiated
    where = tmp_path_factory.mktemp("replay")
    arrays: dict[str, Any] = {
        "profile": np.stack([c.sum(axis=(1, 2)) for c in run.cubes.cubes.values()], axis=1),
        "frames_per_slice": np.int64(FPS),
        "frames": np.int64(int(run.cubes.frames_in_slice.sum())),
        **run.cubes.cubes,
    }
    np.savez_compressed(where / "run.npz", allow_pickle=False, **arrays)
    (where / "opsimsd.toml").write_text(to_toml(document(dead_time_ns=50.0)))
    return where


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    rc = profile_main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def test_the_command_on_a_replayed_run(
    replay_out: Path, sodiated: tuple[Run, Specimen], capsys: pytest.CaptureFixture[str]
) -> None:
    run, _ = sodiated
    npz, config = str(replay_out / "run.npz"), str(replay_out / "opsimsd.toml")
    csv_out, plot = replay_out / "p.csv", replay_out / "p.png"
    rc, out, err = cli(capsys, npz, "--config", config, "--roi-threshold", "Na+:700:0-40",
                       "--compare-outside", "--csv", str(csv_out), "--plot", str(plot),
                       "--normalise", "rate", "--json")  # fmt: skip
    assert rc == 0, err
    doc = json.loads(out)
    assert doc["unit"] == "counts/s" and doc["depth"]["source"] == "sputter_rate"
    assert doc["roi"]["area_um2"] == pytest.approx(doc["roi"]["area_px"] * 1.25**2)
    assert doc["outside"]["roi"]["area_px"] + doc["roi"]["area_px"] == N * N
    assert plot.stat().st_size > 10_000 and (replay_out / "p-outside.csv").exists()
    assert DepthProfile.from_csv(csv_out).species == run.cubes.species
    # The whole field, raw: what the daemon's own depth profile would say, corrected.
    rc, out, err = cli(capsys, npz, "--config", config, "--species", "Na+,O-", "--json")
    doc = json.loads(out)
    assert list(doc["profiles"]) == ["Na+", "O-"]
    assert doc["profiles"]["Na+"]["raw"] == run.cubes.cubes["Na+"].sum(axis=(1, 2)).tolist()
    true = run.true["Na+"].sum(axis=(1, 2))
    corrected = np.array(doc["profiles"]["Na+"]["corrected"])
    assert np.all(np.abs(corrected - true) < 3 * np.array(doc["profiles"]["Na+"]["sigma"]))
    # Without dead-time correction, with a crater depth, as text.
    rc, out, err = cli(capsys, npz, "--config", config, "--no-dead-time", "--crater-depth-nm",
                       "100", "--roi-um=-10:10,-10:10", "--register")  # fmt: skip
    assert rc == 0, err
    assert "depth from the crater depth (0.5 nm per frame)" in out
    assert "(256 px, 400.0 µm²)" in out and "dead time not corrected" in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["{dir}/missing.npz"], "No such file"),
        (["{npz}"], "carries no configuration"),
        (["{npz}", "--species", "Xe+"], "no species Xe+"),
        (["{npz}", "--roi", "3-4"], "--roi: expected x0:x1,y0:y1"),
        (["{npz}", "--roi", "0:99,0:4"], "inside the 48 x 48 pixel field"),
        (["{npz}", "--roi-threshold", "Na+:lots"], "COUNTS must be a number"),
        (["{npz}", "--roi-threshold", "Na+:1e9"], "reaches 1e+09 counts"),
        (["{npz}", "--normalise", "primary"], "primary_current_a"),
        (["{npz}", "--normalise", "matrix"], "needs --matrix"),
        (["{npz}", "--normalise", "matrix", "--matrix", "Xe+"], "Xe+ not in the cubes"),
        (["{npz}", "--outside"], "need an ROI"),
        (["{npz}", "--sputter-rate", "-1"], "--sputter-rate must be > 0"),
        (["{npz}", "--live"], "an INPUT or --live"),
        (["{npz}", "--plot", "{dir}/p.gif"], "must end in .png"),
    ],
)
def test_bad_input_is_one_line_and_exit_code_2(
    replay_out: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    npz = str(replay_out / "run.npz")
    argv = [a.format(dir=replay_out, npz=npz) for a in args]
    if "carries no configuration" not in message and "--config" not in argv:
        argv += ["--config", str(replay_out / "opsimsd.toml")]
    rc, out, err = cli(capsys, *argv)
    assert rc == 2 and out == ""
    assert err.startswith("opsims profile: ") and err.count("\n") == 1, err
    assert message in err


class FakeMirror:
    """What ``--live`` reads of :class:`opsims.client.CubeMirror`: cubes growing by one
    slice per poll."""

    cubes_all: ClassVar[dict[str, npt.NDArray[np.uint32]]] = {}

    def __init__(self, publish: str, control: str) -> None:
        self.publish, self.control = publish, control
        self.n_slices = 1
        self.frames_per_slice = FPS
        self.closed = False

    @property
    def cubes(self) -> dict[str, npt.NDArray[np.uint32]]:
        return {s: c[: self.n_slices] for s, c in self.cubes_all.items()}

    def poll(self, timeout_s: float | None = 0.0, max_messages: int = 10_000) -> int:
        top = next(iter(self.cubes_all.values())).shape[0]
        self.n_slices = min(top, self.n_slices + 1)
        return 1

    def close(self) -> None:
        self.closed = True


def test_live_follows_the_daemons_cubes(
    replay_out: Path,
    sodiated: tuple[Run, Specimen],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import opsims.client

    run, _ = sodiated
    FakeMirror.cubes_all = dict(run.cubes.cubes)
    monkeypatch.setattr(opsims.client, "CubeMirror", FakeMirror)
    csv_out = replay_out / "live.csv"
    rc, out, err = cli(capsys, "--live", "--config", str(replay_out / "opsimsd.toml"),
                       "--refresh", "0.01", "--duration", "0.3", "--species", "Na+",
                       "--csv", str(csv_out))  # fmt: skip
    assert rc == 0, err
    assert "following tcp://127.0.0.1:7410" in err
    lines = out.splitlines()
    assert lines and all(" slices, " in line and "Na+ " in line for line in lines), out
    # The slice still being acquired is left out.
    last = DepthProfile.from_csv(csv_out)
    assert last.n_slices == run.cubes.shape[0] - 1
    rc, out, err = cli(capsys, "--live")
    assert rc == 2 and "--live needs the daemon's --config" in err
