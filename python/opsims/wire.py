"""The opsimsd message format: published messages and control requests/replies
(docs/publishing.md). Bytes in, bytes out; no sockets here.

A published message is the multipart ``[topic, header, *arrays]``: the ASCII topic (so
ZeroMQ's prefix filter works on it), a msgpack map, then one raw C-order frame per
array, described in the header's ``arrays`` list in frame order. Control requests and
replies use the same header-plus-frames layout without the topic frame.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgpack
import numpy as np
import numpy.typing as npt

VERSION = 1

#: Header keys of a published message; the rest of the header is the topic's fields.
RESERVED = frozenset({"v", "topic", "source", "seq", "host_ns", "arrays"})
_REPLY_RESERVED = frozenset({"v", "ok", "error", "arrays"})

#: One potentiostat sample as published on ``ec`` and ``safety`` (packed, 34 bytes).
EC_SAMPLE_DTYPE = np.dtype(
    [
        ("host_ns", "<i8"),
        ("tick", "<u8"),
        ("ewe_v", "<f8"),
        ("current_a", "<f8"),
        ("mode", "u1"),
        ("flags", "u1"),
    ]
)

Frame = bytes | memoryview
BytesLike = bytes | bytearray | memoryview
Array = npt.NDArray[Any]


class WireError(ValueError):
    """A message that cannot be encoded or decoded; the text says why."""


class ControlError(Exception):
    """A control request that failed: ``code`` is machine-readable, ``message`` is for
    people. Codes: docs/publishing.md, "Control"."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


@dataclass
class Message:
    """One published message, decoded. Arrays are read-only views of the received
    frames (``.copy()`` one to modify it)."""

    topic: str
    seq: int
    host_ns: int
    source: str
    fields: dict[str, Any] = field(default_factory=dict)
    arrays: dict[str, Array] = field(default_factory=dict)


@dataclass
class Reply:
    """A control reply, decoded; ``error`` is ``(code, message)`` when ``ok`` is false."""

    ok: bool
    fields: dict[str, Any] = field(default_factory=dict)
    arrays: dict[str, Array] = field(default_factory=dict)
    error: tuple[str, str] | None = None


# --- encoding ---


def _default(obj: object) -> object:
    # numpy scalars are common in fields (counters, fitted values); send them as plain
    # numbers. Arrays belong in frames, so they are refused here.
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"cannot send {type(obj).__name__} in a header field")


def _pack(header: Mapping[str, Any]) -> bytes:
    try:
        packed: bytes = msgpack.packb(header, default=_default, use_bin_type=True)
    except (TypeError, ValueError, OverflowError) as exc:
        raise WireError(f"header cannot be packed: {exc}") from exc
    return packed


def _array_frames(arrays: Mapping[str, Array] | None) -> tuple[list[dict[str, Any]], list[Frame]]:
    specs: list[dict[str, Any]] = []
    frames: list[Frame] = []
    for name, value in (arrays or {}).items():
        if not isinstance(name, str):
            raise WireError(f"array names must be str, got {name!r}")
        arr = np.asarray(value)
        if not arr.flags.c_contiguous:  # (ascontiguousarray would turn 0-d into 1-d)
            arr = arr.copy(order="C")
        if arr.dtype.hasobject:
            raise WireError(f"array {name!r}: dtype {arr.dtype} holds Python objects")
        specs.append(
            {
                "name": name,
                "dtype": np.lib.format.dtype_to_descr(arr.dtype),
                "shape": list(arr.shape),
            }
        )
        # A flat byte view of the array's own memory: no copy here; pyzmq sends it
        # without copying when the frame is large (copy=False).
        frames.append(arr.reshape(-1).view(np.uint8).data)
    return specs, frames


def _check_fields(fields: Mapping[str, Any], reserved: frozenset[str]) -> None:
    clash = reserved.intersection(fields)
    if clash:
        raise WireError(f"fields use reserved header keys: {sorted(clash)}")


