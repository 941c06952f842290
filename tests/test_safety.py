"""The safety interlock through the daemon and the simulator as real processes: a strip
into depletion is stopped at the first sample beyond 10 V, NaN and a stalled link trip,
an ignored open circuit raises the alarm, resets are refused while the condition
persists and audited, a trip stays latched across a restart, and the simulator's own
watchdog is the second line when the whole daemon freezes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from opsims.client import Control, ControlError, Subscriber
from opsims.wire import Message
from support.simproc import SimProcess, merge, run_daemon, run_sim, small_raster
from support.stream import links_up

ACCELERATION = 100.0
SIM = merge(
    small_raster(nx=16, ny=8, dwell_ticks=200_000_000),
    {"sim": {"acceleration": ACCELERATION, "potentiostat": {"sample_period_s": 0.1},
             "specimen": {"total_rate_hz": 1000.0}}},
)  # fmt: skip
PLATE = {"kind": "constant_current", "current_a": -4e-8, "duration_s": 6000}


def external(sim: SimProcess) -> dict[str, Any]:
    return merge(SIM, {
        "daemon": {"simulator": "external"},
        "links": {"detector": {"port": sim.ports["detector"]},
                  "potentiostat": {"port": sim.ports["potentiostat"]}},
        "sim": {"control_port": sim.ports["control"]},
    })  # fmt: skip


def until(sub: Subscriber, want: Any, timeout_s: float = 20.0) -> Message:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        msg = sub.recv(0.2)
        if msg is not None and want(msg):
            return msg
    raise AssertionError("timed out")


def safety(state: str) -> Any:
    return lambda m: m.topic == "safety" and m.fields["state"] == state


def current_flows(m: Message) -> bool:
    return m.topic == "ec" and bool(np.any(m.arrays["samples"]["current_a"] != 0))


def audit(tmp: Path) -> list[dict[str, Any]]:
    path = tmp / "state" / "safety" / "audit.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_a_strip_into_depletion_is_stopped_at_the_first_sample_beyond_10_v(
    tmp_path: Path,
) -> None:
    protocol = {"name": "strip to depletion", "steps": [
        {"kind": "constant_current", "current_a": -4e-8, "duration_s": 120},
        # The protocol's own depletion stop is out of the way: only the interlock stops it.
        {"kind": "strip", "current_a": 4e-8, "depletion_v": 19.0, "max_duration_s": 600},
    ]}  # fmt: skip
    with (
        run_sim(tmp_path / "sim", SIM) as sim,
        run_daemon(tmp_path, external(sim)) as daemon,
        Subscriber(daemon.publish, ["safety", "run"]) as sub,
        Control(daemon.control) as ctl,
    ):
        time.sleep(0.3)
        links_up(ctl)
        ctl.start_run(protocol)
        trip = until(sub, safety("tripped"), timeout_s=60)
        run = until(sub, lambda m: m.topic == "run" and m.fields["step"] == -1
                    and m.fields["state"] == "aborted")  # fmt: skip
        time.sleep(0.5)
        t = sim.truth_samples() if sim.truth() else {}
        assert ctl.status()["safety_state"] == "tripped"
        assert daemon.stop() == 0
    assert trip.fields["reason"] == "ewe_high"
    assert run.fields["reason"] == "safety"
    (bad,) = trip.arrays["sample"]
    assert bad["ewe_v"] > 10.0
    # The offending sample is the first one beyond 10 V the instrument produced...
    ticks = t["tick"].astype(np.int64)
    first = int(np.argmax(t["ewe_v"] > 10.0))
    assert ticks[first] % (1 << 32) == int(bad["tick"]) % (1 << 32)
    # ...and soon after it (one send interval plus the command's way back, accelerated),
    # the cell is at open circuit: no current, never the 13 V of the full spike.
    later = slice(first + 1, None)
    opened = first + 1 + int(np.argmax((t["current_a"][later] == 0) & (t["mode"][later] == 0)))
    assert (opened - first) * 0.1 / ACCELERATION < 0.2, opened - first
    assert np.all(t["current_a"][opened:] == 0)
    assert t["ewe_v"][: opened + 1].max() < 13.0


def test_nan_trips_reset_is_refused_then_audited_and_a_trip_survives_a_restart(
    tmp_path: Path,
) -> None:
    with run_sim(tmp_path / "sim", SIM) as sim:
        with (
            run_daemon(tmp_path, external(sim)) as daemon,
            Subscriber(daemon.publish, ["safety", "run", "ec"]) as sub,
            Control(daemon.control) as ctl,
        ):
            time.sleep(0.3)
            assert links_up(ctl)["safety_state"] == "armed"
            ctl.start_run({"name": "plate", "steps": [PLATE]})
            until(sub, current_flows)
            sim.fault("potentiostat", "nan_samples", 10**9)  # every sample from now on
            trip = until(sub, safety("tripped"))
            assert trip.fields["reason"] == "non_finite"
            assert np.isnan(trip.arrays["sample"]["ewe_v"][0])
            until(sub, lambda m: m.topic == "run" and m.fields["reason"] == "safety")
            # Still NaN: refused, and the refusal is on record.
            time.sleep(0.3)
            with pytest.raises(ControlError) as refused:
                ctl.reset_interlock(operator="ana", reason="looks fine")
            assert refused.value.code == "refused" and "non-finite" in refused.value.message
            with pytest.raises(ControlError) as bad:
                ctl.reset_interlock(operator=" ", reason="x")
            assert bad.value.code == "bad_arguments"
            sim.fault("potentiostat", "nan_samples", 0)
            time.sleep(0.3)
            assert ctl.reset_interlock(operator="ana", reason="cable fixed")["state"] == "armed"
            armed = until(sub, safety("armed"))
            assert armed.fields["reason"] == "reset" and armed.fields["operator"] == "ana"
            # Trip again and stop the daemon with the trip latched.
            sim.fault("potentiostat", "nan_samples", 10**9)
            until(sub, safety("tripped"))
            latched = tmp_path / "state" / "safety" / "latched.json"
            end = time.monotonic() + 5  # written just after the message went out
            while not latched.exists():
                assert time.monotonic() < end
                time.sleep(0.02)
            assert daemon.stop() == 0
        sim.fault("potentiostat", "nan_samples", 0)
        with (
            run_daemon(tmp_path, external(sim)) as daemon,
            Subscriber(daemon.publish, ["safety", "run"]) as sub,
            Control(daemon.control) as ctl,
        ):
            time.sleep(0.3)
            assert links_up(ctl)["safety_state"] == "tripped"
            # Published with every status tick while tripped.
            again = until(sub, safety("tripped"), timeout_s=5)
            assert again.fields["reason"] == "non_finite"
            # No current can be commanded: the run is aborted at its first step.
            ctl.start_run({"name": "plate", "steps": [PLATE]})
            until(sub, lambda m: m.topic == "run" and m.fields["state"] == "aborted")
            time.sleep(0.3)
            ctl.reset_interlock(operator="ben", reason="checked after restart")
            assert ctl.status()["safety_state"] == "armed"
            assert daemon.stop() == 0
        commands = [c["kind"] for c in sim.truth()["potentiostat"]["commands"]]
    assert not (tmp_path / "state" / "safety" / "latched.json").exists()
    events = [(e["event"], e.get("reason"), e.get("operator")) for e in audit(tmp_path)]
    assert events[0] == ("trip", "non_finite", None)
    assert events[1][0] == "reset_refused"
    assert events[2] == ("reset", "cable fixed", "ana")
    assert ("restored", "non_finite", None) in events
    assert events[-2] == ("reset", "checked after restart", "ben")
    assert events[-1] == ("trip", "shutdown", None)  # audited, but not latched
    assert "OPEN_CIRCUIT" in commands


def test_a_stalled_link_trips_and_an_ignored_open_circuit_raises_the_alarm(
    tmp_path: Path,
) -> None:
    with (
        run_sim(tmp_path / "sim", SIM) as sim,
        run_daemon(tmp_path, external(sim)) as daemon,
        Subscriber(daemon.publish, ["safety", "ec"]) as sub,
        Control(daemon.control) as ctl,
    ):
        time.sleep(0.3)
        links_up(ctl)
        ctl.start_run({"name": "plate", "steps": [PLATE]})
        until(sub, current_flows)
        sim.fault("potentiostat", "ignore_open_circuit", True)
        sim.fault("potentiostat", "stall_s", 2.0)
        trip = until(sub, safety("tripped"))
        assert trip.fields["reason"] == "sample_gap" and trip.arrays["sample"].shape == (0,)
        # The stall ends; the instrument acknowledges OPEN_CIRCUIT but the current flows.
        alarm = until(sub, safety("alarm"), timeout_s=10)
        assert alarm.fields["reason"] == "sample_gap"
        assert not alarm.fields["open_circuit_confirmed"]
        time.sleep(1.0)
        sim.fault("potentiostat", "ignore_open_circuit", False)
        back = until(sub, safety("tripped"), timeout_s=10)
        assert back.fields["open_circuit_confirmed"]
        commands = [c["kind"] for c in sim.truth()["potentiostat"]["commands"]]
        assert daemon.stop() == 0
    assert commands.count("OPEN_CIRCUIT") >= 5, "re-sent while unconfirmed"
    assert [e["event"] for e in audit(tmp_path)][:2] == ["trip", "alarm"]


def test_the_instruments_watchdog_is_the_second_line_when_the_daemon_freezes(
    tmp_path: Path,
) -> None:
    with (
        run_sim(tmp_path / "sim", SIM) as sim,
        run_daemon(tmp_path, external(sim)) as daemon,
        Subscriber(daemon.publish, ["ec"]) as sub,
        Control(daemon.control) as ctl,
    ):
        time.sleep(0.3)
        links_up(ctl)
        ctl.start_run({"name": "plate", "steps": [PLATE]})
        until(sub, current_flows)
        # The whole daemon, native threads included, stops: no interlock, no heartbeat.
        os.kill(daemon.proc.pid, signal.SIGSTOP)
        try:
            time.sleep(3.0)  # beyond the simulator's 2 s watchdog
            truth = sim.truth()
        finally:
            os.kill(daemon.proc.pid, signal.SIGCONT)
        t = sim.truth_samples()
        assert daemon.stop() == 0
    assert truth["potentiostat"]["watchdog_trips"] >= 1
    assert t["current_a"][-1] == 0 and t["mode"][-1] == 0


def test_opsims_safety_watch_exits_non_zero_on_a_trip(tmp_path: Path) -> None:
    with (
        run_sim(tmp_path / "sim", SIM) as sim,
        run_daemon(tmp_path, external(sim)) as daemon,
        Control(daemon.control) as ctl,
    ):
        links_up(ctl)
        marker = tmp_path / "paged"
        cmd = [sys.executable, "-m", "opsims.cli", "safety-watch", "--publish", daemon.publish,
               "--control", daemon.control]  # fmt: skip
        watch = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        hook = subprocess.Popen([*cmd, "--on-trip", f"touch {marker}"], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)  # fmt: skip
        time.sleep(1.5)  # both subscribed
        sim.fault("potentiostat", "nan_samples", 1)
        out, err = watch.communicate(timeout=20)
        hook.communicate(timeout=20)
        assert daemon.stop() == 0
    assert watch.returncode == 1, err
    assert "armed" in out and "tripped" in out and "non_finite" in out
    assert hook.returncode == 0 and marker.exists()
