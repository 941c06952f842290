"""The opsimsd message format without sockets (docs/publishing.md): round trips of every
topic's shapes and dtypes, and a clear WireError for each malformed form."""

from __future__ import annotations

from typing import Any

import msgpack
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from opsims import wire
from opsims.wire import EC_SAMPLE_DTYPE, ControlError, WireError


def roundtrip(
    topic: str, fields: dict[str, Any], arrays: dict[str, np.ndarray[Any, Any]]
) -> wire.Message:
    frames = wire.encode(topic, 41, fields, arrays, source="opsimsd@test", host_ns=123)
    # As received from ZeroMQ: one bytes object per frame.
    return wire.decode([bytes(f) for f in frames])


def same_array(a: np.ndarray[Any, Any], b: np.ndarray[Any, Any]) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def ec_samples(n: int) -> np.ndarray[Any, Any]:
    s = np.zeros(n, EC_SAMPLE_DTYPE)
    s["host_ns"] = 1_700_000_000_000_000_000 + np.arange(n) * 1_000_000
    s["tick"] = np.arange(n, dtype=np.uint64) + 2**40
    s["ewe_v"] = np.linspace(0.04, 0.06, n)
    s["current_a"] = 4e-8
    s["mode"] = 1
    s["flags"] = np.arange(n) % 4
    return s


TOPICS: list[tuple[str, dict[str, Any], dict[str, np.ndarray[Any, Any]]]] = [
    ("ec", {}, {"samples": ec_samples(250)}),
    (
        "events",
        {
            "t0_ns": 10,
            "t1_ns": 20_000_010,
            "totals": {"records": 10**12, "events": 9 * 10**11, "rejected_total": 7},
            "deltas": {"records": 1000, "events": 900, "flyback": 3},
            "rates": {"positive": 1.25e6, "negative": 8.0e5},
        },
        {},
    ),
    (
        "cube",
        {
            "species": "Na+",
            "species_index": 0,
            "z": 3,
            "frames_per_slice": 2,
            "n_slices": 9,
            "rebins": 1,
        },
        {"slice": np.arange(64 * 32, dtype=np.uint32).reshape(64, 32)},
    ),
    (
        "profile",
        {"species": ["Na+", "Si+", "O-"], "frames_per_slice": 1, "n_slices": 5, "rebins": 0},
        {"profile": np.arange(15, dtype=np.uint64).reshape(5, 3) * 2**40},
    ),
    (
        "safety",
        {
            "state": "tripped",
            "reason": "ewe_high",
            "detail": "Ewe 12.3 V above the +10 V limit",
            "device_tick": 2**63 + 5,
            "sample_host_ns": 1_700_000_000_000_000_000,
            "trip_host_ns": 1_700_000_000_000_050_000,
            "open_circuit_confirmed": False,
            "operator": None,
        },
        {"sample": ec_samples(1)},
    ),
    (
        "run",
        {
            "run_id": "20240501-1200-ccd",
            "step": 2,
            "n_steps": 5,
            "kind": "constant_current",
            "state": "aborted",
            "reason": "safety_trip",
            "params": {"current_a": 4e-8, "duration_s": 1800.0, "until": {"ewe_v_max": 10.0}},
        },
        {},
    ),
    (
        "status",
        {
            "uptime_s": 12.5,
            "links": {"detector": {"state": "up", "since_ns": 5, "errors": 0}},
            "clocks": {"detector": {"offset_ns": -3.5, "drift_ppm": 12.0, "fitted": True}},
            "publisher": {"messages": {"ec": 10}, "refused": {}, "coalesced": 3},
        },
        {},
    ),
]


@pytest.mark.parametrize(("topic", "fields", "arrays"), TOPICS, ids=[t[0] for t in TOPICS])
def test_every_topic_round_trips(
    topic: str, fields: dict[str, Any], arrays: dict[str, np.ndarray[Any, Any]]
) -> None:
    msg = roundtrip(topic, fields, arrays)
    assert (msg.topic, msg.seq, msg.host_ns, msg.source) == (topic, 41, 123, "opsimsd@test")
    assert msg.fields == fields
    assert list(msg.arrays) == list(arrays)
    for name, arr in arrays.items():
        assert same_array(msg.arrays[name], arr)


def test_header_layout_is_the_documented_one() -> None:
    frames = wire.encode("ec", 7, {"note": "x"}, {"samples": ec_samples(3)}, source="s", host_ns=9)
    assert bytes(frames[0]) == b"ec"
    header = msgpack.unpackb(bytes(frames[1]), raw=False)
    assert header == {
        "v": 1,
        "topic": "ec",
        "source": "s",
        "seq": 7,
        "host_ns": 9,
        "arrays": [
            {
                "name": "samples",
                "dtype": [[n, EC_SAMPLE_DTYPE[n].str] for n in EC_SAMPLE_DTYPE.names or ()],
                "shape": [3],
            }
        ],
        "note": "x",
    }
    assert len(bytes(frames[2])) == 3 * 34


