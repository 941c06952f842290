"""Each region's cycle graph judged the way the reference paper judges Fig. 2.

- **Plating** (``I < 0``): *failed* when the voltage, normalised to the current, falls to
  ``fail_fraction`` (half) of its plateau or lower and stays there for ``hold_s``: the
  paper's "drop in the voltage response that stabilises to half or lower than its
  original value", which is also its "large offset between the voltage and the current
  profile" (the current holds while the voltage falls). Otherwise *cycled*.
- **Stripping** (``I > 0``): *depleted* when ``|Ewe|`` spikes to ``spike_ratio`` times
  its initial level and at least ``spike_min_v`` (Fig. 2b(i): a gradual rise as the
  reservoir empties, then a spike to ~13 V).
- **SEI step** (any plating; the paper sees it on re-plating, Fig. 2b(ii)): within the
  first ``sei_window_s`` the voltage drops in one step from one level to a lower one
  that it keeps: a two-level fit whose drop is large against the scatter about it and
  whose transition is short.

Every decision keeps the numbers it used. The thresholds and the reasoning behind them:
docs/cycle-analysis.md.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from opsims.analysis.cycling import (
    CyclingSeries,
    Region,
    Segment,
    passed_charge,
    reduce_grid,
    running_median,
    spacing,
    span,
)
from opsims.analysis.jsonable import json_safe

F64 = npt.NDArray[np.float64]
SCHEMA = "opsims.cycle/1"
PlatingVerdict = Literal["cycled", "failed", "undetermined"]
StripVerdict = Literal["depleted", "stripped", "undetermined"]


@dataclass(frozen=True)
class Criteria:
    """Thresholds of the classification (units in the names)."""

    #: The plateau is the median current-normalised |Ewe| over the plating's first seconds.
    plateau_window_s: float = 30.0
    #: Running median that the drop is judged on (bridges noise, keeps a 60 s collapse).
    median_window_s: float = 30.0
    #: The paper: "stabilises to half or lower than its original value".
    fail_fraction: float = 0.5
    #: ... and stays there: longer than any dip of the nucleation oscillation.
    hold_s: float = 120.0
    #: The fall began where the running median was last at this share of the plateau.
    onset_fraction: float = 0.9
    end_window_s: float = 60.0
    #: Stripping: the initial level is the median |Ewe| over the first seconds.
    strip_initial_s: float = 5.0
    #: The level before the spike is read this long before it crosses the threshold.
    spike_lead_s: float = 1.0
    spike_min_v: float = 2.0
    spike_ratio: float = 10.0
    #: SEI step: the paper sees it "between 0 min and 3 min" of re-plating.
    sei_window_s: float = 240.0
    sei_min_step_v: float = 0.005
    sei_min_fraction: float = 0.15
    #: Drop / RMS scatter about the two-level fit: a step, not an oscillation or a decay.
    sei_min_contrast: float = 6.5
    #: Share of the drop made within sei_local_s either side of it: a step, not a decay.
    sei_min_sharpness: float = 0.75
    sei_local_s: float = 15.0
    sei_min_side_s: float = 15.0
    #: Ewe at rest: Na against the Na counter electrode.
    rest_potential_v: float = 0.0
    #: Records denser than this are averaged into bins of this width first.
    grid_s: float = 1.0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "rules": RULES}


RULES = {
    "plating": "failed if the running median (median_window_s) of |Ewe - rest| * I0/|I| "
    "falls to fail_fraction * plateau or lower and stays there >= hold_s; plateau = "
    "median over the first plateau_window_s; else cycled; undetermined if shorter than "
    "plateau_window_s + hold_s",
    "stripping": "depleted if |Ewe - rest| reaches max(spike_min_v, spike_ratio * initial "
    "level over the first strip_initial_s); else stripped",
    "sei_step": "within the first sei_window_s of a plating, the best two-level fit drops "
    "by >= sei_min_step_v and >= sei_min_fraction of the level before, with drop / RMS "
    "residual >= sei_min_contrast, and the median sei_local_s (at least 2 samples) either "
    "side of the split differ by >= sei_min_sharpness of the drop",
    "region": "failed if any plating failed; cycled if every judged plating cycled; "
    "depleted if any strip depleted; sei_step if any plating shows the step",
}


@dataclass(frozen=True)
class SeiResult:
    detected: bool
    reason: str
    step_time_s: float | None = None  # since the plating began
    step_height_v: float | None = None
    level_before_v: float | None = None
    level_after_v: float | None = None
    contrast: float | None = None
    sharpness: float | None = None
    range_after_v: float | None = None  # p95 - p5 of the level after the step


@dataclass(frozen=True)
class PlatingResult:
    verdict: PlatingVerdict
    reason: str
    plateau_v: float | None = None
    min_level_v: float | None = None
    min_ratio: float | None = None
    min_time_s: float | None = None
    held_s: float = 0.0  # longest time at or below fail_fraction of the plateau
    first_below_s: float | None = None  # first time at or below fail_fraction
    failure_time_s: float | None = None  # from when it stayed there for hold_s
    onset_time_s: float | None = None  # when the fall began: last time at onset_fraction
    final_level_v: float | None = None
    final_ratio: float | None = None
    profile_offset_max: float | None = None  # 1 - min_ratio
    profile_offset_end: float | None = None  # 1 - final_ratio
    response_lag_s: float | None = None  # current on -> 90 % of the plateau
    range_v: tuple[float, float] | None = None  # p5, p95 of the running median
    sei: SeiResult | None = None


@dataclass(frozen=True)
class StripResult:
    verdict: StripVerdict
    reason: str
    initial_v: float | None = None
    threshold_v: float | None = None
    time_to_spike_s: float | None = None
    pre_spike_v: float | None = None  # spike_lead_s (or a sample) before the threshold
    rise_ratio: float | None = None  # pre_spike_v / initial_v: the gradual rise
    spike_v: float | None = None  # the largest |Ewe| of the strip
    charge_to_spike_c: float | None = None
    plated_charge_c: float | None = None  # net plated in the region before this strip
    stripped_fraction: float | None = None


@dataclass(frozen=True)
class SegmentReport:
    segment: Segment
    replating: bool  # a plating after a strip in the same region
    start_s: float
    duration_s: float
    current_a: float  # median measured
    density_ua_um2: float
    charge_c: float
    plating: PlatingResult | None = None
    strip: StripResult | None = None


@dataclass(frozen=True)
class RegionReport:
    region: Region
    verdict: PlatingVerdict
    depleted: bool
    sei_step: bool
    density_ua_um2: float | None  # of the first plating
    density_source: str  # label, set current, measured current or none
    segments: tuple[SegmentReport, ...] = field(default_factory=tuple)

    def platings(self) -> list[SegmentReport]:
        return [s for s in self.segments if s.plating is not None]

    def first_plating(self) -> PlatingResult | None:
        p = self.platings()
        return p[0].plating if p else None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (non-finite numbers as null); schema in docs/cycle-analysis.md."""
        return dict(json_safe(_region_dict(self)))


