"""The ``opsims`` command: talk to a running opsimsd, or run the demo."""

from __future__ import annotations

import argparse
import json
import sys
import tomllib
from pathlib import Path
from typing import Any

import numpy as np

CONTROL = "tcp://127.0.0.1:7411"
PUBLISH = "tcp://127.0.0.1:7410"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="opsims", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="a live operando experiment on the simulator, no hardware")
    demo.add_argument("--config", type=Path, default=Path("config/opsimsd.toml"))
    demo.add_argument("--protocol", type=Path, default=Path("config/protocols/demo.toml"))
    demo.add_argument("--acceleration", type=float, default=30.0,
                      help="simulated s per wall s (default 30)")  # fmt: skip
    commands = {
        "status": "the daemon's status",
        "snapshot": "cubes or profile now",
        "run": "start a run protocol (TOML)",
        "monitor": "a live view of the published stream",
        "safety-watch": "print the safety interlock's state; exit 1 (or run a command) on a trip",
    }
    for name, text in commands.items():
        p = sub.add_parser(name, help=text)
        p.add_argument("--control", default=CONTROL)
        p.add_argument("--publish", default=PUBLISH)
        p.add_argument("--json", action="store_true", help="machine-readable output")
        if name == "run":
            p.add_argument("protocol", type=Path)
            p.add_argument("--wait", action="store_true", help="watch until the run ends")
        if name == "monitor":
            p.add_argument(
                "--plot",
                action="store_true",
                help="a live plot: cycle graph and depth profile (matplotlib)",
            )
            p.add_argument(
                "--plot-file",
                type=Path,
                help="no window: write the plot as PNG to this path at the end",
            )
            p.add_argument("--duration", type=float, help="stop after this many seconds")
            p.add_argument("--refresh", type=float, default=1.0, help="seconds between redraws")
        if name == "safety-watch":
            p.add_argument("--on-trip", metavar="CMD",
                           help="on a trip run CMD (shell) and exit with its status")  # fmt: skip
        if name == "snapshot":
            p.add_argument("--what", choices=("cubes", "profile"), default="profile")
            p.add_argument("--out", type=Path, help="write the arrays to this .npz")
    keys = sub.add_parser("keys", help="CURVE key pairs for the daemon and its clients")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True)
    new = keys_sub.add_parser("new", help="write NAME.key (secret, 0600) and NAME.pub")
    new.add_argument("name", help="the key's name: the client's name in [security]")
    new.add_argument("--dir", type=Path, default=Path("."), help="where (default: here)")
    new.add_argument("--json", action="store_true", help="machine-readable output")
    replay = sub.add_parser("replay", help="rebuild a run's cubes from its journal")
    replay.add_argument("run", help="a run directory, or a run id under STATE_DIR/runs")
    replay.add_argument("--state-dir", type=Path, help="default: $OPSIMS_STATE_DIR or ./state")
    replay.add_argument("--out", type=Path, help="write the cubes and depth profile to .npz")
    replay.add_argument("--json", action="store_true", help="machine-readable output")
    exp = sub.add_parser("export", help="a run as NeXus/HDF5 (.nxs) or a cycle graph (.csv)")
    exp.add_argument("run", help="a run directory, or a run id under STATE_DIR/runs")
    exp.add_argument("--to", type=Path, required=True, help="FILE.nxs, .h5, .csv or .mpt")
    exp.add_argument("--state-dir", type=Path, help="default: $OPSIMS_STATE_DIR or ./state")
    exp.add_argument("--json", action="store_true", help="machine-readable output")
    from opsims.analysis.cycle_cli import add_cycle_parsers
    from opsims.analysis.eis_cli import add_eis_parser
    from opsims.analysis.imaging_cli import add_imaging_parsers
    from opsims.analysis.profile_cli import add_profile_parser

    add_eis_parser(sub)
    add_cycle_parsers(sub)
    add_profile_parser(sub)
    add_imaging_parsers(sub)
    args = parser.parse_args(argv)
    if args.command == "eis":
        return int(args.eis_run(args))
    if args.command in ("cycle", "ccd"):
        return int(args.cycle_run(args))
    if args.command == "profile":
        return int(args.profile_run(args))
    if args.command in ("map", "render3d"):
        return int(args.imaging_run(args))
    if args.command == "replay":
        return _replay(args)
    if args.command == "export":
        return _export(args)
    if args.command == "keys":
        return _keys(args)
    if args.command == "demo":
        from opsims.demo import main as demo_main

        return demo_main(args.config, args.protocol, args.acceleration)
    from opsims.client import ControlError, KeyFileError

    try:
        return {"status": _status, "run": _run, "snapshot": _snapshot,
                "monitor": _monitor, "safety-watch": _safety_watch}[args.command](args)  # fmt: skip
    except ControlError as e:
        print(f"opsims {args.command}: {e.code}: {e.message}", file=sys.stderr)
        return 1
    except KeyFileError as e:  # OPSIMS_CLIENT_KEY / OPSIMS_SERVER_KEY
        print(f"opsims {args.command}: {e}", file=sys.stderr)
        return 2


