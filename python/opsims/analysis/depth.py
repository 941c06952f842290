"""Where each slice of a cube lies below the original surface: in nm when a calibration
exists (a measured crater depth spread over the frames, or a sputter rate given or
configured in ``[sims]``), else in slices (docs/depth-profiles.md, docs/ion-maps-3d.md).

One axis serves the depth profiles, the ion maps, the 3D renders and the exports.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    from opsims.analysis.cubeset import CubeSet

F64 = npt.NDArray[np.float64]
_CALIBRATION = {"sputter_rate": "sputter rate", "crater_depth": "crater depth"}


class DepthError(ValueError):
    """A depth axis that cannot be made as asked; the message says why."""


@dataclass(frozen=True)
class DepthAxis:
    """Slice edges along depth: nm from the surface, or slice indices when nothing
    calibrates the depth."""

    edges: F64
    unit: Literal["nm", "slice"]
    #: ``sputter_rate`` (configured or given), ``crater_depth``, or ``slices``.
    source: str
    nm_per_frame: float | None = None

    @property
    def centres(self) -> F64:
        return np.asarray(0.5 * (self.edges[:-1] + self.edges[1:]), dtype=np.float64)

    @property
    def n_slices(self) -> int:
        return len(self.edges) - 1

    @property
    def calibrated(self) -> bool:
        return self.unit == "nm"

    @property
    def calibration(self) -> str:
        """``source`` as the maps' JSON names it: ``sputter rate``, ``crater depth`` or
        ``none``."""
        return _CALIBRATION.get(self.source, "none")

    def slices_between(self, low: float, high: float) -> npt.NDArray[np.intp]:
        """Indices of the slices whose centre lies in ``[low, high]`` (the axis' unit)."""
        c = self.centres
        return np.flatnonzero((c >= low) & (c <= high))

    def describe(self) -> str:
        if self.source == "crater_depth":
            return f"depth from the crater depth ({self.nm_per_frame:.4g} nm per frame)"
        if self.source == "sputter_rate":
            return f"depth from the sputter rate ({self.nm_per_frame:.4g} nm per frame)"
        return "no depth calibration: depth is the slice index"

    def to_dict(self) -> dict[str, Any]:
        return {
            "unit": self.unit,
            "source": self.source,
            "nm_per_frame": self.nm_per_frame,
            "edges": self.edges.tolist(),
            "centres": self.centres.tolist(),
        }


def depth_axis(
    frames_in_slice: npt.ArrayLike,
    *,
    sputter_rate_nm_per_frame: float | None = None,
    crater_depth_nm: float | None = None,
    configured_rate_nm_per_frame: float | None = None,
    index_centred: bool = False,
) -> DepthAxis:
    """Depth of every slice edge. A measured crater depth is spread evenly over all the
    frames (rate = crater / frames); else a given or configured sputter rate; else the
    slice index: slice ``i`` spans ``i..i+1``, or ``i-½..i+½`` with ``index_centred``
    (maps and renders name a slice by its index, profiles tabulate its extent)."""
    frames = np.asarray(frames_in_slice, dtype=np.int64)
    cum = np.concatenate(([0], np.cumsum(frames))).astype(np.float64)
    if sputter_rate_nm_per_frame is not None and crater_depth_nm is not None:
        raise DepthError("give a sputter rate or a crater depth, not both")
    for name, v in (("sputter rate", sputter_rate_nm_per_frame), ("crater depth", crater_depth_nm)):
        if v is not None and not (math.isfinite(v) and v > 0):
            raise DepthError(f"the {name} must be a finite number > 0, got {v}")
    if crater_depth_nm is not None:
        total = int(frames.sum())
        if total <= 0:
            raise DepthError("no frames to spread the crater depth over")
        rate = crater_depth_nm / total
        return DepthAxis(cum * rate, "nm", "crater_depth", rate)
    given = sputter_rate_nm_per_frame or configured_rate_nm_per_frame
    if given is not None:
        return DepthAxis(cum * given, "nm", "sputter_rate", float(given))
    index = np.arange(len(frames) + 1, dtype=np.float64)
    return DepthAxis(index - 0.5 if index_centred else index, "slice", "slices")


def for_cubes(
    cs: CubeSet,
    crater_depth_nm: float | None = None,
    sputter_rate_nm_per_frame: float | None = None,
    *,
    index_centred: bool = False,
) -> DepthAxis:
    """:func:`depth_axis` of a cube set's slices, with its configured sputter rate."""
    n = cs.shape[0] if cs.cubes else len(cs.frames_in_slice)
    return depth_axis(
        cs.frames_in_slice[:n],
        sputter_rate_nm_per_frame=sputter_rate_nm_per_frame,
        crater_depth_nm=crater_depth_nm,
        configured_rate_nm_per_frame=cs.sims.sputter_rate_nm_per_frame,
        index_centred=index_centred,
    )
