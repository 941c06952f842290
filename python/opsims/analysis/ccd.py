"""The critical current density (CCD) from regions cycled at increasing current density.

The reference paper plates fresh regions at J = 0.02 … 0.5 µA µm⁻² and calls the CCD
"the maximum current density that the solid electrolyte can tolerate before failure":
the highest J whose region cycled, every region above it having failed (0.04 µA µm⁻²).
A region that cycled above one that failed makes the series inconsistent; the CCD is
then the highest cycled J below the lowest failed one, and the report says so.
See docs/cycle-analysis.md.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from opsims.analysis.classify import RegionReport
from opsims.analysis.jsonable import json_safe

SCHEMA = "opsims.ccd/1"
#: The paper's probe tip (Methods: "tip area of 1 µm²"), so J = I / 1 µm².
PAPER_AREA_UM2 = 1.0
_NUM = r"(\d+(?:[.,p]\d+)?(?:[eE][-+]?\d+)?)"
_J_NAME = re.compile(r"(?<![A-Za-z])J\s*[=_-]?\s*" + _NUM)
_I_NAME = re.compile(_NUM + r"\s*([nuµ])A", re.IGNORECASE)
_PER_AREA = re.compile(r"[\s_/-]*(?:per[\s_-]*)?[uµ]m", re.IGNORECASE)


@dataclass(frozen=True)
class CcdRow:
    """One region of the series with the numbers its verdict used."""

    source: str
    region: int
    density_ua_um2: float | None
    density_source: str
    report: RegionReport

    @property
    def verdict(self) -> str:
        return self.report.verdict

    def to_dict(self) -> dict[str, Any]:
        p = self.report.first_plating()
        return {
            "source": self.source,
            "region": self.region,
            "label": self.report.region.label,
            "density_ua_um2": self.density_ua_um2,
            "density_source": self.density_source,
            "verdict": self.verdict,
            "plateau_v": p.plateau_v if p else None,
            "min_ratio": p.min_ratio if p else None,
            "held_s": p.held_s if p else None,
            "failure_time_s": p.failure_time_s if p else None,
            "onset_time_s": p.onset_time_s if p else None,
            "final_ratio": p.final_ratio if p else None,
            "profile_offset_max": p.profile_offset_max if p else None,
            "depleted": self.report.depleted,
            "sei_step": self.report.sei_step,
        }


@dataclass(frozen=True)
class CcdResult:
    rows: tuple[CcdRow, ...]  # by increasing J
    ccd_ua_um2: float | None
    lowest_failed_ua_um2: float | None
    consistent: bool
    note: str

    def to_dict(self) -> dict[str, Any]:
        return dict(
            json_safe(
                {
                    "ccd_ua_um2": self.ccd_ua_um2,
                    "lowest_failed_ua_um2": self.lowest_failed_ua_um2,
                    "consistent": self.consistent,
                    "note": self.note,
                    "rows": [r.to_dict() for r in self.rows],
                }
            )
        )


def critical_current_density(rows: list[CcdRow]) -> CcdResult:
    """The highest J that cycled below the lowest J that failed (regions whose verdict
    or J is undetermined are listed but do not count)."""
    ordered = tuple(sorted(rows, key=lambda r: (r.density_ua_um2 is None, r.density_ua_um2 or 0)))
    judged = [r for r in ordered if r.density_ua_um2 is not None and r.verdict != "undetermined"]
    cycled = [r.density_ua_um2 for r in judged if r.verdict == "cycled" and r.density_ua_um2]
    failed = [r.density_ua_um2 for r in judged if r.verdict == "failed" and r.density_ua_um2]
    if not judged:
        return CcdResult(ordered, None, None, True, "no region with a verdict and a J")
    if not failed:
        note = f"no region failed: the CCD is at least {max(cycled):.3g} µA µm⁻²"
        return CcdResult(ordered, None, None, True, note)
    low = min(failed)
    below = [j for j in cycled if j < low]
    consistent = len(below) == len(cycled)
    if not below:
        note = f"every region failed: the CCD is below {low:.3g} µA µm⁻²"
        return CcdResult(ordered, None, low, consistent, note)
    ccd = max(below)
    note = f"cycled up to {ccd:.3g}, failed from {low:.3g} µA µm⁻²"
    if not consistent:
        above = sorted(float(f"{j:.3g}") for j in cycled if j >= low)
        note += f"; but regions at {above} cycled at or above a failed J: check them"
    return CcdResult(ordered, ccd, low, consistent, note)


def density_from_name(name: str, area_um2: float) -> float | None:
    """J from a file name: ``J0.06``, ``J=0,06``, ``0p06uA_um2`` (a density) or ``0.06uA``
    (a current, divided by the area); None when the name gives neither."""
    stem = Path(name).name
    m = _J_NAME.search(stem)
    if m is not None:
        return _float(m.group(1))
    m = _I_NAME.search(stem)
    if m is None:
        return None
    value = _float(m.group(1)) * (1e-3 if m.group(2).lower() == "n" else 1.0)
    if _PER_AREA.match(stem, m.end()):
        return value
    return value / area_um2


def _float(text: str) -> float:
    return float(text.replace(",", ".").replace("p", "."))


def format_table(result: CcdResult) -> str:
    """The series as a text table, then the CCD."""
    head = f"{'J µA/µm²':>9}  {'verdict':<12} {'plateau mV':>10} {'lowest':>7} "
    head += f"{'held s':>7} {'fails at s':>10} {'depl.':>5} {'SEI':>4}  source"
    lines = [head]
    for r in result.rows:
        p = r.report.first_plating()
        lines.append(
            f"{_fmt(r.density_ua_um2, '9.3g')}  {r.verdict:<12} "
            f"{_fmt(p.plateau_v * 1e3 if p and p.plateau_v else None, '10.1f')} "
            f"{_fmt(p.min_ratio if p else None, '7.2f')} {_fmt(p.held_s if p else None, '7.0f')} "
            f"{_fmt(p.failure_time_s if p else None, '10.0f')} "
            f"{'yes' if r.report.depleted else 'no':>5} {'yes' if r.report.sei_step else 'no':>4}"
            f"  {Path(r.source).name} region {r.region}"
        )
    ccd = "not determined" if result.ccd_ua_um2 is None else f"{result.ccd_ua_um2:g} µA µm⁻²"
    lines.append(f"CCD: {ccd} ({result.note})")
    return "\n".join(lines)


def _fmt(x: float | None, spec: str) -> str:
    width = int(spec.split(".")[0])
    return f"{'-':>{width}}" if x is None else format(x, spec)
