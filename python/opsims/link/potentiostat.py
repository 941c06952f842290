"""The potentiostat link, both ends: frames, commands, replies, samples
(layouts in docs/potentiostat-link.md)."""

from __future__ import annotations

import contextlib
import enum
import math
import socket
import struct
import time
import zlib
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

MAGIC = b"OPSP"
VERSION = 1
MAX_PAYLOAD = 65_536
_HEADER = struct.Struct("<4sBBHII")
HEADER_LEN = _HEADER.size
_CRC = struct.Struct("<I")

#: One potentiostat sample on the wire (32 bytes).
SAMPLE_DTYPE = np.dtype(
    [
        ("tick", "<u8"),
        ("ewe_v", "<f8"),
        ("current_a", "<f8"),
        ("mode", "u1"),
        ("flags", "u1"),
        ("reserved", "V6"),
    ]
)
MAX_SAMPLES_PER_FRAME = (MAX_PAYLOAD - 8) // SAMPLE_DTYPE.itemsize

FLAG_WATCHDOG_OPENED = 0x01
FLAG_COMPLIANCE = 0x02


class Kind(enum.IntEnum):
    SET_CURRENT = 0x10
    OPEN_CIRCUIT = 0x11
    START_EIS = 0x12
    READ_STATUS = 0x13
    HEARTBEAT = 0x14
    REPLY = 0x80
    HELLO = 0x81
    SAMPLES = 0x82
    EIS_POINT = 0x83
    EVENT = 0x84


COMMANDS = frozenset(
    {Kind.SET_CURRENT, Kind.OPEN_CIRCUIT, Kind.START_EIS, Kind.READ_STATUS, Kind.HEARTBEAT}
)


class ControlMode(enum.IntEnum):
    OPEN_CIRCUIT = 0
    GALVANOSTATIC = 1
    EIS = 2


class ReplyCode(enum.IntEnum):
    OK = 0
    UNKNOWN_COMMAND = 1
    BAD_PAYLOAD = 2
    OUT_OF_RANGE = 3
    BUSY = 4
    UNSUPPORTED_VERSION = 5


class EventCode(enum.IntEnum):
    EIS_DONE = 1
    WATCHDOG_OPEN_CIRCUIT = 2
    EIS_ABORTED = 3
    LIMIT_REACHED = 4


class LinkError(Exception):
    """The other end broke the protocol or the connection."""


@dataclass(frozen=True)
class Frame:
    kind: int
    sequence: int
    payload: bytes
    version: int = VERSION


def encode(kind: int, sequence: int, payload: bytes = b"", *, version: int = VERSION) -> bytes:
    if len(payload) > MAX_PAYLOAD:
        raise ValueError(f"payload of {len(payload)} bytes exceeds {MAX_PAYLOAD}")
    head = _HEADER.pack(MAGIC, version, kind, 0, sequence & 0xFFFF_FFFF, len(payload))
    return head + payload + _CRC.pack(zlib.crc32(payload, zlib.crc32(head)))


@dataclass
class FrameReader:
    """Reassembles frames from a byte stream in any chunking, resynchronising on damage."""

    bytes_skipped: int = 0
    frames_corrupt: int = 0
    _buf: bytearray = field(default_factory=bytearray)

    def feed(self, data: bytes) -> None:
        self._buf += data

    def __iter__(self) -> Iterator[Frame]:
        while (frame := self.next_frame()) is not None:
            yield frame

    def next_frame(self) -> Frame | None:
        buf = self._buf
        while True:
            start = buf.find(MAGIC)
            if start < 0:
                # Keep a tail that may be the start of a split magic.
                keep = min(len(buf), len(MAGIC) - 1)
                self.bytes_skipped += len(buf) - keep
                del buf[: len(buf) - keep]
                return None
            if start:
                self.bytes_skipped += start
                del buf[:start]
            if len(buf) < HEADER_LEN:
                return None
            _, version, kind, _, sequence, n = _HEADER.unpack_from(buf)
            if n > MAX_PAYLOAD:
                self._skip_bad_header()
                continue
            end = HEADER_LEN + n + _CRC.size
            if len(buf) < end:
                return None
            (crc,) = _CRC.unpack_from(buf, HEADER_LEN + n)
            if crc != zlib.crc32(memoryview(buf)[: HEADER_LEN + n]):
                self.frames_corrupt += 1
                self._skip_bad_header()
                continue
            payload = bytes(buf[HEADER_LEN : HEADER_LEN + n])
            del buf[:end]
            return Frame(kind, sequence, payload, version)

    def _skip_bad_header(self) -> None:
        # Drop the magic only: a real frame may start inside what looked like a payload.
        self.bytes_skipped += len(MAGIC)
        del self._buf[: len(MAGIC)]


