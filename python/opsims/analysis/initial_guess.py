"""Automatic starting points for the circuit fit, read off the spectrum itself.

An R‖CPE arc puts a maximum of -Im Z at ω_apex = (R Q)^(-1/n), where Re Z is the middle
of the arc and -Im Z = (R/2)·tan(nπ/4). So each local maximum of -Im Z against log f
(with enough prominence and width to be more than noise) seeds one arc:

* R from the arc's real-axis extent: from the high-frequency intercept (or the valley
  before it) to the valley after it when the arc closes, else twice the distance from
  the intercept to the apex;
* n from the apex height: tan(nπ/4) = 2·(-Im Z_apex)/R, clipped to [0.6, 1];
* Q from the apex frequency: Q = ω_apex^(-n) / R.

The series resistance comes from the high-frequency intercept (where -Im Z crosses 0, or
the first point when it is already on the axis). When the first point is already on an
arc the intercept is unknown and the DRT's R∞ is used instead.

Arcs that overlap show as one maximum and a shoulder; a coarse distribution of
relaxation times (:mod:`opsims.analysis.drt`) separates them and gives a second set of
arcs. A circuit with more arcs than the spectrum shows gets alternatives for the
missing ones (an arc beyond either end of the window, or a visible arc split in two).
The fitter tries the starts in order and keeps the best.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, replace

import numpy as np
import numpy.typing as npt
from scipy.signal import find_peaks

from opsims.analysis.circuits import Circuit, Element, Node, Parallel, Series
from opsims.analysis.drt import drt_nnls, drt_peaks

F64 = npt.NDArray[np.float64]
C128 = npt.NDArray[np.complex128]

#: A single R‖CPE arc is at least 1.14 decades wide at half height (n = 1); bumps of
#: -Im Z narrower than half that are noise.
MIN_WIDTH_DECADES = 0.57
MIN_PROMINENCE = 0.04  # of the largest -Im Z
N_DEFAULT = 0.9
N_RANGE = (0.6, 1.0)


@dataclass(frozen=True)
class ArcFeature:
    """One arc read off the data (Hz, Ω). ``source``: "apex" (a -Im Z maximum), "drt"
    (a peak of the relaxation-time distribution) or "placeholder" (not seen)."""

    f_apex_hz: float
    r_est: float
    n_est: float
    source: str
    edge: str = ""  # "hf" / "lf": the apex lies beyond that end of the window
    neg_im_apex: float = math.nan
    re_apex: float = math.nan
    width_decades: float = math.nan
    closed: bool = False  # the arc returns near the real axis inside the window


@dataclass(frozen=True)
class SpectrumFeatures:
    """What the starting points are built from."""

    f_min_hz: float
    f_max_hz: float
    r_hf: float  # high-frequency intercept; NaN when the first point is on an arc
    first_on_arc: bool
    first_phase_deg: float  # -phase of Z at the highest frequency
    inductance_h: float  # from an inductive high-frequency end, else 0
    apex_arcs: tuple[ArcFeature, ...]  # from -Im Z maxima, high to low frequency
    drt_arcs: tuple[ArcFeature, ...]  # from DRT peaks, high to low frequency
    r_inf_drt: float
    lf_tail: bool  # -Im Z still rising at the lowest frequency
    z_scale: float  # median |Z|


def spectrum_features(freq_hz: F64, z: C128) -> SpectrumFeatures:
    """Arcs (apex, extent), intercepts and tails of a spectrum."""
    order = np.argsort(-np.asarray(freq_hz, np.float64))
    f = np.asarray(freq_hz, np.float64)[order]
    zz = np.asarray(z, np.complex128)[order]
    y, re = -zz.imag, zz.real
    lf = np.log10(f)
    step = float(np.median(np.abs(np.diff(lf)))) if f.size > 1 else 1.0
    ymax = float(np.max(y))
    # A 3-point median first, so one noisy point is not an apex.
    ys = y.copy()
    if y.size >= 5:
        ys[1:-1] = np.median(np.stack([y[:-2], y[1:-1], y[2:]]), axis=0)
    peaks: list[tuple[int, float]] = []
    if ymax > 0 and y.size >= 5:
        idx, props = find_peaks(ys, prominence=MIN_PROMINENCE * ymax, width=1.0)
        peaks = [
            (int(i), float(w * step))
            for i, w in zip(idx, props["widths"], strict=True)
            if w * step >= MIN_WIDTH_DECADES and ys[i] > 0
        ]
    inductance = float(-y[0] / (2 * math.pi * f[0])) if y[0] < 0 else 0.0
    first_phase = float(math.degrees(math.atan2(y[0], re[0])))
    first_on_arc = y[0] > 0.05 * abs(zz[0])
    r_hf = math.nan
    if not first_on_arc:
        r_hf = float(re[0])
        cross = np.nonzero(y > 0)[0]
        if y[0] < 0 and cross.size:
            k = int(cross[0])
            t = -y[k - 1] / (y[k] - y[k - 1])
            r_hf = float(re[k - 1] + t * (re[k] - re[k - 1]))
    d = drt_nnls(f, zz)
    r_inf = d.r_inf
    left_end = r_hf if not first_on_arc else r_inf
    apex: list[ArcFeature] = []
    valleys = [int(a + np.argmin(ys[a : b + 1])) for (a, _), (b, _) in itertools.pairwise(peaks)]
    for k, (i, width) in enumerate(peaks):
        left = left_end if k == 0 else float(re[valleys[k - 1]])
        closed = k < len(valleys) or y[-1] < 0.2 * y[i]
        right = float(re[valleys[k]]) if k < len(valleys) else float(re[-1])
        r = right - left if closed else 2.0 * (float(re[i]) - left)
        if not r > 2.0 * y[i]:
            r = 2.0 * float(y[i]) / math.tan(N_DEFAULT * math.pi / 4)
        n = 4 / math.pi * math.atan(2.0 * float(y[i]) / r)
        apex.append(
            ArcFeature(
                _apex_frequency(lf, y, i),
                r,
                _clip_n(n),
                "apex",
                neg_im_apex=float(y[i]),
                re_apex=float(re[i]),
                width_decades=width,
                closed=bool(closed),
            )
        )
    lf_tail = bool(y.size >= 3 and y[-1] > 0 and y[-1] >= y[-2] and y[-1] >= 0.3 * ymax)
    w_max, w_min = 2 * math.pi * f[0], 2 * math.pi * f[-1]
    drt: list[ArcFeature] = []
    for pk in drt_peaks(d):
        w0 = 1.0 / pk.tau_s
        edge = "hf" if w0 > w_max else "lf" if w0 < w_min else ""
        drt.append(ArcFeature(w0 / (2 * math.pi), pk.r_ohm, _clip_n(pk.n_est), "drt", edge))
    return SpectrumFeatures(
        f_min_hz=float(f[-1]),
        f_max_hz=float(f[0]),
        r_hf=r_hf,
        first_on_arc=bool(first_on_arc),
        first_phase_deg=first_phase,
        inductance_h=inductance,
        apex_arcs=tuple(apex),
        drt_arcs=tuple(drt),
        r_inf_drt=r_inf,
        lf_tail=lf_tail,
        z_scale=float(np.median(np.abs(zz))),
    )


def _clip_n(n: float) -> float:
    return min(max(n, N_RANGE[0]), N_RANGE[1])


def _apex_frequency(lf: F64, y: F64, i: int) -> float:
    """Apex from a parabola through the three points around the maximum (in log f)."""
    if 0 < i < y.size - 1:
        x = lf[i - 1 : i + 2]
        a, b, _ = np.polyfit(x - x[1], y[i - 1 : i + 2], 2)
        if a < 0:
            xv = float(x[1] - b / (2 * a))
            if min(x[0], x[2]) <= xv <= max(x[0], x[2]):
                return float(10**xv)
    return float(10 ** lf[i])


# -- starting points for a circuit -------------------------------------------------
def _elements(node: Node) -> list[Element]:
    if isinstance(node, Element):
        return [node]
    return [e for p in node.parts for e in _elements(p)]


def arc_slots(circuit: Circuit) -> list[Node]:
    """Top-level series parts holding a capacitive element and a path through a
    resistor or diffusion element: one arc each (R‖CPE, R‖C, p(R-Wo,C), ...)."""
    return [
        p
        for p in circuit.series_parts()
        if isinstance(p, (Parallel, Series)) and any(e.kind in ("C", "CPE") for e in _elements(p))
    ]


def _defaults(circuit: Circuit, feat: SpectrumFeatures) -> F64:
    """Neutral values for every parameter; the arc seeds overwrite most of them."""
    zs = max(feat.z_scale, 1e-300)
    w_mid = 2 * math.pi * math.sqrt(feat.f_min_hz * feat.f_max_hz)
    w_min = 2 * math.pi * feat.f_min_hz
    w_max = 2 * math.pi * feat.f_max_hz
    role_value = {
        "resistance": 0.05 * zs,
        "capacitance": 1.0 / (w_mid * zs),
        "inductance": max(feat.inductance_h, 1e-4 * zs / w_max),
        "cpe_q": 1.0 / (w_mid * zs),
        "exponent": N_DEFAULT,
        "warburg": 0.1 * zs * math.sqrt(w_min),
        "time": 1.0 / w_min,
    }
    return circuit.to_internal({p.name: role_value[p.role] for p in circuit.params})


def _seed_slot(x: F64, slot: Node, arc: ArcFeature, feat: SpectrumFeatures) -> None:
    """Write one arc's R, Q (or C), n and any diffusion element inside the block."""
    elems = _elements(slot)
    n = arc.n_est
    r = max(arc.r_est, 1e-9 * feat.z_scale)
    w_apex = 2 * math.pi * arc.f_apex_hz
    carriers = [e for e in elems if e.kind in ("R", "Wo", "Ws")]
    for e in elems:
        if e.kind == "R":
            x[e.first] = math.log(r / len(carriers))
        elif e.kind == "CPE":
            x[e.first] = math.log(w_apex**-n / r)
            x[e.first + 1] = n
        elif e.kind == "C":
            x[e.first] = math.log(1.0 / (w_apex * r))
        elif e.kind in ("Wo", "Ws"):
            x[e.first] = math.log(r / len(carriers))
            x[e.first + 1] = math.log(1.0 / (2 * math.pi * feat.f_min_hz))
        elif e.kind == "W":
            x[e.first] = math.log(0.1 * r * math.sqrt(2 * math.pi * feat.f_min_hz))


