"""End to end on this machine, simulator included (issue 4, "Benchmark"): the highest
sustained event rate with nothing lost, and the latency from a detector record to the
published cube update that holds it.

    python benchmarks/daemon_throughput.py --duration 60

`opsims-sim` and `opsimsd` (``daemon.simulator = "external"``) run as processes on the
default configuration (config/opsimsd.toml: 256 x 256 raster, 9 species switched per
frame, 4 Hz cube updates) with fresh processes at each step. The step raises the
simulator's ``sim.specimen.total_rate_hz`` (doubling from ``--start-rate``, then
bisecting between the last clean and the first lossy setting) and runs ``--duration``
seconds. That setting is the mean over all 9 species at once; with per-frame switching
each detector sees only its current species, so the table reports the events/s the
daemon actually received and binned, from its counters over the measured window.

A step is clean when all of these hold:

- the daemon lost nothing: ``link_frames_lost``, ``link_frames_corrupt``,
  ``samples_dropped``, ``events_dropped`` stay 0 (control ``status``);
- the simulator sent every frame (``frames_unsent`` 0) and its sender kept up with real
  time: its last record's tick (``status.detector.position``) never lagged its clock by
  more than ``--max-lag`` (a sender that falls behind is loss of real time);
- after the simulator stops, the daemon's ``events`` and ``link_frames`` equal the
  simulator's ``events`` and ``frames_sent`` (its ground truth).

Latency: a subscriber on ``cube`` and ``profile`` stamps each message with
``time.time_ns()`` on receipt. Each profile message carries ``lines_binned``, the raster
lines closed before that flush's slices were read (docs/publishing.md), so the update
holding a record of line k is the first flush with ``lines_binned > k``; its time is the
receipt of the last ``cube`` message of that flush. A record's moment is its tick mapped
to host time by the simulator's true clock (ground truth: timebase start, drift). The
latency is sampled uniformly over the record times in the window (every quarter line,
dark flyback and frame gap left out), so p50/p99 are over records at a constant rate.
"age" is the same for the newest record of each update only (its lower bound).

last measured (2 shared cores, /work/venv editable install, record_truth on as in the
default file; the simulator generates on two threads when a call spans several lines):

    python benchmarks/daemon_throughput.py --duration 60 --start-rate 160e6 --bisect 2
      160 M/s set: 22.93 M events/s received and binned for 60 s, every event and frame
      equal to the simulator's, sender lag <= 197 ms: clean; record -> cube update
      p50 179 ms, p99 416 ms (newest-record age p50 34 ms)
      320 M/s set: 28.6 M events/s, counters equal, sender 11.5 s behind: LOSS
      240 M/s set: 29.8 M events/s, sender 0.91 s behind: LOSS
      200 M/s set: 26.6 M events/s, sender 0.74 s behind: LOSS (an earlier single 60 s
      step at 200 M/s was clean at 26.62 M events/s: the limit is the simulator's
      sender sharing the two cores, and it moves with the load)
    ... --start-rate 160e6 --max-rate 160e6 --bisect 0 --record   (the run journal on)
      22.97 M events/s clean; the journal took 5784 MB of raw link bytes, compressed
      1.70x, backlog never above 21.4 MB, nothing refused; p50 174 ms, p99 427 ms
    (before the simulator's emitter was made faster: 11.41 M events/s clean for 60 s)
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

import numpy as np
import numpy.typing as npt

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from opsims.client import Control, ControlError, Subscriber
from support.simproc import (
    DaemonProcess,
    SimProcess,
    default_document,
    merge,
    run_daemon,
    run_sim,
)

DAEMON_DROPS = ("link_frames_lost", "link_frames_corrupt", "samples_dropped", "events_dropped")


@dataclass
class Step:
    setting_hz: float
    duration_s: float = 0.0
    events_per_s: float = 0.0
    binned_per_s: float = 0.0
    drops: dict[str, int] = field(default_factory=dict)
    frames_unsent: int = 0
    max_lag_s: float = 0.0
    events_daemon: int = 0
    events_sim: int = 0
    frames_daemon: int = 0
    frames_sim: int = 0
    latency_ms: dict[str, float] = field(default_factory=dict)
    sub_gaps: int = 0
    #: With --record: the run journal's final status.
    journal: dict[str, Any] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not self.problems


class Geometry:
    """The raster's timing (docs/detector-emitter.md) and the simulator's true clock."""

    def __init__(self, doc: dict[str, Any], truth: dict[str, Any]) -> None:
        r = doc["detector"]["raster"]
        self.ny = int(r["ny"])
        self.line = int(r["line_settle_ticks"]) + int(r["nx"]) * int(r["dwell_ticks"])
        self.line_period = self.line + int(r["flyback_ticks"])
        gap = int(doc["sim"]["detector"].get("frame_gap_ticks", 0))
        self.frame_period = self.ny * self.line_period + gap
        det = truth["detector"]
        clock = det["clock"]
        self.start = int(det["start_tick"])  # the first line start
        self.clock_start = int(clock["start_tick"])
        self.ticks_per_s = (1 + clock["drift_ppm"] * 1e-6) / clock["tick_s"]
        self.start_host_ns = int(truth["timebase"]["start_host_ns"])
        self.acceleration = float(truth["timebase"]["acceleration"])

    def host_ns(self, ticks: npt.NDArray[np.int64]) -> npt.NDArray[np.float64]:
        true_s = (ticks - self.clock_start) / self.ticks_per_s
        host: npt.NDArray[np.float64] = self.start_host_ns + true_s / self.acceleration * 1e9
        return host

    def line_end(self, k: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
        """Tick at which global line k's last pixel ends."""
        return self.start + (k // self.ny) * self.frame_period + (k % self.ny) * (
            self.line_period
        ) + self.line  # fmt: skip


