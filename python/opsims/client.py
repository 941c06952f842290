"""Client library for opsimsd (docs/publishing.md): :class:`Subscriber` for the live
stream, :class:`Control` for requests, :class:`CubeMirror`, a local copy of the
daemon's cubes kept current by snapshot plus updates (ZeroMQ guide, Clone pattern), and
:class:`LiveProfile`, the depth profile put together from the ``profile`` topic.

::

    from opsims.client import Subscriber

    # the daemon's PUB endpoint, as configured
    with Subscriber("tcp://127.0.0.1:7410", ["ec", "safety"]) as sub:
        for msg in sub:
            print(msg.topic, msg.seq, msg.fields)

Against a daemon with CURVE keys (docs/publishing.md, "Security") every client takes its
keys from ``OPSIMS_CLIENT_KEY`` and ``OPSIMS_SERVER_KEY`` unless given ``curve=``.
"""

from __future__ import annotations

import math
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Self

import numpy as np
import zmq
from zmq.utils.monitor import recv_monitor_message

from opsims import wire
from opsims.keys import ClientKeys, KeyFileError
from opsims.wire import Array, ControlError, Message, Reply, WireError

__all__ = [
    "ClientKeys",
    "Control",
    "ControlError",
    "CubeMirror",
    "KeyFileError",
    "LiveProfile",
    "Message",
    "Snapshot",
    "Subscriber",
]

#: How soon ZeroMQ retries a lost connection (it does so by itself, forever).
RECONNECT_IVL_MS = 100
RECONNECT_IVL_MAX_MS = 2000
# TCP keepalive notices a silently dead peer (cable pulled). Not ZMTP heartbeats: in
# libzmq 4.3 they time out a subscriber that merely reads slowly, and the reconnect
# that follows can abort the process (zeromq/libzmq#3937).
KEEPALIVE_IDLE_S = 10
KEEPALIVE_INTVL_S = 2
KEEPALIVE_CNT = 3

GapCallback = Callable[[str, int, int], None]
#: A client's CURVE keys; None: from the environment (OPSIMS_CLIENT_KEY and
#: OPSIMS_SERVER_KEY, plain when neither is set); False: plain, whatever it says.
Curve = ClientKeys | Literal[False] | None
_UNSET: Any = object()


def _curve(curve: Curve) -> ClientKeys | None:
    if curve is False:
        return None
    return curve if curve is not None else ClientKeys.from_env()


class _Disconnect:
    """Marks, in stream order, where a connection was lost."""


class _Closing:
    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass
class Snapshot:
    """A ``snapshot`` reply: the state is current up to message ``seq`` of its topic."""

    seq: int
    fields: dict[str, Any] = field(default_factory=dict)
    arrays: dict[str, Array] = field(default_factory=dict)


