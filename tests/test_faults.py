"""Faults injected into a running opsimsd (docs/simulator.md, "Faults"), with the
simulator and the daemon as real processes on loopback. For each fault the daemon keeps
running (its process is alive and its control socket answers), says what happened (the
topic, counter, audit line or journal entry the docs promise), and loses nothing it had
accepted: the run's journal replays into the live cubes, the counters balance, and every
sample published during the run is in the journal.

Covered elsewhere and not repeated here: a full disk under a run
(test_journal_daemon.py::test_a_full_disk_raises_the_alarm_and_follows_the_policy), the
journal's recovery after SIGKILL (test_journal_daemon.py::
test_sigkill_mid_run_is_recovered_at_the_next_start), a trip latched across an orderly
restart, NaN samples and a stalled potentiostat link with an ignored open circuit
(test_safety.py), both links dropped at once and back (test_daemon.py::
test_simulator_that_disconnects_and_comes_back), the link faults against a bare core
(test_sim_detector.py) and the publisher's own per-subscriber queues (test_publisher.py::
test_a_stalled_subscriber_neither_slows_publishing_nor_the_others)."""

from __future__ import annotations

import itertools
import json
import signal
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt
import pytest
import zmq
from opsims import wire
from opsims.client import Control, ControlError, Subscriber
from opsims.export import read_records
from opsims.replay import Replay, find_run, replay, run_info
from opsims.wire import Message
from support.simproc import DaemonProcess, SimProcess, merge, run_daemon, run_sim, small_raster
from support.stream import links_up

T = TypeVar("T")

ACCELERATION = 50.0
SAMPLE_PERIOD_S = 0.1  # of the cell's time: 500 samples per wall second at 50x
SIM = merge(
    small_raster(nx=32, ny=16, dwell_ticks=200_000_000, frames_per_slice=4),
    {"sim": {"acceleration": ACCELERATION,
             "potentiostat": {"sample_period_s": SAMPLE_PERIOD_S},
             "specimen": {"total_rate_hz": 20_000.0}}},
)  # fmt: skip
#: Open circuit all along: nothing is commanded, so a lost link trips nothing.
REST = {"name": "rest", "steps": [{"kind": "rest", "duration_s": 100_000}]}
#: Current flows until the run is stopped.
PLATE = {"name": "plate", "steps": [
    {"kind": "constant_current", "current_a": -4e-8, "duration_s": 100_000}]}  # fmt: skip
#: A step of the simulated potentiostat's counter (1 µs ticks) between two samples.
SAMPLE_TICKS = round(SAMPLE_PERIOD_S / 1e-6)


