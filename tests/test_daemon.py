"""opsimsd end to end: the simulator and the daemon as real processes on loopback, a
subscriber on every topic and the control socket, an accelerated protocol."""

from __future__ import annotations

import itertools
import json
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from opsims.client import Control, ControlError, Subscriber
from opsims.wire import Message
from support.simproc import merge, run_daemon, run_sim, small_raster
from support.stream import collect, links_up, run_over

ACCELERATION = 100.0
SIM = merge(
    small_raster(nx=32, ny=16, dwell_ticks=200_000_000, frames_per_slice=20),
    {"sim": {"acceleration": ACCELERATION, "potentiostat": {"sample_period_s": 0.1},
             "specimen": {"total_rate_hz": 3000.0}}},
)  # fmt: skip
#: Slices of one frame each: the cubes fill (and a small budget rebins) within seconds.
FAST_SLICES = merge(SIM, {"detector": {"raster": {"frames_per_slice": 1}}})
PROTOCOL = {
    "name": "short plate-strip-eis",
    "steps": [
        {"kind": "rest", "duration_s": 5},
        {"kind": "constant_current", "current_a": -4e-8, "duration_s": 120},
        {"kind": "strip", "current_a": 4e-8, "depletion_v": 5.0, "max_duration_s": 300},
        {"kind": "eis", "f_start_hz": 7e6, "f_stop_hz": 100, "points_per_decade": 5},
    ],
}


def external(sim_ports: dict[str, int]) -> dict[str, Any]:
    """Daemon settings that attach to an already running simulator."""
    return merge(SIM, {
        "daemon": {"simulator": "external", "cube_rate_hz": 20.0},
        "links": {"detector": {"port": sim_ports["detector"]},
                  "potentiostat": {"port": sim_ports["potentiostat"]}},
        "sim": {"control_port": sim_ports["control"]},
    })  # fmt: skip


def test_a_protocol_through_the_daemon(tmp_path: Path) -> None:
    # This is about the protocol's own depletion stop at 5 V. At 100x the cell climbs from
    # 5 to 10 V in ~10 ms of wall time, faster than the Python loop reacts on a busy
    # machine, so the interlock (tested in test_safety.py) gets a wider band here.
    wide = {"safety": {"ewe_min_v": -15.0, "ewe_max_v": 15.0}}
    # One frame per slice: the run's cubes start at a frame the simulator numbers F0, so
    # its slices line up with the simulator's only slice by frame.
    per_frame = small_raster(nx=32, ny=16, dwell_ticks=200_000_000, frames_per_slice=1)
    with (
        run_sim(tmp_path / "sim", merge(SIM, per_frame)) as sim,
        run_daemon(tmp_path, merge(merge(external(sim.ports), wide), per_frame)) as daemon,
        Subscriber(daemon.publish) as sub,
        Control(daemon.control) as ctl,
    ):
        time.sleep(0.3)  # the subscription reaches the publisher
        links_up(ctl)
        run_id = ctl.start_run(PROTOCOL)["run_id"]
        with pytest.raises(ControlError) as busy:
            ctl.start_run(PROTOCOL)
        assert busy.value.code == "busy"

        messages = collect(sub, run_over, timeout_s=60)
        messages += collect(sub, lambda m: m.topic == "status", timeout_s=5)
        snapshot = ctl.snapshot("cubes")
        truth = sim.truth()
        cubes = sim.truth_cubes()
        assert daemon.stop() == 0
        log = daemon.log()
    topics = Counter(m.topic for m in messages)
    for topic in ("ec", "events", "cube", "profile", "run", "status"):
        assert topics[topic] > 0, (topic, topics)
    assert sub.gaps == 0, sub.gaps
    runs = [m.fields for m in messages if m.topic == "run"]
    assert runs[-1]["run_id"] == run_id and runs[-1]["reason"] == "complete", runs[-1]
    finished = [r["kind"] for r in runs if r["step"] >= 0 and r["state"] == "finished"]
    assert finished == ["rest", "constant_current", "strip", "eis"]

    # The EC samples are the simulated cell's: same ticks, same values, on host time.
    ec = np.concatenate([m.arrays["samples"] for m in messages if m.topic == "ec"])
    t = _truth_samples(tmp_path / "sim" / "truth")
    # Both unwrap the same 32-bit counter from the same start: the ticks are equal.
    true_ticks = t["tick"].astype(np.int64)
    index = np.searchsorted(true_ticks, ec["tick"].astype(np.int64))
    np.testing.assert_array_equal(true_ticks[index], ec["tick"])
    np.testing.assert_array_equal(t["ewe_v"][index], ec["ewe_v"])
    np.testing.assert_array_equal(t["current_a"][index], ec["current_a"])
    assert np.all(np.diff(ec["host_ns"]) >= 0)
    plating = ec[ec["current_a"] < 0]
    assert np.allclose(plating["current_a"], -4e-8, rtol=0.05)
    assert ec["ewe_v"].max() > 5.0  # the strip ran into depletion and was stopped there

    # The cubes start over with the run: every complete slice equals the simulator's true
    # counts of one frame, at one offset F0 (the first frame after the run started).
    n = snapshot.fields["n_slices"]
    assert n >= 3
    names = snapshot.fields["species"]
    total = cubes[names[0]].shape[0]
    offsets = [f0 for f0 in range(total - n + 2)
               if all(np.array_equal(snapshot.arrays[s][: n - 1], cubes[s][f0 : f0 + n - 1])
                      for s in names)]  # fmt: skip
    assert len(offsets) == 1 and offsets[0] > 0, offsets
    # And the counters the daemon published balance.
    events = [m.fields for m in messages if m.topic == "events"][-1]["totals"]
    assert events["events"] == events["binned"] + events["rejected_total"] + events["pending"]
    # Counts per species are read just after the counters: between this batch's and the
    # next one's binned total. Each detector's are its species'.
    batches = [m.fields for m in messages if m.topic == "events"]
    assert sum(after["totals"]["binned"] < now["totals"]["binned"]
               for now, after in itertools.pairwise(batches)) <= 1  # fmt: skip
    for now, after in itertools.pairwise(batches):
        if after["totals"]["binned"] < now["totals"]["binned"]:
            continue  # the run started between them: its cubes and counters start over
        by_species = now["binned_by_species"]
        assert now["totals"]["binned"] <= sum(by_species.values()) <= after["totals"]["binned"]
        assert now["detectors"]["positive"]["binned"] == sum(
            by_species[s] for s in ("Na+", "Si+", "Zr+", "ZrO+")
        )
    assert all(d["binned"] > 0 for d in batches[-1]["detectors"].values())
    commands = [c["kind"] for c in truth["potentiostat"]["commands"] if c["kind"] != "HEARTBEAT"]
    assert commands[-1] == "OPEN_CIRCUIT"
    assert "open circuit confirmed" in log


