"""The native acquisition threads against a real `opsims-sim` process on loopback: samples
unwrapped and on the host timebase, commands and impedance sweeps, cubes equal to the
simulator's truth, reconnects on both links, the heartbeat and the instrument's
watchdog, open circuit on stop, the clock under acceleration, reads from other threads."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from opsims import Acquisition, CommandRefused, ConfigError, DetectorConfig
from opsims.link.potentiostat import ControlMode, EventCode, Kind, ReplyCode
from support.simproc import SimProcess, default_document, merge, run_sim, small_raster

# 19 bits of 1 µs: a wrap every 0.52 s, so a run of a few seconds crosses several, and a
# reconnect (anchored on the clock model) stays well inside half a wrap even under load.
WRAP = 1 << 19
POT_WRAPPING = {"counter_bits": 19, "start_tick": WRAP - 40_000, "drift_ppm": 35.0}
SETTLE_PER_FRAME = 16_000_000  # 16 µs of 1 ps ticks


def detector_override() -> dict[str, Any]:
    polarities = default_document()["detector"]["raster"]["polarities"]
    return merge(
        small_raster(polarities=[{**p, "settle_ticks": SETTLE_PER_FRAME} for p in polarities]),
        {"sim": {"detector": {"dead_time_ns": 40.0, "dark_rate_hz": 2e4}}},
    )


def detector_args(sim: SimProcess, override: dict[str, Any]) -> dict[str, Any]:
    """The `detector` dict of an Acquisition: the EventCore arguments of the test's
    configuration, and the simulator's port."""
    cfg = DetectorConfig.from_mapping(merge(default_document(), override)["detector"])
    return {"host": "127.0.0.1", "port": sim.ports["detector"], **cfg.engine_args()}


def pot_args(sim: SimProcess) -> dict[str, Any]:
    return {"host": "127.0.0.1", "port": sim.ports["potentiostat"]}


class Drain:
    """Everything an acquisition delivers, gathered while a test waits."""

    def __init__(self, acq: Acquisition) -> None:
        self.acq = acq
        self.events: list[dict[str, Any]] = []
        self.batches: list[dict[str, npt.NDArray[Any]]] = []
        self.taken_ns: list[int] = []

    def pump(self, seconds: float, *, kick: bool = True) -> None:
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            self.acq.wait(min(left, 0.05))
            if kick:
                self.acq.kick()
            self.take()

    def take(self) -> None:
        batch = self.acq.take_samples()
        if batch["tick"].size:
            self.batches.append(batch)
            self.taken_ns.append(time.time_ns())
        self.events += self.acq.take_events()

    def until(
        self, want: Callable[[dict[str, Any]], bool], timeout_s: float = 10.0, *, kick: bool = True
    ) -> dict[str, Any]:
        """Pump until an event matching `want` arrives after the call; returns it."""
        start = len(self.events)
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            self.pump(0.02, kick=kick)
            for e in self.events[start:]:
                if want(e):
                    return e
        raise AssertionError(f"no such event; got {self.events[start:]}")

    def samples(self) -> dict[str, npt.NDArray[Any]]:
        names = ("host_ns", "tick", "ewe_v", "current_a", "mode", "flags")
        return {n: np.concatenate([b[n] for b in self.batches]) for n in names}


def link(name: str, state: str) -> Callable[[dict[str, Any]], bool]:
    return lambda e: e["kind"] == "link" and e["link"] == name and e["state"] == state


def instrument(code: EventCode) -> Callable[[dict[str, Any]], bool]:
    return lambda e: e["kind"] == "instrument_event" and e["code"] == code


