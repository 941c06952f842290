"""The simulated Na | NASICON half-cell against the paper's observations (Fig. 2, Fig. 3,
Table 1) and its own contracts: sign convention, open circuit, step-size independence,
noise statistics and configuration errors.

Currents follow EC-Lab: I < 0 plates onto the probe, I > 0 strips.
"""

from __future__ import annotations

import math
from dataclasses import astuple

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opsims.sim.cell import Cell, CellConfig, CellConfigError, CellState, Mode

F64 = npt.NDArray[np.float64]
UA = 1e-6
QUIET = CellConfig(noise_v=0.0, current_noise_a=0.0, eis_noise_rel=0.0)
# Table 1: R_GB, R_Int (ohm), C_GB, C_Int (F) for 0.04 (I), 0.04 (II) and 0.1 µA µm⁻².
TABLE1 = {
    "I": (3188.0, 25135.0, 3.1e-10, 2.4e-9),
    "II": (5993.0, 19451.0, 2.9e-10, 1.6e-9),
    "failed": (15794.0, 57494.0, 2.6e-10, 3.6e-9),
}
LIMIT_V = 10.0  # the daemon's interlock


def cell(config: CellConfig = QUIET, seed: int = 7) -> Cell:
    return Cell(config, np.random.default_rng(seed))


def run(c: Cell, amps: float, seconds: float, dt: float = 1.0) -> tuple[F64, F64, F64]:
    """Hold ``amps`` for ``seconds``, sampling after every step: (t, Ewe, I)."""
    c.set_current(amps)
    n = round(seconds / dt)
    out = np.empty((3, n))
    for k in range(n):
        c.advance(dt)
        ewe, i = c.sample()
        out[:, k] = (c.state().time_s, ewe, i)
    return out[0], out[1], out[2]


def strip_until_trip(c: Cell, amps: float = 0.04 * UA, dt: float = 1.0) -> float:
    """Strip until |Ewe| passes the interlock, then open the circuit; returns the duration."""
    c.set_current(amps)
    t = 0.0
    while abs(c.sample()[0]) <= LIMIT_V:
        c.advance(dt)
        t += dt
        assert t < 600, "no depletion spike"
    c.open_circuit()
    return t


def paper_scenarios() -> dict[str, dict[str, float]]:
    """Fig. 2/3: 30 min at 0.04 µA (I), strip to the interlock, re-plate 15 min (II); then a
    fresh region at 0.1 µA for 12 min (same charge as I), which fails."""
    c = cell()
    out = {}
    run(c, -0.04 * UA, 1800)
    out["I"] = c.eis_parameters()
    strip_until_trip(c)
    run(c, -0.04 * UA, 900)
    out["II"] = c.eis_parameters()
    c.new_region()
    run(c, -0.1 * UA, 720)
    out["failed"] = c.eis_parameters()
    return out


# -- cycle graphs (Fig. 2) --------------------------------------------------------------------


def test_plating_at_ccd_oscillates_between_40_and_60_mv_without_failure() -> None:
    c = cell(CellConfig())  # default noise (0.5 mV)
    _, v, i = run(c, -0.04 * UA, 1800, dt=5.0)  # the paper's 5 s points
    assert np.all(v < 0), "plating drives the probe negative (EC-Lab convention)"
    mag = np.abs(v) * 1e3
    # 40-60 mV plus up to ~1.2 mV of I*R and 0.5 mV noise: 3 mV of slack each side.
    assert mag.min() > 37 and mag.max() < 63
    assert mag.max() - mag.min() > 15, "the nucleation/growth oscillation is visible"
    crossings = np.count_nonzero(np.diff(np.sign(mag - 50.0)) != 0)
    assert crossings >= 10, "several oscillations in 30 min"
    assert not c.state().failed
    np.testing.assert_allclose(i, -0.04 * UA, atol=1e-10)