def _placeholders(feat: SpectrumFeatures) -> list[ArcFeature]:
    """Arcs the data do not show: small, beyond the high end; large, beyond the low end."""
    zs = feat.z_scale
    return [
        ArcFeature(feat.f_max_hz * 5, 0.05 * zs, N_DEFAULT, "placeholder", "hf"),
        ArcFeature(feat.f_min_hz / 5, 0.5 * zs, N_DEFAULT, "placeholder", "lf"),
    ]


def _fill(arcs: list[ArcFeature], m: int, feat: SpectrumFeatures) -> list[list[ArcFeature]]:
    """Ways to give m slots one arc each, from the arcs seen (high to low frequency)."""
    if len(arcs) >= m:
        # The m largest, in frequency order; and the m highest-frequency ones, in case
        # a low-frequency tail is the largest.
        largest = sorted(sorted(range(len(arcs)), key=lambda i: -arcs[i].r_est)[:m])
        return [[arcs[i] for i in largest], arcs[:m]]
    out = []
    extra = m - len(arcs)
    for fill in itertools.combinations_with_replacement(_placeholders(feat), extra):
        out.append(sorted([*arcs, *fill], key=lambda a: -a.f_apex_hz))
    for k, arc in enumerate(arcs):
        hi = replace(arc, f_apex_hz=arc.f_apex_hz * 3.0, r_est=arc.r_est / 2)
        lo = replace(arc, f_apex_hz=arc.f_apex_hz / 3.0, r_est=arc.r_est / 2)
        pair = [replace(hi, source="placeholder"), replace(lo, source="placeholder")]
        split = [*arcs[:k], *pair, *arcs[k + 1 :]]
        split += _placeholders(feat)[: max(0, m - len(split))]
        out.append(sorted(split, key=lambda a: -a.f_apex_hz)[:m])
    return out


