"""The analyses live from the ZeroMQ stream and on what opsimsd recorded: real simulator
and daemon processes. A live `opsims cycle` and `opsims eis fit` watch a run; afterwards
the same commands on the run directory and on its NeXus export must agree with them."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from opsims.client import Control
from support.simproc import merge, run_daemon, run_sim, small_raster
from support.stream import links_up

SIM = merge(
    small_raster(nx=16, ny=8, dwell_ticks=200_000_000, frames_per_slice=4),
    {"sim": {"acceleration": 50.0, "potentiostat": {"sample_period_s": 1.0},
             "specimen": {"total_rate_hz": 2000.0}}},
)  # fmt: skip
PROTOCOL = {
    "name": "plate, strip, impedance",
    "steps": [
        {"kind": "rest", "duration_s": 20},
        {"kind": "constant_current", "current_a": -4e-8, "duration_s": 600},
        {"kind": "strip", "current_a": 4e-8, "depletion_v": 5.0, "max_duration_s": 600},
        {"kind": "eis", "f_start_hz": 7e6, "f_stop_hz": 1, "points_per_decade": 8},
    ],
}
WIDE = {"safety": {"ewe_min_v": -15.0, "ewe_max_v": 15.0}}


def opsims(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "opsims.cli", *args, "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip


def result(proc: subprocess.Popen[str], timeout_s: float = 120) -> dict[str, Any]:
    out, err = proc.communicate(timeout=timeout_s)
    assert proc.returncode == 0, err[-2000:]
    doc: dict[str, Any] = json.loads(out)
    return doc


def fitted(doc: dict[str, Any]) -> list[dict[str, dict[str, float]]]:
    return [s["parameters"] for s in doc["spectra"]]


def test_live_analyses_agree_with_the_recorded_run(tmp_path: Path) -> None:
    with run_sim(tmp_path / "sim", SIM) as sim:
        daemon_cfg = merge(merge(SIM, WIDE), {
            "daemon": {"simulator": "external"},
            "links": {"detector": {"port": sim.ports["detector"]},
                      "potentiostat": {"port": sim.ports["potentiostat"]}},
            "sim": {"control_port": sim.ports["control"]},
        })  # fmt: skip
        with run_daemon(tmp_path, daemon_cfg) as daemon, Control(daemon.control) as ctl:
            links_up(ctl)
            live = ["--publish", daemon.publish, "--timeout", "120"]
            cycle = opsims("cycle", "--live", *live)
            eis = opsims("eis", "fit", "--live", "--sweeps", "1", *live)
            for proc in (cycle, eis):
                assert proc.stderr is not None
                line = proc.stderr.readline()  # once subscribed
                assert "listening on" in line, line + proc.stderr.read()[-2000:]
            time.sleep(0.5)  # the subscriptions reach the publisher
            run_id = ctl.start_run(PROTOCOL)["run_id"]
            live_cycle, live_eis = result(cycle), result(eis)
            assert daemon.stop() == 0
    state = str(tmp_path / "state")
    recorded_cycle = result(opsims("cycle", run_id, "--state-dir", state))
    recorded_eis = result(opsims("eis", "fit", run_id, "--state-dir", state))
    nxs = tmp_path / "run.nxs"
    subprocess.run([sys.executable, "-m", "opsims.cli", "export", run_id, "--to", str(nxs),
                    "--state-dir", state], check=True, timeout=120)  # fmt: skip
    exported_eis = result(opsims("eis", "fit", str(nxs)))

    # The cycle graph: the same region, judged the same way, live and recorded.
    verdicts = [(r["verdict"], r["depleted"], r["sei_step"]) for r in live_cycle["regions"]]
    assert verdicts == [(r["verdict"], r["depleted"], r["sei_step"])
                        for r in recorded_cycle["regions"]]  # fmt: skip
    # At the paper's CCD the plating cycles and the strip runs into depletion.
    assert verdicts == [("cycled", True, False)], verdicts
    # The impedance sweep: the same points, so the same fit, live, recorded and exported.
    assert len(recorded_eis["spectra"]) == len(exported_eis["spectra"]) == 1
    for a, b in ((live_eis, recorded_eis), (recorded_eis, exported_eis)):
        for pa, pb in zip(fitted(a), fitted(b), strict=True):
            assert pa.keys() == pb.keys()
            for k in pa:
                assert abs(pa[k]["value"] - pb[k]["value"]) <= 1e-9 * abs(pb[k]["value"]), k
