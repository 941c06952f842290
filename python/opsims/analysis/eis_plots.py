"""Plots of an analysed spectrum (matplotlib, drawn off-screen with the Agg canvas so no
display or global backend is touched): Nyquist with equal axes, Bode |Z| and phase, each
with the fitted circuit over the data, and the KK residuals against their thresholds.
The format follows the file name: ``.png``, ``.svg`` or ``.pdf``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from opsims.analysis.eis_report import EisReport
from opsims.analysis.figures import save_figure
from opsims.analysis.kk import KKResult


def _dense(r: EisReport) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.complex128]]:
    f = r.fit.freq_hz
    fd = np.geomspace(float(f.min()), float(f.max()), 400)
    return fd, r.fit.predict(fd)


def nyquist(ax: Axes, r: EisReport) -> None:
    """-Im Z against Re Z, equal scales, the fit over the data, arc apexes marked."""
    z = r.spectrum.z
    _, zd = _dense(r)
    ax.plot(z.real, -z.imag, "o", ms=3.5, mfc="none", label="data")
    ax.plot(zd.real, -zd.imag, "-", lw=1.2, label=f"fit {r.fit.circuit}")
    for a in r.assignments:
        if a.arc.in_window:
            za = r.fit.predict([a.arc.f_apex_hz])[0]
            ax.plot(za.real, -za.imag, "x", color="k", ms=6)
            ax.annotate(
                a.label if a.process else a.arc.block.resistor,
                (za.real, -za.imag),
                textcoords="offset points",
                xytext=(4, 6),
                fontsize=7,
            )
    ax.set_aspect("equal", adjustable="datalim")
    ax.set_xlabel("Re Z (Ω)")
    ax.set_ylabel("-Im Z (Ω)")
    ax.set_title("Nyquist")
    ax.legend(fontsize=7, loc="best")
    ax.grid(alpha=0.3)


def bode(ax_mod: Axes, ax_phase: Axes, r: EisReport) -> None:
    f, z = r.spectrum.freq_hz, r.spectrum.z
    fd, zd = _dense(r)
    ax_mod.loglog(f, np.abs(z), "o", ms=3.5, mfc="none", label="data")
    ax_mod.loglog(fd, np.abs(zd), "-", lw=1.2, label="fit")
    ax_mod.set_ylabel("|Z| (Ω)")
    ax_mod.set_title("Bode")
    ax_mod.legend(fontsize=7)
    ax_mod.grid(alpha=0.3, which="both")
    ax_phase.semilogx(f, -np.degrees(np.angle(z)), "o", ms=3.5, mfc="none")
    ax_phase.semilogx(fd, -np.degrees(np.angle(zd)), "-", lw=1.2)
    ax_phase.set_xlabel("frequency (Hz)")
    ax_phase.set_ylabel("-phase (°)")
    ax_phase.grid(alpha=0.3, which="both")


def kk_residuals(ax: Axes, kk: KKResult) -> None:
    ax.semilogx(kk.freq_hz, 100 * kk.residual_real, "o-", ms=3, lw=0.8, label="Δ real")
    ax.semilogx(kk.freq_hz, 100 * kk.residual_imag, "s-", ms=3, lw=0.8, label="Δ imag")
    lim = 100 * kk.max_threshold
    ax.axhspan(
        -100 * kk.rms_threshold,
        100 * kk.rms_threshold,
        color="g",
        alpha=0.1,
        label=f"±{100 * kk.rms_threshold:g} % (RMS limit)",
    )
    ax.axhline(lim, color="r", lw=0.8, ls="--")
    ax.axhline(-lim, color="r", lw=0.8, ls="--", label=f"±{lim:g} % (point limit)")
    ax.set_xlabel("frequency (Hz)")
    ax.set_ylabel("residual / |Z| (%)")
    ax.set_title(f"linear KK ({kk.verdict}, M = {kk.m})")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3, which="both")


def report_figure(r: EisReport) -> Figure:
    """Nyquist, Bode (|Z|, phase) and KK residuals on one figure."""
    fig = Figure(figsize=(11, 8), layout="constrained")
    FigureCanvasAgg(fig)
    grid = fig.add_gridspec(3, 2, height_ratios=[1, 1, 1])
    nyquist(fig.add_subplot(grid[0:2, 0]), r)
    ax_mod = fig.add_subplot(grid[0, 1])
    bode(ax_mod, fig.add_subplot(grid[1, 1], sharex=ax_mod), r)
    kk_residuals(fig.add_subplot(grid[2, :]), r.kk)
    cyc = "" if r.spectrum.meta.cycle is None else f" (cycle {r.spectrum.meta.cycle})"
    fig.suptitle(f"{Path(r.spectrum.meta.source).name}{cyc}", fontsize=10)
    return fig


def save_report_plot(r: EisReport, path: str | Path) -> Path:
    """Write the report's figure; the suffix picks the format (``.png``, ``.svg``, ``.pdf``)."""
    return save_figure(report_figure(r), path)
