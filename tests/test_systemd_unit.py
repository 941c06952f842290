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


def settings() -> dict[str, list[str]]:
    """The unit's settings, each key with every value it is given (in order)."""
    out: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, value = line.split("=", 1)
            out.setdefault(key.strip(), []).append(value.strip())
    return out


def test_unit_runs_unprivileged_in_a_sandbox_and_keeps_its_state_private() -> None:
    s = {key: values[-1] for key, values in settings().items()}
    # Its own user, never root; no capabilities at all, nor a way to gain any.
    assert s["User"] not in ("", "root", "0") and "DynamicUser" not in s
    assert s["CapabilityBoundingSet"] == "" and s["AmbientCapabilities"] == ""
    for key in ("NoNewPrivileges", "ProtectHome", "PrivateTmp", "PrivateDevices",
                "ProtectKernelTunables", "ProtectKernelModules", "ProtectKernelLogs",
                "ProtectControlGroups", "ProtectClock", "ProtectHostname", "RestrictNamespaces",
                "RestrictRealtime", "RestrictSUIDSGID", "LockPersonality", "RemoveIPC",
                "MemoryDenyWriteExecute"):  # fmt: skip
        assert s[key] == "yes", key
    assert s["ProtectSystem"] == "strict"  # writable: only its state and runtime folders
    assert s["ProtectProc"] == "invisible"
    assert s["SystemCallArchitectures"] == "native"
    assert "@system-service" in s["SystemCallFilter"].split()
    # The daemon's sockets (ZeroMQ over TCP or ipc), the notify socket: nothing else.
    assert set(s["RestrictAddressFamilies"].split()) == {"AF_UNIX", "AF_INET", "AF_INET6"}
    # Runs, journals and the safety record: not written, nor read, by other users.
    assert s["StateDirectory"] == "opsims" and "ReadWritePaths" not in s
    assert int(s["UMask"], 8) & 0o027 == 0o027
    assert int(s["StateDirectoryMode"], 8) & 0o027 == 0
    assert int(s["RuntimeDirectoryMode"], 8) & 0o027 == 0