# --- payloads -------------------------------------------------------------------------


@contextlib.contextmanager
def _malformed(kind: str) -> Iterator[None]:
    """A payload too short for its kind, or with a code the protocol does not have, is
    the other end's error: a LinkError that says so, not a struct or enum error."""
    try:
        yield
    except (struct.error, ValueError) as e:
        raise LinkError(f"malformed {kind} payload: {e}") from None


_F64 = struct.Struct("<d")
_CURRENT_LIMIT = struct.Struct("<dd")
_EIS = struct.Struct("<ddHd")
_REPLY = struct.Struct("<IHH")
_HELLO = struct.Struct("<HB5xQQdH")
_SAMPLES = struct.Struct("<H6x")
_EIS_POINT = struct.Struct("<QHH4xddd")
_EVENT = struct.Struct("<QHH")
_STATUS = struct.Struct("<QBB2xHHddd")


@dataclass(frozen=True)
class EisRequest:
    f_start_hz: float
    f_stop_hz: float
    points_per_decade: int
    amplitude_v: float

    def pack(self) -> bytes:
        return _EIS.pack(self.f_start_hz, self.f_stop_hz, self.points_per_decade, self.amplitude_v)

    @classmethod
    def unpack(cls, payload: bytes) -> EisRequest:
        with _malformed("START_EIS"):
            return cls(*_EIS.unpack(payload))

    def frequencies(self) -> npt.NDArray[np.float64]:
        """Log-spaced, high to low, both ends included."""
        decades = math.log10(self.f_start_hz / self.f_stop_hz)
        n = max(2, round(decades * self.points_per_decade) + 1)
        return np.logspace(math.log10(self.f_start_hz), math.log10(self.f_stop_hz), n)


#: The lengths a ``SET_CURRENT`` payload may have: ``amps``, or ``amps, limit_v``.
CURRENT_PAYLOAD_LENGTHS = (_F64.size, _CURRENT_LIMIT.size)


def pack_current(amps: float, limit_v: float | None = None) -> bytes:
    """``SET_CURRENT``: 8 bytes without a voltage limit, 16 with one (0 is no limit)."""
    if limit_v is None:
        return _F64.pack(amps)
    return _CURRENT_LIMIT.pack(amps, limit_v)


def unpack_current(payload: bytes) -> tuple[float, float | None]:
    """``(amps, limit_v)``; ``limit_v`` is None in the 8-byte form."""
    with _malformed("SET_CURRENT"):
        if len(payload) == _F64.size:
            (amps,) = _F64.unpack(payload)
            return float(amps), None
        amps, limit_v = _CURRENT_LIMIT.unpack(payload)
        return float(amps), float(limit_v)


@dataclass(frozen=True)
class Reply:
    request_sequence: int
    code: ReplyCode
    message: str = ""
    body: bytes = b""

    @property
    def ok(self) -> bool:
        return self.code == ReplyCode.OK

    def pack(self) -> bytes:
        text = self.message.encode()[:1024]
        return _REPLY.pack(self.request_sequence, self.code, len(text)) + text + self.body

    @classmethod
    def unpack(cls, payload: bytes) -> Reply:
        with _malformed("REPLY"):
            seq, code, n = _REPLY.unpack_from(payload)
            text = payload[_REPLY.size : _REPLY.size + n].decode(errors="replace")
            return cls(seq, ReplyCode(code), text, payload[_REPLY.size + n :])


