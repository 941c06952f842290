"""The simulated SIMS detector front-end: the raster over the specimen, both detectors,
sent as live-link frames (docs/detector-link.md) by the native
:class:`~opsims._native.DetectorEmitter`.

The primary beam is in one of three modes: ``profile`` (sputtering: the depth advances by
the sputter rate each raster frame), ``image`` (the depth stays) or ``off`` (blanked: only
dark counts). The depth is kept per region of the cell and starts at 0 on a new region.
The specimen's rates are set for every raster frame from its beam mode, depth, lateral
drift and the cell's state. The raster starts when the first host connects (the host
arms the acquisition) and then runs on: frames made while no host is connected are lost
and counted, and the sequence numbers go on, so a host that reconnects sees the loss.
"""

from __future__ import annotations

import math
import socket
import threading
import time
import zlib
from array import array
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from itertools import repeat
from typing import Any

import numpy as np
import numpy.typing as npt

from opsims._native import DetectorEmitter
from opsims.config_table import TableReader
from opsims.detector import DetectorConfig
from opsims.sim.faults import Faults, corrupt_frame, garbage_records, truncate_frame
from opsims.sim.specimen import Specimen, SpecimenState
from opsims.sim.timebase import DeviceClock, Timebase

SEND_TIMEOUT_S = 2.0
#: Beam modes; the index is the code in the ground truth's per-frame ``beam`` array.
BEAM_MODES = ("off", "image", "profile")
BEAM_CODES = {mode: code for code, mode in enumerate(BEAM_MODES)}
#: At most this many frames of a drifting specimen are looked ahead at once.
_DRIFT_LOOKAHEAD = 4096
# Link frame layout (docs/detector-link.md): sent_tick, the CRC, the records.
_SENT_TICK_AT, _CRC_AT, _HEADER = 48, 76, 80


@dataclass(frozen=True)
class SimsConfig:
    drift_ppm: float = 0.0
    start_tick: int = 0
    dead_time_ns: float = 20.0
    dark_rate_hz: float = 10.0
    settle_rate_fraction: float = 0.05
    frame_gap_ticks: int = 0
    sputter_rate_nm_per_frame: float = 0.1
    send_interval_s: float = 0.005
    #: The most wall time's worth of simulated time one send may cover (times the acceleration); a
    #: sender that fell behind catches up in steps of this size so frames keep flowing.
    max_chunk_s: float = 0.05
    max_records_per_frame: int = 65_536
    record_truth: bool = True
    #: Log every generated count (tick, channel, species, voxel, fate) for the truth dump.
    record_events: bool = False
    #: The primary beam at start: "profile" (sputtering), "image" (no sputtering) or "off".
    beam: str = "profile"
    #: The specimen moves by (dx, dy) pixels per frame of the current region.
    lateral_drift_px_per_frame: tuple[float, float] = (0.0, 0.0)
    #: While profiling, frames within this much depth share the rates of their middle
    #: depth (0: every frame its own); fewer rate updates let a fast simulation keep up.
    depth_step_nm: float = 0.0

    @classmethod
    def from_mapping(cls, table: Mapping[str, Any], path: str = "sim.detector") -> SimsConfig:
        r = TableReader(table, path)
        d = cls()
        config = cls(
            drift_ppm=r.get_float("drift_ppm", d.drift_ppm, minimum=-1000, maximum=1000),
            start_tick=r.get("start_tick", int, d.start_tick),
            dead_time_ns=r.get_float("dead_time_ns", d.dead_time_ns, minimum=0),
            dark_rate_hz=r.get_float("dark_rate_hz", d.dark_rate_hz, minimum=0),
            settle_rate_fraction=r.get_float(
                "settle_rate_fraction", d.settle_rate_fraction, minimum=0, maximum=1
            ),
            frame_gap_ticks=r.get("frame_gap_ticks", int, d.frame_gap_ticks),
            sputter_rate_nm_per_frame=r.get_float(
                "sputter_rate_nm_per_frame", d.sputter_rate_nm_per_frame, minimum=0
            ),
            send_interval_s=r.get_float(
                "send_interval_s", d.send_interval_s, minimum=1e-4, maximum=1.0
            ),
            max_chunk_s=r.get_float("max_chunk_s", d.max_chunk_s, minimum=1e-4, maximum=10.0),
            max_records_per_frame=r.get("max_records_per_frame", int, d.max_records_per_frame),
            record_truth=r.get("record_truth", bool, d.record_truth),
            record_events=r.get("record_events", bool, d.record_events),
            beam=r.get("beam", str, d.beam),
            lateral_drift_px_per_frame=_drift(r),
            depth_step_nm=r.get_float("depth_step_nm", d.depth_step_nm, minimum=0),
        )
        r.reject_unknown()
        if config.start_tick >= 1 << 62:
            raise r.error("start_tick", "must be below 2**62")
        if config.beam not in BEAM_MODES:
            raise r.error("beam", f"expected one of {', '.join(BEAM_MODES)}, got {config.beam!r}")
        return config


