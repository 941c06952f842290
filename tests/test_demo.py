"""The README's main command, shortened: `opsims demo` runs a whole experiment on a real
simulator process and exits 0 only if its counters balance."""

from __future__ import annotations

import subprocess
import sys

from support.simproc import DEFAULT_CONFIG


def test_demo_runs_an_experiment_end_to_end() -> None:
    cmd = [sys.executable, "-m", "opsims.cli", "demo", "--config", str(DEFAULT_CONFIG),
           "--acceleration", "600", "--plate-minutes", "3"]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "impedance before plating: 25 points" in out
    assert "the island is depleted" in out
    assert "impedance after cycling: 25 points" in out
    assert "Na+ ion map" in out and "depth profile" in out
