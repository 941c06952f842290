"""The simulated SIMS beam through a real `opsims-sim`: the beam modes (profile, image,
off) switched on the control port, the depth kept per region and frame, rates set for
every raster frame, injected lateral drift, and the `beam` and `profile` protocol steps
through the daemon. Everything is checked against the simulator's ground truth."""

from __future__ import annotations

import itertools
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from opsims import ConfigError, DetectorConfig, EventCore
from opsims.client import Control, Subscriber
from opsims.daemon.protocol import Runner, RunProtocol, RunState
from opsims.link.potentiostat import PotentiostatClient
from opsims.sim.config import SimConfig
from support.simproc import SimProcess, default_document, merge, run_daemon, run_sim, small_raster
from support.stream import collect, links_up, run_over

CODES = {"off": 0, "image": 1, "profile": 2}
# 16 x 8 pixels of 20 µs: a frame is 2.68 ms of simulated time.
FAST = merge(
    small_raster(nx=16, ny=8, dwell_ticks=20_000_000),
    {"sim": {"acceleration": 20.0, "specimen": {"total_rate_hz": 2e4}}},
)


@contextmanager
def receiving(sim: SimProcess, core: EventCore | None = None) -> Iterator[None]:
    """A host on the detector port (it arms the raster), read on a thread, optionally
    into a core."""
    stop = threading.Event()
    sock = socket.create_connection(("127.0.0.1", sim.ports["detector"]), 5)
    sock.settimeout(0.05)

    def read() -> None:
        while not stop.is_set():
            try:
                data = sock.recv(1 << 20)
            except TimeoutError:
                continue
            if not data:
                return
            if core is not None:
                core.feed_link(data, time.time_ns())

    thread = threading.Thread(target=read)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        sock.close()


def frames_begun(sim: SimProcess) -> int:
    counters = sim.control("status")["detector"]["counters"]
    return 0 if counters is None else int(counters["frames"])


def wait_frames(sim: SimProcess, n: int, timeout_s: float = 20.0) -> int:
    """Wait until `n` more raster frames have begun; the frame count then."""
    start = frames_begun(sim)
    deadline = time.monotonic() + timeout_s
    while (now := frames_begun(sim)) < start + n:
        assert time.monotonic() < deadline, (start, now)
        time.sleep(0.02)
    return now


def beam(sim: SimProcess, mode: str) -> dict[str, Any]:
    reply = sim.control("beam", mode=mode)
    assert reply["ok"] and reply["mode"] == mode, reply
    return reply


def truth_frames(sim: SimProcess) -> tuple[dict[str, Any], dict[str, npt.NDArray[Any]]]:
    """truth.json and frames.npz of one dump."""
    doc = sim.truth()
    with np.load(sim.truth_dir / "frames.npz") as z:
        return doc, {k: z[k] for k in z.files}


def test_beam_command_switches_modes_and_bad_requests_get_errors(tmp_path: Path) -> None:
    with run_sim(tmp_path, FAST) as sim:
        status = sim.control("status")["detector"]
        assert (status["beam"], status["region"], status["depth_nm"]) == ("profile", 0, 0.0)
        for mode in ("image", "off", "profile", "off"):
            assert beam(sim, mode)["depth_nm"] == 0.0  # no raster yet: nothing sputtered
            assert sim.control("status")["detector"]["beam"] == mode
        bad: list[tuple[dict[str, Any], str]] = [
            ({}, 'beam needs a "mode"'),
            ({"mode": 3}, 'beam needs a "mode"'),
            ({"mode": "laser"}, "beam: unknown mode 'laser' (one of off, image, profile)"),
        ]
        for args, error in bad:
            reply = sim.control("beam", **args)
            assert not reply["ok"] and error in reply["error"], reply
        assert not sim.control_raw(b'{"cmd": "beam", "mode": \n')["ok"]
        assert sim.control("new_region") == {"ok": True, "region": 1}
        status = sim.control("status")["detector"]
        assert (status["beam"], status["region"], status["depth_nm"]) == ("off", 1, 0.0)
        doc = sim.truth()["detector"]
    assert [e["mode"] for e in doc["beam_log"]] == ["image", "off", "profile", "off"]
    assert doc["beam_initial"] == "profile" and doc["beam_codes"] == CODES
    assert [r["region"] for r in doc["regions"]] == [0, 1]


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"beam": "laser"}, "sim.detector.beam: expected one of off, image, profile"),
        ({"beam": 1}, "sim.detector.beam: expected str"),
        ({"lateral_drift_px_per_frame": [0.1]}, "sim.detector.lateral_drift_px_per_frame"),
        ({"lateral_drift_px_per_frame": [0.1, "x"]}, "expected [dx, dy], two finite numbers"),
        ({"lateral_drift_px_per_frame": 0.1}, "lateral_drift_px_per_frame: expected list"),
    ],
)
def test_bad_beam_configuration_names_the_key(table: dict[str, Any], message: str) -> None:
    doc = merge(default_document(), {"sim": {"detector": table}})
    with pytest.raises(ConfigError) as e:
        SimConfig.from_document(doc)
    assert message in str(e.value)


