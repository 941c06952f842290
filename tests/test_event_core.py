"""The native pipeline (EventCore) judged by the independent numpy oracle in
tests/support: cubes and rejection counts equal the ground truth built from the true
events, in every record format, in any chunking, over the live link, and when the stream
is damaged the damage is counted instead of binned."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opsims import ConfigError, DetectorConfig, EventCore, encode_link_frame
from support.tttr_synth import (
    REC_MULTIHARP_T2,
    REC_MULTIHARP_T3,
    REC_PICOHARP_T3,
    Polarity,
    RasterSpec,
    encode_t2_generic,
    encode_t3_generic,
    encode_t3_picoharp,
    garbage_t3_generic,
    ground_truth,
    insert_garbage,
    marker_times,
    random_events,
)

U32 = npt.NDArray[np.uint32]
Encoder = Callable[..., U32]

SPEC = RasterSpec(
    nx=16,
    ny=6,
    dwell_ticks=37,
    line_settle_ticks=11,
    flyback_ticks=23,
    frame_gap_ticks=50,
    frames=7,
    frames_per_slice=2,
    polarities=(
        Polarity((0,), ("Na+", "Si+", "Zr+", "ZrO+"), "per_frame", 40),
        Polarity((1, 2), ("O-", "P-", "SiO2-"), "per_pixel", 3),
    ),
    start_tick=123_456,
)

FORMATS: dict[str, tuple[int, Encoder]] = {
    "multiharp_t3": (REC_MULTIHARP_T3, encode_t3_generic),
    "picoharp_t3": (REC_PICOHARP_T3, encode_t3_picoharp),
    "multiharp_t2": (REC_MULTIHARP_T2, encode_t2_generic),
}


def make_core(spec: RasterSpec, record_type: int, **overrides: object) -> EventCore:
    kwargs: dict[str, object] = {
        "line_settle_ticks": spec.line_settle_ticks,
        "flyback_ticks": spec.flyback_ticks,
        "line_tolerance_ticks": spec.line_tolerance_ticks,
        "frames_per_slice": spec.frames_per_slice,
        "frame_marker": spec.frame_mask,
        "line_start_marker": spec.line_start_mask,
        "line_stop_marker": spec.line_stop_mask or 0,
    }
    kwargs.update(overrides)
    polarities = [
        (f"p{i}", list(p.channels), list(p.species), p.switching, p.settle_ticks)
        for i, p in enumerate(spec.polarities)
    ]
    return EventCore(
        record_type,
        1e-9,
        spec.nx,
        spec.ny,
        spec.dwell_ticks,
        polarities,
        **kwargs,  # type: ignore[arg-type]
    )


def stream(
    spec: RasterSpec, n: int, seed: int, fmt: str = "multiharp_t3", unknown: float = 0.02
) -> tuple[U32, U32, dict[str, int]]:
    """Records of a random acquisition, and the oracle's cube and reasons for it."""
    rng = np.random.default_rng(seed)
    ticks, channels = random_events(spec, n, rng, unknown_channel_fraction=unknown)
    mt, mm = marker_times(spec)
    _, encode = FORMATS[fmt]
    records = encode(ticks, channels, mt, mm, rng)
    cube, reasons = ground_truth(spec, ticks, channels)
    return records, cube, reasons


def core_cube(core: EventCore, n_slices: int) -> U32:
    cubes = [core.cube(s) for s in core.species]
    out = np.zeros((len(cubes), n_slices, *core.shape), np.uint32)
    for i, c in enumerate(cubes):
        out[i, : c.shape[0]] = c
    return out


def assert_balanced(c: dict[str, int]) -> None:
    assert c["events"] == c["binned"] + c["rejected_total"] + c["pending"]


