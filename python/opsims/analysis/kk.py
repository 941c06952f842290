"""Linear Kramers-Kronig (KK) validity check: the measurement-model approach of Boukamp
(J. Electrochem. Soc. 142 (1995) 1885) with the automatic choice of the number of RC
elements of Schönleber et al. (Electrochim. Acta 131 (2014) 20).

A spectrum of a linear, causal, stable, time-invariant system is reproduced by

    Z(ω) = R_s + jωL + Σ_{k=1..M} R_k / (1 + jωτ_k)   (+ 1/(jωC) when asked)

with the τ_k fixed and log-spaced over 1/ω_max … 1/ω_min, so the fit is *linear* in
(R_s, L, R_k): one weighted least-squares solve per M, no starting values, no local
minima. M grows until μ = 1 - Σ_{R_k<0}|R_k| / Σ_{R_k≥0}|R_k| falls below
c = 0.85: before that the model under-fits, after it the R_k start to oscillate in sign
(over-fit). The count starts at 1.5 elements per decade of the window, below which a
depressed arc alone can drive μ under c, and an M is taken only where the residual has
levelled off (three more elements do not halve it): on noise-free data μ can dip below
c while the grid still cannot follow one sharp RC. A series capacitance joins the model
when the low-frequency end is capacitive (a blocking electrode or a diffusion tail never
returns to the real axis). The residuals relative to |Z|,

    Δ_re = (Re Z - Re Ẑ)/|Z|,   Δ_im = (Im Z - Im Ẑ)/|Z|,

are then at the noise level for valid data, and show structure (drift during the sweep,
a non-linear response, an instrument artefact) otherwise. The verdict compares them
with thresholds: an RMS of 2 % and a largest single residual of 6 % by default (data
with 1 % noise per component pass with a wide margin; see docs/eis-analysis.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from opsims.analysis.drt import rc_basis

F64 = npt.NDArray[np.float64]
C128 = npt.NDArray[np.complex128]

MU_CUTOFF = 0.85
#: μ is read from this many RC elements per decade of the window up: with fewer, a
#: depressed arc is followed so poorly that negative R_k appear for that reason alone
#: (μ dips below c at M ≈ 1 per decade on Table 1 spectra, with residuals of 7 %).
M_PER_DECADE_MIN = 1.5
PLATEAU_STEP = 3
PLATEAU_FACTOR = 2.0
RMS_THRESHOLD = 0.02
MAX_THRESHOLD = 0.06


@dataclass(frozen=True)
class KKResult:
    """The outcome of the linear KK check (residuals in the input's frequency order)."""

    freq_hz: F64
    z_fit: C128
    residual_real: F64  # (Re Z - Re Ẑ)/|Z|
    residual_imag: F64  # (Im Z - Im Ẑ)/|Z|
    m: int  # number of RC elements chosen
    mu: float
    mu_cutoff: float
    rms: float  # RMS over real and imaginary residuals
    max_abs: float
    rms_threshold: float
    max_threshold: float
    tau_s: F64
    r_ohm: F64
    capacitance: bool  # a series C was part of the model

    @property
    def passed(self) -> bool:
        return self.rms <= self.rms_threshold and self.max_abs <= self.max_threshold

    @property
    def verdict(self) -> str:
        return "pass" if self.passed else "fail"

    @property
    def mu_reached(self) -> bool:
        """False when μ never fell below the cut-off (M stopped at its limit)."""
        return self.mu < self.mu_cutoff

    def outliers(self) -> list[tuple[float, float]]:
        """(frequency, largest |residual|) of the points beyond the max threshold."""
        worst = np.maximum(np.abs(self.residual_real), np.abs(self.residual_imag))
        return [
            (float(f), float(r))
            for f, r in zip(self.freq_hz, worst, strict=True)
            if r > self.max_threshold
        ]

    def reasons(self) -> list[str]:
        out = []
        if self.rms > self.rms_threshold:
            out.append(f"residual RMS {100 * self.rms:.2f} % > {100 * self.rms_threshold:g} %")
        pts = self.outliers()
        if pts:
            shown = ", ".join(f"{f:.4g} Hz ({100 * r:.1f} %)" for f, r in pts[:6])
            more = f" and {len(pts) - 6} more" if len(pts) > 6 else ""
            out.append(f"{len(pts)} point(s) beyond {100 * self.max_threshold:g} %: {shown}{more}")
        return out

    def summary(self) -> str:
        rel = "<" if self.mu_reached else "never <"
        text = (
            f"KK {self.verdict}: M = {self.m} RC (μ = {self.mu:.3f} {rel} {self.mu_cutoff}), "
            f"residual RMS {100 * self.rms:.2f} % (≤ {100 * self.rms_threshold:g} %), "
            f"max {100 * self.max_abs:.2f} % (≤ {100 * self.max_threshold:g} %)"
        )
        return text + "".join(f"; {r}" for r in self.reasons())


def _design(w: F64, tau: F64, capacitance: bool) -> C128:
    cols = [np.ones_like(w, dtype=np.complex128), 1j * w]
    if capacitance:
        cols.append(1.0 / (1j * w))
    return np.column_stack([*cols, rc_basis(w, tau)])


def _solve(w: F64, z: C128, m: int, capacitance: bool) -> tuple[F64, F64, C128]:
    """τ_k, R_k and Ẑ for M = m, weighted by 1/|Z| on both parts."""
    if m == 1:
        tau = np.array([1.0 / math.sqrt(float(w.max() * w.min()))])
    else:
        tau = np.geomspace(1.0 / float(w.max()), 1.0 / float(w.min()), m)
    a = _design(w, tau, capacitance)
    wt = 1.0 / np.abs(z)
    lhs = np.vstack([a.real * wt[:, None], a.imag * wt[:, None]])
    rhs = np.concatenate([z.real * wt, z.imag * wt])
    # Columns span many decades (1, ω, 1/ω): scale them so lstsq's cut-off is fair.
    scale = np.linalg.norm(lhs, axis=0)
    scale[scale == 0] = 1.0
    coef, *_ = np.linalg.lstsq(lhs / scale, rhs, rcond=None)
    coef = coef / scale
    k0 = 3 if capacitance else 2
    return tau, coef[k0:], a @ coef


def _mu(r: F64) -> float:
    pos = float(np.sum(r[r >= 0]))
    return 1.0 - float(np.sum(-r[r < 0])) / pos if pos > 0 else 0.0


def _rms(z: C128, z_fit: C128) -> float:
    d = (z - z_fit) / np.abs(z)
    return float(np.sqrt(np.mean(d.real**2 + d.imag**2) / 2))


def needs_capacitance(freq_hz: F64, z: C128) -> bool:
    """A capacitive low-frequency end (blocking electrode, diffusion): -Im Z at the lowest
    frequency is at least 20 % of |Z| and still rising."""
    order = np.argsort(freq_hz)
    y = -z[order].imag
    return bool(y.size >= 2 and y[0] >= 0.2 * abs(z[order][0]) and y[0] >= y[1])


def kk_check(
    freq_hz: npt.ArrayLike,
    z: npt.ArrayLike,
    mu_cutoff: float = MU_CUTOFF,
    max_m: int | None = None,
    capacitance: bool | None = None,
    rms_threshold: float = RMS_THRESHOLD,
    max_threshold: float = MAX_THRESHOLD,
) -> KKResult:
    """Run the linear KK check. ``capacitance`` adds a series C to the model; by default
    it is added when the low-frequency end is capacitive (:func:`needs_capacitance`)."""
    f = np.asarray(freq_hz, dtype=np.float64)
    zz = np.asarray(z, dtype=np.complex128)
    if f.ndim != 1 or f.shape != zz.shape or f.size < 4:
        raise ValueError("KK check needs at least 4 points of matching frequency and Z")
    if not (np.all(f > 0) and np.all(np.isfinite(zz)) and np.all(zz != 0)):
        raise ValueError("KK check needs finite f > 0 and finite, non-zero Z")
    if capacitance is None:
        capacitance = needs_capacitance(f, zz)
    w = 2 * math.pi * f
    # 2N real equations; keep enough of them free so the residuals still mean something.
    limit = max_m if max_m is not None else max(1, f.size - 3)
    decades = math.log10(float(w.max() / w.min()))
    m0 = min(limit, max(3, math.ceil(M_PER_DECADE_MIN * decades)))
    fits: dict[int, tuple[F64, F64, C128]] = {}

    def fit(k: int) -> tuple[F64, F64, C128]:
        if k not in fits:
            fits[k] = _solve(w, zz, k, capacitance)
        return fits[k]

    # The first M with μ < c at which the residual has levelled off: M + PLATEAU_STEP
    # elements do not take it below half. (On noise-free data μ can dip below c while
    # the grid still cannot follow one sharp RC, with residuals of several per cent.)
    m = limit
    for k in range(m0, limit + 1):
        if _mu(fit(k)[1]) >= mu_cutoff:
            continue
        if k + PLATEAU_STEP > limit or _rms(zz, fit(k)[2]) <= PLATEAU_FACTOR * _rms(
            zz, fit(k + PLATEAU_STEP)[2]
        ):
            m = k
            break
    tau, r, z_fit = fit(m)
    mu = _mu(r)
    mod = np.abs(zz)
    dr = (zz.real - z_fit.real) / mod
    di = (zz.imag - z_fit.imag) / mod
    both = np.concatenate([dr, di])
    return KKResult(
        f,
        z_fit,
        dr,
        di,
        m,
        mu,
        mu_cutoff,
        float(np.sqrt(np.mean(both**2))),
        float(np.max(np.abs(both))),
        rms_threshold,
        max_threshold,
        tau,
        r,
        capacitance,
    )