def test_samples_are_unwrapped_on_time_and_survive_a_reconnect(tmp_path: Path) -> None:
    with run_sim(tmp_path, merge(small_raster(), {"sim": {"potentiostat": POT_WRAPPING}})) as sim:
        acq = Acquisition(potentiostat=pot_args(sim), reconnect_initial_s=0.05)
        d = Drain(acq)
        d.until(link("potentiostat", "up"))
        assert acq.hello() == {
            "protocol": 1,
            "counter_bits": 19,
            "tick_fs": 10**9,
            "sample_period_ticks": 10_000,
            "compliance_a": pytest.approx(10e-6),
            "name": "opsims-sim potentiostat",
        }
        d.take()  # what arrived while the test waited for the hello: not the link's latency
        first = len(d.batches)
        d.pump(1.5)
        before = len(d.batches)
        # Each batch is stamped close to when it arrived: never after, at most one send
        # interval (20 ms) and a sample period before, plus scheduling.
        for batch, taken in zip(d.batches[first:], d.taken_ns[first:], strict=True):
            age_ms = (taken - batch["host_ns"]) / 1e6
            assert age_ms.min() > -2 and age_ms.max() < 100, age_ms
        sim.fault("potentiostat", "disconnect", 1)
        down = d.until(link("potentiostat", "down"))
        assert "closed" in down["reason"]
        d.until(link("potentiostat", "up"))
        d.pump(1.0)
        assert len(d.batches) > before + 10, "samples resumed"
        truth = sim.truth()
        t = sim.truth_samples()
        acq.stop()
    got = d.samples()
    n = got["tick"].size
    assert 180 <= n <= 320, n
    # Unwrapped: one sample period of a 35 ppm fast clock apart, through ~5 wraps, except
    # across the reconnect, where the counter ran on unseen for several wraps.
    steps = np.diff(got["tick"].astype(np.int64))
    assert int(got["tick"][-1] - got["tick"][0]) > 4 * WRAP
    assert np.count_nonzero(steps > 10_001) == 1
    assert np.all(steps[steps <= 10_001] >= 10_000)
    # The same ticks as the instrument's, up to whole wraps of the first one, also after
    # the reconnect (anchored on the clock model, not on the last tick seen).
    sent = t["sent"]
    offset = int(got["tick"][0]) - int(t["tick"][sent][0])
    assert offset % WRAP == 0
    true_ticks = t["tick"].astype(np.int64)
    want = got["tick"].astype(np.int64) - offset
    index = np.searchsorted(true_ticks, want)
    assert np.array_equal(true_ticks[index], want)
    np.testing.assert_array_equal(t["ewe_v"][index], got["ewe_v"])
    # On the host timebase: within a few ms of when the simulator made each sample.
    true_ns = truth["timebase"]["start_host_ns"] + t["true_s"][index] * 1e9
    error_ms = (got["host_ns"] - true_ns) / 1e6
    assert np.all(np.abs(error_ms) < 60), error_ms
    assert np.median(np.abs(error_ms[-50:])) < 10, error_ms[-50:]
    assert acq.counters()["samples_dropped"] == 0


