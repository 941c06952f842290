"""Voxel cubes with what it takes to read them as physics: which polarity measured each
species, for how long each voxel was measured, the detectors' dead time, the pixel size
and the sputter rate (docs/sims-analysis.md).

``load_cubes`` reads them from wherever opsimsd's cubes end up: a run directory or run id
(rebuilt from the journal), a NeXus export, an ``.npz`` from ``opsims replay --out`` or
``opsims snapshot --out``, or the live daemon (:func:`from_mirror`). The SIMS parameters
come from the ``[sims]`` table of the daemon's configuration, which a run directory and
a NeXus export carry with them.
"""

from __future__ import annotations

import math
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from opsims.config_table import TableReader, as_float
from opsims.detector import DetectorConfig

if TYPE_CHECKING:
    from opsims.client import CubeMirror

Cube = npt.NDArray[np.uint32]


@dataclass(frozen=True)
class SimsParameters:
    """The ``[sims]`` table: what the analyses need to know about the SIMS column."""

    #: Width of the rastered field along x, µm (pixels are square).
    fov_um: float | None = None
    #: Depth removed per raster frame while profiling, nm (a calibration).
    sputter_rate_nm_per_frame: float | None = None
    #: Non-paralysable dead time of each polarity's detector, s.
    dead_time_s: Mapping[str, float] = field(default_factory=dict)
    #: Primary-beam current, A, when known (for normalising to dose).
    primary_current_a: float | None = None

    @classmethod
    def from_mapping(
        cls, table: Mapping[str, Any], polarities: tuple[str, ...] = (), path: str = "sims"
    ) -> SimsParameters:
        r = TableReader(table, path)

        def optional(key: str) -> float | None:
            if key not in table:
                r.used.add(key)
                return None
            return r.get_float(key, minimum=0.0, exclusive_minimum=True)

        fov = optional("fov_um")
        rate = optional("sputter_rate_nm_per_frame")
        current = optional("primary_current_a")
        dead = r.get("dead_time_ns", (int, float, dict), 0.0)
        if isinstance(dead, dict):
            unknown = sorted(set(dead) - set(polarities)) if polarities else []
            if unknown:
                raise r.error("dead_time_ns", f"no polarity named {', '.join(unknown)}")
            sub = TableReader(dead, f"{path}.dead_time_ns")
            dead_s = {p: sub.get_float(p, minimum=0.0) * 1e-9 for p in dead}
        else:
            dead = as_float(dead)
            if not math.isfinite(dead) or dead < 0:
                raise r.error("dead_time_ns", f"must be a finite number >= 0, got {dead}")
            dead_s = {p: dead * 1e-9 for p in polarities}
        r.reject_unknown()
        return cls(fov, rate, dead_s, current)


