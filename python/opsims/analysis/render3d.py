"""3D renders of a species' cube in the style of the reference paper's Fig. 5 and 6: the
high-count voxels drawn as points coloured by raw total counts, not normalised, the
surface at the top (docs/ion-maps-3d.md).

There is no GPU here, so the cube is summed into at most ``max_bins`` voxels along each
axis (64³ by default: a 256x256x200 cube becomes 64x64x50), and only the voxels above a
threshold are drawn, as a matplotlib 3D scatter with alpha growing with the count. The
colour bar spans the binned counts from their minimum to their maximum, so its numbers
are counts per drawn voxel, as collected.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure

from opsims.analysis.cubeset import CubeSet
from opsims.analysis.depth import DepthAxis
from opsims.analysis.maps import CMAP, SliceRange, check_species, pixel_edges

F64 = npt.NDArray[np.float64]
U64 = npt.NDArray[np.uint64]
MAX_BINS = 64
PERCENTILE = 95.0
#: More points than this make a 3D scatter slow to draw and no easier to read.
MAX_POINTS = 40_000
ALPHA = (0.15, 0.9)
#: A column to mark: x, y in the lateral unit, top and bottom in the depth unit.
Mark = tuple[float, float, float, float]


def bin_factors(shape: tuple[int, int, int], max_bins: int = MAX_BINS) -> tuple[int, int, int]:
    """Slices and pixels per voxel: at most ``max_bins`` voxels along each axis, the
    same lateral factor for x and y so voxels stay square."""
    if max_bins < 1:
        raise ValueError(f"bins must be >= 1, got {max_bins}")
    nz, ny, nx = shape
    lateral = max(1, math.ceil(max(ny, nx) / max_bins))
    return max(1, math.ceil(nz / max_bins)), lateral, lateral


def bin_counts(cube: npt.NDArray[Any], factors: tuple[int, int, int]) -> U64:
    """Sum ``[z, y, x]`` counts over blocks of ``factors``; the last block along an axis
    may be partial (it holds what is left)."""
    out: npt.NDArray[Any] = np.asarray(cube)
    for axis, f in enumerate(factors):
        n = out.shape[axis]
        if f == 1 or n == 0:
            continue
        if n % f == 0:
            # A reshape-sum is several times faster than reduceat when blocks divide.
            shape = (*out.shape[:axis], n // f, f, *out.shape[axis + 1 :])
            out = out.reshape(shape).sum(axis=axis + 1, dtype=np.uint64)
        else:
            out = np.add.reduceat(out, np.arange(0, n, f), axis=axis, dtype=np.uint64)
    return np.asarray(out, dtype=np.uint64)


@dataclass(frozen=True)
class Volume:
    """A species' counts summed into voxels, with their edges."""

    species: str
    polarity: str
    counts: U64
    factors: tuple[int, int, int]
    x_edges: F64
    y_edges: F64
    depth_edges: F64
    lateral_unit: str
    depth_unit: str
    slices: SliceRange

    def centres(self) -> tuple[F64, F64, F64]:
        """Voxel centres ``(x, y, depth)`` along each axis."""
        return tuple(  # type: ignore[return-value]
            0.5 * (e[:-1] + e[1:]) for e in (self.x_edges, self.y_edges, self.depth_edges)
        )


def binned_volume(
    cs: CubeSet, species: str, sel: SliceRange, depth: DepthAxis, max_bins: int = MAX_BINS
) -> Volume:
    """The slices ``sel`` of ``species`` summed into at most ``max_bins`` voxels per axis;
    lateral edges in µm (pixel index uncalibrated), depth edges in µm (slice index)."""
    check_species(cs, [species])
    cube = cs.cubes[species][sel.start : sel.stop]
    factors = bin_factors(cube.shape, max_bins)
    nz, ny, nx = cube.shape
    fz, fy, fx = factors
    xe = pixel_edges(nx, cs.pixel_um)[_bounds(nx, fx)]
    ye = pixel_edges(ny, cs.pixel_um)[_bounds(ny, fy)]
    ze = depth.edges[sel.start + _bounds(nz, fz)]
    if depth.calibrated:
        ze = ze / 1000.0
    return Volume(
        species,
        cs.polarity_of(species),
        bin_counts(cube, factors),
        factors,
        xe,
        ye,
        ze,
        "µm" if cs.pixel_um is not None else "pixel",
        "µm" if depth.calibrated else "slice",
        sel,
    )


def _bounds(n: int, f: int) -> npt.NDArray[np.intp]:
    return np.append(np.arange(0, n, f), n)


@dataclass(frozen=True)
class Render:
    """What one 3D panel shows."""

    species: str
    polarity: str
    #: Voxels are drawn at or above this many counts.
    threshold: float
    #: ``"percentile P"`` or ``"absolute"``.
    rule: str
    shape: tuple[int, int, int]
    factors: tuple[int, int, int]
    voxels: int
    above: int
    drawn: int
    #: The colour bar's range: the minimum and maximum binned raw counts.
    colour_range: tuple[float, float]
    slices: SliceRange

    def to_dict(self) -> dict[str, Any]:
        return {
            "species": self.species,
            "polarity": self.polarity,
            "threshold_counts": self.threshold,
            "threshold_rule": self.rule,
            "binned_shape": list(self.shape),
            "bin_factors": list(self.factors),
            "voxels": self.voxels,
            "voxels_above": self.above,
            "voxels_drawn": self.drawn,
            "colour_range": list(self.colour_range),
            "slices": self.slices.to_dict(),
        }


