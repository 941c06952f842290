"""Depth profiles in the style of the reference paper's Fig. 4: both polarities on one
log axis against depth in µm, positive ions solid and negative ions dashed, one colour
per species, a band of ± sigma; two regions (a reference and a sodiated one) as two panels
sharing their axes. Drawn off-screen with the Agg canvas; ``.png``, ``.svg`` or ``.pdf``
by the file name."""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from opsims.analysis.figures import save_figure as save_figure  # where callers found it
from opsims.analysis.profile import DepthProfile

#: The paper's species keep their colour from plot to plot.
COLOURS = {
    "Na+": "tab:orange",
    "Si+": "tab:olive",
    "Zr+": "tab:cyan",
    "ZrO+": "tab:purple",
    "O-": "tab:red",
    "P-": "tab:pink",
    "SiO2-": "tab:blue",
    "PO2-": "tab:green",
    "ZrO2-": "tab:brown",
}
_SPARE = ("black", "tab:gray", "gold", "navy", "teal", "maroon")


def _negative(polarity: str, species: str) -> bool:
    return polarity.lower().startswith("neg") or species.endswith("-")


def _colour(species: str, n: int) -> str:
    return COLOURS.get(species, _SPARE[n % len(_SPARE)])


def draw_profile(ax: Axes, profile: DepthProfile, title: str | None = None, wrap: int = 80) -> None:
    """Every species of ``profile`` on ``ax``: value ± sigma against depth."""
    calibrated = profile.depth.calibrated
    x = profile.depth.centres / 1000.0 if calibrated else profile.depth.centres
    spare = 0
    for p in profile.profiles.values():
        colour = _colour(p.species, spare)
        spare += p.species not in COLOURS
        style = "--" if _negative(p.polarity, p.species) else "-"
        with np.errstate(invalid="ignore"):
            v = np.where(p.value > 0, p.value, np.nan)
            low = np.where(p.value - p.sigma > 0, p.value - p.sigma, v * 0.5)
        ax.plot(x, v, style, color=colour, lw=1.2, label=p.species)
        ax.fill_between(x, low, v + p.sigma, color=colour, alpha=0.2, lw=0)
    ax.set_yscale("log", nonpositive="mask")
    ax.set_xlabel("depth (µm)" if calibrated else "slice (no depth calibration)")
    ax.set_ylabel(profile.unit)
    ax.grid(alpha=0.3, which="both", lw=0.5)
    text = title if title is not None else region_title(profile)
    ax.set_title(textwrap.fill(text, wrap), fontsize=9)


def region_title(profile: DepthProfile) -> str:
    area = profile.roi.area_um2(profile.pixel_um)
    size = f"{area:.0f} µm²" if area is not None else f"{profile.roi.area_px} px"
    return f"{profile.roi.description} ({size})"


def profile_figure(profile: DepthProfile, title: str | None = None) -> Figure:
    """One region, both polarities (Fig. 4a)."""
    fig = Figure(figsize=(7.0, 4.8), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    draw_profile(ax, profile)
    ax.legend(fontsize=8, ncols=2, loc="best")
    fig.suptitle(title or Path(profile.source).name, fontsize=10)
    return fig


def overlay_figure(
    profiles: Sequence[DepthProfile], labels: Sequence[str] | None = None, title: str | None = None
) -> Figure:
    """Two (or more) regions side by side on shared axes, e.g. a reference region and a
    sodiated one (Fig. 4a(i) against (ii))."""
    if not profiles:
        raise ValueError("no profile to draw")
    names = list(labels) if labels is not None else [p.roi.description for p in profiles]
    fig = Figure(figsize=(4.2 * len(profiles) + 0.8, 4.8), layout="constrained")
    FigureCanvasAgg(fig)
    first: Axes | None = None
    for n, (p, name) in enumerate(zip(profiles, names, strict=True)):
        ax = fig.add_subplot(1, len(profiles), n + 1, sharex=first, sharey=first)
        draw_profile(ax, p, f"{name}: {region_title(p)}", wrap=50)
        if first is None:
            first = ax
        else:
            ax.set_ylabel("")
    if first is not None:
        first.legend(fontsize=8, ncols=2, loc="best")
    fig.suptitle(title or Path(profiles[0].source).name, fontsize=10)
    return fig
