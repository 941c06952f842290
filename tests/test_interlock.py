"""The native safety interlock against a scripted potentiostat in its own process
(tests/support/fakepot.py, standing in for hardware): exact out-of-limit values trip and
open the circuit, the documented boundary holds, reset is refused while the condition
persists, and Python holding the GIL cannot delay the open-circuit command."""

from __future__ import annotations

import json
import math
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from opsims import Acquisition, CommandRefused, ConfigError, InterlockError

FAKEPOT = Path(__file__).parent / "support" / "fakepot.py"


class FakePot:
    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        # A thread reads its lines: select() on a buffered pipe misses buffered lines.
        self.lines: queue.Queue[dict[str, Any]] = queue.Queue()
        self.kept: list[dict[str, Any]] = []
        threading.Thread(target=self._pump, daemon=True).start()
        self.port = int(self.read(10)["port"])

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        try:
            for line in self.proc.stdout:
                self.lines.put(json.loads(line))
        except (ValueError, OSError):
            return  # the pipe was closed under the read: the test is over

    def read(self, timeout_s: float = 5.0) -> dict[str, Any]:
        try:
            return self.lines.get(timeout=timeout_s)
        except queue.Empty:
            raise AssertionError("the fake potentiostat said nothing") from None

    def sample(self, ewe: float, current: float = 1e-6, mode: int = 1, delay_s: float = 0) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(f"sample {ewe!r} {current!r} {mode} {delay_s}\n")
        self.proc.stdin.flush()

    def _next(self, key: str, value: Any = None, timeout_s: float = 5.0) -> dict[str, Any]:
        """The next line with `key` (equal to `value` if given); lines of other kinds are
        kept for later (a command can be reported before the sample that caused it)."""
        for i, line in enumerate(self.kept):
            if key in line and (value is None or line[key] == value):
                return self.kept.pop(i)
        end = time.monotonic() + timeout_s
        while True:
            line = self.read(max(0.0, end - time.monotonic()))
            if key in line and (value is None or line[key] == value):
                return line
            self.kept.append(line)

    def sent(self) -> int:
        """The send time of the next sample reported."""
        return int(self._next("sent_ns")["sent_ns"])

    def command(self, name: str, timeout_s: float = 5.0) -> int:
        """The receive time of the next command `name`."""
        return int(self._next("cmd", name, timeout_s)["recv_ns"])


