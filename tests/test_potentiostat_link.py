"""The potentiostat link's framing and payloads, without an instrument
(docs/potentiostat-link.md)."""

from __future__ import annotations

import itertools
import struct
import zlib

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from opsims.link import potentiostat as wire
from opsims.link.potentiostat import FrameReader, Kind


def frames_of(reader: FrameReader) -> list[wire.Frame]:
    return list(reader)


def test_frame_layout_matches_the_spec() -> None:
    frame = wire.encode(Kind.SET_CURRENT, 7, wire.pack_current(-4e-8))
    assert frame[:4] == b"OPSP"
    version, kind, reserved, seq, n = struct.unpack_from("<BBHII", frame, 4)
    assert (version, kind, reserved, seq, n) == (1, 0x10, 0, 7, 8)
    assert struct.unpack_from("<d", frame, 16)[0] == -4e-8
    (crc,) = struct.unpack_from("<I", frame, 24)
    assert crc == zlib.crc32(frame[:24])
    assert len(frame) == 28


@given(
    payloads=st.lists(st.binary(max_size=300), min_size=1, max_size=20),
    cuts=st.lists(st.integers(min_value=0, max_value=10_000), max_size=30),
)
def test_any_chunking_gives_the_same_frames(payloads: list[bytes], cuts: list[int]) -> None:
    stream = b"".join(wire.encode(0x82, i, p) for i, p in enumerate(payloads))
    bounds = sorted({c % (len(stream) + 1) for c in cuts} | {0, len(stream)})
    reader = FrameReader()
    got: list[wire.Frame] = []
    for a, b in itertools.pairwise(bounds):
        reader.feed(stream[a:b])
        got += frames_of(reader)
    assert [f.payload for f in got] == payloads
    assert [f.sequence for f in got] == list(range(len(payloads)))
    assert reader.bytes_skipped == 0 and reader.frames_corrupt == 0


def test_garbage_between_frames_is_skipped_and_counted() -> None:
    a = wire.encode(Kind.HEARTBEAT, 1)
    b = wire.encode(Kind.READ_STATUS, 2)
    reader = FrameReader()
    reader.feed(b"\x00junkOPS" + a + b"OPSPxx" + b)
    got = frames_of(reader)
    assert [f.sequence for f in got] == [1, 2]
    assert reader.bytes_skipped == len(b"\x00junkOPS") + len(b"OPSPxx")


def test_a_corrupt_frame_is_dropped_and_the_next_one_read() -> None:
    bad = bytearray(wire.encode(Kind.SET_CURRENT, 1, wire.pack_current(1e-8)))
    bad[18] ^= 0x40
    good = wire.encode(Kind.OPEN_CIRCUIT, 2)
    reader = FrameReader()
    reader.feed(bytes(bad) + good)
    got = frames_of(reader)
    assert [f.sequence for f in got] == [2]
    assert reader.frames_corrupt == 1


def test_an_impossible_length_does_not_stall_the_reader() -> None:
    head = struct.pack("<4sBBHII", b"OPSP", 1, 0x10, 0, 3, wire.MAX_PAYLOAD + 1)
    good = wire.encode(Kind.HEARTBEAT, 4)
    reader = FrameReader()
    reader.feed(head + good)
    assert [f.sequence for f in frames_of(reader)] == [4]


def test_a_frame_of_another_version_is_passed_on_whole() -> None:
    reader = FrameReader()
    reader.feed(wire.encode(Kind.HEARTBEAT, 9, b"future", version=2) + wire.encode(0x14, 10))
    got = frames_of(reader)
    assert [(f.version, f.sequence) for f in got] == [(2, 9), (1, 10)]


def test_payload_round_trips() -> None:
    req = wire.EisRequest(7e6, 100.0, 10, 0.3)
    assert wire.EisRequest.unpack(req.pack()) == req
    freqs = req.frequencies()
    assert freqs[0] == pytest.approx(7e6) and freqs[-1] == pytest.approx(100.0)
    assert len(freqs) == round(np.log10(7e6 / 100) * 10) + 1
    reply = wire.Reply(5, wire.ReplyCode.OUT_OF_RANGE, "too much µA", b"\x01\x02")
    assert wire.Reply.unpack(reply.pack()) == reply
    hello = wire.Hello(1, 32, 10**9, 10_000, 1e-5, "sim")
    assert wire.Hello.unpack(hello.pack()) == hello
    point = wire.EisPoint(123, 4, 50, 1e5, 3e3, -2e3)
    assert wire.EisPoint.unpack(point.pack()) == point
    event = wire.Event(99, wire.EventCode.WATCHDOG_OPEN_CIRCUIT, "heartbeat lost")
    assert wire.Event.unpack(event.pack()) == event
    status = wire.Status(1, wire.ControlMode.EIS, True, 3, 50, 0.0, 0.01, -1e-9)
    assert wire.Status.unpack(status.pack()) == status
    samples = np.zeros(3, wire.SAMPLE_DTYPE)
    samples["tick"] = [1, 2, 3]
    samples["ewe_v"] = [0.04, np.nan, 13.0]
    out = wire.unpack_samples(wire.pack_samples(samples))
    np.testing.assert_array_equal(out["tick"], [1, 2, 3])
    np.testing.assert_array_equal(out["ewe_v"], samples["ewe_v"])


def test_a_samples_frame_with_a_wrong_count_is_an_error() -> None:
    payload = wire.pack_samples(np.zeros(2, wire.SAMPLE_DTYPE))
    with pytest.raises(wire.LinkError, match="says 3 samples"):
        wire.unpack_samples(struct.pack("<H6x", 3) + payload[8:])
    assert wire.MAX_SAMPLES_PER_FRAME * 32 + 8 <= wire.MAX_PAYLOAD
