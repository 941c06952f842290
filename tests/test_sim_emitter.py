"""The simulated detector front-end (DetectorEmitter) judged three ways: the native core
fed its link bytes bins exactly its ground truth; the independent numpy oracle of
tests/support maps its decoded records to the same truth; and its counts have the
statistics it promises (Poisson, non-paralysable dead time, dark rate, settle rate).
Its true event log and its clock jumps are held to the same standard."""

from __future__ import annotations

import struct
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opsims import ConfigError, DetectorEmitter, EventCore, RecordFormatError, decode_records
from support.tttr_synth import (
    REC_HYDRAHARP2_T2,
    REC_MULTIHARP_T3,
    REC_PICOHARP_T3,
    Polarity,
    RasterSpec,
    ground_truth,
)

REC_PICOHARP_T2 = 0x00010203
TICK_S = 80e-9
HEADER = struct.Struct("<4sHHQIIQQQQQIBBBB4sI")
PolarityArg = tuple[str, list[int], list[str], str, int]


@dataclass(frozen=True)
class Setup:
    """One raster, given to the emitter and to the core alike."""

    record_type: int = REC_MULTIHARP_T3
    nx: int = 16
    ny: int = 6
    dwell: int = 36
    line_settle: int = 9
    flyback: int = 25
    frame_gap: int = 140
    switching: tuple[str, str] = ("per_frame", "per_pixel")
    settle: tuple[int, int] = (120, 3)
    frame_at: str = "start"
    line_stop: int = 2
    mass_switch: int = 8
    start_tick: int = 0
    frames_per_slice: int = 2

    def polarities(self) -> list[PolarityArg]:
        return [
            ("positive", [0, 2], ["Na+", "Si+", "Zr+", "ZrO+"], self.switching[0], self.settle[0]),
            ("negative", [1], ["O-", "P-", "SiO2-"], self.switching[1], self.settle[1]),
        ]

    @property
    def n_species(self) -> int:
        return sum(len(p[2]) for p in self.polarities())

    @property
    def line_ticks(self) -> int:
        return self.line_settle + self.nx * self.dwell

    def raster_kwargs(self) -> dict[str, Any]:
        return {
            "line_settle_ticks": self.line_settle,
            "flyback_ticks": self.flyback,
            "frames_per_slice": self.frames_per_slice,
            "frame_marker": 4,
            "line_start_marker": 1,
            "line_stop_marker": self.line_stop,
            "mass_switch_marker": self.mass_switch,
            "frame_marker_at": self.frame_at,
        }

    def emitter(self, **kw: Any) -> DetectorEmitter:
        args: dict[str, Any] = {
            "frame_gap_ticks": self.frame_gap,
            "start_tick": self.start_tick,
            "record_truth": True,
            "seed": 11,
        }
        args.update(kw)
        return DetectorEmitter(
            self.record_type, TICK_S, self.nx, self.ny, self.dwell, self.polarities(),
            **self.raster_kwargs(), **args,
        )  # fmt: skip

    def core(self, **kw: Any) -> EventCore:
        # Without stop markers the run's end closes the last line: a tolerance of a whole
        # line accepts it wherever its last record falls.
        tolerance = 0 if self.line_stop else self.line_ticks
        return EventCore(
            self.record_type, TICK_S, self.nx, self.ny, self.dwell, self.polarities(),
            line_tolerance_ticks=tolerance, **self.raster_kwargs(),
            memory_budget_bytes=1 << 28, budget_policy="refuse", **kw,
        )  # fmt: skip

    def line_starts(self, em: DetectorEmitter, frames: int) -> list[int]:
        return [line_start(em, self, f, y) for f in range(frames) for y in range(self.ny)]

    def rates(self, rng: np.random.Generator, scale: float = 1e6) -> npt.NDArray[np.float64]:
        return rng.uniform(0.2, 2.0, (self.n_species, self.ny, self.nx)) * scale


def line_start(em: DetectorEmitter, s: Setup, frame: int, line: int) -> int:
    return s.start_tick + frame * em.frame_period_ticks + line * em.line_period_ticks


