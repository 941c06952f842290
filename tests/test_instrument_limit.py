"""The instrument's own step limit: ``SET_CURRENT`` with a voltage limit makes the
potentiostat end the step at the first sample with |Ewe| at or beyond it, as EC-Lab's
firmware does, and say so with ``EVENT limit_reached``.

Against the real simulator at 1000x with the cell's default depletion spike (5 V to 13 V
within about a second of cell time, while the samples travel in batches of 20 s of cell
time), a strip with a 5 V limit ends at 5 V: the host's 10 V interlock never trips.
"""

from __future__ import annotations

import math
import struct
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from opsims import Acquisition, CommandRefused
from opsims.link import potentiostat as wire
from opsims.link.potentiostat import ControlMode, EventCode, Kind, PotentiostatClient, ReplyCode
from opsims.sim.cell import Cell, CellConfig
from opsims.sim.faults import DetectorFaults, Faults, PotentiostatFaults
from opsims.sim.potentiostat import PotentiostatConfig, SimPotentiostat
from opsims.sim.timebase import Timebase
from support.simproc import SimProcess, default_document, merge, run_sim, small_raster

ACCELERATION = 1000.0
PERIOD_S = 1.0  # the instrument's sample period, cell time
SIM = merge(
    small_raster(nx=16, ny=8),
    {"sim": {"acceleration": ACCELERATION, "potentiostat": {"sample_period_s": PERIOD_S},
             "specimen": {"total_rate_hz": 1000.0}}},
)  # fmt: skip
PLATE_A, PLATE_S = -4e-8, 1800.0  # 30 min of plating, cell time
STRIP_A = 4e-8
LIMIT_V = 5.0
SAFETY_V = 10.0  # the interlock's default Ewe limit
COUNTER = 1 << 32  # the simulated potentiostat's counter width


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimProcess]:
    with run_sim(tmp_path_factory.mktemp("sim"), SIM) as s:
        yield s


