"""Cycle graphs in the style of the reference paper's Fig. 2 and the CCD series plot
(matplotlib, drawn off-screen with the Agg canvas so no display or global backend is
touched). The format follows the file name: ``.png``, ``.svg`` or ``.pdf``.

A region's figure has one column per current segment (plating, stripping, re-plating,
as Fig. 2b puts stripping and re-plating side by side), voltage above and current below
on a shared time axis, with the numbers each verdict used drawn in: the plateau and its
failure level, the failure time, the depletion threshold and spike, the SEI step.
"""

from __future__ import annotations

from pathlib import Path

from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FormatStrFormatter, NullFormatter

from opsims.analysis.ccd import CcdResult
from opsims.analysis.classify import (
    Criteria,
    PlatingResult,
    RegionReport,
    SegmentReport,
    StripResult,
)
from opsims.analysis.cycling import CyclingSeries

COLOURS = {"cycled": "tab:green", "failed": "tab:red", "undetermined": "tab:gray"}


def region_figure(series: CyclingSeries, report: RegionReport, c: Criteria) -> Figure:
    """Voltage and current against time for each current segment of a region."""
    segs = report.segments
    fig = Figure(figsize=(0.8 + 3.6 * max(1, len(segs)), 5.2), layout="constrained")
    FigureCanvasAgg(fig)
    grid = fig.add_gridspec(2, max(1, len(segs)), height_ratios=[2, 1])
    for col, sr in enumerate(segs):
        ax_v = fig.add_subplot(grid[0, col])
        ax_i = fig.add_subplot(grid[1, col], sharex=ax_v)
        _segment(ax_v, ax_i, series, sr, c)
    flags = [report.verdict] + ["depleted"] * report.depleted + ["SEI step"] * report.sei_step
    j = "" if report.density_ua_um2 is None else f", J = {report.density_ua_um2:.3g} µA µm⁻²"
    name = Path(series.source).name
    fig.suptitle(f"{name}, region {report.region.index}{j}: {', '.join(flags)}", fontsize=10)
    return fig


def _segment(ax_v: Axes, ax_i: Axes, series: CyclingSeries, sr: SegmentReport, c: Criteria) -> None:
    t, v, i = series.arrays(sr.segment)
    minutes = (t - t[0]) / 60.0
    plating = sr.plating is not None
    scale, unit = (1e3, "mV") if plating else (1.0, "V")
    ax_v.plot(minutes, v * scale, lw=0.9, color="tab:blue")
    ax_i.plot(minutes, i * 1e6, lw=0.9, color="tab:orange")
    sign = -1.0 if plating else 1.0
    if sr.plating is not None:
        _plating_marks(ax_v, sr.plating, sign * scale, c)
        title = f"{'re-plating' if sr.replating else 'plating'}: {sr.plating.verdict}"
    elif sr.strip is not None:
        _strip_marks(ax_v, sr.strip, scale)
        title = f"stripping: {sr.strip.verdict}"
    ax_v.set_title(f"{title} ({sr.density_ua_um2:.3g} µA µm⁻²)", fontsize=9)
    ax_v.set_ylabel(f"Ewe ({unit})")
    ua = i * 1e6
    ax_i.set_ylim(min(0.0, 1.3 * float(ua.min())), max(0.0, 1.3 * float(ua.max())))  # from 0
    ax_i.ticklabel_format(axis="y", useOffset=False)
    ax_i.set_ylabel("I (µA)")
    ax_i.set_xlabel("time in segment (min)")
    for ax in (ax_v, ax_i):
        ax.grid(alpha=0.3)


def _plating_marks(ax: Axes, p: PlatingResult, k: float, c: Criteria) -> None:
    if p.plateau_v is not None:
        ax.axhline(k * p.plateau_v, color="k", lw=0.7, ls="--", label="plateau")
        ax.axhline(
            k * c.fail_fraction * p.plateau_v,
            color="tab:red",
            lw=0.7,
            ls=":",
            label=f"{c.fail_fraction:g} of the plateau",
        )
    if p.onset_time_s is not None:
        ax.axvline(p.onset_time_s / 60.0, color="tab:red", lw=0.8, ls="--", label="fall began")
    if p.failure_time_s is not None:
        ax.axvline(p.failure_time_s / 60.0, color="tab:red", lw=1.0, label="failed from")
    sei = p.sei
    if sei is not None and sei.detected and sei.step_time_s is not None:
        ax.axvline(
            sei.step_time_s / 60.0,
            color="tab:purple",
            lw=1.0,
            label=f"SEI step {(sei.step_height_v or 0) * 1e3:.0f} mV",
        )
    ax.legend(fontsize=6, loc="best")


def _strip_marks(ax: Axes, s: StripResult, k: float) -> None:
    if s.threshold_v is not None:
        ax.axhline(k * s.threshold_v, color="tab:red", lw=0.7, ls=":", label="spike threshold")
    if s.time_to_spike_s is not None:
        ax.axvline(
            s.time_to_spike_s / 60.0,
            color="tab:red",
            lw=1.0,
            label=f"depleted at {s.time_to_spike_s:.0f} s",
        )
    ax.legend(fontsize=6, loc="best")


def ccd_figure(result: CcdResult, c: Criteria) -> Figure:
    """Plateau and lowest level against J (left), the lowest level over the plateau
    against the failure threshold (right), the CCD marked on both."""
    fig = Figure(figsize=(10, 4.2), layout="constrained")
    FigureCanvasAgg(fig)
    ax_l, ax_r = fig.subplots(1, 2)
    js = sorted({r.density_ua_um2 for r in result.rows if r.density_ua_um2 is not None})
    for row in result.rows:
        p = row.report.first_plating()
        if row.density_ua_um2 is None or p is None or p.plateau_v is None:
            continue
        colour = COLOURS[row.verdict]
        marker = "x" if row.verdict == "failed" else "o"
        ax_l.plot(row.density_ua_um2, p.plateau_v * 1e3, marker, color=colour, ms=7)
        if p.min_level_v is not None:
            ax_l.plot(row.density_ua_um2, p.min_level_v * 1e3, "v", color=colour, mfc="none")
        if p.min_ratio is not None:
            ax_r.plot(row.density_ua_um2, p.min_ratio, marker, color=colour, ms=7)
    ax_r.axhline(c.fail_fraction, color="tab:red", lw=0.8, ls=":", label="failure threshold")
    for ax in (ax_l, ax_r):
        if result.ccd_ua_um2 is not None:
            ax.axvline(
                result.ccd_ua_um2, color="k", lw=0.8, ls="--", label=f"CCD {result.ccd_ua_um2:g}"
            )
        ax.set_xscale("log")
        ax.set_xticks(js)  # the J values themselves, not log decades
        ax.xaxis.set_major_formatter(FormatStrFormatter("%g"))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("J (µA µm⁻²)")
        ax.grid(alpha=0.3, which="both")
    ax_l.plot([], [], "o", color=COLOURS["cycled"], label="plateau, cycled")
    ax_l.plot([], [], "x", color=COLOURS["failed"], label="plateau, failed")
    ax_l.plot([], [], "v", color="k", mfc="none", label="lowest running median")
    ax_l.set_ylabel("|Ewe| (mV)")
    ax_r.set_ylabel("lowest level / plateau")
    ax_l.legend(fontsize=7)
    ax_r.legend(fontsize=7)
    ccd = "not determined" if result.ccd_ua_um2 is None else f"{result.ccd_ua_um2:g} µA µm⁻²"
    fig.suptitle(f"critical current density: {ccd}", fontsize=10)
    return fig
