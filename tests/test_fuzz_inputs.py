"""Bad input, fuzzed (docs/fuzzing.md): whatever arrives, every parser answers with its
documented error type and nothing else. Published messages and control requests and
replies (:mod:`opsims.wire`) raise :class:`~opsims.wire.WireError`; the daemon's
configuration and run protocols raise :class:`~opsims._native.ConfigError`; the Python
end of the potentiostat link (:mod:`opsims.link.potentiostat`) raises its ``LinkError``;
the native
decoders raise the exception classes of :mod:`opsims._native` (a Rust panic would be
``opsims._native.PanicException``, which these tests never catch).

Example counts stay modest so the file runs in seconds; the CI profile (tests/conftest.py)
derandomizes it.
"""

from __future__ import annotations

import contextlib
import copy
import struct
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from opsims import _native, wire
from opsims._native import (
    ConfigError,
    EventCore,
    JournalError,
    JournalReader,
    LinkStreamDecoder,
    PtuError,
    RecordFormatError,
    decode_records,
    encode_link_frame,
    read_ptu,
)
from opsims.config_table import apply_overrides, load_toml
from opsims.daemon.config import DaemonConfig
from opsims.daemon.protocol import RunProtocol
from opsims.link import potentiostat as pl
from opsims.wire import WireError

ROOT = Path(__file__).resolve().parents[1]
FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# --- strategies ---------------------------------------------------------------------------

#: What msgpack can carry (and `raw=False` gives back): maps keyed by str or bytes.
packable = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12)
    | st.binary(max_size=12),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.text(max_size=8) | st.binary(max_size=4), inner, max_size=4)
    ),
    max_leaves=16,
)

#: What a TOML document can hold, and more: integers beyond 64 bits (tomllib reads them).
toml_values = st.recursive(
    st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.integers(-(2**1100), 2**1100)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=16)
    | st.datetimes()
    | st.dates()
    | st.times(),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=12,
)


@st.composite
def mutated(draw: st.DrawFn, doc: Any, values: st.SearchStrategy[Any] = toml_values) -> Any:
    """A deep copy of ``doc`` with one to three edits somewhere inside: a value replaced
    (wrong type, out of range, any shape), a key removed or an unknown key added."""
    doc = copy.deepcopy(doc)
    for _ in range(draw(st.integers(1, 3))):
        node = doc
        while True:
            inner = (
                [k for k, v in node.items() if isinstance(v, (dict, list))]
                if isinstance(node, dict)
                else [i for i, v in enumerate(node) if isinstance(v, (dict, list))]
            )
            if not inner or draw(st.integers(0, 3)) == 0:
                break
            node = node[draw(st.sampled_from(inner))]
        keys = list(node) if isinstance(node, dict) else list(range(len(node)))
        op = draw(st.sampled_from(["replace", "remove", "add"] if keys else ["add"]))
        if op == "add":
            if isinstance(node, dict):
                node[draw(st.text(min_size=1, max_size=12))] = draw(values)
            else:
                node.append(draw(values))
        else:
            key = draw(st.sampled_from(keys))
            if op == "remove":
                del node[key]
            else:
                node[key] = draw(values)
    return doc


# --- opsims.wire --------------------------------------------------------------------------


def good_message() -> list[bytes]:
    arrays = {
        "slice": np.arange(6, dtype=np.uint32).reshape(2, 3),
        "ec": np.zeros(2, wire.EC_SAMPLE_DTYPE),
    }
    frames = wire.encode("cube", 7, {"z": 1, "species": "Na+"}, arrays, source="s", host_ns=5)
    return [bytes(f) for f in frames]


def good_request() -> list[bytes]:
    frames = wire.encode_request("start_run", protocol={"name": "p"}, rates=np.ones(3))
    return [bytes(f) for f in frames]


def good_reply() -> list[bytes]:
    frames = wire.encode_reply(False, {"n": 1}, {"a": np.ones(2)}, error=("busy", "later"))
    return [bytes(f) for f in frames]


def decoders() -> list[Any]:
    return [wire.decode, wire.decode_request, wire.decode_reply]


def only_wire_errors(frames: list[Any]) -> None:
    for decode in decoders():
        with contextlib.suppress(WireError):
            decode(frames)


