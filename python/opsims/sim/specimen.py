"""The specimen under the SIMS beam: secondary-ion count rates per species and pixel.

A Na | NZSP region around the probe tip as the paper images it: an NZSP matrix whose
composition changes with depth (Fig. 4(i)), a Na island on the surface whose size follows
the current density and whose shape turns irregular on failure (Fig. 1b, c), Na transport
columns through the bulk with a reservoir below the critical current density (Fig. 5,
Fig. S4) and oxide (SEI) enrichment at the surface and along the columns (Figs. 4-6).

Every lateral feature is a soft mask in [0, 1] that scales a species' rate by
``gain ** (weight * mask)``; masks are computed once per material change of the state, so
a frame costs one small matrix product and one ``exp``. See ``docs/specimen-model.md``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt

from opsims._native import ConfigError

F64 = npt.NDArray[np.float64]
_PATH = "sim.specimen"

#: Species the model knows: name -> (mass in u, polarity).
SPECIES: dict[str, tuple[int, str]] = {
    "Na+": (23, "+"),
    "Si+": (28, "+"),
    "Zr+": (90, "+"),
    "ZrO+": (106, "+"),
    "O-": (16, "-"),
    "P-": (31, "-"),
    "SiO2-": (60, "-"),
    "PO2-": (63, "-"),
    "ZrO2-": (122, "-"),
}


def _table(*values: float) -> dict[str, float]:
    return dict(zip(SPECIES, values, strict=True))


# Fig. 4(i): the surface is rich in Na+, SiO2- and PO2-; Si+, Zr+, P- and the Zr oxides
# grow towards the bulk (the ZrO2 secondary phase).
_DEFAULTS: dict[str, dict[str, float]] = {
    #                      Na+   Si+   Zr+   ZrO+  O-    P-    SiO2- PO2-  ZrO2-
    "base_fraction": _table(0.22, 0.08, 0.05, 0.02, 0.25, 0.04, 0.16, 0.12, 0.06),
    "surface_excess": _table(1.0, -0.4, -0.5, -0.3, 0.3, -0.4, 0.5, 0.5, -0.4),
    "depth_gradient_per_um": _table(-0.05, 0.04, 0.05, 0.10, 0.0, 0.04, -0.02, -0.02, 0.15),
    # Fig. 1c: Na+ and O- (NaO passivation) up, the NZSP framework ions down.
    "island_gain": _table(8.0, 0.2, 0.15, 0.3, 2.5, 0.2, 0.4, 0.4, 0.3),
    # Figs. 4-6: ZrO2-, SiO2-, PO2-, ZrO+ and O- enriched in the SEI, Na depleted (Fig. 5(ii)).
    "sei_gain": _table(0.6, 1.0, 1.0, 2.0, 1.8, 1.0, 2.5, 2.5, 4.0),
    "column_gain": _table(5.0, 0.8, 0.8, 0.9, 1.5, 0.8, 0.9, 0.9, 1.0),
}


class SpecimenConfigError(ConfigError, ValueError):
    """An invalid specimen setting; the message starts with its key path."""


def _f(default: float, rule: str = "> 0") -> Any:
    return field(default=default, metadata={"rule": rule})


def _tab(name: str, rule: str) -> Any:
    return field(default_factory=lambda: dict(_DEFAULTS[name]), metadata={"rule": rule})


def _check(f: Any, value: object, path: str) -> object:
    """One field's value checked against its rule; tables are merged onto the defaults."""
    rule, where = f.metadata["rule"], f"{path}.{f.name}"
    if f.name not in _DEFAULTS:
        return _number(value, rule, where)
    if not isinstance(value, Mapping):
        raise SpecimenConfigError(f"{where}: expected a table of species (got {value!r})")
    merged = dict(_DEFAULTS[f.name])
    for key, v in value.items():
        if key not in SPECIES:
            raise SpecimenConfigError(f"{where}.{key}: unknown species (known: {list(SPECIES)})")
        merged[key] = float(_number(v, rule, f"{where}.{key}"))
    return merged


