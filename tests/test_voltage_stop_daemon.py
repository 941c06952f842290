"""A strip to depletion at 1000x real time, through opsimsd: the spike from the emptied
reservoir outruns any host (a sample batch holds 20 s of the cell), so the instrument
ends the step at the protocol's 5 V itself. The run goes on to its next step, and the
safety interlock, whose 10 V limit the spike would cross, never trips."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from opsims.client import Control
from opsims.export import read_records
from support.simproc import merge, run_daemon, small_raster

FAST = merge(small_raster(nx=16, ny=8, dwell_ticks=200_000_000), {
    "sim": {"acceleration": 1000.0, "potentiostat": {"sample_period_s": 1.0},
            "specimen": {"total_rate_hz": 2e4}},
})  # fmt: skip
PROTOCOL = {
    "name": "plate, strip to depletion, impedance",
    "steps": [
        {"kind": "constant_current", "current_a": -4e-8, "duration_s": 1800},
        {"kind": "strip", "current_a": 4e-8, "depletion_v": 5.0, "max_duration_s": 600},
        {"kind": "eis", "f_start_hz": 7e6, "f_stop_hz": 100, "points_per_decade": 3},
    ],
}


def test_the_instrument_ends_a_strip_at_its_depletion_voltage(tmp_path: Path) -> None:
    with run_daemon(tmp_path, FAST) as daemon, Control(daemon.control, timeout_s=10) as ctl:
        deadline = time.monotonic() + 30
        while any(v["state"] != "up" for v in ctl.status()["links"].values()):
            assert time.monotonic() < deadline
            time.sleep(0.1)
        run_id = ctl.start_run(PROTOCOL)["run_id"]
        deadline = time.monotonic() + 60
        while (status := ctl.status())["run"]["state"] == "running":
            assert time.monotonic() < deadline, status["run"]
            time.sleep(0.1)
        assert status["run"]["state"] == "finished", status["run"]
        assert status["safety_state"] == "armed"
        assert daemon.stop() == 0
    records = read_records(tmp_path / "state" / "runs" / run_id)
    finished = {s["step"]: s for s in records.logs["step"] if s["state"] == "finished"}
    assert finished[1]["reason"] == "depletion", finished[1]
    assert finished[2]["reason"] == "sweep"  # the impedance after the strip ran
    assert records.logs["step"][-1]["reason"] == "complete"
    assert not records.logs.get("safety")
    s = records.samples
    strip = s[(s["current_a"] > 0) & (s["mode"] == 1)]
    assert strip["ewe_v"].max() >= 5.0  # the sample that reached the limit...
    assert np.abs(s["ewe_v"]).max() < 10.0  # ...and nothing near the safety limit
    notes = [n for n in records.logs.get("note", []) if n.get("name") == "limit_reached"]
    assert len(notes) == 1 and int(notes[0]["tick"]) == int(strip["tick"][-1])