class Subscriber(_Closing):
    """A SUB socket that decodes messages and watches sequence numbers.

    ``topics`` are ZeroMQ prefix filters (``""`` is everything; ``"ev"`` matches
    ``events``). ``timeout_s`` is how long :meth:`recv` and iteration wait for a message
    (None: forever); iteration ends at the first wait that times out.

    Per topic, a sequence number that skips ahead is a gap: ``gaps`` counts them,
    ``missed`` counts the messages lost, and ``on_gap(topic, expected, got)`` is called.
    The first message of a topic, the first after a reconnect (``reconnects``) and a
    number that goes back (the daemon restarted: ``restarts``) are not gaps.
    A malformed message raises :class:`WireError` from :meth:`recv`; the next call
    carries on. ``curve``: the CURVE keys, for a daemon that protects its stream.
    """

    def __init__(
        self,
        endpoint: str,
        topics: Iterable[str] = ("",),
        *,
        timeout_s: float | None = None,
        context: zmq.Context[Any] | None = None,
        rcvhwm: int = 10_000,
        on_gap: GapCallback | None = None,
        on_reconnect: Callable[[], None] | None = None,
        curve: Curve = None,
    ) -> None:
        keys = _curve(curve)
        self.endpoint = endpoint
        self.timeout_s = timeout_s
        self.on_gap = on_gap
        self.on_reconnect = on_reconnect
        prefixes = [topic.encode("ascii") for topic in topics]
        ctx = context if context is not None else zmq.Context.instance()
        sock = ctx.socket(zmq.SUB)
        for option, value in (
            (zmq.RCVHWM, rcvhwm),
            (zmq.LINGER, 0),
            (zmq.RECONNECT_IVL, RECONNECT_IVL_MS),
            (zmq.RECONNECT_IVL_MAX, RECONNECT_IVL_MAX_MS),
            (zmq.TCP_KEEPALIVE, 1),
            (zmq.TCP_KEEPALIVE_IDLE, KEEPALIVE_IDLE_S),
            (zmq.TCP_KEEPALIVE_INTVL, KEEPALIVE_INTVL_S),
            (zmq.TCP_KEEPALIVE_CNT, KEEPALIVE_CNT),
        ):
            sock.setsockopt(option, value)
        for prefix in prefixes:
            sock.setsockopt(zmq.SUBSCRIBE, prefix)
        if keys is not None:
            keys.apply(sock)
        self._monitor = sock.get_monitor_socket(zmq.EVENT_DISCONNECTED)
        try:
            sock.connect(endpoint)
        except zmq.ZMQError:
            sock.disable_monitor()
            self._monitor.close(linger=0)
            sock.close(linger=0)
            raise
        self._sock = sock
        self._poller = zmq.Poller()
        self._poller.register(sock, zmq.POLLIN)
        self._poller.register(self._monitor, zmq.POLLIN)
        self._pending: deque[Message | WireError | _Disconnect] = deque()
        self._last: dict[str, tuple[str, int]] = {}
        self.received: Counter[str] = Counter()
        self.gaps = 0
        self.missed = 0
        self.restarts = 0
        self.reconnects = 0

    def recv(self, timeout_s: float | None = _UNSET) -> Message | None:
        """The next message, or None if none came within ``timeout_s`` (default: the
        subscriber's; None waits forever)."""
        timeout = self.timeout_s if timeout_s is _UNSET else timeout_s
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            while self._pending:
                item = self._pending.popleft()
                if isinstance(item, _Disconnect):
                    self._reconnected()
                elif isinstance(item, WireError):
                    raise item
                else:
                    return item
            wait_ms = None
            if deadline is not None:
                wait_ms = max(0, math.ceil((deadline - time.monotonic()) * 1e3))
            ready = dict(self._poller.poll(wait_ms))
            if self._monitor in ready:
                self._read_monitor()
            elif self._sock in ready:
                return self._take(self._sock.recv_multipart(copy=False))
            elif deadline is not None and time.monotonic() >= deadline:
                return None

    def __iter__(self) -> Iterator[Message]:
        while (msg := self.recv()) is not None:
            yield msg

    def _take(self, frames: list[zmq.Frame]) -> Message:
        msg = wire.decode([f.buffer for f in frames])
        self.received[msg.topic] += 1
        last = self._last.get(msg.topic)
        self._last[msg.topic] = (msg.source, msg.seq)
        if last is None:
            return msg
        source, seq = last
        if source != msg.source or msg.seq <= seq:
            self.restarts += 1
        elif msg.seq > seq + 1:
            self.gaps += 1
            self.missed += msg.seq - seq - 1
            if self.on_gap is not None:
                self.on_gap(msg.topic, seq + 1, msg.seq)
        return msg

    def _read_monitor(self) -> None:
        lost = False
        while True:
            try:
                event = recv_monitor_message(self._monitor, zmq.NOBLOCK)
            except zmq.Again:
                break
            lost = lost or event["event"] == zmq.EVENT_DISCONNECTED
        if not lost:
            return
        # What arrived before the loss is already queued: take it now, so the mark
        # falls between the old connection's messages and the new one's.
        while True:
            try:
                frames = self._sock.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                break
            try:
                self._pending.append(self._take(frames))
            except WireError as exc:
                self._pending.append(exc)
        self._pending.append(_Disconnect())

    def _reconnected(self) -> None:
        # Messages published while we were away are not gaps on the new connection.
        self._last.clear()
        self.reconnects += 1
        if self.on_reconnect is not None:
            self.on_reconnect()

    def close(self) -> None:
        if self._sock.closed:
            return
        self._sock.disable_monitor()
        self._monitor.close(linger=0)
        self._sock.close(linger=0)