def _keys(args: argparse.Namespace) -> int:
    from opsims.keys import KeyFileError, new_key_pair

    try:
        secret, public, key = new_key_pair(args.name, args.dir)
    except KeyFileError as e:
        print(f"opsims keys new: {e}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps({"secret_key_file": str(secret), "public_key_file": str(public),
                          "public_key": key}))  # fmt: skip
    else:
        print(f"secret key {secret} (keep it private: mode 0600)")
        print(f"public key {public}: {key}")
    return 0


def _replay(args: argparse.Namespace) -> int:
    from opsims._native import JournalError
    from opsims.replay import find_run, replay

    try:
        result = replay(find_run(args.run, args.state_dir))
    except (FileNotFoundError, ValueError, JournalError) as e:
        print(f"opsims replay: {e}", file=sys.stderr)
        return 2
    if args.out is not None:
        arrays: dict[str, Any] = {
            "profile": result.core.depth_profile(),
            "frames_per_slice": np.int64(result.core.frames_per_slice),
            "frames": np.int64(max(0, result.digest["counters"]["frame_markers"] - 1)),
            **result.cubes(),
        }
        np.savez_compressed(args.out, allow_pickle=False, **arrays)
    summary = result.summary()
    if args.json:
        print(json.dumps(summary, default=str))
    else:
        verdict = {
            True: "identical to the live daemon's",
            False: "DIFFERENT from the live daemon's",
            None: "no live digest to compare (the run did not end)",
        }
        c = summary["counters"]
        print(f"run {summary['run_id']} ({summary['state']}): {result.reads} reads, "
              f"{result.bytes / 1e6:.1f} MB, {c['events']} events, {c['binned']} binned, "
              f"{summary['n_slices']} slices, {result.samples} samples")  # fmt: skip
        print(f"  cubes and counters {verdict[result.identical]}")
        problems = {k: v for k, v in summary["journal"].items() if k in ("corrupt", "gaps") and v}
        if problems or summary["journal"].get("torn_tail"):
            print(f"  journal damage: {problems} torn tail {summary['journal'].get('torn_tail')}")
    return 1 if result.identical is False else 0