def external(sim: SimProcess, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Daemon settings that attach to `sim` (its control port takes the fault commands)."""
    return merge(merge(SIM, {
        "daemon": {"simulator": "external", "cube_rate_hz": 20.0},
        "links": {"detector": {"port": sim.ports["detector"]},
                  "potentiostat": {"port": sim.ports["potentiostat"]}},
        "sim": {"control_port": sim.ports["control"]},
    }), extra or {})  # fmt: skip


class Stream:
    """A subscriber whose every message is kept, read while a test waits for one."""

    def __init__(self, sub: Subscriber) -> None:
        self.sub = sub
        self.messages: list[Message] = []

    def until(self, want: Callable[[Message], bool], what: str, timeout_s: float = 20.0) -> Message:
        """The next message `want` accepts (every message up to it is kept)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            msg = self.sub.recv(0.1)
            if msg is not None:
                self.messages.append(msg)
                if want(msg):
                    return msg
        raise AssertionError(f"timed out waiting for {what}")

    def pump(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            msg = self.sub.recv(0.05)
            if msg is not None:
                self.messages.append(msg)

    def topic(self, name: str) -> list[Message]:
        return [m for m in self.messages if m.topic == name]


def wait_for(probe: Callable[[], T | None], what: str, timeout_s: float = 20.0) -> T:
    """`probe()`'s first value that is not None (or False), polled until the deadline."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = probe()
        if value is not None and value is not False:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def alive(daemon: DaemonProcess, ctl: Control) -> dict[str, Any]:
    """The daemon is still there and answers: its status now."""
    assert daemon.proc.poll() is None, daemon.log()
    status = ctl.status()
    assert status["uptime_s"] > 0
    return status


def counters_when(ctl: Control, ok: Callable[[dict[str, int]], bool], what: str) -> dict[str, int]:
    def probe() -> dict[str, int] | None:
        c: dict[str, int] = ctl.status()["counters"]
        return c if ok(c) else None

    return wait_for(probe, what)


def balanced(c: dict[str, int]) -> None:
    """Every decoded event is binned, rejected (by reason) or still pending."""
    assert c["events"] == c["binned"] + c["rejected_total"] + c["pending"], c


def link_event(link: str, state: str) -> Callable[[Message], bool]:
    return lambda m: m.topic == "link" and m.fields["link"] == link and m.fields["state"] == state


def safety(*states: str) -> Callable[[Message], bool]:
    return lambda m: m.topic == "safety" and m.fields["state"] in states


def current_flows(m: Message) -> bool:
    return m.topic == "ec" and bool(np.any(m.arrays["samples"]["current_a"] != 0))


def run_ended(run_id: str) -> Callable[[Message], bool]:
    return lambda m: (m.topic == "run" and m.fields["run_id"] == run_id
                      and m.fields["step"] == -1 and m.fields["state"] != "started")  # fmt: skip


def closed_run(ctl: Control, state_dir: Path, run_id: str) -> Path:
    """Stop the run and wait until its record is closed."""
    ctl.stop_run(operator="tester", reason="fault test done")
    return closed(state_dir, run_id)


def closed(state_dir: Path, run_id: str) -> Path:
    """The run's folder, once its record is closed (the run ended)."""
    run_dir = find_run(run_id, state_dir)

    def done() -> bool:
        return bool(run_info(run_dir)["state"] != "recording")

    wait_for(done, f"run {run_id} closed")
    return run_dir


def replays_identically(run_dir: Path) -> Replay:
    """The journal, fed into a new core, gives the live cubes and counters."""
    result = replay(run_dir)
    assert result.live_digest is not None, run_info(run_dir)
    assert result.identical, (result.digest["counters"], result.live_digest["counters"])
    assert not result.report["corrupt"] and not result.report["gaps"], result.report
    balanced(result.digest["counters"])
    return result


def published_samples_are_in_the_journal(stream: Stream, run_dir: Path, run_id: str) -> None:
    """Every `ec` sample published under the run's id is in its journal, as published."""
    journal = read_records(run_dir).samples
    ec = np.concatenate([m.arrays["samples"] for m in stream.topic("ec")
                         if m.fields["run_id"] == run_id])  # fmt: skip
    assert len(journal) > 0 and len(ec) > 0
    # What was queued before the recording began goes out just before it; a sample
    # arriving in between can still carry the run's tag.
    early = ec["tick"] < journal["tick"][0]
    assert early.sum() <= 2, early.sum()
    ec = ec[~early]
    at = np.minimum(np.searchsorted(journal["tick"], ec["tick"]), len(journal) - 1)
    np.testing.assert_array_equal(journal["tick"][at], ec["tick"])
    for name in ("ewe_v", "current_a", "host_ns", "mode", "flags"):
        np.testing.assert_array_equal(journal[name][at], ec[name], err_msg=name)


def missing_from_journal(sim: SimProcess, run_dir: Path) -> dict[str, npt.NDArray[Any]]:
    """The samples the instrument queued for the daemon, within the run's journal, that
    the journal does not hold (the simulator's truth, by tick)."""
    journal = read_records(run_dir).samples
    truth = sim.truth_samples()
    span = (truth["tick"] >= journal["tick"][0]) & (truth["tick"] <= journal["tick"][-1])
    missing = span & truth["sent"] & ~np.isin(truth["tick"], journal["tick"])
    # Nothing the journal holds is made up: each is one the instrument took.
    assert np.isin(journal["tick"], truth["tick"]).all()
    return {k: v[missing] for k, v in truth.items()}


def audit(state_dir: Path) -> list[dict[str, Any]]:
    path = state_dir / "safety" / "audit.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def faults_logged(sim: SimProcess) -> list[dict[str, Any]]:
    faults: list[dict[str, Any]] = sim.truth()["faults"]
    return faults


# --- the detector link ----------------------------------------------------------------


def test_a_dropped_detector_link_reconnects_with_backoff_and_counts_the_loss(
    tmp_path: Path,
) -> None:
    backoff_s = 0.3
    with (
        run_sim(tmp_path / "sim", SIM) as sim,
        run_daemon(
            tmp_path, external(sim, {"daemon": {"reconnect_initial_s": backoff_s}})
        ) as daemon,
        Subscriber(daemon.publish, ["link", "status", "ec", "run", "safety"]) as sub,
        Control(daemon.control) as ctl,
    ):
        stream = Stream(sub)
        links_up(ctl)
        run_id = ctl.start_run(REST)["run_id"]
        counters_when(ctl, lambda c: c["binned"] > 1000, "binning")
        sim.fault("detector", "disconnect", 1)
        down = stream.until(link_event("detector", "down"), "the detector link down")
        connecting = stream.until(link_event("detector", "connecting"), "a new attempt")
        up = stream.until(link_event("detector", "up"), "the detector link up")
        # The first attempt waits the configured backoff.
        waited_s = (connecting.fields["event_ns"] - down.fields["event_ns"]) * 1e-9
        assert waited_s >= backoff_s * 0.9, waited_s
        assert down.fields["reason"], down.fields  # why, for people
        binned_at_up = ctl.status()["counters"]["binned"]
        # Binning goes on after the reconnect, and status publishes the loss.
        c = counters_when(ctl, lambda c: c["binned"] > binned_at_up + 1000, "binning again")
        lost = stream.until(
            lambda m: m.topic == "status" and m.fields["drops"]["link_frames_lost"] > 0,
            "the loss in a status message",
        )
        status = alive(daemon, ctl)
        truth = sim.truth()["detector"]
        run_dir = closed_run(ctl, tmp_path / "state", run_id)
        stream.until(run_ended(run_id), "the run's end")
        assert daemon.stop() == 0

    # One loss interval, exactly the frames made while no host was connected.
    assert truth["frames_unsent"] > 0 and truth["connections"] == 2
    assert c["link_loss_intervals"] == 1, c
    assert c["link_frames_lost"] == truth["frames_unsent"], (c, truth["frames_unsent"])
    assert lost.fields["drops"]["link_frames_lost"] == truth["frames_unsent"]
    assert c["link_gap"] > 0  # the line open at the loss is rejected, not mis-binned
    assert (c["detector_disconnects"], c["detector_connects"]) == (1, 2)
    # Status says what the link went through (publishing.md, `status.links`).
    detector = status["links"]["detector"]
    assert detector["state"] == "up" and detector["since_ns"] == up.fields["event_ns"]
    assert detector["errors"] == 1 and detector["last_error"] == down.fields["reason"]
    assert status["links"]["potentiostat"]["errors"] == 0
    # The potentiostat and the interlock did not notice.
    after = [m.fields for m in stream.topic("link") if m.seq >= down.seq]
    assert all(f["link"] == "detector" for f in after), after
    assert status["safety_state"] == "armed"
    assert not [m for m in stream.topic("safety") if m.fields["state"] != "armed"]
    assert up.seq == down.seq + 2  # down, connecting, up: nothing in between

    result = replays_identically(run_dir)
    assert result.digest["counters"]["link_frames_lost"] == truth["frames_unsent"]
    published_samples_are_in_the_journal(stream, run_dir, run_id)


def test_corrupt_truncated_and_garbage_frames_are_counted_and_binning_goes_on(
    tmp_path: Path,
) -> None:
    corrupt, garbage, truncated = 3, 5, 2
    with (
        run_sim(tmp_path / "sim", SIM) as sim,
        run_daemon(tmp_path, external(sim)) as daemon,
        Subscriber(daemon.publish, ["link", "status", "events", "ec"]) as sub,
        Control(daemon.control) as ctl,
    ):
        stream = Stream(sub)
        links_up(ctl)
        run_id = ctl.start_run(REST)["run_id"]
        before = counters_when(ctl, lambda c: c["binned"] > 1000, "binning")
        before_links = ctl.status()["links"]
        # One frame each, in this order (a frame takes the first fault still pending).
        sim.fault("detector", "corrupt_frames", corrupt)
        sim.fault("detector", "garbage_records", garbage)
        sim.fault("detector", "truncate_frames", truncated)

        def all_fired() -> bool:
            return bool(sim.control("status")["faults_injected"] == corrupt + garbage + truncated)

        wait_for(all_fired, "every fault injected")
        counters_when(
            ctl, lambda c: c["link_frames_corrupt"] > 0 and c["link_bytes_skipped"] > 0, "counts"
        )
        at_faults = ctl.status()["counters"]
        c = counters_when(ctl, lambda c: c["binned"] > at_faults["binned"] + 1000, "binning on")
        published = stream.until(
            lambda m: m.topic == "status" and m.fields["drops"]["link_frames_corrupt"] > 0,
            "corrupt frames in a status message",
        )
        events = stream.until(
            lambda m: m.topic == "events" and m.fields["totals"]["link_bytes_skipped"] > 0,
            "skipped bytes in an events message",
        )
        status = alive(daemon, ctl)
        faults = [f["fault"] for f in faults_logged(sim)]
        run_dir = closed_run(ctl, tmp_path / "state", run_id)
        assert daemon.stop() == 0

    assert faults.count("corrupt_frame") == corrupt
    assert faults.count("garbage_records") == garbage
    assert faults.count("truncate_frame") == truncated
    # Dropped as corrupt (CRC), skipped to the next magic (a cut frame), the garbage
    # records counted and the rest of their frames binned.
    assert c["link_frames_corrupt"] >= 1 and c["link_bytes_skipped"] > 0, c
    assert c["malformed"] + c["unknown_channel"] > before["malformed"] + before["unknown_channel"]
    assert c["link_loss_intervals"] >= 1  # the frames that did not arrive whole
    balanced(c)
    assert published.fields["drops"]["link_frames_corrupt"] >= 1
    balanced(events.fields["totals"])
    # The link never went down: the receiver resynchronised in the stream.
    assert c["detector_disconnects"] == 0 and c["potentiostat_disconnects"] == 0
    assert status["links"] == before_links, (status["links"], before_links)
    assert status["links"]["detector"]["state"] == "up"
    # The journal holds the damaged reads as received, and replays to the same cubes.
    result = replays_identically(run_dir)
    assert result.digest["counters"]["link_frames_corrupt"] >= c["link_frames_corrupt"]
    published_samples_are_in_the_journal(stream, run_dir, run_id)


def test_clock_jumps_on_both_links_are_detected_and_binning_goes_on(tmp_path: Path) -> None:
    # 10 s of the instruments' time each, 0.2 s of the host's at 50x: far beyond the
    # loopback's arrival jitter, so the clock models must call it a jump.
    detector_jump = 10**13  # 1 ps ticks
    potentiostat_jump = 10**7  # 1 µs ticks
    with (
        run_sim(tmp_path / "sim", SIM) as sim,
        run_daemon(tmp_path, external(sim)) as daemon,
        Subscriber(daemon.publish, ["status", "ec", "safety", "link"]) as sub,
        Control(daemon.control) as ctl,
    ):
        stream = Stream(sub)
        links_up(ctl)
        run_id = ctl.start_run(REST)["run_id"]

        def clocks_trusted() -> dict[str, Any] | None:
            st: dict[str, Any] = ctl.status()
            clocks = st["clocks"]
            ok = all(clocks[k]["fitted"] and clocks[k]["points"] >= 32 for k in clocks)
            return st if ok and st["counters"]["binned"] > 1000 else None

        before = wait_for(clocks_trusted, "both clock models fitted")
        assert all(link["state"] == "up" for link in before["links"].values())
        sim.fault("detector", "clock_jump_ticks", detector_jump)
        sim.fault("potentiostat", "clock_jump_ticks", potentiostat_jump)

        def jumped(m: Message) -> bool:
            if m.topic != "status":
                return False
            clocks = m.fields["clocks"]
            return all(clocks[k]["jumps"] > before["clocks"][k]["jumps"] for k in clocks)

        published = stream.until(jumped, "both jumps in a status message")
        binned = ctl.status()["counters"]["binned"]
        c = counters_when(ctl, lambda c: c["binned"] > binned + 1000, "binning after the jumps")
        stream.pump(0.5)  # samples after the jump
        status = alive(daemon, ctl)
        faults = faults_logged(sim)
        run_dir = closed_run(ctl, tmp_path / "state", run_id)
        assert daemon.stop() == 0

    logged = {f["link"]: f for f in faults if f["fault"] == "clock_jump"}
    assert logged["detector"]["ticks"] == detector_jump
    assert logged["potentiostat"]["ticks"] == potentiostat_jump
    assert set(published.fields["clocks"]) == {"detector", "potentiostat"}
    # The detector's raster is marker-based: no line lost, no frame lost.
    assert c["lines_bad"] - before["counters"]["lines_bad"] <= 1, c
    assert c["link_frames_lost"] == 0 and c["link_frames_corrupt"] == 0
    balanced(c)
    # A forward jump is no step back in time: the interlock stays armed, and the samples'
    # host times never go back.
    assert c["samples_tick_backwards"] == 0
    assert status["safety_state"] == "armed" and status["links"] == before["links"]
    assert c["detector_disconnects"] == 0 and c["potentiostat_disconnects"] == 0
    ec = np.concatenate([m.arrays["samples"] for m in stream.topic("ec")])
    assert np.all(np.diff(ec["host_ns"]) >= 0)
    # Unwrapped through the jump: every step is one sample period, one is the jump too.
    steps = np.diff(ec["tick"].astype(np.int64))
    period = np.abs(steps - SAMPLE_TICKS) <= SAMPLE_TICKS * 1e-3  # the clock drifts
    jump = np.abs(steps - potentiostat_jump - SAMPLE_TICKS) <= SAMPLE_TICKS * 1e-3
    assert jump.sum() == 1 and (jump | period).all(), steps[~period]
    replays_identically(run_dir)
    published_samples_are_in_the_journal(stream, run_dir, run_id)


# --- the potentiostat link ------------------------------------------------------------


def test_a_dropped_potentiostat_link_at_open_circuit_reconnects_and_trips_nothing(
    tmp_path: Path,
) -> None:
    with (
        run_sim(tmp_path / "sim", SIM) as sim,
        run_daemon(tmp_path, external(sim)) as daemon,
        Subscriber(daemon.publish, ["link", "ec", "safety", "status"]) as sub,
        Control(daemon.control) as ctl,
    ):
        stream = Stream(sub)
        links_up(ctl)
        run_id = ctl.start_run(REST)["run_id"]
        stream.until(lambda m: m.topic == "ec" and m.fields["run_id"] == run_id, "samples")
        sim.fault("potentiostat", "disconnect", 1)
        down = stream.until(link_event("potentiostat", "down"), "the potentiostat link down")
        up = stream.until(link_event("potentiostat", "up"), "the potentiostat link up")
        # Samples flow again, from after the reconnect.
        back = stream.until(
            lambda m: m.topic == "ec" and m.arrays["samples"]["host_ns"][0] > up.host_ns,
            "samples after the reconnect",
        )
        stream.pump(0.3)
        status = alive(daemon, ctl)
        run_dir = closed_run(ctl, tmp_path / "state", run_id)
        (fault,) = [f for f in faults_logged(sim) if f["fault"] == "disconnect"]
        missing = missing_from_journal(sim, run_dir)
        assert daemon.stop() == 0

    assert down.fields["reason"], down.fields
    assert back.fields["run_id"] == run_id  # the run went on through the loss
    c = status["counters"]
    assert (c["potentiostat_disconnects"], c["potentiostat_connects"]) == (1, 2), c
    potentiostat = status["links"]["potentiostat"]
    assert potentiostat["state"] == "up" and potentiostat["since_ns"] == up.fields["event_ns"]
    assert potentiostat["errors"] == 1 and potentiostat["last_error"] == down.fields["reason"]
    # No current flowed: a lost link is no trip (safety.md, `link_lost`).
    assert status["safety_state"] == "armed"
    assert not [m for m in stream.topic("safety") if m.fields["state"] != "armed"]
    info = run_info(run_dir)
    assert info["end"]["reason"] == "stop", info["end"]
    replays_identically(run_dir)
    published_samples_are_in_the_journal(stream, run_dir, run_id)
    # The only samples the instrument sent and the journal lacks were in flight when the
    # instrument closed the connection.
    assert np.all(missing["true_s"] <= fault["true_s"]), (missing["true_s"], fault)


def test_a_dropped_potentiostat_link_while_current_flows_trips_and_opens_on_reconnect(
    tmp_path: Path,
) -> None:
    with (
        run_sim(tmp_path / "sim", SIM) as sim,
        run_daemon(tmp_path, external(sim)) as daemon,
        Subscriber(daemon.publish, ["link", "ec", "safety", "run"]) as sub,
        Control(daemon.control) as ctl,
    ):
        stream = Stream(sub)
        links_up(ctl)
        run_id = ctl.start_run(PLATE)["run_id"]
        stream.until(current_flows, "current")
        sim.fault("potentiostat", "disconnect", 1)
        trip = stream.until(safety("tripped", "alarm"), "the trip")
        aborted = stream.until(run_ended(run_id), "the run aborted")
        stream.until(link_event("potentiostat", "up"), "the potentiostat link up")
        # On reconnection the latched trip opens the circuit first thing; an open-circuit
        # sample confirms it.
        confirmed = stream.until(
            lambda m: safety("tripped")(m) and m.fields["open_circuit_confirmed"],
            "open circuit confirmed",
        )
        status = alive(daemon, ctl)
        truth = sim.truth()
        samples = sim.truth_samples()
        run_dir = closed(tmp_path / "state", run_id)
        # Link up and open circuit shown: an operator may clear it.
        reset = ctl.reset_interlock(operator="ana", reason="link checked")
        assert reset["state"] == "armed" and reset["cleared"] == "link_lost"
        assert daemon.stop() == 0

    assert trip.fields["reason"] == "link_lost", trip.fields
    assert trip.arrays["sample"].shape == (0,)  # no offending sample
    assert not trip.fields["open_circuit_confirmed"]
    assert aborted.fields["state"] == "aborted" and aborted.fields["reason"] == "safety"
    assert confirmed.fields["reason"] == "link_lost"
    assert status["safety_state"] == "tripped"
    links = [(m.fields["link"], m.fields["state"]) for m in stream.topic("link")]
    at = links.index(("potentiostat", "down"))
    assert ("potentiostat", "up") in links[at:], links
    # The instrument heard OPEN_CIRCUIT on the new connection, and the current stopped.
    (fault,) = [f for f in truth["faults"] if f["fault"] == "disconnect"]
    after = [c["kind"] for c in truth["potentiostat"]["commands"] if c["true_s"] > fault["true_s"]]
    assert after and after[0] == "OPEN_CIRCUIT", after
    assert samples["current_a"][-1] == 0 and samples["mode"][-1] == 0
    # The run's record: the trip, and the samples and reads up to its end.
    records = read_records(run_dir)
    reasons = [s["reason"] for s in records.logs["safety"] if s["state"] != "armed"]
    assert reasons and set(reasons) == {"link_lost"}, reasons
    replays_identically(run_dir)
    published_samples_are_in_the_journal(stream, run_dir, run_id)


# --- the interlock ------------------------------------------------------------------


def test_a_latched_trip_survives_sigkill_and_holds_until_reset(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    with run_sim(tmp_path / "sim", SIM) as sim:
        with (
            run_daemon(tmp_path, external(sim)) as daemon,
            Subscriber(daemon.publish, ["safety", "run", "ec"]) as sub,
            Control(daemon.control) as ctl,
        ):
            stream = Stream(sub)
            links_up(ctl)
            plate_id = ctl.start_run(PLATE)["run_id"]
            stream.until(current_flows, "current")
            sim.fault("potentiostat", "nan_samples", 10**9)  # every sample from now on
            trip = stream.until(safety("tripped", "alarm"), "the trip")
            stream.until(run_ended(plate_id), "the run aborted")
            latched = state_dir / "safety" / "latched.json"
            wait_for(latched.exists, "the trip persisted")
            plate_dir = closed(state_dir, plate_id)
            # A run that moves no current may go on while tripped: the kill lands in it.
            rest_id = ctl.start_run(REST)["run_id"]
            rest_dir = find_run(rest_id, state_dir)
            # While tripped, `safety` goes out (and into the run's record) every status.
            noted = stream.until(
                lambda m: safety("tripped", "alarm")(m) and m.host_ns > trip.host_ns,
                "the trip, published during the rest run",
            )

            def durable() -> bool:
                recording = ctl.status()["journal"]["recording"]
                return bool(recording and recording["run_id"] == rest_id
                            and recording["durable_host_ns"] > noted.host_ns)  # fmt: skip

            wait_for(durable, "the rest run on disk past that")
            daemon.proc.send_signal(signal.SIGKILL)
            daemon.proc.wait(timeout=10)
        assert trip.fields["reason"] == "non_finite"
        killed_at = sim.control("status")["true_s"]

        with (
            run_daemon(tmp_path, external(sim)) as daemon,
            Subscriber(daemon.publish, ["safety", "run", "ec"]) as sub,
            Control(daemon.control) as ctl,
        ):
            stream = Stream(sub)
            # Latched before the links are up, and after.
            assert ctl.status()["safety_state"] == "tripped"
            status = links_up(ctl)
            assert status["safety_state"] == "tripped"
            assert status["journal"]["recovered_at_start"] == [rest_id]
            again = stream.until(safety("tripped"), "the restored trip, published")
            assert again.fields["reason"] == "non_finite"
            # A run that would move current: SET_CURRENT is refused unsent, the run aborts.
            refused_id = ctl.start_run(PLATE)["run_id"]
            end = stream.until(run_ended(refused_id), "the refused run's end")
            assert (end.fields["state"], end.fields["reason"]) == ("aborted", "abort"), end.fields
            # Why, for people: the gate's message (not the exception's arguments).
            detail = end.fields["detail"]
            assert "SET_CURRENT refused" in detail and not detail.endswith("None)"), detail
            # NaN still comes: the reset is refused too.
            with pytest.raises(ControlError) as refused:
                ctl.reset_interlock(operator="ana", reason="too early")
            assert refused.value.code == "refused", refused.value
            assert "non-finite" in refused.value.message, refused.value
            sim.fault("potentiostat", "nan_samples", 0)

            def reset() -> dict[str, Any] | None:
                try:
                    return ctl.reset_interlock(operator="ana", reason="cell checked")
                except ControlError as e:
                    assert e.code == "refused", e
                    return None

            assert wait_for(reset, "a reset accepted")["state"] == "armed"
            # Now current may flow again.
            after_id = ctl.start_run(PLATE)["run_id"]
            stream.until(current_flows, "current after the reset")
            status = alive(daemon, ctl)
            assert status["run"]["run_id"] == after_id and status["run"]["state"] == "running"
            assert status["safety_state"] == "armed"
            truth = sim.truth()
            assert daemon.stop() == 0

    # Nothing commanded current between the restart and the reset.
    commands = [(c["true_s"], c["kind"]) for c in truth["potentiostat"]["commands"]]
    after_kill = [kind for t, kind in commands if t > killed_at]
    assert after_kill[0] == "OPEN_CIRCUIT", after_kill[:5]  # first thing on the new link
    assert after_kill.count("SET_CURRENT") == 1  # the run after the reset
    events = [(e["event"], e.get("reason")) for e in audit(state_dir)]
    assert events[0] == ("trip", "non_finite")
    assert ("restored", "non_finite") in events
    restored = events.index(("restored", "non_finite"))
    assert ("reset_refused", "too early") in events[restored:]
    assert ("reset", "cell checked") in events[restored:]
    # The run the trip aborted is whole; the run the kill cut was recovered, its record
    # holding the latched trip.
    assert run_info(plate_dir)["end"]["reason"] == "safety"
    replays_identically(plate_dir)
    assert run_info(rest_dir)["state"] == "recovered"
    logged = read_records(rest_dir).logs["safety"]
    assert logged and {(s["state"], s["reason"]) for s in logged} == {("tripped", "non_finite")}


def test_an_open_circuit_the_instrument_ignores_escalates_to_the_alarm(tmp_path: Path) -> None:
    # A compliance below the plating current: the first sample with current trips.
    limits = {"safety": {"compliance_a": 1e-8, "confirm_timeout_s": 0.5,
                         "resend_interval_s": 0.1},
              "daemon": {"status_interval_s": 0.25}}  # fmt: skip
    with (
        run_sim(tmp_path / "sim", SIM) as sim,
        run_daemon(tmp_path, external(sim, limits)) as daemon,
        Subscriber(daemon.publish, ["safety", "run", "ec"]) as sub,
        Control(daemon.control) as ctl,
    ):
        stream = Stream(sub)
        links_up(ctl)
        sim.fault("potentiostat", "ignore_open_circuit", True)
        run_id = ctl.start_run(PLATE)["run_id"]
        trip = stream.until(safety("tripped", "alarm"), "the trip")
        alarm = stream.until(safety("alarm"), "the alarm")
        writes = ctl.status()["counters"]["open_circuit_now"]
        # Still in alarm, published with every status tick, re-sending all along, and
        # the current still flows.
        for _ in range(3):
            stream.until(safety("alarm"), "the alarm again")
        stream.until(current_flows, "current still flowing")
        status = alive(daemon, ctl)
        assert status["safety_state"] == "alarm"
        assert status["counters"]["open_circuit_now"] > writes
        with pytest.raises(ControlError) as refused:
            ctl.reset_interlock(operator="ana", reason="not yet")
        assert refused.value.code == "refused", refused.value
        # The instrument obeys again: the next re-send opens the circuit.
        sim.fault("potentiostat", "ignore_open_circuit", False)
        back = stream.until(
            lambda m: safety("tripped")(m) and m.fields["open_circuit_confirmed"], "confirmed"
        )

        def reset() -> dict[str, Any] | None:
            try:
                return ctl.reset_interlock(operator="ana", reason="instrument replaced")
            except ControlError as e:
                assert e.code == "refused", e
                return None

        assert wait_for(reset, "a reset accepted")["state"] == "armed"
        status = alive(daemon, ctl)
        truth = sim.truth()
        run_dir = closed(tmp_path / "state", run_id)
        assert daemon.stop() == 0
        log = daemon.log()

    assert trip.fields["reason"] == "current_compliance", trip.fields
    (bad,) = trip.arrays["sample"]
    assert abs(bad["current_a"]) > 1e-8
    assert alarm.fields["reason"] == "current_compliance"
    assert not alarm.fields["open_circuit_confirmed"]
    assert alarm.fields["alarm_host_ns"] - alarm.fields["trip_host_ns"] >= 0.5e9
    assert back.fields["reason"] == "current_compliance"
    assert "CRITICAL" in log and "ALARM" in log
    ignored = [f for f in truth["faults"] if f["fault"] == "ignored_open_circuit"]
    assert len(ignored) >= 5, len(ignored)  # re-sent while unconfirmed
    events = [e["event"] for e in audit(tmp_path / "state")]
    assert events[:3] == ["trip", "alarm", "reset_refused"], events
    assert events[-2:] == ["reset", "trip"], events  # the last: the shutdown's, audited
    assert set(events[2:-2]) == {"reset_refused"}, events
    ended = [m.fields for m in stream.topic("run") if m.fields["step"] == -1]
    assert ended[-1]["state"] == "aborted" and ended[-1]["reason"] == "safety"
    # The run ended at its first sample with current; that sample is in its record.
    replays_identically(run_dir)
    records = read_records(run_dir)
    assert bad["tick"] in records.samples["tick"]
    assert [s["reason"] for s in records.logs["safety"]] == ["current_compliance"]


# --- the stream ---------------------------------------------------------------------


def test_a_subscriber_that_never_reads_costs_nobody_anything(tmp_path: Path) -> None:
    # Many cube updates: the stalled subscriber's queues (the daemon's send high-water
    # mark of 1000 messages, the kernel's buffers) fill within seconds.
    busy = {"daemon": {"cube_rate_hz": 50.0, "events_rate_hz": 50.0}}
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
    stalled = ctx.socket(zmq.SUB)
    stalled.setsockopt(zmq.RCVHWM, 1)
    stalled.setsockopt(zmq.RCVBUF, 4096)
    stalled.setsockopt(zmq.LINGER, 0)
    stalled.setsockopt(zmq.SUBSCRIBE, b"")
    try:
        with (
            run_sim(tmp_path / "sim", SIM) as sim,
            run_daemon(tmp_path, external(sim, busy)) as daemon,
            Subscriber(daemon.publish) as sub,
            Control(daemon.control) as ctl,
        ):
            stalled.connect(daemon.publish)
            stream = Stream(sub)
            links_up(ctl)
            stream.until(lambda m: m.topic == "status", "the stream")
            run_id = ctl.start_run(REST)["run_id"]
            stream.pump(6.0)
            status = alive(daemon, ctl)
            run_dir = closed_run(ctl, tmp_path / "state", run_id)
            stream.until(run_ended(run_id), "the run's end")
            # The stalled subscriber reads at last: the head of the stream, then a gap.
            seqs = drain(stalled, "cube", 2.0)
            assert daemon.stop() == 0
    finally:
        stalled.close(linger=0)

    # The reading subscriber missed nothing: every topic's numbers run without a gap.
    assert sub.gaps == 0 and sub.missed == 0 and sub.restarts == 0
    by_topic: dict[str, list[int]] = defaultdict(list)
    for m in stream.messages:
        by_topic[m.topic].append(m.seq)
    for topic, numbers in by_topic.items():
        assert numbers == list(range(numbers[0], numbers[0] + len(numbers))), topic
    assert len(by_topic["cube"]) > 2000, len(by_topic["cube"])  # load enough to overflow
    # ZeroMQ dropped the stalled subscriber's messages, and only its: the daemon cannot
    # see that (PUB never refuses), so its stats say nothing was refused.
    assert any(b > a + 1 for a, b in itertools.pairwise(seqs)), seqs[:20]
    assert status["publisher"]["refused"] == {}
    # Acquisition went on at full rate: no frame lost, every sample in order.
    c = status["counters"]
    assert c["link_frames_lost"] == 0 and c["samples_dropped"] == 0
    rates = [m.fields["rates"]["samples"] for m in stream.topic("status")
             if m.fields["run"]["run_id"] == run_id]  # fmt: skip
    assert np.median(rates) > 0.7 * ACCELERATION / SAMPLE_PERIOD_S, rates
    assert 0 < status["lags_ns"]["potentiostat"] < 0.5e9
    replays_identically(run_dir)
    published_samples_are_in_the_journal(stream, run_dir, run_id)
    steps = np.diff(read_records(run_dir).samples["tick"].astype(np.int64))
    assert (np.abs(steps - SAMPLE_TICKS) <= SAMPLE_TICKS * 1e-3).all(), "a sample is missing"


def drain(sock: zmq.Socket[bytes], topic: str, seconds: float) -> list[int]:
    """The sequence numbers of `topic` that `sock` receives within `seconds`."""
    seqs: list[int] = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if not sock.poll(50):
            continue
        msg = wire.decode(sock.recv_multipart())
        if msg.topic == topic:
            seqs.append(msg.seq)
    return seqs
