"""Speed of one impedance fit: the three Table 1 spectra of the reference paper (60
frequencies, 7 MHz to 100 Hz, 1 % noise), circuit R0-p(R1,CPE1)-p(R2,CPE2), modulus
weighting. opsims starts from its automatic initial guesses (several starts, best kept,
covariance included); impedance.py (CustomCircuit.fit, weight_by_modulus) from a guess
read off the plots, in the same run.

    make bench          # or: pytest benchmarks/test_eis_fit_speed.py --benchmark-only -s

Prints the time per spectrum of both, the ratio, and the cost each reaches (the same
objective: sum of |Z_fit - Z|^2 / |Z|^2). The target for opsims is 20 ms per spectrum.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from opsims.analysis.circuits import Circuit
from opsims.analysis.eis_fit import DEFAULT_CIRCUIT, fit_circuit

C128 = npt.NDArray[np.complex128]
TABLE1 = [
    (3188.0, 25135.0, 3.1e-10, 2.4e-9),
    (5993.0, 19451.0, 2.9e-10, 1.6e-9),
    (15794.0, 57494.0, 2.6e-10, 3.6e-9),
]
F = np.geomspace(7e6, 100, 60)
#: What a user would read off the Nyquist plots: intercept, two diameters, n ~ 0.9.
HAND_GUESS = [500.0, 3000.0, 1e-9, 0.9, 2e4, 1e-8, 0.9]
TARGET_S = 0.020
RESULTS: dict[str, tuple[float, list[float]]] = {}


def spectra() -> list[C128]:
    c = Circuit(DEFAULT_CIRCUIT)
    rng = np.random.default_rng(7)
    out = []
    for r_gb, r_int, c_gb, c_int in TABLE1:
        z = c.impedance(
            F, [600.0, r_gb, c_gb**0.9 * r_gb**-0.1, 0.9, r_int, c_int**0.85 * r_int**-0.15, 0.85]
        )
        out.append(z * (1 + 0.01 * (rng.normal(size=F.size) + 1j * rng.normal(size=F.size))))
    return out


def cost(z: C128, z_fit: C128) -> float:
    d = (z_fit - z) / np.abs(z)
    return float(np.sum(d.real**2 + d.imag**2))


def fit_opsims(zs: list[C128]) -> list[float]:
    return [cost(z, fit_circuit(F, z).predict(F)) for z in zs]


def fit_impedance_py(zs: list[C128]) -> list[float]:
    from impedance.models.circuits import CustomCircuit

    out = []
    for z in zs:
        model = CustomCircuit(DEFAULT_CIRCUIT, initial_guess=HAND_GUESS)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # curve_fit's covariance warnings
            model.fit(F, z, weight_by_modulus=True)
        out.append(cost(z, model.predict(F)))
    return out


@pytest.fixture(scope="module")
def zs() -> list[C128]:
    return spectra()


def _run(name: str, fn: Any, benchmark: Any, zs: list[C128]) -> None:
    costs = benchmark.pedantic(fn, args=(zs,), rounds=5, warmup_rounds=1)
    per = benchmark.stats.stats.median / len(zs)
    RESULTS[name] = (per, costs)
    shown = ", ".join(f"{c:.4g}" for c in costs)
    print(f"\n{name}: {1e3 * per:.1f} ms per spectrum (median of 5 rounds); costs {shown}")
    if len(RESULTS) == 2:
        ours, theirs = RESULTS["opsims"], RESULTS["impedance.py"]
        verdict = "meets" if ours[0] <= TARGET_S else "misses"
        worse = [t / o for o, t in zip(ours[1], theirs[1], strict=True)]
        print(
            f"impedance.py / opsims time: {theirs[0] / ours[0]:.1f}x; opsims {verdict} the "
            f"{1e3 * TARGET_S:.0f} ms target; impedance.py's cost / ours: "
            + ", ".join(f"{w:.2f}" for w in worse)
        )


def test_opsims_fit(benchmark: Any, zs: list[C128]) -> None:
    _run("opsims", fit_opsims, benchmark, zs)


def test_impedance_py_fit(benchmark: Any, zs: list[C128]) -> None:
    pytest.importorskip("impedance.models.circuits")
    _run("impedance.py", fit_impedance_py, benchmark, zs)