@dataclass(frozen=True)
class Start:
    """One starting point (internal coordinates) and where it came from."""

    x: F64
    origin: str  # "drt", "apex" or "default", with "+placeholder" / "+split" / "+n0.97"
    from_data: bool  # every arc seeded from a feature of the data


def initial_guesses(
    circuit: Circuit,
    freq_hz: F64,
    z: C128,
    max_starts: int = 8,
    features: SpectrumFeatures | None = None,
) -> list[Start]:
    """Starting points, most plausible first: the DRT's arcs, the -Im Z maxima's arcs,
    then alternatives for arcs the data do not show."""
    feat = features if features is not None else spectrum_features(freq_hz, z)
    slots = arc_slots(circuit)
    m = len(slots)
    series_r = next(
        (e for e in circuit.series_parts() if isinstance(e, Element) and e.kind == "R"), None
    )
    plans: list[tuple[list[ArcFeature], float, str]] = []
    r_apex = feat.r_inf_drt if feat.first_on_arc else feat.r_hf
    for arcs, r_s, name in (
        (list(feat.drt_arcs), feat.r_inf_drt, "drt"),
        (list(feat.apex_arcs), r_apex, "apex"),
    ):
        if not arcs and m:
            continue
        for fill in _fill(arcs, m, feat) if m else [[]]:
            plans.append((fill, r_s, name))
    if not plans:
        w = np.geomspace(feat.f_max_hz, feat.f_min_hz, m + 2)[1:-1]
        plans.append(
            (
                [ArcFeature(float(fa), feat.z_scale / m, N_DEFAULT, "placeholder") for fa in w],
                feat.r_inf_drt,
                "default",
            )
        )
    # Each plan once more with exponents near 1: a second basin is often reached from
    # there when a neighbouring arc pulls the apex-height estimate of n down.
    plans += [
        ([replace(a, n_est=0.97) for a in arcs], r_s, name + "+n0.97") for arcs, r_s, name in plans
    ]
    base = _defaults(circuit, feat)
    starts: list[Start] = []
    for arcs, r_s, name in plans:
        x = base.copy()
        if series_r is not None:
            x[series_r.first] = math.log(max(r_s, 1e-3 * feat.z_scale))
        for slot, arc in zip(slots, arcs, strict=False):
            _seed_slot(x, slot, arc, feat)
        if any(np.allclose(x, s.x, atol=1e-3) for s in starts):
            continue
        kinds = {a.source for a in arcs}
        tag = "+placeholder" if "placeholder" in kinds else ""
        starts.append(Start(x, name + tag, not tag and name != "default"))
    return starts[:max_starts]