# -- regions ------------------------------------------------------------------------------


def classify_series(
    series: CyclingSeries, criteria: Criteria | None = None, area_um2: float = 1.0
) -> list[RegionReport]:
    """Every region of a record, judged."""
    c = criteria or Criteria()
    return [classify_region(series, r, c, area_um2) for r in series.regions]


def classify_region(
    series: CyclingSeries, region: Region, c: Criteria, area_um2: float = 1.0
) -> RegionReport:
    reports: list[SegmentReport] = []
    stripped = False
    net_c = 0.0
    for seg in region.currents:
        t, v, i = series.arrays(seg)
        q = passed_charge(t, i)
        base = _base(seg, stripped, t, i, q, area_um2)
        if seg.kind == "plate":
            reports.append(replace(base, plating=judge_plating(t, v, i, c)))
            net_c += q
        else:
            reports.append(replace(base, strip=judge_strip(t, v, i, c, net_c)))
            net_c = max(0.0, net_c - q)
            stripped = True
    return _region_report(region, reports, area_um2)


def _base(
    seg: Segment, replating: bool, t: F64, i: F64, charge: float, area_um2: float
) -> SegmentReport:
    current = float(np.median(i))
    return SegmentReport(
        seg,
        replating and seg.kind == "plate",
        float(t[0]),
        span(t),
        current,
        abs(current) * 1e6 / area_um2,
        charge,
    )