def test_arrays_are_sent_without_a_copy_and_host_ns_defaults_to_now() -> None:
    big = np.zeros((2048, 2048), np.uint32)
    frames = wire.encode("cube", 0, {}, {"slice": big}, source="s")
    assert np.shares_memory(np.frombuffer(frames[2], np.uint8), big)
    import time

    assert abs(wire.decode([bytes(f) for f in frames]).host_ns - time.time_ns()) < 10**10


def test_big_and_zero_length_and_non_contiguous_arrays() -> None:
    big = np.random.default_rng(1).integers(0, 2**32, (4096, 1024), dtype=np.uint32)
    msg = roundtrip("cube", {}, {"slice": big, "empty": np.zeros((0, 7), np.uint64)})
    assert same_array(msg.arrays["slice"], big)
    assert msg.arrays["empty"].shape == (0, 7) and msg.arrays["empty"].dtype == np.uint64
    strided = np.arange(100, dtype=np.float32).reshape(10, 10)[::2, 1::3]
    assert np.array_equal(roundtrip("x", {}, {"a": strided}).arrays["a"], strided)
    assert roundtrip("x", {}, {"s": np.float64(2.5) * np.ones(())}).arrays["s"].shape == ()


dtypes = st.one_of(
    hnp.scalar_dtypes(),
    hnp.byte_string_dtypes(),
    hnp.unicode_string_dtypes(),
    hnp.array_dtypes(allow_subarrays=True),
    hnp.nested_dtypes(),
)
shapes = hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=6)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**64 - 1),
    st.floats(allow_nan=False),
    st.text(max_size=20),
    st.binary(max_size=20),
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
field_maps = st.dictionaries(
    st.text(min_size=1, max_size=12).filter(lambda k: k not in wire.RESERVED), values, max_size=5
)


@settings(max_examples=200, deadline=None)
@given(
    data=st.data(),
    n=st.integers(0, 3),
    fields=field_maps,
    seq=st.integers(0, 2**63 - 1),
    host_ns=st.integers(-(2**63), 2**63 - 1),
)
def test_any_dtype_shape_and_fields_round_trip(
    data: st.DataObject, n: int, fields: dict[str, Any], seq: int, host_ns: int
) -> None:
    arrays = {
        f"a{i}": data.draw(hnp.arrays(dtype=dtypes, shape=shapes), label=f"a{i}") for i in range(n)
    }
    frames = wire.encode("t", seq, fields, arrays, source="s", host_ns=host_ns)
    msg = wire.decode([bytes(f) for f in frames])
    assert (msg.seq, msg.host_ns, msg.fields) == (seq, host_ns, fields)
    for name, arr in arrays.items():
        assert same_array(msg.arrays[name], arr), name


def test_numpy_scalars_in_fields_go_as_plain_numbers() -> None:
    msg = roundtrip(
        "events", {"n": np.uint64(2**63), "r": np.float32(0.5), "b": np.bool_(True)}, {}
    )
    assert msg.fields == {"n": 2**63, "r": 0.5, "b": True}
    assert type(msg.fields["n"]) is int


# --- malformed messages ---


def good_frames() -> list[bytes]:
    frames = wire.encode("cube", 1, {"z": 0}, {"slice": np.ones((2, 3), np.uint32)}, source="s")
    return [bytes(f) for f in frames]


def with_header(**changes: Any) -> list[bytes]:
    frames = good_frames()
    header = msgpack.unpackb(frames[1], raw=False)
    header.update(changes)
    frames[1] = msgpack.packb(header)
    return frames


@pytest.mark.parametrize(
    ("frames", "reason"),
    [
        ([b"cube"], "at least 2 frames"),
        ([], "at least 2 frames"),
        (good_frames()[:2], "lists 1 arrays but 0 array frames"),
        ([*good_frames(), b"extra"], "lists 1 arrays but 2 array frames"),
        (with_header(v=2), "unknown schema version 2"),
        (with_header(v=None), "unknown schema version None"),
        ([b"cube", b"\xc1", b""], "not valid msgpack"),
        ([b"cube", b"\x85\xa1v", b""], "not valid msgpack"),
        ([b"cube", msgpack.packb([1, 2]), b""], "not a map"),
        ([b"\xffcube", *good_frames()[1:]], "not ASCII"),
        ([b"ec", *good_frames()[1:]], "differs from frame"),
        (with_header(seq=True), "'seq' is missing or not int"),
        (with_header(seq="3"), "'seq' is missing or not int"),
        (with_header(host_ns=1.5), "'host_ns' is missing or not int"),
        (with_header(source=None), "'source' is missing or not str"),
        (with_header(arrays={"a": 1}), "'arrays' is missing or not list"),
        ([*good_frames()[:2], b"\0" * 23], "frame has 23 bytes but dtype uint32"),
        (
            with_header(arrays=[{"name": "slice", "dtype": "<u4", "shape": [3, 3]}]),
            r"shape \(3, 3\) need 36",
        ),
        (
            with_header(arrays=[{"name": "slice", "dtype": "<u9", "shape": [2, 3]}]),
            "bad dtype '<u9'",
        ),
        (
            with_header(arrays=[{"name": "slice", "dtype": "|O", "shape": [3]}]),
            "holds Python objects",
        ),
        (
            with_header(arrays=[{"name": "slice", "dtype": "<u4", "shape": [-2, 3]}]),
            "bad shape",
        ),
        (with_header(arrays=[{"dtype": "<u4", "shape": [2, 3]}]), "bad array description"),
        (
            [
                *with_header(arrays=[{"name": "a", "dtype": "<u4", "shape": [1]}] * 2)[:2],
                b"\0" * 4,
                b"\0" * 4,
            ],
            "'a' appears twice",
        ),
    ],
)
def test_malformed_messages_say_why(frames: list[bytes], reason: str) -> None:
    with pytest.raises(WireError, match=reason):
        wire.decode(frames)