def test_commands_impedance_sweep_and_stop_opens_the_circuit(tmp_path: Path) -> None:
    with run_sim(tmp_path, small_raster()) as sim:
        acq = Acquisition(potentiostat=pot_args(sim))
        d = Drain(acq)
        d.until(link("potentiostat", "up"))
        acq.set_current(-40e-9)
        d.pump(0.3)
        status = acq.read_status()
        assert status["mode"] == ControlMode.GALVANOSTATIC
        assert status["setpoint_a"] == -40e-9
        s = d.samples()
        galv = s["mode"] == ControlMode.GALVANOSTATIC
        assert galv.sum() > 5
        np.testing.assert_allclose(s["current_a"][galv], -40e-9, rtol=0.05)
        # Refusals carry the instrument's code; the link goes on.
        with pytest.raises(CommandRefused) as refused:
            acq.set_current(1.0)
        assert refused.value.args[1] == ReplyCode.OUT_OF_RANGE
        with pytest.raises(CommandRefused):
            acq.start_eis(1e6, 1e3, 2, 0.3)  # busy: not at open circuit
        acq.open_circuit()
        # A sweep from open circuit: 7 points (2 per decade), then eis_done.
        acq.start_eis(1e6, 1e3, 2, 0.3)
        with pytest.raises(CommandRefused) as refused:
            acq.set_current(-40e-9)
        assert refused.value.args[1] == ReplyCode.BUSY
        done = d.until(instrument(EventCode.EIS_DONE))
        assert done["name"] == "eis_done"
        points = [e for e in d.events if e["kind"] == "eis_point"]
        assert [p["index"] for p in points] == list(range(7))
        assert points[0]["freq_hz"] == pytest.approx(1e6)
        assert points[-1]["freq_hz"] == pytest.approx(1e3)
        assert all(p["z_re_ohm"] > 0 and p["host_ns"] <= done["host_ns"] for p in points)
        # The generic call returns whatever the instrument says.
        code, message, body = acq.command(Kind.READ_STATUS)
        assert (code, len(body)) == (ReplyCode.OK, 40)
        code, message, _ = acq.command(0x55)
        assert code == ReplyCode.UNKNOWN_COMMAND and "0x55" in message
        code, _, _ = acq.command(Kind.SET_CURRENT, b"\x00" * 3)
        assert code == ReplyCode.BAD_PAYLOAD
        # Stop: current flows, then OPEN_CIRCUIT is the last command the instrument saw.
        acq.set_current(-40e-9)
        assert acq.stop() is True
        assert acq.stopped and acq.link_states() == {"potentiostat": "down"}
        with pytest.raises(ConnectionError):
            acq.read_status()
        commands = [c["kind"] for c in sim.truth()["potentiostat"]["commands"]]
        assert commands[-2:] == ["SET_CURRENT", "OPEN_CIRCUIT"]
        assert sim.control("status")["cell"]["current_a"] == 0.0


def test_detector_cubes_equal_the_truth(tmp_path: Path) -> None:
    ov = detector_override()
    with run_sim(tmp_path, ov) as sim:
        acq = Acquisition(detector=detector_args(sim, ov))
        assert acq.species == ["Na+", "Si+", "Zr+", "ZrO+", "O-", "P-", "SiO2-", "PO2-", "ZrO2-"]
        d = Drain(acq)
        d.until(link("detector", "up"))
        d.pump(1.5)
        assert acq.take_dirty() is not None
        sim.control("stop")
        d.until(link("detector", "down"))  # everything sent before the stop is in
        assert acq.stop()
        assert sim.stop() == 0
        truth, cubes = sim.truth()["detector"], sim.truth_cubes()
    got = acq.counters()
    t = truth["counters"]
    assert got["events"] == t["events"] > 50_000
    assert got["link_frames_lost"] == got["link_frames_corrupt"] == got["malformed"] == 0
    assert got["detector_connects"] == 1 and got["detector_bytes"] > 0
    complete = acq.n_slices - 1  # the last frame may have been cut by the stop
    assert complete > 20
    for name in acq.species:
        np.testing.assert_array_equal(
            acq.cube(name, 0, complete), cubes[name][:complete], err_msg=name
        )
    profile = acq.depth_profile()
    assert profile.shape == (acq.n_slices, len(acq.species))
    assert int(profile[:complete].sum()) == sum(int(cubes[n][:complete].sum()) for n in acq.species)
    np.testing.assert_array_equal(
        acq.ion_map("Na+", 0, complete), cubes["Na+"][:complete].sum(axis=0)
    )
    assert acq.shape == (16, 32) and acq.frames_per_slice == 1
    assert acq.clock_states()["detector"]["points"] > 0


