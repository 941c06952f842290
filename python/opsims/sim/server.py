"""The simulator process: both instruments on their own threads and TCP ports, one shared
true timeline, and a control port for tests and operators (faults, a new probe region,
the SIMS beam mode, the ground truth). Protocol of the control port: one JSON object per
line each way (docs/simulator.md)."""

from __future__ import annotations

import json
import socket
import threading
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from opsims._native import ConfigError
from opsims.sim.cell import Cell
from opsims.sim.config import SimConfig
from opsims.sim.faults import Faults
from opsims.sim.potentiostat import SimPotentiostat
from opsims.sim.sims import BEAM_CODES, BEAM_MODES, SimSims
from opsims.sim.specimen import Specimen, SpecimenState
from opsims.sim.timebase import Timebase

_MAX_REQUEST = 1 << 16


class Simulator:
    def __init__(self, config: SimConfig) -> None:
        self.config = config
        self.stop_event = threading.Event()
        self.timebase = Timebase(config.acceleration)
        self.faults = Faults.from_mapping(config.faults)
        rng = np.random.default_rng(config.seed)
        self.cell = Cell(config.cell, rng)
        self.potentiostat = SimPotentiostat(
            config.potentiostat, self.cell, self.timebase, self.faults
        )
        d = config.detector
        self.specimen = Specimen(config.specimen, d.species, d.nx, d.ny, config.seed)
        self.sims = SimSims(
            d, config.sims, self.specimen, self.specimen_state, self.timebase, self.faults,
            config.seed,
        )  # fmt: skip
        self._listeners = {
            name: _listen(config.host, port)
            for name, port in (
                ("detector", config.detector_port),
                ("potentiostat", config.potentiostat_port),
                ("control", config.control_port),
            )
        }
        self._threads: list[threading.Thread] = []

    @property
    def ports(self) -> dict[str, int]:
        return {name: s.getsockname()[1] for name, s in self._listeners.items()}

    def start(self) -> None:
        self.timebase = Timebase(self.config.acceleration)  # true time 0 is now
        self.potentiostat.timebase = self.sims.timebase = self.timebase
        targets = {
            "potentiostat": lambda: self.potentiostat.serve(
                self._listeners["potentiostat"], self.stop_event
            ),
            "detector": lambda: self.sims.serve(self._listeners["detector"], self.stop_event),
            "control": self._serve_control,
        }
        for name, target in targets.items():
            thread = threading.Thread(target=target, name=f"sim-{name}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def wait(self, timeout_s: float | None = None) -> bool:
        return self.stop_event.wait(timeout_s)

    def stop(self) -> None:
        self.stop_event.set()
        for thread in self._threads:
            thread.join(timeout=5.0)
        for listener in self._listeners.values():
            listener.close()

    def specimen_state(self) -> SpecimenState:
        with self.potentiostat.lock:
            s = self.cell.state()
        return SpecimenState(
            plated_charge_c=s.plated_charge_c,
            peak_plating_density_ua_um2=s.peak_plating_density_ua_um2,
            critical_current_density_ua_um2=self.config.cell.critical_current_density_ua_um2,
            failed=s.failed,
            sei_fraction=s.sei_fraction,
        )

    # --- control port -----------------------------------------------------------------

    def _serve_control(self) -> None:
        listener = self._listeners["control"]
        listener.settimeout(0.1)
        while not self.stop_event.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(
                target=self._control_connection, args=(conn,), name="sim-control", daemon=True
            ).start()

    def _control_connection(self, conn: socket.socket) -> None:
        with conn, conn.makefile("rwb") as stream:
            while not self.stop_event.is_set():
                line = stream.readline(_MAX_REQUEST + 1)
                if not line:
                    return
                if len(line) > _MAX_REQUEST:
                    reply: dict[str, Any] = {"ok": False, "error": "request longer than 64 KiB"}
                else:
                    reply = self.handle(line)
                stream.write(json.dumps(reply).encode() + b"\n")
                stream.flush()
                if reply.get("stopping"):
                    self.stop_event.set()

    def handle(self, line: bytes) -> dict[str, Any]:
        """One control request; every failure is an error reply, never an exception."""
        try:
            request = json.loads(line)
        except (ValueError, UnicodeDecodeError) as e:
            return {"ok": False, "error": f"not JSON: {e}"}
        if not isinstance(request, dict) or not isinstance(request.get("cmd"), str):
            return {"ok": False, "error": 'a request is an object with a string "cmd"'}
        cmd = request["cmd"]
        try:
            if cmd == "status":
                return {"ok": True, **self.status()}
            if cmd == "fault":
                self.faults.set(str(request.get("link")), str(request.get("name")),
                                request.get("value"))  # fmt: skip
                return {"ok": True}
            if cmd == "new_region":
                with self.sims.lock:  # the cell and the raster move together
                    with self.potentiostat.lock:
                        self.cell.new_region()
                    self.sims.new_region()
                    return {"ok": True, "region": self.sims.region}
            if cmd == "beam":
                mode, modes = request.get("mode"), ", ".join(BEAM_MODES)
                if not isinstance(mode, str):
                    return {"ok": False, "error": f'beam needs a "mode" (one of {modes})'}
                if mode not in BEAM_MODES:
                    return {"ok": False, "error": f"beam: unknown mode {mode!r} (one of {modes})"}
                with self.sims.lock:
                    entry = self.sims.set_beam(mode)
                keys = ("mode", "depth_nm", "region", "frame")
                return {"ok": True, **{k: entry[k] for k in keys}}
            if cmd == "truth":
                path = request.get("path")
                if not isinstance(path, str):
                    return {"ok": False, "error": 'truth needs a "path" (a directory)'}
                return {"ok": True, "files": [str(p) for p in self.dump_truth(Path(path))]}
            if cmd == "stop":
                return {"ok": True, "stopping": True}  # stops once the reply is written
        except (ConfigError, ValueError, TypeError, OSError) as e:
            return {"ok": False, "error": f"{cmd}: {e}"}
        return {"ok": False, "error": f"unknown command {cmd!r}"}

    def status(self) -> dict[str, Any]:
        with self.potentiostat.lock:
            cell = _plain(asdict(self.cell.state()))
        with self.sims.lock:  # the sender thread holds it while it emits
            emitter = self.sims.emitter
            position = list(emitter.position) if emitter else None
            counters = emitter.truth_counters() if emitter else None
            beam = {"beam": self.sims.beam, "region": self.sims.region,
                    "depth_nm": self.sims.depth_nm}  # fmt: skip
        return {
            "true_s": self.timebase.now_s(),
            "acceleration": self.timebase.acceleration,
            "ports": self.ports,
            "cell": cell,
            "potentiostat": {
                "connections": self.potentiostat.truth.connections,
                "samples": len(self.potentiostat.truth.samples),
                "watchdog_trips": self.potentiostat.truth.watchdog_trips,
            },
            "detector": {
                "connections": self.sims.truth.connections,
                "frames_sent": self.sims.truth.frames_sent,
                "frames_unsent": self.sims.truth.frames_unsent,
                "position": position,
                "counters": counters,
                **beam,
            },
            "faults_injected": len(self.faults.log.entries),
        }

    # --- ground truth -----------------------------------------------------------------

    def dump_truth(self, directory: Path) -> list[Path]:
        """Write what really happened: ``truth.json`` (clocks, cell, sweeps, faults,
        detector counters, beam log, regions), ``samples.npz`` (every potentiostat
        sample), ``frames.npz`` (depth, beam, region and shift of every raster frame) and,
        when the emitter records them, ``cubes.npz`` (true counts per species and voxel)
        and ``events.npz`` (every generated count: ``DetectorEmitter.take_events``
        columns)."""
        directory.mkdir(parents=True, exist_ok=True)
        pot, sims = self.potentiostat, self.sims
        with pot.lock:
            samples = pot.truth.samples_array()
            doc: dict[str, Any] = {
                "format": "opsims-sim-truth/1",
                "timebase": {
                    "acceleration": self.timebase.acceleration,
                    "start_host_ns": self.timebase.start_host_ns,
                    "true_s": self.timebase.now_s(),
                },
                "potentiostat": {
                    "clock": pot.clock.truth(),
                    "states": pot.truth.states,
                    "sweeps": pot.truth.sweeps,
                    "commands": pot.truth.commands,
                    "events": pot.truth.events,
                    "connections": pot.truth.connections,
                    "watchdog_trips": pot.truth.watchdog_trips,
                    "eis_parameters": self.cell.eis_parameters(),
                    "cell": _plain(asdict(self.cell.state())),
                },
                "faults": self.faults.log.entries,
            }
        with sims.lock:
            emitter = sims.emitter
            doc["detector"] = {
                "clock": sims.clock.truth(),
                "start_true_s": sims.truth.start_true_s,
                "start_tick": sims.truth.start_tick,
                "frames_sent": sims.truth.frames_sent,
                "frames_unsent": sims.truth.frames_unsent,
                "connections": sims.truth.connections,
                "frame_fates": sims.truth.frame_fates,
                "frame_period_ticks": emitter.frame_period_ticks if emitter else None,
                "position": list(emitter.position) if emitter else None,
                "counters": emitter.truth_counters() if emitter else None,
                "specimen_seed": self.config.seed,
                "sputter_rate_nm_per_frame": self.config.sims.sputter_rate_nm_per_frame,
                "lateral_drift_px_per_frame": list(self.config.sims.lateral_drift_px_per_frame),
                "beam_codes": BEAM_CODES,
                "beam_initial": self.config.sims.beam,
                "beam": sims.beam,
                "region": sims.region,
                "depth_nm": sims.depth_nm,
                "depth_nm_by_frame": sims.truth.frame_depth_nm.tolist(),
                "beam_log": [dict(e) for e in sims.truth.beam_log],
                "regions": [{**r, "profiles": list(r["profiles"])} for r in sims.truth.regions],
            }
            frames = sims.truth.frames()
            cubes = (
                {name: emitter.truth_cube(name) for name in emitter.species}
                if emitter is not None and self.config.sims.record_truth
                else None
            )
            events = sims.events_so_far()
        files = [directory / "truth.json", directory / "samples.npz", directory / "frames.npz"]
        files[0].write_text(json.dumps(doc, indent=1))
        np.savez(files[1], allow_pickle=False, **samples)
        np.savez(files[2], allow_pickle=False, **frames)
        if cubes is not None:
            files.append(directory / "cubes.npz")
            np.savez_compressed(files[-1], allow_pickle=False, **cubes)
        if events is not None:
            files.append(directory / "events.npz")
            np.savez(files[-1], allow_pickle=False, **events)  # large: not compressed
        return files


def _listen(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(4)
    return sock


def _plain(d: dict[str, Any]) -> dict[str, Any]:
    return {k: (v.name if hasattr(v, "name") else v) for k, v in d.items()}