def encode(
    topic: str,
    seq: int,
    fields: Mapping[str, Any] | None = None,
    arrays: Mapping[str, Array] | None = None,
    *,
    source: str,
    host_ns: int | None = None,
) -> list[Frame]:
    """Frames of one published message; ``host_ns`` defaults to now (CLOCK_REALTIME).

    Array frames are views of the arrays' memory: do not modify an array until the
    frames have been sent.
    """
    if not topic or not topic.isascii():
        raise WireError(f"topic must be non-empty ASCII, got {topic!r}")
    fields = fields or {}
    _check_fields(fields, RESERVED)
    specs, frames = _array_frames(arrays)
    header = {
        "v": VERSION,
        "topic": topic,
        "source": source,
        "seq": int(seq),
        "host_ns": time.time_ns() if host_ns is None else int(host_ns),
        "arrays": specs,
        **fields,
    }
    return [topic.encode("ascii"), _pack(header), *frames]


def encode_request(cmd: str, /, **args: Any) -> list[Frame]:
    """Frames of a control request; numpy arrays among ``args`` travel as frames."""
    if not isinstance(cmd, str) or not cmd:
        raise WireError(f"command must be a non-empty str, got {cmd!r}")
    arrays = {k: v for k, v in args.items() if isinstance(v, np.ndarray)}
    plain = {k: v for k, v in args.items() if k not in arrays}
    specs, frames = _array_frames(arrays)
    return [_pack({"v": VERSION, "cmd": cmd, "args": plain, "arrays": specs}), *frames]


def encode_reply(
    ok: bool,
    fields: Mapping[str, Any] | None = None,
    arrays: Mapping[str, Array] | None = None,
    error: tuple[str, str] | None = None,
) -> list[Frame]:
    """Frames of a control reply. A failed reply carries ``error = (code, message)``."""
    fields = fields or {}
    _check_fields(fields, _REPLY_RESERVED)
    header: dict[str, Any] = {"v": VERSION, "ok": bool(ok)}
    if not ok:
        code, message = error if error is not None else ("internal", "failed")
        header["error"] = {"code": str(code), "message": str(message)}
    elif error is not None:
        raise WireError("a successful reply cannot carry an error")
    specs, frames = _array_frames(arrays)
    header["arrays"] = specs
    header.update(fields)
    return [_pack(header), *frames]


# --- decoding ---


def _unpack(frame: BytesLike) -> dict[str, Any]:
    try:
        header = msgpack.unpackb(frame, raw=False)
    except Exception as exc:  # msgpack raises several unrelated types for bad input
        raise WireError(f"header is not valid msgpack: {exc}") from exc
    if not isinstance(header, dict):
        raise WireError(f"header is a msgpack {type(header).__name__}, not a map")
    version = header.get("v")
    if version != VERSION:
        raise WireError(f"unknown schema version {version!r} (this reader knows {VERSION})")
    return header


def _need(header: Mapping[str, Any], key: str, kind: type | tuple[type, ...]) -> Any:
    value = header.get(key)
    # bool is an int in Python but not a sequence number or a timestamp
    if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
        raise WireError(f"header field {key!r} is missing or not {_kind_name(kind)}: {value!r}")
    return value