class Listener(threading.Thread):
    """Stamps every cube and profile message on receipt; runs until `stop`."""

    def __init__(self, endpoint: str) -> None:
        super().__init__(daemon=True)
        self.endpoint = endpoint
        self.flushes: list[tuple[int, int]] = []  # (lines_binned, receipt of the flush)
        self.gaps = 0
        self.stopping = threading.Event()
        self.subscribed = threading.Event()

    def run(self) -> None:
        last_cube_ns = 0
        with Subscriber(self.endpoint, ("cube", "profile"), rcvhwm=100_000) as sub:
            self.subscribed.set()
            while not self.stopping.is_set():
                msg = sub.recv(0.1)
                now = time.time_ns()
                if msg is None:
                    continue
                if msg.topic == "cube":
                    last_cube_ns = now
                elif "lines_binned" in msg.fields:
                    # The flush's slices came just before its profile.
                    self.flushes.append((int(msg.fields["lines_binned"]), last_cube_ns or now))
                    last_cube_ns = 0
            self.gaps = sub.gaps


def sender_lag_s(status: dict[str, Any], doc: dict[str, Any]) -> float:
    """How far the simulator's last sent record trails its detector clock now."""
    det = doc["sim"]["detector"]
    tick_s = doc["detector"]["tick_s"]
    position = status["detector"]["position"]
    if position is None:
        return 0.0
    now_tick = det["start_tick"] + status["true_s"] * (1 + det["drift_ppm"] * 1e-6) / tick_s
    return max(0.0, float((now_tick - position[2]) * tick_s))