class Control(_Closing):
    """Requests to the daemon's control socket. Every call waits at most ``timeout_s``;
    a timeout raises :class:`ControlError` with code ``"timeout"`` and replaces the
    socket (a REQ socket that lost its reply is stuck otherwise). A refused request
    raises :class:`ControlError` with the daemon's code and message (``forbidden``:
    this client's key lacks the permission). ``curve``: the CURVE keys; a daemon that
    does not admit them never answers (``timeout``)."""

    def __init__(
        self,
        endpoint: str,
        *,
        timeout_s: float = 5.0,
        context: zmq.Context[Any] | None = None,
        curve: Curve = None,
    ) -> None:
        self.endpoint = endpoint
        self.timeout_s = timeout_s
        self._keys = _curve(curve)
        self._context = context if context is not None else zmq.Context.instance()
        self._sock = self._open()

    def _open(self) -> zmq.Socket[Any]:
        sock: zmq.Socket[Any] = self._context.socket(zmq.REQ)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RCVTIMEO, max(1, round(self.timeout_s * 1e3)))
        sock.setsockopt(zmq.SNDTIMEO, max(1, round(self.timeout_s * 1e3)))
        if self._keys is not None:
            self._keys.apply(sock)
        try:
            sock.connect(self.endpoint)
        except zmq.ZMQError:
            sock.close(linger=0)
            raise
        return sock

    def _reopen(self) -> None:
        self._sock.close(linger=0)
        self._sock = self._open()

    def call(self, cmd: str, /, **args: Any) -> Reply:
        """Any command; ``args`` go as the request's arguments (numpy arrays as frames)."""
        frames = wire.encode_request(cmd, **args)
        try:
            self._sock.send_multipart(frames, copy=False)
            raw = self._sock.recv_multipart(copy=False)
        except zmq.Again:
            self._reopen()
            raise ControlError(
                "timeout", f"no reply to {cmd!r} from {self.endpoint} within {self.timeout_s} s"
            ) from None
        except BaseException:
            self._reopen()  # e.g. Ctrl-C while waiting: the next call needs a fresh socket
            raise
        try:
            reply = wire.decode_reply([f.buffer for f in raw])
        except WireError as exc:
            raise ControlError("bad_reply", str(exc)) from exc
        if reply.error is not None:
            raise ControlError(*reply.error)
        return reply

    def status(self) -> dict[str, Any]:
        return self.call("status").fields

    def start_run(
        self, protocol: Mapping[str, Any], operator: str = "", reason: str = ""
    ) -> dict[str, Any]:
        """Start ``protocol``; ``operator`` and ``reason`` go into the run's record."""
        return self.call("start_run", protocol=dict(protocol), **_who(operator, reason)).fields

    def stop_run(self, operator: str = "", reason: str = "") -> dict[str, Any]:
        return self.call("stop_run", **_who(operator, reason)).fields

    def abort(self, reason: str, operator: str = "") -> dict[str, Any]:
        return self.call("abort", reason=reason, **_who(operator, "")).fields

    def reset_interlock(self, operator: str, reason: str) -> dict[str, Any]:
        return self.call("reset_interlock", operator=operator, reason=reason).fields

    def snapshot(self, what: str = "cubes") -> Snapshot:
        """The daemon's current ``"cubes"`` or ``"profile"``, tagged with the sequence
        number of the last ``cube`` (or ``profile``) message it includes."""
        reply = self.call("snapshot", what=what)
        seq = reply.fields.pop("seq", None)
        if not isinstance(seq, int) or isinstance(seq, bool):
            raise ControlError("bad_reply", f"snapshot without an integer seq: {seq!r}")
        return Snapshot(seq, reply.fields, reply.arrays)

    def close(self) -> None:
        self._sock.close(linger=0)