def test_plating_above_ccd_fails_and_the_voltage_stays_at_half_or_less() -> None:
    c = cell(CellConfig())
    t, v, _ = run(c, -0.1 * UA, 720)
    s = c.state()
    assert s.failed and s.peak_plating_density_ua_um2 == pytest.approx(0.1)
    before = np.abs(v[t <= CellConfig().failure_onset_s]).mean()
    after = np.abs(v[t >= 300])  # five collapse time constants after the onset
    assert after.max() <= 0.5 * before
    # ...and stays: the last minute is no higher than the minute after the collapse.
    assert np.abs(v[-60:]).mean() <= np.abs(v[(t >= 300) & (t < 360)]).mean() * 1.2
    # The offset: the current is constant while the voltage falls.
    assert np.abs(v[(t > 30) & (t < 90)]).mean() > np.abs(v[t > 300]).mean() * 1.5


def test_failure_is_permanent_for_the_region_and_a_new_region_is_fresh() -> None:
    c = cell()
    run(c, -0.1 * UA, 120)
    assert c.state().failed
    c.open_circuit()
    c.advance(60)
    _, v, _ = run(c, -0.02 * UA, 300)
    assert c.state().failed
    fresh = cell()
    _, v_fresh, _ = run(fresh, -0.02 * UA, 300)
    assert np.abs(v).mean() < 0.5 * np.abs(v_fresh).mean()
    c.new_region()
    s = c.state()
    assert not s.failed and s.plated_charge_c == 0 and s.peak_plating_density_ua_um2 == 0
    assert s.mode is Mode.OPEN_CIRCUIT and s.current_a == 0.0


def test_probe_area_and_ccd_set_the_failure_threshold() -> None:
    wide = cell(CellConfig(probe_area_um2=2.0, noise_v=0.0))
    run(wide, -0.06 * UA, 300)  # J = 0.03
    assert not wide.state().failed
    run(wide, -0.1 * UA, 60)  # J = 0.05
    assert wide.state().failed
    tolerant = cell(CellConfig(critical_current_density_ua_um2=0.2, noise_v=0.0))
    run(tolerant, -0.1 * UA, 300)
    assert not tolerant.state().failed


def test_stripping_after_30_min_plating_depletes_in_about_40_s_then_spikes() -> None:
    c = cell(CellConfig())
    run(c, -0.04 * UA, 1800)
    assert c.state().reservoir_c == pytest.approx(0.04 * UA * 40, rel=0.01)
    c.set_current(0.04 * UA)
    t, v, depleted = [], [], []
    for k in range(600):  # 60 s of 0.1 s points, current never interrupted
        c.advance(0.1)
        t.append((k + 1) * 0.1)
        v.append(c.sample()[0])
        depleted.append(c.state().depleted)
    ta, va = np.array(t), np.array(v)
    depleted_at = ta[np.argmax(depleted)]
    assert any(depleted) and 38 <= depleted_at <= 42
    pre = va[ta < depleted_at]
    assert np.all(pre > 0), "stripping drives the probe positive"
    assert pre[-10:].mean() > 3 * pre[:10].mean(), "voltage rises as the reservoir empties"
    assert pre.max() < 2.0, "no spike before depletion"
    crossing = ta[np.flatnonzero(va > LIMIT_V)[0]]
    assert crossing - depleted_at < 5, "the interlock sees > 10 V within a few seconds"
    assert 12.5 < va[-20:].mean() < 13.5, "the spike settles near 13 V while current flows"


def test_replating_after_a_strip_shows_a_step_then_about_40_mv() -> None:
    c = cell(CellConfig())
    run(c, -0.04 * UA, 1800)
    strip_until_trip(c)
    c.advance(30)
    t, v, _ = run(c, -0.04 * UA, 900)
    t = t - t[0]
    mag = np.abs(v) * 1e3
    early, late = mag[t < 60], mag[t > 180]
    assert early.mean() > 55, "before the step: the 60 mV top of the old oscillation"
    assert abs(late.mean() - 40) < 3 and late.max() - late.min() < 8, "settled at ~40 mV"
    jump = np.abs(np.diff(mag[(t > 30) & (t < 180)]))
    assert jump.max() > 10, "a step, not a drift: >10 mV between 1 s points"
    assert c.state().sei_fraction > 0.5