def test_beam_off_sends_only_dark_counts_while_the_raster_runs_on(tmp_path: Path) -> None:
    dark_hz = 5e4
    ov = merge(
        FAST, {"sim": {"detector": {"dark_rate_hz": dark_hz, "record_events": True}}}
    )  # fmt: skip
    doc = merge(default_document(), ov)
    core = DetectorConfig.from_mapping(doc["detector"]).build()
    with run_sim(tmp_path, ov) as sim:
        with receiving(sim, core):
            wait_frames(sim, 20)
            off_from = beam(sim, "off")["frame"]
            wait_frames(sim, 200)
            on_from = beam(sim, "image")["frame"]
            wait_frames(sim, 20)
        truth, frames = truth_frames(sim)
        with np.load(sim.truth_dir / "events.npz") as z:
            events = {k: z[k] for k in z.files}
    assert off_from >= 20 and on_from >= off_from + 200
    code = frames["beam"]
    assert np.all(code[:off_from] == CODES["profile"])
    assert np.all(code[off_from:on_from] == CODES["off"])
    assert np.all(code[on_from:] == CODES["image"])

    # Every count of the off frames is a dark count, in blanking only, at the dark rate.
    ticks = frames["start_tick"]
    inside = (events["tick"] >= ticks[off_from]) & (events["tick"] < ticks[on_from])
    # Line settle, flyback or frame gap; or lost to dead time, never sent.
    assert set(np.unique(events["fate"][inside]).tolist()) <= {1, 2, 4}
    assert np.all(events["species"][inside] == -1)
    r = doc["detector"]["raster"]
    blank_ticks = r["ny"] * (r["line_settle_ticks"] + r["flyback_ticks"])
    blank_ticks += doc["sim"]["detector"]["frame_gap_ticks"]
    n_det = len(r["polarities"])
    expected = n_det * dark_hz * blank_ticks * doc["detector"]["tick_s"] * (on_from - off_from)
    assert abs(int(inside.sum()) - expected) < 5 * np.sqrt(expected), (inside.sum(), expected)

    # The host got the frames, markers and dark counts of the off frames, and no binned count.
    profile = core.depth_profile()
    assert core.n_slices >= on_from + 1
    assert profile[off_from:on_from].sum() == 0
    assert profile[:off_from].sum() > 0 and profile[on_from : core.n_slices - 1].sum() > 0
    cubes = sim.truth_cubes()
    assert all(c[off_from:on_from].sum() == 0 for c in cubes.values())
    assert core.counters()["frame_markers"] >= on_from
    assert truth["detector"]["counters"]["frame_markers"] >= on_from