@FAST
@given(frames=st.lists(st.binary(max_size=64), max_size=5))
def test_wire_decoders_on_arbitrary_frames(frames: list[bytes]) -> None:
    only_wire_errors(frames)


@FAST
@given(data=st.data(), which=st.sampled_from([good_message, good_request, good_reply]))
def test_wire_decoders_on_mutated_headers(data: st.DataObject, which: Any) -> None:
    frames = which()
    at = 1 if which is good_message else 0
    header = data.draw(mutated(msgpack.unpackb(frames[at], raw=False), packable), label="header")
    frames[at] = msgpack.packb(header, use_bin_type=True)
    only_wire_errors(frames)


@FAST
@given(
    dtype=packable | st.sampled_from(["<u4", "|V0", "<U3", "|O", "S0", "<f8", "(2,)<i2"]),
    shape=st.lists(st.integers(-2, 2**40) | packable, max_size=70),
    size=st.integers(0, 64),
)
@example(dtype="|V0", shape=[2**62, 2**62], size=0)
@example(dtype="S0", shape=[2**40], size=0)  # would allocate a TiB
@example(dtype="<u4", shape=[1] * 70, size=4)
@example(dtype="<u4", shape=[0, 2**63], size=0)
@example(dtype=[["a", "<u4"], ["b", ["<u2", [3]]]], shape=[2], size=20)
def test_wire_array_descriptions(dtype: Any, shape: Any, size: int) -> None:
    frames = good_message()
    header = msgpack.unpackb(frames[1], raw=False)
    header["arrays"] = [{"name": "x", "dtype": dtype, "shape": shape}]
    frames[1] = msgpack.packb(header, use_bin_type=True)
    try:
        msg = wire.decode([frames[0], frames[1], bytes(size)])
    except WireError:
        return
    arr = msg.arrays["x"]
    assert arr.nbytes == size and list(arr.shape) == shape


# --- the daemon's configuration and run protocols ----------------------------------------

SHIPPED = load_toml(ROOT / "config" / "opsimsd.toml")
PROTOCOLS = [load_toml(p) for p in sorted((ROOT / "config" / "protocols").glob("*.toml"))]


def test_shipped_documents_parse() -> None:
    DaemonConfig.from_document(copy.deepcopy(SHIPPED), Path("opsimsd.toml"))
    for doc in PROTOCOLS:
        RunProtocol.from_mapping(copy.deepcopy(doc))


@FAST
@given(doc=mutated(SHIPPED))
@example(doc={**SHIPPED, "daemon": 3})
@example(doc={**SHIPPED, "links": {"detector": {"port": 2**70}}})
@example(doc={**SHIPPED, "daemon": {"status_interval_s": 10**400}})
def test_daemon_config_raises_only_config_error(doc: Any) -> None:
    with contextlib.suppress(ConfigError):
        DaemonConfig.from_document(doc, Path("fuzz.toml"))


def test_unreadable_toml_is_a_config_error(tmp_path: Path) -> None:
    """tomllib refuses integers of more than 4300 digits with a plain ValueError."""
    huge = "1" * 5000
    for text in (f"v = {huge}", "[a", "x = 1\nx = 2"):
        (tmp_path / "c.toml").write_text(text)
        with pytest.raises(ConfigError, match="not valid TOML"):
            load_toml(tmp_path / "c.toml")
    with pytest.raises(ConfigError, match="not TOML"):
        apply_overrides({}, [f"daemon.x={huge}"])


@FAST
@given(doc=st.dictionaries(st.text(max_size=10), toml_values, max_size=6))
def test_daemon_config_on_arbitrary_documents(doc: dict[str, Any]) -> None:
    with contextlib.suppress(ConfigError):
        DaemonConfig.from_document(doc, Path("fuzz.toml"))


@FAST
@given(data=st.data(), index=st.integers(0, len(PROTOCOLS) - 1))
def test_run_protocol_raises_only_config_error(data: st.DataObject, index: int) -> None:
    # Control messages carry protocols as msgpack: bytes keys and values as well.
    doc = data.draw(mutated(PROTOCOLS[index], toml_values | packable), label="protocol")
    with contextlib.suppress(ConfigError):
        RunProtocol.from_mapping(doc)


