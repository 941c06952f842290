"""The simulated potentiostat: the instrument end of the potentiostat link
(docs/potentiostat-link.md) in front of the simulated cell.

One thread runs it. The cell's physics advance on the true timeline whether or not a host
is connected (current keeps flowing when the host dies: that is what the hardware
watchdog is for); samples are streamed only to a connected host.
"""

from __future__ import annotations

import math
import selectors
import socket
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from opsims.config_table import TableReader
from opsims.link import potentiostat as wire
from opsims.link.potentiostat import ControlMode, EventCode, Kind, ReplyCode
from opsims.sim.cell import Cell
from opsims.sim.faults import Faults
from opsims.sim.timebase import DeviceClock, Timebase

#: Samples are sent at least this often (wall time), bounding the interlock's latency.
SEND_INTERVAL_S = 0.02
_POLL_S = 0.005
#: A host that does not read for this long is treated as gone.
SEND_TIMEOUT_S = 2.0


@dataclass(frozen=True)
class PotentiostatConfig:
    tick_s: float = 1e-6
    counter_bits: int = 32
    drift_ppm: float = 0.0
    start_tick: int = 0
    sample_period_s: float = 0.01
    compliance_a: float = 10e-6
    voltage_range_v: float = 20.0
    watchdog_s: float = 2.0
    eis_f_max_hz: float = 7e6
    eis_f_min_hz: float = 1e-5
    eis_cycles_per_point: float = 3.0
    eis_min_point_s: float = 0.05
    truth_state_interval_s: float = 1.0
    name: str = "opsims-sim potentiostat"

    @classmethod
    def from_mapping(
        cls, table: Mapping[str, Any], path: str = "sim.potentiostat"
    ) -> PotentiostatConfig:
        r = TableReader(table, path)
        d = cls()
        config = cls(
            tick_s=r.get_float("tick_s", d.tick_s, minimum=1e-12, maximum=1.0),
            counter_bits=r.get("counter_bits", int, d.counter_bits),
            drift_ppm=r.get_float("drift_ppm", d.drift_ppm, minimum=-1000, maximum=1000),
            start_tick=r.get("start_tick", int, d.start_tick),
            sample_period_s=r.get_float(
                "sample_period_s", d.sample_period_s, minimum=1e-4, maximum=60.0
            ),
            compliance_a=r.get_float(
                "compliance_a", d.compliance_a, minimum=0, exclusive_minimum=True
            ),
            voltage_range_v=r.get_float(
                "voltage_range_v", d.voltage_range_v, minimum=0, exclusive_minimum=True
            ),
            watchdog_s=r.get_float("watchdog_s", d.watchdog_s, minimum=0.01),
            eis_f_max_hz=r.get_float("eis_f_max_hz", d.eis_f_max_hz, minimum=1e-6),
            eis_f_min_hz=r.get_float("eis_f_min_hz", d.eis_f_min_hz, minimum=1e-6),
            eis_cycles_per_point=r.get_float(
                "eis_cycles_per_point", d.eis_cycles_per_point, minimum=0.1
            ),
            eis_min_point_s=r.get_float("eis_min_point_s", d.eis_min_point_s, minimum=0),
            truth_state_interval_s=r.get_float(
                "truth_state_interval_s", d.truth_state_interval_s, minimum=1e-3
            ),
            name=r.get("name", str, d.name),
        )
        r.reject_unknown()
        if not 16 <= config.counter_bits <= 64:
            raise r.error("counter_bits", f"must be within 16..64, got {config.counter_bits}")
        if config.start_tick >= 1 << config.counter_bits:
            raise r.error("start_tick", f"does not fit {config.counter_bits} bits")
        if config.eis_f_min_hz >= config.eis_f_max_hz:
            raise r.error("eis_f_min_hz", "must be below eis_f_max_hz")
        return config


@dataclass
class _Sweep:
    request: wire.EisRequest
    frequencies: npt.NDArray[np.float64]
    parameters: dict[str, float]
    next_index: int = 0
    point_due_s: float = 0.0
    points: list[tuple[float, complex]] = field(default_factory=list)


