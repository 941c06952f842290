"""The paper's experiment on the simulator, driven through opsimsd as on the instrument.

One run per region: a fresh region of the NZSP surface, impedance, 30 minutes of plating
at the region's current density, impedance, a strip to depletion, impedance (and at
0.04 µA µm⁻² a re-plate and a second strip, with impedance after each); the regions the
paper profiles end with a SIMS depth profile to 2 µm, the beam blanked until then. A
non-sodiated reference region is profiled first.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from opsims.announce import wait_for_announcement
from opsims.client import Control

REPO = Path(__file__).resolve().parents[2]
DEFAULT_CONFIG = REPO / "config" / "opsimsd.toml"
DENSITIES = (0.02, 0.04, 0.06, 0.1, 0.2, 0.5)  # µA µm⁻², on the 1 µm² probe


@dataclass(frozen=True)
class Preset:
    """How big and how fast: the raster, the count rate and the acceleration."""

    nx: int
    dwell_us: float
    total_rate_hz: float
    acceleration: float
    sputter_nm_per_frame: float
    frames_per_slice: int
    points_per_decade: int
    depth_step_nm: float

    def overrides(self) -> dict[str, Any]:
        dwell_ticks = round(self.dwell_us * 1e6)  # 1 ps ticks
        return {
            "detector": {
                "raster": {
                    "nx": self.nx,
                    "ny": self.nx,
                    "dwell_ticks": dwell_ticks,
                    "frames_per_slice": self.frames_per_slice,
                }
            },
            "sims": {"sputter_rate_nm_per_frame": self.sputter_nm_per_frame},
            # The simulator is a Python process a busy machine can deschedule for longer
            # than the default 0.5 s of silence the interlock allows while current flows.
            "safety": {"max_sample_gap_s": 2.0},
            "sim": {
                "acceleration": self.acceleration,
                "detector": {
                    "sputter_rate_nm_per_frame": self.sputter_nm_per_frame,
                    "beam": "off",
                    "record_truth": False,
                    "depth_step_nm": self.depth_step_nm,
                },
                "potentiostat": {"sample_period_s": 1.0},
                "specimen": {"total_rate_hz": self.total_rate_hz},
            },
        }


PRESETS = {
    # The count rate times the acceleration is what the two processes must carry (a few
    # million events per second here); a long dwell buys counts per voxel instead.
    # CI: a 64 x 64 raster, 400 µs per pixel, 1 nm per frame; about two minutes.
    "quick": Preset(64, 400.0, 1e4, 500.0, 1.0, 20, 6, 4.0),
    # Closer to the paper's maps: 128 x 128, 2 µm in 8000 frames of 10 nm slices.
    "full": Preset(128, 100.0, 2e4, 300.0, 0.25, 40, 10, 1.0),
}


@dataclass
class Run:
    name: str
    density: float | None
    steps: list[dict[str, Any]]
    profiled: bool
    run_id: str = ""
    reason: str = ""
    detail: str = ""
    trips: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "density_ua_um2": self.density,
            "run_id": self.run_id,
            "reason": self.reason,
            "detail": self.detail,
            "trips": self.trips,
            "profiled": self.profiled,
        }


def plan(preset: Preset, profile_depth_nm: float = 2000.0) -> list[Run]:
    eis = {
        "kind": "eis",
        "f_start_hz": 7e6,
        "f_stop_hz": 100,
        "points_per_decade": preset.points_per_decade,
        "amplitude_v": 0.3,
    }
    plate = {"kind": "constant_current", "sign": -1, "duration_s": 1800}
    strip = {"kind": "strip", "sign": 1, "depletion_v": 5.0, "max_duration_s": 600}
    frame_s = _frame_period_s(preset)

    def profile(depth_nm: float) -> dict[str, Any]:
        frames = depth_nm / preset.sputter_nm_per_frame
        return {"kind": "profile", "duration_s": round(frames * frame_s, 1)}

    def region(j: float, body: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "kind": "series",
            "current_densities_ua_um2": [j],
            "probe_area_um2": 1.0,
            "new_region": True,
            "steps": body,
        }

    runs = [Run("reference", None, [{"kind": "new_region"}, eis, profile(profile_depth_nm)], True)]
    for j in DENSITIES:
        if j == 0.02:  # Fig. 1c: the island's ion maps, imaged before it is stripped
            body = [eis, plate, eis, profile(300.0), strip, eis]
        elif j == 0.04:  # Table 1 (I) and (II), Figs. 4-6 (ii): the cycled region
            body = [eis, plate, eis, strip, eis, plate, eis, strip, eis]
        else:
            body = [eis, plate, eis, strip, eis]
        steps = [region(j, body)]
        profiled = j in (0.02, 0.04, 0.1)
        if j in (0.04, 0.1):  # Figs. 4-6 (ii), (iii)
            steps.append(profile(profile_depth_nm))
        runs.append(Run(f"J={j:g}", j, steps, profiled))
    return runs


def _frame_period_s(p: Preset) -> float:
    """Raster frame period of the default configuration's timing at this raster."""
    doc = tomllib.loads(DEFAULT_CONFIG.read_text())
    r = doc["detector"]["raster"]
    tick = doc["detector"]["tick_s"]
    line = r["line_settle_ticks"] + p.nx * p.dwell_us * 1e6 + r["flyback_ticks"]
    return float((p.nx * line + doc["sim"]["detector"]["frame_gap_ticks"]) * tick)


def merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = merge(out[k], v) if isinstance(v, Mapping) and isinstance(out.get(k), dict) else v
    return out