def _kind_name(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join(k.__name__ for k in kinds)


def _descr_from_msgpack(descr: Any) -> Any:
    # msgpack turns the tuples of a structured descr into lists: (name, descr[, shape])
    # per field, with (title, name) as the name of a titled field.
    if not isinstance(descr, list):
        return descr
    fields = []
    for f in descr:
        if not isinstance(f, list) or len(f) not in (2, 3):
            raise ValueError(f"field {f!r} is not (name, dtype[, shape])")
        name = tuple(f[0]) if isinstance(f[0], list) else f[0]
        sub = _descr_from_msgpack(f[1])
        fields.append((name, sub) if len(f) == 2 else (name, sub, tuple(f[2])))
    return fields


def _arrays(header: Mapping[str, Any], frames: Sequence[BytesLike]) -> dict[str, Array]:
    specs = _need(header, "arrays", list)
    if len(specs) != len(frames):
        raise WireError(f"header lists {len(specs)} arrays but {len(frames)} array frames came")
    out: dict[str, Array] = {}
    for spec, frame in zip(specs, frames, strict=True):
        if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
            raise WireError(f"bad array description {spec!r}")
        name = spec["name"]
        if name in out:
            raise WireError(f"array {name!r} appears twice")
        shape = spec.get("shape")
        if not isinstance(shape, list) or not all(
            isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape
        ):
            raise WireError(f"array {name!r}: bad shape {shape!r}")
        try:
            dtype = np.lib.format.descr_to_dtype(_descr_from_msgpack(spec["dtype"]))
        except Exception as exc:  # numpy raises TypeError/ValueError/KeyError alike
            raise WireError(f"array {name!r}: bad dtype {spec.get('dtype')!r}: {exc}") from exc
        if dtype.hasobject:
            raise WireError(f"array {name!r}: dtype {dtype} holds Python objects")
        if dtype.subdtype is not None:  # numpy would add its dimensions to the shape
            raise WireError(f"array {name!r}: subarray dtype {dtype} (send its shape instead)")
        if dtype.itemsize == 0 and dtype.kind in "SU":
            # numpy makes an unsized string one character long: an array of any shape
            # would be allocated for a message that carries no data.
            raise WireError(f"array {name!r}: unsized dtype {dtype}")
        need = math.prod(shape) * dtype.itemsize
        size = memoryview(frame).nbytes
        if size != need:
            raise WireError(
                f"array {name!r}: frame has {size} bytes but dtype {dtype} "
                f"and shape {tuple(shape)} need {need}"
            )
        try:
            if need == 0:  # frombuffer refuses empty buffers and zero-size items
                arr = np.empty(shape, dtype=dtype)
                arr.flags.writeable = False
            else:
                arr = np.frombuffer(frame, dtype=dtype, count=math.prod(shape)).reshape(shape)
        except (ValueError, TypeError, OverflowError) as exc:
            # numpy's own limits: more than 64 dimensions, a dimension beyond intp
            raise WireError(f"array {name!r}: shape {tuple(shape)} is not possible: {exc}") from exc
        if arr.dtype != dtype or arr.shape != tuple(shape):
            raise WireError(f"array {name!r}: dtype {dtype} and shape {tuple(shape)} make no array")
        out[name] = arr
    return out


def decode(frames: Sequence[BytesLike]) -> Message:
    """A published message from its frames; raises :class:`WireError` saying what is
    wrong with a malformed one."""
    if len(frames) < 2:
        raise WireError(f"a message has at least 2 frames (topic, header), got {len(frames)}")
    try:
        topic = bytes(frames[0]).decode("ascii")
    except UnicodeDecodeError as exc:
        raise WireError(f"topic frame is not ASCII: {bytes(frames[0])[:40]!r}") from exc
    header = _unpack(frames[1])
    if header.get("topic") != topic:
        raise WireError(f"header topic {header.get('topic')!r} differs from frame {topic!r}")
    seq = _need(header, "seq", int)
    host_ns = _need(header, "host_ns", int)
    source = _need(header, "source", str)
    arrays = _arrays(header, frames[2:])
    fields = {k: v for k, v in header.items() if k not in RESERVED}
    return Message(topic, seq, host_ns, source, fields, arrays)


def decode_request(frames: Sequence[BytesLike]) -> tuple[str, dict[str, Any], dict[str, Array]]:
    """``(cmd, args, arrays)`` of a control request; :class:`WireError` if malformed."""
    if not frames:
        raise WireError("empty request")
    header = _unpack(frames[0])
    cmd = _need(header, "cmd", str)
    args = header.get("args", {})
    if not isinstance(args, dict):
        raise WireError(f"request args must be a map, got {type(args).__name__}")
    arrays = _arrays(header, frames[1:])
    clash = set(args).intersection(arrays)
    if clash:
        raise WireError(f"request names {sorted(clash)} both as args and arrays")
    return cmd, args, arrays


def decode_reply(frames: Sequence[BytesLike]) -> Reply:
    """A control reply; :class:`WireError` if malformed."""
    if not frames:
        raise WireError("empty reply")
    header = _unpack(frames[0])
    ok = _need(header, "ok", bool)
    error: tuple[str, str] | None = None
    if not ok:
        err = header.get("error")
        if not isinstance(err, dict) or not isinstance(err.get("code"), str):
            raise WireError(f"failed reply without a structured error: {err!r}")
        error = (err["code"], str(err.get("message", "")))
    arrays = _arrays(header, frames[1:])
    fields = {k: v for k, v in header.items() if k not in _REPLY_RESERVED}
    return Reply(ok, fields, arrays, error)