def _export(args: argparse.Namespace) -> int:
    from opsims._native import JournalError
    from opsims.export import export
    from opsims.replay import find_run

    try:
        summary = export(find_run(args.run, args.state_dir), args.to)
    except (FileNotFoundError, ValueError, JournalError, OSError) as e:
        print(f"opsims export: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(summary, default=str))
    else:
        rest = ", ".join(f"{k} {v}" for k, v in summary.items() if k not in ("run_id", "file"))
        print(f"run {summary['run_id']} -> {summary['file']}: {rest}")
    return 0


def _status(args: argparse.Namespace) -> int:
    from opsims.client import Control

    with Control(args.control) as ctl:
        status = ctl.status()
    if args.json:
        print(json.dumps(status, default=str))
        return 0
    print(f"opsimsd up {status['uptime_s']:.0f} s; run: {status['run']}")
    for name, link in status["links"].items():
        print(f"  {name:<13} {link['state']}")
    for name, clock in status["clocks"].items():
        print(f"  clock {name:<7} drift {clock.get('drift_ppm', float('nan')):8.2f} ppm  "
              f"residual {clock.get('residual_ns', 0) / 1e3:8.1f} µs")  # fmt: skip
    print("  drops: " + ", ".join(f"{k} {v}" for k, v in status["drops"].items()))
    return 0


def _run(args: argparse.Namespace) -> int:
    from opsims.client import Control
    from opsims.monitor import watch

    with open(args.protocol, "rb") as f:
        protocol: dict[str, Any] = tomllib.load(f)
    with Control(args.control) as ctl:
        run_id = ctl.start_run(protocol)["run_id"]
    print(json.dumps({"run_id": run_id}) if args.json else f"started {run_id}")
    if args.wait:
        state = watch(args.publish, until=lambda s: s.run_over)
        return 0 if state.run.get("reason") == "complete" else 1
    return 0


def _snapshot(args: argparse.Namespace) -> int:
    from opsims.client import Control

    with Control(args.control) as ctl:
        snap = ctl.snapshot(args.what)
    if args.out is not None:
        extra = {"frames_per_slice": np.int64(snap.fields["frames_per_slice"])}
        np.savez_compressed(
            args.out, allow_pickle=False, **snap.arrays, **(extra if args.what == "cubes" else {})
        )
    shapes = {k: list(v.shape) for k, v in snap.arrays.items()}
    if args.json:
        print(json.dumps({"seq": snap.seq, **snap.fields, "arrays": shapes}, default=str))
    else:
        print(f"snapshot {args.what} at seq {snap.seq}: {shapes}")
    return 0


def _monitor(args: argparse.Namespace) -> int:
    import time

    from opsims.monitor import plot, watch

    if args.plot or args.plot_file is not None:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            print("opsims monitor --plot needs matplotlib: pip install 'opsims[plot]'",
                  file=sys.stderr)  # fmt: skip
            return 2
        plot_file = None if args.plot_file is None else str(args.plot_file)
        plot(args.publish, args.control, plot_file=plot_file, duration_s=args.duration,
             refresh_s=args.refresh)  # fmt: skip
        return 0
    end = None if args.duration is None else time.monotonic() + args.duration
    watch(args.publish, until=lambda s: end is not None and time.monotonic() >= end,
          refresh_s=args.refresh)  # fmt: skip
    return 0


def _safety_watch(args: argparse.Namespace) -> int:
    """Print each interlock state change; a trip (or alarm) ends the watch: exit 1, or
    run ``--on-trip`` with the trip in ``OPSIMS_SAFETY_*`` variables and exit with its
    status. A daemon already tripped at start counts as a trip (docs/safety.md)."""
    import os
    import subprocess
    import time

    from opsims.client import Control, Subscriber

    def show(fields: dict[str, Any]) -> None:
        if args.json:
            print(json.dumps(fields, default=str), flush=True)
        else:
            stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
            detail = f": {fields['detail']}" if fields.get("detail") else ""
            print(f"{stamp} safety {fields['state']} {fields.get('reason', '')}{detail}",
                  flush=True)  # fmt: skip

    def tripped(fields: dict[str, Any]) -> int:
        if args.on_trip is None:
            return 1
        keys = ("state", "reason", "detail", "trip_host_ns")
        env = {**os.environ, **{f"OPSIMS_SAFETY_{k.upper()}": str(fields.get(k, "")) for k in keys}}
        return subprocess.run(args.on_trip, shell=True, env=env).returncode

    with Subscriber(args.publish, ["safety"]) as sub:
        # Subscribed first, then the state now: no change between the two is missed.
        time.sleep(0.2)
        with Control(args.control) as ctl:
            state = ctl.status()["safety_state"]
        last: tuple[Any, ...] = (state,)
        show({"state": state, "reason": "", "detail": "at start"})
        if state != "armed":
            return tripped({"state": state})
        for msg in sub:
            f = msg.fields
            key = (f["state"], f["reason"], f["trip_host_ns"], f["open_circuit_confirmed"])
            if key != last:
                last = key
                show(dict(f))
            if f["state"] != "armed":
                return tripped(dict(f))
    return 0


if __name__ == "__main__":
    sys.exit(main())