def test_both_links_reconnect_while_another_thread_reads(tmp_path: Path) -> None:
    ov = detector_override()
    with run_sim(tmp_path, ov) as sim:
        acq = Acquisition(
            detector=detector_args(sim, ov), potentiostat=pot_args(sim), reconnect_initial_s=0.05
        )
        d = Drain(acq)
        both_up = {"detector": "up", "potentiostat": "up"}
        deadline = time.monotonic() + 10
        while acq.link_states() != both_up and time.monotonic() < deadline:
            d.pump(0.05)
        assert acq.link_states() == both_up
        errors: list[BaseException] = []
        stop = threading.Event()
        reads = [0]

        def reader() -> None:
            # EventCore would raise "Already mutably borrowed" here; Acquisition is shared.
            try:
                while not stop.is_set():
                    acq.cube("Na+")
                    acq.depth_profile()
                    acq.ion_map(0)
                    acq.counters()
                    acq.clock_states()
                    acq.link_states()
                    acq.take_dirty()
                    with contextlib.suppress(ConnectionError):  # down for a moment below
                        acq.read_status(timeout_s=1.0)
                    reads[0] += 1
            except BaseException as e:
                errors.append(e)

        threads = [threading.Thread(target=reader) for _ in range(2)]
        for th in threads:
            th.start()
        try:
            d.pump(0.3)
            det_bytes = acq.counters()["detector_bytes"]
            sim.fault("detector", "disconnect", 1)
            d.until(link("detector", "down"))
            d.until(link("detector", "up"))
            sim.fault("potentiostat", "disconnect", 1)
            d.until(link("potentiostat", "down"))
            d.until(link("potentiostat", "up"))
            n_before = sum(b["tick"].size for b in d.batches)
            d.pump(0.5)
        finally:
            stop.set()
            for th in threads:
                th.join()
        assert not errors, errors
        assert reads[0] > 10
        c = acq.counters()
        assert c["detector_bytes"] > det_bytes and c["detector_connects"] == 2
        assert c["potentiostat_connects"] == 2 and c["potentiostat_disconnects"] == 1
        assert sum(b["tick"].size for b in d.batches) > n_before + 20  # samples resumed
        # The frames made while the detector was away are one counted loss interval.
        assert c["link_loss_intervals"] >= 1 and c["link_frames_lost"] > 0
        assert c["events"] == c["binned"] + c["rejected_total"] + c["pending"]
        acq.stop()


def test_heartbeats_hold_the_watchdog_only_while_kicked(tmp_path: Path) -> None:
    override = merge(small_raster(), {"sim": {"potentiostat": {"watchdog_s": 0.6}}})
    with run_sim(tmp_path, override) as sim:
        acq = Acquisition(potentiostat=pot_args(sim), heartbeat_s=0.1, liveness_s=0.3)
        d = Drain(acq)
        d.until(link("potentiostat", "up"))
        acq.set_current(-40e-9)
        d.pump(2.0, kick=True)  # more than three watchdog periods with no command but ours
        assert sim.control("status")["potentiostat"]["watchdog_trips"] == 0
        assert acq.counters()["heartbeats_sent"] >= 15
        assert acq.read_status()["mode"] == ControlMode.GALVANOSTATIC
        # The owner hangs: heartbeats stop after liveness_s, the instrument opens the
        # circuit by itself after its watchdog time and says so.
        hung = time.monotonic()
        event = d.until(instrument(EventCode.WATCHDOG_OPEN_CIRCUIT), kick=False)
        assert 0.3 + 0.6 - 0.15 < time.monotonic() - hung < 3.0
        assert event["name"] == "watchdog_open_circuit"
        d.pump(0.2, kick=False)
        assert acq.counters()["heartbeats_withheld"] > 0
        s = d.samples()
        flagged = np.flatnonzero(s["flags"] & 1)
        assert flagged.size == 1
        assert np.all(s["mode"][flagged[0] :] == ControlMode.OPEN_CIRCUIT)
        assert sim.control("status")["potentiostat"]["watchdog_trips"] == 1
        truth = sim.truth()["potentiostat"]
        assert truth["watchdog_trips"] == 1
        acq.stop()


