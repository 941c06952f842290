"""A live operando experiment with no hardware: ``opsims demo``.

It starts ``opsimsd`` on the default configuration (which brings up the simulator),
submits the demo protocol through the control socket — rest, impedance, 30 minutes of
plating at the critical current density, impedance, stripping until the island is
depleted, impedance — at 30x real time, and watches the PUB stream as any client would.
At the end it takes a snapshot of the cubes and shows the Na⁺ ion map and depth profile.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path

import numpy as np

from opsims.announce import wait_for_announcement
from opsims.client import Control, ControlError
from opsims.monitor import ascii_map, watch

OVERRIDES = [
    "sim.potentiostat.sample_period_s=1.0",
    "sim.specimen.total_rate_hz=2e5",
    'daemon.publish="tcp://127.0.0.1:*"',
    'daemon.control="tcp://127.0.0.1:*"',
]


def main(config: Path, protocol: Path, acceleration: float) -> int:
    with open(protocol, "rb") as f:
        steps = tomllib.load(f)
    # A state directory of its own: a trip latched by one demo must not hold the next.
    state = tempfile.mkdtemp(prefix="opsims-demo-")
    cmd = [sys.executable, "-m", "opsims.daemon.main", "--config", str(config),
           "--set", f"sim.acceleration={acceleration}",
           "--set", f"daemon.state_dir={json.dumps(state)}"]  # fmt: skip
    for item in OVERRIDES:
        cmd += ["--set", item]
    daemon = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        endpoints = wait_for_announcement(daemon, "opsimsd")
        print(f"opsims demo: opsimsd publishes on {endpoints['publish']}, control on "
              f"{endpoints['control']}; simulator at {acceleration:g}x real time\n")  # fmt: skip
        with Control(endpoints["control"], timeout_s=10) as ctl:
            _wait_for_links(ctl)
            run_id = ctl.start_run(steps)["run_id"]
            print(f"  started {run_id}: {steps.get('name', protocol.name)}")
            live = watch(endpoints["publish"], until=lambda s: s.run_over)
            if live.run.get("reason") == "safety":
                # The strip ends at the instrument's own 5 V limit; a trip means something
                # else went wrong, and the next demo needs the interlock reset.
                print(f"  the interlock stopped the run; operator reset: {_reset(ctl)}")
            snap = ctl.snapshot("cubes")
            status = ctl.status()
        _summary(snap.fields, snap.arrays)
        c = status["counters"]
        balanced = c["events"] == c["binned"] + c["rejected_total"] + c["pending"]
        verdict = "balance" if balanced else "DO NOT balance"
        print(f"\n  run {live.run.get('state')}: {live.run.get('detail')}; "
              f"{c['events']:,} events, counters {verdict}")  # fmt: skip
        identical = _replayed(Path(state) / "runs" / run_id)
        ended = live.run.get("reason") in ("complete", "safety")
        return 0 if balanced and ended and identical else 1
    except KeyboardInterrupt:
        return 130
    finally:
        daemon.send_signal(signal.SIGTERM)  # the daemon opens the circuit, then exits
        daemon.wait(timeout=30)
        if daemon.stdout is not None:
            daemon.stdout.close()
        shutil.rmtree(state, ignore_errors=True)


def _replayed(run_dir: Path) -> bool:
    """The run's journal, read back into a new pipeline: the same cubes as the daemon's?"""
    from opsims.replay import replay, run_info

    deadline = time.monotonic() + 30
    while run_info(run_dir)["state"] == "recording":  # the journal is still being closed
        if time.monotonic() > deadline:
            print("  the run's journal did not close within 30 s")
            return False
        time.sleep(0.2)
    result = replay(run_dir)
    size = sum(f.stat().st_size for f in (run_dir / "journal").iterdir())
    verdict = "identical to the daemon's" if result.identical else "NOT the daemon's"
    print(f"  recorded: {size / 1e6:.0f} MB of journal ({result.bytes / 1e6:.0f} MB of detector "
          f"link, {result.samples} samples); replayed, its cubes are {verdict}")  # fmt: skip
    return bool(result.identical)


def _reset(ctl: Control) -> dict[str, object]:
    """Reset once the potentiostat shows open circuit (the interlock refuses before)."""
    deadline = time.monotonic() + 10
    while True:
        try:
            return ctl.reset_interlock("opsims demo", "depletion spike of the demo strip")
        except ControlError as e:
            if e.code != "refused" or time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def _wait_for_links(ctl: Control) -> None:
    deadline = time.monotonic() + 30
    while any(link["state"] != "up" for link in ctl.status()["links"].values()):
        if time.monotonic() > deadline:
            raise TimeoutError("the instrument links did not come up")
        time.sleep(0.1)


def _summary(fields: dict[str, object], arrays: dict[str, np.ndarray]) -> None:
    species = list(fields["species"])  # type: ignore[call-overload]
    na = arrays["Na+"].sum(axis=0).astype(np.float64)
    print("\n  Na+ ion map, all depths (the island under the probe):")
    for row in ascii_map(na):
        print("    " + row)
    profile = np.stack([arrays[s].sum(axis=(1, 2)) for s in species], axis=1)
    print(f"\n  depth profile: {profile.shape[0]} slices of {fields['frames_per_slice']} "
          "frames, counts per slice (every 10th):")  # fmt: skip
    print("    slice " + " ".join(f"{n:>7}" for n in species))
    for z in range(0, profile.shape[0], 10):
        print(f"    {z:5d} " + " ".join(f"{v:7d}" for v in profile[z]))
