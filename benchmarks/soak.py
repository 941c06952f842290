"""Soak (issue "Soak"): the simulator and opsimsd as processes for a long run at a high
event rate, a protocol cycling the cell's current, three subscriber processes and
periodic link drops; the daemon's memory, file descriptors and CPU are watched, and at
the end nothing the simulator sent and the daemon acknowledged may be missing from the
run's journal.

    python benchmarks/soak.py --duration 3600 --rate 10e6 --out DIR

What runs (the pieces of benchmarks/daemon_throughput.py, on the default configuration,
config/opsimsd.toml: 256 x 256 raster, 9 species switched per frame, 4 Hz cube updates):

- `opsimsd` (``daemon.simulator = "external"``) starts first and starts the run: the
  whole soak is one recorded run. Its protocol rests 5 s, then repeats plating
  (``--current-ua``, 0.02 uA = half the cell's critical current density, for
  ``--plate-s``), a rest (``--rest-s``), a strip until the depletion spike reaches 5 V
  (the instrument itself opens the circuit there, docs/protocols.md; the interlock's
  limit is 10 V) and another rest, for longer than the soak lasts. Step times are the
  instrument's seconds (``--acceleration`` speeds the cell and the raster alike).
- `opsims-sim` starts next, on ports the daemon already dials, so the run's pipeline
  sees the detector stream from its first frame: the simulator's ground truth (its
  counters since the raster started) then covers exactly what the run was sent. The
  beam images the surface (``beam = "image"``: the load stays the same for the whole
  run; profiling would follow the depth profile), without dark counts, and the
  simulator keeps no truth cubes (they would grow by a slice per 20 frames forever).
  ``sim.specimen.total_rate_hz`` is solved from the specimen model (per-frame switching
  and dead time) for ``--rate`` events/s received, plus 4 %.
- Three subscriber processes: ``normal`` reads every topic and counts sequence gaps
  (and checks ``events == binned + rejected_total + pending`` in every ``events``
  message), ``slow`` reads every topic but ``cube`` (``--slow-topics``) and sleeps
  ``--slow-sleep`` after each message (its queue at the daemon fills and it loses
  messages: that must cost nobody else anything; a slow reader of ``cube`` would park up
  to 1000 slices of 256 KiB at the daemon, and the daemon's RSS would measure that
  queue's mix instead of leaks), ``mirror`` keeps a ``CubeMirror``. Each writes its own
  statistics at the end (``DIR/subscriber-*.json``).
- Every ``--drop-every`` seconds the detector link is dropped (the simulator's
  ``fault`` ``disconnect``), then the potentiostat link, at the next rest step that
  has at least 8 s left (a lost potentiostat link while current flows trips the
  interlock, docs/safety.md). Around a detector drop the beam is off (``beam off``
  until the simulator has begun a frame without beam, back on once it accepted the
  daemon's new connection): the frames lost while the link is down carry markers but
  no counts, so the event counters must still agree exactly.
- ``soak_journal.py`` (its own process, nice 10) checks each journal segment once the
  daemon has finished it, then deletes it: the hour's ~90 GB never has to fit on disk.
- Every ``--sample-s`` (10 s) it samples, for both processes: VmRSS (/proc/PID/status),
  open file descriptors (/proc/PID/fd), CPU time (utime + stime, /proc/PID/stat) and
  the events counter (the daemon's status, the simulator's truth), plus the daemon's
  cube size (``n_slices``) and its ``[heap]`` (/proc/PID/smaps). Written to
  ``DIR/samples.jsonl`` as it goes.

At the end the beam is switched off (so no line is open), the run is stopped, the
simulator is stopped (it writes its truth), the subscribers report, and:

- journal: its detector reads, replayed segment by segment into the run's pipeline
  (as ``opsims replay`` does), give the daemon's live digest; walked frame header by
  frame header, they hold every frame
  from sequence 0 to the last one with holes exactly where the simulator's
  ``frames_unsent`` grew in each detector drop (one hole per drop, = the run's
  ``link_frames_lost`` and ``link_loss_intervals``; the simulator injects no other
  loss, so ``frame_fates`` stays empty); its potentiostat samples are the simulator's
  sent samples, value for value, except those pending in the simulator's 20 ms send
  buffer when it closed a potentiostat connection; nothing refused, the run closed;
- counters: ``events == binned + rejected_total + pending`` (in the digest with
  ``pending == 0``, in every sample and every ``events`` message), and the simulator's
  truth equals the run's counters: ``events``, ``binned``, ``line_settle``, ``flyback``,
  ``mass_settle``, every other rejection 0, nothing dropped;
- memory: the daemon's RSS less its cubes (they grow by design, one slice of
  9 x 256 x 256 u32 per 20 frames, up to the 1 GiB budget, then rebin to half; their
  allocation follows from ``n_slices``; raw RSS is reported beside it) grows at most
  ``--rss-tolerance`` (1 %) from the median of the first minute after warm-up (the
  first 10 % of the duration or 2 min, whichever is shorter) to the median of the last
  minute (a sample that catches slices on their way to subscribers is not growth);
- file descriptors: for both processes, the lowest count of the last minute is at most
  the highest of the first minute after warm-up (``--fd-slack`` more allowed): a count
  caught during a reconnect does not decide it;
- CPU: the daemon's CPU seconds per million events of the last quarter within
  ``--cpu-tolerance`` (10 %) of the second quarter's;
- and that the run was what it says: the events rate after warm-up at least ``--rate``,
  every planned link drop done, the interlock armed throughout and the run ended by the
  stop, the normal subscriber without a gap, the mirror's cubes equal to the live
  digest's (CRC-32 per species).

The table is printed; ``DIR/soak.json`` has the criteria, the figures and the samples.
The journal takes about 2.5 bytes per event on disk (``--duration 3600 --rate 10e6``:
about 90 GB); checked and deleted as the run goes, it needs at most ``CHECK_LAG_BYTES``
free (``--keep-journal`` keeps it all, and then needs all of it).

last measured: see docs/daemon.md, "Soak".
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import tomllib
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import numpy as np
import numpy.typing as npt

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from opsims.announce import announce, wait_for_announcement
from opsims.client import Control, ControlError, CubeMirror, Subscriber
from opsims.replay import run_info
from opsims.sim.config import SimConfig
from opsims.sim.specimen import Specimen, SpecimenState
from opsims.wire import WireError
from support.simproc import DaemonProcess, SimProcess, default_document, merge, run_daemon, to_toml

from benchmarks.daemon_throughput import DAEMON_DROPS, _sim_status, sender_lag_s, wait_up

#: Rejection reasons the simulator's truth counts as well (the rest must stay 0).
TRUTH_REASONS = ("line_settle", "flyback", "mass_settle")
#: The slow subscriber's topics: all but ``cube``. A slow reader of ``cube`` parks up to
#: ``daemon.sndhwm`` (1000) slices of 256 KiB at the daemon, whose RSS then follows that
#: queue's mix (and glibc's allocator keeps the high-water resident), not a leak.
SLOW_TOPICS = "ec,events,profile,status,run,link,safety,journal,eis,instrument,security"
#: The page glibc puts in front of a block it maps on its own (each cube chunk's).
MALLOC_HEADER_PAGE = 4096
#: Extra events/s asked of the specimen model over ``--rate``.
RATE_MARGIN = 1.04
#: Journal bytes on disk per event (link frames of T2 records with their markers and
#: overflows, zstd-1 delta+shuffle: 2.49 measured at 10 M events/s, 2.96 at 2.5 M) and the
#: margin kept free on top, for the disk check.
JOURNAL_BYTES_PER_EVENT = 2.5
DISK_MARGIN = 1.2
#: Journal on disk the segment-by-segment check may lag behind (64 segments of 256 MiB).
CHECK_LAG_BYTES = 16e9
#: The least time left in a rest step for a potentiostat drop (wall seconds).
POT_DROP_MARGIN_S = 8.0
CLK_TCK = os.sysconf("SC_CLK_TCK")


# --- processes ------------------------------------------------------------------------


def proc_stats(pid: int) -> dict[str, float] | None:
    """VmRSS, open file descriptors, CPU seconds (utime + stime, all threads) and threads
    of a process; None once it is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        rss_kb = next(int(x.split()[1]) for x in status.splitlines() if x.startswith("VmRSS:"))
        fds = len(os.listdir(f"/proc/{pid}/fd"))
        stat = Path(f"/proc/{pid}/stat").read_text()
        # After "pid (comm) ": field 3 (state) is index 0, utime 14, stime 15, threads 20.
        rest = stat[stat.rindex(")") + 2 :].split()
        cpu = (int(rest[11]) + int(rest[12])) / CLK_TCK
        return {"rss_bytes": rss_kb * 1024, "fds": fds, "cpu_s": cpu, "threads": int(rest[17])}
    except (OSError, StopIteration, ValueError, IndexError):
        return None


