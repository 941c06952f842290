"""Lateral drift between depth slices: estimated from the strongest species of both
polarities by FFT cross-correlation against a reference, smoothed over slices (stage
and beam drift are slow), and applied as whole-pixel shifts, so registered voxels still
hold counts and their Poisson statistics (docs/depth-profiles.md).

Convention: slice ``z`` shows at ``p + shift[z]`` what the reference shows at ``p``, so
the registered slice reads ``cube[z, p + shift[z]]``; shifts are ``(dx, dy)`` in pixels
(x along the row, y down the rows).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    from opsims.analysis.cubeset import CubeSet

F64 = npt.NDArray[np.float64]
F32 = npt.NDArray[np.float32]
I64 = npt.NDArray[np.int64]
Reference = Literal["running", "first"]


class RegistrationError(ValueError):
    """Registration that cannot be done as asked; the message says why."""


@dataclass(frozen=True)
class Registration:
    """Per-slice drift: measured, smoothed, and the whole-pixel shifts applied."""

    species: tuple[str, ...]
    reference: Reference
    reference_slices: int
    smooth_slices: float
    shape: tuple[int, int]
    #: Counts in each slice's registration image.
    counts: F64
    #: ``(dx, dy)`` from the cross-correlation peak, px (NaN: too few counts).
    measured: F64
    #: Slices whose measurement the smoothing used (enough counts, not an outlier).
    used: npt.NDArray[np.bool_]
    smoothed: F64
    shifts: I64
    notes: tuple[str, ...] = ()

    @property
    def n_slices(self) -> int:
        return len(self.shifts)

    def valid_box(self) -> tuple[int, int, int, int]:
        """``(x0, x1, y0, y1)``: the pixels every shifted slice covers."""
        ny, nx = self.shape
        dx, dy = self.shifts[:, 0], self.shifts[:, 1]
        lo = (max(0, -int(dx.min(initial=0))), max(0, -int(dy.min(initial=0))))
        hi = (nx - max(0, int(dx.max(initial=0))), ny - max(0, int(dy.max(initial=0))))
        return lo[0], max(lo[0], hi[0]), lo[1], max(lo[1], hi[1])

    def valid_mask(self) -> npt.NDArray[np.bool_]:
        x0, x1, y0, y1 = self.valid_box()
        mask = np.zeros(self.shape, dtype=bool)
        mask[y0:y1, x0:x1] = True
        return mask

    def offsets(self) -> I64:
        """Per slice, how far on a flat pixel index ``y * nx + x`` the registered pixel
        lies: ``dy * nx + dx``."""
        nx = self.shape[1]
        return np.asarray(self.shifts[:, 1] * nx + self.shifts[:, 0], dtype=np.int64)

    def apply(self, cube: npt.NDArray[np.uint32]) -> npt.NDArray[np.uint32]:
        """A registered copy of ``cube``; pixels some slice does not cover are 0."""
        out = np.zeros_like(cube)
        x0, x1, y0, y1 = self.valid_box()
        for z, (dx, dy) in enumerate(self.shifts.tolist()):
            out[z, y0:y1, x0:x1] = cube[z, y0 + dy : y1 + dy, x0 + dx : x1 + dx]
        return out

    def summed(
        self,
        cube: npt.NDArray[np.uint32],
        slices: Sequence[int] | npt.NDArray[np.intp] | None = None,
    ) -> F64:
        """The registered map of ``cube`` summed over ``slices`` (default: all)."""
        out = np.zeros(self.shape)
        x0, x1, y0, y1 = self.valid_box()
        zs = range(self.n_slices) if slices is None else slices
        for z in zs:
            dx, dy = (int(v) for v in self.shifts[z])
            out[y0:y1, x0:x1] += cube[z, y0 + dy : y1 + dy, x0 + dx : x1 + dx]
        return out

    def to_dict(self) -> dict[str, Any]:
        def rows(a: F64) -> list[list[float | None]]:
            return [[None if not math.isfinite(v) else round(v, 3) for v in r] for r in a.tolist()]

        x0, x1, y0, y1 = self.valid_box()
        return {
            "species": list(self.species),
            "reference": self.reference,
            "reference_slices": self.reference_slices,
            "smooth_slices": self.smooth_slices,
            "measured_px": rows(self.measured),
            "used": self.used.tolist(),
            "smoothed_px": rows(self.smoothed),
            "shifts_px": self.shifts.tolist(),
            "valid_box": {"x": [x0, x1], "y": [y0, y1]},
            "notes": list(self.notes),
        }


def default_species(cubes: CubeSet) -> list[str]:
    """The most-counted species of each polarity."""
    out = []
    for p in cubes.detector.polarities:
        present = [s for s in p.species if s in cubes.cubes]
        if present:
            totals = [int(cubes.cubes[s].sum(dtype=np.uint64)) for s in present]
            out.append(present[int(np.argmax(totals))])
    return out


def estimate_drift(
    cubes: CubeSet,
    *,
    species: Sequence[str] | None = None,
    reference: Reference = "running",
    reference_slices: int = 5,
    smooth_slices: float = 2.0,
    min_counts: float = 200.0,
    max_shift_px: int | None = None,
    image_smooth_px: float = 1.0,
) -> Registration:
    """Drift of every slice against a reference image, from the summed counts of
    ``species`` (default: the most-counted species of each polarity).

    ``reference="first"`` compares with the sum of the first ``reference_slices``
    usable slices; ``"running"`` with the registered sum of the previous
    ``reference_slices``, which follows a composition that changes with depth. Either
    way the shifts are relative to the first usable slice. Both images are smoothed
    (``image_smooth_px``), their means removed and a Tukey window applied before the
    correlation; the peak is refined by a parabola through its neighbours. Slices with
    fewer than ``min_counts`` counts are not measured; outliers (over 4 robust
    deviations, at least 1.5 px, from the smoothed track) are dropped; the rest are
    smoothed by a local straight-line fit with Gaussian weights of ``smooth_slices``
    slices times counts, and missing slices interpolated.
    """
    from scipy.fft import irfft2, rfft2
    from scipy.ndimage import gaussian_filter
    from scipy.signal.windows import tukey

    names = list(species) if species else default_species(cubes)
    unknown = [s for s in names if s not in cubes.cubes]
    if unknown:
        raise RegistrationError(f"no species {', '.join(unknown)} in the cubes to register with")
    if reference not in ("running", "first"):
        raise RegistrationError(f"reference must be running or first, got {reference!r}")
    if reference_slices < 1:
        raise RegistrationError("the reference needs at least 1 slice")
    z, ny, nx = cubes.shape
    limit = max_shift_px if max_shift_px is not None else max(1, min(nx, ny) // 4)
    window = (tukey(ny, 0.25)[:, None] * tukey(nx, 0.25)[None, :]).astype(np.float32)

    def transform(img: F32) -> Any:
        g = gaussian_filter(img, image_smooth_px) if image_smooth_px > 0 else img
        g = (g - g.mean()) * window
        return rfft2(g)

    def image(k: int) -> F32:
        out = np.zeros((ny, nx), np.float32)
        for s in names:
            out += cubes.cubes[s][k]
        return out

    allowed = _allowed(ny, nx, limit)
    measured = np.full((z, 2), np.nan)
    counts = np.zeros(z)
    images = [image(k) for k in range(z)]
    counts[:] = [float(im.sum(dtype=np.float64)) for im in images]
    usable = np.flatnonzero(counts >= min_counts)
    members: deque[F32] = deque(maxlen=reference_slices)
    ref_ft = None
    if reference == "first" and usable.size:
        ref_ft = transform(np.sum([images[k] for k in usable[:reference_slices]], axis=0))
    for k in usable:
        if ref_ft is None:  # running: the first usable slice is the frame
            measured[k] = 0.0
            members.append(images[k])
            ref_ft = transform(members[0])
            continue
        surface = irfft2(np.conj(ref_ft) * transform(images[k]), s=(ny, nx))
        dx, dy = _peak(surface, allowed)
        measured[k] = (dx, dy)
        if reference == "running":
            members.append(_shifted(images[k], round(dx), round(dy)))
            ref_ft = transform(np.sum(members, axis=0))

    used = np.isfinite(measured[:, 0])
    smoothed = np.zeros((z, 2))
    rejected = 0
    for _ in range(3):
        smoothed = np.stack(
            [_smooth(measured[:, i], counts * used, smooth_slices) for i in (0, 1)], axis=1
        )
        resid = np.hypot(*(measured - smoothed).T)
        if used.sum() < 3:
            break
        scale = 1.4826 * float(np.median(resid[used]))
        out = used & (resid > max(4.0 * scale, 1.5))
        if not out.any():
            break
        rejected += int(out.sum())
        used &= ~out
    if usable.size:  # the frame is the first usable slice's
        smoothed -= smoothed[usable[0]]
    shifts = np.rint(smoothed).astype(np.int64)
    notes = _notes(z, usable.size, rejected, min_counts, shifts)
    return Registration(
        tuple(names), reference, reference_slices, smooth_slices, (ny, nx), counts, measured,
        used, smoothed, shifts, notes,
    )  # fmt: skip


def _allowed(ny: int, nx: int, limit: int) -> npt.NDArray[np.bool_]:
    """Correlation lags within ``limit`` px (lags wrap: index n - 1 is lag -1)."""
    ly = np.minimum(np.arange(ny), ny - np.arange(ny))
    lx = np.minimum(np.arange(nx), nx - np.arange(nx))
    return np.asarray((ly[:, None] <= limit) & (lx[None, :] <= limit), dtype=bool)


def _peak(surface: F64, allowed: npt.NDArray[np.bool_]) -> tuple[float, float]:
    """``(dx, dy)`` of the highest allowed lag, refined by a parabola on each axis."""
    ny, nx = surface.shape
    masked = np.where(allowed, surface, -np.inf)
    iy, ix = np.unravel_index(int(np.argmax(masked)), surface.shape)

    def vertex(m: float, c: float, p: float) -> float:
        den = m - 2 * c + p
        return 0.0 if den >= 0 else float(np.clip(0.5 * (m - p) / den, -0.5, 0.5))

    fy = vertex(surface[(iy - 1) % ny, ix], surface[iy, ix], surface[(iy + 1) % ny, ix])
    fx = vertex(surface[iy, (ix - 1) % nx], surface[iy, ix], surface[iy, (ix + 1) % nx])
    lag_y = iy - ny if iy > ny // 2 else iy
    lag_x = ix - nx if ix > nx // 2 else ix
    return lag_x + fx, lag_y + fy


def _shifted(img: F32, dx: int, dy: int) -> F32:
    """``out[p] = img[p + (dx, dy)]``, zero where that falls outside."""
    ny, nx = img.shape
    out = np.zeros_like(img)
    ys, xs = slice(max(0, -dy), min(ny, ny - dy)), slice(max(0, -dx), min(nx, nx - dx))
    yt, xt = slice(max(0, dy), min(ny, ny + dy)), slice(max(0, dx), min(nx, nx + dx))
    if ys.start < ys.stop and xs.start < xs.stop:
        out[ys, xs] = img[yt, xt]
    return out


def _smooth(values: F64, weights: F64, sigma: float) -> F64:
    """A weighted local straight-line fit over the slice index (Gaussian weights of
    ``sigma`` slices), so a steady drift is followed up to the first and last slice
    rather than pulled in; where no weight reaches, linear interpolation between the
    nearest fitted slices (0 if none was measured)."""
    n = len(values)
    ok = np.isfinite(values) & (weights > 0)
    if not ok.any():
        return np.zeros(n)
    v = np.where(ok, values, 0.0)
    w = np.where(ok, weights, 0.0)
    idx = np.arange(n, dtype=np.float64)
    if sigma > 0:
        lag = idx[None, :] - idx[:, None]
        k = np.exp(-0.5 * (lag / sigma) ** 2) * w[None, :]
        s0, s1, s2 = k.sum(axis=1), (k * lag).sum(axis=1), (k * lag**2).sum(axis=1)
        t0, t1 = k @ v, (k * lag) @ v
        det = s0 * s2 - s1**2
        have = s0 > 1e-9 * float(s0.max())
        out = np.full(n, np.nan)
        line = have & (det > 1e-6 * np.maximum(s0, 1e-300) ** 2)
        out[line] = (s2[line] * t0[line] - s1[line] * t1[line]) / det[line]
        flat = have & ~line  # one point in reach: its value
        out[flat] = t0[flat] / s0[flat]
    else:
        have, out = ok, np.where(ok, v, np.nan)
    return np.asarray(np.interp(idx, idx[have], out[have]), dtype=np.float64)


def _notes(z: int, usable: int, rejected: int, min_counts: float, shifts: I64) -> tuple[str, ...]:
    notes = []
    if usable < z:
        notes.append(
            f"registration: {z - usable} of {z} slices had under {min_counts:g} counts; "
            "their shifts are interpolated"
        )
    if rejected:
        notes.append(f"registration: {rejected} slice(s) rejected as outliers of the drift track")
    if z:
        span = np.ptp(shifts, axis=0)
        notes.append(
            f"registration: shifts up to {int(np.abs(shifts).max())} px "
            f"(range {int(span[0])} px in x, {int(span[1])} px in y)"
        )
    return tuple(notes)