@dataclass(frozen=True)
class Hello:
    protocol: int
    counter_bits: int
    tick_fs: int
    sample_period_ticks: int
    compliance_a: float
    name: str

    def pack(self) -> bytes:
        text = self.name.encode()
        head = _HELLO.pack(
            self.protocol,
            self.counter_bits,
            self.tick_fs,
            self.sample_period_ticks,
            self.compliance_a,
            len(text),
        )
        return head + text

    @classmethod
    def unpack(cls, payload: bytes) -> Hello:
        with _malformed("HELLO"):
            protocol, bits, tick_fs, period, compliance, n = _HELLO.unpack_from(payload)
            name = payload[_HELLO.size : _HELLO.size + n].decode(errors="replace")
            return cls(protocol, bits, tick_fs, period, compliance, name)


def pack_samples(samples: npt.NDArray[np.void]) -> bytes:
    return _SAMPLES.pack(len(samples)) + samples.astype(SAMPLE_DTYPE, copy=False).tobytes()


def unpack_samples(payload: bytes) -> npt.NDArray[np.void]:
    with _malformed("SAMPLES"):
        (count,) = _SAMPLES.unpack_from(payload)
    body = payload[_SAMPLES.size :]
    if len(body) != count * SAMPLE_DTYPE.itemsize:
        raise LinkError(f"SAMPLES frame says {count} samples but carries {len(body)} bytes")
    return np.frombuffer(body, dtype=SAMPLE_DTYPE).copy()


@dataclass(frozen=True)
class EisPoint:
    tick: int
    index: int
    n_points: int
    freq_hz: float
    z_re_ohm: float
    z_im_ohm: float

    def pack(self) -> bytes:
        return _EIS_POINT.pack(
            self.tick, self.index, self.n_points, self.freq_hz, self.z_re_ohm, self.z_im_ohm
        )

    @classmethod
    def unpack(cls, payload: bytes) -> EisPoint:
        with _malformed("EIS_POINT"):
            return cls(*_EIS_POINT.unpack(payload))


@dataclass(frozen=True)
class Event:
    tick: int
    code: EventCode
    message: str = ""

    def pack(self) -> bytes:
        text = self.message.encode()[:1024]
        return _EVENT.pack(self.tick, self.code, len(text)) + text

    @classmethod
    def unpack(cls, payload: bytes) -> Event:
        with _malformed("EVENT"):
            tick, code, n = _EVENT.unpack_from(payload)
            text = payload[_EVENT.size : _EVENT.size + n].decode(errors="replace")
            return cls(tick, EventCode(code), text)


@dataclass(frozen=True)
class Status:
    tick: int
    mode: ControlMode
    watchdog_opened: bool
    eis_done: int
    eis_total: int
    setpoint_a: float
    ewe_v: float
    current_a: float

    def pack(self) -> bytes:
        return _STATUS.pack(
            self.tick,
            self.mode,
            self.watchdog_opened,
            self.eis_done,
            self.eis_total,
            self.setpoint_a,
            self.ewe_v,
            self.current_a,
        )

    @classmethod
    def unpack(cls, payload: bytes) -> Status:
        with _malformed("STATUS"):
            tick, mode, wd, done, total, setpoint, ewe, current = _STATUS.unpack(payload)
            return cls(tick, ControlMode(mode), bool(wd), done, total, setpoint, ewe, current)


# --- host end -------------------------------------------------------------------------


