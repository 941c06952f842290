"""Ion maps: a species' raw counts summed over a depth range, the dual-polarity grid of
the reference paper's Fig. 1c, and orthogonal slices through a cube
(docs/ion-maps-3d.md).

Lateral axes are in µm when the field of view is known, with the probe tip at (0, 0) in
the centre of the field (docs/specimen-model.md): pixel ``i`` is centred at
``(i + ½ - n/2)·p``. Depth is in nm when a calibration exists (the configured sputter
rate, or a measured crater depth spread over the frames), else in slices. Maps keep
raw counts, never normalised, as the paper shows them.

Figures are drawn off-screen with the Agg canvas (no display, no global backend).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import Normalize
from matplotlib.figure import Figure

from opsims.analysis.cubeset import CubeSet
from opsims.analysis.depth import DepthAxis, for_cubes
from opsims.analysis.figures import save_figure as save_figure  # where callers found it

F64 = npt.NDArray[np.float64]
U64 = npt.NDArray[np.uint64]
#: Raw counts as the paper's maps show them: dark for few, bright for many.
CMAP = "inferno"


def pixel_centres(n: int, pixel_um: float | None) -> F64:
    """Pixel centres along one axis: µm from the probe, or pixel indices uncalibrated."""
    if pixel_um is None:
        return np.arange(n, dtype=np.float64)
    return np.asarray((np.arange(n) + 0.5 - n / 2) * pixel_um, dtype=np.float64)


def pixel_edges(n: int, pixel_um: float | None) -> F64:
    """The ``n + 1`` pixel edges along one axis (µm, or index - ½ uncalibrated)."""
    if pixel_um is None:
        return np.arange(n + 1, dtype=np.float64) - 0.5
    return np.asarray((np.arange(n + 1) - n / 2) * pixel_um, dtype=np.float64)


# --- depth ---------------------------------------------------------------------------------


def depth_axis(cs: CubeSet, crater_depth_nm: float | None = None) -> DepthAxis:
    """The depth of each slice of ``cs`` (:func:`opsims.analysis.depth.for_cubes`): from a
    measured crater depth when given, else from the configured sputter rate; without a
    calibration slice ``i`` is centred on ``i``, so positions are slice indices."""
    return for_cubes(cs, crater_depth_nm, index_centred=True)


@dataclass(frozen=True)
class SliceRange:
    """Slices ``start`` to ``stop`` (exclusive) of a cube, and the depth they span."""

    start: int
    stop: int
    #: Top edge of the first and bottom edge of the last slice, nm (None uncalibrated).
    depth_nm: tuple[float, float] | None

    @property
    def n(self) -> int:
        return self.stop - self.start

    def to_dict(self) -> dict[str, Any]:
        return {
            "start": self.start,
            "stop": self.stop,
            "depth_nm": None if self.depth_nm is None else list(self.depth_nm),
        }


def select_slices(
    axis: DepthAxis,
    *,
    depth_nm: tuple[float, float] | None = None,
    slices: tuple[int | None, int | None] | None = None,
) -> SliceRange:
    """The slices of a depth range in nm (those whose centre lies in it, ends included),
    or of a slice range ``(start, stop)`` (stop exclusive, None for the cube's end); the
    whole cube when neither is given."""
    n = axis.n_slices
    if depth_nm is not None and slices is not None:
        raise ValueError("give a depth range or a slice range, not both")
    if n == 0:
        raise ValueError("the cube has no slices yet")
    if depth_nm is not None:
        top, bottom = depth_nm
        if not (math.isfinite(top) and math.isfinite(bottom) and 0 <= top < bottom):
            raise ValueError(f"depth range must be 0 <= A < B nm, got {top:g}-{bottom:g}")
        if not axis.calibrated:
            raise ValueError(
                "a depth range in nm needs a depth calibration: [sims] "
                "sputter_rate_nm_per_frame in the configuration, or a crater depth"
            )
        inside = axis.slices_between(top, bottom)
        if inside.size == 0:
            cube = f"{axis.edges[0]:g}-{axis.edges[-1]:g} nm"
            raise ValueError(f"depth range {top:g}-{bottom:g} nm holds no slice (cube: {cube})")
        start, stop = int(inside[0]), int(inside[-1]) + 1
    elif slices is not None:
        start = 0 if slices[0] is None else slices[0]
        stop = n if slices[1] is None else slices[1]
        if not 0 <= start < stop <= n:
            raise ValueError(f"slice range {start}:{stop} is not within 0:{n}")
    else:
        start, stop = 0, n
    edges = axis.edges
    span = (float(edges[start]), float(edges[stop])) if axis.calibrated else None
    return SliceRange(start, stop, span)


def selection(
    cs: CubeSet,
    *,
    depth_nm: tuple[float, float] | None = None,
    slices: tuple[int | None, int | None] | None = None,
    crater_depth_nm: float | None = None,
) -> tuple[DepthAxis, SliceRange]:
    """The depth axis of ``cs`` and the slices a depth or slice range picks from it."""
    axis = depth_axis(cs, crater_depth_nm)
    return axis, select_slices(axis, depth_nm=depth_nm, slices=slices)


def check_species(cs: CubeSet, species: list[str]) -> None:
    """ValueError naming what is there when a species is not in the cubes."""
    missing = [s for s in species if s not in cs.cubes]
    if missing:
        raise ValueError(
            f"no species {', '.join(missing)} in {cs.source} (species: {', '.join(cs.species)})"
        )


# --- maps ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class IonMap:
    """Raw counts of one species summed over a range of slices, ``[y, x]``."""

    species: str
    polarity: str
    counts: U64
    slices: SliceRange
    pixel_um: float | None
    #: How long each pixel was measured for this species over the range, s.
    live_time_s: float

    @property
    def x(self) -> F64:
        return pixel_centres(self.counts.shape[1], self.pixel_um)

    @property
    def y(self) -> F64:
        return pixel_centres(self.counts.shape[0], self.pixel_um)

    @property
    def lateral_unit(self) -> str:
        return "µm" if self.pixel_um is not None else "pixel"

    @property
    def extent(self) -> tuple[float, float, float, float]:
        """``imshow`` extent with row 0 at the top (raster order)."""
        ny, nx = self.counts.shape
        xe, ye = pixel_edges(nx, self.pixel_um), pixel_edges(ny, self.pixel_um)
        return float(xe[0]), float(xe[-1]), float(ye[-1]), float(ye[0])

    @property
    def total(self) -> int:
        return int(self.counts.sum())

    def to_dict(self) -> dict[str, Any]:
        c = self.counts
        return {
            "species": self.species,
            "polarity": self.polarity,
            "slices": self.slices.to_dict(),
            "shape": list(c.shape),
            "pixel_um": self.pixel_um,
            "total_counts": self.total,
            "max_counts": int(c.max()) if c.size else 0,
            "mean_counts": float(c.mean()) if c.size else 0.0,
            "live_time_s": self.live_time_s,
        }


def ion_map(cs: CubeSet, species: str, sel: SliceRange) -> IonMap:
    """``species`` summed over the slices of ``sel``."""
    check_species(cs, [species])
    cube = cs.cubes[species]
    counts = cube[sel.start : sel.stop].sum(axis=0, dtype=np.uint64)
    live = float(cs.live_time_s(species)[sel.start : sel.stop].sum())
    return IonMap(species, cs.polarity_of(species), counts, sel, cs.pixel_um, live)


def ion_maps(cs: CubeSet, species: list[str] | None, sel: SliceRange) -> list[IonMap]:
    """Maps of ``species`` (default: every species, in the configuration's order)."""
    names = cs.species if species is None else species
    check_species(cs, names)
    return [ion_map(cs, s, sel) for s in names]


def centroid(m: IonMap, mask: npt.NDArray[np.bool_] | None = None) -> tuple[float, float]:
    """Count-weighted centre ``(x, y)`` of a map (or of the pixels in ``mask``), in the
    map's lateral unit."""
    w = m.counts.astype(np.float64)
    if mask is not None:
        w = np.where(mask, w, 0.0)
    total = float(w.sum())
    if total <= 0:
        raise ValueError(f"{m.species}: no counts to take a centroid of")
    return float((w.sum(axis=0) @ m.x) / total), float((w.sum(axis=1) @ m.y) / total)


# --- orthogonal slices ---------------------------------------------------------------------


@dataclass(frozen=True)
class OrthoSlices:
    """Three planes through one cube: ``xy`` at a slice, ``xz`` at a row (y) and ``yz``
    at a column (x); the depth planes are ``[z, x]`` and ``[z, y]``."""

    species: str
    xy: npt.NDArray[np.uint32]
    xz: npt.NDArray[np.uint32]
    yz: npt.NDArray[np.uint32]
    #: Indices ``(column, row, slice)`` of the planes.
    index: tuple[int, int, int]
    #: Where they are: ``(x, y)`` in the lateral unit, depth at the slice centre.
    position: tuple[float, float, float]
    pixel_um: float | None
    depth: DepthAxis

    def to_dict(self) -> dict[str, Any]:
        ix, iy, iz = self.index
        return {
            "species": self.species,
            "index": {"x": ix, "y": iy, "slice": iz},
            "position": {
                "x": self.position[0],
                "y": self.position[1],
                "depth": self.position[2],
                "lateral_unit": "µm" if self.pixel_um is not None else "pixel",
                "depth_unit": self.depth.unit,
            },
            "sums": {"xy": int(self.xy.sum()), "xz": int(self.xz.sum()), "yz": int(self.yz.sum())},
        }


def ortho_slices(
    cs: CubeSet,
    species: str,
    *,
    x: float | None = None,
    y: float | None = None,
    depth: float | None = None,
    crater_depth_nm: float | None = None,
) -> OrthoSlices:
    """Planes through the voxel nearest to ``(x, y, depth)``: x and y in µm (index
    uncalibrated), depth in nm (slice uncalibrated); defaults: the probe and mid-depth."""
    check_species(cs, [species])
    cube = cs.cubes[species]
    nz, ny, nx = cube.shape
    if nz == 0:
        raise ValueError("the cube has no slices yet")
    axis = depth_axis(cs, crater_depth_nm)
    xs, ys, zs = pixel_centres(nx, cs.pixel_um), pixel_centres(ny, cs.pixel_um), axis.centres
    ix = _nearest(xs, pixel_edges(nx, cs.pixel_um), x, "x")
    iy = _nearest(ys, pixel_edges(ny, cs.pixel_um), y, "y")
    iz = _nearest(zs, axis.edges, depth, "depth")
    return OrthoSlices(
        species,
        cube[iz].copy(),
        cube[:, iy, :].copy(),
        cube[:, :, ix].copy(),
        (ix, iy, iz),
        (float(xs[ix]), float(ys[iy]), float(zs[iz])),
        cs.pixel_um,
        axis,
    )


def _nearest(centres: F64, edges: F64, value: float | None, name: str) -> int:
    if value is None:
        return int(np.argmin(np.abs(centres - 0.5 * (edges[0] + edges[-1]))))
    if not (math.isfinite(value) and edges[0] <= value <= edges[-1]):
        raise ValueError(f"--ortho {name} {value:g} is outside {edges[0]:g}..{edges[-1]:g}")
    return int(np.argmin(np.abs(centres - value)))


# --- figures -------------------------------------------------------------------------------


def maps_figure(maps: list[IonMap], title: str | None = None) -> Figure:
    """Fig. 1c: one row per polarity, one map per species, each with its own raw-count
    colour bar and the species as title."""
    rows: dict[str, list[IonMap]] = {}
    for m in maps:
        rows.setdefault(m.polarity, []).append(m)
    ncols = max((len(r) for r in rows.values()), default=1)
    fig = Figure(figsize=(0.4 + 3.0 * ncols, 0.5 + 2.7 * len(rows)), layout="constrained")
    FigureCanvasAgg(fig)
    for r, row in enumerate(rows.values()):
        for c, m in enumerate(row):
            ax = fig.add_subplot(len(rows), ncols, r * ncols + c + 1)
            image = ax.imshow(
                m.counts, cmap=CMAP, extent=m.extent, interpolation="nearest", origin="upper"
            )
            fig.colorbar(image, ax=ax, shrink=0.85, label="counts")
            ax.set_title(m.species, fontsize=10)
            _lateral_labels(ax, m.lateral_unit)
    if title is None and maps:
        title = _range_text(maps[0].slices)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def ortho_figure(o: OrthoSlices, title: str | None = None) -> Figure:
    """The xy plane and the two depth planes of one species, depth pointing down (the
    depth-profiling convention), on one raw-count colour scale."""
    fig = Figure(figsize=(13.0, 4.2), layout="constrained")
    FigureCanvasAgg(fig)
    ny, nx = o.xy.shape
    xe, ye, ze = pixel_edges(nx, o.pixel_um), pixel_edges(ny, o.pixel_um), o.depth.edges
    top = max(int(o.xy.max()), int(o.xz.max()), int(o.yz.max()), 1)
    norm = Normalize(0, top)
    lat = "µm" if o.pixel_um is not None else "pixel"
    px, py, pz = o.position
    ax_xy, ax_xz, ax_yz = fig.subplots(1, 3)
    image = ax_xy.pcolormesh(xe, ye, o.xy, cmap=CMAP, norm=norm)
    ax_xy.invert_yaxis()
    ax_xy.set_box_aspect(ny / nx)  # square pixels; keeps the layout engine in charge
    ax_xy.axvline(px, color="w", lw=0.6, ls="--")
    ax_xy.axhline(py, color="w", lw=0.6, ls="--")
    ax_xy.set_title(f"xy at {_depth_text(pz, o.depth)}", fontsize=10)
    _lateral_labels(ax_xy, lat)
    for ax, plane, edges, at, name in (
        (ax_xz, o.xz, xe, py, "x"),
        (ax_yz, o.yz, ye, px, "y"),
    ):
        ax.pcolormesh(edges, ze, plane, cmap=CMAP, norm=norm)
        ax.invert_yaxis()
        ax.axhline(pz, color="w", lw=0.6, ls="--")
        other = "y" if name == "x" else "x"
        ax.set_title(f"{name}z at {other} = {at:.3g} {lat}", fontsize=10)
        ax.set_xlabel(f"{name} ({lat})")
        ax.set_ylabel(f"depth ({o.depth.unit})")
    ax_xz.axvline(px, color="w", lw=0.6, ls="--")
    ax_yz.axvline(py, color="w", lw=0.6, ls="--")
    fig.colorbar(image, ax=ax_yz, label="counts per voxel")
    fig.suptitle(title or o.species, fontsize=10)
    return fig


def _lateral_labels(ax: Axes, unit: str) -> None:
    ax.set_xlabel(f"x ({unit})")
    ax.set_ylabel(f"y ({unit})")


def _depth_text(value: float, axis: DepthAxis) -> str:
    return f"{value:.4g} nm" if axis.calibrated else f"slice {int(value)}"


def _range_text(sel: SliceRange) -> str:
    text = f"slices {sel.start}-{sel.stop - 1}"
    if sel.depth_nm is not None:
        text += f", {sel.depth_nm[0]:.4g}-{sel.depth_nm[1]:.4g} nm"
    return text