def latency(
    flushes: list[tuple[int, int]], geo: Geometry, t0_ns: int, t1_ns: int
) -> dict[str, float]:
    """Record-to-update latency percentiles (ms) for records in [t0_ns, t1_ns]."""
    if len(flushes) < 3:
        return {}
    lines = np.array([f[0] for f in flushes], np.int64)
    recv = np.array([f[1] for f in flushes], np.float64)
    # Lines binned never go back; a repeated value adds nothing new.
    keep = np.concatenate([[True], np.diff(lines) > 0])
    lines, recv = lines[keep], recv[keep]
    first = int(lines[0])
    last = int(lines[-1]) - 1
    k = np.arange(first, last + 1, dtype=np.int64)
    if not k.size:
        return {}
    # Four record moments per line, spread over its pixels.
    offsets = (np.arange(4) + 0.5) / 4 * geo.line
    ends = geo.line_end(k)
    ticks = (ends[:, None] - geo.line + offsets[None, :]).astype(np.int64).ravel()
    moments = geo.host_ns(ticks)
    lines_of = np.repeat(k, 4)
    i = np.searchsorted(lines, lines_of, side="right")
    ok = (i < lines.size) & (moments >= t0_ns) & (moments <= t1_ns)
    lat = (recv[i[ok]] - moments[ok]) * 1e-6
    newest = geo.host_ns(geo.line_end(lines - 1))
    in_window = (newest >= t0_ns) & (newest <= t1_ns)
    age = (recv[in_window] - newest[in_window]) * 1e-6
    if not lat.size:
        return {}
    out = {"p50": float(np.percentile(lat, 50)), "p99": float(np.percentile(lat, 99)),
           "max": float(lat.max())}  # fmt: skip
    if age.size:
        out |= {"age_p50": float(np.percentile(age, 50)), "age_p99": float(np.percentile(age, 99))}
    return out


def external(sim: SimProcess, override: dict[str, Any]) -> dict[str, Any]:
    return merge(override, {
        "daemon": {"simulator": "external"},
        "links": {"detector": {"port": sim.ports["detector"]},
                  "potentiostat": {"port": sim.ports["potentiostat"]}},
        "sim": {"control_port": sim.ports["control"]},
    })  # fmt: skip


def wait_up(ctl: Control, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        links = ctl.status()["links"]
        if all(s["state"] == "up" for s in links.values()):
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"links not up: {links}")
        time.sleep(0.1)


def run_step(setting_hz: float, args: argparse.Namespace, tmp: Path) -> Step:
    override: dict[str, Any] = {"sim": {"specimen": {"total_rate_hz": setting_hz}}}
    doc = merge(default_document(), override)
    step = Step(setting_hz)
    with run_sim(tmp / "sim", override) as sim, run_daemon(tmp, external(sim, override)) as dm:
        try:
            _measure(step, sim, dm, doc, args)
        except (OSError, ValueError, RuntimeError, ControlError, subprocess.TimeoutExpired) as e:
            # A process that died or stopped answering under load is a failed step.
            step.problems.append(f"{type(e).__name__}: {e}; {_sim_exit(sim)}")
    if step.max_lag_s > args.max_lag:
        step.problems.append(f"sender lagged {step.max_lag_s:.2f} s")
    return step


def _sim_exit(sim: SimProcess) -> str:
    code = sim.proc.poll()
    if code is None or sim.proc.stderr is None:
        return "simulator running"
    tail = sim.proc.stderr.read()[-300:].strip().replace("\n", " | ")
    return f"simulator exited {code}: {tail}"


def _measure(
    step: Step, sim: SimProcess, dm: DaemonProcess, doc: dict[str, Any], args: argparse.Namespace
) -> None:
    listener = Listener(dm.publish)
    listener.start()
    listener.subscribed.wait(5)
    try:
        _window(step, sim, dm, doc, args, listener)
    finally:
        listener.stopping.set()
        listener.join(5)