@pytest.mark.parametrize("depth_step_nm", [0.0, 1.0])
def test_depth_advances_per_profile_frame_and_restarts_on_a_new_region(
    tmp_path: Path, depth_step_nm: float
) -> None:
    """Frames that share rates over a depth step still each have their own depth."""
    rate = 0.25
    ov = merge(FAST, {"sim": {"detector": {"sputter_rate_nm_per_frame": rate,
                                           "depth_step_nm": depth_step_nm}}})  # fmt: skip
    with run_sim(tmp_path, ov) as sim:
        with receiving(sim):
            wait_frames(sim, 30)
            for mode in ("image", "off", "profile"):
                beam(sim, mode)
                wait_frames(sim, 30)
            assert sim.control("new_region") == {"ok": True, "region": 1}
            wait_frames(sim, 30)
            status = sim.control("status")["detector"]
            assert status["region"] == 1 and status["beam"] == "profile"
            assert status["depth_nm"] >= 30 * rate
        truth, frames = truth_frames(sim)
    det = truth["detector"]
    n = det["counters"]["frames"]
    # One entry per frame begun, indexed by the emitter's frame index.
    assert len(frames["frame"]) == n and np.array_equal(frames["frame"], np.arange(n))
    assert det["depth_nm_by_frame"] == frames["depth_nm"].tolist()
    period = det["frame_period_ticks"]
    assert np.all(np.diff(frames["start_tick"].astype(np.int64)) == period)
    assert frames["start_tick"][0] == det["start_tick"]

    # Depth = rate x the region's profile frames before this one: exact, per frame.
    region, code = frames["region"], frames["beam"]
    new_at = det["regions"][1]["frame"]
    assert np.all(region[:new_at] == 0) and np.all(region[new_at:] == 1)
    profiled = 0
    for f in range(n):
        if f == new_at:
            profiled = 0
        assert frames["depth_nm"][f] == profiled * rate, f
        profiled += code[f] == CODES["profile"]
    assert frames["depth_nm"][new_at] == 0.0
    assert det["depth_nm"] == profiled * rate

    # The beam log says where each mode began, and the frames agree.
    log = det["beam_log"]
    assert [e["mode"] for e in log] == ["image", "off", "profile"]
    bounds = [0, *(e["frame"] for e in log), n]
    modes = ["profile", "image", "off", "profile"]
    for (start, stop), mode in zip(itertools.pairwise(bounds), modes, strict=True):
        assert start < stop and np.all(code[start:stop] == CODES[mode]), mode
    assert log[0]["depth_nm"] == log[0]["frame"] * rate
    assert log[1]["depth_nm"] == log[2]["depth_nm"] == log[0]["depth_nm"]
    assert det["regions"][0]["profiles"][0]["frame"] == log[2]["frame"]
    assert det["regions"][0]["profiles"][0]["state"]["plated_charge_c"] == 0.0
    assert np.all(frames["shift_x_px"] == 0) and np.all(frames["shift_y_px"] == 0)


def centroid(image: npt.NDArray[Any]) -> tuple[float, float]:
    """(x, y) of the pixels above half way between the background and the peak."""
    smooth = image.astype(np.float64)
    level = (np.median(smooth) + np.percentile(smooth, 99)) / 2
    w = np.where(smooth > level, smooth, 0.0)
    ys, xs = np.indices(image.shape)
    return float((w * xs).sum() / w.sum()), float((w * ys).sum() / w.sum())


def test_lateral_drift_moves_the_na_island_by_the_configured_pixels(tmp_path: Path) -> None:
    drift = (0.1, -0.05)
    acceleration = 1000.0
    ov = merge(
        small_raster(nx=32, ny=32, dwell_ticks=200_000_000),
        {"sim": {"acceleration": acceleration, "potentiostat": {"sample_period_s": 1.0},
                 "specimen": {"fov_um": 60.0, "total_rate_hz": 2e4},
                 "detector": {"beam": "image", "lateral_drift_px_per_frame": list(drift)}}},
    )  # fmt: skip
    with (
        run_sim(tmp_path, ov) as sim,
        PotentiostatClient("127.0.0.1", sim.ports["potentiostat"]) as pot,
    ):
        # Plate a Na island below the CCD before any host arms the raster.
        assert pot.set_current(-2e-8).ok
        end = time.monotonic() + 900 / acceleration
        while time.monotonic() < end:
            pot.poll(0.05)
            assert pot.heartbeat().ok
        assert pot.open_circuit().ok
        with receiving(sim):
            wait_frames(sim, 110)
        truth, frames = truth_frames(sim)
        na = sim.truth_cubes()["Na+"]
    assert truth["potentiostat"]["cell"]["plated_charge_c"] > 1e-5
    k = frames["frame"]  # region 0 began with frame 0
    assert np.array_equal(frames["shift_x_px"], np.floor(k * drift[0] + 0.5))
    assert np.array_equal(frames["shift_y_px"], np.floor(k * drift[1] + 0.5))
    assert np.all(frames["beam"] == CODES["image"]) and np.all(frames["depth_nm"] == 0.0)

    measured = [f for f in range(min(len(na), 110)) if na[f].sum() > 0]  # Na+ frames
    assert len(measured) >= 25
    xy = np.array([centroid(na[f]) for f in measured])
    shift = np.stack([frames["shift_x_px"][measured], frames["shift_y_px"][measured]], axis=1)
    assert shift[-1, 0] - shift[0, 0] >= 10 and shift[-1, 1] - shift[0, 1] <= -5
    # The island follows the shift pixel for pixel; centroid minus shift stays put (a
    # frame's centroid scatters by ~0.25 pixel) on the probe, the centre of the field.
    for axis in (0, 1):
        slope = np.polyfit(shift[:, axis], xy[:, axis], 1)[0]
        assert slope == pytest.approx(1.0, abs=0.06), (axis, slope)
    residual = xy - shift
    assert np.all(np.abs(residual - np.median(residual, axis=0)) < 1.0), residual
    assert np.median(residual, axis=0) == pytest.approx([15.5, 15.5], abs=0.6)