@dataclass(frozen=True)
class CubeSet:
    """Raw counts ``u32 [z, y, x]`` per species, in the configuration's species order,
    and the measurement they came from."""

    cubes: Mapping[str, Cube]
    detector: DetectorConfig
    sims: SimsParameters
    #: Raster frames summed into each slice (the last slice of a run may be partial).
    frames_in_slice: npt.NDArray[np.int64]
    source: str
    run_id: str | None = None
    #: The run's slice that is slice 0 here (leading slices without beam are dropped).
    first_slice: int = 0

    @property
    def species(self) -> list[str]:
        return [s for s in self.detector.species if s in self.cubes]

    @property
    def shape(self) -> tuple[int, int, int]:
        first = next(iter(self.cubes.values()))
        z, y, x = first.shape
        return z, y, x

    @property
    def frames_per_slice(self) -> int:
        return int(self.frames_in_slice.max()) if len(self.frames_in_slice) else 1

    @property
    def dwell_s(self) -> float:
        return self.detector.dwell_ticks * self.detector.tick_s

    @property
    def pixel_um(self) -> float | None:
        fov = self.sims.fov_um
        return None if fov is None else fov / self.detector.nx

    def polarity_of(self, species: str) -> str:
        for p in self.detector.polarities:
            if species in p.species:
                return p.name
        raise KeyError(f"no species {species!r} in this configuration")

    def dead_time_s(self, species: str) -> float:
        return self.sims.dead_time_s.get(self.polarity_of(species), 0.0)

    def frames_measured(self, species: str) -> npt.NDArray[np.float64]:
        """Per slice, the frames in which ``species`` was measured at each pixel.

        ``per_frame`` switching measures species ``k`` of a polarity of ``n`` in the frames
        ``f`` with ``f mod n == k``, ``f`` counted from the first frame of slice 0; with
        ``per_pixel`` switching every frame measures every species for ``1/n`` of the
        dwell, which counts here as ``1/n`` of a frame.
        """
        pol = next(p for p in self.detector.polarities if species in p.species)
        n, k = len(pol.species), pol.species.index(species)
        frames = self.frames_in_slice
        if pol.switching == "per_pixel":
            return frames.astype(np.float64) / float(n)
        first = np.concatenate(([0], np.cumsum(frames)[:-1]))
        last = first + frames
        # frames f in [first, last) with f ≡ k (mod n)
        counts: npt.NDArray[np.int64] = (last - 1 - k) // n - (first - 1 - k) // n
        return counts.astype(np.float64)

    def live_time_s(self, species: str) -> npt.NDArray[np.float64]:
        """Per slice, how long each pixel of ``species`` was measured, s."""
        return self.frames_measured(species) * self.dwell_s

    def depth_per_slice_nm(self) -> npt.NDArray[np.float64] | None:
        """Nominal depth of each slice's centre from the configured sputter rate."""
        rate = self.sims.sputter_rate_nm_per_frame
        if rate is None:
            return None
        edges = np.concatenate(([0], np.cumsum(self.frames_in_slice))) * rate
        centres: npt.NDArray[np.float64] = 0.5 * (edges[:-1] + edges[1:])
        return centres


def lit_slices(cs: CubeSet, fraction: float = 0.05) -> tuple[int, int]:
    """``(start, stop)`` of the slices from the first to the last with secondary ions:
    a slice whose count rate over every species is below ``fraction`` of the typical
    lit slice's had the beam blanked (dark counts only). All slices when none is lit."""
    n = cs.shape[0]
    live = sum(cs.live_time_s(s)[:n] for s in cs.species)
    counts = sum(c.sum(axis=(1, 2), dtype=np.float64) for c in cs.cubes.values())
    rate = np.divide(counts, live, out=np.zeros(n), where=np.asarray(live) > 0)
    if not n or rate.max() <= 0:
        return 0, n
    typical = np.median(rate[rate >= 0.5 * rate.max()])
    lit = np.flatnonzero(rate >= fraction * typical)
    return int(lit[0]), int(lit[-1]) + 1


def trim_dark(cs: CubeSet) -> CubeSet:
    """The cube set without the leading and trailing slices recorded with the beam
    blanked (a run's electrochemistry before its depth profile): depth 0 is then the
    first slice with secondary ions, the surface."""
    start, stop = lit_slices(cs)
    if (start, stop) == (0, cs.shape[0]):
        return cs
    return replace(
        cs,
        cubes={s: c[start:stop] for s, c in cs.cubes.items()},
        frames_in_slice=cs.frames_in_slice[start:stop],
        first_slice=cs.first_slice + start,
    )


def parameters_from_document(doc: Mapping[str, Any]) -> tuple[DetectorConfig, SimsParameters]:
    """The detector and SIMS parameters of a daemon configuration document."""
    detector = DetectorConfig.from_mapping(doc.get("detector", {}))
    names = tuple(p.name for p in detector.polarities)
    return detector, SimsParameters.from_mapping(doc.get("sims", {}), names)


def _slices(n_slices: int, fps: int, frames_total: int | None) -> npt.NDArray[np.int64]:
    frames = np.full(n_slices, fps, dtype=np.int64)
    if n_slices and frames_total is not None:
        frames[-1] = min(fps, max(1, frames_total - (n_slices - 1) * fps))
    return frames