def link_frames(
    spec: RasterSpec, records: U32, n: int, skip: int | None = None, mislabel: int | None = None
) -> list[bytes]:
    """Split a generic-T3 stream into live-link frames whose headers carry what a sender
    tracks: the overflow base and the raster position (frame markers, and line starts
    since the last) before each frame's first record. Frame `skip` is left out; frame
    `mislabel` claims the wrong record type."""
    out = []
    base = frames = lines = 0
    for seq, part in enumerate(np.array_split(records, n)):
        if seq != skip:
            out.append(
                encode_link_frame(
                    seq,
                    REC_PICOHARP_T3 if seq == mislabel else REC_MULTIHARP_T3,
                    part,
                    tick_fs=1_000_000,
                    overflow_base=base,
                    frame_markers=frames,
                    line_starts=lines,
                    frame_marker=spec.frame_mask,
                    line_start_marker=spec.line_start_mask,
                    line_stop_marker=spec.line_stop_mask or 0,
                )
            )
        for r in part.tolist():
            if r >> 31 and (r >> 25) & 63 == 63:
                base += max(r & 1023, 1) * 1024
            elif r >> 31:
                mask = (r >> 25) & 63
                if mask & spec.frame_mask:
                    frames, lines = frames + 1, 0
                if mask & spec.line_start_mask:
                    lines += 1
    return out


@pytest.mark.parametrize("fmt", sorted(FORMATS))
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_cubes_and_reasons_equal_the_oracle(fmt: str, seed: int) -> None:
    records, truth, reasons = stream(SPEC, 20_000, seed, fmt)
    core = make_core(SPEC, FORMATS[fmt][0])
    core.feed(records)
    core.finish()
    c = core.counters()
    np.testing.assert_array_equal(core_cube(core, SPEC.n_slices), truth)
    for reason, count in reasons.items():
        assert c[reason] == count, reason
    assert c["binned"] == int(truth.sum())
    assert c["lines_bad"] == 0 and c["malformed"] == 0 and c["pending"] == 0
    assert c["frames_bad_line_count"] == 0
    assert_balanced(c)
    # Every reason the oracle knows occurred, so each check was exercised.
    assert all(reasons[r] > 0 for r in ("before_first_frame", "flyback", "line_settle"))
    assert reasons["mass_settle"] > 0 and reasons["unknown_channel"] > 0


def test_without_stop_markers_and_with_extra_lines() -> None:
    spec = replace(SPEC, line_stop_mask=None, extra_lines=2, line_tolerance_ticks=0)
    records, truth, reasons = stream(spec, 20_000, 9)
    core = make_core(spec, REC_MULTIHARP_T3)
    core.feed(records)
    core.finish()
    c = core.counters()
    np.testing.assert_array_equal(core_cube(core, spec.n_slices), truth)
    assert c["line_overrun"] == reasons["line_overrun"] > 0
    assert c["frames_bad_line_count"] == spec.frames  # every frame had ny + 2 lines


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**16), cuts=st.lists(st.integers(0, 10**6), max_size=40))
def test_any_chunking_is_bit_identical(seed: int, cuts: list[int]) -> None:
    records, _, _ = stream(SPEC, 3_000, seed)
    whole = make_core(SPEC, REC_MULTIHARP_T3)
    whole.feed(records)
    parts = make_core(SPEC, REC_MULTIHARP_T3)
    for part in np.split(records, sorted(c % (records.size + 1) for c in cuts)):
        parts.feed(part)  # empty batches included
    for core in (whole, parts):
        core.finish()
    assert parts.counters() == whole.counters()
    for s in whole.species:
        np.testing.assert_array_equal(parts.cube(s), whole.cube(s))


def test_garbage_records_are_counted_and_change_nothing() -> None:
    records, truth, _ = stream(SPEC, 10_000, 4)
    rng = np.random.default_rng(4)
    dirty, _ = insert_garbage(records, garbage_t3_generic(500, rng), rng)
    core = make_core(SPEC, REC_MULTIHARP_T3)
    core.feed(dirty)
    core.finish()
    assert core.counters()["malformed"] == 500
    np.testing.assert_array_equal(core_cube(core, SPEC.n_slices), truth)


