"""Effective capacitance and apex frequency of each fitted R‖CPE (or R‖C) arc, with
uncertainties propagated from the fit's covariance, and the checks that decide whether
an arc is a resolved process or an artefact of the model.

For R‖CPE with Z_CPE = 1/(Q (jω)^n) the time constant is τ = (R Q)^(1/n), the apex of
-Im Z sits at ω_apex = 1/τ, and the capacitance that gives the same τ with the same R is

    C_eff = (R^(1-n) Q)^(1/n)

(Hsu & Mansfeld, Corrosion 57 (2001) 747; identical to Brug et al., J. Electroanal.
Chem. 176 (1984) 275, for an R‖CPE without a series resistance inside the element).
It is the form used for electroceramics, and the one the capacitance ranges of
:mod:`opsims.analysis.assignment` are compared with.

Uncertainty: ln C_eff = ((1-n) ln R + ln Q)/n and ln ω_apex = -(ln R + ln Q)/n are
differentiated with respect to the fitted coordinates (ln R, ln Q, n) and combined with
their covariance (first-order propagation, correlations included).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from opsims.analysis.circuits import ArcBlock, arc_blocks
from opsims.analysis.eis_fit import N_BOUNDS, FitResult

F64 = npt.NDArray[np.float64]

FORMULA = "C = (R^(1-n) Q)^(1/n) (Hsu-Mansfeld; = Brug for an R||CPE)"
#: An arc whose R is known worse than this (relative standard error) is not resolved.
MAX_REL_ERR_R = 0.5
#: ... or whose effective capacitance is (a factor e ≈ 2.7 either way).
MAX_REL_ERR_C = 1.0


def effective_capacitance(r_ohm: float, q: float, n: float) -> float:
    """C_eff = (R^(1-n) Q)^(1/n), in F for R in Ω and Q in F s^(n-1)."""
    return float((r_ohm ** (1.0 - n) * q) ** (1.0 / n))


def apex_frequency(r_ohm: float, q: float, n: float) -> float:
    """f_apex = (R Q)^(-1/n) / 2π, in Hz."""
    return float((r_ohm * q) ** (-1.0 / n) / (2 * math.pi))


@dataclass(frozen=True)
class Arc:
    """One fitted arc with derived quantities (values in SI units; errors are 1 sigma)."""

    block: ArcBlock
    r_ohm: float
    r_err: float
    q: float  # CPE Q, or C for an ideal capacitor
    q_err: float
    n: float  # 1 for an ideal capacitor
    n_err: float
    c_eff_f: float
    c_eff_err: float
    f_apex_hz: float
    f_apex_err: float
    in_window: bool
    resolved: bool
    flags: tuple[str, ...] = field(default_factory=tuple)

    @property
    def name(self) -> str:
        return self.block.resistor

    @property
    def c_determined(self) -> bool:
        """The effective capacitance is known to within a factor e (see MAX_REL_ERR_C)."""
        return self.c_eff_err <= MAX_REL_ERR_C * self.c_eff_f


def _propagate(grad: F64, cov: F64) -> float:
    var = float(grad @ cov @ grad)
    return math.sqrt(var) if var >= 0 and math.isfinite(var) else math.inf


def fitted_arcs(fit: FitResult) -> list[Arc]:
    """The circuit's R‖CPE / R‖C arcs, highest apex frequency first."""
    f_lo, f_hi = float(np.min(fit.freq_hz)), float(np.max(fit.freq_hz))
    out = []
    for b in arc_blocks(fit.circuit):
        idx = [b.r_index, b.q_index] + ([b.n_index] if b.n_index is not None else [])
        cov = fit.covariance[np.ix_(idx, idx)]
        ln_r, ln_q = fit.x[b.r_index], fit.x[b.q_index]
        n = float(fit.x[b.n_index]) if b.n_index is not None else 1.0
        r, q = math.exp(ln_r), math.exp(ln_q)
        c_eff = effective_capacitance(r, q, n)
        f_apex = apex_frequency(r, q, n)
        g_c = [(1.0 - n) / n, 1.0 / n] + ([-(ln_r + ln_q) / n**2] if b.n_index is not None else [])
        g_w = [-1.0 / n, -1.0 / n] + ([(ln_r + ln_q) / n**2] if b.n_index is not None else [])
        c_err = c_eff * _propagate(np.array(g_c), cov)
        f_err = f_apex * _propagate(np.array(g_w), cov)
        r_err = fit.stderr[b.resistor]
        q_err = fit.stderr[fit.circuit.params[b.q_index].name]
        n_err = fit.stderr[fit.circuit.params[b.n_index].name] if b.n_index is not None else 0.0
        flags = []
        in_window = f_lo <= f_apex <= f_hi
        if f_apex > f_hi:
            flags.append(
                f"apex at {f_apex:.3g} Hz is above the highest measured frequency "
                f"({f_hi:.3g} Hz): only the arc's low-frequency side was measured"
            )
        elif f_apex < f_lo:
            flags.append(
                f"apex at {f_apex:.3g} Hz is below the lowest measured frequency "
                f"({f_lo:.3g} Hz): a tail (diffusion, or an arc beyond the window), "
                f"not a resolved process"
            )
        if not r_err <= MAX_REL_ERR_R * r:
            flags.append(
                f"{b.resistor} not determined by the data "
                f"(relative standard error {_pct(r_err, r)})"
            )
        if not c_err <= MAX_REL_ERR_C * c_eff:  # the same test as Arc.c_determined
            flags.append(
                f"effective capacitance not determined "
                f"(relative standard error {_pct(c_err, c_eff)})"
            )
        if b.n_index is not None and n - N_BOUNDS[0] < 1e-3:
            flags.append(
                f"CPE exponent at its lower bound {N_BOUNDS[0]}: a distributed "
                f"(diffusion-like) response rather than one process"
            )
        resolved = not flags
        out.append(
            Arc(
                b,
                r,
                r_err,
                q,
                q_err,
                n,
                n_err,
                c_eff,
                c_err,
                f_apex,
                f_err,
                in_window,
                resolved,
                tuple(flags),
            )
        )
    return sorted(out, key=lambda a: -a.f_apex_hz)


def _pct(err: float, value: float) -> str:
    if not math.isfinite(err) or value == 0:
        return "unbounded"
    return f"{100 * err / abs(value):.0f} %"
