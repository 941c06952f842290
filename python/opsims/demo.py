"""A live operando experiment with no hardware: ``opsims demo``.

It starts the instrument simulator (``opsims-sim``) as its own process, connects to its
two links exactly as the daemon does, and runs the paper's protocol on a fresh region at
the critical current density, time-accelerated: rest, an impedance sweep, 30 minutes of
plating at 0.04 µA, stripping until the island is depleted, a second sweep. The terminal
shows the cell (Ewe, I, charge), the raster (depth, events binned, the Na⁺ island) and,
at the end, the Na⁺ ion map and depth profiles.

The voltage limit here is the demo's own check in Python; in ``opsimsd`` the native
interlock enforces it.
"""

from __future__ import annotations

import json
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from opsims._native import EventCore
from opsims.link.potentiostat import ControlMode, EisRequest, EventCode, PotentiostatClient
from opsims.sim.config import SimConfig

PLATE_A = -40e-9  # 0.04 µA on the 1 µm² probe (EC-Lab sign: < 0 plates)
LIMIT_V = 10.0
EIS = EisRequest(7e6, 100.0, 5, 0.3)
MAP_CHARS = " .:-=+*#%@"


class Demo:
    def __init__(self, config: Path, acceleration: float) -> None:
        self.acceleration = acceleration
        self.overrides = [
            f"sim.acceleration={acceleration}",
            "sim.potentiostat.sample_period_s=1.0",
            "sim.specimen.total_rate_hz=2e5",
        ]
        sim = SimConfig.load(config, self.overrides)
        self.nm_per_frame = sim.sims.sputter_rate_nm_per_frame
        self.core: EventCore = sim.detector.build()
        self.config = config
        self.last_sample: tuple[float, float, int] = (0.0, 0.0, 0)
        self.charge_c = 0.0
        self._stop = threading.Event()
        # EventCore is not shared between threads while it works (feed_link holds it
        # mutably with the GIL released), so readers take turns with the receiver.
        self._core_lock = threading.Lock()

    def run(self, plate_minutes: float) -> int:
        cmd = [sys.executable, "-m", "opsims.sim.cli", "--config", str(self.config), "--any-port"]
        for item in self.overrides:
            cmd += ["--set", item]
        sim = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
        try:
            ports = _ports(sim)
            with (
                socket.create_connection(("127.0.0.1", ports["detector"])) as det,
                PotentiostatClient("127.0.0.1", ports["potentiostat"]) as pot,
            ):
                rx = threading.Thread(target=self._receive, args=(det,), daemon=True)
                rx.start()
                try:
                    self._protocol(pot, plate_minutes)
                finally:
                    self._stop.set()
                    rx.join()
        finally:
            sim.send_signal(signal.SIGTERM)
            sim.wait(timeout=10)
            if sim.stdout is not None:
                sim.stdout.close()
        return self._summary()

    # --- the experiment ---------------------------------------------------------------

    def _protocol(self, pot: PotentiostatClient, plate_minutes: float) -> None:
        print(f"opsims demo: simulator at {self.acceleration:g}x real time; Ctrl-C stops\n")
        self._step(pot, "rest", 30.0)
        self._sweep(pot, "impedance before plating")
        assert pot.set_current(PLATE_A).ok
        self._step(pot, "plating", plate_minutes * 60.0)
        assert pot.set_current(-PLATE_A).ok
        self._step(pot, "stripping", 120.0, until_limit=True)
        assert pot.open_circuit().ok
        self._step(pot, "rest", 10.0)
        self._sweep(pot, "impedance after cycling")

    def _step(
        self, pot: PotentiostatClient, label: str, sim_s: float, *, until_limit: bool = False
    ) -> None:
        end = time.monotonic() + sim_s / self.acceleration
        next_line = 0.0
        while time.monotonic() < end:
            pot.poll(0.1)
            assert pot.heartbeat().ok  # the potentiostat's watchdog wants to hear from us
            samples = pot.take_samples()
            if len(samples):
                h = pot.hello
                self._account(samples, h.sample_period_ticks * h.tick_fs * 1e-15)
            if until_limit and abs(self.last_sample[0]) > LIMIT_V * 0.95:
                assert pot.open_circuit().ok
                self._line(label)
                print(f"\n  |Ewe| reached {self.last_sample[0]:.2f} V: the island is depleted;"
                      " circuit opened. (This demo looks every 0.1 s of wall time; opsimsd's"
                      " native interlock acts on every sample.)")  # fmt: skip
                return
            if time.monotonic() >= next_line:
                self._line(label)
                next_line = time.monotonic() + 1.0
        print()

    def _sweep(self, pot: PotentiostatClient, label: str) -> None:
        pot.eis_points.clear()
        assert pot.start_eis(EIS).ok
        deadline = time.monotonic() + 60.0
        while not any(e.code == EventCode.EIS_DONE for e in pot.events):
            if time.monotonic() > deadline:
                print(f"  {label}: no answer from the potentiostat")
                return
            pot.poll(0.1)
            assert pot.heartbeat().ok
        pot.events.clear()
        pot.take_samples()
        z = np.array([p.z_re_ohm + 1j * p.z_im_ohm for p in pot.eis_points])
        f = np.array([p.freq_hz for p in pot.eis_points])
        apex = int(np.argmax(-z.imag))
        print(f"  {label}: {len(z)} points, 7 MHz..100 Hz; Re Z(100 Hz) = {z[-1].real / 1e3:.1f}"
              f" kΩ, -Im Z peaks at {f[apex] / 1e3:.1f} kHz")  # fmt: skip

    def _account(self, samples: npt.NDArray[np.void], period_s: float) -> None:
        galv = samples["mode"] == ControlMode.GALVANOSTATIC
        self.charge_c += float(np.sum(samples["current_a"][galv])) * period_s
        last = samples[-1]
        self.last_sample = (float(last["ewe_v"]), float(last["current_a"]), int(last["mode"]))

    def _line(self, label: str) -> None:
        ewe, current, _ = self.last_sample
        with self._core_lock:
            c = self.core.counters()
            na = _island_contrast(self.core)
        frames = c["frame_markers"]
        depth_nm = frames * self.nm_per_frame
        print(f"\r  {label:<10} Ewe {ewe * 1e3:9.1f} mV  I {current * 1e9:6.1f} nA"
              f"  Q {self.charge_c * 1e6:8.2f} µC | frame {frames:6d}  depth {depth_nm:6.0f} nm"
              f"  events {c['events'] / 1e6:7.2f} M  Na+ island/matrix {na:4.1f}",
              end="", flush=True)  # fmt: skip

    def _receive(self, sock: socket.socket) -> None:
        sock.settimeout(0.1)
        while not self._stop.is_set():
            try:
                data = sock.recv(1 << 20)
            except TimeoutError:
                continue
            if not data:
                return
            arrival_ns = time.time_ns()
            with self._core_lock:
                self.core.feed_link(data, arrival_ns)

    # --- the result -------------------------------------------------------------------

    def _summary(self) -> int:
        core = self.core
        core.finish()
        c = core.counters()
        print(
            f"\n  detector: {c['events']:,} events, {c['binned']:,} binned into "
            f"{core.n_slices} slices of {core.frames_per_slice} frames; rejected "
            f"{c['rejected_total']:,} (settle, flyback, blanking: counted, not lost)"
        )
        print("\n  Na+ ion map, all depths (the island under the probe):")
        for row in _ascii_map(core.ion_map("Na+").astype(np.float64)):
            print("    " + row)
        profile = core.depth_profile().astype(np.float64)
        print("\n  depth profile (counts per slice, every 10th slice):")
        names = core.species
        print("    slice " + " ".join(f"{n:>7}" for n in names))
        for z in range(0, profile.shape[0], 10):
            print(f"    {z:5d} " + " ".join(f"{v:7.0f}" for v in profile[z]))
        balanced = c["events"] == c["binned"] + c["rejected_total"] + c["pending"]
        if not balanced:
            print("  counters do not balance: this is a bug", file=sys.stderr)
        return 0 if balanced else 1