@FAST
@given(doc=packable | st.dictionaries(st.text(max_size=8) | st.binary(max_size=4), packable))
@example(doc={"name": "p", b"steps": []})
@example(doc={"steps": [{"kind": "series", "current_densities_ua_um2": [10**400], "steps": []}]})
@example(doc={"steps": [{"kind": "rest", "duration_s": 1, b"x": 1, "y": 2}]})
def test_run_protocol_on_arbitrary_control_arguments(doc: Any) -> None:
    with contextlib.suppress(ConfigError):
        RunProtocol.from_mapping(doc)


def test_run_protocol_expansion_is_bounded() -> None:
    """Nested series multiply: a control message must not make a billion steps."""
    inner: dict[str, Any] = {"kind": "rest", "duration_s": 1}
    for _ in range(6):
        inner = {"kind": "series", "current_densities_ua_um2": list(range(1, 41)), "steps": [inner]}
    with pytest.raises(ConfigError, match="steps"):
        RunProtocol.from_mapping({"steps": [inner]})


# --- the native decoders from Python -------------------------------------------------------

CODES = [0x00010203, 0x00010303, 0x00010204, 0x00010304, 0x01010204, 0x01010304, 0x00010307]


@FAST
@given(
    code=st.sampled_from(CODES) | st.integers(0, 2**32 - 1),
    words=st.lists(st.integers(0, 2**32 - 1), max_size=200),
    stride=st.integers(1, 3),
)
def test_decode_records_on_arbitrary_words(code: int, words: list[int], stride: int) -> None:
    records = np.array(words, dtype=np.uint32)[::stride]  # strided arrays too
    try:
        out = decode_records(code, records)
    except RecordFormatError:
        assert code not in CODES
        return
    assert all(len(v) == len(records) for v in out.values())


def core(code: int = 0x00010307) -> EventCore:
    return EventCore(code, 25e-12, 4, 4, 100, [("p", [0, 1], ["a", "b"], "per_frame", 0)])


def frame(seq: int, records: list[int], **header: int) -> bytes:
    header.setdefault("tick_fs", 25_000)
    return encode_link_frame(seq, 0x00010307, np.array(records, dtype=np.uint32), **header)


link_bytes = st.lists(
    st.binary(max_size=120)
    | st.builds(
        frame,
        st.integers(0, 2**64 - 1),
        st.lists(st.integers(0, 2**32 - 1), max_size=30),
        frame_markers=st.integers(0, 2**64 - 1),
        line_starts=st.integers(0, 2**32 - 1),
        overflow_base=st.integers(0, 2**64 - 1),
        sent_tick=st.integers(0, 2**64 - 1),
    ),
    max_size=8,
)


@FAST
@given(pieces=link_bytes, host_ns=st.integers(-(2**63), 2**63 - 1))
def test_event_core_feed_link_never_raises(pieces: list[bytes], host_ns: int) -> None:
    c = core()
    for p in pieces:
        c.feed_link(p, host_ns)
    c.finish()
    n = c.counters()
    assert n["events"] == n["binned"] + n["rejected_total"] + n["pending"]


@FAST
@given(pieces=link_bytes, code=st.sampled_from(CODES) | st.integers(0, 2**32 - 1))
def test_link_stream_decoder_raises_only_record_format_error(
    pieces: list[bytes], code: int
) -> None:
    dec = LinkStreamDecoder()
    stray = encode_link_frame(1, code, np.arange(3, dtype=np.uint32), tick_fs=1)
    for p in [*pieces, stray, *pieces]:
        with contextlib.suppress(RecordFormatError):
            dec.push(p)
    assert dec.corrupt >= 0 and dec.bytes_skipped >= 0


# --- the potentiostat link's Python end --------------------------------------------------

PAYLOAD_DECODERS: list[Any] = [
    pl.unpack_current,
    pl.unpack_samples,
    pl.EisRequest.unpack,
    pl.Reply.unpack,
    pl.Hello.unpack,
    pl.EisPoint.unpack,
    pl.Event.unpack,
    pl.Status.unpack,
]