def _region_report(region: Region, segs: list[SegmentReport], area_um2: float) -> RegionReport:
    plates = [s for s in segs if s.plating is not None]
    judged = [
        s.plating.verdict for s in plates if s.plating and s.plating.verdict != "undetermined"
    ]
    verdict: PlatingVerdict = (
        "failed" if "failed" in judged else "cycled" if judged else "undetermined"
    )
    depleted = any(s.strip is not None and s.strip.verdict == "depleted" for s in segs)
    sei = any(
        s.plating is not None and s.plating.sei is not None and s.plating.sei.detected
        for s in plates
    )
    density, source = region_density(region, plates, area_um2)
    return RegionReport(region, verdict, depleted, sei, density, source, tuple(segs))


def region_density(
    region: Region, plates: list[SegmentReport], area_um2: float
) -> tuple[float | None, str]:
    """J of the region's first plating: the protocol's label, else its set current, else
    the measured current, over the electrode area."""
    if region.label_density_ua_um2 is not None:
        return region.label_density_ua_um2, "label"
    if not plates:
        return None, "none"
    first = plates[0]
    if first.segment.set_current_a is not None:
        return abs(first.segment.set_current_a) * 1e6 / area_um2, "set current"
    return first.density_ua_um2, "measured current"


# -- plating: cycled or failed ----------------------------------------------------------------


def judge_plating(t: F64, v: F64, i: F64, c: Criteria) -> PlatingResult:
    tt = t - t[0]
    early = tt <= c.plateau_window_s
    if early.sum() < 3 or span(t) < c.plateau_window_s + c.hold_s:
        why = f"{span(t):.0f} s: too short to judge (< plateau_window_s + hold_s)"
        return PlatingResult("undetermined", why)
    r = normalised_level(v, i, early, c)
    plateau = float(np.median(r[early]))
    if not plateau > 0:
        return PlatingResult("undetermined", "no voltage response on the plateau")
    tb, rm = running_median(*reduce_grid(tt, r, c.grid_s), c.median_window_s)
    ratio = rm / plateau
    below = ratio <= c.fail_fraction
    held, fail_at = _held_below(tb, below)
    failed = held >= c.hold_s
    first = float(tb[np.argmax(below)]) if below.any() else None
    k = int(np.argmin(ratio))
    final = float(np.median(r[tt >= tt[-1] - c.end_window_s])) / plateau
    lag = tt[np.argmax(r >= 0.9 * plateau)]
    return PlatingResult(
        "failed" if failed else "cycled",
        _plating_reason(failed, held, float(ratio[k]), c),
        plateau_v=plateau,
        min_level_v=float(rm[k]),
        min_ratio=float(ratio[k]),
        min_time_s=float(tb[k]),
        held_s=held,
        first_below_s=first,
        failure_time_s=fail_at if failed else None,
        onset_time_s=_onset(tb, ratio, first, c) if failed else None,
        final_level_v=final * plateau,
        final_ratio=final,
        profile_offset_max=1.0 - float(ratio[k]),
        profile_offset_end=1.0 - final,
        response_lag_s=float(lag),
        range_v=(float(np.percentile(rm, 5)), float(np.percentile(rm, 95))),
        sei=judge_sei(tt, r, c),
    )


