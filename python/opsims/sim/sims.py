"""The simulated SIMS detector front-end: the raster over the specimen, both detectors,
sent as live-link frames (docs/detector-link.md) by the native
:class:`~opsims._native.DetectorEmitter`.

Depth advances by the sputter rate each raster frame; the specimen's rates follow the
cell's state. The raster starts when the first host connects (the host arms the
acquisition) and then runs on: frames made while no host is connected are lost and
counted, and the sequence numbers go on, so a host that reconnects sees the loss.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
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
        )
        r.reject_unknown()
        if config.start_tick >= 1 << 62:
            raise r.error("start_tick", "must be below 2**62")
        return config


@dataclass
class SimsTruth:
    start_true_s: float | None = None
    start_tick: int | None = None
    frames_sent: int = 0
    frames_unsent: int = 0
    bytes_sent: int = 0
    connections: int = 0
    depth_nm_by_frame: list[float] = field(default_factory=list)
    frame_fates: list[tuple[int, str]] = field(default_factory=list)


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
        self._frame_index = -1
        self._emitted_until = 0
        #: Event-log chunks drained from the emitter, kept so every dump has them all.
        self._events: list[dict[str, npt.NDArray[Any]]] = []

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
        self._emitted_until = start_tick
        self._update_rates()

    def _update_rates(self) -> None:
        assert self.emitter is not None
        frame = self.emitter.position[0]
        if frame == self._frame_index:
            return
        self._frame_index = frame
        depth = frame * self.config.sputter_rate_nm_per_frame
        self.truth.depth_nm_by_frame.append(depth)
        self.emitter.set_rates(self.specimen.rates(depth, self.state_source()))

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
            frames = self.emitter.emit_until(target)
            self._emitted_until = target
            self._update_rates()
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
            # The emitter jumps at its next line start; the emitted span moves with it.
            self._emitted_until += ticks
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
