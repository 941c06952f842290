"""The one-line JSON announcement with which `opsims-sim` and `opsimsd` say where they
listen, and the reader that a parent process uses to wait for it."""

from __future__ import annotations

import json
import select
import subprocess
import time
from typing import Any


def announce(**endpoints: Any) -> None:
    """Print ``{"event": "listening", ...}`` on stdout, flushed."""
    print(json.dumps({"event": "listening", **endpoints}), flush=True)


def wait_for_announcement(
    proc: subprocess.Popen[str], name: str, timeout_s: float = 60.0
) -> dict[str, Any]:
    """The announcement of a child started with ``stdout=PIPE, text=True``; raises if
    the child exits first or stays silent."""
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], 0.2)
        if ready:
            line = proc.stdout.readline()
            if line:
                msg: dict[str, Any] = json.loads(line)
                if msg.get("event") == "listening":
                    return msg
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited with {proc.returncode} before it was listening")
    raise TimeoutError(f"{name} did not say where it listens within {timeout_s:.0f} s")