def test_open_circuit_stops_current_at_once_and_ewe_relaxes_to_rest() -> None:
    c = cell(CellConfig(noise_v=1e-3))
    run(c, -0.04 * UA, 120)
    c.open_circuit()
    ewe, i = c.sample()
    assert i == 0.0 and c.state().current_a == 0.0 and c.state().mode is Mode.OPEN_CIRCUIT
    _, v, cur = run_open(c, 60)
    assert np.all(cur == 0.0)
    rest = v[-30:]
    assert abs(rest.mean()) < 1e-3 and 0.5e-3 < rest.std() < 2e-3, "near 0 V, with noise"
    assert ewe < -0.02, "relaxation starts from the plating polarisation"


def run_open(c: Cell, seconds: float, dt: float = 1.0) -> tuple[F64, F64, F64]:
    c.open_circuit()
    n = round(seconds / dt)
    out = np.empty((3, n))
    for k in range(n):
        c.advance(dt)
        ewe, i = c.sample()
        out[:, k] = (k * dt, ewe, i)
    return out[0], out[1], out[2]


def test_plated_and_stripped_charge_bookkeeping() -> None:
    c = cell()
    run(c, -0.04 * UA, 600)
    s = c.state()
    assert s.plated_charge_c == pytest.approx(0.04 * UA * 600)
    assert s.island_charge_c == pytest.approx(s.plated_charge_c)
    run(c, 0.04 * UA, 5)
    s2 = c.state()
    assert s2.plated_charge_c == pytest.approx(s.plated_charge_c - 0.04 * UA * 5)
    assert s2.reservoir_c == pytest.approx(s.reservoir_c - 0.04 * UA * 5)
    strip_until_trip(c)
    s3 = c.state()
    # Only the reservoir leaves; the rest stays in the bulk (the paper's Fig. S4(i) reservoir).
    assert s3.depleted and s3.reservoir_c == 0 and s3.island_charge_c == 0
    assert s3.plated_charge_c == pytest.approx(s.plated_charge_c - s.reservoir_c)


# -- step-size independence --------------------------------------------------------------------


SCENARIO = [(-0.04, 900.0), (0.04, 30.0), (0.04, 15.0), (0.0, 20.0), (-0.04, 400.0), (-0.1, 90.0)]


def play(dt: float) -> tuple[CellState, list[float]]:
    c = cell()
    ewes = []
    for amps, seconds in SCENARIO:
        c.set_current(amps * UA)
        for _ in range(round(seconds / dt)):
            c.advance(dt)
        ewes.append(c.state().ewe_v)
    return c.state(), ewes


def test_same_scenario_with_10_ms_and_1_s_steps_gives_the_same_state() -> None:
    fine, fine_v = play(0.01)
    coarse, coarse_v = play(1.0)
    assert fine.failed == coarse.failed and fine.depleted == coarse.depleted
    for name in ("time_s", "plated_charge_c", "reservoir_c", "sei_fraction", "r_gb_ohm"):
        assert getattr(fine, name) == pytest.approx(getattr(coarse, name), rel=1e-6), name
    assert fine.r_int_ohm == pytest.approx(coarse.r_int_ohm, rel=1e-6)
    # Ewe at each segment end; the failure onset may land one 10 ms step later.
    np.testing.assert_allclose(fine_v, coarse_v, rtol=1e-3, atol=1e-5)


@settings(max_examples=25, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from([-0.1, -0.04, -0.02, 0.0, 0.04]), st.integers(1, 120)),
        min_size=1,
        max_size=6,
    ),
    st.integers(1, 50),
)
def test_any_schedule_any_split_same_state_and_sane_invariants(
    schedule: list[tuple[float, int]], pieces: int
) -> None:
    whole, split = cell(), cell()
    failed_before = False
    for amps, seconds in schedule:
        for c in (whole, split):
            c.set_current(amps * UA)
        whole.advance(float(seconds))
        for _ in range(pieces):
            split.advance(seconds / pieces)
        s = split.state()
        assert s.plated_charge_c >= 0 and s.reservoir_c >= 0 and 0 <= s.sei_fraction <= 1
        assert s.failed or not failed_before, "failure is permanent"
        failed_before = s.failed
    a, b = astuple(whole.state()), astuple(split.state())
    np.testing.assert_allclose(
        np.array(a[2:], dtype=float), np.array(b[2:], dtype=float), rtol=1e-6, atol=1e-12
    )