@FAST
@given(payload=st.binary(max_size=80))
@example(payload=struct.pack("<IHH", 1, 0xFFFF, 0))  # a reply code the protocol lacks
@example(payload=struct.pack("<H6x", 3) + bytes(8))  # says 3 samples, carries less
def test_potentiostat_payload_decoders_raise_only_link_error(payload: bytes) -> None:
    for decode in PAYLOAD_DECODERS:
        with contextlib.suppress(pl.LinkError):
            decode(payload)


@FAST
@given(
    chunks=st.lists(st.binary(max_size=40), max_size=8),
    payloads=st.lists(st.binary(max_size=60), min_size=1, max_size=4),
    cut=st.integers(1, 64),
)
def test_potentiostat_frame_reader_finds_every_frame_between_garbage(
    chunks: list[bytes], payloads: list[bytes], cut: int
) -> None:
    """Garbage before, between and after good frames, the stream cut anywhere: the
    reader never raises and yields every good frame. (Garbage may hold a frame of its
    own only by carrying the magic and a matching CRC, which these bytes do not.)"""
    good = [pl.encode(pl.Kind.HEARTBEAT, i, p) for i, p in enumerate(payloads)]
    noise = [c.replace(pl.MAGIC[:1], b"") for c in chunks]
    stream = b"".join(n + g for n, g in zip(noise, good, strict=False))
    stream += b"".join(noise[len(good) :]) + b"".join(good[len(noise) :])
    reader = pl.FrameReader()
    got: list[pl.Frame] = []
    for i in range(0, len(stream), cut):
        reader.feed(stream[i : i + cut])
        got.extend(reader)
    assert [(f.sequence, f.payload) for f in got] == [(i, p) for i, p in enumerate(payloads)]


def ptu_bytes(tags: list[tuple[str, int, bytes]], tail: bytes) -> bytes:
    out = bytearray(b"PQTTTR\0\01.0.00\0\0")
    for ident, typ, value in tags:
        out += ident.encode()[:32].ljust(32, b"\0") + struct.pack("<iI", -1, typ) + value
    return bytes(out) + tail


ptu_tags = st.lists(
    st.tuples(
        st.sampled_from(
            ["TTResultFormat_TTTRRecType", "TTResult_NumberOfRecords", "Header_End",
             "TTResultFormat_BitsPerRecord", "ImgHdr_PixX", "ImgHdr_LineStart", "x"]
        ),
        st.sampled_from([0x10000008, 0x2001FFFF, 0x4001FFFF, 0x4002FFFF, 0xFFFFFFFF,
                         0xFFFF0008, 0x20000008, 0x1234FFFF]),
        st.binary(min_size=8, max_size=8) | st.integers(-(2**63), 2**63 - 1).map(
            lambda v: struct.pack("<q", v)
        ),
    ),
    max_size=6,
)  # fmt: skip


@FAST
@given(tags=ptu_tags, tail=st.binary(max_size=64), raw=st.binary(max_size=64))
def test_read_ptu_raises_only_ptu_error(
    tags: list[tuple[str, int, bytes]], tail: bytes, raw: bytes, tmp_path_factory: Any
) -> None:
    path = tmp_path_factory.mktemp("ptu") / "f.ptu"
    for data in (
        ptu_bytes(tags, tail),
        raw,
        ptu_bytes([*tags, ("Header_End", 0xFFFF0008, bytes(8))], tail),
    ):
        path.write_bytes(data)
        try:
            f = read_ptu(path)
        except PtuError:
            continue
        assert len(f.records) == f.number_of_records <= len(data) // 4
        with contextlib.suppress(PtuError):
            f.image_markers  # noqa: B018


@FAST
@given(data=st.binary(max_size=400))
def test_journal_reader_raises_only_journal_errors(data: bytes, tmp_path_factory: Any) -> None:
    d = tmp_path_factory.mktemp("journal")
    (d / "segment-000000.ojs").write_bytes(data)
    try:
        reader = JournalReader(d)
        list(reader.blocks())
        list(reader.frames())
        report = reader.report()
    except (JournalError, OSError):
        return
    assert report["segments"] == 1


def test_panics_would_surface_as_a_module_exception() -> None:
    """PyO3 turns a panic in native code into ``PanicException`` (a BaseException, so
    ``except Exception`` does not hide it); the module exports the class."""
    assert issubclass(_native.PanicException, BaseException)
    assert not issubclass(_native.PanicException, Exception)