def normalised_level(v: F64, i: F64, early: npt.NDArray[np.bool_], c: Criteria) -> F64:
    """|Ewe - rest| scaled to the plateau's current: the voltage profile on the current
    profile's scale, so a change of current is not read as a change of the cell."""
    ia = np.abs(i)
    i0 = float(np.median(ia[early]))
    scale = np.where(ia > 0, i0 / np.where(ia > 0, ia, 1.0), 1.0)
    out: F64 = np.abs(v - c.rest_potential_v) * scale
    return out


def _plating_reason(failed: bool, held: float, min_ratio: float, c: Criteria) -> str:
    if failed:
        return (
            f"fell to {min_ratio:.2f} of the plateau and stayed <= {c.fail_fraction:g} "
            f"for {held:.0f} s (>= {c.hold_s:g} s)"
        )
    if held > 0:
        return (
            f"dipped to {min_ratio:.2f} of the plateau but only for {held:.0f} s (< {c.hold_s:g} s)"
        )
    return f"lowest level {min_ratio:.2f} of the plateau (> {c.fail_fraction:g})"


def _held_below(t: F64, below: npt.NDArray[np.bool_]) -> tuple[float, float | None]:
    """The longest run of ``below`` (s) and when it began."""
    best, best_at = 0.0, None
    edges = np.flatnonzero(np.diff(np.concatenate([[False], below, [False]]).astype(np.int8)))
    for a, b in zip(edges[::2], edges[1::2], strict=True):
        end = t[b] if b < t.size else t[-1]  # to the next sample above, or the end
        if end - t[a] > best or best_at is None:
            best, best_at = float(end - t[a]), float(t[a])
    return best, best_at


def _onset(t: F64, ratio: F64, first_below: float | None, c: Criteria) -> float:
    """The start of the fall: the last time before it at onset_fraction of the plateau."""
    before = np.flatnonzero((t <= (first_below or 0.0)) & (ratio >= c.onset_fraction))
    return float(t[before[-1]]) if before.size else 0.0


# -- SEI step -------------------------------------------------------------------------------


def judge_sei(tt: F64, r: F64, c: Criteria) -> SeiResult:
    """The best single drop in the first ``sei_window_s``, and whether it is the step."""
    tb, y = reduce_grid(tt, r, c.grid_s)
    inside = tb <= c.sei_window_s
    tw, yw = tb[inside], y[inside]
    dt = spacing(tw)
    m = max(3, math.ceil(c.sei_min_side_s / dt)) if dt > 0 else 3
    if tw.size < 2 * m:
        return SeiResult(False, "too few points in the window")
    k, sse = _best_split(yw, m)
    before, after = float(yw[:k].mean()), float(yw[k:].mean())
    h = before - after
    rms = math.sqrt(sse / yw.size)
    contrast = h / rms if rms > 0 else math.inf
    sharpness = _sharpness(tw, yw, k, h, max(c.sei_local_s, 2 * dt))
    rest = y[tb >= tw[k]]
    spread = float(np.percentile(rest, 95) - np.percentile(rest, 5))
    detected, reason = _sei_decision(h, before, contrast, sharpness, c)
    return SeiResult(
        detected,
        reason,
        float(0.5 * (tw[k - 1] + tw[k])),
        h,
        before,
        after,
        contrast,
        sharpness,
        spread,
    )


def _best_split(y: F64, m: int) -> tuple[int, float]:
    """Split index k (m <= k <= n - m) of the least-squares two-level fit, and its SSE."""
    n = y.size
    s1, s2 = np.cumsum(y), np.cumsum(y * y)
    k = np.arange(m, n - m + 1)
    left = s2[k - 1] - s1[k - 1] ** 2 / k
    right = (s2[-1] - s2[k - 1]) - (s1[-1] - s1[k - 1]) ** 2 / (n - k)
    best = int(np.argmin(left + right))
    return int(k[best]), float(max(0.0, left[best] + right[best]))


def _sharpness(t: F64, y: F64, k: int, h: float, w: float) -> float:
    """The drop between the medians ``w`` seconds either side of the split, over ``h``."""
    at = 0.5 * (t[k - 1] + t[k])
    left, right = y[(t >= at - w) & (t < at)], y[(t > at) & (t <= at + w)]
    if not (left.size and right.size) or h == 0:
        return 0.0
    return float(np.median(left) - np.median(right)) / h