class PotentiostatClient:
    """A blocking host-side connection: commands with replies, and everything streamed
    in between (samples, impedance points, events) queued for :meth:`poll`.

    The daemon's own reader is native; this client serves tests, tools and scripts.
    """

    def __init__(self, host: str, port: int, *, timeout_s: float = 5.0) -> None:
        self.timeout_s = timeout_s
        self._sock = socket.create_connection((host, port), timeout=timeout_s)
        self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._reader = FrameReader()
        self._sequence = 0
        #: Sample batches with the host time (ns) each arrived at, oldest first.
        self.batches: list[tuple[int, npt.NDArray[np.void]]] = []
        self.eis_points: list[EisPoint] = []
        self.events: list[Event] = []
        self.replies: deque[Reply] = deque()
        try:
            hello = self._next_frame(timeout_s)
            if hello.kind != Kind.HELLO:
                raise LinkError(f"expected HELLO, got kind 0x{hello.kind:02x}")
            self.hello = Hello.unpack(hello.payload)
        except BaseException:
            self._sock.close()
            raise

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> PotentiostatClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send_raw(self, data: bytes) -> None:
        self._sock.sendall(data)

    def send(self, kind: int, payload: bytes = b"") -> int:
        """Send one command; returns its sequence number."""
        seq = self._sequence
        self._sequence += 1
        self._sock.sendall(encode(kind, seq, payload))
        return seq

    def command(self, kind: int, payload: bytes = b"") -> Reply:
        return self.wait_reply(self.send(kind, payload))

    def wait_reply(self, sequence: int) -> Reply:
        deadline = time.monotonic() + self.timeout_s
        while True:
            for reply in self.replies:
                if reply.request_sequence == sequence:
                    self.replies.remove(reply)
                    return reply
            self._dispatch(self._next_frame(deadline - time.monotonic()))

    def set_current(self, amps: float, limit_v: float | None = None) -> Reply:
        """Galvanostatic at ``amps``; with ``limit_v`` the instrument opens the circuit at
        the first sample with |Ewe| >= ``limit_v`` and sends ``EVENT limit_reached``."""
        return self.command(Kind.SET_CURRENT, pack_current(amps, limit_v))

    def open_circuit(self) -> Reply:
        return self.command(Kind.OPEN_CIRCUIT)

    def heartbeat(self) -> Reply:
        return self.command(Kind.HEARTBEAT)

    def start_eis(self, request: EisRequest) -> Reply:
        return self.command(Kind.START_EIS, request.pack())

    def status(self) -> Status:
        reply = self.command(Kind.READ_STATUS)
        if not reply.ok:
            raise LinkError(f"READ_STATUS refused: {reply.code.name} {reply.message}")
        return Status.unpack(reply.body)

    def poll(self, duration_s: float) -> None:
        """Receive whatever arrives for `duration_s` (samples, points, events)."""
        deadline = time.monotonic() + duration_s
        while (left := deadline - time.monotonic()) > 0:
            try:
                frame = self._next_frame(left)
            except TimeoutError:
                return
            self._dispatch(frame)

    def take_samples(self) -> npt.NDArray[np.void]:
        """Every sample received since the last call, in order."""
        arrays = [b for _, b in self.batches]
        self.batches.clear()
        return np.concatenate(arrays) if arrays else np.empty(0, SAMPLE_DTYPE)

    def _dispatch(self, frame: Frame) -> None:
        if frame.kind == Kind.REPLY:
            self.replies.append(Reply.unpack(frame.payload))
        elif frame.kind == Kind.SAMPLES:
            self.batches.append((self._arrival_ns, unpack_samples(frame.payload)))
        elif frame.kind == Kind.EIS_POINT:
            self.eis_points.append(EisPoint.unpack(frame.payload))
        elif frame.kind == Kind.EVENT:
            self.events.append(Event.unpack(frame.payload))
        else:
            raise LinkError(f"unexpected frame kind 0x{frame.kind:02x} from the potentiostat")

    def _next_frame(self, timeout_s: float) -> Frame:
        deadline = time.monotonic() + timeout_s
        while (frame := self._reader.next_frame()) is None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no frame from the potentiostat in time")
            self._sock.settimeout(left)
            try:
                data = self._sock.recv(1 << 16)
            except TimeoutError:
                raise TimeoutError("no frame from the potentiostat in time") from None
            if not data:
                raise LinkError("the potentiostat closed the connection")
            self._arrival_ns = time.time_ns()
            self._reader.feed(data)
        return frame
