"""The README's main command, shortened: `opsims demo` starts opsimsd (which starts the
simulator), runs a protocol through the control socket and watches the stream; it exits
0 only if the run completed, the published counters balance and the run's journal
replays into the daemon's cubes."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from support.simproc import DEFAULT_CONFIG

SHORT = """
name = "short demo"
[[steps]]
kind = "rest"
duration_s = 5
[[steps]]
kind = "constant_current"
current_a = -4e-8
duration_s = 180
[[steps]]
kind = "strip"
current_a = 4e-8
depletion_v = 5.0
[[steps]]
kind = "eis"
points_per_decade = 3
"""


def test_demo_runs_an_experiment_through_the_daemon(tmp_path: Path) -> None:
    protocol = tmp_path / "short.toml"
    protocol.write_text(SHORT)
    cmd = [sys.executable, "-m", "opsims.cli", "demo", "--config", str(DEFAULT_CONFIG),
           "--protocol", str(protocol), "--acceleration", "300"]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    out = done.stdout
    assert re.search(r"started run-\d{8}-\d{6}: short demo", out), out[-2000:]
    # The strip ends on depletion: the protocol's 5 V stop, or, as the accelerated spike
    # outruns it, the native interlock at 10 V followed by the demo's operator reset.
    assert ("strip finished" in out and "|Ewe|" in out) or (
        "SAFETY tripped: ewe_high" in out and "operator reset" in out
    ), out[-3000:]
    assert "Na+ ion map" in out and "depth profile" in out
    assert "counters balance" in out
    # The run was recorded, and its journal replays into the daemon's cubes.
    assert re.search(r"recorded: \d+ MB of journal .* its cubes are identical", out), out[-2000:]
    assert "open circuit confirmed" in done.stderr
