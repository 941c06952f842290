"""opsimsd's configuration: the ``[daemon]``, ``[links]``, ``[safety]``, ``[journal]`` and
``[security]`` tables, the shared ``[detector]`` table, and ``[sim]`` when the simulator is
the instrument.
Everything is checked at start, with the key path in every message (docs/daemon.md)."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from opsims._native import ConfigError
from opsims.analysis.cubeset import SimsParameters
from opsims.config_table import TableReader, apply_overrides, load_toml
from opsims.daemon.journal import JournalConfig
from opsims.daemon.safety import SafetyConfig
from opsims.daemon.security import SecurityConfig, insecure_binding_error, insecure_bindings
from opsims.detector import DetectorConfig
from opsims.sim.config import SimConfig

#: "embedded": start `opsims-sim` on the same file; "external": a simulator already runs
#: at the [links] addresses (its [sim] table still gives the acceleration and control
#: port); "none": hardware.
Simulator = Literal["embedded", "external", "none"]


@dataclass(frozen=True)
class LinkAddress:
    host: str
    port: int


@dataclass(frozen=True)
class DaemonConfig:
    path: Path
    detector: DetectorConfig
    detector_link: LinkAddress
    potentiostat_link: LinkAddress
    simulator: Simulator = "embedded"
    sim: SimConfig | None = None
    state_dir: Path = Path("state")
    publish: str = "tcp://127.0.0.1:7410"
    control: str = "tcp://127.0.0.1:7411"
    source: str = "opsimsd"
    status_interval_s: float = 1.0
    cube_rate_hz: float = 4.0
    events_rate_hz: float = 10.0
    sndhwm: int = 1000
    reconnect_initial_s: float = 0.1
    reconnect_max_s: float = 5.0
    heartbeat_s: float = 0.5
    liveness_s: float = 2.0
    ready_timeout_s: float = 30.0
    potentiostat_clock_window_s: float = 30.0
    safety: SafetyConfig = field(default_factory=SafetyConfig)
    journal: JournalConfig = field(default_factory=JournalConfig)
    security: SecurityConfig = field(default_factory=SecurityConfig)

    @property
    def clock_time_scale(self) -> float:
        """Device seconds per host second: the simulator's acceleration, 1 on hardware."""
        return self.sim.acceleration if self.sim is not None else 1.0

    @classmethod
    def load(cls, path: str | Path, overrides: Iterable[str] = ()) -> DaemonConfig:
        path = Path(path)
        doc = load_toml(path)
        return cls.from_document(apply_overrides(doc, overrides), path)

    @classmethod
    def from_document(cls, doc: Mapping[str, Any], path: Path) -> DaemonConfig:
        top = TableReader(doc, "")
        for key in ("detector", "daemon", "links", "sim", "safety", "journal", "sims", "security"):
            top.used.add(key)
        unknown = sorted(map(str, set(doc) - top.used))
        if unknown:
            raise ConfigError(f"unknown top-level table(s) {', '.join(unknown)}")
        r = TableReader(doc.get("daemon", {}), "daemon")
        d = cls(path, DetectorConfig.from_mapping(doc.get("detector", {})),
                LinkAddress("", 0), LinkAddress("", 0))  # fmt: skip
        simulator = r.get("simulator", str, d.simulator)
        if simulator not in ("embedded", "external", "none"):
            raise r.error(
                "simulator", f"expected 'embedded', 'external' or 'none', got {simulator!r}"
            )
        sim = SimConfig.from_document(doc) if simulator != "none" else None
        links = TableReader(doc.get("links", {}), "links")
        det = _address(links.get("detector", dict, {}), "links.detector", 7401)
        pot_table = links.get("potentiostat", dict, {})
        pot = _address(pot_table, "links.potentiostat", 7402, extra=("clock_window_s",))
        links.reject_unknown()
        state_dir = Path(os.environ.get("OPSIMS_STATE_DIR") or r.get("state_dir", str, "state"))
        config = cls(
            path=path,
            detector=d.detector,
            detector_link=det,
            potentiostat_link=pot,
            simulator=simulator,
            sim=sim,
            state_dir=state_dir,
            publish=_endpoint(r, "publish", d.publish),
            control=_endpoint(r, "control", d.control),
            source=r.get("source", str, d.source),
            status_interval_s=r.get_float("status_interval_s", 1.0, minimum=0.05, maximum=60),
            cube_rate_hz=r.get_float("cube_rate_hz", 4.0, minimum=0.01, maximum=100),
            events_rate_hz=r.get_float("events_rate_hz", 10.0, minimum=0.1, maximum=100),
            sndhwm=r.get("sndhwm", int, d.sndhwm),
            reconnect_initial_s=r.get_float("reconnect_initial_s", 0.1, minimum=0.001),
            reconnect_max_s=r.get_float("reconnect_max_s", 5.0, minimum=0.001),
            heartbeat_s=r.get_float("heartbeat_s", 0.5, minimum=0.01),
            liveness_s=r.get_float("liveness_s", 2.0, minimum=0.05),
            ready_timeout_s=r.get_float("ready_timeout_s", 30.0, minimum=0.1),
            potentiostat_clock_window_s=TableReader(pot_table, "links.potentiostat").get_float(
                "clock_window_s", 30.0, minimum=1.0
            ),
            safety=SafetyConfig.from_mapping(top.get("safety", dict, {})),
            journal=JournalConfig.from_mapping(top.get("journal", dict, {})),
            # Key files are found from the configuration's folder (/etc/opsims/).
            security=SecurityConfig.from_mapping(top.get("security", dict, {}), path.parent),
        )
        r.reject_unknown()
        # Read by the analyses, not the daemon; checked here so a typo fails at start.
        names = tuple(p.name for p in config.detector.polarities)
        SimsParameters.from_mapping(top.get("sims", dict, {}), names)
        if config.reconnect_max_s < config.reconnect_initial_s:
            raise r.error("reconnect_max_s", "must not be below reconnect_initial_s")
        if config.liveness_s <= config.heartbeat_s:
            raise r.error("liveness_s", "must exceed heartbeat_s")
        if not config.security.allow_insecure_bind:
            for key, problem in insecure_bindings(config.security, config.publish,
                                                  config.control):  # fmt: skip
                raise r.error(key, insecure_binding_error(key, problem))
        return config


def _address(
    table: Mapping[str, Any], path: str, port: int, extra: tuple[str, ...] = ()
) -> LinkAddress:
    r = TableReader(table, path)
    address = LinkAddress(r.get("host", str, "127.0.0.1"), r.get("port", int, port))
    r.used.update(extra)
    r.reject_unknown()
    if not 0 < address.port < 65536:
        raise r.error("port", f"must be a TCP port 1..65535, got {address.port}")
    return address


def _endpoint(r: TableReader, key: str, default: str) -> str:
    value: str = r.get(key, str, default)
    if not value.startswith(("tcp://", "ipc://", "inproc://")):
        raise r.error(
            key, f"expected a ZeroMQ endpoint such as tcp://127.0.0.1:7410, got {value!r}"
        )
    return value
