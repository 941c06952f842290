"""Linear Kramers-Kronig check: passes on circuit spectra with noise, fails on a drift
during the sweep and on a local artefact, and finds the outliers of the real BioLogic
spectrum."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
from opsims.analysis.circuits import Circuit
from opsims.analysis.ecfiles import read_spectra
from opsims.analysis.kk import MU_CUTOFF, kk_check, needs_capacitance

EIS_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "eis"
needs_eis_files = pytest.mark.skipif(
    not (EIS_DIR / "exampleDataBioLogic.mpt").is_file(),
    reason=f"sample spectra not found in {EIS_DIR}",
)
C128 = npt.NDArray[np.complex128]
CIRCUIT = Circuit("R0-p(R1,CPE1)-p(R2,CPE2)")
F = np.geomspace(7e6, 100, 60)  # the paper's window, high to low as swept
# Table 1, 0.04 µA µm⁻² (I): R_GB, R_Int (ohm), C_GB, C_Int (F); n chosen 0.90 / 0.85.
TRUTH = {
    "R0": 600.0,
    "R1": 3188.0,
    "CPE1_Q": 3.1e-10**0.9 * 3188.0**-0.1,
    "CPE1_n": 0.9,
    "R2": 25135.0,
    "CPE2_Q": 2.4e-9**0.85 * 25135.0**-0.15,
    "CPE2_n": 0.85,
}


def noisy(z: C128, seed: int, rel: float = 0.01) -> C128:
    rng = np.random.default_rng(seed)
    return z * (1 + rel * (rng.normal(size=z.size) + 1j * rng.normal(size=z.size)))


def test_exact_circuit_data_pass_with_tiny_residuals() -> None:
    r = kk_check(F, CIRCUIT.impedance(F, TRUTH))
    assert r.passed and r.mu_reached and r.mu < MU_CUTOFF
    assert r.rms < 2e-4 and r.max_abs < 1e-3
    assert not r.capacitance


def test_single_ideal_rc_passes_without_noise() -> None:
    # μ dips below c at M = 11 on this one, with 4 % residuals: not yet a plateau.
    f = np.geomspace(1e6, 0.1, 50)
    r = kk_check(f, Circuit("p(R1,C1)").impedance(f, [1e3, 1e-6]))
    assert r.passed and r.rms < 0.005 and r.m > 11, r.summary()


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_noisy_circuit_data_pass_at_the_noise_level(seed: int) -> None:
    r = kk_check(F, noisy(CIRCUIT.impedance(F, TRUTH), seed))
    assert r.verdict == "pass", r.summary()
    assert 0.005 < r.rms < 0.012  # 1 % per component, a little of it fitted away
    assert r.outliers() == []


def test_drift_during_the_sweep_fails() -> None:
    # Re Z creeps up by 5 % of |Z(f_min)| over the sweep, time weighted towards low f
    # (three periods per point): a time-variant cell, not a property of the spectrum.
    z = CIRCUIT.impedance(F, TRUTH)
    t = np.cumsum(np.maximum(3.0 / F, 0.05))
    drifted = noisy(z + 0.05 * abs(z[-1]) * t / t[-1], 1)
    r = kk_check(F, drifted)
    assert r.verdict == "fail"
    assert r.rms > r.rms_threshold
    assert any(reason.startswith("residual RMS") for reason in r.reasons())
    # The same noise without the drift passes.
    assert kk_check(F, noisy(z, 1)).passed


def test_local_artefact_fails_at_its_frequencies() -> None:
    z = noisy(CIRCUIT.impedance(F, TRUTH), 1)
    z[30:33] *= 1.15  # three points 15 % off: a range switch, say
    r = kk_check(F, z)
    assert r.verdict == "fail"
    bad = {f for f, _ in r.outliers()}
    assert bad and bad <= set(F[29:34].tolist())


def test_capacitive_tail_gets_a_series_capacitance() -> None:
    tail = Circuit("R0-p(R1,CPE1)-W1")
    z = tail.impedance(
        F, {"R0": 600, "R1": 3188, "CPE1_Q": TRUTH["CPE1_Q"], "CPE1_n": 0.9, "W1": 3e5}
    )
    assert needs_capacitance(F, z)
    with_c = kk_check(F, noisy(z, 4))
    assert with_c.capacitance and with_c.passed, with_c.summary()


@needs_eis_files
def test_real_biologic_spectrum_outliers() -> None:
    (s,) = read_spectra(EIS_DIR / "exampleDataBioLogic.mpt")
    r = kk_check(s.freq_hz, s.z)
    # The arc below 5 Hz is clean; two points in the noisy flat part are not.
    assert r.rms < r.rms_threshold
    assert [round(f, 2) for f, _ in r.outliers()] == [56.24, 5.34]
    assert r.verdict == "fail"
    low = s.freq_hz < 4.0
    assert np.max(np.abs(r.residual_real[low])) < 0.015
    assert np.max(np.abs(r.residual_imag[low])) < 0.015


@needs_eis_files
def test_real_csv_spectrum_needs_the_capacitance() -> None:
    s = read_spectra(EIS_DIR / "exampleData.csv")[0]
    auto = kk_check(s.freq_hz, s.z)
    assert auto.capacitance and auto.passed and auto.rms < 0.002
    without = kk_check(s.freq_hz, s.z, capacitance=False)
    assert not without.passed  # the unclosed low-frequency end cannot be followed


def test_bad_input() -> None:
    with pytest.raises(ValueError, match="at least 4 points"):
        kk_check(F[:3], CIRCUIT.impedance(F[:3], TRUTH))
    with pytest.raises(ValueError, match="finite f > 0"):
        kk_check(-F, CIRCUIT.impedance(F, TRUTH))