def test_a_missed_line_stop_rejects_that_line_only() -> None:
    rng = np.random.default_rng(5)
    ticks, channels = random_events(SPEC, 10_000, rng)
    mt, mm = marker_times(SPEC, merge=False)
    stops = np.flatnonzero(mm == SPEC.line_stop_mask)
    victim = stops[len(stops) // 2]  # a stop in the middle of the run
    line_start = mt[victim - 1] if mm[victim - 1] == SPEC.line_start_mask else None
    assert line_start is not None
    keep = np.ones(mt.size, bool)
    keep[victim] = False
    records = encode_t3_generic(ticks, channels, mt[keep], mm[keep], rng)
    truth, _ = ground_truth(SPEC, ticks, channels)
    core = make_core(SPEC, REC_MULTIHARP_T3)
    core.feed(records)
    core.finish()
    c = core.counters()
    assert c["lines_bad"] == 1
    ours = core_cube(core, SPEC.n_slices)
    in_line = (ticks >= line_start) & (ticks < mt[victim + 1])
    assert c["bad_line"] == int(np.count_nonzero(in_line & (channels <= 2)))
    diff = truth.astype(np.int64) - ours
    assert diff.min() == 0, "nothing may be binned that the truth does not have"
    assert diff.sum() > 0
    # The missing counts all lie in one row of one slice: the damaged line.
    rows = {(z, y) for _, z, y, _ in zip(*np.nonzero(diff), strict=True)}
    assert len(rows) == 1
    assert_balanced(c)


def test_the_live_link_in_random_byte_chunks_equals_direct_feeding() -> None:
    records, truth, _ = stream(SPEC, 20_000, 6)
    data = b"".join(link_frames(SPEC, records, 13))
    core = make_core(SPEC, REC_MULTIHARP_T3)
    rng = np.random.default_rng(6)
    cuts = np.sort(rng.integers(0, len(data), 300))
    for a, b in zip(np.r_[0, cuts], np.r_[cuts, len(data)], strict=True):
        core.feed_link(data[a:b], 1_000)
    core.finish()
    c = core.counters()
    assert c["link_frames"] == 13 and c["link_bytes_skipped"] == 0
    np.testing.assert_array_equal(core_cube(core, SPEC.n_slices), truth)
    # Each frame gave the clock one (sent tick, arrival) pair.
    assert core.clock_state()["points"] == 13
    assert core.to_host_ns(np.array([0], np.uint64)).shape == (1,)


@pytest.mark.parametrize("lost", [1, 4, 7])
@pytest.mark.parametrize("how", ["lost", "mislabelled"])
def test_a_lost_frame_is_a_loss_interval_and_nothing_is_misbinned(lost: int, how: str) -> None:
    records, truth, _ = stream(SPEC, 20_000, 8)
    core = make_core(SPEC, REC_MULTIHARP_T3)
    frames = (
        link_frames(SPEC, records, 10, skip=lost)
        if how == "lost"
        else link_frames(SPEC, records, 10, mislabel=lost)
    )
    for frame in frames:
        core.feed_link(frame, 1_000)
    core.finish()
    c = core.counters()
    if how == "lost":
        assert c["link_loss_intervals"] == 1 and c["link_frames_lost"] == 1
        assert core.loss_intervals()[0][:2] == (lost, lost + 1)
    else:
        assert c["link_frames_rejected"] == 1 and c["link_loss_intervals"] == 0
    diff = truth.astype(np.int64) - core_cube(core, SPEC.n_slices)
    assert diff.min() == 0, "nothing may be binned that the truth does not have"
    assert 0 < c["binned"] < int(truth.sum())
    assert c["link_gap"] > 0
    assert_balanced(c)


def test_corrupt_and_mismatched_frames_are_counted() -> None:
    records, _, _ = stream(SPEC, 2_000, 10)
    good = encode_link_frame(0, REC_MULTIHARP_T3, records, tick_fs=1_000_000,
                             frame_marker=1, line_start_marker=2, line_stop_marker=4)  # fmt: skip
    bad = bytearray(good)
    bad[100] ^= 0x40
    wrong = encode_link_frame(1, REC_PICOHARP_T3, records[:10], tick_fs=1_000_000,
                              frame_marker=1, line_start_marker=2, line_stop_marker=4)  # fmt: skip
    core = make_core(SPEC, REC_MULTIHARP_T3)
    core.feed_link(b"noise" + bytes(bad) + wrong, 0)
    c = core.counters()
    assert c["link_frames_corrupt"] == 1
    assert c["link_frames_rejected"] == 1
    assert c["link_bytes_skipped"] == 5
    assert c["records"] == 0
    assert core.last_link_error is not None and "record type" in core.last_link_error


def test_rebin_keeps_every_count_at_coarser_depth() -> None:
    spec = replace(SPEC, nx=64, ny=64, frames=40, frames_per_slice=1)
    records, truth, _ = stream(spec, 30_000, 11, unknown=0.0)
    species = len(spec.species_names)
    slice_bytes = 64 * 64 * 4
    chunk = slice_bytes * 16
    core = make_core(spec, REC_MULTIHARP_T3, memory_budget_bytes=2 * chunk * species)
    core.feed(records)
    core.finish()
    assert core.frames_per_slice == 2
    assert core.counters()["rebins"] == 1
    assert core.allocated_bytes <= 2 * chunk * species
    coarse = truth.reshape(species, 20, 2, 64, 64).sum(axis=2)
    np.testing.assert_array_equal(core_cube(core, 20), coarse)


def test_refuse_policy_rejects_as_budget() -> None:
    spec = replace(SPEC, nx=64, ny=64, frames=40, frames_per_slice=1)
    records, truth, _ = stream(spec, 30_000, 12, unknown=0.0)
    species = len(spec.species_names)
    chunk = 64 * 64 * 4 * 16
    core = make_core(spec, REC_MULTIHARP_T3, memory_budget_bytes=2 * chunk * species,
                     budget_policy="refuse")  # fmt: skip
    core.feed(records)
    core.finish()
    c = core.counters()
    np.testing.assert_array_equal(core_cube(core, 32), truth[:, :32])
    assert c["budget"] == int(truth[:, 32:].sum()) > 0
    assert_balanced(c)


def test_depth_profile_and_ion_map_are_sums_of_the_cube() -> None:
    records, truth, _ = stream(SPEC, 20_000, 13)
    core = make_core(SPEC, REC_MULTIHARP_T3)
    core.feed(records)
    core.finish()
    np.testing.assert_array_equal(core.depth_profile(), truth.sum(axis=(2, 3)).T)
    np.testing.assert_array_equal(core.ion_map("ZrO+", 1, 3), truth[3, 1:3].sum(axis=0))
    np.testing.assert_array_equal(core.cube(1, 2, 4), truth[1, 2:4])
    with pytest.raises(ValueError, match="unknown species"):
        core.cube("Xe+")
    with pytest.raises(ConfigError, match="slice range"):
        core.cube(0, 2, 99)


def test_config_errors_name_the_key() -> None:
    table = {
        "record_type": "multiharp_t3",
        "tick_s": 80e-9,
        "raster": {
            "nx": 8, "ny": 8, "dwell_ticks": 10,
            "polarities": [{"name": "pos", "channels": [0], "species": ["Na+"]}],
        },
    }  # fmt: skip
    assert DetectorConfig.from_mapping(table).build().species == ["Na+"]
    bad: list[tuple[dict[str, object], str]] = [
        ({**table, "tick_sec": 1.0}, r"detector: unknown key\(s\) tick_sec"),
        ({**table, "record_type": "timeharp"}, "detector.record_type"),
        ({**table, "raster": {**table["raster"], "nx": "8"}}, "detector.raster.nx: expected int"),  # type: ignore[dict-item]
        ({**table, "raster": {**table["raster"], "nx": 0}}, "raster.nx"),  # type: ignore[dict-item]
        ({**table, "cube": {"budget_policy": "spill"}}, "cube.budget_policy"),
        ({**table, "cube": {"memory_budget_bytes": 10}}, "memory_budget_bytes"),
    ]
    for t, match in bad:
        with pytest.raises(ConfigError, match=match):
            DetectorConfig.from_mapping(t).build()
