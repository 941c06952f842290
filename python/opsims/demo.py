"""A live demonstration of the native event core with no hardware.

A synthetic dual-polarity raster of a Na | NASICON surface — a Na island that spreads
as sputtering goes deeper — is encoded as MultiHarp T3 records, sent through the live
link framing, and binned by :class:`~opsims._native.EventCore`. The terminal shows the
counters, the Na⁺ ion map and the depth profile as the frames arrive.
"""

from __future__ import annotations

import time

import numpy as np
import numpy.typing as npt

from opsims._native import EventCore, encode_link_frame
from opsims.detector import DetectorConfig, MarkerBits, Polarity

MULTIHARP_T3 = 0x00010307
SYNC_PERIOD_S = 80e-9
NX = NY = 64
DWELL = 100  # sync periods per pixel (8 µs)
SETTLE = 20
LINE = SETTLE + NX * DWELL
LINE_PERIOD = LINE + 40
FRAME_PERIOD = 16 + NY * LINE_PERIOD + 200

POSITIVE = ("Na+", "Si+", "Zr+", "ZrO+")
NEGATIVE = ("O-", "P-", "SiO2-", "PO2-", "ZrO2-")
# Mean counts per pixel in the NASICON matrix, and on the Na island.
MATRIX = {"Na+": 0.3, "Si+": 0.6, "Zr+": 0.8, "ZrO+": 0.5,
          "O-": 2.0, "P-": 0.3, "SiO2-": 0.4, "PO2-": 0.3, "ZrO2-": 0.5}  # fmt: skip
ISLAND = {"Na+": 4.0, "O-": 3.0, "SiO2-": 0.1, "ZrO2-": 0.1}


def demo_config() -> DetectorConfig:
    return DetectorConfig(
        record_type=MULTIHARP_T3,
        tick_s=SYNC_PERIOD_S,
        nx=NX,
        ny=NY,
        dwell_ticks=DWELL,
        line_settle_ticks=SETTLE,
        frames_per_slice=1,
        markers=MarkerBits(frame=0b100, line_start=0b001, line_stop=0b010),
        polarities=(
            Polarity("positive", (0,), POSITIVE, "per_frame"),
            Polarity("negative", (1,), NEGATIVE, "per_frame"),
        ),
    )


def _frame_ticks(
    frame: int, rng: np.random.Generator
) -> tuple[npt.NDArray[np.uint64], npt.NDArray[np.uint32]]:
    """Ticks and record words (without overflows) of one raster frame."""
    t0 = frame * FRAME_PERIOD
    y, x = np.mgrid[0:NY, 0:NX]
    radius = 6 + 0.5 * frame  # the island spreads with depth
    island = (x - NX / 2) ** 2 + (y - NY / 2) ** 2 < radius**2
    ticks: list[npt.NDArray[np.uint64]] = []
    words: list[npt.NDArray[np.uint32]] = []
    for channel, names in ((0, POSITIVE), (1, NEGATIVE)):
        name = names[frame % len(names)]
        lam = np.where(island, ISLAND.get(name, MATRIX[name] * 0.2), MATRIX[name])
        counts = rng.poisson(lam).ravel()
        pix = np.repeat(np.arange(NX * NY), counts)
        line_start = t0 + 16 + (pix // NX) * LINE_PERIOD
        offset = SETTLE + (pix % NX) * DWELL + rng.integers(0, DWELL, pix.size)
        ticks.append((line_start + offset).astype(np.uint64))
        words.append(np.full(pix.size, channel << 25, dtype=np.uint32))
    lines = t0 + 16 + np.arange(NY, dtype=np.uint64) * LINE_PERIOD
    marker = np.uint32(1 << 31)
    ticks += [np.array([t0], np.uint64), lines, lines + LINE]
    words += [
        np.array([marker | (0b100 << 25)], np.uint32),
        np.full(NY, marker | (0b001 << 25), np.uint32),
        np.full(NY, marker | (0b010 << 25), np.uint32),
    ]
    all_ticks = np.concatenate(ticks)
    order = np.argsort(all_ticks, kind="stable")
    return all_ticks[order], np.concatenate(words)[order]


def encode_t3(
    ticks: npt.NDArray[np.uint64], words: npt.NDArray[np.uint32], base: int
) -> tuple[npt.NDArray[np.uint32], int]:
    """Insert counted overflow records wherever the 10-bit sync field wraps."""
    high = (ticks >> np.uint64(10)).astype(np.int64)
    wraps = np.diff(np.concatenate([[base], high]))
    # One overflow record can count up to 1023 wraps; the demo never needs more.
    overflow = np.uint32((1 << 31) | (63 << 25)) | wraps.clip(0, 1023).astype(np.uint32)
    records = words | (ticks & np.uint64(1023)).astype(np.uint32)
    out = np.empty(2 * records.size, np.uint32)
    out[0::2], out[1::2] = overflow, records
    keep = np.ones(out.size, bool)
    keep[0::2] = wraps > 0
    return out[keep], int(high[-1]) if high.size else base


def run(frames: int = 40, seed: int = 1) -> EventCore:
    core = demo_config().build()
    rng = np.random.default_rng(seed)
    base = 0
    started = time.perf_counter()
    for f in range(frames):
        ticks, words = _frame_ticks(f, rng)
        records, new_base = encode_t3(ticks, words, base)
        frame = encode_link_frame(
            f, MULTIHARP_T3, records, tick_fs=round(SYNC_PERIOD_S * 1e15),
            overflow_base=base << 10, sent_tick=int(ticks[-1]),
            frame_markers=f,
        )  # fmt: skip
        base = new_base
        core.feed_link(frame, time.time_ns())
        if f % 9 == 8:
            _show(core, f, time.perf_counter() - started)
    core.finish()
    _show(core, frames - 1, time.perf_counter() - started)
    return core


def _show(core: EventCore, frame: int, elapsed: float) -> None:
    c = core.counters()
    na = core.ion_map("Na+", max(core.n_slices - 9, 0))
    shades = " .:-=+*#%@"
    scale = max(int(na.max()), 1)
    rows = ["".join(shades[min(9, 9 * int(v) // scale)] for v in row[::2]) for row in na[::4]]
    profile = core.depth_profile()
    rate = c["events"] / max(elapsed, 1e-9) / 1e6
    print(
        f"\nframe {frame + 1}  slices {core.n_slices}  events {c['events']}  "
        f"binned {c['binned']}  rejected {c['rejected_total']}  "
        f"({rate:.1f} M events/s incl. generation)"
    )
    print("Na+ ion map, last slices:")
    print("\n".join("  " + r for r in rows))
    na_col = core.species.index("Na+")
    print("Na+ counts per slice:", " ".join(str(int(v)) for v in profile[:, na_col] if v))


def main(frames: int = 40) -> int:
    core = run(frames)
    c = core.counters()
    if c["events"] != c["binned"] + c["rejected_total"] + c["pending"]:
        print(f"\nerror: counters do not balance: {c}")
        return 1
    print(f"\ndone: {c['events']} events, {c['binned']} binned, every event accounted for.")
    return 0