def _island_contrast(core: EventCore) -> float:
    if core.n_slices == 0:
        return 0.0
    m = core.ion_map("Na+", max(0, core.n_slices - 3)).astype(np.float64)
    ny, nx = m.shape
    centre = m[ny // 2 - ny // 16 : ny // 2 + ny // 16, nx // 2 - nx // 16 : nx // 2 + nx // 16]
    edge = m[: ny // 8].mean()
    return float(centre.mean() / edge) if edge > 0 else 0.0


def _ascii_map(m: npt.NDArray[np.float64], width: int = 48) -> list[str]:
    ny, nx = m.shape
    step = max(1, nx // width)
    coarse = m[: ny - ny % (2 * step), : nx - nx % step]
    coarse = coarse.reshape(ny // (2 * step), 2 * step, nx // step, step).sum(axis=(1, 3))
    top = coarse.max()
    levels = (coarse / top * (len(MAP_CHARS) - 1)).astype(int) if top > 0 else coarse.astype(int)
    return ["".join(MAP_CHARS[v] for v in row) for row in levels]


def _ports(sim: subprocess.Popen[str]) -> dict[str, Any]:
    assert sim.stdout is not None
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        ready, _, _ = select.select([sim.stdout], [], [], 0.2)
        if ready:
            msg = json.loads(sim.stdout.readline())
            if msg.get("event") == "listening":
                return dict(msg)
        if sim.poll() is not None:
            raise RuntimeError(f"the simulator exited with {sim.returncode}")
    raise TimeoutError("the simulator did not start")


def main(config: Path, acceleration: float, plate_minutes: float) -> int:
    try:
        return Demo(config, acceleration).run(plate_minutes)
    except KeyboardInterrupt:
        print("\nopsims demo: stopped")
        return 130
