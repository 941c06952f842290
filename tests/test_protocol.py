"""Run protocols: parsing with key-path errors, and the runner driving a real simulated
potentiostat through the paper's steps (accelerated)."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from opsims import ConfigError
from opsims.daemon.protocol import Runner, RunProtocol, RunState
from opsims.link.potentiostat import EisRequest, EventCode, PotentiostatClient
from support.simproc import run_sim, small_raster

ACCELERATION = 600.0


def test_series_expand_to_fresh_regions_with_signed_currents() -> None:
    p = RunProtocol.from_mapping(
        {
            "name": "ccd",
            "steps": [
                {"kind": "rest", "duration_s": 10},
                {
                    "kind": "series",
                    "current_densities_ua_um2": [0.02, 0.1],
                    "steps": [
                        {"kind": "constant_current", "sign": -1, "duration_s": 1800},
                        {"kind": "strip", "sign": 1},
                    ],
                },
            ],
        }
    )
    assert [s.kind for s in p.steps] == [
        "rest", "new_region", "constant_current", "strip", "new_region", "constant_current",
        "strip",
    ]  # fmt: skip
    assert [s.current_a for s in p.steps if s.kind != "rest" and s.kind != "new_region"] == (
        pytest.approx([-2e-8, 2e-8, -1e-7, 1e-7])
    )
    assert p.steps[3].duration_s == 600.0 and math.isinf(p.steps[0].duration_s) is False


@pytest.mark.parametrize(
    ("steps", "message"),
    [
        ([], "protocol.steps: a protocol needs at least one step"),
        ([{"kind": "dance"}], "protocol.steps[0].kind: expected one of"),
        ([{"kind": "constant_current", "current_a": -1e-8}], "duration_s: needed unless"),
        ([{"kind": "strip", "current_a": -1e-8}], "stripping takes a positive current"),
        ([{"kind": "rest", "duration_s": 1, "colour": 3}], "protocol.steps[0]: unknown key"),
        ([{"kind": "rest", "duration_s": -1}], "protocol.steps[0].duration_s: must"),
        ([3], "protocol.steps[0]: expected a table"),
        (
            [{"kind": "series", "current_densities_ua_um2": [0.1, -1], "steps": []}],
            "current_densities_ua_um2: expected positive numbers",
        ),
    ],
)
def test_bad_protocols_name_the_key(steps: list[Any], message: str) -> None:
    with pytest.raises(ConfigError, match=None) as e:
        RunProtocol.from_mapping({"steps": steps})
    assert message in str(e.value)


class LinkInstrument:
    """The runner's instrument over the Python end of the potentiostat link."""

    def __init__(self, client: PotentiostatClient) -> None:
        self.client = client

    def set_current(self, amps: float, limit_v: float | None = None) -> None:
        assert self.client.set_current(amps, limit_v).ok

    def open_circuit(self) -> None:
        assert self.client.open_circuit().ok

    def start_eis(self, f_start: float, f_stop: float, ppd: int, amplitude: float) -> None:
        assert self.client.start_eis(EisRequest(f_start, f_stop, ppd, amplitude)).ok


def test_runner_drives_the_paper_protocol(tmp_path: Path) -> None:
    protocol = RunProtocol.from_mapping(
        {
            "name": "plate-strip-eis",
            "steps": [
                {"kind": "rest", "duration_s": 30},
                {"kind": "constant_current", "current_a": -4e-8, "duration_s": 600},
                {"kind": "strip", "current_a": 4e-8, "depletion_v": 5.0},
                {"kind": "eis", "f_start_hz": 7e6, "f_stop_hz": 100, "points_per_decade": 5},
                {
                    "kind": "series",
                    "current_densities_ua_um2": [0.1],
                    "steps": [{"kind": "constant_current", "sign": -1, "duration_s": 120}],
                },
            ],
        }
    )
    override = {**small_raster(), "sim": {"acceleration": ACCELERATION,
                                          "potentiostat": {"sample_period_s": 0.5}}}  # fmt: skip
    events: list[dict[str, Any]] = []
    with (
        run_sim(tmp_path, override) as sim,
        PotentiostatClient("127.0.0.1", sim.ports["potentiostat"]) as client,
    ):
        runner = Runner(LinkInstrument(client), events.append, lambda: _new_region(sim))
        tick_s = client.hello.tick_fs * 1e-15
        unwrap = Unwrapper(client.hello.counter_bits)
        runner.start(protocol)
        deadline = time.monotonic() + 30
        while runner.state == RunState.RUNNING:
            assert time.monotonic() < deadline, events[-3:]
            client.poll(0.05)
            client.heartbeat()
            s = client.take_samples()
            if len(s):
                runner.on_samples(unwrap(s["tick"]) * tick_s, s["ewe_v"], s["current_a"])
            for e in client.events:
                if e.code in (EventCode.EIS_DONE, EventCode.EIS_ABORTED):
                    runner.on_eis_done(aborted=e.code == EventCode.EIS_ABORTED)
            client.events.clear()
        truth = sim.truth()
    assert runner.state == RunState.FINISHED, events[-1]
    assert (events[0]["step"], events[0]["state"]) == (-1, "started")
    assert (events[-1]["step"], events[-1]["state"], events[-1]["reason"]) == (
        -1, "finished", "complete",
    )  # fmt: skip
    finished = [e for e in events if e["step"] >= 0 and e["state"] == "finished"]
    assert [e["kind"] for e in finished] == [
        "rest", "constant_current", "strip", "eis", "new_region", "constant_current",
    ]  # fmt: skip
    assert [e["reason"] for e in finished] == [
        "duration", "duration", "depletion", "sweep", "region", "duration",
    ]  # fmt: skip
    assert finished[1]["params"] == {"current_a": -4e-8, "duration_s": 600.0, "until_v": None,
                                     "until_charge_c": None}  # fmt: skip
    started = [e for e in events if e["step"] >= 0 and e["state"] == "started"]
    durations = [b["device_s"] - a["device_s"] for a, b in zip(started, finished, strict=True)]
    assert durations[0] == pytest.approx(30, abs=1.0)
    assert durations[1] == pytest.approx(600, abs=1.0)
    assert 5 < durations[2] < 120  # a 10-minute island empties within a couple of minutes
    # Open circuit between steps: every step ends with an OPEN_CIRCUIT before the next acts.
    kinds = [c["kind"] for c in truth["potentiostat"]["commands"] if c["kind"] != "HEARTBEAT"]
    assert kinds == ["OPEN_CIRCUIT", "SET_CURRENT", "OPEN_CIRCUIT", "SET_CURRENT",
                     "OPEN_CIRCUIT", "START_EIS", "OPEN_CIRCUIT", "OPEN_CIRCUIT", "SET_CURRENT",
                     "OPEN_CIRCUIT", "OPEN_CIRCUIT"]  # fmt: skip
    cell = truth["potentiostat"]["cell"]
    assert cell["peak_plating_density_ua_um2"] == pytest.approx(0.1)  # the fresh region's


def _new_region(sim: Any) -> None:
    assert sim.control("new_region")["ok"]


class Unwrapper:
    def __init__(self, bits: int) -> None:
        self.bits = bits
        self.base = 0
        self.last: int | None = None

    def __call__(self, ticks: np.ndarray) -> np.ndarray:
        out = np.empty(len(ticks), dtype=np.float64)
        for k, t in enumerate(ticks.astype(np.int64)):
            if self.last is not None and t < self.last:
                self.base += 1 << self.bits
            self.last = int(t)
            out[k] = self.base + int(t)
        return out
