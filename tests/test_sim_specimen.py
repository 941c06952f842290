"""The specimen model: rates per species and pixel against the paper's observations.

Tolerances are stated where they are used. Sizes come from the masks the model reports
in ``composition_truth`` and, where it matters, from the rates themselves.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opsims.sim.specimen import (
    SPECIES,
    Specimen,
    SpecimenConfig,
    SpecimenConfigError,
    SpecimenState,
)

F64 = npt.NDArray[np.float64]
B = npt.NDArray[np.bool_]
ALL = list(SPECIES)
BARE = SpecimenState()


def plated(j: float, failed: bool = False, sei: float = 0.0, q: float = 1e-4) -> SpecimenState:
    return SpecimenState(
        plated_charge_c=q, peak_plating_density_ua_um2=j, failed=failed, sei_fraction=sei
    )


def specimen(seed: int = 7, n: int = 256, **cfg: Any) -> Specimen:
    return Specimen(SpecimenConfig(**cfg), ALL, n, n, seed)


def idx(name: str) -> int:
    return ALL.index(name)


def island(s: Specimen, state: SpecimenState) -> B:
    mask = s.composition_truth(20.0, state)["island_mask"]
    assert isinstance(mask, np.ndarray)
    return mask


def truth_list(s: Specimen, depth: float, state: SpecimenState, key: str) -> list[Any]:
    value = s.composition_truth(depth, state)[key]
    assert isinstance(value, list)
    return value


def extents_um(s: Specimen, mask: B) -> tuple[float, float]:
    cols, rows = np.flatnonzero(mask.any(axis=0)), np.flatnonzero(mask.any(axis=1))
    return (cols[-1] - cols[0] + 1) * s.pixel_um, (rows[-1] - rows[0] + 1) * s.pixel_um


def circularity(mask: B) -> float:
    """4 pi A / P^2 with P counted as pixel edges (a digitised disc gives pi^2/16 ~ 0.62)."""
    m = np.pad(mask, 1).astype(np.int8)
    edges = np.abs(np.diff(m, axis=0)).sum() + np.abs(np.diff(m, axis=1)).sum()
    return float(4 * math.pi * mask.sum() / edges**2)


def reach_um(s: Specimen, mask: B) -> float:
    """Farthest island pixel from the probe at (0, 0)."""
    xx, yy = np.meshgrid(s.x_um, s.y_um)
    return float(np.hypot(xx, yy)[mask].max())


def components(mask: B) -> list[B]:
    """4-connected components, by propagating the minimum label (no scipy here)."""
    big = mask.size + 1
    labels = np.where(mask, np.arange(mask.size).reshape(mask.shape), big)
    while True:
        p = np.pad(labels, 1, constant_values=big)
        low = np.minimum.reduce([labels, p[:-2, 1:-1], p[2:, 1:-1], p[1:-1, :-2], p[1:-1, 2:]])
        low = np.where(mask, low, big)
        if np.array_equal(low, labels):
            return [labels == v for v in np.unique(labels[mask])]
        labels = low


def expected_matrix(cfg: SpecimenConfig, species: list[str], depth_nm: float) -> F64:
    """The configured composition, written out independently of the model's code."""
    w = np.array(
        [
            cfg.base_fraction[s]
            * max(1 + cfg.surface_excess[s] * math.exp(-depth_nm / cfg.transient_depth_nm), 0)
            * max(1 + cfg.depth_gradient_per_um[s] * depth_nm / 1000, 0)
            for s in species
        ]
    )
    return np.asarray(cfg.total_rate_hz * w / w.sum(), dtype=np.float64)


# --- the unsodiated matrix ------------------------------------------------------------


@pytest.mark.parametrize("depth", [0.0, 5.0, 20.0, 60.0, 500.0, 1000.0, 2000.0])
def test_bare_total_and_profiles_as_configured(depth: float) -> None:
    cfg = SpecimenConfig(total_rate_hz=2.0e7)
    s = Specimen(cfg, ALL, 256, 256, seed=1)
    r = s.rates(depth, BARE)
    assert r.shape == (9, 256, 256)
    assert r.sum() / (256 * 256) == pytest.approx(2.0e7, rel=1e-9)
    np.testing.assert_allclose(r.mean(axis=(1, 2)), expected_matrix(cfg, ALL, depth), rtol=1e-9)