def heap_rss(pid: int) -> int | None:
    """Resident bytes of the process's ``[heap]`` (the main malloc arena: Python's objects
    and what the main thread allocates); the rest of RSS is the other threads' arenas,
    large blocks (the cubes) and mapped files."""
    try:
        with open(f"/proc/{pid}/smaps") as f:
            in_heap = False
            for line in f:
                if line[0] in "0123456789abcdef" and " " in line:
                    in_heap = line.rstrip().endswith("[heap]")
                elif in_heap and line.startswith("Rss:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def free_ports(n: int) -> list[int]:
    """``n`` free loopback ports below the ephemeral range: the daemon dials them before
    the simulator listens, and a port in that range can connect to itself."""
    low = 32768
    with suppress(OSError, ValueError, IndexError):
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    rng = random.Random()
    ports: list[int] = []
    while len(ports) < n:
        port = rng.randrange(10_000, max(10_001, low))
        if port in ports:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        ports.append(port)
    return ports


def terminate(proc: subprocess.Popen[str], timeout_s: float) -> int:
    """SIGTERM, then SIGKILL after ``timeout_s``; the exit code."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
    return proc.wait()


def spawn_announcing(cmd: list[str], log_path: Path) -> subprocess.Popen[str]:
    """A process that announces itself on stdout (opsims.announce), stderr to a log."""
    with open(log_path, "w") as log:
        return subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )


@contextmanager
def run_sim_on(out: Path, doc: dict[str, Any], ports: dict[str, int]) -> Iterator[SimProcess]:
    """`opsims-sim` on the fixed ports of ``doc`` (the daemon already dials them),
    its stderr in ``out/sim.log``, its truth into ``out/truth`` when it stops."""
    config = out / "sim.toml"
    config.write_text(to_toml(doc))
    cmd = [
        sys.executable,
        "-m",
        "opsims.sim.cli",
        "--config",
        str(config),
        "--truth",
        str(out / "truth"),
    ]
    proc = spawn_announcing(cmd, out / "sim.log")
    try:
        wait_for_announcement(proc, "opsims-sim", timeout_s=30)
        yield SimProcess(proc, ports, out / "truth")
    finally:
        terminate(proc, 120)
        if proc.stdout is not None:
            proc.stdout.close()


@dataclass
class SubscriberProcess:
    role: str
    proc: subprocess.Popen[str]
    stats_path: Path

    def finish(self, timeout_s: float = 60) -> dict[str, Any]:
        """SIGTERM: it drains what arrived and writes its statistics."""
        code = terminate(self.proc, timeout_s)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        try:
            stats: dict[str, Any] = json.loads(self.stats_path.read_text())
        except (OSError, ValueError) as e:
            return {"role": self.role, "exit_code": code, "error": str(e)}
        return {**stats, "exit_code": code}


def start_subscriber(
    role: str, out: Path, dm: DaemonProcess, args: argparse.Namespace
) -> SubscriberProcess:
    stats = out / f"subscriber-{role}.json"
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--subscriber",
        role,
        "--publish",
        dm.publish,
        "--control",
        dm.control,
        "--stats",
        str(stats),
        "--slow-sleep",
        str(args.slow_sleep),
        "--slow-topics",
        args.slow_topics if role == "slow" else "",
    ]
    proc = spawn_announcing(cmd, out / f"subscriber-{role}.log")
    wait_for_announcement(proc, f"{role} subscriber", timeout_s=60)
    return SubscriberProcess(role, proc, stats)


# --- the subscribers (run as `soak.py --subscriber ROLE`) ------------------------------


def subscriber_main(args: argparse.Namespace) -> int:
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    if args.subscriber == "mirror":
        stats = _mirror(args, stop)
    else:
        stats = _listen(args, stop, slow=args.subscriber == "slow")
    Path(args.stats).write_text(json.dumps(stats, default=str))
    return 0


def _listen(args: argparse.Namespace, stop: threading.Event, slow: bool) -> dict[str, Any]:
    """Every topic; gaps per topic; the counter identity in every ``events`` message;
    the run's step transitions and safety states; publish -> receipt latency."""
    gaps_by_topic: Counter[str] = Counter()
    checked = violations = wire_errors = 0
    first_violations: list[dict[str, int]] = []
    transitions: list[dict[str, Any]] = []
    safety: list[dict[str, Any]] = []
    links: Counter[str] = Counter()
    latency_ms: list[float] = []
    nbytes = 0

    def on_gap(topic: str, expected: int, got: int) -> None:
        gaps_by_topic[topic] += got - expected

    # The slow one keeps a small queue of its own, so the daemon's side fills.
    topics = args.slow_topics.split(",") if args.slow_topics else [""]
    sub = Subscriber(args.publish, topics, rcvhwm=100 if slow else 100_000, on_gap=on_gap)
    announce(role=args.subscriber)
    with sub:
        while True:
            stopping = stop.is_set()
            try:
                # Once stopped: what is queued, without sleeping, and no more.
                msg = sub.recv(0.0 if stopping else 0.2)
            except WireError:
                wire_errors += 1
                continue
            if msg is None:
                if stopping:
                    break
                continue
            latency_ms.append((time.time_ns() - msg.host_ns) * 1e-6)
            nbytes += sum(a.nbytes for a in msg.arrays.values())
            f = msg.fields
            if msg.topic == "events":
                t = f["totals"]
                checked += 1
                if t.get("events", 0) != (
                    t.get("binned", 0) + t.get("rejected_total", 0) + t.get("pending", 0)
                ):
                    violations += 1
                    if len(first_violations) < 5:
                        first_violations.append(
                            {
                                k: t.get(k, 0)
                                for k in ("events", "binned", "rejected_total", "pending")
                            }
                        )
            elif msg.topic == "run":
                transitions.append(
                    {k: f.get(k) for k in ("step", "kind", "label", "state", "reason", "detail")}
                )
            elif msg.topic == "safety":
                safety.append({k: f.get(k) for k in ("state", "reason", "detail")})
            elif msg.topic == "link":
                links[f"{f.get('link')} {f.get('state')}"] += 1
            if slow and not stopping:
                time.sleep(args.slow_sleep)
    lat = np.array(latency_ms) if latency_ms else np.zeros(1)
    return {
        "role": args.subscriber,
        "messages": sum(sub.received.values()),
        "received": dict(sub.received),
        "array_bytes": nbytes,
        "gaps": sub.gaps,
        "missed": sub.missed,
        "missed_by_topic": dict(gaps_by_topic),
        "reconnects": sub.reconnects,
        "restarts": sub.restarts,
        "wire_errors": wire_errors,
        "events_checked": checked,
        "events_identity_violations": violations,
        "first_violations": first_violations,
        "run": transitions,
        "safety": safety,
        "links": dict(links),
        "latency_ms": {
            "p50": float(np.percentile(lat, 50)),
            "p99": float(np.percentile(lat, 99)),
            "max": float(lat.max()),
        },
    }


def _mirror(args: argparse.Namespace, stop: threading.Event) -> dict[str, Any]:
    """A ``CubeMirror`` kept current; at the end the CRC-32 of its cubes after each slice
    (so the soak can compare the first ``n_slices`` with the live digest)."""
    errors: Counter[str] = Counter()
    with CubeMirror(args.publish, args.control, timeout_s=60) as mirror:
        announce(role="mirror")
        quiet = 0
        while quiet < 3:
            try:
                applied = mirror.poll(timeout_s=0.5)
            except (ControlError, WireError) as e:  # a snapshot timed out; a bad message
                errors[type(e).__name__] += 1
                continue
            # Stopped: poll until three turns in a row bring nothing.
            quiet = (quiet + 1 if applied == 0 else 0) if stop.is_set() else 0
        crcs: dict[str, list[int]] = {}
        last_nonzero: dict[str, int] = {}
        for name, cube in mirror.cubes.items():
            crc, running = 0, []
            for z in range(cube.shape[0]):
                crc = zlib.crc32(np.ascontiguousarray(cube[z], dtype="<u4").tobytes(), crc)
                running.append(crc)
            crcs[name] = running
            nonzero = np.flatnonzero(cube.reshape(cube.shape[0], -1).any(axis=1))
            last_nonzero[name] = int(nonzero[-1]) if nonzero.size else -1
        sub = mirror.subscriber
        return {
            "role": "mirror",
            "messages": sum(sub.received.values()),
            "gaps": sub.gaps,
            "missed": sub.missed,
            "reconnects": sub.reconnects,
            "syncs": mirror.syncs,
            "applied": mirror.applied,
            "dropped": mirror.dropped,
            "n_slices": mirror.n_slices,
            "rebins": mirror.rebins,
            "epoch": mirror.epoch,
            "errors": dict(errors),
            "crc_running": crcs,
            "last_nonzero_slice": last_nonzero,
        }


# --- the configuration and the protocol ------------------------------------------------


def rate_setting(doc: dict[str, Any], rate: float, acceleration: float) -> float:
    """``sim.specimen.total_rate_hz`` for ``rate`` events/s received by the daemon (wall
    time): the specimen's rates at the surface, unsodiated, each detector seeing its
    frame's species (per-frame switching), non-paralysable dead time per pixel, the live
    fraction of a frame. Within 0.1 % of what the daemon counted at 50e6."""
    c = SimConfig.from_document(merge(doc, {"sim": {"specimen": {"total_rate_hz": 1.0}}}))
    d = c.detector
    unit = Specimen(c.specimen, d.species, d.nx, d.ny, c.seed).rates(0.0, SpecimenState())
    tau = c.sims.dead_time_ns * 1e-9
    line = d.line_settle_ticks + d.nx * d.dwell_ticks + d.flyback_ticks
    live = d.ny * d.nx * d.dwell_ticks / (d.ny * line + c.sims.frame_gap_ticks)

    def received(total: float) -> float:
        out = 0.0
        for p in d.polarities:
            per = [total * unit[d.species.index(s)] for s in p.species]
            out += sum(float(np.mean(r / (1 + r * tau))) for r in per) / len(per)
        return out * live

    target = rate * RATE_MARGIN / acceleration
    low, high = 0.0, 1e6
    while received(high) < target:
        high *= 2
        if high > 1e12:
            raise ValueError(f"{rate:g} events/s is beyond what dead time lets through")
    for _ in range(60):
        mid = (low + high) / 2
        low, high = (mid, high) if received(mid) < target else (low, mid)
    return high


def cycle_protocol(args: argparse.Namespace) -> dict[str, Any]:
    """Rest until the simulator is up, then plate / rest / strip to depletion / rest,
    more often than the soak lasts (step times in the instrument's seconds)."""
    amps = args.current_ua * 1e-6
    cycle = [
        {
            "kind": "constant_current",
            "label": "plate",
            "current_a": -amps,
            "duration_s": args.plate_s,
        },
        {"kind": "rest", "label": "rest after plating", "duration_s": args.rest_s},
        {
            "kind": "strip",
            "label": "strip",
            "current_a": amps,
            "depletion_v": 5.0,
            "max_duration_s": args.plate_s,
        },
        {"kind": "rest", "label": "rest after stripping", "duration_s": args.rest_s},
    ]
    device_s = args.duration * args.acceleration + 60
    n = math.ceil(device_s / (args.plate_s + 2 * args.rest_s)) + 2
    first = {"kind": "rest", "label": "simulator starting", "duration_s": 5.0}
    return {"name": "soak: plate, rest, strip, rest", "steps": [first] + cycle * n}


def cube_bytes(n_slices: int, nx: int, ny: int, n_species: int) -> int:
    """What the cubes hold resident for ``n_slices`` (rust/core/src/cube.rs: chunks of
    ``1 MiB / slice`` slices, at most 16, for every species, each a mapping of its own
    one page larger than its data: glibc's header of a large block)."""
    slice_bytes = nx * ny * 4
    chunk_z = min(max((1 << 20) // slice_bytes, 1), 16)
    return -(-n_slices // chunk_z) * (chunk_z * slice_bytes * n_species + MALLOC_HEADER_PAGE)


def run_cube_bytes(out: Path) -> Callable[[int], int]:
    """:func:`cube_bytes` for the raster of the soak in ``out`` (its opsimsd.toml)."""
    raster = tomllib.loads((out / "opsimsd.toml").read_text())["detector"]["raster"]
    n_species = sum(len(p["species"]) for p in raster["polarities"])
    return lambda n: cube_bytes(n, raster["nx"], raster["ny"], n_species)


# --- the soak --------------------------------------------------------------------------


@dataclass
class Criterion:
    name: str
    passed: bool
    value: str
    threshold: str


@dataclass
class Soak:
    args: argparse.Namespace
    out: Path
    doc: dict[str, Any]
    dm: DaemonProcess
    ctl: Control
    sim: SimProcess
    subscribers: list[SubscriberProcess]
    t0: float = 0.0
    samples: list[dict[str, Any]] = field(default_factory=list)
    drops: list[dict[str, Any]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    stopping: threading.Event = field(default_factory=threading.Event)

    @property
    def now(self) -> float:
        return time.monotonic() - self.t0

    # --- sampling (its own thread and sockets) ----------------------------------------

    def sampler(self) -> threading.Thread:
        thread = threading.Thread(target=self._sample_loop, name="soak-sampler", daemon=True)
        thread.start()
        return thread

    def _sample_loop(self) -> None:
        interval, end = self.args.sample_s, self.args.duration
        times = [k * interval for k in range(int(end // interval) + 1)]
        if times[-1] < end - 1e-6:
            times.append(end)
        sim = SimProcess(self.sim.proc, self.sim.ports, self.sim.truth_dir)
        with (
            Control(self.dm.control, timeout_s=30) as ctl,
            open(self.out / "samples.jsonl", "w") as log,
        ):
            for due in times:
                if self.stopping.wait(max(0.0, due - self.now)):
                    break
                try:
                    sample = self._sample(ctl, sim)
                except (ControlError, OSError, ValueError) as e:
                    self.problems.append(f"sample at {self.now:.0f} s: {type(e).__name__}: {e}")
                    continue
                self.samples.append(sample)
                log.write(json.dumps(sample) + "\n")
                log.flush()
        sim.close_control()

    def _sample(self, ctl: Control, sim: SimProcess) -> dict[str, Any]:
        d = self.doc["detector"]["raster"]
        n_species = sum(len(p["species"]) for p in d["polarities"])
        for _ in range(5):  # a chunk of cube allocated between the reads: again
            before = int(ctl.snapshot("profile").fields["n_slices"])
            t = self.now
            st = ctl.status()
            daemon = proc_stats(self.dm.proc.pid)
            profile = ctl.snapshot("profile").fields
            after = int(profile["n_slices"])
            if cube_bytes(before, d["nx"], d["ny"], n_species) == cube_bytes(
                after, d["nx"], d["ny"], n_species
            ):
                break
        sst = _sim_status(sim)
        simulator = proc_stats(self.sim.proc.pid)
        c = st["counters"]
        keys = (
            "events",
            "binned",
            "rejected_total",
            "pending",
            "link_frames",
            "link_frames_lost",
            "link_loss_intervals",
            "detector_connects",
            "potentiostat_connects",
            "samples",
            "journal_refused",
            "rebins",
            *DAEMON_DROPS,
        )
        recording = st["journal"]["recording"] or {}
        journal = self.out / "state" / "runs" / str(st["run"].get("run_id")) / "journal"
        return {
            "t": t,
            "wall": time.time(),
            "daemon_heap_rss_bytes": heap_rss(self.dm.proc.pid),
            "daemon": daemon,
            "simulator": simulator,
            "subscribers": {
                s.role: (proc_stats(s.proc.pid) or {}).get("rss_bytes") for s in self.subscribers
            },
            "counters": {k: c.get(k, 0) for k in keys},
            "status_rss_bytes": st["memory"]["rss_bytes"],
            "n_slices": after,
            "cube_bytes": cube_bytes(after, d["nx"], d["ny"], n_species),
            "frames_per_slice": profile["frames_per_slice"],
            "publisher": {k: st["publisher"][k] for k in ("coalesced", "dirty_slices")}
            | {"refused": sum(st["publisher"]["refused"].values())},
            "journal_queued_bytes": recording.get("queued_bytes"),
            "journal_segments_on_disk": len(list(journal.glob("segment-*.ojs"))),
            "safety_state": st["safety_state"],
            "run": st["run"],
            "links": {k: v["state"] for k, v in st["links"].items()},
            "sim": {
                "events": sst["detector"]["counters"]["events"],
                "frames_sent": sst["detector"]["frames_sent"],
                "frames_unsent": sst["detector"]["frames_unsent"],
                "lag_s": sender_lag_s(sst, self.doc),
                "cell_mode": sst["cell"]["mode"],
                "ewe_v": sst["cell"]["ewe_v"],
            },
        }

    # --- link drops -----------------------------------------------------------------

    def _sim_status(self) -> dict[str, Any]:
        return _sim_status(self.sim)

    def _wait(self, what: str, check: Any, timeout_s: float, poll_s: float = 0.05) -> Any:
        deadline = time.monotonic() + timeout_s
        while True:
            value = check()
            if value:
                return value
            if time.monotonic() > deadline:
                raise TimeoutError(f"{what}: not within {timeout_s:.0f} s")
            time.sleep(poll_s)

    def beam_off_from_now(self) -> int:
        """Beam off; returns once the simulator has begun a frame without beam (every
        record it emits from then on has no count). The first such frame."""
        reply = self.sim.control("beam", mode="off")
        if not reply.get("ok"):
            raise RuntimeError(f"beam off refused: {reply}")
        first = int(reply["frame"])
        self._wait(
            "a frame without beam",
            lambda: self._sim_status()["detector"]["position"][0] >= first,
            10,
        )
        return first

    def detector_drop(self) -> dict[str, Any]:
        rec: dict[str, Any] = {"link": "detector", "t": self.now}
        t = time.monotonic()
        rec["beam_off_frame"] = self.beam_off_from_now()
        st = self._sim_status()["detector"]
        connections, unsent = st["connections"], st["frames_unsent"]
        loss0 = self.ctl.status()["counters"]["link_loss_intervals"]
        down = time.monotonic()
        self.sim.fault("detector", "disconnect", 1)

        def accepted() -> dict[str, Any] | None:
            # Once the simulator took the new connection, its count of frames made while
            # nobody was connected is final for this drop.
            st = self._sim_status()["detector"]
            return st if st["connections"] > connections else None

        back = self._wait("the simulator accepting the daemon again", accepted, 20)
        rec["frames_unsent"] = back["frames_unsent"] - unsent
        reply = self.sim.control("beam", mode=self.args.beam)
        if not reply.get("ok"):
            raise RuntimeError(f"beam {self.args.beam} refused: {reply}")
        rec["beam_on_frame"] = int(reply["frame"])
        rec["blank_s"] = time.monotonic() - t

        def seen() -> bool:
            st = self.ctl.status()
            return bool(
                st["counters"]["link_loss_intervals"] > loss0
                and st["links"]["detector"]["state"] == "up"
            )

        self._wait("the daemon to see the loss", seen, 20)
        rec["down_s"] = time.monotonic() - down
        return rec

    def potentiostat_drop(self, deadline: float) -> dict[str, Any]:
        """At the next rest step seen starting that has ``POT_DROP_MARGIN_S`` left."""
        rec: dict[str, Any] = {"link": "potentiostat", "t_due": self.now}
        rest_wall = self.args.rest_s / self.args.acceleration
        seen_start: dict[int, float] = {}
        last_step: int | None = None
        while True:
            if time.monotonic() > deadline:
                rec["missed"] = "no rest step with enough time left before the end"
                return rec
            run = self.ctl.status()["run"]
            if run["state"] != "running":
                rec["missed"] = f"the run is {run['state']}"
                return rec
            step = int(run["step"])
            if last_step is not None and step != last_step:
                seen_start[step] = time.monotonic()
            last_step = step
            started = seen_start.get(step)
            if run["kind"] == "rest" and started is not None:
                elapsed = time.monotonic() - started
                if elapsed >= 1.0 and rest_wall - elapsed >= POT_DROP_MARGIN_S:
                    break
            time.sleep(0.1)
        cell = self._sim_status()["cell"]
        rec.update(t=self.now, step=step, cell_mode=cell["mode"], current_a=cell["current_a"])
        if cell["mode"] != "OPEN_CIRCUIT" or cell["current_a"] != 0.0:
            rec["missed"] = f"current flows in a rest step: {cell}"
            return rec
        connects = self.ctl.status()["counters"]["potentiostat_connects"]
        down = time.monotonic()
        self.sim.fault("potentiostat", "disconnect", 1)

        def back() -> bool:
            st = self.ctl.status()
            return bool(
                st["counters"]["potentiostat_connects"] > connects
                and st["links"]["potentiostat"]["state"] == "up"
            )

        self._wait("the potentiostat link back", back, 10, poll_s=0.02)
        rec["down_s"] = time.monotonic() - down
        st = self.ctl.status()
        rec.update(
            safety_state=st["safety_state"],
            run_state=st["run"]["state"],
            step_after=st["run"]["step"],
        )
        return rec

    def alive(self) -> bool:
        for name, proc in (("opsimsd", self.dm.proc), ("opsims-sim", self.sim.proc)):
            if proc.poll() is not None:
                self.problems.append(f"{name} exited with {proc.returncode} at {self.now:.0f} s")
                return False
        return True

    def run(self) -> None:
        """The soak's duration: link drops on schedule, the sampler beside."""
        args = self.args
        for due in planned_drops(args):
            while self.now < due:
                if not self.alive():
                    return
                time.sleep(min(1.0, max(0.0, due - self.now)))
            try:
                self.drops.append(self.detector_drop())
                self.drops.append(self.potentiostat_drop(self.t0 + args.duration - 5))
            except (TimeoutError, RuntimeError, ControlError, OSError, ValueError) as e:
                self.problems.append(f"link drop at {self.now:.0f} s: {type(e).__name__}: {e}")
        while self.now < args.duration:
            if not self.alive():
                return
            time.sleep(min(1.0, max(0.0, args.duration - self.now)))


def planned_drops(args: argparse.Namespace) -> list[float]:
    """When each pair of link drops is due: every ``--drop-every`` s before the end."""
    n = math.ceil(args.duration / args.drop_every) - 1
    return [k * args.drop_every for k in range(1, n + 1)]


def choose_out(path: Path) -> Path:
    if path.exists() and any(path.iterdir()):
        raise SystemExit(f"soak: {path} is not empty; give a new or empty directory")
    path.mkdir(parents=True, exist_ok=True)
    return path


def check_disk(out: Path, args: argparse.Namespace) -> float:
    """The journal is checked and deleted segment by segment as the run goes on
    (soak_journal.py): what must be free is what it may lag behind, unless it is kept."""
    whole = float(args.rate * args.duration * JOURNAL_BYTES_PER_EVENT * DISK_MARGIN)
    need = whole if args.keep_journal else min(whole, CHECK_LAG_BYTES)
    free = shutil.disk_usage(out).free
    if free < need and not args.skip_disk_check:
        raise SystemExit(
            f"soak: the run's journal needs about {need / 1e9:.0f} GB at {out} "
            f"({args.rate:.3g} events/s x {args.duration:.0f} s x "
            f"{JOURNAL_BYTES_PER_EVENT} B/event, +{DISK_MARGIN - 1:.0%}"
            f"{'' if args.keep_journal else ', or what the check may lag behind'}); "
            f"{free / 1e9:.0f} GB are free (--skip-disk-check to try anyway)"
        )
    return need


def soak(args: argparse.Namespace) -> int:
    out = choose_out(args.out.resolve())
    need = check_disk(out, args)
    ports = dict(zip(("detector", "potentiostat", "control"), free_ports(3), strict=True))
    base = merge(default_document(), {"sim": {"detector": {"beam": args.beam}}})
    setting = args.setting or rate_setting(base, args.rate, args.acceleration)
    override: dict[str, Any] = {
        "daemon": {"simulator": "external"},
        "links": {
            "detector": {"port": ports["detector"]},
            "potentiostat": {"port": ports["potentiostat"]},
        },
        "sim": {
            "detector_port": ports["detector"],
            "potentiostat_port": ports["potentiostat"],
            "control_port": ports["control"],
            "acceleration": args.acceleration,
            "detector": {"beam": args.beam, "dark_rate_hz": 0.0, "record_truth": False},
            "specimen": {"total_rate_hz": setting},
        },
    }
    if args.cube_budget_mib:
        budget = {"memory_budget_bytes": int(args.cube_budget_mib * 2**20)}
        override = merge(override, {"detector": {"cube": budget}})
    if args.frames_per_slice:
        raster = {"frames_per_slice": args.frames_per_slice}
        override = merge(override, {"detector": {"raster": raster}})
    doc = merge(default_document(), override)
    warmup = min(0.1 * args.duration, 120.0)
    protocol = cycle_protocol(args)
    info = {
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "duration_s": args.duration,
        "rate": args.rate,
        "total_rate_hz": setting,
        "acceleration": args.acceleration,
        "beam": args.beam,
        "cube_budget_mib": args.cube_budget_mib or None,
        "frames_per_slice": args.frames_per_slice or None,
        "warmup_s": warmup,
        "sample_s": args.sample_s,
        "drop_every_s": args.drop_every,
        "thresholds": {
            "rss": args.rss_tolerance,
            "cpu": args.cpu_tolerance,
            "fd_slack": args.fd_slack,
        },
        "protocol": {
            "plate_s": args.plate_s,
            "rest_s": args.rest_s,
            "current_a": args.current_ua * 1e-6,
            "steps": len(protocol["steps"]),
        },
        "journal_disk_estimate_bytes": need,
    }
    print(
        f"soak: {args.duration:.0f} s at >= {args.rate / 1e6:.3g} M events/s "
        f"(total_rate_hz {setting:.4g}), acceleration {args.acceleration:g}, link drops "
        f"every {args.drop_every:.0f} s, warm-up {warmup:.0f} s (10 % of the duration or "
        f"2 min, whichever is shorter); out {out}",
        flush=True,
    )
    result: dict[str, Any] = {"info": info}
    with ExitStack() as stack:
        dm = stack.enter_context(run_daemon(out, override))
        ctl = stack.enter_context(Control(dm.control, timeout_s=30))
        subs = [start_subscriber(role, out, dm, args) for role in ("normal", "slow", "mirror")]
        stack.callback(lambda: [terminate(s.proc, 10) for s in subs])
        run_id = ctl.start_run(protocol, operator="soak", reason="benchmarks/soak.py")["run_id"]
        run_dir = out / "state" / "runs" / run_id
        checker = start_journal_check(run_dir, out, args)
        stack.callback(lambda: terminate(checker, 10))
        sim = stack.enter_context(run_sim_on(out, doc, ports))
        wait_up(ctl, timeout_s=60)
        _sim_status(sim)  # its control connection open from the start, as the sampler's
        s = Soak(args, out, doc, dm, ctl, sim, subs, t0=time.monotonic())
        sampler = s.sampler()
        try:
            s.run()
        finally:
            if s.now < args.duration:  # ended early: a process died
                s.stopping.set()
            sampler.join(timeout=args.sample_s + 60)
        end = finish(s, run_id)
        result |= {"run_id": run_id, "end": end}
        result["subscribers"] = {x.role: x.finish() for x in subs}
        audit = out / "state" / "safety" / "audit.jsonl"
        result["safety_audit"] = (
            [json.loads(x) for x in audit.read_text().splitlines()] if audit.exists() else []
        )
        result["daemon_exit"] = dm.stop()
        result |= {"samples": s.samples, "drops": s.drops, "problems": s.problems}
        # The run is over: the check takes the segments left and reports.
        checker.send_signal(signal.SIGTERM)
        tail = time.monotonic()
        try:
            result["journal_check_exit"] = checker.wait(timeout=max(900.0, args.duration))
        except subprocess.TimeoutExpired:
            result["journal_check_exit"] = None
        result["journal_check_tail_s"] = time.monotonic() - tail
    result["verify"] = verify(run_dir, out, result)
    criteria = judge(result, args, warmup)
    result["criteria"] = [asdict(c) for c in criteria]
    result["passed"] = all(c.passed for c in criteria)
    result["figures"] = figures(result, args, warmup)
    (out / "soak.json").write_text(json.dumps(result, indent=1, default=str))
    print_report(result, criteria)
    return 0 if result["passed"] else 1


def start_journal_check(
    run_dir: Path, out: Path, args: argparse.Namespace
) -> subprocess.Popen[str]:
    """soak_journal.py on the run: it checks each segment the daemon finishes, then
    deletes it (``--keep-journal`` keeps them)."""
    cmd = [sys.executable, str(Path(__file__).resolve().parent / "soak_journal.py"),
           str(run_dir), str(out / "journal-check.json")]  # fmt: skip
    if args.keep_journal:
        cmd.append("--keep")
    with open(out / "journal-check.log", "w") as log:
        return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, text=True)


def finish(s: Soak, run_id: str) -> dict[str, Any]:
    """Beam off (no line left open), stop the run, stop the simulator (its truth), let
    the daemon publish what is left."""
    end: dict[str, Any] = {"t": s.now}
    try:
        end["beam_off_frame"] = s.beam_off_from_now()
        first = end["beam_off_frame"]
        # One whole frame without beam emitted, and delivered: every line with counts closed.
        s._wait(
            "a whole frame without beam",
            lambda: s._sim_status()["detector"]["position"][0] > first,
            10,
        )
        sent = s._sim_status()["detector"]["frames_sent"]

        def taken_in() -> bool:
            c = s.ctl.status()["counters"]
            return bool(c["link_frames"] >= sent)

        s._wait("the daemon to take it in", taken_in, 20)
    except (TimeoutError, RuntimeError, OSError, ValueError) as e:
        s.problems.append(f"end: beam off: {type(e).__name__}: {e}")
    end["run_state_before_stop"] = s.ctl.status()["run"]
    try:
        s.ctl.stop_run(operator="soak", reason="soak over")
    except ControlError as e:
        s.problems.append(f"end: stop_run: {e}")
    run_json = s.out / "state" / "runs" / run_id / "run.json"
    deadline = time.monotonic() + 300
    while run_info(run_json.parent)["state"] == "recording" and time.monotonic() < deadline:
        time.sleep(0.2)
    s.sim.close_control()
    end["sim_exit"] = terminate(s.sim.proc, 300)
    # The daemon's counters still, and every changed slice published.
    last: dict[str, int] = {}
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        st = s.ctl.status()
        if (
            st["counters"]["link_frames"] == last.get("link_frames")
            and not (st["publisher"]["dirty_slices"])
        ):
            break
        last = st["counters"]
        time.sleep(1.0)
    time.sleep(2.0)  # the last flush reaches the subscribers
    return end


# --- verification ----------------------------------------------------------------------


def check_samples(
    journal: npt.NDArray[Any], truth: dict[str, npt.NDArray[Any]], faults: list[dict[str, Any]]
) -> dict[str, Any]:
    """Every journal sample is one the simulator sent, value for value, in order; the
    sent samples missing from the journal, between its first and last, lie just before
    a potentiostat disconnect (taken, not yet flushed when the connection closed)."""
    sent = np.flatnonzero(truth["sent"])
    t_ticks = truth["tick"][sent]
    out: dict[str, Any] = {"journal": int(journal.size), "sent": int(sent.size)}
    if not journal.size:
        return out | {"ok": False, "why": "no samples in the journal"}
    pos = np.searchsorted(t_ticks, journal["tick"])
    found = (pos < t_ticks.size) & (t_ticks[np.minimum(pos, t_ticks.size - 1)] == journal["tick"])
    if not found.all():
        return out | {
            "ok": False,
            "why": f"{int((~found).sum())} journal samples the simulator did not send (ticks)",
        }
    idx = sent[pos]
    same = (truth["ewe_v"][idx] == journal["ewe_v"]) | (
        np.isnan(truth["ewe_v"][idx]) & np.isnan(journal["ewe_v"])
    )
    same &= truth["current_a"][idx] == journal["current_a"]
    same &= truth["mode"][idx] == journal["mode"]
    if not same.all() or np.any(np.diff(pos) <= 0):
        return out | {"ok": False, "why": "journal samples differ from the truth or repeat"}
    inside = np.zeros(sent.size, bool)
    inside[pos[0] : pos[-1] + 1] = True
    have = np.zeros(sent.size, bool)
    have[pos] = True
    missing = np.flatnonzero(inside & ~have)
    drops = sorted(
        f["true_s"] for f in faults if f["link"] == "potentiostat" and f["fault"] == "disconnect"
    )
    true_s = truth["true_s"][sent]
    unexplained = 0
    runs: list[int] = []
    if missing.size:
        breaks = np.flatnonzero(np.diff(missing) != 1)
        for a, b in zip(np.r_[0, breaks + 1], np.r_[breaks, missing.size - 1], strict=True):
            first, last = int(missing[a]), int(missing[b])
            runs.append(last - first + 1)
            after = true_s[last + 1] if last + 1 < sent.size else math.inf
            if not any(true_s[last] <= d < after for d in drops):
                unexplained += last - first + 1
    return out | {
        "ok": unexplained == 0,
        "missing_at_drops": runs,
        "unexplained": unexplained,
        "after_run": int(sent.size - 1 - pos[-1]),
        "before_run": int(pos[0]),
        "why": "" if unexplained == 0 else f"{unexplained} samples lost away from any drop",
    }


def verify(run_dir: Path, out_dir: Path, result: dict[str, Any]) -> dict[str, Any]:
    """The segment-by-segment check's result (soak_journal.py) beside the run's record
    and the simulator's truth."""
    out: dict[str, Any] = {"check_exit": result.get("journal_check_exit")}
    check_path = out_dir / "journal-check.json"
    try:
        checked: dict[str, Any] = json.loads(check_path.read_text())
        samples = np.load(check_path.with_suffix(".npy"))
    except (OSError, ValueError) as e:  # a check that did not finish is a failed soak
        checked, samples = {"error": f"{type(e).__name__}: {e}"}, None
    out["replay"] = checked.pop("replay", {})
    info = run_info(run_dir)
    out["run"] = {k: info.get(k) for k in ("state", "end", "journal")}
    out["live_digest"] = info.get("live_digest")
    out["journal"] = checked
    truth_dir = out_dir / "truth"
    truth_path = truth_dir / "truth.json"
    if not truth_path.exists():
        out["truth"] = None
        return out
    truth = json.loads(truth_path.read_text())
    det = truth["detector"]
    out["truth"] = {
        "counters": det["counters"],
        "frames_sent": det["frames_sent"],
        "frames_unsent": det["frames_unsent"],
        "frame_fates": det["frame_fates"],
        "faults": truth["faults"],
    }
    if samples is not None:
        with np.load(truth_dir / "samples.npz") as z:
            tsamples = {k: z[k] for k in z.files}
        out["samples"] = check_samples(samples, tsamples, truth["faults"])
    return out


# --- judging ---------------------------------------------------------------------------


def _window(samples: list[dict[str, Any]], t0: float, t1: float) -> list[dict[str, Any]]:
    return [s for s in samples if t0 - 1e-6 <= s["t"] <= t1 + 1e-6]


def _at(samples: list[dict[str, Any]], t: float, get: Any) -> float:
    """``get(sample)`` at time ``t``, linear between samples."""
    ts = np.array([s["t"] for s in samples])
    return float(np.interp(t, ts, [float(get(s)) for s in samples]))


def cpu_per_m_events(samples: list[dict[str, Any]], who: str, duration: float) -> list[float]:
    """CPU seconds per million events in each quarter of the duration."""
    ok = [s for s in samples if s.get(who)]
    if len(ok) < 2:
        return []

    def events(s: dict[str, Any]) -> float:
        return float(s["counters"]["events"] if who == "daemon" else s["sim"]["events"])

    out = []
    for q in range(4):
        a, b = duration * q / 4, duration * (q + 1) / 4
        cpu = _at(ok, b, lambda s: s[who]["cpu_s"]) - _at(ok, a, lambda s: s[who]["cpu_s"])
        ev = _at(ok, b, events) - _at(ok, a, events)
        out.append(cpu / ev * 1e6 if ev > 0 else math.nan)
    return out


def rss_windows(
    samples: list[dict[str, Any]], duration: float, warmup: float
) -> dict[str, float] | None:
    first = [s for s in _window(samples, warmup, warmup + 60) if s.get("daemon")]
    last = [s for s in _window(samples, duration - 60, duration) if s.get("daemon")]
    if not first or not last:
        return None

    # The median of a window: a sample that catches cube slices on their way to the
    # subscribers, or a journal burst after a reconnect (up to ~9 MiB, gone in a second),
    # is not growth; growth moves every sample of the window.
    def rss(xs: list[dict[str, Any]], net: bool, stat: Any = np.median) -> float:
        return float(stat([x["daemon"]["rss_bytes"] - (x["cube_bytes"] if net else 0) for x in xs]))

    return {
        "first_net": rss(first, True),
        "last_net": rss(last, True),
        "first_net_mean": rss(first, True, np.mean),
        "last_net_mean": rss(last, True, np.mean),
        "first": rss(first, False),
        "last": rss(last, False),
        "cube_first": float(np.mean([x["cube_bytes"] for x in first])),
        "cube_last": float(np.mean([x["cube_bytes"] for x in last])),
    }


def judge(result: dict[str, Any], args: argparse.Namespace, warmup: float) -> list[Criterion]:
    c: list[Criterion] = []
    v = result["verify"]
    samples: list[dict[str, Any]] = result["samples"]
    live = v.get("live_digest") or {}
    lc: dict[str, int] = live.get("counters", {})
    truth = v.get("truth") or {}
    tc: dict[str, int] = truth.get("counters") or {}
    j = v.get("journal", {})
    det_drops = [d for d in result["drops"] if d["link"] == "detector"]
    pot_drops = [d for d in result["drops"] if d["link"] == "potentiostat"]

    # 1. Nothing lost in the journal.
    rep = v.get("replay", {})
    c.append(
        Criterion(
            "journal replay == live digest",
            v.get("check_exit") == 0 and rep.get("identical") is True,
            f"exit {v.get('check_exit')}, identical {rep.get('identical')}, "
            f"{rep.get('reads', 0)} reads, {rep.get('bytes', 0) / 1e9:.2f} GB",
            "identical",
        )
    )
    holes = [n for _first, n in j.get("holes", [])]
    unsent = [d.get("frames_unsent") for d in det_drops]
    frames_after = (
        truth.get("frames_sent", 0) + truth.get("frames_unsent", 0) - 1 - (j.get("last_seq") or 0)
    )
    frames_ok = (
        not j.get("error")
        and j.get("walk_error") is None
        and j.get("first_seq") == 0
        and holes == unsent
        and sum(holes) == truth.get("frames_unsent") == lc.get("link_frames_lost")
        and len(holes) == lc.get("link_loss_intervals") == len(det_drops)
        and j.get("frames") == lc.get("link_frames")
        and truth.get("frames_sent") == j.get("frames", 0) + frames_after
        and frames_after >= 0
        and not truth.get("frame_fates")
    )
    c.append(
        Criterion(
            "journal frames == sent - lost in drops",
            frames_ok,
            f"{j.get('frames')} frames, seq {j.get('first_seq')}..{j.get('last_seq')}, holes "
            f"{holes} = unsent {unsent}; sim sent {truth.get('frames_sent')} "
            f"({frames_after} after the run), unsent {truth.get('frames_unsent')}; "
            f"daemon link_frames {lc.get('link_frames')}, lost {lc.get('link_frames_lost')} in "
            f"{lc.get('link_loss_intervals')} intervals",
            "exact",
        )
    )
    sm = v.get("samples") or {}
    c.append(
        Criterion(
            "journal samples == sent - pending at drops",
            bool(sm.get("ok")),
            f"{sm.get('journal')} of {sm.get('sent')} sent; at the drops "
            f"{sm.get('missing_at_drops')}, after the run {sm.get('after_run')}, "
            f"unexplained {sm.get('unexplained')} "
            f"{sm.get('why', '')}",
            "exact",
        )
    )
    rj = (v.get("run") or {}).get("journal") or {}
    report = j.get("report") or {}
    closed = (
        (v.get("run") or {}).get("state") == "closed"
        and report.get("closed") is True
        and not report.get("corrupt")
        and not report.get("gaps")
        and not report.get("torn_tail")
        and not rj.get("refused_appends")
        and not rj.get("disk_errors")
    )
    c.append(
        Criterion(
            "journal closed, nothing refused",
            closed,
            f"state {(v.get('run') or {}).get('state')}, refused "
            f"{rj.get('refused_appends')}, disk errors {rj.get('disk_errors')}, "
            f"corrupt {report.get('corrupt')}, gaps {report.get('gaps')}",
            "closed, 0",
        )
    )

    # 2. Counters consistent.
    identity = [s["counters"] for s in samples]
    if lc:
        identity.append(lc)
    bad = [x for x in identity if x["events"] != x["binned"] + x["rejected_total"] + x["pending"]]
    normal = result["subscribers"].get("normal", {})
    c.append(
        Criterion(
            "events == binned + rejected_total + pending",
            not bad and lc.get("pending") == 0 and normal.get("events_identity_violations") == 0,
            f"{len(identity)} samples and the digest ({len(bad)} off), pending at the end "
            f"{lc.get('pending')}; {normal.get('events_checked')} events messages "
            f"({normal.get('events_identity_violations')} off)",
            "every time; pending 0",
        )
    )
    keys = ("events", "binned", *TRUTH_REASONS)
    others = {
        k: lc.get(k, 0)
        for k in (
            "before_first_frame",
            "before_first_line",
            "line_overrun",
            "bad_line",
            "link_gap",
            "unknown_channel",
            "out_of_order",
            "budget",
            "link_frames_corrupt",
            "link_frames_rejected",
            "link_bytes_skipped",
            "samples_dropped",
            "events_dropped",
            "panics",
        )
        if lc.get(k, 0)
    }
    diff = {k: (tc.get(k), lc.get(k)) for k in keys if tc.get(k) != lc.get(k)}
    c.append(
        Criterion(
            "simulator truth == daemon counters",
            bool(tc) and bool(lc) and not diff and not others,
            (
                f"events {lc.get('events')}, binned {lc.get('binned')}, "
                + ", ".join(f"{k} {lc.get(k)}" for k in TRUTH_REASONS)
                + (f"; differ {diff}" if diff else "")
                + (f"; nonzero {others}" if others else "")
            ),
            "equal; other rejections 0",
        )
    )

    # 3. Memory, descriptors, CPU.
    rss = rss_windows(samples, args.duration, warmup)
    if rss is None:
        c.append(Criterion("daemon RSS growth (net of cubes)", False, "too few samples", ""))
    else:
        growth = rss["last_net"] / rss["first_net"] - 1
        c.append(
            Criterion(
                "daemon RSS growth (net of cubes)",
                growth <= args.rss_tolerance,
                f"from {warmup:.0f} s {rss['first_net'] / 2**20:.2f} -> "
                f"{rss['last_net'] / 2**20:.2f} MiB ({growth:+.2%}; means "
                f"{rss['first_net_mean'] / 2**20:.2f} -> {rss['last_net_mean'] / 2**20:.2f}); "
                f"with cubes {rss['first'] / 2**20:.0f} -> {rss['last'] / 2**20:.0f} MiB",
                f"<= {args.rss_tolerance:.0%}",
            )
        )
    for who in ("daemon", "simulator"):
        first = [s[who]["fds"] for s in _window(samples, warmup, warmup + 60) if s.get(who)]
        last = [
            s[who]["fds"] for s in _window(samples, args.duration - 60, args.duration) if s.get(who)
        ]
        ok = bool(first and last) and min(last) <= max(first) + args.fd_slack
        c.append(
            Criterion(
                f"{who} fds: no growth",
                ok,
                f"first minute {min(first, default=-1)}..{max(first, default=-1)}, last minute "
                f"{min(last, default=-1)}..{max(last, default=-1)}",
                f"min(last) <= max(first) + {args.fd_slack}",
            )
        )
    q = cpu_per_m_events(samples, "daemon", args.duration)
    ok = (
        len(q) == 4
        and all(math.isfinite(x) for x in q)
        and abs(q[3] / q[1] - 1) <= (args.cpu_tolerance)
    )
    c.append(
        Criterion(
            "daemon CPU per M events, Q4 vs Q2",
            ok,
            " / ".join(f"{x * 1e3:.1f}" for x in q)
            + " ms per M (quarters)"
            + (f", Q4/Q2 {q[3] / q[1] - 1:+.1%}" if len(q) == 4 else ""),
            f"within +-{args.cpu_tolerance:.0%}",
        )
    )

    # 4. The soak was what it says.
    rate_window = [s for s in samples if s["t"] >= warmup - 1e-6]
    if len(rate_window) >= 2:
        a, b = rate_window[0], rate_window[-1]
        rate = (b["counters"]["events"] - a["counters"]["events"]) / (b["t"] - a["t"])
    else:
        rate = 0.0
    c.append(
        Criterion(
            "events/s after warm-up",
            rate >= args.rate,
            f"{rate / 1e6:.2f} M/s",
            f">= {args.rate / 1e6:.3g} M/s",
        )
    )
    planned = len(planned_drops(args))
    done_pot = [
        d
        for d in pot_drops
        if "missed" not in d
        and d.get("safety_state") == "armed"
        and d.get("run_state") == "running"
    ]
    c.append(
        Criterion(
            "link drops done",
            len(det_drops) == planned == len(done_pot),
            f"detector {len(det_drops)}, potentiostat {len(done_pot)} "
            f"(down {_span([d['down_s'] for d in det_drops])} s / "
            f"{_span([d['down_s'] for d in done_pot])} s)",
            f"{planned} each",
        )
    )
    trips = [a for a in result.get("safety_audit", []) if a.get("reason") != "shutdown"]
    states = {s["safety_state"] for s in samples}
    end_reason = ((v.get("run") or {}).get("end") or {}).get("reason")
    running = all(s["run"]["state"] == "running" for s in samples)
    c.append(
        Criterion(
            "interlock armed, run ran to the stop",
            states == {"armed"} and not trips and end_reason == "stop" and running,
            f"states {sorted(states)}, trips {len(trips)}, run end {end_reason!r}, "
            f"running at every sample {running}",
            "armed; ended by the stop",
        )
    )
    mirror = result["subscribers"].get("mirror", {})
    mirror_ok, mirror_text = _mirror_matches(mirror, live)
    c.append(
        Criterion(
            "subscribers: normal no gap, mirror == digest",
            normal.get("gaps") == 0 and normal.get("reconnects") == 0 and mirror_ok,
            f"normal {normal.get('messages')} msgs, {normal.get('gaps')} gaps; mirror "
            f"{mirror_text}; slow {result['subscribers'].get('slow', {}).get('missed')} missed "
            f"in {result['subscribers'].get('slow', {}).get('gaps')} gaps",
            "0 gaps; CRC equal",
        )
    )
    clean = not result["problems"] and result.get("daemon_exit") == 0
    c.append(
        Criterion(
            "no errors, daemon exit 0",
            clean,
            f"exit {result.get('daemon_exit')}; " + "; ".join(result["problems"])[:300],
            "none",
        )
    )
    return c


def _span(xs: list[float]) -> str:
    return f"{min(xs):.2f}-{max(xs):.2f}" if xs else "-"


def _mirror_matches(mirror: dict[str, Any], live: dict[str, Any]) -> tuple[bool, str]:
    """The mirror's first ``n_slices`` (the digest's) have the digest's CRC per species;
    slices after them (frames without beam after the run) are empty."""
    n = int(live.get("n_slices", 0))
    crcs = mirror.get("crc_running") or {}
    species = live.get("species") or {}
    if not n or not crcs or not species:
        return False, f"nothing to compare ({mirror.get('error', '')})"
    wrong = [
        name
        for name, d in species.items()
        if len(crcs.get(name, [])) < n
        or crcs[name][n - 1] != d["crc32"]
        or mirror["last_nonzero_slice"].get(name, n) >= n
    ]
    text = (
        f"{mirror.get('syncs')} snapshots, {mirror.get('applied')} slices applied, "
        f"{n} slices x {len(species)} species " + ("equal" if not wrong else f"differ {wrong}")
    )
    return not wrong, text


def figures(result: dict[str, Any], args: argparse.Namespace, warmup: float) -> dict[str, Any]:
    samples = result["samples"]
    fig: dict[str, Any] = {"warmup_s": warmup}
    if len(samples) >= 2:
        a, b = samples[0], samples[-1]
        fig["events_per_s"] = (b["counters"]["events"] - a["counters"]["events"]) / (
            b["t"] - a["t"]
        )
        fig["max_sender_lag_s"] = max(s["sim"]["lag_s"] for s in samples)
    for who in ("daemon", "simulator"):
        ok = [s for s in samples if s.get(who)]
        if ok:
            fig[who] = {
                "rss_mib_first_last": [
                    ok[0][who]["rss_bytes"] / 2**20,
                    ok[-1][who]["rss_bytes"] / 2**20,
                ],
                "rss_mib_max": max(s[who]["rss_bytes"] for s in ok) / 2**20,
                "fds_min_max": [min(s[who]["fds"] for s in ok), max(s[who]["fds"] for s in ok)],
                "cpu_ms_per_m_events_by_quarter": [
                    x * 1e3 for x in cpu_per_m_events(samples, who, args.duration)
                ],
                "cores": (ok[-1][who]["cpu_s"] - ok[0][who]["cpu_s"]) / (ok[-1]["t"] - ok[0]["t"])
                if len(ok) > 1
                else None,
            }
    fig["rss"] = rss_windows(samples, args.duration, warmup)
    if samples:
        fig["cube_mib_end"] = samples[-1]["cube_bytes"] / 2**20
        fig["n_slices_end"] = samples[-1]["n_slices"]
    fig["subscribers"] = {
        k: {
            x: v.get(x) for x in ("messages", "gaps", "missed", "reconnects", "syncs", "latency_ms")
        }
        for k, v in result["subscribers"].items()
    }
    fig["journal"] = {
        k: (result["verify"].get("run") or {}).get("journal", {}).get(k)
        for k in (
            "raw_bytes_durable",
            "stored_bytes_durable",
            "compression_ratio",
            "queued_high_water",
            "frames_durable",
        )
    }
    checked = result["verify"].get("journal") or {}
    fig["journal_check"] = {
        "s": checked.get("check_s"),
        "segments": checked.get("segments_checked"),
        "most_on_disk": checked.get("most_segments_on_disk"),
        "most_waiting": checked.get("most_segments_waiting"),
        "stored_gb": (checked.get("report") or {}).get("stored_bytes", 0) / 1e9,
    }
    run = result["subscribers"].get("normal", {}).get("run", [])
    fig["steps_finished"] = dict(
        Counter(
            f"{t['label']}: {t['reason']}"
            for t in run
            if t["state"] == "finished" and t["step"] >= 0
        )
    )
    return fig


def print_report(result: dict[str, Any], criteria: list[Criterion]) -> None:
    f = result["figures"]
    print()
    for who in ("daemon", "simulator"):
        w = f.get(who)
        if w:
            print(
                f"{who:>9}: RSS {w['rss_mib_first_last'][0]:.0f} -> "
                f"{w['rss_mib_first_last'][1]:.0f} MiB (max {w['rss_mib_max']:.0f}), fds "
                f"{w['fds_min_max'][0]}..{w['fds_min_max'][1]}, {w['cores'] or 0:.2f} cores, CPU "
                + " / ".join(f"{x:.1f}" for x in w["cpu_ms_per_m_events_by_quarter"])
                + " ms per M events by quarter"
            )
    if "events_per_s" in f:
        print(
            f"events: {f['events_per_s'] / 1e6:.2f} M/s; sender lag <= "
            f"{f['max_sender_lag_s'] * 1e3:.0f} ms; cubes {f.get('cube_mib_end', 0):.0f} MiB "
            f"({f.get('n_slices_end')} slices) at the end"
        )
    for k, s in f["subscribers"].items():
        print(f"subscriber {k}: {s}")
    jc = f.get("journal_check") or {}
    tail_s = result.get("journal_check_tail_s") or 0.0
    print(
        f"journal: {jc.get('stored_gb', 0):.1f} GB in {jc.get('segments')} segments, checked "
        f"as the run went (at most {jc.get('most_on_disk')} on disk, "
        f"{jc.get('most_waiting')} waiting), the last ones {tail_s:.0f} s "
        "after the stop"
    )
    print(f"steps: {f['steps_finished']}")
    print()
    width = max(len(c.name) for c in criteria)
    for c in criteria:
        verdict = "PASS" if c.passed else "FAIL"
        print(f"{verdict}  {c.name:<{width}}  {c.value}  [{c.threshold}]")
    print()
    print("soak:", "PASSED" if result["passed"] else "FAILED", flush=True)


def rejudge(out: Path, args: argparse.Namespace) -> int:
    """A finished soak's ``soak.json`` judged again, with this script's criteria and the
    thresholds given (the run's own duration and rate)."""
    path = out / "soak.json"
    result: dict[str, Any] = json.loads(path.read_text())
    info = result["info"]
    args.duration, args.rate = info["duration_s"], info["rate"]
    args.drop_every = info["drop_every_s"]
    warmup = info["warmup_s"]
    # The cubes' share of each sample by this script's reckoning (a soak run before the
    # page per chunk was counted kept a smaller figure).
    resident = run_cube_bytes(out)
    for sample in result["samples"]:
        sample["cube_bytes"] = resident(sample["n_slices"])
    criteria = judge(result, args, warmup)
    result["criteria"] = [asdict(c) for c in criteria]
    result["passed"] = all(c.passed for c in criteria)
    result["figures"] = figures(result, args, warmup)
    result["rejudged"] = {"rss": args.rss_tolerance, "cpu": args.cpu_tolerance}
    path.write_text(json.dumps(result, indent=1, default=str))
    print_report(result, criteria)
    return 0 if result["passed"] else 1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--duration", type=float, default=3600.0, help="seconds (3600)")
    p.add_argument("--rate", type=float, default=10e6, help="events/s received (10e6)")
    p.add_argument("--out", type=Path, help="a new or empty directory for everything")
    p.add_argument(
        "--setting",
        type=float,
        default=0.0,
        help="sim.specimen.total_rate_hz as given (default: solved for --rate)",
    )
    p.add_argument("--acceleration", type=float, default=1.0, help="simulator's (1)")
    p.add_argument("--beam", choices=("image", "profile"), default="image")
    p.add_argument(
        "--drop-every",
        type=float,
        default=300.0,
        help="seconds between link drops of each kind (300)",
    )
    p.add_argument(
        "--frames-per-slice",
        type=int,
        default=0,
        help="frames summed in a cube slice (default: the configuration's, 20); 1 makes "
        "the cubes deep within minutes, to see what follows their depth",
    )
    p.add_argument(
        "--cube-budget-mib",
        type=float,
        default=0.0,
        help="the cubes' memory budget (default: the configuration's, 1 GiB); a small one "
        "rebins often",
    )
    p.add_argument("--sample-s", type=float, default=10.0, help="sampling period (10)")
    p.add_argument("--plate-s", type=float, default=60.0, help="plating step, instrument s (60)")
    p.add_argument("--rest-s", type=float, default=20.0, help="rest steps, instrument s (20)")
    p.add_argument("--current-ua", type=float, default=0.02, help="plate/strip current (0.02)")
    p.add_argument(
        "--slow-sleep",
        type=float,
        default=0.2,
        help="the slow subscriber's sleep after each message, s (0.2: the queues between "
        "it and the daemon are full within the warm-up)",
    )
    p.add_argument(
        "--slow-topics",
        default=SLOW_TOPICS,
        help="the slow subscriber's topics, comma-separated; '' for every topic "
        "(default: all but cube)",
    )
    p.add_argument("--rss-tolerance", type=float, default=0.01, help="RSS growth (0.01)")
    p.add_argument("--cpu-tolerance", type=float, default=0.10, help="CPU per event (0.10)")
    p.add_argument("--fd-slack", type=int, default=0, help="extra fds allowed at the end (0)")
    p.add_argument("--keep-journal", action="store_true", help="keep the run's journal")
    p.add_argument("--skip-disk-check", action="store_true")
    p.add_argument(
        "--judge",
        action="store_true",
        help="judge the finished soak in --out again (its soak.json) and print the report",
    )
    p.add_argument("--subscriber", choices=("normal", "slow", "mirror"), help=argparse.SUPPRESS)
    p.add_argument("--publish", help=argparse.SUPPRESS)
    p.add_argument("--control", help=argparse.SUPPRESS)
    p.add_argument("--stats", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.subscriber:
        return subscriber_main(args)
    if args.out is None:
        p.error("--out is required")
    if args.judge:
        return rejudge(args.out, args)
    if args.rest_s / args.acceleration < POT_DROP_MARGIN_S + 2:
        p.error(
            f"--rest-s must leave {POT_DROP_MARGIN_S + 2:g} wall seconds for a potentiostat drop"
        )
    return soak(args)


if __name__ == "__main__":
    sys.exit(main())
