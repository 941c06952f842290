"""Which physical process a fitted arc belongs to, from its capacitance and its place in
the frequency order; and the grain-boundary conductivity that follows.

Capacitance ranges (Irvine, Sinclair & West, Adv. Mater. 2 (1990) 132, Table 1):

=========================  ====================  ==================================
process                    capacitance (F)       used here as
=========================  ====================  ==================================
bulk                       ~1e-12                1e-13 - 1e-11 (a decade either side)
grain boundary             1e-11 - 1e-8          as given
surface layer              1e-9 - 1e-7           as given; the paper's interfacial
                                                 layer (SEI) between Na and NZSP
sample-electrode interface 1e-7 - 1e-5           as given
electrochemical reaction   ~1e-4                 1e-5 - 1e-3 (a decade either side)
=========================  ====================  ==================================

The ranges overlap, so a capacitance alone does not decide. Each arc gets a score per
process (1 at the centre of the range in log C, 0.8 at its edges, falling off with a
half-decade Gaussian outside), and the arcs are assigned *jointly*: processes follow each
other in a fixed order of increasing capacitance (bulk, grain boundary, surface layer,
electrode interface, reaction), and arcs in order of decreasing apex frequency take
processes in that order, each process at most once; the combination with the highest
total score wins; an arc far outside every range is left unassigned. So of two arcs
that both lie in the grain-boundary/surface-layer overlap, the higher-frequency one is
the grain boundary. Each arc keeps its ranked list
of candidates with the evidence.

The ranges are for the capacitance as fitted, as the reference paper's Table 1 uses
them; Irvine et al. quote them for a unit cell constant, so ``normalise`` compares
C·(L/A) instead (a micro-probe's L/A of ~1e3 cm⁻¹ moves every arc three decades up).

Conductivity: sigma_GB = (L/A) / R_GB (S/cm for L/A in cm⁻¹), and when a bulk arc is
resolved too, the brick-layer specific grain-boundary conductivity
sigma_gb = (L/A) (1/R_gb) (C_bulk/C_gb).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

from opsims.analysis.capacitance import Arc

#: L/A implied by Table 1 of the reference paper: sigma_GB·R_GB = 1275, 1259, 1279 cm⁻¹.
DEFAULT_GEOMETRY_CM_1 = 1.27e3


@dataclass(frozen=True)
class Process:
    key: str
    label: str
    c_low_f: float
    c_high_f: float
    source: str

    @property
    def range_text(self) -> str:
        return f"{self.c_low_f:.0e}-{self.c_high_f:.0e} F"


_ISW = "Irvine, Sinclair & West 1990"
PROCESSES = (
    Process("bulk", "bulk", 1e-13, 1e-11, f"{_ISW}: ~1e-12 F (± a decade here)"),
    Process("grain_boundary", "grain boundary", 1e-11, 1e-8, f"{_ISW}: 1e-11-1e-8 F"),
    Process(
        "surface_layer",
        "surface / interfacial layer (e.g. SEI)",
        1e-9,
        1e-7,
        f"{_ISW}: 1e-9-1e-7 F",
    ),
    Process(
        "electrode_interface", "sample-electrode interface", 1e-7, 1e-5, f"{_ISW}: 1e-7-1e-5 F"
    ),
    Process(
        "electrochemical_reaction",
        "electrochemical reaction",
        1e-5,
        1e-3,
        f"{_ISW}: ~1e-4 F (± a decade here)",
    ),
)
BY_KEY = {p.key: p for p in PROCESSES}
#: An arc whose capacitance scores below this for every process (about 0.9 decade
#: outside the nearest range) is left unassigned rather than forced into one.
MIN_SCORE = 0.2


def score(c_f: float, p: Process) -> float:
    """How well a capacitance fits a process range: 1 at its centre (log scale), 0.8 at
    the edges, a half-decade Gaussian fall-off outside."""
    if not (c_f > 0 and math.isfinite(c_f)):
        return 0.0
    x, lo, hi = math.log10(c_f), math.log10(p.c_low_f), math.log10(p.c_high_f)
    if lo <= x <= hi:
        half = (hi - lo) / 2
        return 1.0 - 0.2 * ((x - (lo + hi) / 2) / half) ** 2
    d = lo - x if x < lo else x - hi
    return 0.8 * math.exp(-0.5 * (d / 0.5) ** 2)


@dataclass(frozen=True)
class Candidate:
    process: str
    score: float
    in_range: bool


@dataclass(frozen=True)
class Assignment:
    """One arc's assignment: the process (None when the arc is not resolved), its
    ranked candidates and the reasons."""

    arc: Arc
    process: str | None
    candidates: tuple[Candidate, ...]
    capacitance_compared_f: float
    evidence: tuple[str, ...]

    @property
    def label(self) -> str:
        return BY_KEY[self.process].label if self.process else "not assigned"


def assign(
    arcs: list[Arc], geometry_cm_1: float = DEFAULT_GEOMETRY_CM_1, normalise: bool = False
) -> list[Assignment]:
    """Assign arcs (any order) to processes; returns them highest apex frequency first."""
    ordered = sorted(arcs, key=lambda a: -a.f_apex_hz)
    factor = geometry_cm_1 if normalise else 1.0
    comp = {id(a): a.c_eff_f * factor for a in ordered}
    best_single = {id(a): max(score(comp[id(a)], p) for p in PROCESSES) for a in ordered}
    # Arcs with a determined capacitance take part in the ordering even when they are not
    # reported (an arc just beyond the window still comes before the next one); only
    # resolved ones are assigned.
    ranked = [a for a in ordered if best_single[id(a)] >= MIN_SCORE and a.c_determined]
    best: tuple[float, tuple[int, ...]] = (-1.0, ())
    for combo in itertools.combinations(range(len(PROCESSES)), len(ranked)):
        total = sum(score(comp[id(a)], PROCESSES[k]) for a, k in zip(ranked, combo, strict=True))
        if total > best[0]:
            best = (total, combo)
    placed = {id(a): PROCESSES[k].key for a, k in zip(ranked, best[1], strict=True)}
    chosen = {k: v for k, v in placed.items() if any(id(a) == k and a.resolved for a in ranked)}
    out = []
    unit = "F·cm⁻¹ (C·L/A)" if normalise else "F"
    for a in ordered:
        c = comp[id(a)]
        cands = sorted(
            (
                Candidate(p.key, round(score(c, p), 3), p.c_low_f <= c <= p.c_high_f)
                for p in PROCESSES
            ),
            key=lambda k: -k.score,
        )
        ev = [
            f"C_eff = {a.c_eff_f:.3g} ± {a.c_eff_err:.2g} F"
            + (f", C·L/A = {c:.3g} {unit}" if normalise else ""),
            f"apex at {a.f_apex_hz:.4g} Hz",
        ]
        proc = chosen.get(id(a))
        if proc is None:
            ev.extend(a.flags)
            if id(a) in placed:
                ev.append(
                    f"its capacitance places it as {BY_KEY[placed[id(a)]].label} in the "
                    f"frequency order of the arcs, but it is not reported as a process"
                )
            elif a.resolved:
                ev.append(
                    f"capacitance {c:.3g} {unit} is more than a decade outside every "
                    f"range: no process assigned"
                )
        else:
            p = BY_KEY[proc]
            inside = [k for k in cands if k.in_range]
            where = "within" if p.c_low_f <= c <= p.c_high_f else "outside"
            ev.append(f"{where} the {p.label} range {p.range_text} ({p.source})")
            if len(inside) > 1:
                names = " and ".join(BY_KEY[k.process].label for k in inside)
                ev.append(
                    f"in the overlap of {names}: decided by the order of the arcs in "
                    f"frequency (higher-frequency arcs take lower-capacitance processes)"
                )
            elif cands[0].process != proc:
                ev.append(
                    f"{BY_KEY[cands[0].process].label} fits the capacitance better "
                    f"alone, but the frequency order of the arcs rules it out"
                )
        out.append(Assignment(a, proc, tuple(cands), c, tuple(ev)))
    return out


@dataclass(frozen=True)
class Conductivity:
    value_s_cm: float
    err_s_cm: float
    formula: str


def gb_conductivity(gb: Arc, geometry_cm_1: float, geometry_err_cm_1: float = 0.0) -> Conductivity:
    """sigma_GB = (L/A)/R_GB, with the relative errors of R and L/A added in quadrature."""
    s = geometry_cm_1 / gb.r_ohm
    rel = math.hypot(gb.r_err / gb.r_ohm, geometry_err_cm_1 / geometry_cm_1)
    return Conductivity(s, s * rel, "sigma_GB = (L/A) / R_GB")


def brick_layer_conductivity(
    gb: Arc, bulk: Arc, geometry_cm_1: float, geometry_err_cm_1: float = 0.0
) -> Conductivity:
    """sigma_gb = (L/A)(1/R_gb)(C_bulk/C_gb): the brick-layer specific conductivity."""
    s = geometry_cm_1 / gb.r_ohm * bulk.c_eff_f / gb.c_eff_f
    rel = math.sqrt(
        (gb.r_err / gb.r_ohm) ** 2
        + (geometry_err_cm_1 / geometry_cm_1) ** 2
        + (bulk.c_eff_err / bulk.c_eff_f) ** 2
        + (gb.c_eff_err / gb.c_eff_f) ** 2
    )
    return Conductivity(s, s * rel, "sigma_gb = (L/A) (1/R_gb) (C_bulk/C_gb) (brick layer)")
