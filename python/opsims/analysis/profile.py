"""Depth profiles: counts of each species against depth over a region of interest, as the
reference paper's Fig. 4 plots them, with the detectors' dead time corrected and a
Poisson uncertainty on every value (docs/depth-profiles.md).

Uncertainties start from √N of the recorded counts of each voxel and are propagated to
first order. Counts of different voxels and of different species are independent (each
species is measured in its own frames or pixel parts), so their variances add; where a
value depends on one count twice (a species and the total it is part of) the shared term
is propagated exactly rather than in quadrature.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

import numpy as np
import numpy.typing as npt

# The dead-time correction and the depth axis live in their own modules; their names stay
# importable from here, where they were first defined.
from opsims.analysis.dead_time import dead_time_correct as dead_time_correct
from opsims.analysis.dead_time import dead_time_uncorrect as dead_time_uncorrect
from opsims.analysis.dead_time import roi_sums as roi_sums
from opsims.analysis.depth import DepthAxis as DepthAxis
from opsims.analysis.depth import DepthError, for_cubes
from opsims.analysis.depth import depth_axis as depth_axis
from opsims.analysis.jsonable import json_safe
from opsims.analysis.roi import Roi, full_field

if TYPE_CHECKING:
    from opsims.analysis.cubeset import CubeSet
    from opsims.analysis.registration import Registration

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
SCHEMA = "opsims.profile/1"
Normalisation = Literal["raw", "rate", "total", "matrix", "primary"]
NORMALISATIONS: tuple[Normalisation, ...] = ("raw", "rate", "total", "matrix", "primary")
_COLUMNS = ("raw", "live_time_s", "corrected", "corrected_sigma", "value", "sigma", "saturated")


#: A profile that cannot be made as asked; the message says why. A depth axis that cannot
#: be made is such a profile, so the two are one type and callers catch one.
ProfileError = DepthError


# --- the result -----------------------------------------------------------------------------


@dataclass(frozen=True)
class SpeciesProfile:
    """One species over the ROI, per slice. ``raw`` and ``live_time_s`` (per pixel) with
    ``dead_time_s`` give back ``corrected`` voxel by voxel (:func:`dead_time_uncorrect`)."""

    species: str
    polarity: str
    dead_time_s: float
    raw: I64
    live_time_s: F64
    corrected: F64
    corrected_sigma: F64
    value: F64
    sigma: F64
    saturated: I64

    def column(self, name: str) -> npt.NDArray[Any]:
        return np.asarray(getattr(self, name))


@dataclass(frozen=True)
class DepthProfile:
    """Depth profiles of several species over one ROI and how they were made."""

    profiles: Mapping[str, SpeciesProfile]
    depth: DepthAxis
    roi: Roi
    #: ``value`` unit: counts, counts/s, fraction, ratio, counts/C.
    unit: str
    settings: Mapping[str, Any]
    source: str
    pixel_um: float | None = None
    #: Integer ``(dx, dy)`` per slice applied to align the slices, when registered.
    shifts_px: I64 | None = None
    registration: Registration | None = None
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def species(self) -> list[str]:
        return list(self.profiles)

    @property
    def n_slices(self) -> int:
        return self.depth.n_slices

    def __getitem__(self, species: str) -> SpeciesProfile:
        return self.profiles[species]

    def ratio(self, numerator: str, denominator: str) -> tuple[F64, F64]:
        """Rate ratio of two species per slice and its sigma (relative errors in quadrature:
        the two species are counted independently)."""
        a, b = self.profiles[numerator], self.profiles[denominator]
        ra, sa = _rate(a.corrected, a.corrected_sigma, a.live_time_s, self.roi.area_px)
        rb, sb = _rate(b.corrected, b.corrected_sigma, b.live_time_s, self.roi.area_px)
        return _quotient(ra, sa, rb, sb)

    def meta(self) -> dict[str, Any]:
        """Everything but the per-slice arrays (the CSV's header line)."""
        d = self.depth
        return {
            "schema": SCHEMA,
            "source": self.source,
            "unit": self.unit,
            "depth": {"unit": d.unit, "source": d.source, "nm_per_frame": d.nm_per_frame},
            "roi": self.roi.to_dict(self.pixel_um),
            "pixel_um": self.pixel_um,
            "species": [
                {"name": p.species, "polarity": p.polarity, "dead_time_s": p.dead_time_s}
                for p in self.profiles.values()
            ],
            "settings": dict(self.settings),
            "notes": list(self.notes),
        }

    def to_json(self) -> dict[str, Any]:
        """A JSON-safe dict (NaN as None): the settings, the depth axis, per species every
        column, and the registration shifts."""
        doc = self.meta()
        doc["depth"] = self.depth.to_dict()
        doc["profiles"] = {
            s: {c: p.column(c).tolist() for c in _COLUMNS} for s, p in self.profiles.items()
        }
        doc["registration"] = None if self.registration is None else self.registration.to_dict()
        if self.registration is None and self.shifts_px is not None:
            doc["registration"] = {"shifts_px": self.shifts_px.tolist()}
        return dict(json_safe(doc))

    def to_csv(self, path: str | Path | None = None) -> str:
        """One row per slice: slice, depth start/end/centre, then per species ``raw``,
        ``live_time_s``, ``corrected``, ``corrected_sigma``, ``value``, ``sigma``,
        ``saturated`` (and ``shift_dx``, ``shift_dy`` when registered). Two ``#`` lines
        lead: the schema, then the settings as JSON. Written to ``path`` if given."""
        u = self.depth.unit
        head = ["slice", f"depth_start_{u}", f"depth_end_{u}", f"depth_centre_{u}"]
        head += [f"{s}_{c}" for s in self.profiles for c in _COLUMNS]
        cols: list[npt.NDArray[Any]] = [
            np.arange(self.n_slices),
            self.depth.edges[:-1],
            self.depth.edges[1:],
            self.depth.centres,
        ]
        cols += [p.column(c) for p in self.profiles.values() for c in _COLUMNS]
        if self.shifts_px is not None:
            head += ["shift_dx", "shift_dy"]
            cols += [self.shifts_px[:, 0], self.shifts_px[:, 1]]
        buf = io.StringIO()
        buf.write(f"# {SCHEMA}\n# {json.dumps(json_safe(self.meta()), allow_nan=False)}\n")
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(head)
        for row in zip(*(c.tolist() for c in cols), strict=True):
            w.writerow([_cell(v) for v in row])
        text = buf.getvalue()
        if path is not None:
            Path(path).write_text(text, encoding="utf-8")
        return text

    @classmethod
    def from_csv(cls, path: str | Path) -> DepthProfile:
        """Read back what :meth:`to_csv` wrote (the ROI mask itself is not in the file:
        the result's ROI is an empty mask of the recorded area)."""
        lines = Path(path).read_text(encoding="utf-8").splitlines()
        if len(lines) < 3 or lines[0] != f"# {SCHEMA}" or not lines[1].startswith("# "):
            raise ProfileError(f"{path}: not an opsims depth-profile CSV ({SCHEMA})")
        meta = json.loads(lines[1][2:])
        rows = list(csv.reader(lines[2:]))
        head, body = rows[0], rows[1:]
        data = {h: np.array([float(r[i]) for r in body]) for i, h in enumerate(head)}
        u = meta["depth"]["unit"]
        edges = np.append(data[f"depth_start_{u}"], data[f"depth_end_{u}"][-1:])
        d = meta["depth"]
        depth = DepthAxis(np.asarray(edges, dtype=np.float64), u, d["source"], d["nm_per_frame"])
        profiles = {}
        for sp in meta["species"]:
            s = sp["name"]
            col = {c: data[f"{s}_{c}"] for c in _COLUMNS}
            profiles[s] = SpeciesProfile(
                s, sp["polarity"], float(sp["dead_time_s"]),
                col["raw"].astype(np.int64), col["live_time_s"], col["corrected"],
                col["corrected_sigma"], col["value"], col["sigma"],
                col["saturated"].astype(np.int64),
            )  # fmt: skip
        shifts = None
        if "shift_dx" in data:
            shifts = np.stack([data["shift_dx"], data["shift_dy"]], axis=1).astype(np.int64)
        r = meta["roi"]
        roi = Roi.recorded(r["description"], int(r["area_px"]))
        return cls(
            profiles, depth, roi, meta["unit"], meta["settings"], meta["source"],
            meta["pixel_um"], shifts, None, tuple(meta["notes"]),
        )  # fmt: skip


def _cell(v: Any) -> str:
    if isinstance(v, float):
        return repr(v) if math.isfinite(v) else "nan"
    return str(v)


# --- extraction -----------------------------------------------------------------------------


class _Counts(NamedTuple):
    """One species over the ROI, per slice, before normalisation."""

    raw: I64
    live: F64
    corrected: F64
    sigma: F64
    saturated: I64
    rate: F64
    rate_sigma: F64


def _rate(n: F64, sigma: F64, live: F64, pixels: int) -> tuple[F64, F64]:
    """Counts over the ROI's dwell: the mean rate while the beam was on an ROI pixel."""
    dwell = live * pixels
    with np.errstate(divide="ignore", invalid="ignore"):
        return (
            np.where(dwell > 0, n / dwell, np.nan),
            np.where(dwell > 0, sigma / dwell, np.nan),
        )


def _quotient(a: F64, sa: F64, b: F64, sb: F64) -> tuple[F64, F64]:
    with np.errstate(divide="ignore", invalid="ignore"):
        q = np.where(b > 0, a / b, np.nan)
        s = np.sqrt((sa / b) ** 2 + (a * sb / b**2) ** 2)
    return q, np.where(b > 0, s, np.nan)


def extract_profile(
    cubes: CubeSet,
    *,
    species: Sequence[str] | None = None,
    roi: Roi | None = None,
    registration: Registration | None = None,
    correct_dead_time: bool = True,
    dead_time_s: float | Mapping[str, float] | None = None,
    normalise: Normalisation = "raw",
    matrix: Sequence[str] = (),
    total_over: Literal["polarity", "all"] = "polarity",
    sputter_rate_nm_per_frame: float | None = None,
    crater_depth_nm: float | None = None,
) -> DepthProfile:
    """Depth profiles of ``species`` (default: all) summed over ``roi`` (default: the
    whole field, or the part every registered slice covers).

    ``dead_time_s`` overrides the configured dead time (one value, or per polarity).
    ``normalise``: ``raw`` counts; ``rate``, counts per second of dwell on the ROI;
    ``total``, the species' share of the total rate of its polarity (``total_over =
    "all"``: of both); ``matrix``, the ratio to the matrix species of its polarity
    (``matrix`` names one per polarity, or one for all); ``primary``, counts per
    coulomb of primary beam (``[sims] primary_current_a``). Rates are compared, not
    counts, since species of one polarity may be measured for different times.

    Every value has a sigma from √N of the recorded counts (see :func:`dead_time_correct`),
    propagated to first order assuming the counts of different voxels and species are
    independent (Poisson counts in disjoint times); ratios add relative errors in
    quadrature, and a species' share of a total it is part of is propagated exactly.
    Raises :class:`ProfileError` when a profile cannot be made as asked.
    """
    have = cubes.species
    wanted = list(have if species is None else species)
    unknown = [s for s in wanted if s not in have]
    if unknown:
        raise ProfileError(
            f"no species {', '.join(unknown)} in the cubes (have: {', '.join(have)})"
        )
    if not wanted:
        raise ProfileError("no species to profile")
    if normalise not in NORMALISATIONS:
        raise ProfileError(
            f"unknown normalisation {normalise!r} (one of {', '.join(NORMALISATIONS)})"
        )
    z, ny, nx = cubes.shape
    depth = for_cubes(cubes, crater_depth_nm, sputter_rate_nm_per_frame)
    region = roi if roi is not None else full_field(ny, nx)
    if region.mask.shape != (ny, nx):
        raise ProfileError(f"the ROI mask is {region.mask.shape}, the slices are {(ny, nx)}")
    offsets = None
    if registration is not None:
        if registration.n_slices != z or registration.shape != (ny, nx):
            raise ProfileError("the registration was estimated on other cubes")
        region = region.within(registration.valid_mask(), "the part every registered slice covers")
        offsets = registration.offsets()
    if region.area_px == 0:
        raise ProfileError(f"the ROI ({region.description}) holds no pixel")
    matrix_of = _matrix_species(cubes, wanted, matrix) if normalise == "matrix" else {}
    if normalise == "primary" and not cubes.sims.primary_current_a:
        raise ProfileError(
            "normalising to the primary current needs [sims] primary_current_a in the config"
        )
    needed = list(wanted)
    if normalise == "total":
        pols = {cubes.polarity_of(s) for s in wanted}
        needed += [s for s in have if total_over == "all" or cubes.polarity_of(s) in pols]
    needed += list(matrix_of.values())
    needed = list(dict.fromkeys(needed))
    taus = _dead_times(cubes, correct_dead_time, dead_time_s)

    index = None if region.area_px == ny * nx and offsets is None else region.flat_index()
    pixels = region.area_px
    found: dict[str, _Counts] = {}
    for s in needed:
        live = cubes.live_time_s(s)
        tau = taus[cubes.polarity_of(s)]
        raw, corr, var, sat = roi_sums(cubes.cubes[s], live, tau, index, offsets)
        sigma = np.sqrt(var)
        found[s] = _Counts(raw, live, corr, sigma, sat, *_rate(corr, sigma, live, pixels))

    unit, values = _normalise(cubes, wanted, found, normalise, matrix_of, total_over)
    profiles = {}
    for s in wanted:
        c = found[s]
        pol = cubes.polarity_of(s)
        profiles[s] = SpeciesProfile(
            s, pol, taus[pol], c.raw, c.live, c.corrected, c.sigma, *values[s], c.saturated
        )
    settings = {
        "species": wanted,
        "normalise": normalise,
        "matrix": matrix_of,
        "total_over": total_over if normalise == "total" else None,
        "dead_time_corrected": correct_dead_time,
        "dead_time_s": taus,
        "primary_current_a": cubes.sims.primary_current_a,
        "sputter_rate_nm_per_frame": sputter_rate_nm_per_frame,
        "crater_depth_nm": crater_depth_nm,
        "registered": registration is not None,
    }
    shifts = None if registration is None else registration.shifts
    notes = _notes(depth, correct_dead_time, taus, profiles, registration)
    return DepthProfile(
        profiles, depth, region, unit, settings, cubes.source, cubes.pixel_um, shifts,
        registration, notes,
    )  # fmt: skip


def _dead_times(
    cubes: CubeSet, correct: bool, given: float | Mapping[str, float] | None
) -> dict[str, float]:
    names = [p.name for p in cubes.detector.polarities]
    if not correct:
        return dict.fromkeys(names, 0.0)
    if given is None:
        out = {p: float(cubes.sims.dead_time_s.get(p, 0.0)) for p in names}
    elif isinstance(given, Mapping):
        unknown = sorted(set(given) - set(names))
        if unknown:
            raise ProfileError(f"dead time for no polarity named {', '.join(unknown)}")
        out = {p: float(given.get(p, cubes.sims.dead_time_s.get(p, 0.0))) for p in names}
    else:
        out = dict.fromkeys(names, float(given))
    bad = [p for p, v in out.items() if not (math.isfinite(v) and v >= 0)]
    if bad:
        raise ProfileError(f"dead time of {', '.join(bad)} must be a finite number >= 0")
    return out


def _matrix_species(cubes: CubeSet, wanted: list[str], matrix: Sequence[str]) -> dict[str, str]:
    """The matrix species of every polarity that ``wanted`` uses."""
    if not matrix:
        raise ProfileError("normalising to the matrix needs matrix species (e.g. ZrO+,SiO2-)")
    missing = [m for m in matrix if m not in cubes.species]
    if missing:
        raise ProfileError(f"matrix species {', '.join(missing)} not in the cubes")
    by_pol: dict[str, str] = {}
    for m in matrix:
        p = cubes.polarity_of(m)
        if p in by_pol:
            raise ProfileError(f"two matrix species for the {p} polarity: {by_pol[p]}, {m}")
        by_pol[p] = m
    if len(matrix) == 1:
        return {p.name: matrix[0] for p in cubes.detector.polarities}
    lacking = sorted({cubes.polarity_of(s) for s in wanted} - set(by_pol))
    if lacking:
        raise ProfileError(f"no matrix species for the {', '.join(lacking)} polarity")
    return by_pol


def _normalise(
    cubes: CubeSet,
    wanted: list[str],
    found: Mapping[str, _Counts],
    how: Normalisation,
    matrix_of: Mapping[str, str],
    total_over: str,
) -> tuple[str, dict[str, tuple[F64, F64]]]:
    out: dict[str, tuple[F64, F64]] = {}
    for s in wanted:
        c = found[s]
        if how == "raw":
            measured = c.live > 0
            out[s] = (np.where(measured, c.corrected, np.nan), np.where(measured, c.sigma, np.nan))
        elif how == "rate":
            out[s] = (c.rate, c.rate_sigma)
        elif how == "primary":
            current = float(cubes.sims.primary_current_a or 0.0)
            out[s] = (c.rate / current, c.rate_sigma / current)
        elif how == "matrix":
            m = found[matrix_of[cubes.polarity_of(s)]]
            if m is c:
                one = np.where(np.isfinite(c.rate) & (c.rate > 0), 1.0, np.nan)
                out[s] = (one, np.where(np.isfinite(one), 0.0, np.nan))
            else:
                out[s] = _quotient(c.rate, c.rate_sigma, m.rate, m.rate_sigma)
        else:
            pol = cubes.polarity_of(s)
            others = [
                found[g]
                for g in found
                if g != s and (total_over == "all" or cubes.polarity_of(g) == pol)
            ]
            rest = sum((o.rate for o in others), np.zeros_like(c.rate))
            rest_var = sum((o.rate_sigma**2 for o in others), np.zeros_like(c.rate))
            total = c.rate + rest
            with np.errstate(divide="ignore", invalid="ignore"):
                share = np.where(total > 0, c.rate / total, np.nan)
                # s is part of the total: d(r/(r+R))/dr = R/T², d/dR = -r/T².
                var = (rest**2 * c.rate_sigma**2 + c.rate**2 * rest_var) / total**4
            out[s] = (share, np.where(total > 0, np.sqrt(var), np.nan))
    units = {
        "raw": "counts",
        "rate": "counts/s",
        "primary": "counts/C",
        "matrix": "ratio to matrix",
        "total": "fraction of polarity total" if total_over == "polarity" else "fraction of total",
    }
    return units[how], out


def _notes(
    depth: DepthAxis,
    correct: bool,
    taus: Mapping[str, float],
    profiles: Mapping[str, SpeciesProfile],
    registration: Registration | None,
) -> tuple[str, ...]:
    notes = [depth.describe()]
    if not correct:
        notes.append("dead time not corrected")
    else:
        zero = [p for p, t in taus.items() if t == 0]
        if zero:
            notes.append(f"dead time 0 for {', '.join(zero)}: not corrected")
    for p in profiles.values():
        bad = np.flatnonzero(p.saturated)
        if bad.size:
            notes.append(
                f"{p.species}: {int(p.saturated.sum())} saturated voxel(s) (m τ ≥ 1) in "
                f"{bad.size} slice(s), from slice {int(bad[0])}: those slices are NaN"
            )
    if registration is not None:
        notes.extend(registration.notes)
    return tuple(notes)