def _window(
    step: Step,
    sim: SimProcess,
    dm: DaemonProcess,
    doc: dict[str, Any],
    args: argparse.Namespace,
    listener: Listener,
) -> None:
    with Control(dm.control, timeout_s=5) as ctl:
        wait_up(ctl)
        if args.record:
            ctl.start_run(RECORDED, operator="benchmark")
        time.sleep(args.warmup)  # the clock fit settles; first frames are binned
        c0, w0 = ctl.status()["counters"], time.monotonic()
        t0_ns = time.time_ns()
        end = w0 + args.duration
        while time.monotonic() < end:
            time.sleep(min(1.0, max(0.0, end - time.monotonic())))
            st = _sim_status(sim)
            step.max_lag_s = max(step.max_lag_s, sender_lag_s(st, doc))
        c1, w1 = ctl.status()["counters"], time.monotonic()
        t1_ns = time.time_ns()
        st = _sim_status(sim)
        step.frames_unsent = int(st["detector"]["frames_unsent"])
        step.max_lag_s = max(step.max_lag_s, sender_lag_s(st, doc))
        step.duration_s = w1 - w0
        step.events_per_s = (c1["events"] - c0["events"]) / step.duration_s
        step.binned_per_s = (c1["binned"] - c0["binned"]) / step.duration_s
        step.drops = {k: int(c1.get(k, 0)) for k in DAEMON_DROPS}
        if args.record:
            _journal_check(step, ctl, dm.log_path.parent / "state")
        # Stop the sender, then let the daemon take in what is in flight.
        # SIGTERM, not the control port's `stop` (its reply can race the exit); writing
        # the truth of a long run takes a while.
        sim.close_control()
        sim.proc.send_signal(signal.SIGTERM)
        sim.proc.wait(timeout=120)
        truth = json.loads((sim.truth_dir / "truth.json").read_text())
        final = _settled(ctl)
    listener.stopping.set()
    listener.join(5)
    _check(step, final, truth)
    geo = Geometry(doc, truth)
    step.latency_ms = latency(listener.flushes, geo, t0_ns, t1_ns)
    step.sub_gaps = listener.gaps
    _stop_daemon(dm)


#: With --record: a run that only rests, so the journal records the whole window.
RECORDED = {"name": "throughput", "steps": [{"kind": "rest", "duration_s": 1e6}]}


def _journal_check(step: Step, ctl: Control, state_dir: Path) -> None:
    """The run's journal kept up: nothing refused, no disk error, every read on disk at
    the close. Keeps its final status (bytes, compression ratio, largest backlog)."""
    run_id = ctl.status()["run"]["run_id"]
    ctl.stop_run(operator="benchmark", reason="window over")
    run_json = state_dir / "runs" / run_id / "run.json"
    deadline = time.monotonic() + 60
    info: dict[str, Any] = {}
    while time.monotonic() < deadline:
        info = json.loads(run_json.read_text())
        if info["state"] != "recording":
            break
        time.sleep(0.2)
    final = info.get("journal", {})
    keys = ("raw_bytes_durable", "stored_bytes_durable", "compression_ratio",
            "queued_high_water", "frames_durable", "refused_appends", "disk_errors")  # fmt: skip
    step.journal = {"state": info.get("state"), **{k: final.get(k) for k in keys}}
    if info.get("state") != "closed" or final.get("refused_appends") or final.get("disk_errors"):
        step.problems.append(f"journal: {step.journal}")


def _sim_status(sim: SimProcess, tries: int = 50) -> dict[str, Any]:
    """The simulator's status. Its control thread reads the emitter without the lock the
    sender holds, so under load a read can fail and close the connection: retry."""
    for _ in range(tries - 1):
        try:
            return sim.control("status")
        except (ValueError, OSError):
            sim.close_control()
            time.sleep(0.01)
    return sim.control("status")


def _settled(ctl: Control, timeout_s: float = 30) -> dict[str, int]:
    """The daemon's counters once they stop moving."""
    last: dict[str, int] = {}
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        c: dict[str, int] = ctl.status()["counters"]
        if c.get("events") == last.get("events") and c.get("link_frames") == last.get(
            "link_frames"
        ):
            return c
        last = c
        time.sleep(0.5)
    return last


def _check(step: Step, final: dict[str, int], truth: dict[str, Any]) -> None:
    det = truth["detector"]
    step.events_daemon, step.events_sim = int(final["events"]), int(det["counters"]["events"])
    step.frames_daemon, step.frames_sim = int(final["link_frames"]), int(det["frames_sent"])
    lost = {k: int(final.get(k, 0)) for k in DAEMON_DROPS if final.get(k, 0)}
    if lost:
        step.problems.append(f"daemon lost {lost}")
    if det["frames_unsent"]:
        step.problems.append(f"simulator did not send {det['frames_unsent']} frames")
    if step.events_daemon != step.events_sim:
        step.problems.append(f"events daemon {step.events_daemon} != sim {step.events_sim}")
    if step.frames_daemon != step.frames_sim:
        step.problems.append(f"frames daemon {step.frames_daemon} != sim {step.frames_sim}")