class LiveProfile:
    """The daemon's depth profile (``u64 [z, species]``) kept current from ``profile``
    messages. A message holds the rows from slice ``z0`` on; one with ``z0 == 0`` (after
    a rebin or a new run) holds the whole profile. Until it has one, and after a gap,
    :attr:`profile` is None; with ``control`` it then takes a ``snapshot("profile")``
    at once (the Clone pattern, as :class:`CubeMirror`), without it waits for the next
    whole message. Subscribe to ``profile`` before the first :meth:`apply`.
    """

    #: The least time between two snapshots taken after failures.
    RETRY_S = 2.0

    def __init__(self, control: Control | None = None) -> None:
        self.control = control
        self.profile: Array | None = None
        self.species: list[str] = []
        self.seq = -1
        self.syncs = 0
        self._binning: tuple[int, int] = (-1, -1)
        self._next_sync = -math.inf
        self._fresh = False

    def apply(self, msg: Message) -> bool:
        """Take in one ``profile`` message; True when :attr:`profile` is now current."""
        if msg.topic == "profile":
            self._take(msg)
            if self.profile is None and self.control is not None:
                self._resync()
        return self.profile is not None

    def sync(self, snapshot: Snapshot) -> None:
        """Start over from a ``snapshot("profile")`` reply."""
        self._take(Message("profile", snapshot.seq, 0, "snapshot", snapshot.fields,
                           snapshot.arrays))  # fmt: skip
        self.syncs += 1
        self._fresh = True

    def _take(self, msg: Message) -> None:
        f = msg.fields
        z0 = int(f.get("z0", 0))
        if msg.seq <= self.seq and self._fresh:  # queued before the snapshot, in it
            return
        self._fresh = False
        rows = np.asarray(msg.arrays["profile"], dtype=np.uint64)
        binning = (int(f.get("rebins", 0)), int(f.get("epoch", 0)))
        # Numbers going back mean the daemon restarted: only a whole profile follows.
        follows = msg.seq == self.seq + 1 and binning == self._binning
        self.seq = msg.seq
        if z0 == 0:
            self.profile = rows.copy()
        elif follows and self.profile is not None and z0 <= len(self.profile):
            self.profile = np.concatenate([self.profile[:z0], rows])
        else:
            self.profile = None
        self.species = list(f["species"])
        self._binning = binning

    def _resync(self) -> None:
        assert self.control is not None
        now = time.monotonic()
        if now < self._next_sync:
            return
        try:
            self.sync(self.control.snapshot("profile"))
        except ControlError:
            self._next_sync = now + self.RETRY_S  # the daemon busy or gone: later


def _who(operator: str, reason: str) -> dict[str, str]:
    """Who and why, for the run's record: sent only when given."""
    return {k: v for k, v in (("operator", operator), ("reason", reason)) if v}