# -- EIS (Fig. 3, Table 1) ---------------------------------------------------------------------


def analytic(p: dict[str, float], f: F64) -> npt.NDArray[np.complex128]:
    jw = 2j * np.pi * f
    gb = p["r_gb"] / (1 + p["r_gb"] * p["q_gb"] * jw ** p["n_gb"])
    inter = p["r_int"] / (1 + p["r_int"] * p["q_int"] * jw ** p["n_int"])
    return np.asarray(p["r_s"] + gb + inter, dtype=np.complex128)


def test_noise_free_impedance_is_r_plus_two_r_cpe() -> None:
    c = cell()
    run(c, -0.04 * UA, 1800)
    f = np.logspace(np.log10(7e6), 2, 61)
    z = c.impedance(f, 0.3)
    np.testing.assert_allclose(z, analytic(c.eis_parameters(), f), rtol=1e-12)
    assert c.state().mode is Mode.EIS and c.sample()[1] == 0.0
    # Limits: high frequency -> R_s (offset from origin), low -> R_s + R_gb + R_int.
    p = c.eis_parameters()
    far = c.impedance(np.array([1e12, 1e-3]), 0.3)
    assert far[0].real == pytest.approx(p["r_s"], rel=1e-2)
    assert far[1].real == pytest.approx(p["r_s"] + p["r_gb"] + p["r_int"], rel=1e-2)


def test_paper_scenarios_reproduce_table1() -> None:
    got = paper_scenarios()
    for name, (r_gb, r_int, c_gb, c_int) in TABLE1.items():
        p = got[name]
        assert p["r_gb"] == pytest.approx(r_gb, rel=0.03), name
        assert p["r_int"] == pytest.approx(r_int, rel=0.03), name
        # Effective capacitance from the true CPE: C = (R^(1-n) Q)^(1/n).
        for arc, table_c in (("gb", c_gb), ("int", c_int)):
            r, q, n = p[f"r_{arc}"], p[f"q_{arc}"], p[f"n_{arc}"]
            assert (r ** (1 - n) * q) ** (1 / n) == pytest.approx(table_c, rel=0.03), name
            assert p[f"c_{arc}"] == pytest.approx(table_c, rel=0.03), name
    # The trend the paper reads: grain boundaries degrade with cycling, the failed region is
    # the most resistive, and R_int falls from I to II (the smaller second island).
    assert got["I"]["r_gb"] < got["II"]["r_gb"] < got["failed"]["r_gb"]
    assert got["II"]["r_int"] < got["I"]["r_int"] < got["failed"]["r_int"]


def test_nyquist_has_two_arcs_at_their_apex_frequencies() -> None:
    got = paper_scenarios()
    f = np.logspace(np.log10(7e6), 2, 400)
    for name, p in got.items():
        z = analytic(p, f)
        assert np.all(-z.imag > 0), "capacitive throughout the window"
        # -dRe/dln f peaks at each arc's apex; unlike -Im it is not swamped by the big
        # interfacial arc's tail (R_int is ~8x R_gb), so it separates the two arcs.
        d = -np.gradient(z.real, np.log(f))
        peaks = f[1:-1][(d[1:-1] > d[:-2]) & (d[1:-1] > d[2:])]
        assert peaks.size == 2, name
        f_int, f_gb = sorted(peaks)
        apex_gb = 1 / (2 * np.pi * p["r_gb"] * p["c_gb"])
        apex_int = 1 / (2 * np.pi * p["r_int"] * p["c_int"])
        assert apex_gb / 1.5 < f_gb < apex_gb * 1.5, name  # pulled down by the other arc
        assert apex_int / 1.1 < f_int < apex_int * 1.1, name
        # Each R||CPE alone has its -Im maximum exactly at omega = 1/(R C_eff).
        for arc, apex in (("gb", apex_gb), ("int", apex_int)):
            r, q, n = p[f"r_{arc}"], p[f"q_{arc}"], p[f"n_{arc}"]
            w = 2 * np.pi * apex * np.array([0.99, 1.0, 1.01])
            im = (-(r / (1 + r * q * (1j * w) ** n))).imag
            assert im[1] > im[0] and im[1] > im[2]