def test_bare_profiles_follow_fig4_reference() -> None:
    """Fig. 4(i): Na+, SiO2-, PO2- rich at the surface; Zr species grow towards the bulk;
    the transient is gone after a few tens of nm."""
    s = specimen()
    mean = {d: s.rates(d, BARE).mean(axis=(1, 2)) for d in (0.0, 100.0, 150.0, 2000.0)}
    assert mean[0.0][idx("Na+")] > 1.3 * mean[100.0][idx("Na+")]
    for name in ("SiO2-", "PO2-"):
        assert mean[0.0][idx(name)] > 1.05 * mean[100.0][idx(name)]
    for name in ("Zr+", "Si+", "P-"):
        assert mean[0.0][idx(name)] < 0.8 * mean[100.0][idx(name)]
    np.testing.assert_allclose(mean[100.0], mean[150.0], rtol=0.02)  # transient spent
    for name in ("ZrO2-", "ZrO+"):
        assert mean[2000.0][idx(name)] > 1.1 * mean[150.0][idx(name)]


def test_bare_is_laterally_uniform_up_to_grain_texture() -> None:
    r = specimen(grain_contrast=0.03).rates(500.0, BARE)
    rel = r.std(axis=(1, 2)) / r.mean(axis=(1, 2))
    assert np.all((rel > 0.015) & (rel < 0.045))  # 3 % contrast, +-50 %
    assert np.abs(r / r.mean(axis=(1, 2), keepdims=True) - 1).max() < 0.25
    flat = specimen(grain_contrast=0.0).rates(500.0, BARE)
    np.testing.assert_allclose(flat, flat[:, :1, :1] * np.ones_like(flat), rtol=1e-12)


def test_species_subset_in_detector_order() -> None:
    cfg = SpecimenConfig()
    names = ["ZrO2-", "Na+", "O-"]
    r = Specimen(cfg, names, 32, 16, seed=0).rates(300.0, BARE)
    assert r.shape == (3, 16, 32)
    np.testing.assert_allclose(r.mean(axis=(1, 2)), expected_matrix(cfg, names, 300.0), rtol=1e-9)


# --- the Na island (Fig. 1b, c) -----------------------------------------------------


def test_island_enhances_na_inside_and_leaves_outside_alone() -> None:
    s = specimen()
    state = plated(0.02)
    mask = island(s, state)
    ratio = s.rates(20.0, state) / s.rates(20.0, BARE)
    inside = {name: float(ratio[idx(name)][mask].mean()) for name in ALL}
    assert inside["Na+"] > 5.0
    assert inside["O-"] > 1.5  # NaO passivation (Fig. 1c)
    for name in ("Zr+", "Si+", "P-"):
        assert inside[name] < 0.5
    xx, yy = np.meshgrid(s.x_um, s.y_um)
    far = np.hypot(xx, yy) > extents_um(s, mask)[0] / 2 + 8.0
    np.testing.assert_allclose(ratio[:, far], 1.0, atol=1e-3)


def test_island_width_follows_current_density() -> None:
    """Fig. 1b: ~20 x 20 µm at 0.02-0.04, ~112 x 112 µm at 0.5 µA µm^-2."""
    s = specimen()
    widths = []
    for j in (0.02, 0.04, 0.06, 0.1, 0.2, 0.5):
        wx, wy = extents_um(s, island(s, plated(j)))
        widths.append((wx + wy) / 2)
    assert widths == sorted(widths) and len(set(widths)) == len(widths)
    assert 15.0 <= widths[0] <= 25.0 and 15.0 <= widths[1] <= 25.0  # +-25 %
    assert widths[-1] == pytest.approx(112.0, rel=0.07)


def test_island_grows_with_plated_charge() -> None:
    s = specimen()
    areas = [float(island(s, plated(0.04, q=q)).sum()) for q in (0.0, 2e-6, 5e-6, 1e-5, 1e-4)]
    assert areas[0] == 0.0
    assert np.all(np.diff(areas) > 0)


@pytest.mark.parametrize("seed", range(5))
def test_failed_island_is_irregular_and_reaches_farther(seed: int) -> None:
    """Fig. 1b(v): inhomogeneous plating, Na nucleating away from the probe."""
    s = specimen(seed=seed)
    rounded, failed = island(s, plated(0.1)), island(s, plated(0.1, failed=True))
    assert circularity(rounded) > 0.58
    assert circularity(failed) < 0.7 * circularity(rounded)  # seeds 0-7 give 0.4-0.6
    assert reach_um(s, failed) > 1.25 * reach_um(s, rounded)  # seeds 0-7 give 1.35-1.85