class Pump:
    """Samples and events of an acquisition, gathered while the test waits. Events are
    taken before samples, so a sample queued before an event is in hand with it."""

    def __init__(self, acq: Acquisition) -> None:
        self.acq = acq
        self.events: list[dict[str, Any]] = []
        self.batches: list[dict[str, npt.NDArray[Any]]] = []
        #: The ticks received by the time each event was taken, by the event's index.
        self.seen_ticks: list[int] = []

    def run(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            self.acq.wait(min(left, 0.02))
            self.acq.kick()
            events = self.acq.take_events()
            batch = self.acq.take_samples()
            if batch["tick"].size:
                self.batches.append(batch)
            self.events += events
            newest = int(self.batches[-1]["tick"][-1]) if self.batches else -1
            self.seen_ticks += [newest] * len(events)

    def until(self, want: Callable[[dict[str, Any]], bool], timeout_s: float) -> int:
        """The index of the first event that ``want`` accepts."""
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            self.run(0.02)
            for i, e in enumerate(self.events):
                if want(e):
                    return i
        raise AssertionError(f"no such event; got {self.events}")

    def samples(self) -> dict[str, npt.NDArray[Any]]:
        names = ("host_ns", "tick", "ewe_v", "current_a", "mode")
        return {n: np.concatenate([b[n] for b in self.batches]) for n in names}


def is_limit(e: dict[str, Any]) -> bool:
    return bool(e["kind"] == "instrument_event" and e["code"] == EventCode.LIMIT_REACHED)


def test_a_strip_into_depletion_ends_at_the_instruments_limit(sim: SimProcess) -> None:
    assert sim.control("new_region")["ok"]
    cell = CellConfig(**default_document()["sim"].get("cell", {}))
    acq = Acquisition(potentiostat={"host": "127.0.0.1", "port": sim.ports["potentiostat"]},
                      interlock={}, clock_time_scale=ACCELERATION)  # fmt: skip
    try:
        pump = Pump(acq)
        pump.until(lambda e: e["kind"] == "link" and e["state"] == "up", 10.0)
        acq.set_current(PLATE_A)
        pump.run(PLATE_S / ACCELERATION)
        acq.set_current(STRIP_A, limit_v=LIMIT_V)
        at = pump.until(is_limit, 10.0)
        pump.run(0.3)  # the open circuit shows in the samples
        st = acq.interlock_state()
        truth = sim.truth()
        t = sim.truth_samples()
    finally:
        acq.stop(open_circuit=False)
    event = pump.events[at]
    assert set(event) == {"kind", "host_ns", "tick", "code", "name", "message"}
    assert event["name"] == "limit_reached" and event["message"].endswith(">= 5 V")
    assert [e["kind"] for e in pump.events].count("instrument_event") == 1
    # The instrument ended the step: no trip, the interlock armed and untouched.
    assert not [e for e in pump.events if e["kind"] == "safety"], pump.events
    assert st is not None
    assert (st["state"], st["trips"], st["changes"]) == ("armed", 0, 0)
    got = pump.samples()
    assert np.abs(got["ewe_v"]).max() < SAFETY_V
    # The event's tick is the sample that reached the limit, which came before it: taken
    # as it was (galvanostatic, stripping), and every sample after it is open circuit.
    assert pump.seen_ticks[at] >= event["tick"]
    (i,) = np.flatnonzero(got["tick"] == event["tick"])
    assert abs(got["ewe_v"][i]) >= LIMIT_V
    assert got["mode"][i] == ControlMode.GALVANOSTATIC and got["current_a"][i] > 0
    assert i + 1 < got["tick"].size
    assert np.all(got["mode"][i + 1 :] == ControlMode.OPEN_CIRCUIT)
    assert np.all(got["current_a"][i + 1 :] == 0.0)
    # The ground truth: one limit event at that tick, which is the first sample of the
    # strip at or beyond the limit; no OPEN_CIRCUIT came from the host.
    (limit,) = [e for e in truth["potentiostat"]["events"] if e["name"] == "limit_reached"]
    assert limit["code"] == EventCode.LIMIT_REACHED and limit["message"] == event["message"]
    assert limit["tick"] % COUNTER == event["tick"] % COUNTER
    strip = t["current_a"] > 0
    first = int(np.argmax(strip & (np.abs(t["ewe_v"]) >= LIMIT_V)))
    assert t["tick"][first] == limit["tick"] and t["true_s"][first] == limit["true_s"]
    assert t["ewe_v"][first] == got["ewe_v"][i]
    commands = [c["kind"] for c in truth["potentiostat"]["commands"] if c["kind"] != "HEARTBEAT"]
    assert commands[-2:] == ["SET_CURRENT", "SET_CURRENT"]
    # The circuit opened at the limit sample's time, not at the end of its batch: the cell
    # relaxes from there at zero current (the next sample is one relaxation step down,
    # not further up the spike), and it is at zero current in the state taken then.
    assert np.all(t["mode"][first + 1 :] == ControlMode.OPEN_CIRCUIT)
    assert np.all(t["current_a"][first + 1 :] == 0.0)
    step, rest = math.exp(-PERIOD_S / cell.relax_s), cell.rest_potential_v
    relaxed = rest + (t["ewe_v"][first] - rest) * step
    assert t["ewe_v"][first + 1] == pytest.approx(relaxed, rel=1e-3)
    assert np.abs(t["ewe_v"]).max() < SAFETY_V
    (state,) = [s for s in truth["potentiostat"]["states"] if s["tick"] == limit["tick"]]
    assert state["current_a"] == 0.0 and state["mode"] == "OPEN_CIRCUIT"


def test_a_bad_limit_is_refused_out_of_range_and_changes_nothing(sim: SimProcess) -> None:
    acq = Acquisition(potentiostat={"host": "127.0.0.1", "port": sim.ports["potentiostat"]})
    try:
        deadline = time.monotonic() + 10.0
        while acq.link_states().get("potentiostat") != "up" and time.monotonic() < deadline:
            acq.wait(0.02)
        for limit_v in (-1.0, -1e-9, math.nan, math.inf, -math.inf):
            with pytest.raises(CommandRefused, match="voltage limit") as refused:
                acq.set_current(STRIP_A, limit_v=limit_v)
            assert refused.value.args[1] == ReplyCode.OUT_OF_RANGE
        # Over the compliance, the current is refused whatever the limit.
        with pytest.raises(CommandRefused, match="outside") as refused:
            acq.set_current(1e-3, limit_v=LIMIT_V)
        assert refused.value.args[1] == ReplyCode.OUT_OF_RANGE
        status = acq.read_status()
        assert status["mode"] == ControlMode.OPEN_CIRCUIT and status["setpoint_a"] == 0.0
    finally:
        acq.stop(open_circuit=False)


def test_the_python_link_sends_the_limit_and_a_later_set_current_replaces_it(
    sim: SimProcess,
) -> None:
    with PotentiostatClient("127.0.0.1", sim.ports["potentiostat"]) as c:
        # Payload lengths: 8 or 16 bytes only.
        for n in (0, 9, 15, 17, 24):
            assert c.command(Kind.SET_CURRENT, b"\0" * n).code == ReplyCode.BAD_PAYLOAD
        assert c.set_current(PLATE_A, limit_v=math.nan).code == ReplyCode.OUT_OF_RANGE
        # A limit plating never reaches, replaced at once by one its first sample reaches
        # (|Ewe|: plating's negative Ewe counts).
        assert c.set_current(PLATE_A, limit_v=12.0).ok
        assert c.set_current(PLATE_A, limit_v=0.01).ok
        c.poll(0.2)
        (event,) = [e for e in c.events if e.code == EventCode.LIMIT_REACHED]
        assert event.message.endswith(">= 0.01 V")
        s = c.take_samples()
        (i,) = np.flatnonzero(s["tick"] == event.tick)
        assert s["mode"][i] == ControlMode.GALVANOSTATIC and s["ewe_v"][i] <= -0.01
        assert np.all(s["mode"][i + 1 :] == ControlMode.OPEN_CIRCUIT)
        assert c.status().mode == ControlMode.OPEN_CIRCUIT
        # Limit 0 is none, as is the 8-byte form: plating goes on.
        assert c.set_current(PLATE_A, limit_v=0.0).ok
        c.poll(0.05)
        assert c.set_current(PLATE_A).ok
        c.poll(0.05)
        assert c.status().mode == ControlMode.GALVANOSTATIC
        assert [e.code for e in c.events] == [EventCode.LIMIT_REACHED]
        assert c.open_circuit().ok


def test_set_current_payloads_and_the_event_code() -> None:
    assert wire.pack_current(-4e-8) == struct.pack("<d", -4e-8)
    assert wire.pack_current(STRIP_A, LIMIT_V) == struct.pack("<dd", STRIP_A, LIMIT_V)
    assert wire.unpack_current(wire.pack_current(-4e-8)) == (-4e-8, None)
    assert wire.unpack_current(wire.pack_current(STRIP_A, LIMIT_V)) == (STRIP_A, LIMIT_V)
    event = wire.Event(7, EventCode.LIMIT_REACHED, "|Ewe| 5.031 V >= 5 V")
    assert wire.Event.unpack(event.pack()) == event
    assert int(EventCode.LIMIT_REACHED) == 4


# --- the instrument alone, stepped by hand ------------------------------------------


def instrument(**faults: Any) -> SimPotentiostat:
    config = PotentiostatConfig(sample_period_s=PERIOD_S, watchdog_s=600.0)
    cell = Cell(CellConfig(), np.random.default_rng(1))
    pot_faults = PotentiostatFaults(**faults)
    return SimPotentiostat(config, cell, Timebase(), Faults(DetectorFaults(), pot_faults))


def mode(pot: SimPotentiostat) -> ControlMode:
    return pot._status().mode


def command(pot: SimPotentiostat, kind: Kind, payload: bytes = b"") -> wire.Reply:
    return pot._handle(wire.Frame(kind, 0, payload))


def test_the_limit_ends_one_control_once_and_a_nan_sample_never_ends_it() -> None:
    pot = instrument(nan_samples=1)
    assert command(pot, Kind.SET_CURRENT, wire.pack_current(PLATE_A, 0.01)).ok
    pot._advance(PERIOD_S)  # a NaN sample: no stop
    assert mode(pot) == ControlMode.GALVANOSTATIC and not pot.truth.events
    pot._advance(2 * PERIOD_S)
    assert mode(pot) == ControlMode.OPEN_CIRCUIT
    (event,) = pot.truth.events
    assert (event["name"], event["true_s"]) == ("limit_reached", 2 * PERIOD_S)
    assert event["tick"] == pot.truth.samples[-1][1]
    pot._advance(10 * PERIOD_S)
    assert len(pot.truth.events) == 1
    # After OPEN_CIRCUIT, a plain SET_CURRENT runs with no limit.
    assert command(pot, Kind.SET_CURRENT, wire.pack_current(PLATE_A, 0.01)).ok
    assert command(pot, Kind.OPEN_CIRCUIT).ok
    assert command(pot, Kind.SET_CURRENT, wire.pack_current(PLATE_A)).ok
    pot._advance(20 * PERIOD_S)
    assert mode(pot) == ControlMode.GALVANOSTATIC and len(pot.truth.events) == 1


def test_a_limit_whose_open_circuit_is_ignored_still_ends_the_step_once() -> None:
    pot = instrument(ignore_open_circuit=True)
    assert command(pot, Kind.SET_CURRENT, wire.pack_current(PLATE_A, 0.01)).ok
    pot._advance(5 * PERIOD_S)
    # The faulty instrument says it ended the step but the current flows on.
    assert [e["name"] for e in pot.truth.events] == ["limit_reached"]
    assert mode(pot) == ControlMode.GALVANOSTATIC
    assert all(s[3] != 0.0 for s in pot.truth.samples)
    ignored = [e for e in pot.faults.log.entries if e["fault"] == "ignored_open_circuit"]
    assert len(ignored) == 1 and ignored[0]["why"] == "limit"