class CubeMirror(_Closing):
    """The daemon's cubes, here: ``cubes[species]`` is ``u32 [z, y, x]``.

    It subscribes to ``cube`` first, then asks for a snapshot; the cube messages that
    arrive meanwhile wait in the socket. Those numbered up to the snapshot's ``seq`` are
    already in it and are dropped; the rest are applied in order. A gap, a reconnect, a
    daemon restart, a rebin or cubes started over for a new run (``epoch``) takes a
    fresh snapshot (``syncs`` counts them all).
    Call :meth:`poll` regularly; ``seq`` is the last cube message the copy includes.
    ``curve`` is as for :class:`Control` and serves both sockets.
    """

    def __init__(
        self,
        endpoint: str,
        control: Control | str,
        *,
        context: zmq.Context[Any] | None = None,
        rcvhwm: int = 100_000,
        timeout_s: float = 10.0,
        curve: Curve = None,
    ) -> None:
        # The environment read once, for both sockets.
        keys: Curve = _curve(curve) or False
        self._own_control = not isinstance(control, Control)
        self.control = (
            control
            if isinstance(control, Control)
            else Control(control, timeout_s=timeout_s, context=context, curve=keys)
        )
        self.subscriber = Subscriber(
            endpoint,
            ("cube",),
            context=context,
            rcvhwm=rcvhwm,
            on_reconnect=self._invalidate,
            curve=keys,
        )
        self.cubes: dict[str, Array] = {}
        self.species: list[str] = []
        self.frames_per_slice = 1
        self.n_slices = 0
        self.rebins = 0
        self.epoch = 0
        self.seq = -1
        self.syncs = 0
        self.applied = 0
        self.dropped = 0
        self._fresh = True
        self._stale = True
        try:
            self.sync()
        except BaseException:
            self.close()
            raise

    def sync(self) -> None:
        """Replace the copy with a snapshot (the subscription is already running)."""
        snap = self.control.snapshot("cubes")
        f = snap.fields
        self.species = list(f["species"])
        self.cubes = {name: np.array(snap.arrays[name], dtype=np.uint32) for name in self.species}
        self.frames_per_slice = int(f["frames_per_slice"])
        self.n_slices = int(f["n_slices"])
        self.rebins = int(f["rebins"])
        self.epoch = int(f.get("epoch", 0))
        self.seq = snap.seq
        self.syncs += 1
        self._fresh = True
        self._stale = False

    def _invalidate(self) -> None:
        self._stale = True

    def poll(self, timeout_s: float | None = 0.0, max_messages: int = 10_000) -> int:
        """Apply the cube messages that have arrived (waiting up to ``timeout_s`` for
        the first); returns how many were applied."""
        applied = 0
        wait = timeout_s
        for _ in range(max_messages):
            if self._stale:
                self.sync()
            msg = self.subscriber.recv(wait)
            if msg is None:
                break
            wait = 0.0
            applied += self._apply(msg)
        if self._stale:
            self.sync()
        return applied

    def _apply(self, msg: Message) -> int:
        if msg.topic != "cube" or self._stale:
            return 0
        if msg.seq <= self.seq:
            if self._fresh:  # queued before the snapshot, which already includes it
                self.dropped += 1
            else:  # numbers went back: the daemon restarted
                self._stale = True
            return 0
        f = msg.fields
        cube = self.cubes.get(f["species"])
        plane = msg.arrays["slice"]
        if (
            msg.seq != self.seq + 1
            or f["rebins"] != self.rebins
            or f.get("epoch", 0) != self.epoch
            or cube is None
            or cube.shape[1:] != plane.shape
        ):
            self._stale = True
            return 0
        n = int(f["n_slices"])
        if n != self.n_slices:
            self._resize(n)
        self.cubes[f["species"]][f["z"]] = plane
        self.seq = msg.seq
        self.frames_per_slice = int(f["frames_per_slice"])
        self._fresh = False
        self.applied += 1
        return 1

    def _resize(self, n: int) -> None:
        for name, cube in self.cubes.items():
            grown = np.zeros((n, *cube.shape[1:]), dtype=np.uint32)
            keep = min(n, cube.shape[0])
            grown[:keep] = cube[:keep]
            self.cubes[name] = grown
        self.n_slices = n

    def close(self) -> None:
        self.subscriber.close()
        if self._own_control:
            self.control.close()