def _number(value: object, rule: str, where: str) -> float | int:
    """``rule`` is "finite", "an integer >= 1" or a bound such as "> 0" or ">= 0"."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise SpecimenConfigError(f"{where}: expected a number (got {value!r})")
    if rule.startswith("an integer"):
        if not isinstance(value, int) or value < 1:
            raise SpecimenConfigError(f"{where}: must be {rule} (got {value!r})")
        return value
    op, _, low = rule.partition(" ")
    ok = math.isfinite(value) and (
        op == "finite" or (value > float(low) if op == ">" else value >= float(low))
    )
    if not ok:
        raise SpecimenConfigError(f"{where}: must be {rule} (got {value!r})")
    return float(value)


@dataclass(frozen=True)
class SpecimenConfig:
    """Specimen parameters (``[sim.specimen]``); tables map species names to numbers and
    may list only the species they change. Meanings: ``docs/specimen-model.md``."""

    fov_um: float = _f(150.0)
    total_rate_hz: float = _f(2.0e6)
    base_fraction: Mapping[str, float] = _tab("base_fraction", ">= 0")
    surface_excess: Mapping[str, float] = _tab("surface_excess", "> -1")
    transient_depth_nm: float = _f(20.0)
    depth_gradient_per_um: Mapping[str, float] = _tab("depth_gradient_per_um", "finite")
    grain_contrast: float = _f(0.03, ">= 0")
    grain_size_um: float = _f(4.0)
    island_width_min_um: float = _f(14.0, ">= 0")
    island_width_slope_um_per_ua_um2: float = _f(196.0, ">= 0")
    island_charge_scale_c: float = _f(1.0e-5)
    island_edge_um: float = _f(1.0)
    island_thickness_nm: float = _f(100.0, ">= 0")
    interface_width_nm: float = _f(20.0)
    dendrite_irregularity: float = _f(1.0, ">= 0")
    island_gain: Mapping[str, float] = _tab("island_gain", "> 0")
    sei_depth_nm: float = _f(500.0)
    sei_column_weight: float = _f(0.7, ">= 0")
    sei_gain: Mapping[str, float] = _tab("sei_gain", "> 0")
    column_width_um: float = _f(8.0)
    failed_column_count: int = _f(5, "an integer >= 1")
    failed_column_spread_um: float = _f(25.0, ">= 0")
    column_gain: Mapping[str, float] = _tab("column_gain", "> 0")
    reservoir_top_nm: float = _f(1400.0, ">= 0")
    reservoir_width_um: float = _f(30.0)
    reservoir_strength: float = _f(0.6, ">= 0")

    def __post_init__(self) -> None:
        for f in fields(self):
            object.__setattr__(self, f.name, _check(f, getattr(self, f.name), _PATH))

    @classmethod
    def from_mapping(cls, table: Mapping[str, object], path: str = _PATH) -> SpecimenConfig:
        """Build from a parsed TOML table; unknown keys and bad values name their key path."""
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(table) - set(known))
        if unknown:
            raise SpecimenConfigError(f"{path}: unknown key(s) {', '.join(unknown)}")
        checked: dict[str, Any] = {k: _check(known[k], v, path) for k, v in table.items()}
        return cls(**checked)


@dataclass(frozen=True)
class SpecimenState:
    """What the cell tells the specimen. A negative charge (stripped past zero) counts as 0."""

    plated_charge_c: float = 0.0
    peak_plating_density_ua_um2: float = 0.0
    critical_current_density_ua_um2: float = 0.04
    failed: bool = False
    sei_fraction: float = 0.0

    def __post_init__(self) -> None:
        values = (self.plated_charge_c, self.peak_plating_density_ua_um2, self.sei_fraction)
        if not all(math.isfinite(v) for v in values):
            raise ValueError(f"SpecimenState: values must be finite ({self})")
        if self.peak_plating_density_ua_um2 < 0 or not 0 <= self.sei_fraction <= 1:
            raise ValueError(f"SpecimenState: density >= 0 and sei_fraction in 0..1 ({self})")
        if not self.critical_current_density_ua_um2 > 0:
            raise ValueError(f"SpecimenState: critical current density must be > 0 ({self})")


class _Geometry(NamedTuple):
    """What a state means for the masks: all sizes in µm."""

    plated: bool
    grown: float  # charge factor 1 - exp(-Q / Q0)
    width: float  # island now
    full: float  # footprint: the island at full growth for the peak density (SEI region)
    failed: bool
    amp: float  # dendrite amplitude, 0 when not failed


def _soft(z: Any) -> Any:
    """Logistic step 1/(1+e^-z) written with tanh, which cannot overflow."""
    return 0.5 * (1.0 + np.tanh(0.5 * z))


class _Shape:
    """An island outline: radius relative to R0 against angle, drawn once from the seed."""

    _THETA = np.linspace(-math.pi, math.pi, 1024, endpoint=False)

    def __init__(self, rng: np.random.Generator, dendrite: bool) -> None:
        k = np.arange(2, 8)
        self.k, self.amp = k, rng.uniform(0.3, 1.0, k.size) / k
        self.phase = rng.uniform(0, 2 * math.pi, k.size)
        self.direction = float(rng.uniform(-math.pi, math.pi))
        n = int(rng.integers(3, 6)) if dendrite else 0
        # Fig. 1b(v): Na nucleates away from the probe, so lobes lean one way.
        self.f_angle = self.direction + rng.normal(0.0, 0.9, n)
        self.f_len = rng.uniform(0.5, 1.2, n)
        self.f_width = rng.uniform(0.08, 0.2, n)
        self.harmonic_scale = 0.6 if dendrite else 0.05 / float(self.amp.sum())

    def radius(self, amplitude: float) -> F64:
        """Relative radius on ``_THETA``, scaled so the mean of the x and y spans is 2."""
        t = self._THETA[:, None]
        rel = 1 + amplitude * self.harmonic_scale * (
            self.amp * np.cos(self.k * t + self.phase)
        ).sum(axis=1)
        lobe = np.angle(np.exp(1j * (t - self.f_angle)))  # wrapped to -pi..pi
        rel += amplitude * (self.f_len * np.exp(-0.5 * (lobe / self.f_width) ** 2)).sum(axis=1)
        rel = np.maximum(rel, 0.45)
        # Fig. 1b quotes islands as x by y spans ("20 x 20", "112 x 112"): scale to that.
        t = self._THETA
        span = (np.ptp(rel * np.cos(t)) + np.ptp(rel * np.sin(t))) / 2
        return np.asarray(2 * rel / span, dtype=np.float64)


class Specimen:
    """Rates of ``species`` on an ``nx`` x ``ny`` raster of square pixels, ``fov_um / nx``
    wide, centred on the probe tip at (0, 0) µm; x grows with column, y with row."""

    def __init__(
        self, config: SpecimenConfig, species: Sequence[str], nx: int, ny: int, seed: int
    ) -> None:
        names = list(species)
        unknown = [s for s in names if s not in SPECIES]
        if not names or unknown or len(set(names)) != len(names):
            raise SpecimenConfigError(
                f"species: {names!r} must be distinct names from {list(SPECIES)} "
                f"(unknown: {unknown})"
            )
        for key, n in (("nx", nx), ("ny", ny)):
            if isinstance(n, bool) or not isinstance(n, int) or n < 1:
                raise SpecimenConfigError(f"{key}: must be an integer >= 1 (got {n!r})")
        c = config
        if sum(c.base_fraction[s] for s in names) <= 0:
            raise SpecimenConfigError(f"{_PATH}.base_fraction: all zero for species {names}")
        self.config, self.species, self.nx, self.ny = c, tuple(names), nx, ny
        self.pixel_um = c.fov_um / nx
        self.x_um = (np.arange(nx) + 0.5 - nx / 2) * self.pixel_um
        self.y_um = (np.arange(ny) + 0.5 - ny / 2) * self.pixel_um
        xx, yy = np.meshgrid(self.x_um, self.y_um)
        self._xx, self._yy = xx.ravel(), yy.ravel()

        def pick(table: Mapping[str, float]) -> F64:
            return np.array([table[s] for s in names], dtype=np.float64)

        self._fraction, self._excess = pick(c.base_fraction), pick(c.surface_excess)
        self._gradient = pick(c.depth_gradient_per_um)
        self._log_island, self._log_sei = np.log(pick(c.island_gain)), np.log(pick(c.sei_gain))
        self._log_column = np.log(pick(c.column_gain))

        rng = np.random.default_rng(seed)
        self._grain = self._grain_field(rng)
        self._round, self._dendrite = _Shape(rng, False), _Shape(rng, True)
        # Fig. S4(i): below the CCD one column under the probe, from the island to the bulk.
        self._single = [(0.0, 0.0, c.column_width_um, c.island_thickness_nm, math.inf)]
        self._sporadic = self._draw_columns(rng)
        self._column_masks = {
            False: np.array([self._disc(x, y, w) for x, y, w, _, _ in self._single]),
            True: np.array([self._disc(x, y, w) for x, y, w, _, _ in self._sporadic]),
        }
        edge = c.reservoir_width_um / 8
        self._reservoir = self._disc(0.0, 0.0, c.reservoir_width_um, edge)
        self._key: tuple[object, ...] | None = None
        self._masks = np.zeros((0, nx * ny))

    def _grain_field(self, rng: np.random.Generator) -> F64:
        """Static grain texture, mean exactly 1: white noise smoothed in Fourier space."""
        c, n = self.config, self.nx * self.ny
        noise = rng.standard_normal((self.ny, self.nx))
        if c.grain_contrast == 0 or n == 1:
            return np.ones(n)
        ky = np.fft.fftfreq(self.ny, self.pixel_um)[:, None]
        kx = np.fft.rfftfreq(self.nx, self.pixel_um)[None, :]
        low = np.exp(-0.5 * (2 * math.pi * c.grain_size_um / 2) ** 2 * (kx**2 + ky**2))
        smooth = np.fft.irfft2(np.fft.rfft2(noise) * low, s=noise.shape).ravel()
        smooth = (smooth - smooth.mean()) / max(float(smooth.std()), 1e-300)
        grain = np.maximum(1 + c.grain_contrast * smooth, 0.1)
        return np.asarray(grain / grain.mean(), dtype=np.float64)

    def _draw_columns(self, rng: np.random.Generator) -> list[tuple[float, ...]]:
        """Fig. 5(iii), Fig. S4(ii-iii): sporadic columns near the probe, 6-12 µm wide
        (Fig. 6(iii) smallest ~6 µm), each starting and ending at its own depth."""
        c, out = self.config, list[tuple[float, ...]]()
        for _ in range(200 * c.failed_column_count):
            if len(out) == c.failed_column_count:
                break
            r = c.failed_column_spread_um * math.sqrt(rng.uniform())
            a, w = rng.uniform(-math.pi, math.pi), rng.uniform(6.0, 12.0)
            x, y = r * math.cos(a), r * math.sin(a)
            # Keep them apart so each one stays a column of its own in the maps.
            if all(math.hypot(x - o[0], y - o[1]) > (w + o[2]) / 2 + 3 for o in out):
                out.append((x, y, w, rng.uniform(0, 800), rng.uniform(1200, 3000)))
        return out

    def _disc(self, x: float, y: float, width: float, edge: float | None = None) -> F64:
        e = self.config.island_edge_um if edge is None else edge
        r = np.hypot(self._xx - x, self._yy - y)
        return np.asarray(_soft((width / 2 - r) / e), dtype=np.float64)

    def _center(self, width: float, failed: bool, amplitude: float) -> tuple[float, float]:
        """The island centre: a failed island lies off the probe (Fig. 1b(v))."""
        shift = 0.15 * amplitude * width / 2 if failed else 0.0
        a = self._dendrite.direction
        return shift * math.cos(a), shift * math.sin(a)

    def _island(self, width: float, failed: bool, amplitude: float) -> F64:
        if width <= 0:
            return np.zeros(self.nx * self.ny)
        shape, r0 = (self._dendrite, width / 2) if failed else (self._round, width / 2)
        cx, cy = self._center(width, failed, amplitude)
        dx, dy = self._xx - cx, self._yy - cy
        rel = np.interp(
            np.arctan2(dy, dx),
            _Shape._THETA,
            shape.radius(amplitude if failed else 1.0),
            period=2 * math.pi,
        )
        return np.asarray(_soft((r0 * rel - np.hypot(dx, dy)) / self.config.island_edge_um))

    def _geometry(self, state: SpecimenState) -> _Geometry:
        c = self.config
        charge = max(state.plated_charge_c, 0.0)
        grown = 1 - math.exp(-charge / c.island_charge_scale_c)
        j = state.peak_plating_density_ua_um2
        plated = charge > 0 or j > 0
        # Fig. 1b: width follows current density (the field under the probe), area charge.
        full = c.island_width_min_um + c.island_width_slope_um_per_ua_um2 * j if plated else 0.0
        over = j / state.critical_current_density_ua_um2 - 1
        amp = c.dendrite_irregularity * min(max(over, 0.3), 1.0) if state.failed else 0.0
        return _Geometry(plated, grown, full * math.sqrt(grown), full, state.failed, amp)

    def _update_masks(self, g: _Geometry) -> None:
        q = self.pixel_um / 4  # recompute only when an outline moves by a quarter pixel
        key = (round(g.width / q), round(g.full / q), g.failed, round(g.amp, 3))
        if key == self._key:
            return
        now = self._island(g.width, g.failed, g.amp)
        footprint = self._island(g.full, g.failed, g.amp)
        rows = [now, footprint, *self._column_masks[g.failed], self._reservoir]
        self._masks, self._key = np.array(rows), key

    def _matrix(self, depth_nm: float) -> F64:
        """Per-pixel rate of each species in the bare matrix: weights renormalised so the
        total over the chosen species is ``total_rate_hz`` at every depth."""
        c = self.config
        w = self._fraction * np.maximum(
            1 + self._excess * math.exp(-depth_nm / c.transient_depth_nm), 0
        )
        w *= np.maximum(1 + self._gradient * depth_nm / 1000, 0)
        total = float(w.sum())
        return np.asarray(c.total_rate_hz * w / total if total > 0 else w, dtype=np.float64)

    def _log_gains(self, d: float, state: SpecimenState, g: _Geometry) -> F64:
        """[species, mask] log-gains at depth ``d``; rows match ``_update_masks``."""
        c, iw = self.config, self.config.interface_width_nm
        sei = state.sei_fraction
        columns = self._sporadic if g.failed else self._single
        cols = [
            float(_soft((d - top) / iw) * _soft((bottom - d) / iw))
            * (self._log_column * g.grown + self._log_sei * sei * c.sei_column_weight)
            for *_, top, bottom in columns
        ]
        # Fig. S4(i): a Na reservoir towards the bulk, only below the CCD.
        res = 0.0 if g.failed else float(_soft((d - c.reservoir_top_nm) / iw))
        return np.stack(
            [
                self._log_island * float(_soft((c.island_thickness_nm - d) / iw)),
                self._log_sei * sei * math.exp(-d / c.sei_depth_nm),
                *cols,
                self._log_column * g.grown * c.reservoir_strength * res,
            ],
            axis=1,
        )

    def rates(self, depth_nm: float, state: SpecimenState) -> F64:
        """[n_species, ny, nx] count rate (s^-1) with the beam on that pixel and the
        spectrometer on that species, before detector dead time."""
        d = float(depth_nm)
        if not math.isfinite(d) or d < 0:
            raise ValueError(f"depth_nm must be finite and >= 0 (got {depth_nm!r})")
        base = self._matrix(d)
        g = self._geometry(state)
        if not g.plated:
            out = base[:, None] * self._grain
        else:
            self._update_masks(g)
            out = self._log_gains(d, state, g) @ self._masks
            np.exp(out, out=out)
            out *= self._grain
            out *= base[:, None]
        return out.reshape(len(self.species), self.ny, self.nx)

    def composition_truth(self, depth_nm: float, state: SpecimenState) -> dict[str, object]:
        """Ground truth at ``depth_nm`` for tests and analysis checks (µm, nm, s^-1)."""
        d, c = float(depth_nm), self.config
        g = self._geometry(state)
        columns = (self._sporadic if g.failed else self._single) if g.plated else []
        iw = c.interface_width_nm
        if g.plated:
            self._update_masks(g)
            island, footprint = self._masks[0], self._masks[1]
        else:
            island = footprint = np.zeros(self.nx * self.ny)
        mask = (island > 0.5).reshape(self.ny, self.nx)
        return {
            "x_um": self.x_um.copy(),
            "y_um": self.y_um.copy(),
            "pixel_um": self.pixel_um,
            "probe_um": (0.0, 0.0),
            "plated": g.plated,
            "failed": bool(g.failed),
            "charge_factor": g.grown,
            "dendrite_amplitude": g.amp,
            "island_width_um": g.width,
            "footprint_width_um": g.full,
            "island_center_um": self._center(g.width, g.failed, g.amp),
            "island_mask": mask,
            "island_area_um2": float(mask.sum()) * self.pixel_um**2,
            "footprint_mask": (footprint > 0.5).reshape(self.ny, self.nx),
            "island_layer_weight": float(_soft((c.island_thickness_nm - d) / iw)),
            "sei_weight": state.sei_fraction * math.exp(-d / c.sei_depth_nm),
            "column_centers_um": [(x, y) for x, y, *_ in columns],
            "column_widths_um": [w for _, _, w, *_ in columns],
            "column_depths_nm": [(t, b) for *_, t, b in columns],
            "column_active": [bool(t < d < b) for *_, t, b in columns],
            "reservoir_active": bool(g.plated and not g.failed and d > c.reservoir_top_nm),
            "matrix_rate_hz": dict(zip(self.species, self._matrix(d).tolist(), strict=True)),
        }
