"""The interlock's native step stop: a strip into depletion against the real simulator at
600x is ended by the stop armed at 5 V, from the potentiostat thread, at the first sample
that reaches it: the circuit opens before the spike gets near the 10 V safety limit, the
stop is reported as a ``step_stop`` event, and the interlock stays armed, untouched.

The simulator sends samples every 20 ms of wall time, which is 12 simulated seconds at
600x; with the cell's default spike (a 1 s rise) the samples beyond 10 V can exist before
any host has seen the 5 V one, and the interlock rightly trips on them. The test slows the
spike's rise to 300 simulated seconds (0.5 s of wall time at 600x), so what it measures is
how fast the stop reacts, not how the simulator batches."""

from __future__ import annotations

import math
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from opsims import Acquisition, ConfigError
from support.simproc import merge, run_sim, small_raster

ACCELERATION = 600.0
SIM = merge(
    small_raster(nx=16, ny=8),
    {"sim": {"acceleration": ACCELERATION, "potentiostat": {"sample_period_s": 0.1},
             "specimen": {"total_rate_hz": 1000.0}, "cell": {"spike_rise_s": 300.0}}},
)  # fmt: skip
PLATE_A, PLATE_S = -4e-8, 120.0  # simulated seconds
STRIP_A = 4e-8
STOP_V = 5.0
COUNTER = 1 << 32  # the simulated potentiostat's counter width


class Pump:
    """Samples and events of an acquisition, gathered while the test waits."""

    def __init__(self, acq: Acquisition) -> None:
        self.acq = acq
        self.events: list[dict[str, Any]] = []
        self.batches: list[dict[str, npt.NDArray[Any]]] = []

    def run(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            self.acq.wait(min(left, 0.02))
            self.acq.kick()
            batch = self.acq.take_samples()
            if batch["tick"].size:
                self.batches.append(batch)
            self.events += self.acq.take_events()

    def until(self, want: Callable[[dict[str, Any]], bool], timeout_s: float) -> dict[str, Any]:
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            self.run(0.02)
            for e in self.events:
                if want(e):
                    return e
        raise AssertionError(f"no such event; got {self.events}")

    def samples(self) -> dict[str, npt.NDArray[Any]]:
        names = ("host_ns", "tick", "ewe_v", "current_a", "mode")
        return {n: np.concatenate([b[n] for b in self.batches]) for n in names}


def test_a_strip_into_depletion_is_ended_by_the_native_step_stop(tmp_path: Path) -> None:
    with run_sim(tmp_path, SIM) as sim:
        acq = Acquisition(potentiostat={"host": "127.0.0.1", "port": sim.ports["potentiostat"]},
                          interlock={}, clock_time_scale=ACCELERATION)  # fmt: skip
        try:
            pump = Pump(acq)
            pump.until(lambda e: e["kind"] == "link" and e["state"] == "up", 10.0)
            acq.set_current(PLATE_A)
            pump.run(PLATE_S / ACCELERATION)
            # Armed while plating (|Ewe| far below 5 V), then the strip.
            acq.arm_step_stop(STOP_V)
            acq.set_current(STRIP_A)
            stop = pump.until(lambda e: e["kind"] == "step_stop", 20.0)
            pump.run(0.3)  # the open circuit shows in the samples
            st = acq.interlock_state()
            counters = acq.counters()
            disarmed = acq.disarm_step_stop()
            truth = sim.truth()
            t = sim.truth_samples()
        finally:
            acq.stop(open_circuit=False)
    assert set(stop) == {"kind", "host_ns", "tick", "ewe_v", "limit_v"}
    assert stop["limit_v"] == STOP_V and abs(stop["ewe_v"]) >= STOP_V
    # The interlock is armed and untouched: no trip, the stop fired once and is disarmed.
    assert not [e for e in pump.events if e["kind"] == "safety"], pump.events
    assert [e["kind"] for e in pump.events].count("step_stop") == 1
    assert st is not None
    assert (st["state"], st["trips"], st["changes"]) == ("armed", 0, 0)
    assert st["step_stop_v"] is None and st["step_stops"] == 1
    assert not disarmed
    assert counters["open_circuit_now"] == 1
    # The event carries the queued sample that stopped the step...
    got = pump.samples()
    (i,) = np.flatnonzero(got["tick"] == stop["tick"])
    assert got["ewe_v"][i] == stop["ewe_v"] and got["host_ns"][i] == stop["host_ns"]
    assert got["mode"][i] == 1 and got["current_a"][i] > 0
    # ...which is the first sample of the strip the instrument made at or beyond 5 V.
    strip = t["current_a"] > 0
    first = int(np.argmax(strip & (np.abs(t["ewe_v"]) >= STOP_V)))
    assert int(t["tick"][first]) % COUNTER == stop["tick"] % COUNTER
    assert t["ewe_v"][first] == stop["ewe_v"]
    # The circuit opened by the stop's own command (the last one but heartbeats), and from
    # then on the cell is at open circuit, far from the 10 V of the safety limit.
    commands = [c["kind"] for c in truth["potentiostat"]["commands"] if c["kind"] != "HEARTBEAT"]
    assert commands == ["SET_CURRENT", "SET_CURRENT", "OPEN_CIRCUIT"]
    later = np.arange(t["tick"].size) > first
    opened = int(np.argmax(later & (t["mode"] == 0)))
    assert opened > first and np.all(t["current_a"][opened:] == 0)
    assert np.all(t["mode"][opened:] == 0)
    assert t["ewe_v"][: opened + 1].max() < 10.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def test_arming_checks_the_limit_and_disarming_says_whether_one_was_armed() -> None:
    # Nobody listens on the port: arming needs no link.
    acq = Acquisition(potentiostat={"host": "127.0.0.1", "port": free_port()}, interlock={})
    try:
        for bad in (0.0, -5.0, math.nan, math.inf):
            with pytest.raises(ConfigError, match=r"interlock\.step_stop\.limit_v"):
                acq.arm_step_stop(bad)
        st = acq.interlock_state()
        assert st is not None and st["step_stop_v"] is None
        assert acq.disarm_step_stop() is False
        acq.arm_step_stop(5.0)
        acq.arm_step_stop(13.0)  # replaces the one armed
        assert acq.interlock_state()["step_stop_v"] == 13.0  # type: ignore[index]
        assert acq.disarm_step_stop() is True
        assert acq.disarm_step_stop() is False
    finally:
        acq.stop(open_circuit=False)
    plain = Acquisition(potentiostat={"host": "127.0.0.1", "port": free_port()})
    try:
        with pytest.raises(RuntimeError, match="no interlock"):
            plain.arm_step_stop(5.0)
        with pytest.raises(RuntimeError, match="no interlock"):
            plain.disarm_step_stop()
    finally:
        plain.stop(open_circuit=False)