def _truth_samples(sim_truth_dir: Path) -> dict[str, np.ndarray]:
    with np.load(sim_truth_dir / "samples.npz") as z:
        return {k: z[k] for k in z.files}


def test_bad_control_messages_get_structured_errors(tmp_path: Path) -> None:
    with (
        run_sim(tmp_path / "sim", SIM) as sim,
        run_daemon(tmp_path, external(sim.ports)) as daemon,
        Control(daemon.control, timeout_s=5) as ctl,
    ):
        cases: list[tuple[Callable[[], object], str]] = [
            (lambda: ctl.call("dance"), "unknown_command"),
            (lambda: ctl.start_run({"steps": [{"kind": "rest"}]}), "bad_arguments"),
            (lambda: ctl.start_run({"steps": "all of them"}), "bad_arguments"),
            (lambda: ctl.call("status", verbose=True), "bad_arguments"),
            (lambda: ctl.snapshot("everything"), "bad_arguments"),
        ]
        for call, code in cases:
            with pytest.raises(ControlError) as e:
                call()
            assert e.value.code == code, e.value
        assert ctl.status()["uptime_s"] > 0  # still serving
        assert daemon.stop() == 0


def test_bad_config_is_refused_with_the_key_path(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text((Path(__file__).parents[1] / "config" / "opsimsd.toml").read_text()
                   + "\n[links.bogus]\nport = 1\n")  # fmt: skip
    done = subprocess.run([sys.executable, "-m", "opsims.daemon.main", "--config", str(cfg)],
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 2
    assert "links: unknown key(s) bogus" in done.stderr


def test_simulator_that_disconnects_and_comes_back(tmp_path: Path) -> None:
    with (
        run_sim(tmp_path / "sim", SIM) as sim,
        run_daemon(tmp_path, external(sim.ports)) as daemon,
        Subscriber(daemon.publish, ["link", "ec"]) as sub,
    ):
        collect(sub, lambda m: m.topic == "ec", timeout_s=20)
        sim.fault("potentiostat", "disconnect", 1)
        sim.fault("detector", "disconnect", 1)
        states: list[tuple[str, str]] = []

        def both_back(m: Message) -> bool:
            if m.topic == "link":
                states.append((m.fields["link"], m.fields["state"]))
            return all(
                (link, "down") in states and states[-1:] != [(link, "down")]
                and (link, "up") in states[states.index((link, "down")):]
                for link in ("detector", "potentiostat")
            )  # fmt: skip

        collect(sub, both_back, timeout_s=30)
        collect(sub, lambda m: m.topic == "ec", timeout_s=10)  # samples flow again
        daemon.proc.send_signal(signal.SIGINT)  # Ctrl-C is a clean stop too
        assert daemon.proc.wait(timeout=30) == 0


def test_opsims_commands_talk_to_the_daemon(tmp_path: Path) -> None:
    def opsims(*args: str) -> Any:
        done = subprocess.run([sys.executable, "-m", "opsims.cli", *args, "--json",
                               "--control", daemon.control, "--publish", daemon.publish],
                              capture_output=True, text=True, timeout=60)  # fmt: skip
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    protocol = tmp_path / "rest.toml"
    protocol.write_text('name = "rest"\n[[steps]]\nkind = "rest"\nduration_s = 600\n')
    with run_sim(tmp_path / "sim", SIM) as sim, run_daemon(tmp_path, external(sim.ports)) as daemon:
        status = opsims("status")
        assert set(status["links"]) == {"detector", "potentiostat"}
        run_id = opsims("run", str(protocol))["run_id"]
        # Named by its start (UTC), so no two runs in the state directory share a name.
        assert run_id.startswith("run-20") and (tmp_path / "state" / "runs" / run_id).is_dir()
        deadline = time.monotonic() + 20
        while opsims("status")["run"]["state"] != "finished":
            assert time.monotonic() < deadline
            time.sleep(0.2)
        snap = opsims("snapshot", "--what", "profile")
        assert snap["arrays"]["profile"][1] == 9  # species columns
        assert snap["seq"] >= 0
        assert daemon.stop() == 0


def test_shipped_configurations_load() -> None:
    from opsims.daemon.config import DaemonConfig

    root = Path(__file__).resolve().parents[1] / "config"
    default = DaemonConfig.load(root / "opsimsd.toml")
    assert default.simulator == "embedded" and default.sim is not None
    production = DaemonConfig.load(root / "opsimsd.production.toml")
    assert production.simulator == "none" and production.sim is None
    assert production.clock_time_scale == 1.0
    assert production.detector == default.detector.__class__(
        **{**default.detector.__dict__, "memory_budget_bytes": 8 << 30}
    )


def test_a_client_joining_mid_run_mirrors_the_cubes(tmp_path: Path) -> None:
    """Snapshot plus the cube updates after it: the joiner ends with the daemon's cubes,
    with no gap and no double count (the Clone pattern against the real daemon)."""
    from opsims.client import CubeMirror

    with run_sim(tmp_path / "sim", SIM) as sim, run_daemon(tmp_path, external(sim.ports)) as daemon:
        time.sleep(1.5)  # the raster is well under way
        with CubeMirror(daemon.publish, daemon.control) as mirror:
            end = time.monotonic() + 2.0
            while time.monotonic() < end:
                mirror.poll(0.1)
            sim.fault("detector", "stall_s", 3.0)  # hold the data still...
            time.sleep(0.5)
            end = time.monotonic() + 1.0
            while time.monotonic() < end:  # ...and let the last updates arrive
                mirror.poll(0.1)
            with Control(daemon.control) as ctl:
                snap = ctl.snapshot("cubes")
            assert mirror.applied > 0 and mirror.n_slices >= 3
            n = snap.fields["n_slices"]
            assert mirror.n_slices == n
            for name in snap.fields["species"]:
                np.testing.assert_array_equal(mirror.cubes[name], snap.arrays[name], name)
        assert daemon.stop() == 0


def test_the_live_profile_is_sent_in_parts_that_add_up_to_the_daemons(tmp_path: Path) -> None:
    """Live ``profile`` messages hold the rows that changed, not the whole profile; a
    LiveProfile that joins mid-run takes one snapshot and then, from the stream alone,
    ends equal to the daemon's profile."""
    from opsims.client import LiveProfile

    partial = []
    with run_sim(tmp_path / "sim", SIM) as sim, run_daemon(tmp_path, external(sim.ports)) as daemon:
        time.sleep(1.5)  # the raster is well under way
        with Subscriber(daemon.publish, ["profile"]) as sub, Control(daemon.control) as ctl:
            live = LiveProfile(ctl)
            end = time.monotonic() + 3.0
            while time.monotonic() < end:
                msg = sub.recv(1.0)
                if msg is None:
                    continue
                live.apply(msg)
                z0, n = msg.fields["z0"], msg.fields["n_slices"]
                assert msg.arrays["profile"].shape == (n - z0, 9)
                partial.append((z0, n))
            sim.fault("detector", "stall_s", 3.0)  # hold the data still...
            time.sleep(0.5)
            while (msg := sub.recv(1.0)) is not None:  # ...and take the last updates
                live.apply(msg)
            snap = ctl.snapshot("profile")
        assert daemon.stop() == 0
    assert live.syncs == 1 and len(partial) >= 5
    assert all(z0 > 0 for z0, _ in partial), "no rebin here: never the whole profile"
    # Only the newest few slices change between two messages (at 20 Hz, accelerated).
    rows = sum(n - z0 for z0, n in partial)
    assert rows < 0.5 * sum(n for _, n in partial), partial
    assert live.profile is not None and live.seq == snap.seq
    assert snap.fields["z0"] == 0 and snap.fields["n_slices"] >= 3
    np.testing.assert_array_equal(live.profile, snap.arrays["profile"])


def test_after_a_rebin_only_new_slices_go_out_and_a_mirror_follows(tmp_path: Path) -> None:
    """A small cube budget rebins every second or two. The daemon does not send the
    rebinned cube again (subscribers take a snapshot): after each rebin the cube messages
    are of the newest slices only; a CubeMirror ends equal to the daemon's cubes."""
    from opsims.client import CubeMirror

    # 32 x 16 u32 slices of 9 species, in chunks of 16 slices: a rebin at 32 slices.
    budget = 2 * 16 * 32 * 16 * 4 * 9
    by_rebins: dict[int, list[tuple[int, int]]] = {}
    with run_sim(tmp_path / "sim", FAST_SLICES) as sim:
        settings = merge(external(sim.ports), {
            "detector": {"raster": {"frames_per_slice": 1},
                         "cube": {"memory_budget_bytes": budget}},
        })  # fmt: skip
        with run_daemon(tmp_path, settings) as daemon:
            with (
                Subscriber(daemon.publish, ["cube"]) as sub,
                CubeMirror(daemon.publish, daemon.control) as mirror,
            ):
                end = time.monotonic() + 6.0
                while time.monotonic() < end:
                    mirror.poll(0.0)
                    msg = sub.recv(0.05)
                    if msg is not None:
                        f = msg.fields
                        by_rebins.setdefault(f["rebins"], []).append((f["z"], f["n_slices"]))
                sim.fault("detector", "stall_s", 3.0)
                time.sleep(0.5)
                end = time.monotonic() + 1.0
                while time.monotonic() < end:
                    mirror.poll(0.1)
                with Control(daemon.control) as ctl:
                    snap = ctl.snapshot("cubes")
                assert mirror.rebins == snap.fields["rebins"] >= 2
                assert mirror.syncs >= 2 and mirror.n_slices == snap.fields["n_slices"]
                for name in snap.fields["species"]:
                    np.testing.assert_array_equal(mirror.cubes[name], snap.arrays[name], name)
            assert daemon.stop() == 0
    # Rebins the subscriber saw happen (the first may come before it has joined).
    rebinned = [r for r in by_rebins if r - 1 in by_rebins]
    assert len(rebinned) >= 2, sorted(by_rebins)
    for r in rebinned:
        # The first messages after a rebin are of the newest slice when the daemon saw
        # it (several slices may have begun since: link frames come in bursts). Later a
        # late raster line may reach the slice before it; never the older ones.
        z_first = by_rebins[r][0][0]
        lowest = min(z for z, _ in by_rebins[r])
        assert lowest >= z_first - 1, (r, by_rebins[r][:10])


def test_status_reports_rates_lags_and_memory(tmp_path: Path) -> None:
    with (
        run_sim(tmp_path / "sim", SIM) as sim,
        run_daemon(tmp_path, external(sim.ports)) as daemon,
        Control(daemon.control) as ctl,
    ):
        time.sleep(1.5)
        ctl.status()  # the rates are over the interval since the previous status
        time.sleep(1.0)
        status = ctl.status()
        assert daemon.stop() == 0
    assert status["rates"]["samples"] == pytest.approx(ACCELERATION * 10, rel=0.3)  # 0.1 s
    assert status["rates"]["events"] > 0 and status["rates"]["bytes_detector"] > 0
    assert -0.1e9 < status["lags_ns"]["potentiostat"] < 0.5e9
    assert status["memory"]["rss_bytes"] > 10 << 20
