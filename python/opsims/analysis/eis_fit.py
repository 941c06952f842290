"""Complex non-linear least squares (CNLS) fit of an equivalent circuit to a spectrum.

* Residuals: the real and imaginary parts of Z_fit - Z, each multiplied by a weight:
  ``modulus`` 1/|Z| (the default; every point counts by its relative error),
  ``proportional`` 1/|Re Z| and 1/|Im Z| (each floored at 1 % of |Z| so points on the
  real axis do not dominate), ``unit`` 1 (scaled by the median |Z|, which does not move
  the optimum).
* Parameters: ln of every positive magnitude (R, C, L, Q, A_W, τ) and the CPE exponent
  n in [0.5, 1], so a step is the same size for 10 Ω and 1e5 Ω or Q of 1e-12 and 1e-6;
  analytic Jacobian (:meth:`Circuit.evaluate`).
* Starts: automatic (:mod:`opsims.analysis.initial_guess`). Each start is run by
  scipy's ``least_squares`` with Levenberg-Marquardt (bounds kept by a tanh map); the
  lowest cost is polished by ``least_squares``' bounded trust-region method (TRF). The
  starts stop once two of them, one seeded wholly from the data, end in the same
  lowest minimum.
* Uncertainty: covariance s²(JᵀJ)⁻¹ at the optimum with s² = χ²/(2N - p), the residual
  variance, so standard errors follow the scatter actually seen; mapped from internal
  coordinates to values by the delta method (sigma_R = R·sigma_lnR). Directions the
  data do not constrain (a singular JᵀJ) give an infinite standard error.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np
import numpy.typing as npt
from scipy.optimize import least_squares

from opsims.analysis.circuits import Circuit
from opsims.analysis.initial_guess import (
    SpectrumFeatures,
    Start,
    initial_guesses,
    spectrum_features,
)

F64 = npt.NDArray[np.float64]
C128 = npt.NDArray[np.complex128]
Weighting = Literal["modulus", "proportional", "unit"]
WEIGHTINGS: tuple[str, ...] = get_args(Weighting)
DEFAULT_CIRCUIT = "R0-p(R1,CPE1)-p(R2,CPE2)"
N_BOUNDS = (0.5, 1.0)


class FitError(ValueError):
    """A spectrum that cannot be fitted (too few points, bad values, bad options)."""


@dataclass(frozen=True)
class FitResult:
    """A fitted circuit: values and standard errors by parameter name, and the fit."""

    circuit: Circuit
    weighting: Weighting
    freq_hz: F64
    z: C128
    z_fit: C128
    values: dict[str, float]
    stderr: dict[str, float]
    x: F64  # internal coordinates at the optimum
    covariance: F64  # of x
    chi2: float  # Σ of squared weighted residuals
    dof: int  # 2N - p
    rms_relative: float  # sqrt(mean |Z_fit - Z|² / |Z|²)
    starts: int
    start_origins: tuple[str, ...]
    start_costs: tuple[float, ...]
    success: bool
    message: str
    at_bounds: tuple[str, ...]
    features: SpectrumFeatures
    evaluations: int

    @property
    def reduced_chi2(self) -> float:
        return self.chi2 / self.dof if self.dof > 0 else float("nan")

    def relative_stderr(self, name: str) -> float:
        v = self.values[name]
        return abs(self.stderr[name] / v) if v else float("inf")

    def predict(self, freq_hz: npt.ArrayLike) -> C128:
        return self.circuit.impedance(freq_hz, self.values)


def weights(z: C128, weighting: str) -> tuple[F64, F64]:
    """Per-point weights of the real and imaginary residuals."""
    mod = np.abs(z)
    if weighting == "modulus":
        return 1.0 / mod, 1.0 / mod
    if weighting == "proportional":
        floor = 0.01 * mod
        return 1.0 / np.maximum(np.abs(z.real), floor), 1.0 / np.maximum(np.abs(z.imag), floor)
    if weighting == "unit":
        s = np.full(z.shape, 1.0 / float(np.median(mod)))
        return s, s
    raise FitError(f"weighting must be one of {', '.join(WEIGHTINGS)}, got {weighting!r}")


def parameter_bounds(circuit: Circuit, freq_hz: F64, z: C128) -> tuple[F64, F64]:
    """Generous bounds in internal coordinates, relative to the data's scale."""
    zmax = float(np.max(np.abs(z)))
    w_min, w_max = 2 * math.pi * float(np.min(freq_hz)), 2 * math.pi * float(np.max(freq_hz))
    lo, hi = [], []
    for p in circuit.params:
        a, b = {
            "resistance": (1e-7 * zmax, 1e3 * zmax),
            "capacitance": (1e-20, 1e3),
            "cpe_q": (1e-20, 1e3),
            "inductance": (1e-16, 1e3),
            "warburg": (1e-9 * zmax, 1e6 * zmax * math.sqrt(w_max)),
            "time": (1e-4 / w_max, 1e4 / w_min),
            "exponent": N_BOUNDS,
        }[p.role]
        if p.log_scaled:
            a, b = math.log(a), math.log(b)
        lo.append(a)
        hi.append(b)
    return np.array(lo), np.array(hi)


