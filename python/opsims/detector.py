"""Detector configuration: the ``[detector]`` table of the TOML config, checked key by key,
and the native :class:`~opsims._native.EventCore` built from it.

Values are checked here for type and presence (with the key path in every message); the
native core checks their consistency (markers sharing bits, settle times that leave no
dwell, the memory budget) and raises :class:`~opsims._native.ConfigError` itself.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from opsims._native import ConfigError, EventCore
from opsims.config_table import TableReader as _Reader

Switching = Literal["per_frame", "per_pixel"]
BudgetPolicy = Literal["rebin", "refuse"]

# PicoQuant TTResultFormat_TTTRRecType codes by the names a config may use.
RECORD_TYPES: dict[str, int] = {
    "picoharp_t2": 0x00010203,
    "picoharp_t3": 0x00010303,
    "hydraharp_v1_t2": 0x00010204,
    "hydraharp_v1_t3": 0x00010304,
    "hydraharp_v2_t2": 0x01010204,
    "hydraharp_v2_t3": 0x01010304,
    "multiharp_t2": 0x00010207,
    "multiharp_t3": 0x00010307,
}


@dataclass(frozen=True)
class Polarity:
    name: str
    channels: tuple[int, ...]
    species: tuple[str, ...]
    switching: Switching = "per_frame"
    settle_ticks: int = 0


@dataclass(frozen=True)
class MarkerBits:
    """Marker masks (bit 0 = marker input 1)."""

    frame: int = 0b0100
    line_start: int = 0b0001
    line_stop: int = 0b0010
    mass_switch: int = 0
    #: Whether the frame marker starts a frame or ends it (PicoQuant image files).
    frame_at: Literal["start", "end"] = "start"


@dataclass(frozen=True)
class DetectorConfig:
    record_type: int
    tick_s: float
    nx: int
    ny: int
    dwell_ticks: int
    polarities: tuple[Polarity, ...]
    line_settle_ticks: int = 0
    flyback_ticks: int = 0
    line_tolerance_ticks: int = 0
    frames_per_slice: int = 1
    markers: MarkerBits = field(default_factory=MarkerBits)
    memory_budget_bytes: int = 1 << 30
    budget_policy: BudgetPolicy = "rebin"
    clock_window_s: float = 30.0

    @property
    def species(self) -> list[str]:
        return [s for p in self.polarities for s in p.species]

    @classmethod
    def from_mapping(cls, table: Mapping[str, Any], path: str = "detector") -> DetectorConfig:
        """Build from a parsed TOML table; unknown keys and wrong types raise ConfigError."""
        r = _Reader(table, path)
        rt = r.get("record_type", (str, int))
        if isinstance(rt, str):
            if rt not in RECORD_TYPES:
                raise ConfigError(
                    f"{path}.record_type: {rt!r} is not one of {sorted(RECORD_TYPES)}"
                )
            rt = RECORD_TYPES[rt]
        raster = _Reader(r.get("raster", dict), f"{path}.raster")
        markers = _Reader(raster.get("markers", dict, {}), f"{path}.raster.markers")
        cube = _Reader(r.get("cube", dict, {}), f"{path}.cube")
        polarities = tuple(
            _polarity(p, f"{path}.raster.polarities[{i}]")
            for i, p in enumerate(raster.get("polarities", list))
        )
        config = cls(
            record_type=rt,
            tick_s=r.get_float("tick_s"),
            nx=raster.get("nx", int),
            ny=raster.get("ny", int),
            dwell_ticks=raster.get("dwell_ticks", int),
            polarities=polarities,
            line_settle_ticks=raster.get("line_settle_ticks", int, 0),
            flyback_ticks=raster.get("flyback_ticks", int, 0),
            line_tolerance_ticks=raster.get("line_tolerance_ticks", int, 0),
            frames_per_slice=raster.get("frames_per_slice", int, 1),
            markers=MarkerBits(
                frame=markers.get_marker("frame", 3),
                line_start=markers.get_marker("line_start", 1),
                line_stop=markers.get_marker("line_stop", 2),
                mass_switch=markers.get_marker("mass_switch", 0),
                frame_at=markers.get("frame_at", str, "start"),
            ),
            memory_budget_bytes=cube.get("memory_budget_bytes", int, 1 << 30),
            budget_policy=cube.get("budget_policy", str, "rebin"),
            clock_window_s=r.get_float("clock_window_s", 30.0),
        )
        for reader in (r, raster, markers, cube):
            reader.reject_unknown()
        return config

    def engine_args(self) -> dict[str, Any]:
        """The arguments of :class:`~opsims._native.EventCore` (and of the detector link
        of :class:`~opsims._native.Acquisition`) for this configuration, by name."""
        m = self.markers
        return {
            "record_type": self.record_type,
            "tick_s": self.tick_s,
            "nx": self.nx,
            "ny": self.ny,
            "dwell_ticks": self.dwell_ticks,
            "polarities": [
                (p.name, list(p.channels), list(p.species), p.switching, p.settle_ticks)
                for p in self.polarities
            ],
            "line_settle_ticks": self.line_settle_ticks,
            "flyback_ticks": self.flyback_ticks,
            "line_tolerance_ticks": self.line_tolerance_ticks,
            "frames_per_slice": self.frames_per_slice,
            "frame_marker": m.frame,
            "line_start_marker": m.line_start,
            "line_stop_marker": m.line_stop,
            "mass_switch_marker": m.mass_switch,
            "frame_marker_at": m.frame_at,
            "memory_budget_bytes": self.memory_budget_bytes,
            "budget_policy": self.budget_policy,
            "clock_window_s": self.clock_window_s,
        }

    def build(self) -> EventCore:
        """The native pipeline for this configuration (the core validates consistency)."""
        return EventCore(**self.engine_args())


def _polarity(table: Any, path: str) -> Polarity:
    if not isinstance(table, Mapping):
        raise ConfigError(f"{path}: expected a table, got {type(table).__name__}")
    r = _Reader(table, path)
    channels = r.get("channels", list)
    species = r.get("species", list)
    if not all(isinstance(c, int) and not isinstance(c, bool) and 0 <= c < 256 for c in channels):
        raise ConfigError(f"{path}.channels: expected integers 0..255, got {channels!r}")
    if not all(isinstance(s, str) for s in species):
        raise ConfigError(f"{path}.species: expected strings, got {species!r}")
    polarity = Polarity(
        name=r.get("name", str),
        channels=tuple(channels),
        species=tuple(species),
        switching=r.get("switching", str, "per_frame"),
        settle_ticks=r.get("settle_ticks", int, 0),
    )
    r.reject_unknown()
    return polarity
