"""High-count columns of a species through the sample: the Na⁺ transport columns of the
reference paper's Fig. 5(iii) and S4, the oxide columns of Fig. 6(iii)
(docs/ion-maps-3d.md).

The method, on the map of the species summed over a depth range (e.g. below the Na
island layer, where only columns and the matrix remain):

1. smooth the map with a Gaussian of ``smooth_px`` pixels;
2. background = median of the smoothed map, sigma = 1.4826 x its median absolute deviation
   (both robust while columns cover a small part of the field), at least the Poisson
   noise of the smoothed background;
3. pixels above background + ``k_sigma`` sigma, grouped into 4-connected components; those
   smaller than the minimum area are dropped;
4. within a component, each local maximum (highest first) claims the pixels above half
   its height over background that connect to it: its full-width-at-half-maximum
   footprint. A maximum whose footprint runs into a column already claimed is a shoulder
   of that column, not a column, so columns that touch at the detection level but are
   separated by a dip below half height are found apart;
5. per column: the count-weighted centre, the equivalent width ``2·√(area/π)`` of the
   footprint, the peak of the smoothed map, and the depth extent: over the whole cube,
   the slices where the footprint's mean exceeds the background pixels' mean by
   ``depth_k_sigma`` standard errors and by ``depth_fraction`` of the column's median
   excess over its significant slices within the searched range (after a running mean
   over ``depth_smooth`` slices; one-slice gaps are bridged), the run that overlaps the
   searched range most.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from opsims.analysis.cubeset import CubeSet
from opsims.analysis.depth import DepthAxis
from opsims.analysis.maps import SliceRange, check_species, pixel_centres

F64 = npt.NDArray[np.float64]
Mask = npt.NDArray[np.bool_]
#: Background pixels sampled per slice for the depth extent: plenty for a mean and sigma.
BACKGROUND_SAMPLE = 8192
MAD_TO_SIGMA = 1.4826


@dataclass(frozen=True)
class Column:
    """One column: where, how wide, how strong, from what depth to what depth."""

    #: Centre ``(x, y)`` in the lateral unit (µm from the probe, or pixel index).
    centre: tuple[float, float]
    #: Equivalent width ``2·√(area/π)`` of the half-maximum footprint.
    width: float
    area_px: int
    #: Peak of the smoothed depth-summed map and its ratio to the background.
    peak_counts: float
    contrast: float
    #: Slices ``[start, stop)`` of the depth extent, None if no slice stands out.
    extent_slices: tuple[int, int] | None
    #: The same in the depth unit: top edge of the first, bottom edge of the last slice.
    extent: tuple[float, float] | None
    #: The extent runs on to the cube's last slice (the column may go deeper).
    reaches_end: bool
    footprint: Mask

    def to_dict(self, lateral_unit: str, depth_unit: str) -> dict[str, Any]:
        return {
            "centre": list(self.centre),
            "width": self.width,
            "lateral_unit": lateral_unit,
            "area_px": self.area_px,
            "peak_counts": self.peak_counts,
            "contrast": self.contrast,
            "extent": None if self.extent is None else list(self.extent),
            "extent_slices": None if self.extent_slices is None else list(self.extent_slices),
            "depth_unit": depth_unit,
            "reaches_end": self.reaches_end,
        }


@dataclass(frozen=True)
class ColumnSearch:
    """The columns of one species and the numbers the search used."""

    species: str
    slices: SliceRange
    lateral_unit: str
    depth_unit: str
    background_counts: float
    sigma_counts: float
    threshold_counts: float
    min_area_px: int
    columns: list[Column]

    def to_dict(self) -> dict[str, Any]:
        return {
            "species": self.species,
            "slices": self.slices.to_dict(),
            "background_counts": self.background_counts,
            "sigma_counts": self.sigma_counts,
            "threshold_counts": self.threshold_counts,
            "min_area_px": self.min_area_px,
            "columns": [c.to_dict(self.lateral_unit, self.depth_unit) for c in self.columns],
        }


def find_columns(
    cs: CubeSet,
    species: str,
    sel: SliceRange,
    depth: DepthAxis,
    *,
    k_sigma: float = 5.0,
    smooth_px: float = 1.0,
    min_area_px: int | None = None,
    min_area_um2: float = 4.0,
    depth_k_sigma: float = 3.0,
    depth_fraction: float = 0.5,
    depth_smooth: int = 3,
) -> ColumnSearch:
    """The columns of ``species`` found on its map summed over ``sel`` (see the module
    docstring). The minimum area is ``min_area_px`` when given, else ``min_area_um2``
    with a pixel size, else 9 pixels."""
    check_species(cs, [species])
    if not (k_sigma > 0 and depth_k_sigma > 0 and smooth_px >= 0 and depth_smooth >= 1):
        raise ValueError("k_sigma and depth_k_sigma must be > 0, smooth_px >= 0, depth_smooth >= 1")
    if not 0 <= depth_fraction < 1:
        raise ValueError(f"depth_fraction must be in 0..1, got {depth_fraction}")
    cube = cs.cubes[species]
    summed = cube[sel.start : sel.stop].sum(axis=0, dtype=np.float64)
    smooth = ndimage.gaussian_filter(summed, smooth_px) if smooth_px > 0 else summed
    bg = float(np.median(smooth))
    mad = float(np.median(np.abs(smooth - bg)))
    poisson = math.sqrt(max(bg, 1.0)) / (2 * math.sqrt(math.pi) * max(smooth_px, 0.5))
    sigma = max(MAD_TO_SIGMA * mad, poisson)
    level = bg + k_sigma * sigma
    p = cs.pixel_um
    if min_area_px is None:
        min_area_px = 9 if p is None else max(1, math.ceil(min_area_um2 / p**2))
    footprints = _footprints(smooth, level, bg, min_area_px)
    ny, nx = summed.shape
    xs, ys = pixel_centres(nx, p), pixel_centres(ny, p)
    detected = ndimage.binary_dilation(smooth > level, iterations=2)
    bg_mean, bg_var = _background_stats(cube, ~detected)
    edges = depth.edges
    columns = []
    for fp in footprints:
        peak = float(smooth[fp].max())
        # The centre from the column's top (above 3/4 of its height): a neighbour's tail
        # inside the half-maximum footprint does not pull it.
        parts, _ = ndimage.label(fp & (smooth >= bg + 0.75 * (peak - bg)))
        top = parts == parts.flat[int(np.argmax(np.where(fp, smooth, -np.inf)))]
        w = np.where(top, np.maximum(summed - bg, 0.0), 0.0)
        total = float(w.sum()) or 1.0
        centre = (float(w.sum(axis=0) @ xs / total), float(w.sum(axis=1) @ ys / total))
        area = int(fp.sum())
        width = 2 * math.sqrt(area / math.pi) * (1.0 if p is None else p)
        run = _extent(
            cube, fp, (bg_mean, bg_var), sel, (depth_k_sigma, depth_fraction), depth_smooth
        )
        extent = None if run is None else (float(edges[run[0]]), float(edges[run[1]]))
        reaches = run is not None and run[1] == cube.shape[0]
        contrast = peak / bg if bg > 0 else math.inf
        columns.append(Column(centre, width, area, peak, contrast, run, extent, reaches, fp))
    columns.sort(key=lambda c: -c.peak_counts)
    return ColumnSearch(
        species,
        sel,
        "µm" if p is not None else "pixel",
        depth.unit,
        bg,
        sigma,
        level,
        min_area_px,
        columns,
    )


def _footprints(smooth: F64, level: float, bg: float, min_area: int) -> list[Mask]:
    """Half-maximum footprints of the distinct local maxima in each component above
    ``level``. A maximum is a column of its own when the map dips below 80 % of its
    height (over the background) before reaching a higher one, else it is a shoulder;
    neighbouring columns share the pixels of their footprints by which peak is nearer."""
    labels, _ = ndimage.label(smooth > level)
    peaks = (ndimage.maximum_filter(smooth, size=3) == smooth) & (labels > 0)
    out = []
    for k, box in enumerate(ndimage.find_objects(labels), start=1):
        if box is None:
            continue
        comp = labels[box] == k
        if comp.sum() < min_area:
            continue
        sub = smooth[box]
        rows, cols = np.nonzero(peaks[box] & comp)
        order = np.argsort(-sub[rows, cols], kind="stable")
        distinct: list[tuple[int, int]] = []
        for r, c in zip(rows[order], cols[order], strict=True):
            parts, _ = ndimage.label((sub >= bg + 0.8 * (sub[r, c] - bg)) & comp)
            core = parts == parts[r, c]
            if not any(core[pr, pc] for pr, pc in distinct):
                distinct.append((int(r), int(c)))
        if not distinct:
            continue
        owner = _basins(sub, distinct)
        for i, (r, c) in enumerate(distinct):
            half = bg + 0.5 * (sub[r, c] - bg)
            parts, _ = ndimage.label((sub >= half) & comp & (owner == i))
            region = parts == parts[r, c]
            if region.sum() < min_area:
                continue
            full = np.zeros(smooth.shape, dtype=bool)
            full[box] = region
            out.append(full)
    return out


def _basins(sub: F64, peaks: list[tuple[int, int]]) -> npt.NDArray[np.intp]:
    """For every pixel, which of ``peaks`` it belongs to: the one its steepest ascent
    climbs to (a maximum that is not in ``peaks``, a shoulder, goes to the nearest)."""
    h, w = sub.shape
    index = np.arange(h * w).reshape(h, w)
    padded = np.pad(sub, 1, constant_values=-np.inf)
    padded_index = np.pad(index, 1, constant_values=0)
    best, up = sub.copy(), index.copy()
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            v = padded[1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w]
            better = v > best
            best = np.where(better, v, best)
            up = np.where(better, padded_index[1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w], up)
    top = up.ravel()
    for _ in range(h * w):  # pointer jumping: the chains halve each pass
        nxt = top[top]
        if np.array_equal(nxt, top):
            break
        top = nxt
    ry, rx = np.divmod(top, w)
    pr = np.array([r for r, _ in peaks])[:, None]
    pc = np.array([c for _, c in peaks])[:, None]
    owner: npt.NDArray[np.intp] = np.argmin((ry[None, :] - pr) ** 2 + (rx[None, :] - pc) ** 2, 0)
    return owner.reshape(h, w)


def _background_stats(cube: npt.NDArray[np.uint32], mask: Mask) -> tuple[F64, F64]:
    """Per slice, the mean and variance of a sample of the background pixels."""
    flat = np.flatnonzero(mask.ravel())
    nz = cube.shape[0]
    if flat.size < 2:
        return np.zeros(nz), np.full(nz, np.inf)
    sample = flat[:: max(1, flat.size // BACKGROUND_SAMPLE)]
    values = cube.reshape(nz, -1)[:, sample].astype(np.float64)
    return values.mean(axis=1), values.var(axis=1, ddof=1)


def _extent(
    cube: npt.NDArray[np.uint32],
    footprint: Mask,
    background: tuple[F64, F64],
    sel: SliceRange,
    levels: tuple[float, float],
    window: int,
) -> tuple[int, int] | None:
    """Slices ``[start, stop)`` where the footprint's mean stands out from the
    background's by ``k`` standard errors and by ``fraction`` of its median significant
    excess in ``sel``; of several such runs, the one that overlaps ``sel`` most."""
    nz = cube.shape[0]
    (bg_mean, bg_var), (k, fraction) = background, levels
    pixels = np.flatnonzero(footprint.ravel())
    inside = cube.reshape(nz, -1)[:, pixels].mean(axis=1, dtype=np.float64)
    excess = ndimage.uniform_filter1d(inside - bg_mean, window, mode="nearest")
    var = ndimage.uniform_filter1d(bg_var / pixels.size, window, mode="nearest") / window
    significant = excess > k * np.sqrt(np.maximum(var, 1e-12))
    within = excess[sel.start : sel.stop][significant[sel.start : sel.stop]]
    if within.size == 0:
        return None
    # A fraction of the column's typical strength, as for its lateral width: ends that do
    # not move with the counting statistics as a bare k-sigma test's would. The median,
    # so a stronger stretch (the reservoir of Fig. S4(i)) does not cut the rest off.
    above = significant & (excess > fraction * float(np.median(within)))
    runs = _runs(above, gap=1)
    if not runs:
        return None
    best = max(runs, key=lambda r: (min(r[1], sel.stop) - max(r[0], sel.start), r[1] - r[0]))
    if min(best[1], sel.stop) <= max(best[0], sel.start):
        return None
    return best


def _runs(above: npt.NDArray[np.bool_], gap: int) -> list[tuple[int, int]]:
    """Runs ``[start, stop)`` of True, joined across gaps of at most ``gap`` slices."""
    edges = np.diff(np.concatenate(([0], above.astype(np.int8), [0])))
    starts, stops = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    runs: list[tuple[int, int]] = []
    for a, b in zip(starts.tolist(), stops.tolist(), strict=True):
        if runs and a - runs[-1][1] <= gap:
            runs[-1] = (runs[-1][0], b)
        else:
            runs.append((a, b))
    return runs