def payloads(frames: Iterable[bytes]) -> tuple[list[tuple[Any, ...]], npt.NDArray[np.uint32]]:
    """Headers and the concatenated records of link frames, checking magic and CRC."""
    headers, parts = [], []
    for f in frames:
        h = HEADER.unpack_from(f)
        assert h[0] == b"OPSD" and h[2] == 80 and len(f) == 80 + 4 * h[5]
        headers.append(h)
        parts.append(np.frombuffer(f, dtype="<u4", offset=80))
    return headers, np.concatenate(parts).astype(np.uint32)


CORE_KEYS = (
    "events", "binned", "line_settle", "flyback", "mass_settle", "markers", "frame_markers",
    "line_starts", "line_stops", "mass_switches", "overflow_records", "wraps", "link_frames",
    "records",
)  # fmt: skip


def run_against_core(
    s: Setup, end: int, seed: int = 3, min_binned: int = 2000, **kw: Any
) -> dict[str, int]:
    args: dict[str, Any] = {"dead_time_ticks": 3, "dark_rate_hz": 4e5, "settle_rate_fraction": 0.4}
    em = s.emitter(**{**args, **kw})
    core = s.core()
    rng = np.random.default_rng(seed)
    em.set_rates(s.rates(rng))
    cuts = np.sort(rng.integers(max(0, s.start_tick - 2000), end, 40))
    for i, t in enumerate([*cuts.tolist(), end]):
        if i == 20:
            em.set_rates(s.rates(rng, 2e6))  # from the next line on, as promised
        for frame in em.emit_until(t):
            core.feed_link(frame, 1_000 * i)
    core.finish()
    got, truth = core.counters(), em.truth_counters()
    assert {k: got[k] for k in CORE_KEYS} == {k: truth[k] for k in CORE_KEYS}
    assert got["rejected_total"] == truth["line_settle"] + truth["flyback"] + truth["mass_settle"]
    assert got["lines_bad"] == got["link_loss_intervals"] == got["pending"] == 0
    assert core.n_slices <= em.n_slices
    for name in em.species:
        want = em.truth_cube(name)
        np.testing.assert_array_equal(core.cube(name), want[: core.n_slices], err_msg=name)
        assert not want[core.n_slices :].any()
    assert truth["binned"] >= min_binned
    return dict(truth)


@pytest.mark.parametrize("record_type", [REC_MULTIHARP_T3, REC_HYDRAHARP2_T2])
@pytest.mark.parametrize("switching", [("per_frame", "per_pixel"), ("per_pixel", "per_frame")])
@pytest.mark.parametrize("frame_at", ["start", "end"])
@pytest.mark.parametrize("line_stop", [2, 0])
@pytest.mark.parametrize("near_wrap", [False, True])
def test_core_bins_exactly_the_truth(
    record_type: int, switching: tuple[str, str], frame_at: str, line_stop: int, near_wrap: bool
) -> None:
    wrap = 1 << 10 if record_type == REC_MULTIHARP_T3 else 1 << 25
    start = 3 * wrap - 40 if near_wrap else 0
    settle = (120, 3) if switching[0] == "per_frame" else (3, 120)
    if frame_at == "end" and start:
        # See test_end_marked_first_frame_settles_from_the_raster_start.
        settle = (0, 3) if switching[0] == "per_frame" else (3, 0)
    s = Setup(
        record_type=record_type, switching=switching, settle=settle, frame_at=frame_at,
        line_stop=line_stop, start_tick=start,
    )  # fmt: skip
    em = s.emitter()
    end = line_start(em, s, 5, 2) + (0 if line_stop else 77)
    truth = run_against_core(s, end)
    assert truth["line_settle"] > 0 and truth["flyback"] > 0 and truth["mass_settle"] > 0
    assert truth["dead_time_lost"] > 0
    assert truth["frames"] == 6 and truth["lines"] == 5 * s.ny + (2 if line_stop else 3)
    # The link's time base starts just below start_tick: it crosses the wrap above it.
    assert truth["wraps"] >= (1 if near_wrap else 0)