def voxel_threshold(
    counts: U64, percentile: float | None = PERCENTILE, threshold: float | None = None
) -> tuple[float, str]:
    """The count at which voxels are drawn: absolute when given, else a percentile."""
    if threshold is not None:
        if not (math.isfinite(threshold) and threshold >= 0):
            raise ValueError(f"threshold must be >= 0 counts, got {threshold}")
        return float(threshold), "absolute"
    p = PERCENTILE if percentile is None else percentile
    if not 0 <= p < 100:
        raise ValueError(f"percentile must be in 0..100 (exclusive), got {p}")
    return float(np.percentile(counts, p)) if counts.size else 0.0, f"percentile {p:g}"


def plan_render(
    vol: Volume,
    *,
    percentile: float | None = PERCENTILE,
    threshold: float | None = None,
    max_points: int = MAX_POINTS,
) -> tuple[Render, npt.NDArray[np.intp]]:
    """Which voxels of ``vol`` a render draws (flat indices): those at or above the
    threshold and above zero, at most ``max_points``, the highest kept."""
    if max_points < 1:
        raise ValueError(f"max_points must be >= 1, got {max_points}")
    c = vol.counts
    flat = c.ravel()
    level, rule = voxel_threshold(c, percentile, threshold)
    lo, hi = (float(c.min()), float(c.max())) if c.size else (0.0, 0.0)
    keep = np.flatnonzero((flat >= level) & (flat > 0))
    above = int(keep.size)
    if keep.size > max_points:
        keep = keep[np.argpartition(flat[keep], keep.size - max_points)[-max_points:]]
    render = Render(
        vol.species,
        vol.polarity,
        level,
        rule,
        (int(c.shape[0]), int(c.shape[1]), int(c.shape[2])),
        vol.factors,
        int(c.size),
        above,
        int(keep.size),
        # Matplotlib needs a non-empty range even when every voxel holds the same count.
        (lo, hi if hi > lo else lo + 1.0),
        vol.slices,
    )
    return render, keep


def draw_volume(
    fig: Figure,
    ax: Any,
    vol: Volume,
    *,
    percentile: float | None = PERCENTILE,
    threshold: float | None = None,
    max_points: int = MAX_POINTS,
    marks: Sequence[Mark] = (),
) -> Render:
    """Draw the voxels :func:`plan_render` picks on ``ax``, coloured by raw counts on a
    colour bar of its own that spans the binned counts, alpha growing with the count."""
    render, keep = plan_render(
        vol, percentile=percentile, threshold=threshold, max_points=max_points
    )
    c = vol.counts
    iz, iy, ix = np.unravel_index(keep, c.shape)
    values = c.ravel()[keep].astype(np.float64)
    xc, yc, zc = vol.centres()
    norm = Normalize(*render.colour_range)
    rgba = colormaps[CMAP](norm(values))
    level = render.threshold
    span = max(render.colour_range[1] - level, 1e-12)
    rgba[:, 3] = ALPHA[0] + (ALPHA[1] - ALPHA[0]) * np.clip((values - level) / span, 0, 1)
    size = float(np.clip((220.0 / max(c.shape[1:], default=1)) ** 2, 2.0, 60.0))
    ax.scatter(xc[ix], yc[iy], zc[iz], c=rgba, s=size, marker="s", linewidths=0, depthshade=False)
    for x, y, top, bottom in marks:
        ax.plot([x, x], [y, y], [top, bottom], color="tab:cyan", lw=1.2)
    ax.set_xlim(vol.x_edges[0], vol.x_edges[-1])
    ax.set_ylim(vol.y_edges[0], vol.y_edges[-1])
    # The surface at the top: depth grows downwards, as in the paper's reconstructions.
    ax.set_zlim(vol.depth_edges[-1], vol.depth_edges[0])
    ax.set_box_aspect((1.0, _width(vol.y_edges) / _width(vol.x_edges), 0.9))
    ax.set_xlabel(f"x ({vol.lateral_unit})", fontsize=8)
    ax.set_ylabel(f"y ({vol.lateral_unit})", fontsize=8)
    ax.set_zlabel(f"depth ({vol.depth_unit})", fontsize=8)
    ax.tick_params(labelsize=7)
    fz, fy, fx = vol.factors
    ax.set_title(f"{vol.species}  ({fx}x{fy}x{fz} binned)", fontsize=10)
    bar = fig.colorbar(ScalarMappable(norm, CMAP), ax=ax, shrink=0.6, pad=0.12)
    bar.set_label("total counts per voxel", fontsize=8)
    bar.ax.tick_params(labelsize=7)
    return render


def _width(edges: F64) -> float:
    return float(edges[-1] - edges[0]) or 1.0


def render_figure(
    volumes: Sequence[Volume],
    *,
    percentile: float | None = PERCENTILE,
    threshold: float | None = None,
    max_points: int = MAX_POINTS,
    marks: Mapping[str, Sequence[Mark]] | None = None,
    title: str | None = None,
) -> tuple[Figure, list[Render]]:
    """Several species side by side (e.g. the oxide species of Fig. 6), each with its own
    colour bar of raw total counts."""
    n = max(1, len(volumes))
    ncols = min(n, 3)
    nrows = math.ceil(n / ncols)
    fig = Figure(figsize=(5.4 * ncols, 4.8 * nrows), layout="constrained")
    FigureCanvasAgg(fig)
    renders = []
    for k, vol in enumerate(volumes):
        ax = fig.add_subplot(nrows, ncols, k + 1, projection="3d")
        renders.append(
            draw_volume(
                fig,
                ax,
                vol,
                percentile=percentile,
                threshold=threshold,
                max_points=max_points,
                marks=(marks or {}).get(vol.species, ()),
            )
        )
    if title:
        fig.suptitle(title, fontsize=10)
    return fig, renders