def _stop_daemon(dm: DaemonProcess) -> None:
    code = dm.stop()
    if code != 0:
        print(f"  (opsimsd exited {code})", file=sys.stderr)


def row(s: Step) -> str:
    lat = s.latency_ms
    lat_text = f"{lat.get('p50', float('nan')):7.1f} {lat.get('p99', float('nan')):7.1f}"
    verdict = "clean" if s.clean else "LOSS: " + "; ".join(s.problems)
    j = s.journal
    if j.get("raw_bytes_durable"):
        verdict += (f"; journal {j['raw_bytes_durable'] / 1e6:.0f} MB raw, "
                    f"ratio {j['compression_ratio']:.2f}, "
                    f"backlog <= {j['queued_high_water'] / 1e6:.1f} MB")  # fmt: skip
    return (f"{s.setting_hz / 1e6:9.2f} {s.events_per_s / 1e6:10.3f} {s.binned_per_s / 1e6:10.3f} "
            f"{s.max_lag_s * 1e3:8.1f} {lat_text} {s.sub_gaps:5d}  {verdict}")  # fmt: skip


HEADER = (f"{'set M/s':>9} {'ev M/s':>10} {'binned M/s':>10} {'lag ms':>8} "
          f"{'p50 ms':>7} {'p99 ms':>7} {'gaps':>5}  verdict")  # fmt: skip


def search(args: argparse.Namespace) -> list[Step]:
    steps: list[Step] = []

    def one(rate: float) -> Step:
        with TemporaryDirectory(prefix="opsims-bench-") as tmp:
            s = run_step(rate, args, Path(tmp))
        steps.append(s)
        print(row(s), flush=True)
        return s

    print(HEADER, flush=True)
    clean: float | None = None
    lossy: float | None = None
    rate = args.start_rate
    while rate <= args.max_rate:
        if one(rate).clean:
            clean, rate = rate, rate * 2
        else:
            lossy = rate
            break
    for _ in range(args.bisect if lossy is not None else 0):
        low = clean if clean is not None else lossy / 4  # type: ignore[operator]
        mid = (low + lossy) / 2  # type: ignore[operator]
        if one(mid).clean:
            clean = mid
        else:
            lossy = mid
    return steps


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--duration", type=float, default=60.0, help="seconds per step (60)")
    p.add_argument("--warmup", type=float, default=3.0, help="seconds before measuring (3)")
    p.add_argument("--start-rate", type=float, default=8e6,
                   help="first sim.specimen.total_rate_hz (8e6)")  # fmt: skip
    p.add_argument("--max-rate", type=float, default=1e9)
    p.add_argument("--bisect", type=int, default=2, help="bisection steps after a loss (2)")
    p.add_argument("--max-lag", type=float, default=0.25,
                   help="longest the simulator's sender may trail real time, s (0.25)")  # fmt: skip
    p.add_argument("--record", action="store_true",
                   help="run a resting protocol: the daemon journals the window")  # fmt: skip
    p.add_argument("--json", action="store_true", help="also print the steps as JSON")
    args = p.parse_args(argv)
    steps = search(args)
    good = [s for s in steps if s.clean]
    best = max(good, key=lambda s: s.binned_per_s) if good else None
    print()
    if best is None:
        print("no clean step")
    else:
        lat = best.latency_ms
        print(f"last clean: total_rate_hz {best.setting_hz:.3g} -> "
              f"{best.events_per_s / 1e6:.2f} M events/s received, "
              f"{best.binned_per_s / 1e6:.2f} M/s binned, for {best.duration_s:.0f} s; "
              f"latency record -> cube update p50 {lat.get('p50', float('nan')):.1f} ms, "
              f"p99 {lat.get('p99', float('nan')):.1f} ms "
              f"(newest-record age p50 {lat.get('age_p50', float('nan')):.1f} ms)")  # fmt: skip
    if args.json:
        print(json.dumps([s.__dict__ for s in steps], default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
