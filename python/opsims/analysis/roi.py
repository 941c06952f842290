"""Regions of interest for depth profiles: a rectangle in pixels or in µm about the probe
(at the centre of the field, as the specimen model places it), or the island a species
draws above a count threshold, and the reference region outside it
(docs/depth-profiles.md)."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    from opsims.analysis.cubeset import CubeSet
    from opsims.analysis.registration import Registration

Mask = npt.NDArray[np.bool_]
_RANGE = re.compile(r"^\s*([-+0-9.eE]*)\s*:\s*([-+0-9.eE]*)\s*$")


class RoiError(ValueError):
    """An ROI that cannot be made; the message says why."""


@dataclass(frozen=True)
class Roi:
    """A boolean mask ``[ny, nx]`` of the pixels to sum, and what it is in words."""

    mask: Mask
    description: str
    #: Pixels in the mask (given only for an ROI read back from a file, without its mask).
    area_px: int = -1

    def __post_init__(self) -> None:
        if self.area_px < 0:
            object.__setattr__(self, "area_px", int(np.count_nonzero(self.mask)))

    @classmethod
    def recorded(cls, description: str, area_px: int) -> Roi:
        """An ROI known by its description and area only (read back from a CSV)."""
        return cls(np.zeros((0, 0), dtype=bool), description, area_px)

    def area_um2(self, pixel_um: float | None) -> float | None:
        return None if pixel_um is None else self.area_px * pixel_um**2

    def flat_index(self) -> npt.NDArray[np.intp]:
        """Flat pixel indices ``y * nx + x`` of the mask, in raster order."""
        return np.flatnonzero(self.mask)

    def within(self, valid: Mask, why: str = "") -> Roi:
        """The part of this ROI inside ``valid`` (the description says so if it shrank)."""
        mask = self.mask & valid
        if np.array_equal(mask, self.mask):
            return self
        return Roi(mask, f"{self.description}, within {why or 'the valid pixels'}")

    def complement(self, guard_px: int = 0) -> Roi:
        """Every pixel outside this ROI, and more than ``guard_px`` pixels from it."""
        near = self.mask
        if guard_px > 0:
            from scipy.ndimage import binary_dilation

            near = binary_dilation(near, iterations=guard_px)
        guard = f" (guard {guard_px} px)" if guard_px > 0 else ""
        return Roi(~near, f"outside {self.description}{guard}")

    def to_dict(self, pixel_um: float | None = None) -> dict[str, Any]:
        return {
            "description": self.description,
            "area_px": self.area_px,
            "area_um2": self.area_um2(pixel_um),
        }


def full_field(ny: int, nx: int) -> Roi:
    return Roi(np.ones((ny, nx), dtype=bool), "whole field")


def rectangle(shape: tuple[int, int], x: tuple[int, int], y: tuple[int, int]) -> Roi:
    """Pixels ``x0 <= x < x1``, ``y0 <= y < y1`` (column, row), within a ``shape =
    (ny, nx)`` field."""
    ny, nx = shape
    (x0, x1), (y0, y1) = x, y
    if not (0 <= x0 < x1 <= nx and 0 <= y0 < y1 <= ny):
        raise RoiError(
            f"rectangle x {x0}:{x1}, y {y0}:{y1} must be non-empty and inside the "
            f"{nx} x {ny} pixel field"
        )
    mask = np.zeros(shape, dtype=bool)
    mask[y0:y1, x0:x1] = True
    return Roi(mask, f"pixels x {x0}:{x1}, y {y0}:{y1}")


def rectangle_um(
    shape: tuple[int, int], pixel_um: float, x: tuple[float, float], y: tuple[float, float]
) -> Roi:
    """Pixels whose centre lies in ``[x0, x1] x [y0, y1]`` µm, with (0, 0) at the centre
    of the field (the probe tip): pixel centres are ``(i + ½ - n/2) * pixel_um``."""
    ny, nx = shape
    (x0, x1), (y0, y1) = x, y
    if not (x0 < x1 and y0 < y1):
        raise RoiError(f"rectangle x {x0}:{x1}, y {y0}:{y1} µm is empty")
    xs = (np.arange(nx) + 0.5 - nx / 2) * pixel_um
    ys = (np.arange(ny) + 0.5 - ny / 2) * pixel_um
    mask = ((ys >= y0) & (ys <= y1))[:, None] & ((xs >= x0) & (xs <= x1))[None, :]
    if not mask.any():
        half_x, half_y = nx * pixel_um / 2, ny * pixel_um / 2
        raise RoiError(
            f"rectangle x {x0:g}:{x1:g}, y {y0:g}:{y1:g} µm holds no pixel centre (the field "
            f"spans ±{half_x:g} µm in x, ±{half_y:g} µm in y)"
        )
    return Roi(mask, f"x {x0:g}:{x1:g} µm, y {y0:g}:{y1:g} µm")


def species_map(
    cubes: CubeSet,
    species: str,
    slices: npt.NDArray[np.intp] | None = None,
    registration: Registration | None = None,
) -> npt.NDArray[np.float64]:
    """Counts of ``species`` summed over ``slices`` (default: all), registered if given."""
    cube = cubes.cubes[species]
    zs = np.arange(cube.shape[0]) if slices is None else np.asarray(slices)
    if registration is not None:
        return registration.summed(cube, zs)
    if zs.size and np.array_equal(zs, np.arange(zs[0], zs[-1] + 1)):
        return np.asarray(cube[zs[0] : zs[-1] + 1].sum(axis=0, dtype=np.float64))
    return np.asarray(cube[zs].sum(axis=0, dtype=np.float64))


def threshold_roi(
    cubes: CubeSet,
    species: str,
    counts: float,
    *,
    slices: npt.NDArray[np.intp] | None = None,
    slices_text: str = "",
    smooth_px: float = 1.0,
    pick: Literal["centre", "largest"] = "centre",
    registration: Registration | None = None,
) -> Roi:
    """The island of ``species``: its map summed over ``slices``, smoothed by a Gaussian
    of ``smooth_px``, at or above ``counts`` per pixel; the connected part (8-neighbour)
    at the centre of the field (the probe) or the largest; holes filled."""
    from scipy.ndimage import binary_fill_holes, gaussian_filter, label

    if species not in cubes.species:
        raise RoiError(f"no species {species} in the cubes (have: {', '.join(cubes.species)})")
    if not math.isfinite(counts):
        raise RoiError(f"threshold must be a finite number, got {counts}")
    if slices is not None and len(slices) == 0:
        raise RoiError(f"no slice in the depth range {slices_text}".rstrip())
    image = species_map(cubes, species, slices, registration)
    if smooth_px > 0:
        image = gaussian_filter(image, smooth_px, mode="nearest")
    above = image >= counts
    if registration is not None:
        above &= registration.valid_mask()
    labels, n = label(above, structure=np.ones((3, 3), dtype=bool))
    where = f"{species} map{f' over {slices_text}' if slices_text else ''}"
    if n == 0:
        raise RoiError(
            f"no pixel of the {where} reaches {counts:g} counts (its maximum is "
            f"{float(image.max()):.4g} after smoothing)"
        )
    ny, nx = above.shape
    if pick == "largest":
        sizes = np.bincount(labels.ravel())[1:]
        chosen = int(np.argmax(sizes)) + 1
    else:
        rows = {math.floor((ny - 1) / 2), math.ceil((ny - 1) / 2)}
        cols = {math.floor((nx - 1) / 2), math.ceil((nx - 1) / 2)}
        hits = {int(labels[r, c]) for r in rows for c in cols} - {0}
        if not hits:
            raise RoiError(
                f"the {where} is below {counts:g} counts at the centre of the field: "
                f"lower the threshold or take the largest region"
            )
        sizes = np.bincount(labels.ravel())
        chosen = max(hits, key=lambda h: int(sizes[h]))
    mask = np.asarray(binary_fill_holes(labels == chosen), dtype=bool)
    which = "at the centre" if pick == "centre" else "largest"
    smooth = f", smoothed {smooth_px:g} px" if smooth_px > 0 else ""
    return Roi(mask, f"{where} >= {counts:g} counts{smooth}, {which}")


# --- text forms (the command line) ----------------------------------------------------------


def _range(text: str, what: str) -> tuple[str, str]:
    m = _RANGE.match(text)
    if m is None:
        raise RoiError(f"{what}: expected A:B, got {text!r}")
    return m.group(1), m.group(2)


def parse_rectangle(text: str, shape: tuple[int, int]) -> Roi:
    """``x0:x1,y0:y1`` in pixels (either bound may be left out, as in a Python slice)."""
    ny, nx = shape
    parts = text.split(",")
    if len(parts) != 2:
        raise RoiError(f"--roi: expected x0:x1,y0:y1 in pixels, got {text!r}")
    bounds = []
    for part, n, axis in ((parts[0], nx, "x"), (parts[1], ny, "y")):
        lo, hi = _range(part, f"--roi {axis}")
        try:
            bounds.append((int(lo) if lo else 0, int(hi) if hi else n))
        except ValueError:
            raise RoiError(f"--roi: pixel bounds must be integers, got {part!r}") from None
    return rectangle(shape, bounds[0], bounds[1])


def parse_rectangle_um(text: str, shape: tuple[int, int], pixel_um: float | None) -> Roi:
    """``x0:x1,y0:y1`` in µm from the probe at the centre of the field."""
    if pixel_um is None:
        raise RoiError("--roi-um needs the pixel size: [sims] fov_um in the config")
    parts = text.split(",")
    if len(parts) != 2:
        raise RoiError(f"--roi-um: expected x0:x1,y0:y1 in µm, got {text!r}")
    bounds = []
    for part, axis in ((parts[0], "x"), (parts[1], "y")):
        lo, hi = _range(part, f"--roi-um {axis}")
        try:
            bounds.append((float(lo), float(hi)))
        except ValueError:
            raise RoiError(f"--roi-um: bounds must be numbers, got {part!r}") from None
    return rectangle_um(shape, pixel_um, bounds[0], bounds[1])


@dataclass(frozen=True)
class ThresholdSpec:
    """``SPECIES:COUNTS[:DEPTH0-DEPTH1]`` of ``--roi-threshold``."""

    species: str
    counts: float
    depth: tuple[float, float] | None = None


def parse_threshold(text: str) -> ThresholdSpec:
    # Species names hold + and - but no colon; the depth range is A-B after the last colon.
    parts = text.split(":")
    if len(parts) not in (2, 3) or not parts[0]:
        raise RoiError(f"--roi-threshold: expected SPECIES:COUNTS[:DEPTH0-DEPTH1], got {text!r}")
    try:
        counts = float(parts[1])
    except ValueError:
        raise RoiError(f"--roi-threshold: COUNTS must be a number, got {parts[1]!r}") from None
    depth = None
    if len(parts) == 3:
        m = re.fullmatch(r"\s*([0-9.eE+]+)\s*-\s*([0-9.eE+]+)\s*", parts[2])
        try:
            depth = (float(m.group(1)), float(m.group(2))) if m else None
        except ValueError:
            depth = None
        if depth is None or not depth[0] <= depth[1]:
            raise RoiError(
                f"--roi-threshold: depth range must be DEPTH0-DEPTH1 with DEPTH0 <= DEPTH1, "
                f"got {parts[2]!r}"
            )
    return ThresholdSpec(parts[0], counts, depth)
