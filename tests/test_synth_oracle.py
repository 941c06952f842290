"""Self-tests of the independent TTTR generator and raster oracle (tests/support).

The records are decoded here by a deliberately naive per-record Python decoder, and the
vectorised oracle is checked against a sequential marker-driven state machine written
straight from docs/raster.md, plus hand-computed cases.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.tttr_synth import (
    REASONS,
    REC_HYDRAHARP2_T2,
    REC_MULTIHARP_T3,
    REC_PICOHARP_T3,
    Polarity,
    RasterSpec,
    encode_t2_generic,
    encode_t3_generic,
    encode_t3_picoharp,
    garbage_t2_generic,
    garbage_t3_generic,
    garbage_t3_picoharp,
    ground_truth,
    insert_garbage,
    marker_times,
    random_events,
    write_ptu,
)

Fmt = Literal["t3_generic", "t3_picoharp", "t2_generic"]
FORMATS: tuple[Fmt, ...] = ("t3_generic", "t3_picoharp", "t2_generic")
Kind = Literal["event", "marker", "overflow", "sync", "malformed"]


# --------------------------------------------------------------------------------------
# A naive decoder, one record at a time
# --------------------------------------------------------------------------------------


@dataclass
class Decoded:
    kind: list[Kind] = field(default_factory=list)
    tick: list[int] = field(default_factory=list)
    value: list[int] = field(default_factory=list)  # channel, marker mask or overflow count
    dtime: list[int] = field(default_factory=list)

    def select(self, kind: Kind) -> tuple[list[int], list[int]]:
        idx = [i for i, k in enumerate(self.kind) if k == kind]
        return [self.tick[i] for i in idx], [self.value[i] for i in idx]


def decode(fmt: Fmt, records: npt.NDArray[np.uint32]) -> Decoded:
    out = Decoded()
    base = 0
    for r in (int(v) for v in records):
        kind: Kind
        dtime = 0
        if fmt == "t3_picoharp":
            nsync, dtime, chan = r & 0xFFFF, (r >> 16) & 0xFFF, r >> 28
            if chan == 15:
                mask = dtime & 0xF
                if mask == 0:
                    base += 65536
                    kind, value = "overflow", 1
                else:
                    kind, value = "marker", mask
                dtime = 0
            elif 1 <= chan <= 4:
                kind, value = "event", chan - 1
            else:
                kind, value = "malformed", chan
            low = nsync
        else:
            t3 = fmt == "t3_generic"
            low = r & (0x3FF if t3 else 0x1FFFFFF)
            if t3:
                dtime = (r >> 10) & 0x7FFF
            chan = (r >> 25) & 0x3F
            if r >> 31:
                dtime = 0
                if chan == 63:
                    count = low if low else 1
                    base += count * (1024 if t3 else 1 << 25)
                    kind, value = "overflow", count
                elif 1 <= chan <= 15:
                    kind, value = "marker", chan
                elif chan == 0 and not t3:
                    kind, value = "sync", 0
                else:
                    kind, value = "malformed", chan
            else:
                kind, value = "event", chan
        out.kind.append(kind)
        out.tick.append(base + low)
        out.value.append(value)
        out.dtime.append(dtime)
    return out


def encode(
    fmt: Fmt,
    ticks: npt.NDArray[np.int64],
    channels: npt.NDArray[np.int16],
    mt: npt.NDArray[np.int64],
    mm: npt.NDArray[np.uint32],
    rng: np.random.Generator,
) -> npt.NDArray[np.uint32]:
    if fmt == "t3_generic":
        return encode_t3_generic(ticks, channels, mt, mm, rng)
    if fmt == "t3_picoharp":
        return encode_t3_picoharp(ticks, channels, mt, mm, rng)
    return encode_t2_generic(ticks, channels, mt, mm, rng)


# --------------------------------------------------------------------------------------
# A sequential state machine written from docs/raster.md
# --------------------------------------------------------------------------------------


def simulate(spec: RasterSpec, dec: Decoded) -> tuple[npt.NDArray[np.uint32], dict[str, int]]:
    cube = np.zeros(spec.cube_shape, dtype=np.uint32)
    reasons = dict.fromkeys([*REASONS, "bad_line", "out_of_order"], 0)
    pol_of: dict[int, tuple[int, Polarity]] = {}
    off = 0
    for p in spec.polarities:
        for c in p.channels:
            pol_of[c] = (off, p)
        off += len(p.species)
    L = spec.line_ticks
    tol = spec.line_tolerance_ticks
    stops = spec.line_stop_mask is not None
    frame = -1
    frame_start = 0
    lines_in_frame = 0
    line_open = False
    line_start = 0
    held: list[tuple[int, int, int, int]] = []
    prev_tick = -1

    def close(by: str, t: int) -> None:
        nonlocal line_open, held
        if not line_open:
            return
        d = t - line_start
        if by == "stop":
            ok = abs(d - L) <= tol
        elif stops:
            ok = False
        elif by == "start":
            ok = L - tol <= d <= L + spec.flyback_ticks + tol
        else:
            ok = d >= L - tol
        if ok:
            for v in held:
                cube[v] += 1
        else:
            reasons["bad_line"] += len(held)
        held = []
        line_open = False

    for kind, t, val in zip(dec.kind, dec.tick, dec.value, strict=True):
        if kind == "marker":
            if spec.line_stop_mask is not None and val & spec.line_stop_mask:
                close("stop", t)
            if val & spec.frame_mask:
                close("frame", t)
                frame += 1
                frame_start = t
                lines_in_frame = 0
            if val & spec.line_start_mask:
                close("start", t)
                line_open = True
                line_start = t
                lines_in_frame += 1
            prev_tick = t
            continue
        if kind != "event":
            continue
        if val not in pol_of:
            reasons["unknown_channel"] += 1
            continue
        if t < prev_tick:
            reasons["out_of_order"] += 1
            continue
        prev_tick = t
        y = lines_in_frame - 1
        dt = t - line_start
        if frame < 0:
            reasons["before_first_frame"] += 1
        elif lines_in_frame == 0:
            reasons["before_first_line"] += 1
        elif not line_open:
            reasons["flyback"] += 1
        elif dt < spec.line_settle_ticks:
            reasons["line_settle"] += 1
        elif (dt - spec.line_settle_ticks) // spec.dwell_ticks >= spec.nx:
            reasons["flyback"] += 1
        elif y >= spec.ny:
            reasons["line_overrun"] += 1
        else:
            x = (dt - spec.line_settle_ticks) // spec.dwell_ticks
            o, p = pol_of[val]
            n = len(p.species)
            if p.switching == "per_frame":
                k = frame % n
                settling = t - frame_start < p.settle_ticks
            else:
                po = dt - spec.line_settle_ticks - x * spec.dwell_ticks
                k = po * n // spec.dwell_ticks
                settling = po - -(-k * spec.dwell_ticks // n) < p.settle_ticks
            if settling:
                reasons["mass_settle"] += 1
            else:
                held.append((o + k, frame // spec.frames_per_slice, y, x))
    close("end", prev_tick)
    return cube, reasons


# --------------------------------------------------------------------------------------
# Specs
# --------------------------------------------------------------------------------------

BUSY = RasterSpec(
    nx=5,
    ny=3,
    dwell_ticks=7,
    line_settle_ticks=4,
    flyback_ticks=6,
    frame_gap_ticks=9,
    frames=5,
    frames_per_slice=2,
    polarities=(
        Polarity((0,), ("Na+", "Si+"), "per_frame", 15),
        Polarity((1, 3), ("O-", "P-", "SiO2-"), "per_pixel", 1),
    ),
    start_tick=70_000,
    extra_lines=1,
)


@st.composite
def specs(draw: st.DrawFn) -> RasterSpec:
    stop = draw(st.booleans())
    pols = [
        Polarity(
            (0,),
            ("a", "b", "c")[: draw(st.integers(1, 3))],
            draw(st.sampled_from(["per_frame", "per_pixel"])),
            draw(st.integers(0, 6)),
        ),
        Polarity(
            (1,),
            ("d", "e")[: draw(st.integers(1, 2))],
            draw(st.sampled_from(["per_frame", "per_pixel"])),
            draw(st.integers(0, 40)),
        ),
    ]
    return RasterSpec(
        nx=draw(st.integers(1, 6)),
        ny=draw(st.integers(1, 4)),
        dwell_ticks=draw(st.integers(1, 9)),
        line_settle_ticks=draw(st.integers(0, 8)),
        flyback_ticks=draw(st.integers(0, 8)),
        frame_gap_ticks=draw(st.integers(0, 12)),
        frames=draw(st.integers(1, 5)),
        frames_per_slice=draw(st.integers(1, 3)),
        frame_mask=1,
        line_start_mask=draw(st.sampled_from([2, 6])),
        line_stop_mask=8 if stop else None,
        polarities=tuple(pols),
        start_tick=draw(st.sampled_from([0, 3, 1000, 2_000_003])),
        extra_lines=draw(st.integers(0, 2)),
    )


# --------------------------------------------------------------------------------------
# Tests: encoders and decoder
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_round_trip(fmt: Fmt, seed: int) -> None:
    rng = np.random.default_rng(seed)
    spec = replace(BUSY, start_tick=[0, 123_457, 40_000_001][seed])
    ticks, ch = random_events(spec, 3000, rng, 0.1)
    mt, mm = marker_times(spec)
    rec = encode(fmt, ticks, ch, mt, mm, rng)
    assert rec.dtype == np.uint32
    dec = decode(fmt, rec)
    assert "malformed" not in dec.kind
    et, ec = dec.select("event")
    assert et == ticks.tolist()
    assert ec == ch.tolist()
    dt, dm = dec.select("marker")
    assert dt == mt.tolist()
    assert dm == mm.tolist()
    # the stream is in time order and markers precede events at equal ticks
    order = [(t, k == "event") for t, k in zip(dec.tick, dec.kind, strict=True) if k != "overflow"]
    assert order == sorted(order)


def test_overflow_styles_are_mixed() -> None:
    rng = np.random.default_rng(5)
    cases: tuple[tuple[Fmt, int], ...] = (("t3_generic", 700), ("t2_generic", 20_000_000))
    for fmt, dwell in cases:
        spec = replace(BUSY, start_tick=5_000_000_000, dwell_ticks=dwell)
        ticks, ch = random_events(spec, 2000, rng)
        mt, mm = marker_times(spec)
        rec = encode(fmt, ticks, ch, mt, mm, rng)
        assert decode(fmt, rec).select("event") == (ticks.tolist(), ch.tolist())
        ovf = rec[(rec >> 25) == 0x7F]
        fields = ovf & (0x3FF if fmt == "t3_generic" else 0x1FFFFFF)
        assert np.any(fields == 0), "count field 0 (meaning 1)"
        assert np.any(fields == 1)
        assert np.any(fields > 1)
    spec = replace(BUSY, dwell_ticks=700)
    ticks, ch = random_events(spec, 2000, rng)
    mt, mm = marker_times(spec)
    rec = encode_t3_generic(ticks, ch, mt, mm, rng, counted_overflows=False)
    assert np.all(rec[(rec >> 25) == 0x7F] & 0x3FF == 1)


def test_t3_wrap_boundaries() -> None:
    """Ticks exactly on, just before and just after wraps, with large gaps."""
    rng = np.random.default_rng(9)
    ticks = np.array(
        [0, 1023, 1024, 1025, 65535, 65536, 65537, 10 * 65536, 33554431, 33554432, 10**9],
        dtype=np.int64,
    )
    ch = np.zeros(ticks.size, dtype=np.int16)
    mt = np.array([1024, 65536, 33554432], dtype=np.int64)
    mm = np.array([1, 2, 15], dtype=np.uint32)
    for fmt in FORMATS:
        for _ in range(5):
            dec = decode(fmt, encode(fmt, ticks, ch, mt, mm, rng))
            assert dec.select("event") == (ticks.tolist(), ch.tolist())
            assert dec.select("marker") == (mt.tolist(), mm.tolist())


def test_origin_and_dtimes() -> None:
    rng = np.random.default_rng(3)
    ticks = np.array([5000, 5001, 9000], dtype=np.int64)
    ch = np.array([0, 1, 2], dtype=np.int16)
    dtimes = np.array([7, 0xFFF, 123])
    mt = np.array([5000], dtype=np.int64)
    mm = np.array([4], dtype=np.uint32)
    dec = decode(
        "t3_generic", encode_t3_generic(ticks, ch, mt, mm, rng, dtimes=dtimes, origin=4096)
    )
    assert dec.select("event")[0] == (ticks - 4096).tolist()
    assert [d for d, k in zip(dec.dtime, dec.kind, strict=True) if k == "event"] == [7, 4095, 123]
    dec = decode("t3_picoharp", encode_t3_picoharp(ticks, ch, mt, mm, rng, dtimes=dtimes))
    assert [d for d, k in zip(dec.dtime, dec.kind, strict=True) if k == "event"] == [7, 4095, 123]
    with pytest.raises(ValueError, match="origin"):
        encode_t3_generic(ticks, ch, mt, mm, rng, origin=6000)


def test_t2_syncs() -> None:
    rng = np.random.default_rng(4)
    ticks = np.array([10, 20, 40_000_000], dtype=np.int64)
    ch = np.array([0, 1, 0], dtype=np.int16)
    syncs = np.array([10, 30, 50_000_000], dtype=np.int64)
    rec = encode_t2_generic(ticks, ch, [10], [1], rng, sync_ticks=syncs)
    dec = decode("t2_generic", rec)
    assert dec.select("sync")[0] == syncs.tolist()
    seq = [k for k in dec.kind if k != "overflow"]
    assert seq[:3] == ["marker", "sync", "event"]


@pytest.mark.parametrize(
    ("fmt", "garbage"),
    [
        ("t3_generic", garbage_t3_generic),
        ("t3_picoharp", garbage_t3_picoharp),
        ("t2_generic", garbage_t2_generic),
    ],
)
def test_garbage(fmt: Fmt, garbage: object) -> None:
    assert callable(garbage)
    rng = np.random.default_rng(11)
    ticks, ch = random_events(BUSY, 500, rng)
    mt, mm = marker_times(BUSY)
    rec = encode(fmt, ticks, ch, mt, mm, rng)
    g = garbage(50, rng)
    mixed, where = insert_garbage(rec, g, rng)
    dec = decode(fmt, mixed)
    bad = [i for i, k in enumerate(dec.kind) if k == "malformed"]
    assert bad == where.tolist()
    assert np.array_equal(mixed[where], g)
    assert np.array_equal(np.delete(mixed, where), rec)


def test_write_ptu(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    ticks, ch = random_events(BUSY, 2000, rng)
    mt, mm = marker_times(BUSY)
    rec = encode_t3_generic(ticks, ch, mt, mm, rng)
    path = tmp_path / "synth.ptu"
    write_ptu(path, REC_MULTIHARP_T3, rec, 1e-7, 5e-12, {"File_Comment": "synthetic", "X": 3})
    raw = path.read_bytes()
    assert raw[:8] == b"PQTTTR\0\0" and raw[8:16] == b"1.0.00\0\0"
    pos, tags = 16, {}
    while True:
        ident = raw[pos : pos + 32].rstrip(b"\0").decode()
        _idx, typ = struct.unpack_from("<iI", raw, pos + 32)
        value = raw[pos + 40 : pos + 48]
        pos += 48
        if typ == 0x4001FFFF:
            pos += struct.unpack("<q", value)[0]
        tags[ident] = (typ, value)
        if ident == "Header_End":
            break
    assert tags["TTResultFormat_TTTRRecType"] == (0x10000008, struct.pack("<q", REC_MULTIHARP_T3))
    assert tags["TTResult_NumberOfRecords"][1] == struct.pack("<q", rec.size)
    assert tags["MeasDesc_GlobalResolution"] == (0x20000008, struct.pack("<d", 1e-7))
    assert tags["Header_End"][0] == 0xFFFF0008
    assert np.array_equal(np.frombuffer(raw[pos:], dtype="<u4"), rec)


@pytest.mark.parametrize(
    ("fmt", "code"),
    [
        ("t3_generic", REC_MULTIHARP_T3),
        ("t3_picoharp", REC_PICOHARP_T3),
        ("t2_generic", REC_HYDRAHARP2_T2),
    ],
)
def test_write_ptu_reads_in_ptufile(tmp_path: Path, fmt: Fmt, code: int) -> None:
    ptufile = pytest.importorskip("ptufile")
    rng = np.random.default_rng(8)
    ticks, ch = random_events(BUSY, 1000, rng)
    mt, mm = marker_times(BUSY)
    rec = encode(fmt, ticks, ch, mt, mm, rng)
    path = tmp_path / f"{fmt}.ptu"
    write_ptu(path, code, rec, 1e-7, 5e-12, {"TTResult_SyncRate": 10_000_000})
    with ptufile.PtuFile(path) as f:
        ref = f.decode_records()
    assert ref.shape == rec.shape
    is_ev = ref["channel"] >= 0
    assert np.array_equal(ref["time"][is_ev], ticks)
    assert np.array_equal(ref["channel"][is_ev], ch)
    is_mk = ref["marker"] > 0
    assert np.array_equal(ref["time"][is_mk], mt)
    assert np.array_equal(ref["marker"][is_mk], mm)


# --------------------------------------------------------------------------------------
# Tests: markers and the oracle
# --------------------------------------------------------------------------------------


def test_marker_times_layout() -> None:
    spec = RasterSpec(
        nx=2, ny=2, dwell_ticks=10, line_settle_ticks=5, flyback_ticks=3, frame_gap_ticks=4,
        frames=2, start_tick=100,
    )  # fmt: skip
    t, m = marker_times(spec)
    # L = 25, line period 28, frame period 4 + 2 * 28 = 60
    assert t.tolist() == [100, 104, 129, 132, 157, 160, 164, 189, 192, 217]
    assert m.tolist() == [1, 2, 4, 2, 4, 1, 2, 4, 2, 4]
    coincide = replace(spec, flyback_ticks=0, frame_gap_ticks=0)
    t, m = marker_times(coincide)
    # L = 25, frame period 50: stop|start and stop|frame|start merge
    assert t.tolist() == [100, 125, 150, 175, 200]
    assert m.tolist() == [3, 6, 7, 6, 4]
    t, m = marker_times(coincide, merge=False)
    assert m.tolist() == [1, 2, 4, 2, 4, 1, 2, 4, 2, 4]


def test_hand_computed_per_frame() -> None:
    # frame 0 at 100, line start 120, stop 145 (L = 5 + 2 * 10); frame 1 at 145 (= stop),
    # line start 165, stop 190.
    spec = RasterSpec(
        nx=2,
        ny=1,
        dwell_ticks=10,
        line_settle_ticks=5,
        flyback_ticks=0,
        frame_gap_ticks=20,
        frames=2,
        polarities=(
            Polarity((0,), ("a", "b"), "per_frame", 0),
            Polarity((1,), ("c",), "per_frame", 26),
        ),
        start_tick=100,
    )
    events: list[tuple[int, int, str | tuple[int, int, int, int]]] = [
        (50, 0, "before_first_frame"),
        (100, 0, "before_first_line"),  # at the frame marker: after it
        (119, 1, "before_first_line"),
        (120, 0, "line_settle"),  # at the line start: dt = 0
        (124, 1, "line_settle"),
        (125, 0, (0, 0, 0, 0)),
        (125, 1, "mass_settle"),  # 25 ticks after the frame marker < 26
        (130, 2, "unknown_channel"),
        (134, 0, (0, 0, 0, 0)),
        (134, 1, (2, 0, 0, 0)),
        (135, 0, (0, 0, 0, 1)),
        (144, 1, (2, 0, 0, 1)),
        (145, 0, "before_first_line"),  # stop and frame 1 marker at 145
        (170, 0, (1, 1, 0, 0)),  # frame 1: species step 1 -> "b", z = 1
        (170, 1, "mass_settle"),
        (175, 1, (2, 1, 0, 0)),  # dt = 10: x = (10 - 5) // 10 = 0
        (180, 1, (2, 1, 0, 1)),
        (189, 0, (1, 1, 0, 1)),
        (190, 0, "flyback"),  # at the last stop
        (500, 1, "flyback"),
    ]
    ticks = np.array([e[0] for e in events], dtype=np.int64)
    ch = np.array([e[1] for e in events], dtype=np.int16)
    want_cube = np.zeros((3, 2, 1, 2), dtype=np.uint32)
    want_reasons = dict.fromkeys(REASONS, 0)
    for *_, what in events:
        if isinstance(what, str):
            want_reasons[what] += 1
        else:
            want_cube[what] += 1
    cube, reasons = ground_truth(spec, ticks, ch)
    assert np.array_equal(cube, want_cube)
    assert reasons == want_reasons
    # the same through the records and the sequential machine
    mt, mm = marker_times(spec)
    assert mm.tolist() == [1, 2, 4 | 1, 2, 4]
    rng = np.random.default_rng(0)
    for fmt in FORMATS:
        sim_cube, sim_reasons = simulate(spec, decode(fmt, encode(fmt, ticks, ch, mt, mm, rng)))
        assert np.array_equal(sim_cube, want_cube)
        assert sim_reasons == {**want_reasons, "bad_line": 0, "out_of_order": 0}


@pytest.mark.parametrize(
    ("dwell", "settle", "want", "n_settle"),
    [(12, 1, [3, 3, 3], 3), (10, 2, [2, 1, 1], 6), (10, 0, [4, 3, 3], 0)],
)
def test_hand_computed_per_pixel(dwell: int, settle: int, want: list[int], n_settle: int) -> None:
    # one pixel, three species; dwell 10: steps start at offsets 0, ceil(10/3)=4, ceil(20/3)=7
    spec = RasterSpec(
        nx=1,
        ny=1,
        dwell_ticks=dwell,
        polarities=(Polarity((0,), ("a", "b", "c"), "per_pixel", settle),),
        start_tick=0,
    )
    ticks = np.arange(dwell, dtype=np.int64)
    cube, reasons = ground_truth(spec, ticks, np.zeros(dwell, dtype=np.int16))
    assert cube[:, 0, 0, 0].tolist() == want
    assert reasons["mass_settle"] == n_settle


def test_all_reasons_occur_and_add_up() -> None:
    rng = np.random.default_rng(21)
    ticks, ch = random_events(BUSY, 200_000, rng, 0.05)
    cube, reasons = ground_truth(BUSY, ticks, ch)
    assert cube.dtype == np.uint32 and cube.shape == (5, 3, 3, 5)
    assert int(cube.sum()) + sum(reasons.values()) == ticks.size
    assert all(v > 0 for v in reasons.values()), reasons
    # frames 0..4, two per slice; "Na+" in even frames, "Si+" in odd: slice 2 (frame 4)
    # has no "Si+"; the per-pixel species are everywhere
    assert np.all(cube[:, :2] > 0) and np.all(cube[2:, 2] > 0) and np.all(cube[0, 2] > 0)
    assert np.all(cube[1, 2] == 0)


def test_empty_and_checks() -> None:
    cube, reasons = ground_truth(BUSY, np.array([], np.int64), np.array([], np.int16))
    assert cube.shape == BUSY.cube_shape and cube.sum() == 0
    assert set(reasons) == set(REASONS)
    with pytest.raises(ValueError, match="sorted"):
        ground_truth(BUSY, [5, 4], [0, 0])
    no_stop = replace(BUSY, line_stop_mask=None)
    last_line = int(marker_times(no_stop)[0][-1])
    with pytest.raises(ValueError, match="ambiguous"):
        ground_truth(no_stop, [last_line + 3], [0])
    with pytest.raises(ValueError, match="share bits"):
        RasterSpec(nx=1, ny=1, dwell_ticks=1, frame_mask=3, line_start_mask=2)
    with pytest.raises(ValueError, match="owned twice"):
        RasterSpec(nx=1, ny=1, dwell_ticks=1, polarities=(Polarity((0,), ("a",)),) * 2)


@given(spec=specs(), seed=st.integers(0, 2**32 - 1), fmt=st.sampled_from(FORMATS))
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_oracle_matches_sequential_machine(spec: RasterSpec, seed: int, fmt: Fmt) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(0, 400))
    ticks, ch = random_events(spec, n, rng, 0.1)
    cube, reasons = ground_truth(spec, ticks, ch)
    assert int(cube.sum()) + sum(reasons.values()) == n
    mt, mm = marker_times(spec, merge=bool(rng.integers(0, 2)))
    dec = decode(fmt, encode(fmt, ticks, ch, mt, mm, rng))
    sim_cube, sim_reasons = simulate(spec, dec)
    assert sim_reasons.pop("bad_line") == 0
    assert sim_reasons.pop("out_of_order") == 0
    assert sim_reasons == reasons
    assert np.array_equal(sim_cube, cube)
