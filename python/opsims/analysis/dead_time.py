"""Non-paralysable dead-time correction of recorded counts, and its sums over a region of
interest slice by slice, with the Poisson variance of every sum (docs/depth-profiles.md).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
# Above this many counts in one voxel the per-slice histogram would be larger than the
# slice itself; such slices are corrected voxel by voxel instead.
_HIST_MAX = 1 << 16
# m τ this close to 1 counts as saturated: the correction would exceed 1e9, and m τ = 1
# itself must not escape by rounding.
_EDGE = 1e-9


def dead_time_correct(
    counts: npt.ArrayLike, live_time_s: npt.ArrayLike, dead_time_s: float
) -> tuple[F64, F64, npt.NDArray[np.bool_]]:
    """Non-paralysable dead-time correction of recorded counts, voxel by voxel.

    With ``m = counts / live_time`` the recorded rate, the true rate is
    ``n = m / (1 - m τ)``; the corrected count is ``n (T - τ)``: ``n T`` is biased high
    by about ``n τ`` (the correction is convex in ``m``), and one dead time less removes
    that to first order. ``sigma`` is √counts propagated by ``dN/dc``, with the
    sub-Poisson spread of a dead-time counter (variance ``c (1 - m τ)²``):
    ``sigma = √c (1 - τ/T) / (1 - m τ)``. Voxels with ``m τ ≥ 1`` cannot be corrected:
    they are returned as ``saturated`` with NaN. ``live_time_s`` broadcasts against
    ``counts``; a live time of 0 leaves the counts as they are.
    """
    c = np.asarray(counts, dtype=np.float64)
    t = np.broadcast_to(np.asarray(live_time_s, dtype=np.float64), c.shape)
    with np.errstate(divide="ignore", invalid="ignore"):
        a = np.where(t > 0, dead_time_s / t, 0.0)
        free = 1.0 - a * c
        saturated = free <= _EDGE
        corrected = np.where(saturated, np.nan, c * (1.0 - a) / free)
        sigma = np.where(saturated, np.nan, np.sqrt(c) * (1.0 - a) / free)
    return corrected, sigma, saturated


def dead_time_uncorrect(
    corrected: npt.ArrayLike, live_time_s: npt.ArrayLike, dead_time_s: float
) -> F64:
    """The recorded counts that :func:`dead_time_correct` turns into ``corrected``."""
    n = np.asarray(corrected, dtype=np.float64)
    t = np.broadcast_to(np.asarray(live_time_s, dtype=np.float64), n.shape)
    with np.errstate(divide="ignore", invalid="ignore"):
        a = np.where(t > 0, dead_time_s / t, 0.0)
        return np.asarray(n / (1.0 - a + a * n), dtype=np.float64)


def roi_sums(
    cube: npt.NDArray[np.uint32],
    live_time_s: F64,
    dead_time_s: float,
    index: npt.NDArray[np.intp] | None,
    offsets: npt.NDArray[np.int64] | None = None,
) -> tuple[I64, F64, F64, I64]:
    """Per slice: raw counts, dead-time-corrected counts, their variance, and the number
    of saturated voxels, summed over the pixels ``index`` (flat, ``y * nx + x``; None for
    every pixel), each slice read ``offsets[z]`` further on (registration).

    The correction depends on a voxel's count only, so each slice is reduced to a
    histogram of its counts and the sums are dot products with the correction per count:
    one pass over the voxels, no float copy of the cube.
    """
    z = cube.shape[0]
    flat = cube.reshape(z, -1)
    t = np.asarray(live_time_s, dtype=np.float64)
    with np.errstate(divide="ignore"):
        a = np.where(t > 0, dead_time_s / t, 0.0)
    raw = np.zeros(z, np.int64)
    corr, var = np.zeros(z), np.zeros(z)
    sat = np.zeros(z, np.int64)
    hists: list[npt.NDArray[np.intp]] = []
    rows: list[int] = []
    for k in range(z):
        row = flat[k]
        if index is not None:
            row = row.take(index if offsets is None else index + offsets[k])
        if row.size == 0:
            continue
        if int(row.max()) <= _HIST_MAX:
            hists.append(np.bincount(row))
            rows.append(k)
            continue
        n, sd, bad = dead_time_correct(row, t[k], dead_time_s)
        raw[k] = int(row.sum(dtype=np.int64))
        sat[k] = int(bad.sum())
        corr[k], var[k] = float(np.nansum(n)), float(np.nansum(sd * sd))
    if hists:
        width = max(len(h) for h in hists)
        h = np.zeros((len(hists), width), np.int64)
        for i, one in enumerate(hists):
            h[i, : len(one)] = one
        counts = np.arange(width, dtype=np.float64)
        ak = a[rows][:, None]
        free = 1.0 - ak * counts
        ok = free > _EDGE
        with np.errstate(divide="ignore", invalid="ignore"):
            g = np.where(ok, (1.0 - ak) / free, 0.0)
        raw[rows] = h @ np.arange(width, dtype=np.int64)
        sat[rows] = (h * ~ok).sum(axis=1)
        corr[rows] = (h * (counts * g)).sum(axis=1)
        var[rows] = (h * (counts * g * g)).sum(axis=1)
    bad_slices = sat > 0
    corr[bad_slices] = np.nan
    var[bad_slices] = np.nan
    return raw, corr, var, sat
