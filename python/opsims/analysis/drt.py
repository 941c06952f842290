"""A coarse distribution of relaxation times (DRT), used to resolve overlapping arcs
when seeding the circuit fit.

The spectrum is written as R∞ + Σ_k R_k / (1 + jωτ_k) with τ_k log-spaced (six per
decade, one decade beyond the measured window at each end) and solved for R_k ≥ 0 by
non-negative least squares, weighted by 1/|Z| and smoothed by a second-difference
(Tikhonov) penalty. Arcs two decades apart that show as one -Im Z maximum and a
shoulder come out as two peaks of R_k. Each peak gives an arc: R = Σ R_k over the peak,
τ = the R-weighted geometric mean, and n from the peak's spread in ln τ (a ZARC's
distribution has variance π²(1/n² - 1)/3).

This is a seeding tool, not a DRT analysis: the smoothing is fixed and coarse.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy.optimize import nnls
from scipy.signal import find_peaks

F64 = npt.NDArray[np.float64]
C128 = npt.NDArray[np.complex128]

PER_DECADE = 6
SMOOTHING = 1.0
MIN_PEAK = 0.1  # prominence, fraction of the largest R_k


@dataclass(frozen=True)
class Drt:
    tau_s: F64
    r_ohm: F64  # R_k ≥ 0 per τ_k
    r_inf: float


@dataclass(frozen=True)
class DrtPeak:
    tau_s: float
    r_ohm: float
    n_est: float


def rc_basis(omega: F64, tau: F64) -> C128:
    """Columns 1/(1 + jωτ_k): the impedance of a unit-R RC element per τ_k."""
    return np.asarray(1.0 / (1.0 + 1j * omega[:, None] * tau[None, :]), dtype=np.complex128)


def drt_nnls(
    freq_hz: F64, z: C128, per_decade: int = PER_DECADE, smoothing: float = SMOOTHING
) -> Drt:
    w = 2 * math.pi * np.asarray(freq_hz, dtype=np.float64)
    lo = math.log10(1.0 / float(w.max())) - 1.0
    hi = math.log10(1.0 / float(w.min())) + 1.0
    tau = 10.0 ** np.arange(lo, hi + 1e-9, 1.0 / per_decade)
    n = tau.size
    wt = 1.0 / np.abs(z)
    a = np.hstack([np.ones((w.size, 1)), rc_basis(w, tau)])
    zs = float(np.median(np.abs(z)))
    d2 = np.zeros((max(n - 2, 0), n + 1))
    for i in range(n - 2):
        d2[i, 1 + i : 4 + i] = (1.0, -2.0, 1.0)
    m = np.vstack([a.real * wt[:, None], a.imag * wt[:, None], d2 * (smoothing / zs)])
    b = np.concatenate([z.real * wt, z.imag * wt, np.zeros(d2.shape[0])])
    try:
        x, _ = nnls(m, b, maxiter=50 * (n + 1))
    except RuntimeError:  # no convergence: no DRT seeds; the apex seeds remain
        return Drt(tau, np.zeros(n), float(np.min(z.real)))
    return Drt(tau, x[1:].copy(), float(x[0]))


def drt_peaks(d: Drt, min_peak: float = MIN_PEAK) -> list[DrtPeak]:
    """Peaks of R_k, from the shortest τ (highest frequency) to the longest."""
    g = d.r_ohm
    if g.size == 0 or float(g.max()) <= 0:
        return []
    padded = np.concatenate([[0.0], g, [0.0]])
    idx, _ = find_peaks(padded, prominence=min_peak * float(g.max()))
    idx = idx - 1
    cuts = [0] + [int(a + np.argmin(g[a : b + 1])) for a, b in itertools.pairwise(idx)]
    cuts.append(g.size)
    out = []
    ln_tau = np.log(d.tau_s)
    for k in range(len(idx)):
        sl = slice(cuts[k], cuts[k + 1] + (1 if k == len(idx) - 1 else 0))
        gk, lk = g[sl], ln_tau[sl]
        r = float(gk.sum())
        if r <= 0:
            continue
        mean = float((gk * lk).sum() / r)
        var = float((gk * (lk - mean) ** 2).sum() / r)
        n = 1.0 / math.sqrt(1.0 + 3.0 * var / math.pi**2)
        out.append(DrtPeak(math.exp(mean), r, n))
    return out