@contextmanager
def fakepot() -> Iterator[FakePot]:
    proc = subprocess.Popen([sys.executable, str(FAKEPOT)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        yield FakePot(proc)
    finally:
        proc.kill()
        proc.wait()
        for s in (proc.stdin, proc.stdout):
            if s is not None:
                s.close()


@contextmanager
def armed(pot: FakePot, **limits: Any) -> Iterator[Acquisition]:
    acq = Acquisition(potentiostat={"host": "127.0.0.1", "port": pot.port},
                      interlock=limits, heartbeat_s=60.0, liveness_s=120.0)  # fmt: skip
    try:
        end = time.monotonic() + 10
        while not (st := acq.interlock_state()) or not st["link_up"]:
            assert time.monotonic() < end, "no link"
            time.sleep(0.01)
        yield acq
    finally:
        acq.stop(open_circuit=False)


def wait_state(acq: Acquisition, state: str, timeout_s: float = 5.0) -> dict[str, Any]:
    end = time.monotonic() + timeout_s
    while (st := acq.interlock_state()) is not None and st["state"] != state:
        assert time.monotonic() < end, st
        time.sleep(0.005)
    assert st is not None
    return st


def settle(
    acq: Acquisition, pot: FakePot, ewe: float, current: float = 1e-6, mode: int = 1
) -> None:
    """Send a sample and wait until the acquisition queued it (so it was judged)."""
    pot.sample(ewe, current, mode)
    pot.sent()
    end = time.monotonic() + 5
    while not len(acq.take_samples()["tick"]):
        assert time.monotonic() < end
        acq.wait(0.05)


@pytest.mark.parametrize(
    ("ewe", "reason"),
    [(12.0, "ewe_high"), (-10.5, "ewe_low"), (math.nan, "non_finite"),
     (10.000001, "ewe_high")],
)  # fmt: skip
def test_an_out_of_limit_sample_trips_and_opens_the_circuit(ewe: float, reason: str) -> None:
    with fakepot() as pot, armed(pot) as acq:
        # The documented boundary: the limits themselves are allowed.
        for ok in (10.0, -10.0, 0.0):
            settle(acq, pot, ok)
        assert acq.interlock_state()["state"] == "armed"  # type: ignore[index]
        pot.sample(ewe)
        sent = pot.sent()
        got = pot.command("OPEN_CIRCUIT")
        assert got - sent < 1_000_000_000  # the timing proof is the GIL test below
        st = wait_state(acq, "tripped")
        assert st["reason"] == reason and st["trip_host_ns"] > 0
        assert st["sample"]["ewe_v"] == ewe or math.isnan(ewe)
        assert not st["open_circuit_confirmed"]
        acq.wait(0.2)
        events = [e for e in acq.take_events() if e["kind"] == "safety"]
        assert events[0]["state"] == "tripped" and events[0]["reason"] == reason
        # Latched: no current, no sweep; open circuit always.
        with pytest.raises(CommandRefused, match="interlock is tripped"):
            acq.set_current(1e-6)
        with pytest.raises(CommandRefused):
            acq.start_eis(1e3, 10.0, 5, 0.1)
        acq.open_circuit()


def test_reset_is_refused_while_the_condition_persists() -> None:
    with fakepot() as pot, armed(pot) as acq:
        settle(acq, pot, 12.0)
        wait_state(acq, "tripped")
        with pytest.raises(InterlockError, match="not shown open circuit"):
            acq.reset_interlock("ana", "checked")
        settle(acq, pot, 10.4, 0.0, 0)  # open circuit, but still above the limit
        assert acq.interlock_state()["open_circuit_confirmed"]  # type: ignore[index]
        with pytest.raises(InterlockError, match="persists"):
            acq.reset_interlock("ana", "checked")
        with pytest.raises(InterlockError, match="operator"):
            acq.reset_interlock("", "checked")
        settle(acq, pot, 3.0, 0.0, 0)
        done = acq.reset_interlock("ana", "cell checked")
        assert done["state"] == "armed" and done["cleared"]["reason"] == "ewe_high"
        st = acq.interlock_state()
        assert st is not None and st["state"] == "armed" and st["reason"] == "reset"
        assert st["last_reset"]["operator"] == "ana"
        acq.set_current(1e-6)  # allowed again
        with pytest.raises(InterlockError, match="armed"):
            acq.reset_interlock("ana", "again")


def test_an_unconfirmed_trip_resends_and_raises_the_alarm() -> None:
    with fakepot() as pot, armed(pot, confirm_timeout_s=0.3, resend_interval_s=0.05) as acq:
        settle(acq, pot, 12.0)
        pot.command("OPEN_CIRCUIT")
        # The instrument acknowledges each OPEN_CIRCUIT but the samples show current.
        for _ in range(3):
            pot.command("OPEN_CIRCUIT", timeout_s=1)
        settle(acq, pot, 5.0, 1e-6, 1)
        st = wait_state(acq, "alarm", timeout_s=2)
        assert st["reason"] == "ewe_high" and st["alarm_host_ns"] > st["trip_host_ns"]
        assert st["open_circuit_acknowledged"] and not st["open_circuit_confirmed"]
        settle(acq, pot, 5.0, 0.0, 0)
        st = wait_state(acq, "tripped")
        assert st["open_circuit_confirmed"]


def test_a_latched_trip_holds_before_the_link_and_opens_it_first_thing() -> None:
    with fakepot() as pot:
        acq = Acquisition(potentiostat={"host": "127.0.0.1", "port": pot.port}, interlock={})
        try:
            acq.latch_interlock("ewe_high", "before the restart", 123)
            pot.command("OPEN_CIRCUIT")
            st = acq.interlock_state()
            assert st is not None and st["state"] == "tripped" and st["restored"]
            assert st["trip_host_ns"] == 123
            with pytest.raises(CommandRefused):
                acq.set_current(1e-6)
            with pytest.raises(ValueError, match="unknown trip reason"):
                acq.latch_interlock("bored", "", 0)
        finally:
            acq.stop()


def test_a_trip_latched_at_construction_is_there_before_the_link_starts() -> None:
    """The daemon's restart path: the trip is in the interlock before the link thread
    exists, so no sample can trip it afresh first; the link's first command opens it."""
    with fakepot() as pot:
        acq = Acquisition(potentiostat={"host": "127.0.0.1", "port": pot.port}, interlock={},
                          latched=("ewe_high", "before the restart", 123, None))  # fmt: skip
        try:
            st = acq.interlock_state()
            assert st is not None and st["state"] == "tripped" and st["restored"]
            assert (st["reason"], st["trip_host_ns"]) == ("ewe_high", 123)
            pot.command("OPEN_CIRCUIT")
            with pytest.raises(CommandRefused):
                acq.set_current(1e-6)
        finally:
            acq.stop()
    with pytest.raises(ValueError, match="latched: needs an interlock"):
        Acquisition(latched=("ewe_high", "", 0, None))
    with pytest.raises(ValueError, match="unknown trip reason"):
        Acquisition(interlock={}, latched=("bored", "", 0, None))


@pytest.mark.parametrize(
    ("limits", "message"),
    [({"ewe_min_v": 10.0}, "interlock.ewe_max_v: must be above"),
     ({"ewe_max_v": 30.0}, "interlock.ewe_max_v: must be within"),
     ({"max_sample_gap_s": 0}, "interlock.max_sample_gap_s"),
     ({"compliance_a": -1.0}, "interlock.compliance_a"),
     ({"bogus": 1}, "interlock.bogus: unknown key")],
)  # fmt: skip
def test_invalid_limits_refuse_to_start(limits: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Acquisition(interlock=limits)


def _hog(seconds: float, started: threading.Event) -> None:
    started.set()
    end = time.monotonic() + seconds
    n = 0
    while time.monotonic() < end:  # pure Python: holds the GIL for the switch interval
        n += 1


def test_python_holding_the_gil_cannot_delay_the_open_circuit() -> None:
    """A busy Python thread with a 5 s switch interval owns the GIL while the bad sample
    arrives; the native reader thread still writes OPEN_CIRCUIT within 5 ms."""
    with fakepot() as pot, armed(pot) as acq:
        old = sys.getswitchinterval()
        started = threading.Event()
        hog = threading.Thread(target=_hog, args=(2.0, started))
        try:
            # The sample leaves the fake 0.5 s from now, in the middle of the hog's run.
            pot.sample(12.0, 1e-6, 1, 0.5)
            sys.setswitchinterval(5)
            t0 = time.monotonic_ns()
            hog.start()
            started.wait()
            hog.join()
            t1 = time.monotonic_ns()
        finally:
            sys.setswitchinterval(old)
        sent = pot.sent()
        got = pot.command("OPEN_CIRCUIT")
        assert t0 < sent < got < t1, "the sample and the command both came while hogged"
        latency_ms = (got - sent) / 1e6
        print(f"sample -> OPEN_CIRCUIT at the instrument with the GIL held: {latency_ms:.3f} ms")
        assert latency_ms < 5.0
        assert acq.interlock_state()["reason"] == "ewe_high"  # type: ignore[index]