def _drift(r: TableReader) -> tuple[float, float]:
    key = "lateral_drift_px_per_frame"
    value = r.get(key, list, [0.0, 0.0])
    if len(value) != 2 or not all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value
    ):
        raise r.error(key, f"expected [dx, dy], two finite numbers, got {value!r}")
    return float(value[0]), float(value[1])


@dataclass
class SimsTruth:
    start_true_s: float | None = None
    start_tick: int | None = None
    frames_sent: int = 0
    frames_unsent: int = 0
    bytes_sent: int = 0
    connections: int = 0
    frame_fates: list[tuple[int, str]] = field(default_factory=list)
    #: One entry per raster frame begun, indexed by the emitter's frame index: its first
    #: line start (device tick), depth, beam code, region and the specimen's shift.
    frame_start_tick: array[int] = field(default_factory=lambda: array("Q"))
    frame_depth_nm: array[float] = field(default_factory=lambda: array("d"))
    frame_beam: array[int] = field(default_factory=lambda: array("B"))
    frame_region: array[int] = field(default_factory=lambda: array("l"))
    frame_shift_x_px: array[int] = field(default_factory=lambda: array("l"))
    frame_shift_y_px: array[int] = field(default_factory=lambda: array("l"))
    #: Every beam request: true time, first frame in the new mode, mode, region, depth.
    beam_log: list[dict[str, Any]] = field(default_factory=list)
    #: Every region: true time and first frame, and at each switch to ``profile`` the
    #: cell's state as the specimen reads it (``SpecimenState`` fields).
    regions: list[dict[str, Any]] = field(default_factory=list)

    def frames(self) -> dict[str, npt.NDArray[Any]]:
        """The per-frame arrays (copies), as ``frames.npz`` holds them."""
        return {
            "frame": np.arange(len(self.frame_depth_nm), dtype=np.int64),
            "start_tick": np.array(self.frame_start_tick, dtype=np.uint64),
            "depth_nm": np.array(self.frame_depth_nm, dtype=np.float64),
            "beam": np.array(self.frame_beam, dtype=np.uint8),
            "region": np.array(self.frame_region, dtype=np.int64),
            "shift_x_px": np.array(self.frame_shift_x_px, dtype=np.int64),
            "shift_y_px": np.array(self.frame_shift_y_px, dtype=np.int64),
        }