def write_toml(doc: Mapping[str, Any], path: Path) -> None:
    """Just the TOML this example needs: nested tables, arrays of tables, scalars."""
    lines: list[str] = []

    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, dict):
            return "{" + ", ".join(f"{json.dumps(k)} = {value(x)}" for k, x in v.items()) + "}"
        if isinstance(v, list):
            return "[" + ", ".join(value(x) for x in v) + "]"
        return json.dumps(v) if isinstance(v, str) else repr(v)

    def table(prefix: str, t: Mapping[str, Any]) -> None:
        nested = {k: v for k, v in t.items() if isinstance(v, dict) and k not in _INLINE}
        arrays = {
            k: v for k, v in t.items() if isinstance(v, list) and v and isinstance(v[0], dict)
        }
        for k, v in t.items():
            if k not in nested and k not in arrays:
                lines.append(f"{json.dumps(k)} = {value(v)}")
        for k, v in nested.items():
            lines.append(f"\n[{prefix}{k}]")
            table(f"{prefix}{k}.", v)
        for k, items in arrays.items():
            for item in items:
                lines.append(f"\n[[{prefix}{k}]]")
                table(f"{prefix}{k}.", item)

    table("", doc)
    path.write_text("\n".join(lines) + "\n")


# Tables written inline: per-species gains and per-polarity values are mappings of values.
_INLINE = {
    "island_gain",
    "column_gain",
    "sei_gain",
    "base_fraction",
    "surface_excess",
    "depth_gradient_per_um",
    "dead_time_ns",
}


@dataclass
class Instruments:
    control: Control
    sim_control: tuple[str, int]
    state_dir: Path

    def sim(self, request: dict[str, Any]) -> dict[str, Any]:
        with socket.create_connection(self.sim_control, timeout=30) as s:
            s.sendall(json.dumps(request).encode() + b"\n")
            reply: dict[str, Any] = json.loads(s.makefile("rb").readline())
        if not reply.get("ok"):
            raise RuntimeError(f"the simulator refused {request}: {reply}")
        return reply


@contextmanager
def instruments(config: Path, out: Path, log: Any) -> Iterator[Instruments]:
    """The simulator and opsimsd as processes, as on a lab PC (the simulator on its own,
    so its ground truth can be asked for at the end)."""
    doc = tomllib.loads(config.read_text())
    sim_cmd = [
        sys.executable,
        "-m",
        "opsims.sim.cli",
        "--config",
        str(config),
        "--any-port",
        "--truth",
        str(out / "truth"),
    ]
    sim = subprocess.Popen(sim_cmd, stdout=subprocess.PIPE, stderr=log, text=True)
    daemon: subprocess.Popen[str] | None = None
    try:
        ports = wait_for_announcement(sim, "opsims-sim")
        state = out / "state"
        sets = {
            "daemon.simulator": '"external"',
            "daemon.state_dir": json.dumps(str(state)),
            "daemon.publish": '"tcp://127.0.0.1:*"',
            "daemon.control": '"tcp://127.0.0.1:*"',
            "links.detector.port": str(ports["detector"]),
            "links.potentiostat.port": str(ports["potentiostat"]),
            "sim.control_port": str(ports["control"]),
        }
        cmd = [sys.executable, "-m", "opsims.daemon.main", "--config", str(config)]
        for k, v in sets.items():
            cmd += ["--set", f"{k}={v}"]
        daemon = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, text=True)
        endpoints = wait_for_announcement(daemon, "opsimsd")
        host = doc["sim"].get("host", "127.0.0.1")
        with Control(endpoints["control"], timeout_s=30) as ctl:
            yield Instruments(ctl, (host, int(ports["control"])), state)
    finally:
        for proc in (daemon, sim):  # the daemon first: it opens the circuit
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            if proc is not None and proc.stdout is not None:
                proc.stdout.close()


def wait_for_links(ctl: Control, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        links = ctl.status().get("links", {})
        if links and all(v.get("state") == "up" for v in links.values()):
            return
        time.sleep(0.2)
    raise TimeoutError(f"the instrument links did not come up within {timeout_s:.0f} s")


def perform(inst: Instruments, run: Run, say: Any, timeout_s: float = 900.0) -> None:
    """Start one run and wait for it to end; an interlock trip is reset and noted."""
    ctl = inst.control
    protocol = {"name": f"paper: {run.name}", "steps": run.steps}
    run.run_id = ctl.start_run(protocol, "examples/paper", f"the paper's experiment: {run.name}")[
        "run_id"
    ]
    t0 = time.monotonic()
    while True:
        status = ctl.status()
        if status["run"]["state"] != "running":
            break
        if time.monotonic() - t0 > timeout_s:
            ctl.stop_run("examples/paper", "took too long")
            raise TimeoutError(f"{run.name} still running after {timeout_s:.0f} s")
        time.sleep(0.2)
    run_dir = inst.state_dir / "runs" / run.run_id
    info = _closed(run_dir)
    end = info.get("end") or {}
    run.reason, run.detail = str(end.get("reason", "")), str(end.get("detail", ""))
    if status.get("safety_state") != "armed":
        run.trips.append(f"{status.get('safety_state')}: {run.detail}")
        ctl.reset_interlock("examples/paper", f"after {run.name}")
    say(
        f"  {run.name}: {run.run_id} {status['run']['state']} "
        f"({time.monotonic() - t0:.1f} s){' TRIPPED' if run.trips else ''}"
    )


def _closed(run_dir: Path, timeout_s: float = 60.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        info: dict[str, Any] = json.loads((run_dir / "run.json").read_text())
        if info.get("state") != "recording" or time.monotonic() > deadline:
            return info
        time.sleep(0.2)