class _Problem:
    """Weighted residuals and their Jacobian, sharing one circuit evaluation."""

    def __init__(self, circuit: Circuit, freq_hz: F64, z: C128, weighting: str) -> None:
        self.circuit = circuit
        self.omega = 2 * math.pi * freq_hz
        self.z = z
        self.w_re, self.w_im = weights(z, weighting)
        self._x: F64 | None = None
        self._jac: F64 | None = None
        self.evaluations = 0

    def residuals(self, x: F64) -> F64:
        zf, dz = self.circuit.evaluate(self.omega, x)
        self.evaluations += 1
        self._x = x.copy()
        self._jac = np.hstack([dz.real * self.w_re, dz.imag * self.w_im]).T
        d = zf - self.z
        return np.concatenate([d.real * self.w_re, d.imag * self.w_im])

    def jacobian(self, x: F64) -> F64:
        if self._x is None or self._jac is None or not np.array_equal(x, self._x):
            self.residuals(x)
        assert self._jac is not None
        return self._jac


def _covariance(jac: F64, chi2: float, dof: int) -> F64:
    """s²(JᵀJ)⁻¹ by SVD; infinite variance along directions J does not see."""
    _, s, vt = np.linalg.svd(jac, full_matrices=False)
    p = vt.shape[0]
    tol = np.finfo(float).eps * max(jac.shape) * (s[0] if s.size else 0.0)
    keep = s > tol
    s2 = chi2 / dof if dof > 0 else float("nan")
    cov = (vt[keep].T / s[keep] ** 2) @ vt[keep] * s2
    if not np.all(keep):
        blind = np.any(np.abs(vt[~keep]) > 1e-3, axis=0)
        cov[blind, :] = np.inf
        cov[:, blind] = np.inf
    return np.asarray(cov.reshape(p, p), dtype=np.float64)


def _screen(problem: _Problem, x0: F64, lo: F64, hi: F64, max_nfev: int = 60) -> tuple[F64, float]:
    """A Levenberg-Marquardt run from one start, bounds kept by x = mid + half·tanh(u):
    MINPACK's loop costs a fifth of the bounded trust-region one per step, which is
    what several starts per spectrum need. The winner is polished with bounds after."""
    mid, half = (lo + hi) / 2, (hi - lo) / 2
    u0 = np.arctanh(np.clip((x0 - mid) / half, -0.999999, 0.999999))

    def fun(u: F64) -> F64:
        return problem.residuals(mid + half * np.tanh(u))

    def jac(u: F64) -> F64:
        t = np.tanh(u)
        return problem.jacobian(mid + half * t) * (half * (1.0 - t * t))

    r = least_squares(
        fun, u0, jac=jac, method="lm", xtol=1e-7, ftol=1e-7, gtol=1e-8, max_nfev=max_nfev
    )
    return np.asarray(mid + half * np.tanh(r.x), dtype=np.float64), float(2 * r.cost)