@settings(max_examples=40, deadline=None)
@given(st.data())
def test_core_bins_the_truth_for_any_raster(data: st.DataObject) -> None:
    draw = data.draw
    switching = (draw(st.sampled_from(["per_frame", "per_pixel"])),
                 draw(st.sampled_from(["per_frame", "per_pixel"])))  # fmt: skip
    dwell = draw(st.integers(3, 60))
    frame_at = draw(st.sampled_from(["start", "end"]))
    start = draw(st.integers(0, 10**9))
    settle = tuple(
        draw(st.integers(0, (dwell - 1) // n)) if sw == "per_pixel" else draw(st.integers(0, 900))
        for sw, n in zip(switching, (4, 3), strict=True)
    )
    frame_settle = any(v and sw == "per_frame" for v, sw in zip(settle, switching, strict=True))
    if frame_at == "end" and frame_settle:
        start = 0  # see test_end_marked_first_frame_settles_from_the_raster_start
    line_stop = draw(st.sampled_from([0, 2]))
    s = Setup(
        record_type=draw(st.sampled_from([REC_MULTIHARP_T3, REC_HYDRAHARP2_T2, REC_PICOHARP_T3])),
        nx=draw(st.integers(1, 20)), ny=draw(st.integers(1, 6)), dwell=dwell,
        line_settle=draw(st.integers(0, 30)),
        # With stop markers and no flyback the stop shares the next line's start record.
        flyback=draw(st.integers(1 if line_stop else 0, 40)),
        frame_gap=draw(st.integers(0, 3000)), switching=switching,
        settle=(settle[0], settle[1]), frame_at=frame_at, line_stop=line_stop,
        mass_switch=draw(st.sampled_from([0, 8])), start_tick=start,
        frames_per_slice=draw(st.integers(1, 3)),
    )  # fmt: skip
    em = s.emitter()
    end = line_start(em, s, draw(st.integers(1, 4)), draw(st.integers(0, s.ny - 1)))
    if not line_stop:
        end += draw(st.integers(0, em.line_period_ticks))
    run_against_core(
        s, end, seed=draw(st.integers(0, 99)), min_binned=0,
        dead_time_ticks=draw(st.integers(0, 5)),
        max_records_per_frame=draw(st.integers(1, 300)),
    )  # fmt: skip


def test_core_bins_exactly_the_truth_in_small_frames_picoharp_t3() -> None:
    s = Setup(record_type=REC_PICOHARP_T3, frame_gap=0, flyback=0, line_stop=0)
    em = s.emitter()
    end = line_start(em, s, 4, 0) + 5
    truth = run_against_core(s, end, max_records_per_frame=7)
    assert truth["link_frames"] > truth["records"] // 7


def test_a_late_start_sends_no_overflow_history() -> None:
    # The simulator's default device clock starts near 10^12 ticks: 10^6 overflow records
    # of history that a running front-end would not replay.
    s = Setup(start_tick=987_654_321_000)
    em = s.emitter()
    headers, records = payloads(em.emit_until(s.start_tick))
    assert headers[0][8] == s.start_tick // 1024 * 1024 and records.size == 0
    truth = run_against_core(s, line_start(em, s, 5, 0))
    assert 0 < truth["overflow_records"] < 25


def test_end_marked_first_frame_settles_from_the_raster_start() -> None:
    s = Setup(frame_at="end", start_tick=5000, settle=(400, 3))
    run_against_core(s, line_start(s.emitter(), s, 6, 0))


def test_truth_equals_the_independent_numpy_oracle() -> None:
    # tests/support's oracle knows a raster without frame gap (its gap precedes line 0).
    s = Setup(frame_gap=0, settle=(150, 4), start_tick=777)
    em = s.emitter(dead_time_ticks=2, dark_rate_hz=3e5, settle_rate_fraction=0.5)
    em.set_rates(s.rates(np.random.default_rng(5)))
    frames_run = 5
    _, records = payloads(em.emit_until(line_start(em, s, frames_run, 0)))
    d = decode_records(s.record_type, records)
    ev = d["kind"] == 0
    spec = RasterSpec(
        nx=s.nx, ny=s.ny, dwell_ticks=s.dwell, line_settle_ticks=s.line_settle,
        flyback_ticks=s.flyback, frames=frames_run, frames_per_slice=s.frames_per_slice,
        frame_mask=4, line_start_mask=1, line_stop_mask=2, start_tick=s.start_tick,
        polarities=tuple(Polarity(tuple(p[1]), tuple(p[2]), p[3], p[4])  # type: ignore[arg-type]
                         for p in s.polarities()),
    )  # fmt: skip
    cube, reasons = ground_truth(spec, d["tick"][ev].astype(np.int64), d["channel"][ev])
    truth = em.truth_counters()
    for name in ("line_settle", "flyback", "mass_settle"):
        assert reasons[name] == truth[name], name
    assert sum(reasons.values()) + int(cube.sum()) == truth["events"]
    for i, name in enumerate(em.species):
        np.testing.assert_array_equal(cube[i], em.truth_cube(name), err_msg=name)
    # Markers where docs/raster.md puts them.
    mk = d["kind"] == 1
    ticks, masks = d["tick"][mk].astype(np.int64), d["marker"][mk]
    starts = ticks[(masks & 1) != 0]
    np.testing.assert_array_equal(np.diff(starts), em.line_period_ticks)
    np.testing.assert_array_equal(ticks[(masks & 4) != 0], starts[:: s.ny])
    np.testing.assert_array_equal(ticks[(masks & 2) != 0], starts + s.line_ticks)
    # Per-pixel switches of the 3-species polarity: at ceil(k * dwell / 3) in each pixel.
    switches = ticks[(masks & 8) != 0]
    pixel0 = starts + s.line_settle
    offsets = [-(-k * s.dwell // 3) for k in range(3)]
    want = (pixel0[:, None, None] + s.dwell * np.arange(s.nx)[None, :, None] + offsets).ravel()
    frame_switch = starts[:: s.ny]  # the per-frame polarity switches with the frame
    np.testing.assert_array_equal(switches, np.union1d(want, frame_switch))


def test_headers_sequence_base_and_raster_position() -> None:
    s = Setup(start_tick=20 * 1024 - 3)
    em = s.emitter(max_records_per_frame=50)
    em.set_rates(s.rates(np.random.default_rng(1)))
    headers: list[tuple[Any, ...]] = []
    records = []
    ends = [0, 10, line_start(em, s, 0, 3) + 1, line_start(em, s, 2, 1), line_start(em, s, 2, 1)]
    for end in ends:
        frames = em.emit_until(end)
        got, r = payloads(frames)
        assert len(frames) >= 1 and all(x[9] == end for x in got)  # sent_tick
        headers += got
        records.append(r)
    assert [h[3] for h in headers] == list(range(len(headers))) == list(range(em.next_sequence))
    assert headers[0][5] == 0 and headers[-1][5] == 0  # nothing new to send: empty frames
    d = decode_records(s.record_type, np.concatenate(records))
    skipped = 19 * 1024  # the link starts at the time base below start_tick
    at, base, frames_seen, lines = 0, skipped, 0, 0
    for h in headers:
        n = h[5]
        assert h[4] == s.record_type and h[5] <= 50 and h[6] == round(TICK_S * 1e15)
        assert (h[8], h[10], h[11]) == (base, frames_seen, lines)
        assert (h[12], h[13], h[14], h[15]) == (4, 1, 2, 8)
        for i in range(at, at + n):
            if d["kind"][i] == 2:
                base = skipped + int(d["tick"][i])
            elif d["kind"][i] == 1:
                if d["marker"][i] & 4:
                    frames_seen, lines = frames_seen + 1, 0
                lines += int(d["marker"][i] & 1)
        at += n
    assert (frames_seen, lines) == (3, 1)
    assert em.position[:2] == (2, 0)
    assert em.truth_counters()["wraps"] >= 1


def test_new_rates_apply_from_the_next_line_start() -> None:
    s = Setup(frames_per_slice=1)
    em = s.emitter()
    em.set_rates(np.full((s.n_species, s.ny, s.nx), 2e6))
    mid = line_start(em, s, 0, 1) + s.line_settle + s.nx // 2 * s.dwell
    em.emit_until(mid)  # halfway through line 1
    em.set_rates(np.zeros((s.n_species, s.ny, s.nx)))
    em.emit_until(line_start(em, s, 1, 0))
    counts = sum(em.truth_cube(i)[0] for i in range(s.n_species))
    assert counts[:2, s.nx // 2 :].all()  # line 1 kept its rates to its end
    assert not counts[2:].any()


def test_stream_is_the_same_however_time_is_sliced() -> None:
    s = Setup()

    def stream(ticks: list[int], seed: int = 11) -> npt.NDArray[np.uint32]:
        em = s.emitter(seed=seed, dead_time_ticks=4, dark_rate_hz=1e5)
        em.set_rates(np.full((s.n_species, s.ny, s.nx), 4e5))
        return payloads([f for t in ticks for f in em.emit_until(t)])[1]

    end = 3 * Setup().emitter().frame_period_ticks + 123
    whole = stream([end])
    np.testing.assert_array_equal(whole, stream([*range(0, end, 97), end]))
    assert not np.array_equal(whole, stream([end], seed=12))


# --- the true event log and clock jumps -----------------------------------------------

FATES = ("binned", "line_settle", "flyback", "mass_settle", "dead_time_lost")
EVENT_DTYPES = {
    "tick": np.uint64, "channel": np.uint8, "species": np.int16, "z": np.uint32,
    "y": np.uint16, "x": np.uint16, "fate": np.uint8,
}  # fmt: skip


def joined(chunks: list[dict[str, npt.NDArray[Any]]]) -> dict[str, npt.NDArray[Any]]:
    return {k: np.concatenate([c[k] for c in chunks]) for k in EVENT_DTYPES}


def check_log(em: DetectorEmitter, s: Setup, log: dict[str, npt.NDArray[Any]]) -> None:
    """By fate the log is the truth counters; its in-voxel counts binned are the cubes."""
    assert {k: v.dtype for k, v in log.items()} == {k: np.dtype(t) for k, t in EVENT_DTYPES.items()}
    truth = em.truth_counters()
    assert np.bincount(log["fate"], minlength=5).tolist() == [truth[k] for k in FATES]
    assert np.all(np.diff(log["tick"].astype(np.int64)) >= 0)
    live = log["fate"] == 0
    cube = np.zeros((s.n_species, em.n_slices, s.ny, s.nx), np.uint32)
    np.add.at(cube, (log["species"][live], log["z"][live], log["y"][live], log["x"][live]), 1)
    for i, name in enumerate(em.species):
        np.testing.assert_array_equal(cube[i], em.truth_cube(name), err_msg=name)
    dark = (log["fate"] == 1) | (log["fate"] == 2)
    assert (log["species"][dark] == -1).all()
    assert (log["species"][(log["fate"] == 0) | (log["fate"] == 3)] >= 0).all()
    assert not (log["z"][~live].any() or log["y"][~live].any() or log["x"][~live].any())


def sorted_pairs(tick: npt.NDArray[Any], channel: npt.NDArray[Any]) -> npt.NDArray[np.uint64]:
    order = np.lexsort((channel, tick))
    return np.stack([tick[order].astype(np.uint64), channel[order].astype(np.uint64)])


def test_event_log_holds_every_count_and_its_sent_ones_are_the_records() -> None:
    s = Setup(start_tick=20 * 1024 - 3)
    em = s.emitter(
        record_events=True, dead_time_ticks=3, dark_rate_hz=4e5, settle_rate_fraction=0.4
    )
    em.set_rates(s.rates(np.random.default_rng(2)))
    frames, chunks = [], []
    for end in (line_start(em, s, 1, 2) + 5, line_start(em, s, 3, 0), line_start(em, s, 5, 4)):
        frames += em.emit_until(end)
        chunks.append(em.take_events())
    log = joined(chunks)
    check_log(em, s, log)
    assert em.truth_counters()["dead_time_lost"] > 0
    # The sent counts are the event records, tick for tick (decode_records starts at
    # base 0; the link's base is the first header's).
    headers, records = payloads(frames)
    d = decode_records(s.record_type, records)
    ev = d["kind"] == 0
    sent = log["fate"] != 4
    np.testing.assert_array_equal(
        sorted_pairs(log["tick"][sent], log["channel"][sent]),
        sorted_pairs(d["tick"][ev] + headers[0][8], d["channel"][ev]),
    )
    # Drained: nothing twice, and an empty log keeps its columns.
    empty = em.take_events()
    assert {k: (v.dtype, v.size) for k, v in empty.items()} == {
        k: (np.dtype(t), 0) for k, t in EVENT_DTYPES.items()
    }
    with pytest.raises(ValueError, match="record_events"):
        s.emitter().take_events()


@pytest.mark.parametrize("line_stop", [2, 0])
def test_a_clock_jump_moves_the_later_lines_and_the_core_follows(line_stop: int) -> None:
    s = Setup(line_stop=line_stop)
    em = s.emitter(record_events=True, dead_time_ticks=3, dark_rate_hz=4e5)
    # A short clock window: the model trusts its line after 16 pairs over a few of its
    # 512 buckets, and this run spans only ms of device time.
    core = s.core(clock_window_s=0.01)
    em.set_rates(s.rates(np.random.default_rng(4)))
    j = 1_000_000  # 80 ms of 80 ns ticks: far beyond any arrival jitter
    end = line_start(em, s, 9, 0)
    cuts = np.linspace(s.start_tick, end, 61).astype(np.int64).tolist()[1:]
    chunks, shift, before = [], 0, 0
    for i, t in enumerate(cuts):
        if i == 30:
            em.jump(j)
            shift, before = j, cuts[i - 1]
        for frame in em.emit_until(t + shift):
            core.feed_link(frame, round(t * TICK_S * 1e9))  # sent at true time, no delay
        chunks.append(em.take_events())
    core.finish()
    log = joined(chunks)
    check_log(em, s, log)
    # The next line start not yet generated moved: the first at or after the last call.
    starts = s.line_starts(em, 10)
    ((tick_before, ticks),) = em.jumps()
    assert ticks == j and tick_before == min(x for x in starts if x >= before)
    assert not ((log["tick"] >= tick_before) & (log["tick"] < tick_before + j)).any()
    assert (log["tick"] >= tick_before + j).sum() > 1000
    truth, got = em.truth_counters(), core.counters()
    assert truth["clock_jumps"] == 1
    assert core.clock_state()["jumps"] == 1
    others = [k for k in CORE_KEYS if k not in FATES]
    assert {k: got[k] for k in others} == {k: truth[k] for k in others}
    if line_stop:
        # The jump falls in a flyback and the stop marker closed the line before it.
        lost = np.zeros(log["tick"].size, dtype=bool)
        assert got["lines_bad"] == 0
    else:
        # Closed only by the jumped line start, the line before the jump is too long.
        prev = max(x for x in starts if x < tick_before)
        lost = (log["tick"] >= prev) & (log["tick"] < tick_before) & (log["fate"] != 4)
        assert got["lines_bad"] == 1 and lost.sum() > 0
    assert got["bad_line"] == lost.sum()
    for fate, key in enumerate(FATES[:4]):
        assert got[key] == truth[key] - (lost & (log["fate"] == fate)).sum(), key
    kept = (log["fate"] == 0) & ~lost
    want = np.zeros((s.n_species, em.n_slices, s.ny, s.nx), np.uint32)
    np.add.at(want, (log["species"][kept], log["z"][kept], log["y"][kept], log["x"][kept]), 1)
    for i, name in enumerate(em.species):
        np.testing.assert_array_equal(core.cube(name), want[i][: core.n_slices], err_msg=name)


@pytest.mark.parametrize("ticks", [0, -5])
def test_a_jump_must_go_forward(ticks: int) -> None:
    em = Setup().emitter()
    with pytest.raises(ValueError, match="> 0"):
        em.jump(ticks)
    assert em.jumps() == [] and em.truth_counters()["clock_jumps"] == 0


# --- statistics ----------------------------------------------------------------------


def one_polarity(switching: str = "per_frame", settle: int = 0) -> list[PolarityArg]:
    return [("positive", [0], ["Na+"], switching, settle)]


def test_counts_per_pixel_are_poisson_with_the_configured_mean() -> None:
    nx = ny = 64
    dwell, frames = 250, 6
    em = DetectorEmitter(REC_MULTIHARP_T3, TICK_S, nx, ny, dwell, one_polarity(), record_truth=True)
    # Two rates on a checkerboard: means of 4 and 25 counts per pixel.
    means = np.where((np.arange(ny)[:, None] + np.arange(nx)) % 2 == 0, 4.0, 25.0)
    em.set_rates((means / (dwell * TICK_S))[None])
    em.emit_until(frames * em.frame_period_ticks)
    counts = em.truth_cube("Na+").astype(np.float64)
    assert counts.shape == (frames, ny, nx)
    for mu in (4.0, 25.0):
        c = counts[:, means == mu].ravel()
        n = c.size  # 12288 pixels per level
        # Mean within 5 standard errors; the sample variance's sd is sqrt((mu + 2 mu^2)/n).
        assert abs(c.mean() - mu) < 5 * np.sqrt(mu / n)
        assert abs(c.var(ddof=1) - mu) < 5 * np.sqrt((mu + 2 * mu * mu) / n)
        # And the shape: the fraction of empty pixels is e^-mu.
        p0 = np.exp(-mu)
        assert abs(np.mean(c == 0) - p0) < 5 * np.sqrt(p0 * (1 - p0) / n) + 1e-4


@pytest.mark.parametrize("tau", [20, 100])
def test_dead_time_is_non_paralysable(tau: int) -> None:
    # A continuous live raster (no settle, flyback or gap): the recorded rate of a
    # non-paralysable detector is n / (1 + n tau). Ticks are whole, so the effective dead
    # time is about tau - 1/2 ticks: a 0.5 % effect at tau = 100, inside the tolerance.
    n = 0.01  # true counts per tick
    nx, ny, dwell, frames = 64, 32, 100, 12
    em = DetectorEmitter(
        REC_MULTIHARP_T3, TICK_S, nx, ny, dwell, one_polarity(), dead_time_ticks=tau
    )
    em.set_rates(np.full((1, ny, nx), n / TICK_S))
    span = frames * em.frame_period_ticks
    em.emit_until(span)
    c = em.truth_counters()
    measured = c["events"] / span
    assert measured == pytest.approx(n / (1 + n * tau), rel=0.03)
    # Lost counts are still counts of the Poisson process.
    total = c["events"] + c["dead_time_lost"]
    assert abs(total - n * span) < 5 * np.sqrt(n * span)
    assert c["events"] == c["binned"]


def test_dark_counts_at_the_configured_rate_only_in_blanking() -> None:
    nx, ny, dwell = 32, 16, 50
    settle, flyback, gap = 200, 300, 5000
    dark = 2e5
    pols = [*one_polarity(), ("negative", [1], ["O-"], "per_frame", 0)]
    em = DetectorEmitter(
        REC_HYDRAHARP2_T2, TICK_S, nx, ny, dwell, pols, line_settle_ticks=settle,
        flyback_ticks=flyback, frame_gap_ticks=gap, dark_rate_hz=dark, record_truth=True,
    )  # fmt: skip
    frames = 40
    em.emit_until(frames * em.frame_period_ticks)
    c = em.truth_counters()
    for key, ticks in (("line_settle", settle * ny), ("flyback", flyback * ny + gap)):
        expected = 2 * dark * TICK_S * ticks * frames  # two detectors
        assert abs(c[key] - expected) < 5 * np.sqrt(expected), key
    assert c["binned"] == c["mass_settle"] == 0
    assert not em.truth_cube(0).any()


def test_settling_counts_at_the_configured_fraction() -> None:
    nx, ny, dwell, settle, fraction = 32, 32, 90, 12, 0.25
    em = DetectorEmitter(
        REC_MULTIHARP_T3, TICK_S, nx, ny, dwell,
        [("positive", [0], ["Na+", "Si+", "Zr+"], "per_pixel", settle)],
        settle_rate_fraction=fraction, mass_switch_marker=8,
    )  # fmt: skip
    rate = 0.05 / TICK_S  # 0.05 counts per tick
    em.set_rates(np.full((3, ny, nx), rate))
    frames = 10
    em.emit_until(frames * em.frame_period_ticks)
    c = em.truth_counters()
    settle_ticks = 3 * settle * nx * ny * frames
    expected = fraction * 0.05 * settle_ticks
    assert abs(c["mass_settle"] - expected) < 5 * np.sqrt(expected)
    live = 0.05 * (dwell - 3 * settle) * nx * ny * frames
    assert abs(c["binned"] - live) < 5 * np.sqrt(live)
    assert c["mass_switches"] == 3 * nx * ny * frames


# --- bad input -----------------------------------------------------------------------


def test_bad_rates_are_value_errors_and_change_nothing() -> None:
    s = Setup()
    em = s.emitter()
    good = np.full((s.n_species, s.ny, s.nx), 1e5)
    em.set_rates(good)
    for bad in (np.nan, -1.0, np.inf, 1e30):
        r = good.copy()
        r[2, 3, 4] = bad
        with pytest.raises(ValueError, match=r"rates\[2, 3, 4\]"):
            em.set_rates(r)
    for shape in [(s.n_species, s.ny), (s.n_species + 1, s.ny, s.nx), (1, *good.shape)]:
        with pytest.raises(ValueError, match="shape"):
            em.set_rates(np.zeros(shape))
    em.set_rates(good.astype(np.float32)[:, :, :])  # converted
    em.set_rates(good.tolist())
    em.emit_until(100)
    with pytest.raises(ValueError, match="back"):
        em.emit_until(99)
    with pytest.raises(ValueError, match="unknown species"):
        em.truth_cube("Xe+")
    with pytest.raises(ValueError):
        em.truth_cube(0, 0, em.n_slices + 1)
    with pytest.raises(ValueError, match="record_truth"):
        s.emitter(record_truth=False).truth_cube(0)


@pytest.mark.parametrize(
    "change",
    [
        {"record_type": REC_PICOHARP_T2},
        {"dwell": 0},
        {"switching": ("per_frame", "sideways")},
        {"frame_at": "middle"},
        {"line_stop": 4},  # shares the frame bit
        {"mass_switch": 16},
        {"settle": (0, 12)},  # a 3-way per-pixel split of 36 ticks has no room for 3 x 12
    ],
)
def test_bad_configuration_is_a_config_error(change: dict[str, Any]) -> None:
    s = Setup(**change)
    with pytest.raises(ConfigError):
        s.emitter()


@pytest.mark.parametrize(
    "kw",
    [
        {"dark_rate_hz": -1.0},
        {"settle_rate_fraction": float("nan")},
        {"max_records_per_frame": 0},
        {"t3_fine_fs": 0},
        {"start_tick": 2**64 - 5},
    ],
)
def test_bad_emitter_arguments_are_config_errors(kw: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        Setup().emitter(**kw)


def test_bad_record_type_fine_bin_or_channel() -> None:
    with pytest.raises(RecordFormatError):
        Setup(record_type=0x1234).emitter()
    with pytest.raises(ConfigError, match="only for T3"):
        Setup(record_type=REC_HYDRAHARP2_T2).emitter(t3_fine_fs=5000)
    with pytest.raises(ConfigError, match="channel"):
        DetectorEmitter(REC_PICOHARP_T3, TICK_S, 4, 4, 10, [("p", [4], ["Na+"], "per_frame", 0)])
