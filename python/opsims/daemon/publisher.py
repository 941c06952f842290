"""The daemon's PUB side (docs/publishing.md): per-topic sequence numbers, sends that
never block acquisition, the cube slice coalescer, and the control replies that tag a
snapshot with the sequence number it is current to (ZeroMQ guide, Clone pattern).

A :class:`Publisher` belongs to one thread (ZeroMQ sockets are not thread-safe); only
:meth:`Publisher.snapshot_seq` may be read from another.
"""

from __future__ import annotations

import inspect
import logging
from collections import Counter, OrderedDict
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import zmq

from opsims import wire
from opsims.wire import Array, ControlError, Frame, Reply, WireError

log = logging.getLogger(__name__)

#: What ``snapshot`` can return, and the topic whose sequence number tags it.
SNAPSHOT_TOPICS = {"cubes": "cube", "profile": "profile"}

#: Reads ``(species_index, z)`` slices at once, with the binning they are of:
#: ``(slices, frames_per_slice, n_slices, rebins)``, None for a slice a rebin merged away.
SliceReader = Callable[[list[tuple[int, int]]], tuple[Sequence[Array | None], int, int, int]]
StateReader = Callable[[], tuple[Mapping[str, Any], Mapping[str, Array]]]


class Publisher:
    """A bound PUB socket that stamps every message with its topic's next sequence
    number (0, 1, 2, … from daemon start).

    ``sndhwm`` bounds the messages queued per subscriber: a subscriber that falls
    further behind loses messages (it sees a sequence gap) instead of slowing the
    daemon. ``species`` names the cube species by index, for :meth:`mark_dirty`.
    ``secure`` sets the socket up before it binds (the daemon's CURVE server options).
    """

    def __init__(
        self,
        endpoint: str,
        *,
        source: str,
        sndhwm: int = 1000,
        context: zmq.Context[zmq.Socket[bytes]] | None = None,
        species: Sequence[str] = (),
        linger_ms: int = 100,
        secure: Callable[[zmq.Socket[bytes]], None] | None = None,
    ) -> None:
        self._context = context if context is not None else zmq.Context.instance()
        sock = self._context.socket(zmq.PUB)
        sock.setsockopt(zmq.SNDHWM, sndhwm)
        # A short linger: at shutdown, undelivered live data is not worth waiting for
        # (the journal is the record).
        sock.setsockopt(zmq.LINGER, linger_ms)
        try:
            if secure is not None:
                secure(sock)
            sock.bind(endpoint)
        except zmq.ZMQError:
            sock.close(linger=0)
            raise
        self._sock = sock
        #: The bound endpoint, with the port resolved when ``endpoint`` used ``*``.
        self.endpoint: str = sock.getsockopt_string(zmq.LAST_ENDPOINT)
        self.source = source
        self.species = list(species)
        self._seq: dict[str, int] = {}
        self._sent: Counter[str] = Counter()
        self._refused: Counter[str] = Counter()
        # (species index, z) -> the rebins of the binning it was marked in, in the order
        # they first became dirty: oldest goes first.
        self._dirty: OrderedDict[tuple[int, int], int] = OrderedDict()
        self.cube_epoch = 0
        self._coalesced = 0

    # --- any topic ---

    def publish(
        self,
        topic: str,
        fields: Mapping[str, Any] | None = None,
        arrays: Mapping[str, Array] | None = None,
    ) -> int:
        """Send one message without blocking and return the sequence number it used.

        Arrays go out without a copy: do not modify them afterwards. A message the
        socket refuses is counted in :meth:`stats`, never retried; its sequence number
        stays used, so subscribers see the loss as a gap.
        """
        seq = self._seq.get(topic, -1) + 1
        frames = wire.encode(topic, seq, fields, arrays, source=self.source)
        # Take the number only once the message is encodable: a bad call is not a gap.
        self._seq[topic] = seq
        # Reading EVENTS makes libzmq take in the subscribers' read acknowledgements,
        # which a send alone does at most once a millisecond; without it a burst can
        # overflow a subscriber that keeps up (costs ~1.5 µs).
        self._sock.getsockopt(zmq.EVENTS)
        try:
            self._sock.send_multipart(frames, flags=zmq.NOBLOCK, copy=False)
        except zmq.Again:
            self._refused[topic] += 1
        else:
            self._sent[topic] += 1
        return seq

    def snapshot_seq(self, topic: str = "cube") -> int:
        """The last sequence number used on ``topic`` (-1 before the first message)."""
        return self._seq.get(topic, -1)

    # --- cubes ---

    def cube_update(
        self,
        species: str | int,
        z: int,
        slice: Array,
        *,
        frames_per_slice: int,
        n_slices: int,
        rebins: int,
        **fields: Any,
    ) -> int:
        """Publish the whole content of one slice (``u32 [ny, nx]``) of one species."""
        index, name = self._species_of(species)
        if slice.dtype != np.uint32 or slice.ndim != 2:
            raise ValueError(f"a cube slice is uint32 [ny, nx], got {slice.dtype} {slice.shape}")
        if not 0 <= z < n_slices:
            raise ValueError(f"slice z={z} outside 0..{n_slices}")
        head = {
            "species": name,
            "species_index": index,
            "z": int(z),
            "frames_per_slice": int(frames_per_slice),
            "n_slices": int(n_slices),
            "rebins": int(rebins),
            "epoch": self.cube_epoch,
        }
        return self.publish("cube", {**head, **fields}, {"slice": slice})

    def reset_cubes(self) -> None:
        """The cubes start over (a new run): slices waiting are dropped, and later cube
        messages carry the next ``epoch``, so a mirror takes a fresh snapshot."""
        self.cube_epoch += 1
        self._dirty.clear()

    def drop_dirty(self) -> None:
        """Forget the slices waiting (counted as coalesced): a rebin gave every slice a
        new meaning, and subscribers take a snapshot for it."""
        self._coalesced += len(self._dirty)
        self._dirty.clear()

    def mark_dirty(self, species_index: int, z: int, rebins: int = 0) -> None:
        """Note that slice ``z`` of the binning after ``rebins`` rebins changed. A slice
        already waiting is not queued twice: the change is coalesced into the one
        message :meth:`flush_cubes` will send."""
        self._species_of(species_index)
        key = (species_index, z)
        if key in self._dirty:
            self._coalesced += 1
        self._dirty[key] = rebins

    def flush_cubes(self, read_slices: SliceReader, max_messages: int) -> int:
        """Send up to ``max_messages`` dirty slices, oldest first, each with its content
        now; the rest wait for the next call. Call it at the configured cube rate.
        Returns the number sent.

        The slices are read in one call that also gives their binning, and each message
        is tagged with it. A slice marked in an earlier binning than the one read (the
        cubes were rebinned in between) or merged away is counted as coalesced and
        dropped: a rebin is announced by the slices marked after it, and subscribers
        take a snapshot for it.
        """
        marked: list[tuple[tuple[int, int], int]] = []
        while self._dirty and len(marked) < max_messages:
            marked.append(self._dirty.popitem(last=False))
        if not marked:
            return 0
        slices, frames_per_slice, n_slices, rebins = read_slices([key for key, _ in marked])
        sent = 0
        for ((index, z), marked_in), content in zip(marked, slices, strict=True):
            if content is None or marked_in != rebins:
                self._coalesced += 1
                continue
            self.cube_update(
                index,
                z,
                content,
                frames_per_slice=frames_per_slice,
                n_slices=n_slices,
                rebins=rebins,
            )
            sent += 1
        return sent

    def _species_of(self, species: str | int) -> tuple[int, str]:
        if isinstance(species, str):
            if species not in self.species:
                raise ValueError(f"unknown species {species!r}; known: {self.species}")
            return self.species.index(species), species
        if not 0 <= species < len(self.species):
            raise ValueError(f"species index {species} outside 0..{len(self.species)}")
        return species, self.species[species]

    # --- accounting ---

    def stats(self) -> dict[str, Any]:
        """Counts for the ``status`` topic: ``messages`` and ``refused`` per topic,
        ``coalesced`` slice updates, and ``dirty_slices`` waiting."""
        return {
            "messages": dict(self._sent),
            "refused": dict(self._refused),
            "coalesced": self._coalesced,
            "dirty_slices": len(self._dirty),
        }

    def close(self) -> None:
        """Close the socket (the context may be shared and is left alone)."""
        self._sock.close()

    def __enter__(self) -> Publisher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --- control replies (the daemon's REP socket uses these) ---


def cube_snapshot(
    cubes: Mapping[str, Array],
    *,
    frames_per_slice: int,
    n_slices: int,
    rebins: int,
    epoch: int = 0,
) -> tuple[dict[str, Any], dict[str, Array]]:
    """The ``snapshot what="cubes"`` content: species in order, one ``u32 [z, y, x]``
    array per species, and the binning the cube messages also carry."""
    for name, cube in cubes.items():
        if cube.dtype != np.uint32 or cube.ndim != 3 or cube.shape[0] != n_slices:
            raise ValueError(
                f"cube {name!r} is {cube.dtype} {cube.shape}, not u32 [{n_slices}, y, x]"
            )
    fields = {
        "species": list(cubes),
        "frames_per_slice": int(frames_per_slice),
        "n_slices": int(n_slices),
        "rebins": int(rebins),
        "epoch": int(epoch),
    }
    return fields, dict(cubes)


def snapshot_reply(publisher: Publisher, what: str, readers: Mapping[str, StateReader]) -> Reply:
    """Answer ``snapshot``: the current state tagged with the last sequence number of
    its topic, so a client applies exactly the messages after it.

    The tag is read *before* the state. Every message numbered up to the tag was made
    from content the state already includes, and content the state misses can only
    reach a client in a later-numbered message.
    """
    topic = SNAPSHOT_TOPICS.get(what) if isinstance(what, str) else None
    if topic is None or what not in readers:
        raise ControlError("bad_arguments", f"cannot snapshot {what!r}; try {sorted(readers)}")
    seq = publisher.snapshot_seq(topic)
    fields, arrays = readers[what]()
    return Reply(True, {**fields, "what": what, "seq": seq}, dict(arrays))


def snapshot_handler(
    publisher: Publisher, readers: Mapping[str, StateReader]
) -> Callable[..., Reply]:
    """A ``snapshot`` handler for :func:`handle_request`."""

    def snapshot(what: str = "cubes") -> Reply:
        return snapshot_reply(publisher, what, readers)

    return snapshot


Handler = Callable[..., "Reply | Mapping[str, Any] | None"]


def handle_request(
    frames: Sequence[wire.BytesLike],
    handlers: Mapping[str, Handler],
    authorize: Callable[[str], None] | None = None,
) -> list[Frame]:
    """The reply frames for one control request. A handler gets the request's args as
    keywords and returns the reply's fields (or a :class:`Reply`); it raises
    :class:`ControlError` for a refusal. ``authorize(cmd)``, given, is asked before the
    arguments are looked at and raises :class:`ControlError` to refuse the command.
    Nothing a client sends raises here: malformed, unknown, forbidden or failing
    requests become structured error replies.
    """
    try:
        cmd, args, arrays = wire.decode_request(frames)
    except WireError as exc:
        return wire.encode_reply(False, error=("bad_request", str(exc)))
    handler = handlers.get(cmd)
    if handler is None:
        known = ", ".join(sorted(handlers))
        return wire.encode_reply(False, error=("unknown_command", f"{cmd!r}; known: {known}"))
    if authorize is not None:
        try:
            authorize(cmd)
        except ControlError as exc:
            return wire.encode_reply(False, error=(exc.code, exc.message))
    kwargs = {**args, **arrays}
    try:
        inspect.signature(handler).bind(**kwargs)
    except TypeError as exc:
        return wire.encode_reply(False, error=("bad_arguments", f"{cmd}: {exc}"))
    try:
        result = handler(**kwargs)
        reply = result if isinstance(result, Reply) else Reply(True, dict(result or {}))
        return wire.encode_reply(reply.ok, reply.fields, reply.arrays, reply.error)
    except ControlError as exc:
        return wire.encode_reply(False, error=(exc.code, exc.message))
    except Exception as exc:  # the daemon keeps serving whatever a handler does
        log.exception("control command %r failed", cmd)
        return wire.encode_reply(False, error=("internal", f"{type(exc).__name__}: {exc}"))
