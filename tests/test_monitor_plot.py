"""`opsims monitor --plot-file`: the live plot view against a real daemon and simulator,
headless (Agg), written as a PNG with its two panels."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from support.simproc import merge, run_daemon, run_sim, small_raster

pytest.importorskip("matplotlib")
from PIL import Image  # matplotlib depends on pillow

SIM = merge(
    small_raster(nx=32, ny=16, dwell_ticks=20_000_000, frames_per_slice=1),
    {"sim": {"acceleration": 10.0, "potentiostat": {"sample_period_s": 0.1},
             "specimen": {"total_rate_hz": 30000.0}}},
)  # fmt: skip


def test_plot_file_has_the_cycle_graph_and_the_depth_profile(tmp_path: Path) -> None:
    with run_sim(tmp_path / "sim", SIM) as sim:
        daemon_doc = merge(SIM, {
            "daemon": {"simulator": "external"},
            "links": {"detector": {"port": sim.ports["detector"]},
                      "potentiostat": {"port": sim.ports["potentiostat"]}},
            "sim": {"control_port": sim.ports["control"]},
        })  # fmt: skip
        with run_daemon(tmp_path, daemon_doc) as daemon:
            png = tmp_path / "monitor.png"
            started = time.monotonic()
            done = subprocess.run(
                [sys.executable, "-m", "opsims.cli", "monitor", "--publish", daemon.publish,
                 "--control", daemon.control, "--plot-file", str(png), "--duration", "4",
                 "--refresh", "0.5"],
                capture_output=True, text=True, timeout=60,
            )  # fmt: skip
            assert done.returncode == 0, done.stderr
            assert time.monotonic() - started < 30
    assert png.stat().st_size > 0
    with Image.open(png) as im:
        assert im.format == "PNG" and im.size == (900, 700)
        info = json.loads(im.text["Description"])  # type: ignore[attr-defined]
    assert info["panels"] == ["cycle graph", "depth profile"]
    assert info["ec_samples"] > 0
    assert info["profile_slices"] > 0
    assert len(info["species"]) == 9