def load_cubes(
    source: str | Path,
    *,
    state_dir: str | Path | None = None,
    config: str | Path | None = None,
    keep_dark: bool = False,
) -> CubeSet:
    """The cubes of a run (directory or id), a NeXus export, or an ``.npz``.

    ``config``, a daemon configuration file, supplies the detector and ``[sims]``
    parameters where the source carries none (an ``.npz``) and overrides them otherwise.
    Leading and trailing slices without beam are dropped (:func:`trim_dark`) unless
    ``keep_dark``.
    """
    cs = _load(source, state_dir, config)
    return cs if keep_dark else trim_dark(cs)


def _load(source: str | Path, state_dir: str | Path | None, config: str | Path | None) -> CubeSet:
    path = Path(source)
    override = None if config is None else tomllib.loads(Path(config).read_text())
    if path.suffix in (".nxs", ".h5", ".hdf5"):
        return _from_nexus(path, override)
    if path.suffix == ".npz":
        if override is None:
            raise ValueError(f"{path}: an .npz carries no configuration; give the daemon's")
        return _from_npz(path, override)
    from opsims.replay import find_run, replay

    run_dir = find_run(source, state_dir)
    rebuilt = replay(run_dir)
    doc = override or tomllib.loads((run_dir / "config.toml").read_text())
    detector, sims = parameters_from_document(doc)
    core = rebuilt.core
    fps, n = core.frames_per_slice, core.n_slices
    # Frames binned: the frame markers after the one that set slice 0's origin.
    frames_total = max(0, int(rebuilt.digest["counters"]["frame_markers"]) - 1)
    return CubeSet(
        rebuilt.cubes(),
        detector,
        sims,
        _slices(n, fps, frames_total),
        str(run_dir),
        str(rebuilt.info.get("run_id") or run_dir.name),
    )


def _from_nexus(path: Path, override: Mapping[str, Any] | None) -> CubeSet:
    import h5py

    with h5py.File(path, "r") as f:
        entry = f["entry"]
        doc = override or tomllib.loads(_text(entry["configuration/data"][()]))
        detector, sims = parameters_from_document(doc)
        group = entry["cubes"]
        cubes = {
            s: np.asarray(group[s][()], dtype=np.uint32) for s in detector.species if s in group
        }
        fps = int(group.attrs.get("frames_per_slice", detector.frames_per_slice))
        frames = int(group.attrs["frames"]) if "frames" in group.attrs else None
        run_id = _text(entry["run_id"][()]) if "run_id" in entry else None
    n = next(iter(cubes.values())).shape[0] if cubes else 0
    return CubeSet(cubes, detector, sims, _slices(n, fps, frames), str(path), run_id)


def _from_npz(path: Path, doc: Mapping[str, Any]) -> CubeSet:
    detector, sims = parameters_from_document(doc)
    with np.load(path, allow_pickle=False) as data:
        cubes = {s: np.asarray(data[s], dtype=np.uint32) for s in detector.species if s in data}
        fps = int(data["frames_per_slice"]) if "frames_per_slice" in data else None
        frames = int(data["frames"]) if "frames" in data else None
    if not cubes:
        raise ValueError(f"{path}: none of the configuration's species is in the file")
    n = next(iter(cubes.values())).shape[0]
    return CubeSet(
        cubes, detector, sims, _slices(n, fps or detector.frames_per_slice, frames), str(path)
    )


def from_mirror(mirror: CubeMirror, doc: Mapping[str, Any]) -> CubeSet:
    """The live daemon's cubes as a :class:`CubeSet` (a copy: the mirror goes on)."""
    detector, sims = parameters_from_document(doc)
    cubes = {s: mirror.cubes[s].copy() for s in detector.species if s in mirror.cubes}
    return CubeSet(
        cubes,
        detector,
        sims,
        _slices(mirror.n_slices, mirror.frames_per_slice, None),
        "live",
    )


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
