"""The shipped unit passes `systemd-analyze verify`, pointed at this installation's
opsimsd (the unit's own path is where the README installs it)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

UNIT = Path(__file__).resolve().parents[1] / "systemd" / "opsimsd.service"
INSTALLED = "/opt/opsims/venv/bin/opsimsd"


def test_unit_verifies(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze is needed (.ci/run installs systemd)"
    opsimsd = Path(sys.executable).parent / "opsimsd"
    assert opsimsd.exists(), "install the package first (pip install .)"
    text = UNIT.read_text()
    assert INSTALLED in text
    unit = tmp_path / "opsimsd.service"
    unit.write_text(text.replace(INSTALLED, str(opsimsd)))
    done = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True)
    # verify also reports unrelated units of the host; only ours matters here.
    ours = [line for line in done.stderr.splitlines() if "opsimsd" in line]
    assert done.returncode == 0 and not ours, done.stderr


def test_unit_is_notify_with_watchdog_and_sandbox() -> None:
    settings = [line for line in UNIT.read_text().splitlines() if "=" in line]
    lines = dict(line.split("=", 1) for line in settings if not line.startswith("#"))
    assert lines["Type"] == "notify" and int(lines["WatchdogSec"]) > 0
    assert lines["Restart"] == "on-failure" and lines["User"] == "opsims"
    for key in ("NoNewPrivileges", "ProtectHome", "PrivateTmp"):
        assert lines[key] == "yes", key
    assert lines["ProtectSystem"] == "strict"
    assert lines["StateDirectory"] == "opsims"
