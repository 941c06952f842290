"""The simulated detector front-end through a real `opsims-sim` process and the real
core: what the core bins from the live link must be what the simulator truly emitted,
voxel by voxel, with every loss and rejection accounted for."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from opsims import DetectorConfig, EventCore
from support.simproc import SimProcess, default_document, merge, run_sim, small_raster

# Magnet settle times in 1 ps ticks: 16 µs per frame, or 0.1 µs of each 2 µs pixel's split.
SETTLE = {"per_frame": 16_000_000, "per_pixel": 100_000}


def override(switching: str = "per_frame", **sim: Any) -> dict[str, Any]:
    polarities = default_document()["detector"]["raster"]["polarities"]
    return merge(
        small_raster(
            polarities=[
                {**p, "switching": switching, "settle_ticks": SETTLE[switching]} for p in polarities
            ],
        ),
        {"sim": merge({"detector": {"dead_time_ns": 40.0, "dark_rate_hz": 2e4}}, sim)},
    )


def core_for(doc_override: dict[str, Any]) -> EventCore:
    doc = merge(default_document(), doc_override)
    return DetectorConfig.from_mapping(doc["detector"]).build()


class Receiver:
    """The host end of the detector link: a socket read into the core."""

    def __init__(self, sim: SimProcess, core: EventCore) -> None:
        self.core = core
        self.sock = socket.create_connection(("127.0.0.1", sim.ports["detector"]), 5)
        self.bytes = 0

    def read_for(self, seconds: float, until: Callable[[], bool] | None = None) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and not (until and until()):
            self.sock.settimeout(max(1e-3, deadline - time.monotonic()))
            try:
                data = self.sock.recv(1 << 20)
            except TimeoutError:
                continue
            if not data:
                return
            self.bytes += len(data)
            self.core.feed_link(data, time.time_ns())

    def read_to_end(self) -> None:
        self.read_for(15.0)

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Receiver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@pytest.mark.parametrize("switching", ["per_frame", "per_pixel"])
def test_live_cubes_equal_the_true_voxels(tmp_path: Path, switching: str) -> None:
    ov = override(switching)
    core = core_for(ov)
    with run_sim(tmp_path, ov) as sim, Receiver(sim, core) as rx:
        rx.read_for(1.5)
        sim.control("stop")
        rx.read_to_end()  # everything sent before the stop, up to the closed connection
        assert sim.stop() == 0
        truth, cubes = sim.truth()["detector"], sim.truth_cubes()
    got = core.counters()
    core.finish()
    t = truth["counters"]
    assert got["events"] == t["events"] > 50_000
    assert got["link_frames_lost"] == got["link_frames_corrupt"] == got["malformed"] == 0
    complete = core.n_slices - 1  # the last frame may have been cut by the stop
    assert complete > 20
    for name in core.species:
        np.testing.assert_array_equal(
            core.cube(name, 0, complete), cubes[name][:complete], err_msg=name
        )
    assert sum(int(cubes[n][:complete].sum()) for n in core.species) > 20_000
    final = core.counters()
    for reason in ("line_settle", "flyback", "mass_settle"):
        assert t[reason] > 0, reason
        assert 0 <= t[reason] - final[reason] <= final["bad_line"], reason
    assert final["events"] == final["binned"] + final["rejected_total"]


def test_drift_and_offset_are_recovered_from_the_link(tmp_path: Path) -> None:
    ppm = 400.0
    ov = override(detector={"drift_ppm": ppm})
    core = core_for(ov)
    with run_sim(tmp_path, ov) as sim, Receiver(sim, core) as rx:
        rx.read_for(6.0)
        truth = sim.truth()
    state = core.clock_state()
    # A device running `ppm` fast gives host-per-device = 1/(1 + ppm): about -ppm.
    # Frames leave up to a generation pass late; on a loaded machine the least-delayed ones
    # of a 6 s run scatter by ~0.5 ms, i.e. up to ~80 ppm of slope.
    assert state["drift_ppm"] == pytest.approx(-ppm, abs=100.0)
    clock, tb = truth["detector"]["clock"], truth["timebase"]
    rate = (1 + clock["drift_ppm"] * 1e-6) / clock["tick_s"]
    _, _, last_tick = core_position(truth)
    ticks = np.array([last_tick - 1_000_000, last_tick], dtype=np.uint64)
    true_host = tb["start_host_ns"] + (ticks.astype(np.float64) - clock["start_tick"]) / rate * 1e9
    error_ns = core.to_host_ns(ticks) - true_host
    # Loopback delay is one-sided and small: the model sits within a few ms of the truth.
    assert np.all(np.abs(error_ns) < 5e6), error_ns


def core_position(truth: dict[str, Any]) -> tuple[int, int, int]:
    frame, line, tick = truth["detector"]["position"]
    return int(frame), int(line), int(tick)


def test_link_faults_reach_the_core_as_counted_losses(tmp_path: Path) -> None:
    ov = override()
    core = core_for(ov)
    with run_sim(tmp_path, ov) as sim:
        rx = Receiver(sim, core)
        rx.read_for(0.3)
        sim.fault("detector", "drop_frames", 3)
        rx.read_for(0.3)
        c = core.counters()
        assert (c["link_frames_lost"], c["link_loss_intervals"]) == (3, 1)
        sim.fault("detector", "corrupt_frames", 2)
        rx.read_for(0.3)
        c = core.counters()
        assert c["link_frames_corrupt"] == 2
        sim.fault("detector", "garbage_records", 1)
        rx.read_for(0.3)
        sim.fault("detector", "truncate_frames", 1)
        rx.read_for(0.3)
        assert core.counters()["link_bytes_skipped"] > 0
        sim.fault("detector", "disconnect", 1)
        rx.read_for(2.0)  # returns when the simulator closes the connection
        rx.close()
        time.sleep(0.2)
        rx = Receiver(sim, core)  # reconnect: the frames made meanwhile are a loss
        rx.read_for(0.5)
        truth = sim.truth()
        rx.close()
    c = core.counters()
    fates = [f for _, f in truth["detector"]["frame_fates"]]
    assert fates.count("dropped") == 3
    assert truth["detector"]["frames_unsent"] > 0
    assert c["link_loss_intervals"] >= 4  # drop, two corrupt, truncation, reconnect
    # Nothing was silently lost: every decoded event is binned, rejected or pending.
    assert c["events"] == c["binned"] + c["rejected_total"] + c["pending"]
    assert c["link_gap"] > 0 and c["unknown_channel"] + c["malformed"] > 0


FATES = ("binned", "line_settle", "flyback", "mass_settle", "dead_time_lost")


def load_events(sim: SimProcess) -> dict[str, npt.NDArray[Any]]:
    with np.load(sim.truth_dir / "events.npz") as z:
        return {k: z[k] for k in z.files}


def test_detector_clock_jump_is_binned_through_and_the_true_events_are_dumped(
    tmp_path: Path,
) -> None:
    jump = 10**11  # 0.1 s of 1 ps ticks: far beyond the loopback's arrival jitter
    ov = override(detector={"record_events": True})
    core = core_for(ov)
    with run_sim(tmp_path, ov) as sim, Receiver(sim, core) as rx:
        rx.read_for(1.0)
        sim.truth()  # a dump mid-run drains the emitter's log; the next must still have it
        early = load_events(sim)
        sim.fault("detector", "clock_jump_ticks", jump)
        rx.read_for(1.5)
        sim.control("stop")
        rx.read_to_end()
        assert sim.stop() == 0
        doc, cubes, events = sim.truth(), sim.truth_cubes(), load_events(sim)
    truth = doc["detector"]
    t = truth["counters"]
    # The jump is in the truth three ways, and the core's clock model saw it.
    (logged,) = [f for f in doc["faults"] if f["fault"] == "clock_jump"]
    assert logged["ticks"] == jump and t["clock_jumps"] == 1
    assert [j["ticks"] for j in truth["clock"]["jumps"]] == [jump]
    assert core.clock_state()["jumps"] >= 1
    # Lines after the jump bin into the right voxels (about a third of the run is after).
    got = core.counters()
    core.finish()
    complete = core.n_slices - 1  # the last frame may have been cut by the stop
    tick_before = logged["tick_before"]
    assert (events["tick"] >= tick_before + jump).sum() > 10_000 and complete > 20
    for name in core.species:
        np.testing.assert_array_equal(
            core.cube(name, 0, complete), cubes[name][:complete], err_msg=name
        )
    assert got["events"] == t["events"] and core.counters()["lines_bad"] <= 1
    # The event log: nothing lost between dumps, in the jumped counter after the jump,
    # and by fate and voxel it is the truth.
    for k, v in early.items():
        np.testing.assert_array_equal(events[k][: v.size], v, err_msg=k)
    assert not ((events["tick"] >= tick_before) & (events["tick"] < tick_before + jump)).any()
    assert np.bincount(events["fate"], minlength=5).tolist() == [t[k] for k in FATES]
    live = events["fate"] == 0
    for i, name in enumerate(core.species):
        mine = live & (events["species"] == i)
        cube = np.zeros_like(cubes[name])
        np.add.at(cube, (events["z"][mine], events["y"][mine], events["x"][mine]), 1)
        np.testing.assert_array_equal(cube, cubes[name], err_msg=name)