# --- transport columns and reservoir (Fig. 5, Fig. S4) -------------------------------


def na_columns(s: Specimen, state: SpecimenState, depth: float) -> list[B]:
    na = s.rates(depth, state)[idx("Na+")]
    return components(na > 2 * np.median(na))


def test_single_column_below_ccd() -> None:
    s = specimen()
    found = na_columns(s, plated(0.04), 1000.0)
    assert len(found) == 1
    xx, yy = np.meshgrid(s.x_um, s.y_um)
    assert math.hypot(xx[found[0]].mean(), yy[found[0]].mean()) < 1.0  # under the probe
    assert not s.composition_truth(1000.0, plated(0.04))["reservoir_active"]


@pytest.mark.parametrize("seed", range(4))
def test_several_sporadic_columns_when_failed(seed: int) -> None:
    s = specimen(seed=seed)
    state = plated(0.1, failed=True)
    truth = s.composition_truth(1100.0, state)
    centres = truth["column_centers_um"]
    assert isinstance(centres, list) and len(centres) == 5
    assert all(truth_list(s, 1100.0, state, "column_active"))
    found = na_columns(s, state, 1100.0)
    assert len(found) == len(centres)
    xx, yy = np.meshgrid(s.x_um, s.y_um)
    seen = sorted((round(xx[c].mean(), 1), round(yy[c].mean(), 1)) for c in found)
    for (x, y), (tx, ty) in zip(seen, sorted(centres), strict=True):
        assert math.hypot(x - tx, y - ty) < 1.0
    assert not truth["reservoir_active"]


def test_reservoir_towards_bulk_below_ccd() -> None:
    s = specimen()
    xx, yy = np.meshgrid(s.x_um, s.y_um)
    ring = np.abs(np.hypot(xx, yy) - 10.0) < 1.0  # outside the column, inside the reservoir
    for depth, low, high in ((1000.0, 0.99, 1.01), (1800.0, 1.5, 10.0)):
        ratio = s.rates(depth, plated(0.04))[idx("Na+")] / s.rates(depth, BARE)[idx("Na+")]
        assert low < ratio[ring].mean() < high


# --- SEI (Figs. 4-6) -----------------------------------------------------------------

OXIDES = ("ZrO2-", "SiO2-", "PO2-", "O-")


def test_sei_enriches_oxides_near_surface_not_in_reference_region() -> None:
    s = specimen()
    footprint = s.composition_truth(150.0, plated(0.04))["footprint_mask"]
    assert isinstance(footprint, np.ndarray)
    xx, yy = np.meshgrid(s.x_um, s.y_um)
    reference = np.hypot(xx, yy) > extents_um(s, footprint)[0] / 2 + 8.0
    clean = s.rates(150.0, plated(0.04, sei=0.0))
    previous = np.ones(4)
    for sei in (0.25, 0.5, 1.0):
        ratio = s.rates(150.0, plated(0.04, sei=sei)) / clean
        gain = np.array([ratio[idx(n)][footprint].mean() for n in OXIDES])
        assert np.all(gain > previous)  # grows with sei_fraction
        previous = gain
        np.testing.assert_allclose(ratio[:, reference], 1.0, atol=1e-3)
    assert np.all(previous > 1.5)
    # Near the surface more than deep down.
    deep = s.rates(1800.0, plated(0.04, sei=1.0)) / s.rates(1800.0, plated(0.04))
    ring = np.abs(np.hypot(xx, yy) - 9.0) < 1.0  # in the footprint, off the column
    assert deep[idx("ZrO2-")][ring].mean() < 0.5 * (previous[0] - 1) + 1


def test_sei_along_columns_at_depth() -> None:
    s = specimen()
    state = plated(0.1, failed=True, sei=1.0)
    ratio = s.rates(1100.0, state) / s.rates(1100.0, plated(0.1, failed=True))
    xx, yy = np.meshgrid(s.x_um, s.y_um)
    for x, y in truth_list(s, 1100.0, state, "column_centers_um"):
        centre = np.hypot(xx - x, yy - y) < 2.0
        assert ratio[idx("ZrO2-")][centre].mean() > 1.5