@dataclass
class PotentiostatTruth:
    """Everything the instrument did, for tests: each sample as generated (and whether a
    host received it), cell-state snapshots, impedance sweeps, commands and events
    (every ``EVENT`` the instrument raised, sent or not, with its unwrapped tick)."""

    samples: list[tuple[float, int, float, float, int, int, bool]] = field(default_factory=list)
    states: list[dict[str, Any]] = field(default_factory=list)
    sweeps: list[dict[str, Any]] = field(default_factory=list)
    commands: list[dict[str, Any]] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    connections: int = 0
    watchdog_trips: int = 0

    def samples_array(self) -> dict[str, npt.NDArray[Any]]:
        cols = list(zip(*self.samples, strict=True)) if self.samples else [()] * 7
        names = ("true_s", "tick", "ewe_v", "current_a", "mode", "flags", "sent")
        kinds = (np.float64, np.uint64, np.float64, np.float64, np.uint8, np.uint8, np.bool_)
        return {n: np.asarray(c, dtype=k) for n, c, k in zip(names, cols, kinds, strict=True)}


class SimPotentiostat:
    def __init__(
        self,
        config: PotentiostatConfig,
        cell: Cell,
        timebase: Timebase,
        faults: Faults,
    ) -> None:
        self.config = config
        self.cell = cell
        self.timebase = timebase
        self.faults = faults
        self.clock = DeviceClock(
            config.tick_s, config.drift_ppm, config.start_tick, config.counter_bits
        )
        self.truth = PotentiostatTruth()
        self.lock = threading.Lock()  # guards the cell and state against the control port
        self._now_s = 0.0
        self._next_state_s = 0.0
        self._setpoint_a = 0.0
        #: The galvanostatic control's |Ewe| limit; 0 is none.
        self._limit_v = 0.0
        self._mode = ControlMode.OPEN_CIRCUIT
        self._sweep: _Sweep | None = None
        self._last_ewe = 0.0
        self._last_current = 0.0
        self._watchdog_flag = False
        self._last_command_wall = time.monotonic()
        self._client: socket.socket | None = None
        self._reader = wire.FrameReader()
        self._out_seq = 0
        self._pending: list[tuple[int, float, float, int, int]] = []
        self._outbox: list[bytes] = []
        self._sel = selectors.DefaultSelector()
        self._last_send_wall = time.monotonic()
        self._stalled_until = 0.0

    # --- the thread -------------------------------------------------------------------

    def serve(self, listener: socket.socket, stop: threading.Event) -> None:
        sel = self._sel
        listener.setblocking(False)
        sel.register(listener, selectors.EVENT_READ, "listen")
        try:
            while not stop.is_set():
                # Wake when the next sample is due, so samples leave fresh.
                due = self.timebase.wall_s_until(self._now_s + self.config.sample_period_s)
                for key, _ in sel.select(min(_POLL_S, due)):
                    if key.data == "listen":
                        self._accept(listener)
                    elif not self._stalled():
                        self._receive()
                with self.lock:
                    self._advance(self.timebase.now_s())
                self._apply_link_faults()
                self._flush()
        finally:
            self._drop_client()
            sel.close()

    def _accept(self, listener: socket.socket) -> None:
        try:
            conn, _ = listener.accept()
        except BlockingIOError:
            return
        # One host at a time; a new connection is a host that reconnected after a failure.
        self._drop_client()
        conn.settimeout(SEND_TIMEOUT_S)
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._client = conn
        self._reader = wire.FrameReader()
        self._out_seq = 0
        self._pending.clear()
        self._outbox.clear()
        self.truth.connections += 1
        self._sel.register(conn, selectors.EVENT_READ, "client")
        hello = wire.Hello(
            protocol=wire.VERSION,
            counter_bits=self.config.counter_bits,
            tick_fs=round(self.config.tick_s * 1e15),
            sample_period_ticks=round(self.config.sample_period_s / self.config.tick_s),
            compliance_a=self.config.compliance_a,
            name=self.config.name,
        )
        self._send(Kind.HELLO, hello.pack())

    def _drop_client(self) -> None:
        if self._client is not None:
            self._sel.unregister(self._client)
            self._client.close()
            self._client = None

    def _receive(self) -> None:
        if self._client is None:
            return
        try:
            data = self._client.recv(1 << 16)
        except OSError:
            data = b""
        if not data:
            self._drop_client()
            return
        self._reader.feed(data)
        for frame in self._reader:
            with self.lock:
                self._advance(self.timebase.now_s())
                reply = self._handle(frame)
            self._send(Kind.REPLY, reply.pack())

    def _stalled(self) -> bool:
        return time.monotonic() < self._stalled_until

    def _apply_link_faults(self) -> None:
        stall = self.faults.take_value("potentiostat", "stall_s")
        if stall > 0:
            self._stalled_until = time.monotonic() + stall
            self.faults.log.add(self._now_s, "potentiostat", "stall", seconds=stall)
        if self.faults.take("potentiostat", "disconnect") and self._client is not None:
            self.faults.log.add(self._now_s, "potentiostat", "disconnect")
            self._drop_client()
        jump = self.faults.take_value("potentiostat", "clock_jump_ticks")
        if jump:
            self.clock.jump(self._now_s, jump)
            self.faults.log.add(self._now_s, "potentiostat", "clock_jump", ticks=jump)

    # --- commands ---------------------------------------------------------------------

    def _handle(self, frame: wire.Frame) -> wire.Reply:
        seq = frame.sequence
        if frame.version != wire.VERSION:
            return wire.Reply(
                seq, ReplyCode.UNSUPPORTED_VERSION, f"protocol version {wire.VERSION} only"
            )
        if frame.kind not in wire.COMMANDS:
            return wire.Reply(seq, ReplyCode.UNKNOWN_COMMAND, f"kind 0x{frame.kind:02x}")
        kind = Kind(frame.kind)
        expected = {Kind.SET_CURRENT: wire.CURRENT_PAYLOAD_LENGTHS, Kind.START_EIS: (26,)}
        lengths = expected.get(kind, (0,))
        if len(frame.payload) not in lengths:
            takes = " or ".join(str(n) for n in lengths)
            return wire.Reply(
                seq,
                ReplyCode.BAD_PAYLOAD,
                f"{kind.name} takes {takes} payload bytes, got {len(frame.payload)}",
            )
        self._last_command_wall = time.monotonic()
        self.truth.commands.append({"true_s": self._now_s, "kind": kind.name})
        if kind == Kind.SET_CURRENT:
            return self._set_current(seq, *wire.unpack_current(frame.payload))
        if kind == Kind.OPEN_CIRCUIT:
            self._open_circuit("command")
            return wire.Reply(seq, ReplyCode.OK)
        if kind == Kind.START_EIS:
            return self._start_eis(seq, wire.EisRequest.unpack(frame.payload))
        if kind == Kind.READ_STATUS:
            return wire.Reply(seq, ReplyCode.OK, body=self._status().pack())
        return wire.Reply(seq, ReplyCode.OK)  # HEARTBEAT

    def _set_current(self, seq: int, amps: float, limit_v: float | None) -> wire.Reply:
        limit = self.config.compliance_a
        if not math.isfinite(amps) or abs(amps) > limit:
            return wire.Reply(seq, ReplyCode.OUT_OF_RANGE, f"current {amps} A outside ±{limit} A")
        limit_v = 0.0 if limit_v is None else limit_v
        if not (math.isfinite(limit_v) and limit_v >= 0):
            return wire.Reply(
                seq, ReplyCode.OUT_OF_RANGE, f"voltage limit {limit_v} V must be finite and >= 0"
            )
        if self._sweep is not None:
            return wire.Reply(seq, ReplyCode.BUSY, "an impedance sweep is running")
        self.cell.set_current(amps)
        self._setpoint_a = amps
        self._limit_v = limit_v
        self._mode = ControlMode.GALVANOSTATIC
        return wire.Reply(seq, ReplyCode.OK)

    def _open_circuit(self, why: str) -> None:
        if self.faults.potentiostat.ignore_open_circuit:
            self.faults.log.add(self._now_s, "potentiostat", "ignored_open_circuit", why=why)
            return
        if self._sweep is not None:
            self._sweep = None
            self._event(EventCode.EIS_ABORTED, "open circuit")
        self.cell.open_circuit()
        self._setpoint_a = 0.0
        self._limit_v = 0.0
        self._mode = ControlMode.OPEN_CIRCUIT

    def _start_eis(self, seq: int, req: wire.EisRequest) -> wire.Reply:
        c = self.config
        numbers = (req.f_start_hz, req.f_stop_hz, req.amplitude_v)
        if not all(math.isfinite(v) for v in numbers) or not (
            c.eis_f_min_hz <= req.f_stop_hz < req.f_start_hz <= c.eis_f_max_hz
            and 0 < req.amplitude_v <= 1.0
            and 1 <= req.points_per_decade <= 100
        ):
            return wire.Reply(
                seq,
                ReplyCode.OUT_OF_RANGE,
                f"sweep needs {c.eis_f_min_hz} <= f_stop < f_start <= {c.eis_f_max_hz} Hz, "
                "0 < amplitude <= 1 V, 1..100 points per decade",
            )
        if self._mode != ControlMode.OPEN_CIRCUIT:
            return wire.Reply(seq, ReplyCode.BUSY, "open the circuit before a sweep")
        freqs = req.frequencies()
        self._sweep = _Sweep(req, freqs, self.cell.eis_parameters())
        self._sweep.point_due_s = self._now_s + self._point_duration(freqs[0])
        self._mode = ControlMode.EIS
        self.truth.sweeps.append(
            {
                "start_true_s": self._now_s,
                "request": req.__dict__,
                "parameters": self._sweep.parameters,
                "frequencies_hz": freqs.tolist(),
            }
        )
        return wire.Reply(seq, ReplyCode.OK)

    def _point_duration(self, freq_hz: float) -> float:
        return max(self.config.eis_min_point_s, self.config.eis_cycles_per_point / freq_hz)

    def _status(self) -> wire.Status:
        sweep = self._sweep
        return wire.Status(
            tick=self.clock.counter_at(self._now_s),
            mode=self._mode,
            watchdog_opened=self._watchdog_flag,
            eis_done=sweep.next_index if sweep else 0,
            eis_total=len(sweep.frequencies) if sweep else 0,
            setpoint_a=self._setpoint_a,
            ewe_v=self._last_ewe,
            current_a=self._last_current,
        )

    # --- physics ----------------------------------------------------------------------

    def _advance(self, true_s: float) -> None:
        period = self.config.sample_period_s
        self._check_watchdog()
        while self._now_s + period <= true_s:
            self.cell.advance(period)
            self._now_s += period
            self._progress_sweep()
            self._take_sample()
            if self._now_s >= self._next_state_s:
                self._snapshot()

    def _check_watchdog(self) -> None:
        idle = time.monotonic() - self._last_command_wall
        if self._mode == ControlMode.GALVANOSTATIC and idle > self.config.watchdog_s:
            if self.faults.potentiostat.ignore_open_circuit:
                return
            self._open_circuit("watchdog")
            self._watchdog_flag = True
            self.truth.watchdog_trips += 1
            self._event(
                EventCode.WATCHDOG_OPEN_CIRCUIT, f"no command for {idle:.2f} s while current flowed"
            )

    def _progress_sweep(self) -> None:
        sweep = self._sweep
        while sweep is not None and self._now_s >= sweep.point_due_s:
            i = sweep.next_index
            f = float(sweep.frequencies[i])
            z = complex(self.cell.impedance(np.array([f]), sweep.request.amplitude_v)[0])
            sweep.points.append((f, z))
            point = wire.EisPoint(
                self.clock.counter_at(self._now_s), i, len(sweep.frequencies), f, z.real, z.imag
            )
            self._send(Kind.EIS_POINT, point.pack())
            sweep.next_index += 1
            if sweep.next_index == len(sweep.frequencies):
                self.truth.sweeps[-1]["z"] = [[p[1].real, p[1].imag] for p in sweep.points]
                self._sweep = None
                self._mode = ControlMode.OPEN_CIRCUIT
                self.cell.open_circuit()
                self._event(EventCode.EIS_DONE, f"{len(sweep.frequencies)} points")
                return
            next_f = float(sweep.frequencies[sweep.next_index])
            sweep.point_due_s += self._point_duration(next_f)

    def _take_sample(self) -> None:
        ewe, current = self.cell.sample()
        limit = self.config.voltage_range_v
        ewe = min(max(ewe, -limit), limit)  # the instrument's own voltage range
        if self.faults.take("potentiostat", "nan_samples"):
            ewe = math.nan
            self.faults.log.add(self._now_s, "potentiostat", "nan_sample")
        flags = 0
        if self._watchdog_flag:
            flags |= wire.FLAG_WATCHDOG_OPENED
            self._watchdog_flag = False
        self._last_ewe, self._last_current = ewe, current
        tick = self.clock.ticks_at(self._now_s)
        sent = self._client is not None
        self.truth.samples.append((self._now_s, tick, ewe, current, self._mode, flags, sent))
        if sent:
            mask = (1 << self.config.counter_bits) - 1
            self._pending.append((tick & mask, ewe, current, int(self._mode), flags))
        self._check_limit(ewe)

    def _check_limit(self, ewe: float) -> None:
        """The step's voltage limit, judged on every sample in cell time: the sample that
        reaches it is sent as taken, and the circuit is open from its time on (the cell
        advances to the next sample at zero current)."""
        limit = self._limit_v
        if not (limit > 0 and self._mode == ControlMode.GALVANOSTATIC and abs(ewe) >= limit):
            return  # (a NaN sample compares false: it never ends a step)
        self._limit_v = 0.0  # the step ended, even if a fault keeps the current on
        self._open_circuit("limit")
        self._event(EventCode.LIMIT_REACHED, f"|Ewe| {abs(ewe):.3f} V >= {limit:g} V")

    def _snapshot(self) -> None:
        state = self.cell.state()
        snap = {k: (v.name if hasattr(v, "name") else v) for k, v in state.__dict__.items()}
        snap["true_s"] = self._now_s
        snap["tick"] = self.clock.ticks_at(self._now_s)
        self.truth.states.append(snap)
        self._next_state_s = self._now_s + self.config.truth_state_interval_s

    # --- output -----------------------------------------------------------------------

    def _event(self, code: EventCode, message: str) -> None:
        """An EVENT at the present sample time, after the samples taken so far."""
        ticks = self.clock.ticks_at(self._now_s)
        self.truth.events.append(
            {
                "true_s": self._now_s,
                "tick": ticks,
                "code": int(code),
                "name": code.name.lower(),
                "message": message,
            }
        )
        self._pack_pending()
        tick = self.clock.counter_at(self._now_s)
        self._send(Kind.EVENT, wire.Event(tick, code, message).pack())

    def _flush(self) -> None:
        now = time.monotonic()
        due = now - self._last_send_wall >= SEND_INTERVAL_S or len(self._pending) >= 1024
        if self._pending and due and not self._stalled():
            self._pack_pending()
            self._last_send_wall = now
        self._write_outbox()

    def _pack_pending(self) -> None:
        """Queue the pending samples for sending, in SAMPLES frames."""
        pending, self._pending = self._pending, []
        for start in range(0, len(pending), wire.MAX_SAMPLES_PER_FRAME):
            chunk = pending[start : start + wire.MAX_SAMPLES_PER_FRAME]
            arr = np.zeros(len(chunk), wire.SAMPLE_DTYPE)
            tick, ewe, cur, mode, flags = zip(*chunk, strict=True)
            arr["tick"], arr["ewe_v"], arr["current_a"] = tick, ewe, cur
            arr["mode"], arr["flags"] = mode, flags
            self._send(Kind.SAMPLES, wire.pack_samples(arr))

    def _send(self, kind: int, payload: bytes) -> None:
        if self._client is not None:
            self._outbox.append(wire.encode(kind, self._out_seq, payload))
            self._out_seq += 1

    def _write_outbox(self) -> None:
        if self._client is None or not self._outbox or self._stalled():
            return
        data, self._outbox = b"".join(self._outbox), []
        try:
            self._client.sendall(data)
        except OSError:  # the host went away or stopped reading for SEND_TIMEOUT_S
            self._drop_client()