@pytest.mark.parametrize(
    ("call", "reason"),
    [
        (lambda: wire.encode("ec", 0, {"seq": 3}, source="s"), "reserved header keys"),
        (lambda: wire.encode("écu", 0, {}, source="s"), "non-empty ASCII"),
        (lambda: wire.encode("", 0, {}, source="s"), "non-empty ASCII"),
        (lambda: wire.encode("ec", 0, {"x": {1, 2}}, source="s"), "cannot be packed"),
        (lambda: wire.encode("ec", 0, {"x": np.zeros(3)}, source="s"), "cannot be packed"),
        (lambda: wire.encode("ec", 2**64, {}, source="s"), "cannot be packed"),
        (
            lambda: wire.encode("ec", 0, {}, {"o": np.array([None], dtype=object)}, source="s"),
            "holds Python objects",
        ),
        (lambda: wire.encode_reply(True, {"ok": 1}), "reserved header keys"),
        (lambda: wire.encode_reply(True, error=("x", "y")), "cannot carry an error"),
        (lambda: wire.encode_request(""), "non-empty str"),
    ],
)
def test_what_cannot_be_sent_is_refused_at_encode(call: Any, reason: str) -> None:
    with pytest.raises(WireError, match=reason):
        call()


# --- control requests and replies ---


def test_requests_and_replies_round_trip() -> None:
    protocol = {"steps": [{"kind": "rest", "duration_s": 60.0}], "name": "ccd"}
    cmd, args, arrays = wire.decode_request(
        [bytes(f) for f in wire.encode_request("start_run", protocol=protocol, mask=np.eye(2))]
    )
    assert (cmd, args) == ("start_run", {"protocol": protocol})
    assert np.array_equal(arrays["mask"], np.eye(2))

    cube = np.arange(24, dtype=np.uint32).reshape(2, 3, 4)
    frames = wire.encode_reply(True, {"seq": 12, "species": ["Na+"]}, {"Na+": cube})
    reply = wire.decode_reply([bytes(f) for f in frames])
    assert reply.ok and reply.error is None and reply.fields == {"seq": 12, "species": ["Na+"]}
    assert same_array(reply.arrays["Na+"], cube)

    failed = wire.decode_reply(wire.encode_reply(False, error=("unknown_command", "'x'")))
    assert (failed.ok, failed.error, failed.fields) == (False, ("unknown_command", "'x'"), {})
    header = msgpack.unpackb(wire.encode_reply(False, error=("busy", "a run is active"))[0])
    assert header["ok"] is False
    assert header["error"] == {"code": "busy", "message": "a run is active"}


@pytest.mark.parametrize(
    ("frames", "reason"),
    [
        ([], "empty request"),
        ([b"\xc1"], "not valid msgpack"),
        ([msgpack.packb({"v": 1, "args": {}})], "'cmd' is missing"),
        ([msgpack.packb({"v": 1, "cmd": "x", "args": [1]})], "args must be a map"),
        ([msgpack.packb({"v": 3, "cmd": "x"})], "unknown schema version 3"),
        ([msgpack.packb({"v": 1, "cmd": "x", "args": {}})], "'arrays' is missing"),
    ],
)
def test_malformed_requests_say_why(frames: list[bytes], reason: str) -> None:
    with pytest.raises(WireError, match=reason):
        wire.decode_request(frames)


def test_malformed_replies_say_why() -> None:
    with pytest.raises(WireError, match="without a structured error"):
        wire.decode_reply([msgpack.packb({"v": 1, "ok": False, "arrays": []})])
    with pytest.raises(WireError, match="'ok' is missing or not bool"):
        wire.decode_reply([msgpack.packb({"v": 1, "ok": 1, "arrays": []})])


def test_control_error_carries_code_and_message() -> None:
    err = ControlError("refused", "the interlock condition persists")
    assert (err.code, err.message) == ("refused", "the interlock condition persists")
    assert "refused" in str(err)