def test_clock_time_scale_recovers_the_drift_of_an_accelerated_instrument(tmp_path: Path) -> None:
    ppm, acceleration = 400.0, 20.0
    override = merge(
        small_raster(),
        {"sim": {"acceleration": acceleration, "potentiostat": {"drift_ppm": ppm}}},
    )
    with run_sim(tmp_path, override) as sim:
        acq = Acquisition(potentiostat=pot_args(sim), clock_time_scale=acceleration)
        d = Drain(acq)
        d.pump(6.0)
        state = acq.clock_states()["potentiostat"]
        acq.stop()
    # A device running `ppm` fast fits as host-per-device 1/(1 + ppm): about -ppm.
    assert state["fitted"] and state["jumps"] == 0
    assert state["drift_ppm"] == pytest.approx(-ppm, abs=100.0)
    s = d.samples()
    steps = np.diff(s["tick"].astype(np.int64))
    assert np.all(np.abs(steps - 10_004) <= 1)  # 10 ms of a 400 ppm fast 1 µs clock
    # Once fitted, samples 10 simulated ms apart are stamped 0.5 host ms apart.
    late = np.diff(s["host_ns"][-200:]) / 1e6
    assert np.median(late) == pytest.approx(0.5, abs=0.01)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"potentiostat": {"host": "127.0.0.1", "port": 70000}}, "potentiostat.port"),
        ({"potentiostat": {"host": "127.0.0.1"}}, "potentiostat.port: missing"),
        ({"potentiostat": {"host": "h", "port": 1, "bogus": 1}}, "potentiostat.bogus: unknown"),
        ({"potentiostat": {"host": "h", "port": 1, "clock_window_s": 0}}, "clock_window_s"),
        ({"potentiostat": [1]}, "potentiostat: expected a dict"),
        ({"detector": {"host": "h", "port": 1}}, "detector.record_type: missing"),
        ({"clock_time_scale": 0.0}, "clock_time_scale"),
        ({"reconnect_initial_s": 1.0, "reconnect_max_s": 0.5}, "reconnect_max_s"),
        ({"sample_queue": 0}, "sample_queue"),
    ],
)
def test_bad_configuration_names_the_key(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Acquisition(**kwargs)


def test_bad_detector_values_name_the_key() -> None:
    args = {
        "host": "127.0.0.1",
        "port": free_port(),
        "record_type": 0x01010204,
        "tick_s": 1e-12,
        "nx": 8,
        "ny": 8,
        "dwell_ticks": 1000,
        "polarities": [("positive", [0], ["Na+"], "per_frame", 0)],
    }
    with pytest.raises(ConfigError, match=r"detector\.nx"):
        Acquisition(detector={**args, "nx": "eight"})
    with pytest.raises(ConfigError, match="switching"):
        Acquisition(detector={**args, "polarities": [("positive", [0], ["Na+"], "sideways", 0)]})
    with pytest.raises(ConfigError, match=r"detector\.clock_time_scale: unknown"):
        Acquisition(detector={**args, "clock_time_scale": 2.0})
    acq = Acquisition(detector=args)  # valid, but nobody listens: retried, not raised
    assert acq.species == ["Na+"] and acq.n_slices == 0
    with pytest.raises(RuntimeError, match="no potentiostat"):
        acq.read_status()
    acq.stop()


def test_a_command_on_a_link_that_is_down_fails_at_once() -> None:
    acq = Acquisition(potentiostat={"host": "127.0.0.1", "port": free_port()})
    t0 = time.monotonic()
    with pytest.raises(ConnectionError):
        acq.set_current(-40e-9, timeout_s=5.0)
    assert time.monotonic() - t0 < 0.5
    assert acq.hello() is None
    down = Drain(acq).until(link("potentiostat", "down"))
    assert "cannot connect" in down["reason"]
    assert acq.counters()["potentiostat_connect_failures"] >= 1
    with pytest.raises(RuntimeError, match="no detector"):
        acq.cube(0)
    assert acq.stop() is False  # nobody could confirm open circuit
    assert acq.stop() is True