def fit_circuit(
    freq_hz: npt.ArrayLike,
    z: npt.ArrayLike,
    circuit: str | Circuit = DEFAULT_CIRCUIT,
    weighting: Weighting = "modulus",
    initial: Mapping[str, float] | None = None,
    max_starts: int = 8,
    stop_when_agree: bool = True,
) -> FitResult:
    """Fit ``circuit`` to (f, Z) from automatic starts (or ``initial``, by name)."""
    c = circuit if isinstance(circuit, Circuit) else Circuit(circuit)
    f = np.asarray(freq_hz, dtype=np.float64)
    zz = np.asarray(z, dtype=np.complex128)
    if f.ndim != 1 or f.shape != zz.shape:
        raise FitError("frequencies and impedances must be 1-D arrays of the same length")
    if not (np.all(np.isfinite(f)) and np.all(f > 0) and np.all(np.isfinite(zz))):
        raise FitError("frequencies must be finite and > 0, impedances finite")
    if np.any(zz == 0):
        raise FitError("impedance of exactly 0 at some frequency")
    p = len(c.params)
    if 2 * f.size <= p:
        raise FitError(f"{f.size} points cannot determine {p} parameters of {c}")
    if weighting not in WEIGHTINGS:
        raise FitError(f"weighting must be one of {', '.join(WEIGHTINGS)}, got {weighting!r}")
    order = np.argsort(-f)
    f, zz = f[order], zz[order]
    features = spectrum_features(f, zz)
    lo, hi = parameter_bounds(c, f, zz)
    if initial is not None:
        starts = [Start(c.to_internal(initial), "given", True)]
    else:
        starts = initial_guesses(c, f, zz, max_starts=max_starts, features=features)
    problem = _Problem(c, f, zz, weighting)
    costs: list[float] = []
    best_x: F64 | None = None
    best_k = 0
    for k, start in enumerate(starts):
        x, cost = _screen(problem, start.x, lo, hi)
        costs.append(cost)
        if best_x is None or cost < costs[best_k]:
            best_x, best_k = x, k
        # Stop once a start seeded wholly from the data and another one end in the same
        # lowest minimum; starts that had to invent arcs are all tried.
        at_best = [j for j, cj in enumerate(costs) if cj - costs[best_k] <= 1e-6 * costs[best_k]]
        if stop_when_agree and len(at_best) >= 2 and any(starts[j].from_data for j in at_best):
            break
    assert best_x is not None
    best = least_squares(
        problem.residuals,
        np.clip(best_x, lo, hi),
        jac=problem.jacobian,
        bounds=(lo, hi),
        method="trf",
        x_scale=1.0,
        ftol=1e-12,
        xtol=1e-12,
        gtol=1e-12,
        max_nfev=200,
    )
    x = np.asarray(best.x, dtype=np.float64)
    z_fit, _ = c.evaluate(2 * math.pi * f, x, jacobian=False)
    res = problem.residuals(x)
    chi2 = float(res @ res)
    dof = 2 * f.size - p
    cov = _covariance(problem.jacobian(x), chi2, dof)
    sd_internal = np.sqrt(np.abs(np.diag(cov)))
    values = c.from_internal(x)
    stderr = {}
    for k, prm in enumerate(c.params):
        stderr[prm.name] = float(
            values[prm.name] * sd_internal[k] if prm.log_scaled else sd_internal[k]
        )
    span = hi - lo
    at_bounds = tuple(
        prm.name
        for k, prm in enumerate(c.params)
        if x[k] - lo[k] < 1e-6 * span[k] or hi[k] - x[k] < 1e-6 * span[k]
    )
    rel = np.abs(z_fit - zz) / np.abs(zz)
    return FitResult(
        circuit=c,
        weighting=weighting,
        freq_hz=f,
        z=zz,
        z_fit=z_fit,
        values=values,
        stderr=stderr,
        x=x,
        covariance=cov,
        chi2=chi2,
        dof=dof,
        rms_relative=float(np.sqrt(np.mean(rel**2))),
        starts=len(costs),
        start_origins=tuple(s.origin for s in starts[: len(costs)]),
        start_costs=tuple(costs),
        success=bool(best.success),
        message=str(best.message),
        at_bounds=at_bounds,
        features=features,
        evaluations=problem.evaluations,
    )