def test_sei_without_plating_changes_nothing() -> None:
    s = specimen()
    for depth in (20.0, 400.0):
        np.testing.assert_array_equal(
            s.rates(depth, SpecimenState(sei_fraction=1.0)), s.rates(depth, BARE)
        )


# --- determinism, speed, properties --------------------------------------------------


def test_same_seed_same_specimen_other_seed_other_dendrite() -> None:
    state = plated(0.2, failed=True, sei=0.5)
    a, b, c = specimen(seed=3), specimen(seed=3), specimen(seed=4)
    np.testing.assert_array_equal(a.rates(700.0, state), b.rates(700.0, state))
    ma, mc = island(a, state), island(c, state)
    assert (ma ^ mc).sum() > 0.2 * (ma | mc).sum()
    assert (
        a.composition_truth(900.0, state)["column_centers_um"]
        != c.composition_truth(900.0, state)["column_centers_um"]
    )


_SMALL = Specimen(SpecimenConfig(), ALL, 24, 20, seed=11)


@settings(max_examples=60, deadline=None)
@given(
    depth=st.floats(0, 5000),
    q=st.floats(-1e-3, 1e-2),
    j=st.floats(0, 2),
    failed=st.booleans(),
    sei=st.floats(0, 1),
)
def test_rates_are_finite_and_non_negative(
    depth: float, q: float, j: float, failed: bool, sei: float
) -> None:
    state = SpecimenState(
        plated_charge_c=q, peak_plating_density_ua_um2=j, failed=failed, sei_fraction=sei
    )
    r = _SMALL.rates(depth, state)
    assert r.shape == (9, 20, 24) and r.dtype == np.float64
    assert np.all(np.isfinite(r)) and np.all(r >= 0)


# --- errors --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"fov_um": 0}, "lab.specimen.fov_um: must be > 0 (got 0)"),
        ({"total_rate_hz": "2e6"}, "lab.specimen.total_rate_hz: expected a number"),
        ({"grain_contrast": -0.1}, "lab.specimen.grain_contrast: must be >= 0"),
        ({"transient_depth_nm": math.inf}, "lab.specimen.transient_depth_nm: must be > 0"),
        ({"failed_column_count": 2.5}, "lab.specimen.failed_column_count: must be an integer"),
        ({"island_gain": {"K+": 2.0}}, "lab.specimen.island_gain.K+: unknown species"),
        ({"sei_gain": {"ZrO2-": 0}}, "lab.specimen.sei_gain.ZrO2-: must be > 0"),
        ({"surface_excess": {"Na+": -1}}, "lab.specimen.surface_excess.Na+: must be > -1"),
        ({"base_fraction": 0.3}, "lab.specimen.base_fraction: expected a table"),
        ({"fov": 100}, "lab.specimen: unknown key(s) fov"),
    ],
)
def test_config_errors_name_the_key_path(table: dict[str, object], message: str) -> None:
    with pytest.raises(SpecimenConfigError) as err:
        SpecimenConfig.from_mapping(table, "lab.specimen")
    assert str(err.value).startswith(message)
    assert isinstance(err.value, ValueError)


def test_config_from_mapping_merges_tables_onto_defaults() -> None:
    cfg = SpecimenConfig.from_mapping({"fov_um": 100, "island_gain": {"Na+": 3}})
    assert cfg.fov_um == 100.0 and cfg.island_gain["Na+"] == 3.0
    assert cfg.island_gain["O-"] == SpecimenConfig().island_gain["O-"]
    with pytest.raises(SpecimenConfigError, match=r"^sim\.specimen\.fov_um: must be > 0"):
        SpecimenConfig(fov_um=-1.0)


@pytest.mark.parametrize(
    ("species", "nx"), [(["Na+", "K+"], 8), (["Na+", "Na+"], 8), ([], 8), (["Na+"], 0)]
)
def test_bad_species_or_raster_rejected(species: list[str], nx: int) -> None:
    with pytest.raises(SpecimenConfigError):
        Specimen(SpecimenConfig(), species, nx, 8, seed=0)


def test_bad_state_and_depth_rejected() -> None:
    with pytest.raises(ValueError, match="sei_fraction"):
        SpecimenState(sei_fraction=1.5)
    with pytest.raises(ValueError, match="critical"):
        SpecimenState(critical_current_density_ua_um2=0.0)
    with pytest.raises(ValueError, match="depth_nm"):
        _SMALL.rates(-1.0, BARE)