def test_eis_noise_is_multiplicative_at_the_configured_level() -> None:
    noisy = cell(CellConfig(eis_noise_rel=0.02), seed=3)
    run(noisy, -0.04 * UA, 600)
    f = np.logspace(np.log10(7e6), 2, 20000)
    truth = analytic(noisy.eis_parameters(), f)
    for amplitude, sigma in ((0.3, 0.02), (0.1, 0.06)):
        r = noisy.impedance(f, amplitude) / truth - 1
        se = sigma / math.sqrt(f.size)
        for part in (r.real, r.imag):
            assert abs(part.mean()) < 5 * se
            assert part.std() == pytest.approx(sigma, rel=0.03)
        assert abs(np.corrcoef(r.real, r.imag)[0, 1]) < 0.05


def test_ewe_noise_matches_noise_v_and_seed_determines_samples() -> None:
    a, b = cell(CellConfig(noise_v=2e-3), seed=5), cell(CellConfig(noise_v=2e-3), seed=5)
    _, va, ia = run(a, -0.04 * UA, 600)
    _, vb, ib = run(b, -0.04 * UA, 600)
    assert np.array_equal(va, vb) and np.array_equal(ia, ib)
    quiet = cell(seed=5)
    _, vq, _ = run(quiet, -0.04 * UA, 600)
    assert (va - vq).std() == pytest.approx(2e-3, rel=0.1)


# -- configuration -----------------------------------------------------------------------------


def test_config_from_mapping_accepts_ints_and_keeps_defaults() -> None:
    cfg = CellConfig.from_mapping({"probe_area_um2": 2, "noise_v": 0.001})
    assert cfg.probe_area_um2 == 2.0 and isinstance(cfg.probe_area_um2, float)
    assert cfg.critical_current_density_ua_um2 == 0.04


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"probe_area_um2": -1}, "sim.cell.probe_area_um2: must be > 0 (got -1)"),
        ({"probe_area_um": 1.0}, "sim.cell.probe_area_um: unknown key"),
        ({"noise_v": "1 mV"}, "sim.cell.noise_v: expected a number, got str '1 mV'"),
        ({"relax_s": True}, "sim.cell.relax_s: expected a number, got bool True"),
        ({"noise_v": -0.1}, "sim.cell.noise_v: must be >= 0 (got -0.1)"),
        ({"n_gb": 1.2}, "sim.cell.n_gb: must be <= 1"),
        ({"strip_reservoir_fraction": 0}, "sim.cell.strip_reservoir_fraction: must be > 0"),
        ({"depletion_spike_v": float("nan")}, "sim.cell.depletion_spike_v: must be finite"),
    ],
)
def test_config_errors_name_the_key_path(table: dict[str, object], message: str) -> None:
    with pytest.raises(CellConfigError) as err:
        CellConfig.from_mapping(table)
    assert str(err.value).startswith(message)


def test_config_error_uses_the_given_path_and_direct_construction_checks_too() -> None:
    with pytest.raises(CellConfigError, match=r"^sim\.potentiostat\.cell\.relax_s: must be > 0"):
        CellConfig.from_mapping({"relax_s": 0}, path="sim.potentiostat.cell")
    with pytest.raises(CellConfigError, match=r"^sim\.cell\.probe_area_um2"):
        CellConfig(probe_area_um2=0.0)
    assert issubclass(CellConfigError, ValueError)


def test_bad_control_values_are_refused() -> None:
    c = cell()
    with pytest.raises(ValueError):
        c.set_current(float("nan"))
    with pytest.raises(ValueError):
        c.advance(-1.0)
    with pytest.raises(ValueError):
        c.impedance(np.array([1e3, 0.0]), 0.3)
    with pytest.raises(ValueError):
        c.impedance(np.array([1e3]), 0.0)