DAEMON_SIM = merge(
    small_raster(nx=32, ny=16, dwell_ticks=200_000_000, frames_per_slice=1),
    {"sim": {"acceleration": 100.0, "potentiostat": {"sample_period_s": 0.1},
             "specimen": {"total_rate_hz": 3000.0},
             "detector": {"sputter_rate_nm_per_frame": 0.5}}},
)  # fmt: skip
BEAM_PROTOCOL = {
    "name": "plate, then profile each region",
    "steps": [
        {"kind": "beam", "mode": "off"},
        {"kind": "constant_current", "current_a": -2e-8, "duration_s": 20},
        {"kind": "profile", "duration_s": 10},
        {
            "kind": "series",
            "current_densities_ua_um2": [0.01],
            "steps": [
                {"kind": "constant_current", "sign": -1, "duration_s": 10},
                {"kind": "profile", "duration_s": 10, "beam_after": "image"},
            ],
        },
    ],
}


def test_beam_and_profile_steps_through_the_daemon(tmp_path: Path) -> None:
    with run_sim(tmp_path / "sim", DAEMON_SIM) as sim:
        daemon_config = merge(DAEMON_SIM, {
            "daemon": {"simulator": "external"},
            "links": {"detector": {"port": sim.ports["detector"]},
                      "potentiostat": {"port": sim.ports["potentiostat"]}},
            "sim": {"control_port": sim.ports["control"]},
        })  # fmt: skip
        with (
            run_daemon(tmp_path, daemon_config) as daemon,
            Subscriber(daemon.publish) as sub,
            Control(daemon.control) as ctl,
        ):
            time.sleep(0.3)  # the subscription reaches the publisher
            links_up(ctl)
            ctl.start_run(BEAM_PROTOCOL)
            messages = collect(sub, run_over, timeout_s=60)
            assert daemon.stop() == 0
        truth, frames = truth_frames(sim)
    runs = [m.fields for m in messages if m.topic == "run"]
    assert runs[-1]["reason"] == "complete", runs[-1]
    finished = [r for r in runs if r["step"] >= 0 and r["state"] == "finished"]
    assert [r["kind"] for r in finished] == [
        "beam", "constant_current", "profile", "new_region", "constant_current", "profile",
    ]  # fmt: skip
    assert finished[0]["params"] == {"mode": "off"}
    assert finished[2]["params"] == {"duration_s": 10.0, "beam_after": "off"}
    assert finished[5]["params"] == {"duration_s": 10.0, "beam_after": "image"}
    started = {r["step"]: r for r in runs if r["step"] >= 0 and r["state"] == "started"}
    for r in (finished[2], finished[5]):
        assert r["device_s"] - started[r["step"]]["device_s"] == pytest.approx(10.0, abs=0.5)

    det = truth["detector"]
    log = det["beam_log"]
    assert [(e["mode"], e["region"]) for e in log] == [
        ("off", 0), ("profile", 0), ("off", 0), ("profile", 1), ("image", 1),
    ]  # fmt: skip
    assert [e["depth_nm"] for e in log][3] == 0.0  # a fresh region starts at the surface
    # The electrochemistry ran with the beam off; each profile sputtered its own region.
    code, region, depth = frames["beam"], frames["region"], frames["depth_nm"]
    for a, b in ((log[1], log[2]), (log[3], log[4])):
        span = slice(a["frame"], b["frame"])
        assert np.all(code[span] == CODES["profile"]) and np.all(region[span] == a["region"])
        n = b["frame"] - a["frame"]
        assert n > 50  # 10 s of 0.1 s frames, give or take the loop's reaction
        assert b["depth_nm"] == a["depth_nm"] + n * 0.5
        assert depth[b["frame"] - 1] == b["depth_nm"] - 0.5  # the last frame profiled
    assert np.all(code[log[0]["frame"] : log[1]["frame"]] == CODES["off"])
    # What a test needs to rebuild the profiled specimen: the state at each profile start.
    profiles = [r["profiles"] for r in det["regions"]]
    assert [len(p) for p in profiles] == [1, 1]
    assert profiles[0][0]["state"]["plated_charge_c"] > 0
    assert profiles[0][0]["state"]["peak_plating_density_ua_um2"] == pytest.approx(0.02)
    assert profiles[1][0]["state"]["peak_plating_density_ua_um2"] == pytest.approx(0.01)
    assert det["specimen_seed"] == 1