class SimSims:
    def __init__(
        self,
        detector: DetectorConfig,
        config: SimsConfig,
        specimen: Specimen,
        state_source: Callable[[], SpecimenState],
        timebase: Timebase,
        faults: Faults,
        seed: int,
    ) -> None:
        self.detector = detector
        self.config = config
        self.specimen = specimen
        self.state_source = state_source
        self.timebase = timebase
        self.faults = faults
        self.seed = seed
        self.clock = DeviceClock(detector.tick_s, config.drift_ppm, config.start_tick)
        self.truth = SimsTruth()
        self.emitter: DetectorEmitter | None = None
        self.lock = threading.Lock()
        self._rng = np.random.default_rng(seed + 1)
        self._client: socket.socket | None = None
        self._emitted_until = 0
        #: Event-log chunks drained from the emitter, kept so every dump has them all.
        self._events: list[dict[str, npt.NDArray[Any]]] = []
        self.beam = config.beam
        self.region = 0
        self._profile_frames = 0  # of the current region: its depth is this x the rate
        self._region_frames = 0  # frames of the current region begun: its drift
        self._next_frame = 0  # the first frame whose rates are not set yet...
        self._frame_start = 0  # ...and its first line start (device tick)
        self._frame_period = 0
        self._applied: tuple[Any, ...] | None = None  # what the emitter's rates are for
        self._specimen_rates: tuple[tuple[float, SpecimenState], npt.NDArray[Any]] | None = None
        self.truth.regions.append({"region": 0, "true_s": 0.0, "frame": 0, "profiles": []})

    @property
    def depth_nm(self) -> float:
        """The depth of the next frame in the current region."""
        return self._profile_frames * self.config.sputter_rate_nm_per_frame

    def serve(self, listener: socket.socket, stop: threading.Event) -> None:
        listener.settimeout(self.config.send_interval_s)
        try:
            while not stop.is_set():
                self._accept(listener)
                if self.emitter is None:
                    continue
                self._emit()
                stop.wait(self.config.send_interval_s)
        finally:
            if self._client is not None:
                self._client.close()

    def _accept(self, listener: socket.socket) -> None:
        if self.emitter is not None:
            listener.settimeout(0.0)
        try:
            conn, _ = listener.accept()
        except (BlockingIOError, TimeoutError):
            return
        if self._client is not None:
            self._client.close()
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn.settimeout(SEND_TIMEOUT_S)
        self._client = conn
        self.truth.connections += 1
        if self.emitter is None:
            self._start()

    def _start(self) -> None:
        d, c = self.detector, self.config
        now = self.timebase.now_s()
        start_tick = self.clock.ticks_at(now)
        m = d.markers
        self.emitter = DetectorEmitter(
            d.record_type,
            d.tick_s,
            d.nx,
            d.ny,
            d.dwell_ticks,
            [
                (p.name, list(p.channels), list(p.species), p.switching, p.settle_ticks)
                for p in d.polarities
            ],
            line_settle_ticks=d.line_settle_ticks,
            flyback_ticks=d.flyback_ticks,
            frame_gap_ticks=c.frame_gap_ticks,
            frames_per_slice=d.frames_per_slice,
            frame_marker=m.frame,
            line_start_marker=m.line_start,
            line_stop_marker=m.line_stop,
            mass_switch_marker=m.mass_switch,
            frame_marker_at=m.frame_at,
            dead_time_ticks=round(c.dead_time_ns * 1e-9 / d.tick_s),
            dark_rate_hz=c.dark_rate_hz,
            settle_rate_fraction=c.settle_rate_fraction,
            start_tick=start_tick,
            seed=self.seed,
            record_truth=c.record_truth,
            record_events=c.record_events,
            max_records_per_frame=c.max_records_per_frame,
        )
        self.truth.start_true_s = now
        self.truth.start_tick = start_tick
        self._emitted_until = self._frame_start = start_tick
        self._frame_period = self.emitter.frame_period_ticks

    # --- beam, region, per-frame rates ---------------------------------------------------

    def set_beam(self, mode: str) -> dict[str, Any]:
        """Switch the beam from the next frame not begun; the beam log's entry. Call with
        :attr:`lock` held."""
        if mode not in BEAM_MODES:
            raise ValueError(f"unknown beam mode {mode!r} (expected {', '.join(BEAM_MODES)})")
        self.beam = mode
        entry = {
            "true_s": self.timebase.now_s(),
            "frame": self._next_frame,
            "mode": mode,
            "region": self.region,
            "depth_nm": self.depth_nm,
        }
        self.truth.beam_log.append(entry)
        if mode == "profile":
            state = asdict(self.state_source())
            self.truth.regions[-1]["profiles"].append(
                {k: entry[k] for k in ("true_s", "frame", "depth_nm")} | {"state": state}
            )
        return entry

    def new_region(self) -> None:
        """A fresh spot of the surface from the next frame not begun: depth 0, no drift
        yet, the region index one up. Call with :attr:`lock` held."""
        self.region += 1
        self._profile_frames = self._region_frames = 0
        self.truth.regions.append(
            {"region": self.region, "true_s": self.timebase.now_s(), "frame": self._next_frame,
             "profiles": []}
        )  # fmt: skip

    def _emit_frames(self, target: int) -> list[bytes]:
        """Emit up to ``target``, stopping at each frame start whose rates change to set
        them. Call with :attr:`lock` held."""
        assert self.emitter is not None
        frames: list[bytes] = []
        state: SpecimenState | None = None
        while self._emitted_until < target:
            assert self._emitted_until <= self._frame_start
            if self._emitted_until == self._frame_start:
                if state is None and self.beam != "off":
                    state = self.state_source()  # once per send: frames of a send share it
                starts = -(-(target - self._frame_start) // self._frame_period)
                self._begin_frames(starts, state)
            stop = min(target, self._frame_start)
            frames += self.emitter.emit_until(stop)
            self._emitted_until = stop
        return frames

    def _begin_frames(self, n: int, state: SpecimenState | None) -> None:
        """Set the rates of the next frame, which begins now, and record it and the ones
        after it (of the ``n`` that begin in this send) that have the same rates."""
        assert self.emitter is not None
        c, k0 = self.config, self._region_frames
        dx, dy = c.lateral_drift_px_per_frame
        profile = self.beam == "profile"
        shift = (_shift(k0, dx), _shift(k0, dy))
        rate = c.sputter_rate_nm_per_frame
        m = n
        if profile and rate > 0:  # frames of one depth step share their rates
            m = max(1, min(m, int(c.depth_step_nm / rate + 1e-9)))
        if dx != 0 or dy != 0:  # ... and so do frames until the rounded drift moves
            ks = np.arange(k0, k0 + min(m, _DRIFT_LOOKAHEAD), dtype=np.float64)
            same = (np.floor(ks * dx + 0.5) == shift[0]) & (np.floor(ks * dy + 0.5) == shift[1])
            m = len(ks) if same.all() else int(np.argmin(same))
        depth = self.depth_nm
        if self.beam == "off":
            key: tuple[Any, ...] = ("off",)
        else:  # image and profile see the same
            assert state is not None
            key = ("on", depth, state, shift)
        if key != self._applied:
            middle = depth + 0.5 * (m - 1) * rate if profile else depth
            self.emitter.set_rates(self._rates(middle, state, shift))
            self._applied = key
        t, p = self.truth, self._frame_period
        t.frame_start_tick.extend(range(self._frame_start, self._frame_start + m * p, p))
        if profile:
            t.frame_depth_nm.extend(depth + rate * np.arange(m))
        else:
            t.frame_depth_nm.extend(repeat(depth, m))
        t.frame_beam.extend(repeat(BEAM_CODES[self.beam], m))
        t.frame_region.extend(repeat(self.region, m))
        t.frame_shift_x_px.extend(repeat(shift[0], m))
        t.frame_shift_y_px.extend(repeat(shift[1], m))
        self._next_frame += m
        self._region_frames += m
        self._profile_frames += m if profile else 0
        self._frame_start += m * p

    def _rates(
        self, depth: float, state: SpecimenState | None, shift: tuple[int, int]
    ) -> npt.NDArray[Any]:
        """The specimen's rates, moved by ``shift`` pixels with the border replicated;
        zero with the beam off (or no state)."""
        d = self.detector
        if self.beam == "off" or state is None:
            return np.zeros((len(self.specimen.species), d.ny, d.nx))
        cached = self._specimen_rates
        if cached is None or cached[0] != (depth, state):
            cached = self._specimen_rates = ((depth, state), self.specimen.rates(depth, state))
        rates = cached[1]
        sx, sy = shift
        if sx or sy:
            rows = np.clip(np.arange(d.ny) - sy, 0, d.ny - 1)
            cols = np.clip(np.arange(d.nx) - sx, 0, d.nx - 1)
            rates = rates[:, rows[:, None], cols[None, :]]
        return rates

    def _emit(self) -> None:
        assert self.emitter is not None
        self._apply_clock_jump()
        now_tick = self.clock.ticks_at(self.timebase.now_s())
        max_chunk = round(
            self.config.max_chunk_s * self.timebase.acceleration / self.detector.tick_s
        )
        target = min(now_tick, self._emitted_until + max_chunk)
        if target <= self._emitted_until:
            return
        with self.lock:
            frames = self._emit_frames(target)
        self._apply_link_faults()
        for frame in frames:
            self._send(frame)

    def _send(self, frame: bytes) -> None:
        seq = int.from_bytes(frame[8:16], "little")
        log = self.faults.log
        now = self.timebase.now_s()
        if self._client is None:
            self.truth.frames_unsent += 1
            return
        # Stamped as it leaves: a send spans several emitter calls, whose frames carry the
        # call's tick, and the receiver's clock pairs each frame's tick with its arrival.
        frame = _restamp(frame, self.clock.ticks_at(now))
        if self.faults.take("detector", "drop_frames") or (
            self.faults.detector.drop_probability > 0
            and self._rng.random() < self.faults.detector.drop_probability
        ):
            log.add(now, "detector", "drop_frame")
            self.truth.frame_fates.append((seq, "dropped"))
            return
        if self.faults.take("detector", "corrupt_frames"):
            log.add(now, "detector", "corrupt_frame")
            frame = corrupt_frame(frame, self._rng)
        elif self.faults.take("detector", "garbage_records"):
            log.add(now, "detector", "garbage_records")
            frame = garbage_records(frame, self._rng)
        elif self.faults.take("detector", "truncate_frames"):
            log.add(now, "detector", "truncate_frame")
            frame = truncate_frame(frame, self._rng)
        try:
            self._client.sendall(frame)
        except OSError:
            self._client.close()
            self._client = None
            self.truth.frames_unsent += 1
            return
        self.truth.frames_sent += 1
        self.truth.bytes_sent += len(frame)

    def _apply_clock_jump(self) -> None:
        ticks = self.faults.take_value("detector", "clock_jump_ticks")
        if not ticks:
            return
        assert self.emitter is not None
        now = self.timebase.now_s()
        with self.lock:
            try:
                self.emitter.jump(ticks)
            except ValueError as e:  # the counter would pass 64 bits
                self.faults.log.add(now, "detector", "clock_jump_refused", error=str(e))
                return
            self.clock.jump(now, ticks)
            # The emitter jumps at its next line start; the emitted span and the next
            # frame's start (not begun, so at or after that line) move with it.
            self._emitted_until += ticks
            self._frame_start += ticks
            tick_before = self.emitter.jumps()[-1][0]
        self.faults.log.add(now, "detector", "clock_jump", ticks=ticks, tick_before=tick_before)

    def events_so_far(self) -> dict[str, npt.NDArray[Any]] | None:
        """Every count the emitter generated (``DetectorEmitter.take_events`` columns),
        or None unless ``record_events``. Call with :attr:`lock` held."""
        if self.emitter is None or not self.config.record_events:
            return None
        self._events.append(self.emitter.take_events())
        # One chunk from now on: the next call only joins what came since.
        joined = {k: np.concatenate([c[k] for c in self._events]) for k in self._events[0]}
        self._events = [joined]
        return joined

    def _apply_link_faults(self) -> None:
        now = self.timebase.now_s()
        stall = self.faults.take_value("detector", "stall_s")
        if stall > 0:
            self.faults.log.add(now, "detector", "stall", seconds=stall)
            time.sleep(stall)  # generation pauses too: the backlog is sent afterwards
        if self.faults.take("detector", "disconnect") and self._client is not None:
            self.faults.log.add(now, "detector", "disconnect")
            self._client.close()
            self._client = None


def _shift(frames: int, px_per_frame: float) -> int:
    """The drift after ``frames`` frames, rounded to whole pixels (halves up)."""
    return math.floor(frames * px_per_frame + 0.5)


def _restamp(frame: bytes, sent_tick: int) -> bytes:
    """The link frame with another ``sent_tick`` (never earlier than its own), re-sealed."""
    out = bytearray(frame)
    own = int.from_bytes(out[_SENT_TICK_AT : _SENT_TICK_AT + 8], "little")
    out[_SENT_TICK_AT : _SENT_TICK_AT + 8] = max(sent_tick, own).to_bytes(8, "little")
    view = memoryview(out)
    crc = zlib.crc32(view[_HEADER:], zlib.crc32(view[:_CRC_AT]))
    view.release()
    out[_CRC_AT:_HEADER] = crc.to_bytes(4, "little")
    return bytes(out)
