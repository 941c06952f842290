"""One spectrum, analysed end to end: the circuit fit, the KK check, the arcs with their
effective capacitances and process assignment, the grain-boundary conductivity, the
warnings; as a JSON-ready dict and as text, with a table in the layout of the reference
paper's Table 1."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from opsims.analysis.assignment import (
    BY_KEY,
    DEFAULT_GEOMETRY_CM_1,
    Assignment,
    Conductivity,
    assign,
    brick_layer_conductivity,
    gb_conductivity,
)
from opsims.analysis.capacitance import FORMULA, Arc, fitted_arcs
from opsims.analysis.circuits import Circuit, series_elements
from opsims.analysis.ecfiles import Spectrum
from opsims.analysis.eis_fit import DEFAULT_CIRCUIT, FitResult, Weighting, fit_circuit
from opsims.analysis.jsonable import json_safe
from opsims.analysis.kk import KKResult, kk_check

SCHEMA = "opsims.eis-fit/1"
#: The series resistance is reported only when known to this relative standard error
#: and when the arcs add less than it to Re Z at the highest measured frequency.
SERIES_MAX_REL_ERR = 0.3


@dataclass(frozen=True)
class SeriesResistance:
    """The top-level series R (bulk offset from the origin), or why it is not given."""

    name: str
    value: float | None
    err: float | None
    identifiable: bool
    reason: str


@dataclass
class EisReport:
    spectrum: Spectrum
    fit: FitResult
    kk: KKResult
    arcs: list[Arc]
    assignments: list[Assignment]
    series: SeriesResistance | None
    sigma_gb: Conductivity | None
    sigma_gb_brick: Conductivity | None
    geometry_cm_1: float
    normalised: bool
    warnings: list[str] = field(default_factory=list)

    def arc_for(self, process: str) -> Arc | None:
        return next((a.arc for a in self.assignments if a.process == process), None)

    def interfacial_arc(self) -> Arc | None:
        """The paper's "Int" arc: a surface/interfacial layer, else an electrode interface."""
        return self.arc_for("surface_layer") or self.arc_for("electrode_interface")

    def table_row(self) -> dict[str, tuple[float, float] | None]:
        gb, it = self.arc_for("grain_boundary"), self.interfacial_arc()
        s = self.sigma_gb
        return {
            "R_GB_ohm": (gb.r_ohm, gb.r_err) if gb else None,
            "R_Int_ohm": (it.r_ohm, it.r_err) if it else None,
            "C_GB_F": (gb.c_eff_f, gb.c_eff_err) if gb else None,
            "C_Int_F": (it.c_eff_f, it.c_eff_err) if it else None,
            "sigma_GB_S_cm": (s.value_s_cm, s.err_s_cm) if s else None,
        }

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (non-finite numbers as null); the schema is in docs/eis-analysis.md."""
        return dict(json_safe(self._dict()))

    def _dict(self) -> dict[str, Any]:
        fit, kk = self.fit, self.kk
        units = {p.name: p.unit for p in fit.circuit.params}
        return {
            "source": self.spectrum.meta.source,
            "cycle": self.spectrum.meta.cycle,
            "n_points": len(self.spectrum),
            "f_min_hz": float(np.min(fit.freq_hz)),
            "f_max_hz": float(np.max(fit.freq_hz)),
            "parameters": {
                n: {"value": v, "stderr": _num(fit.stderr[n]), "unit": units[n]}
                for n, v in fit.values.items()
            },
            "series_resistance": None
            if self.series is None
            else {
                "name": self.series.name,
                "value_ohm": self.series.value,
                "stderr_ohm": self.series.err,
                "identifiable": self.series.identifiable,
                "reason": self.series.reason,
            },
            "arcs": [_arc_dict(a) for a in self.assignments],
            "conductivity": {
                "units": "S/cm",
                "geometry_cm_1": self.geometry_cm_1,
                "sigma_gb": _cond(self.sigma_gb),
                "sigma_gb_brick_layer": _cond(self.sigma_gb_brick),
            },
            "kk": {
                "verdict": kk.verdict,
                "passed": kk.passed,
                "m": kk.m,
                "mu": kk.mu,
                "mu_cutoff": kk.mu_cutoff,
                "mu_reached": kk.mu_reached,
                "series_capacitance": kk.capacitance,
                "rms": kk.rms,
                "max_abs": kk.max_abs,
                "rms_threshold": kk.rms_threshold,
                "max_threshold": kk.max_threshold,
                "outliers": [{"freq_hz": f, "residual": r} for f, r in kk.outliers()],
                "reasons": kk.reasons(),
            },
            "fit_quality": {
                "weighting": fit.weighting,
                "chi2": fit.chi2,
                "reduced_chi2": fit.reduced_chi2,
                "dof": fit.dof,
                "rms_relative": fit.rms_relative,
                "success": fit.success,
                "message": fit.message,
                "starts": fit.starts,
                "start_origins": list(fit.start_origins),
                "start_costs": list(fit.start_costs),
                "at_bounds": list(fit.at_bounds),
            },
            "table": {
                k: None if v is None else {"value": v[0], "stderr": _num(v[1])}
                for k, v in self.table_row().items()
            },
            "warnings": list(self.warnings),
        }


def _num(x: float) -> float | None:
    """JSON has no infinity: an unbounded standard error is null."""
    return float(x) if math.isfinite(x) else None


def _cond(c: Conductivity | None) -> dict[str, Any] | None:
    if c is None:
        return None
    return {"value": c.value_s_cm, "stderr": _num(c.err_s_cm), "formula": c.formula}


def _arc_dict(a: Assignment) -> dict[str, Any]:
    arc = a.arc
    return {
        "resistor": arc.block.resistor,
        "capacitor": arc.block.capacitor,
        "r_ohm": arc.r_ohm,
        "r_err": _num(arc.r_err),
        "q": arc.q,
        "q_err": _num(arc.q_err),
        "n": arc.n,
        "n_err": _num(arc.n_err),
        "c_eff_f": arc.c_eff_f,
        "c_eff_err": _num(arc.c_eff_err),
        "f_apex_hz": arc.f_apex_hz,
        "f_apex_err": _num(arc.f_apex_err),
        "in_window": arc.in_window,
        "resolved": arc.resolved,
        "flags": list(arc.flags),
        "assignment": {
            "process": a.process,
            "label": a.label,
            "capacitance_compared": a.capacitance_compared_f,
            "candidates": [
                {"process": c.process, "score": c.score, "in_range": c.in_range}
                for c in a.candidates
            ],
            "evidence": list(a.evidence),
        },
    }


def series_resistance(fit: FitResult) -> SeriesResistance | None:
    """The first top-level series R, with the identifiability rule of the module doc."""
    elems = series_elements(fit.circuit, "R")
    if not elems:
        return None
    name = elems[0].name
    value, err = fit.values[name], fit.stderr[name]
    k_max = int(np.argmax(fit.freq_hz))
    extra = float(fit.z_fit[k_max].real) - value
    phase = math.degrees(math.atan2(-fit.z[k_max].imag, fit.z[k_max].real))
    f_max = float(fit.freq_hz[k_max])
    if not err <= SERIES_MAX_REL_ERR * value:
        rel = "unbounded" if not math.isfinite(err) else f"{100 * err / value:.0f} %"
        return SeriesResistance(
            name,
            None,
            None,
            False,
            f"not identifiable: relative standard error {rel}; the first "
            f"point ({f_max:.3g} Hz, phase {phase:.0f}°) is already on an "
            f"arc",
        )
    if extra > value:
        return SeriesResistance(
            name,
            None,
            None,
            False,
            f"not identifiable: at the highest frequency ({f_max:.3g} Hz, "
            f"phase {phase:.0f}°) the arcs still add {extra:.3g} Ω to "
            f"Re Z, more than the {value:.3g} Ω fitted for {name}: the "
            f"first point is already on an arc, so {name} is an "
            f"extrapolation of the model",
        )
    note = (
        "high-frequency intercept"
        if extra < 0.05 * value
        else (f"extrapolated below the first point (the arcs add {extra:.3g} Ω at {f_max:.3g} Hz)")
    )
    return SeriesResistance(name, value, err, True, note)


def analyse_spectrum(
    spectrum: Spectrum,
    circuit: str | Circuit = DEFAULT_CIRCUIT,
    weighting: Weighting = "modulus",
    geometry_cm_1: float = DEFAULT_GEOMETRY_CM_1,
    geometry_err_cm_1: float = 0.0,
    normalise: bool = False,
) -> EisReport:
    """Fit, check and interpret one spectrum."""
    if not (geometry_cm_1 > 0 and math.isfinite(geometry_cm_1)):
        raise ValueError(f"geometric factor L/A must be > 0 cm^-1, got {geometry_cm_1}")
    fit = fit_circuit(spectrum.freq_hz, spectrum.z, circuit, weighting=weighting)
    kk = kk_check(spectrum.freq_hz, spectrum.z)
    arcs = fitted_arcs(fit)
    assignments = assign(arcs, geometry_cm_1, normalise=normalise)
    series = series_resistance(fit)
    report = EisReport(
        spectrum, fit, kk, arcs, assignments, series, None, None, geometry_cm_1, normalise
    )
    gb, bulk = report.arc_for("grain_boundary"), report.arc_for("bulk")
    if gb is not None:
        report.sigma_gb = gb_conductivity(gb, geometry_cm_1, geometry_err_cm_1)
        if bulk is not None:
            report.sigma_gb_brick = brick_layer_conductivity(
                gb, bulk, geometry_cm_1, geometry_err_cm_1
            )
    report.warnings = _warnings(report)
    return report


def _warnings(r: EisReport) -> list[str]:
    out = []
    if not r.fit.success:
        out.append(f"fit did not converge: {r.fit.message}")
    if r.fit.at_bounds:
        out.append(f"parameters at a bound: {', '.join(r.fit.at_bounds)}")
    if r.series is not None and not r.series.identifiable:
        out.append(f"series resistance {r.series.name} {r.series.reason}")
    for a in r.assignments:
        for flag in a.arc.flags:
            out.append(
                f"arc {a.arc.block.resistor}||{a.arc.block.capacitor}: {flag}; "
                f"not reported as a process"
            )
    unresolved = sum(not a.arc.resolved for a in r.assignments)
    if unresolved:
        out.append(
            f"{unresolved} of {len(r.assignments)} arcs not resolved: consider a circuit "
            f"with fewer arcs, or a diffusion element (W, Wo, Ws) for a tail"
        )
    if not r.kk.passed:
        out.append(
            "KK check failed (" + "; ".join(r.kk.reasons()) + "): the spectrum is not "
            "that of a linear, stable, time-invariant system at every point"
        )
    if r.fit.rms_relative > max(2.0 * r.kk.rms, 0.01):
        out.append(
            f"the circuit leaves residuals of {100 * r.fit.rms_relative:.1f} % where a "
            f"KK-consistent model leaves {100 * r.kk.rms:.1f} %: it misses part of the "
            f"spectrum"
        )
    if r.arc_for("grain_boundary") is None:
        out.append("no grain-boundary arc resolved: sigma_GB not computed")
    return out


# -- text ------------------------------------------------------------------------------
def _pm(v: float, e: float | None, fmt: str = ".4g") -> str:
    if e is None or not math.isfinite(e):
        return f"{v:{fmt}} (± unbounded)"
    return f"{v:{fmt}} ± {e:.2g}"


def format_report(r: EisReport) -> str:
    fit = r.fit
    cyc = "" if r.spectrum.meta.cycle is None else f", cycle {r.spectrum.meta.cycle}"
    lines = [
        f"{r.spectrum.meta.source}{cyc}: {len(r.spectrum)} points, "
        f"{float(np.min(fit.freq_hz)):.4g} Hz to {float(np.max(fit.freq_hz)):.4g} Hz",
        f"circuit {fit.circuit}, weighting {fit.weighting}, {fit.starts} starts "
        f"(automatic initial guesses)",
        "",
        f"  {'parameter':<12}{'value':>14}  {'std. error':>12}  unit",
    ]
    for p in fit.circuit.params:
        e = fit.stderr[p.name]
        es = f"{e:12.3g}" if math.isfinite(e) else f"{'unbounded':>12}"
        lines.append(f"  {p.name:<12}{fit.values[p.name]:>14.5g}  {es}  {p.unit}")
    if r.series is not None:
        s = r.series
        shown = _pm(s.value, s.err) + " Ω" if s.value is not None else "not given"
        lines.append(f"  series resistance {s.name}: {shown} ({s.reason})")
    lines += ["", f"arcs, highest apex frequency first; effective capacitance {FORMULA}"]
    for a in r.assignments:
        arc = a.arc
        lines.append(
            f"  {arc.block.resistor}||{arc.block.capacitor}: R {_pm(arc.r_ohm, arc.r_err)} Ω, "
            f"n {arc.n:.3f}, C_eff {_pm(arc.c_eff_f, arc.c_eff_err, '.3g')} F, "
            f"apex {arc.f_apex_hz:.4g} Hz -> {a.label}"
        )
        ranked = ", ".join(f"{BY_KEY[c.process].label} {c.score:.2f}" for c in a.candidates[:3])
        lines.append(f"      candidates: {ranked}")
        lines.extend(f"      - {e}" for e in a.evidence[2:])
    lines.append("")
    if r.sigma_gb is not None:
        lines.append(
            f"sigma_GB = {_pm(r.sigma_gb.value_s_cm, r.sigma_gb.err_s_cm, '.3g')} S/cm "
            f"({r.sigma_gb.formula}, L/A = {r.geometry_cm_1:g} cm^-1)"
        )
    if r.sigma_gb_brick is not None:
        b = r.sigma_gb_brick
        lines.append(f"sigma_gb = {_pm(b.value_s_cm, b.err_s_cm, '.3g')} S/cm ({b.formula})")
    lines.append(r.kk.summary())
    lines.append(
        f"fit: chi2 {fit.chi2:.4g}, reduced chi2 {fit.reduced_chi2:.3g} "
        f"(dof {fit.dof}), RMS relative residual {100 * fit.rms_relative:.2f} %"
    )
    if r.warnings:
        lines.append("warnings:")
        lines.extend(f"  - {w}" for w in r.warnings)
    return "\n".join(lines)


def format_table(reports: list[EisReport]) -> str:
    """Rows in the layout of the reference paper's Table 1 (± one standard error)."""
    head = ["spectrum", "R_GB (Ω)", "R_Int (Ω)", "C_GB (F)", "C_Int (F)", "sigma_GB (S/cm)"]
    rows = []
    for r in reports:
        t = r.table_row()
        label = r.spectrum.meta.source.rsplit("/", 1)[-1]
        if r.spectrum.meta.cycle is not None:
            label += f" #{r.spectrum.meta.cycle}"
        cells = [label]
        for key, fmt in (
            ("R_GB_ohm", ".0f"),
            ("R_Int_ohm", ".0f"),
            ("C_GB_F", ".2g"),
            ("C_Int_F", ".2g"),
            ("sigma_GB_S_cm", ".2g"),
        ):
            v = t[key]
            cells.append(
                "—"
                if v is None
                else f"{v[0]:{fmt}} (± {v[1]:{fmt}})"
                if math.isfinite(v[1])
                else f"{v[0]:{fmt}} (± ∞)"
            )
        rows.append(cells)
    widths = [max(len(x[i]) for x in [head, *rows]) for i in range(len(head))]
    out = ["  ".join(h.ljust(w) for h, w in zip(head, widths, strict=True))]
    out += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    return "\n".join(out)