def _sei_decision(
    h: float, before: float, contrast: float, sharpness: float, c: Criteria
) -> tuple[bool, str]:
    tests = [
        (h >= c.sei_min_step_v, f"drop {h * 1e3:.1f} mV (>= {c.sei_min_step_v * 1e3:g})"),
        (
            h >= c.sei_min_fraction * before,
            f"{h / before if before > 0 else 0.0:.2f} of the level (>= {c.sei_min_fraction:g})",
        ),
        (contrast >= c.sei_min_contrast, f"contrast {contrast:.1f} (>= {c.sei_min_contrast:g})"),
        (
            sharpness >= c.sei_min_sharpness,
            f"sharpness {sharpness:.2f} (>= {c.sei_min_sharpness:g})",
        ),
    ]
    failed = [text for ok, text in tests if not ok]
    if failed:
        return False, "no step: " + "; ".join(failed)
    return True, "step: " + "; ".join(text for _, text in tests)


# -- stripping: depletion -------------------------------------------------------------------


def judge_strip(t: F64, v: F64, i: F64, c: Criteria, plated_c: float) -> StripResult:
    tt = t - t[0]
    av = np.abs(v - c.rest_potential_v)
    if av.size < 2:
        return StripResult("undetermined", "fewer than 2 samples")
    first = tt <= c.strip_initial_s
    initial = float(np.median(av[first])) if first.any() else float(av[0])
    threshold = max(c.spike_min_v, c.spike_ratio * initial)
    hits = np.flatnonzero(av >= threshold)
    plated = plated_c if plated_c > 0 else None
    if not hits.size:
        why = f"no spike: |Ewe| at most {av.max():.3g} V < {threshold:.3g} V"
        return StripResult(
            "stripped", why, initial, threshold, spike_v=float(av.max()), plated_charge_c=plated
        )
    k = int(hits[0])
    lead = np.flatnonzero(tt[:k] <= tt[k] - c.spike_lead_s)
    pre = float(av[lead[-1]]) if lead.size else (float(av[k - 1]) if k > 0 else None)
    q = passed_charge(t[: k + 1], i[: k + 1])
    return StripResult(
        "depleted",
        f"|Ewe| reached {av[k]:.3g} V >= {threshold:.3g} V after {tt[k]:.1f} s",
        initial_v=initial,
        threshold_v=threshold,
        time_to_spike_s=float(tt[k]),
        pre_spike_v=pre,
        rise_ratio=None if pre is None or initial <= 0 else pre / initial,
        spike_v=float(av.max()),
        charge_to_spike_c=q,
        plated_charge_c=plated,
        stripped_fraction=None if plated is None else q / plated,
    )


def _region_dict(r: RegionReport) -> dict[str, Any]:
    return {
        "region": r.region.index,
        "label": r.region.label,
        "verdict": r.verdict,
        "depleted": r.depleted,
        "sei_step": r.sei_step,
        "density_ua_um2": r.density_ua_um2,
        "density_source": r.density_source,
        "segments": [_segment_dict(s) for s in r.segments],
    }


def _segment_dict(s: SegmentReport) -> dict[str, Any]:
    seg = s.segment
    out: dict[str, Any] = {
        "kind": "replate" if s.replating else seg.kind,
        "step": seg.step,
        "label": seg.label,
        "start_s": s.start_s,
        "duration_s": s.duration_s,
        "samples": len(seg),
        "current_a": s.current_a,
        "set_current_a": seg.set_current_a,
        "density_ua_um2": s.density_ua_um2,
        "charge_c": s.charge_c,
    }
    if s.plating is not None:
        p = asdict(s.plating)
        p["range_v"] = list(s.plating.range_v) if s.plating.range_v else None
        out["plating"] = p
    if s.strip is not None:
        out["strip"] = asdict(s.strip)
    return out
