"""The simulator's configuration: the ``[sim]`` table of a TOML file, plus the
``[detector]`` table it shares with the daemon (the raster, markers and record type the
front-end must produce are exactly what the daemon expects to receive)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from opsims._native import ConfigError
from opsims.config_table import TableReader, apply_overrides, load_toml
from opsims.detector import DetectorConfig
from opsims.sim.cell import CellConfig
from opsims.sim.potentiostat import PotentiostatConfig
from opsims.sim.sims import SimsConfig
from opsims.sim.specimen import SpecimenConfig


@dataclass(frozen=True)
class SimConfig:
    detector: DetectorConfig
    host: str = "127.0.0.1"
    #: TCP ports; 0 lets the system choose (the chosen ones are announced at start).
    detector_port: int = 7401
    potentiostat_port: int = 7402
    control_port: int = 7403
    #: Simulated seconds per wall second for the cell, the raster and both clocks.
    acceleration: float = 1.0
    seed: int = 1
    sims: SimsConfig = field(default_factory=SimsConfig)
    potentiostat: PotentiostatConfig = field(default_factory=PotentiostatConfig)
    cell: CellConfig = field(default_factory=CellConfig)
    specimen: SpecimenConfig = field(default_factory=SpecimenConfig)
    faults: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_document(cls, doc: Mapping[str, Any]) -> SimConfig:
        """Build from a whole parsed TOML document (other top-level tables are the
        daemon's and are left alone)."""
        if "detector" not in doc:
            raise ConfigError("detector: required table is missing")
        detector = DetectorConfig.from_mapping(doc["detector"])
        r = TableReader(doc.get("sim", {}), "sim")
        d = cls(detector=detector)
        ports = {
            name: r.get(name, int, getattr(d, name))
            for name in ("detector_port", "potentiostat_port", "control_port")
        }
        for name, port in ports.items():
            if port > 65535:
                raise r.error(name, f"must be a TCP port 0..65535, got {port}")
        config = cls(
            detector=detector,
            host=r.get("host", str, d.host),
            acceleration=r.get_float("acceleration", d.acceleration, minimum=1e-3, maximum=1e5),
            seed=r.get("seed", int, d.seed),
            sims=SimsConfig.from_mapping(r.get("detector", dict, {}), "sim.detector"),
            potentiostat=PotentiostatConfig.from_mapping(
                r.get("potentiostat", dict, {}), "sim.potentiostat"
            ),
            cell=CellConfig.from_mapping(r.get("cell", dict, {}), "sim.cell"),
            specimen=SpecimenConfig.from_mapping(r.get("specimen", dict, {}), "sim.specimen"),
            faults=r.get("faults", dict, {}),
            **ports,
        )
        r.reject_unknown()
        return config

    @classmethod
    def load(cls, path: str | Path, overrides: Iterable[str] = ()) -> SimConfig:
        """Read a TOML file, apply ``dotted.key=value`` overrides, and check it all."""
        doc = load_toml(path)
        return cls.from_document(apply_overrides(doc, overrides))