class Recorder:
    """An instrument that only records what the runner asks of it."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    def set_current(self, amps: float, limit_v: float | None = None) -> None:
        self.calls.append(("set_current", amps))

    def open_circuit(self) -> None:
        self.calls.append(("open_circuit",))

    def start_eis(self, f_start: float, f_stop: float, ppd: int, amplitude: float) -> None:
        self.calls.append(("start_eis",))


def test_a_profile_without_beam_control_aborts_with_a_clear_reason() -> None:
    protocol = RunProtocol.from_mapping(
        {"steps": [{"kind": "rest", "duration_s": 1}, {"kind": "profile", "duration_s": 5}]}
    )
    events: list[dict[str, Any]] = []
    instrument = Recorder()
    runner = Runner(instrument, events.append)
    runner.start(protocol)
    runner.on_samples([0.0, 0.5, 1.0, 1.5], [0.0] * 4, [0.0] * 4)
    assert runner.state == RunState.ABORTED
    assert events[-1]["detail"] == "no way to control the SIMS beam on this instrument"
    assert events[-2]["kind"] == "profile" and events[-2]["state"] == "aborted"
    assert instrument.calls[-1] == ("open_circuit",)


def test_beam_steps_parse_and_a_profile_cut_short_switches_the_beam_back() -> None:
    protocol = RunProtocol.from_mapping(
        {
            "steps": [
                {"kind": "beam", "mode": "image", "label": "look"},
                {
                    "kind": "series",
                    "current_densities_ua_um2": [0.02],
                    "new_region": False,
                    "steps": [{"kind": "profile", "duration_s": 60, "beam_after": "image"}],
                },
            ]
        }
    )
    assert [(s.kind, s.mode, s.beam_after) for s in protocol.steps] == [
        ("beam", "image", "off"), ("profile", "", "image"),
    ]  # fmt: skip
    for steps, message in [
        ([{"kind": "beam"}], "protocol.steps[0].mode: required key is missing"),
        ([{"kind": "beam", "mode": "on"}], "protocol.steps[0].mode: expected one of off,"),
        ([{"kind": "profile"}], "protocol.steps[0].duration_s: required key is missing"),
        (
            [{"kind": "profile", "duration_s": 1, "beam_after": "x"}],
            "protocol.steps[0].beam_after: expected one of off, image, profile, got 'x'",
        ),
    ]:
        with pytest.raises(ConfigError) as e:
            RunProtocol.from_mapping({"steps": steps})
        assert message in str(e.value)

    modes: list[str] = []
    runner = Runner(Recorder(), lambda m: None, beam=modes.append)
    runner.start(protocol)
    runner.on_samples([0.0, 30.0], [0.0, 0.0], [0.0, 0.0])
    assert modes == ["image", "profile"] and runner.state == RunState.RUNNING
    runner.stop()
    assert modes == ["image", "profile", "image"]  # the profile's beam_after, at once

    def refuse(mode: str) -> None:
        raise RuntimeError("the simulator refused it")

    events: list[dict[str, Any]] = []
    runner = Runner(Recorder(), events.append, beam=refuse)
    runner.start(protocol)
    assert runner.state == RunState.ABORTED
    assert events[-1]["detail"] == "the SIMS beam did not switch to image: the simulator refused it"
