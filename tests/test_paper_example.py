"""The paper's study end to end (examples/paper), at the quick preset: opsimsd and the
simulator as processes, seven runs, the analysis by the opsims commands, and every
check against the simulator's ground truth passing."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from support.simproc import ROOT

SCRIPT = ROOT / "examples" / "paper" / "run_paper.py"


def test_the_paper_is_reproduced_on_the_simulator(tmp_path: Path) -> None:
    out = tmp_path / "paper"
    done = subprocess.run([sys.executable, str(SCRIPT), "--out", str(out), "--preset", "quick"],
                          capture_output=True, text=True, timeout=900)  # fmt: skip
    assert (out / "summary.json").is_file(), done.stdout + done.stderr
    summary = json.loads((out / "summary.json").read_text())
    failed = [c for c in summary["checks"] if not c["passed"]]
    assert not failed, failed
    assert done.returncode == 0, done.stdout + done.stderr
    names = {c["name"] for c in summary["checks"]}
    # The claims the study makes, each a check of its own.
    assert "critical current density (µA µm⁻²)" in names
    assert {f"Table 1 {t}: {k}" for t in ("J=0.04 (I)", "J=0.04 (II)", "J=0.1")
            for k in ("R_GB", "R_Int", "C_GB", "C_Int")} <= names  # fmt: skip
    assert "Fig. 5(iii): Na columns of the failed region" in names
    assert any(n.startswith("Fig. 4: ZrO2-") for n in names)
    report = (out / "report.md").read_text()
    for figure in ("fig1c-maps", "fig4", "fig5-J0.1", "fig6-J0.04", "ccd"):
        assert f"figures/{figure}.png" in report and (out / "figures" / f"{figure}.png").is_file()
    # The runs are ordinary opsimsd runs: their journals replay into the live cubes.
    replay = subprocess.run([sys.executable, "-m", "opsims.cli", "replay",
                             str(out / "state" / "runs" / summary["runs"][-1]["run_id"]),
                             "--json"], capture_output=True, text=True, timeout=300)  # fmt: skip
    assert json.loads(replay.stdout)["identical"] is True
    # ... and their NeXus exports analyse exactly as the runs themselves.
    failed_run = out / "state" / "runs" / next(r["run_id"] for r in summary["runs"]
                                                if r["name"] == "J=0.1")  # fmt: skip
    nxs = tmp_path / "failed.nxs"
    export = [sys.executable, "-m", "opsims.cli", "export", str(failed_run), "--to", str(nxs)]
    subprocess.run(export, check=True, capture_output=True, timeout=300)
    profiles = []
    for source in (failed_run, nxs):
        done = subprocess.run([sys.executable, "-m", "opsims.cli", "profile", str(source),
                               "--roi-um=-8:8,-8:8", "--json"],
                              capture_output=True, text=True, timeout=300)  # fmt: skip
        assert done.returncode == 0, done.stderr
        profiles.append(json.loads(done.stdout)["profiles"])
    assert profiles[0] == profiles[1]
