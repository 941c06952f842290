"""Independent TTTR stream generator and raster-mapping oracle (pure numpy, no opsims).

Everything here is written from ``docs/raster.md`` and the PicoQuant record layouts, not
from the native engine, so that the tests can judge the engine.

Time model of a *regular* raster (all in ticks), see :class:`RasterSpec`::

    frame f starts at      F_f  = start_tick + f * frame_period
    line j of frame f:     S_fj = F_f + frame_gap + j * (L + flyback),   j < ny + extra_lines
                           stop = S_fj + L,   L = line_settle + nx * dwell
    frame_period = frame_gap + (ny + extra_lines) * (L + flyback)

A frame marker is emitted at ``F_f``, a line-start marker at ``S_fj`` and (if configured) a
line-stop marker at ``S_fj + L``. Markers that fall on the same tick are merged into one
record carrying several bits (the engine applies them in the order line stop, frame, line
start, which is also the time order of a regular raster).

Stream order: records are merged into time order; **at equal ticks markers come before
detector events**, so an event at exactly a line start belongs to that line (``dt == 0``)
and an event at exactly a line stop is after the stop.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, Literal, NamedTuple

import numpy as np
import numpy.typing as npt

I64 = npt.NDArray[np.int64]
U32 = npt.NDArray[np.uint32]

# --------------------------------------------------------------------------------------
# Record-format constants
# --------------------------------------------------------------------------------------

#: PTU ``TTResultFormat_TTTRRecType`` codes.
REC_PICOHARP_T3: Final = 0x00010303
REC_PICOHARP_T2: Final = 0x00010203
REC_HYDRAHARP_T3: Final = 0x00010304
REC_HYDRAHARP_T2: Final = 0x00010204
REC_HYDRAHARP2_T3: Final = 0x01010304
REC_HYDRAHARP2_T2: Final = 0x01010204
REC_MULTIHARP_T3: Final = 0x00010307
REC_MULTIHARP_T2: Final = 0x00010207

#: Tick period of one overflow (the wrap of the record's time field).
WRAP_T3_GENERIC: Final = 1 << 10
WRAP_T3_PICOHARP: Final = 1 << 16
WRAP_T2_GENERIC: Final = 1 << 25

#: Event-rejection reasons that :func:`ground_truth` can produce (always all present).
REASONS: Final = (
    "before_first_frame",
    "before_first_line",
    "flyback",
    "line_settle",
    "mass_settle",
    "line_overrun",
    "unknown_channel",
)

Switching = Literal["per_frame", "per_pixel"]


# --------------------------------------------------------------------------------------
# Raster specification
# --------------------------------------------------------------------------------------


class Polarity(NamedTuple):
    """One detector polarity: the input channels (0-based) it owns, its species in
    schedule order, its mass switching and its settle time in ticks."""

    channels: tuple[int, ...]
    species: tuple[str, ...]
    switching: Switching = "per_frame"
    settle_ticks: int = 0


def _default_polarities() -> tuple[Polarity, ...]:
    return (
        Polarity((0,), ("Na+", "Si+"), "per_frame", 0),
        Polarity((1,), ("O-", "P-", "PO2-"), "per_frame", 0),
    )


@dataclass(frozen=True)
class RasterSpec:
    """A clean, regular raster (see the module docstring for the time model)."""

    nx: int
    ny: int
    dwell_ticks: int
    line_settle_ticks: int = 0
    flyback_ticks: int = 0
    frame_gap_ticks: int = 0
    frames: int = 1
    frames_per_slice: int = 1
    frame_mask: int = 0b0001
    line_start_mask: int = 0b0010
    line_stop_mask: int | None = 0b0100
    polarities: tuple[Polarity, ...] = field(default_factory=_default_polarities)
    start_tick: int = 0
    #: lines per frame beyond ``ny`` (their events are ``line_overrun``)
    extra_lines: int = 0
    line_tolerance_ticks: int = 0

    def __post_init__(self) -> None:
        if self.nx < 1 or self.ny < 1 or self.dwell_ticks < 1 or self.frames < 1:
            raise ValueError("nx, ny, dwell_ticks and frames must be >= 1")
        if self.frames_per_slice < 1:
            raise ValueError("frames_per_slice must be >= 1")
        if min(self.line_settle_ticks, self.flyback_ticks, self.frame_gap_ticks) < 0:
            raise ValueError("negative timing")
        if self.start_tick < 0 or self.extra_lines < 0 or self.line_tolerance_ticks < 0:
            raise ValueError("negative start_tick, extra_lines or tolerance")
        masks = [self.frame_mask, self.line_start_mask]
        if self.line_stop_mask is not None:
            masks.append(self.line_stop_mask)
        for m in masks:
            if not 0 < m <= 0xF:
                raise ValueError(f"marker mask {m:#x} must be a non-empty 4-bit mask")
        if self.frame_mask & self.line_start_mask or (self.line_stop_mask or 0) & (
            self.frame_mask | self.line_start_mask
        ):
            raise ValueError("marker masks must not share bits")
        owned: set[int] = set()
        pols = tuple(Polarity(*p) for p in self.polarities)
        object.__setattr__(self, "polarities", pols)
        for p in pols:
            if not p.species:
                raise ValueError("a polarity needs at least one species")
            if p.switching not in ("per_frame", "per_pixel"):
                raise ValueError(f"unknown switching {p.switching!r}")
            if p.settle_ticks < 0:
                raise ValueError("negative settle")
            for c in p.channels:
                if c in owned or not 0 <= c < 64:
                    raise ValueError(f"channel {c} owned twice or out of range")
                owned.add(c)

    # derived geometry --------------------------------------------------------------
    @property
    def line_ticks(self) -> int:
        """``L = line_settle + nx * dwell``: line start to line stop."""
        return self.line_settle_ticks + self.nx * self.dwell_ticks

    @property
    def line_period(self) -> int:
        return self.line_ticks + self.flyback_ticks

    @property
    def lines_per_frame(self) -> int:
        return self.ny + self.extra_lines

    @property
    def frame_period(self) -> int:
        return self.frame_gap_ticks + self.lines_per_frame * self.line_period

    @property
    def end_tick(self) -> int:
        """Nominal end of the last frame (one frame period after its marker)."""
        return self.start_tick + self.frames * self.frame_period

    @property
    def species_names(self) -> tuple[str, ...]:
        return tuple(s for p in self.polarities for s in p.species)

    @property
    def n_species(self) -> int:
        return len(self.species_names)

    @property
    def n_slices(self) -> int:
        return -(-self.frames // self.frames_per_slice)

    @property
    def cube_shape(self) -> tuple[int, int, int, int]:
        return (self.n_species, self.n_slices, self.ny, self.nx)

    @property
    def owned_channels(self) -> tuple[int, ...]:
        return tuple(sorted(c for p in self.polarities for c in p.channels))

    def time_span(self) -> tuple[int, int]:
        """``[lo, hi)`` over which :func:`random_events` draws: two line periods of lead-in
        before the first frame marker (clipped at 0) and two line periods after the
        nominal end of the last frame."""
        lead = 2 * self.line_period
        return max(0, self.start_tick - lead), self.end_tick + lead


# --------------------------------------------------------------------------------------
# Markers and events
# --------------------------------------------------------------------------------------


def marker_times(spec: RasterSpec, *, merge: bool = True) -> tuple[I64, U32]:
    """Marker ticks (sorted, int64) and their masks (uint32) for the regular raster.

    With ``merge`` markers at the same tick become one record with OR-ed bits; without
    it they are separate records in the order line stop, frame, line start."""
    f = np.arange(spec.frames, dtype=np.int64)
    fstart = spec.start_tick + f * spec.frame_period
    j = np.arange(spec.lines_per_frame, dtype=np.int64)
    lstart = (fstart[:, None] + spec.frame_gap_ticks + j[None, :] * spec.line_period).ravel()
    parts_t = [fstart, lstart]
    parts_m = [np.full(fstart.size, spec.frame_mask), np.full(lstart.size, spec.line_start_mask)]
    # priority within a tick: stop (0) < frame (1) < start (2)
    parts_p = [np.ones(fstart.size, np.int64), np.full(lstart.size, 2, np.int64)]
    if spec.line_stop_mask is not None:
        parts_t.append(lstart + spec.line_ticks)
        parts_m.append(np.full(lstart.size, spec.line_stop_mask))
        parts_p.append(np.zeros(lstart.size, np.int64))
    t = np.concatenate(parts_t)
    m = np.concatenate(parts_m).astype(np.uint32)
    order = np.lexsort((np.concatenate(parts_p), t))
    t, m = t[order], m[order]
    if merge and t.size:
        first = np.ones(t.size, dtype=bool)
        first[1:] = t[1:] != t[:-1]
        group = np.cumsum(first) - 1
        merged = np.zeros(int(group[-1]) + 1, dtype=np.uint32)
        np.bitwise_or.at(merged, group, m)
        t, m = t[first], merged
    return t.astype(np.int64), m


def random_events(
    spec: RasterSpec,
    n: int,
    rng: np.random.Generator,
    unknown_channel_fraction: float = 0.0,
    *,
    channel_limit: int = 4,
) -> tuple[I64, npt.NDArray[np.int16]]:
    """``n`` events uniformly over :meth:`RasterSpec.time_span` (sorted ticks, channels).

    Channels are drawn uniformly from the polarities' channels, except a fraction
    ``unknown_channel_fraction`` drawn from the unowned channels in ``0..channel_limit-1``
    (the default 4 keeps every channel encodable as PicoHarp T3).

    Without line-stop markers the last line of the run is closed by the end of the run,
    whose validity depends on the last accepted record's tick; so that
    :func:`ground_truth` is unambiguous the latest event is then moved to the end of the
    span and given an owned channel."""
    lo, hi = spec.time_span()
    ticks = np.sort(rng.integers(lo, hi, size=n, dtype=np.int64))
    if n and spec.line_stop_mask is None:
        ticks[-1] = hi - 1
    owned = np.array(spec.owned_channels, dtype=np.int16)
    unknown = np.array(
        [c for c in range(channel_limit) if c not in spec.owned_channels], dtype=np.int16
    )
    ch = owned[rng.integers(0, owned.size, size=n)]
    if unknown_channel_fraction > 0:
        if unknown.size == 0:
            raise ValueError("no unowned channel below channel_limit")
        is_unknown = rng.random(n) < unknown_channel_fraction
        if spec.line_stop_mask is None:
            is_unknown[-1] = False
        ch[is_unknown] = unknown[rng.integers(0, unknown.size, size=int(is_unknown.sum()))]
    return ticks, ch


# --------------------------------------------------------------------------------------
# Ground truth
# --------------------------------------------------------------------------------------


def ground_truth(
    spec: RasterSpec,
    ticks: npt.ArrayLike,
    channels: npt.ArrayLike,
) -> tuple[U32, dict[str, int]]:
    """Expected cube ``uint32[n_species, n_slices, ny, nx]`` and rejection counts for
    events on the regular raster of ``spec`` (markers as from :func:`marker_times`).

    Computed per event from the rules of docs/raster.md, in their order. ``ticks`` must be
    sorted (the stream is in time order; markers precede events at equal ticks).

    Without line-stop markers the run's last line is closed by the end of the run; the
    events must then reach ``L - tolerance`` past its start (else ``ValueError``: the
    held events would be ``bad_line``, which this oracle does not model)."""
    t = np.asarray(ticks, dtype=np.int64)
    ch = np.asarray(channels, dtype=np.int64)
    if t.shape != ch.shape or t.ndim != 1:
        raise ValueError("ticks and channels must be 1-D and of equal length")
    if t.size > 1 and np.any(t[1:] < t[:-1]):
        raise ValueError("ticks must be sorted")
    reasons = dict.fromkeys(REASONS, 0)
    cube_flat = np.zeros(int(np.prod(spec.cube_shape)), dtype=np.int64)
    if t.size == 0:
        return cube_flat.astype(np.uint32).reshape(spec.cube_shape), reasons

    mx_marker = (
        spec.start_tick
        + (spec.frames - 1) * spec.frame_period
        + spec.frame_gap_ticks
        + (spec.lines_per_frame - 1) * spec.line_period
    )
    if spec.line_stop_mask is None:
        # The run ends at the last accepted record: events on unknown channels do not
        # move time forward (a corrupted record often looks like one).
        owned_ticks = t[np.isin(ch, spec.owned_channels)]
        end_of_run = max(int(owned_ticks[-1]) if owned_ticks.size else 0, mx_marker)
        if end_of_run - mx_marker < spec.line_ticks - spec.line_tolerance_ticks:
            raise ValueError("last line closed by end of run too early: ambiguous (bad_line)")

    # channel -> polarity index (-1: unknown), species offset, size, settle, per_pixel
    pol_of = np.full(64, -1, dtype=np.int64)
    offs, nsp, settle, perpix = [], [], [], []
    o = 0
    for i, p in enumerate(spec.polarities):
        for c in p.channels:
            pol_of[c] = i
        offs.append(o)
        nsp.append(len(p.species))
        settle.append(p.settle_ticks)
        perpix.append(p.switching == "per_pixel")
        o += len(p.species)
    if np.any((ch < 0) | (ch >= 64)):
        raise ValueError("channels must be in 0..63")
    pol = pol_of[ch]

    # state: 0 = still to decide; the classification below fills `why` in rule order
    n = t.size
    why = np.full(n, -1, dtype=np.int64)  # index into REASONS, or -1 = binned
    undecided = np.ones(n, dtype=bool)

    def reject(mask: npt.NDArray[np.bool_], reason: str) -> None:
        sel = undecided & mask
        why[sel] = REASONS.index(reason)
        undecided[sel] = False

    reject(pol < 0, "unknown_channel")

    rel = t - spec.start_tick
    reject(rel < 0, "before_first_frame")
    f = np.clip(rel // spec.frame_period, 0, spec.frames - 1)  # last frame never ends
    u = rel - f * spec.frame_period  # time since this event's frame marker
    reject(u < spec.frame_gap_ticks, "before_first_line")
    ul = u - spec.frame_gap_ticks
    j = np.clip(ul // spec.line_period, 0, spec.lines_per_frame - 1)  # last line never ends
    dt = ul - j * spec.line_period  # tick - line_start_tick
    # (3) after the line's stop (stop markers) / (5) beyond the last pixel: both flyback
    reject(dt >= spec.line_ticks, "flyback")
    reject(dt < spec.line_settle_ticks, "line_settle")
    x = (dt - spec.line_settle_ticks) // spec.dwell_ticks
    reject(x >= spec.nx, "flyback")  # unreachable given dt < L, kept for the rule order
    reject(j >= spec.ny, "line_overrun")

    polc = np.maximum(pol, 0)
    n_p = np.asarray(nsp, dtype=np.int64)[polc]
    s_p = np.asarray(settle, dtype=np.int64)[polc]
    pp = np.asarray(perpix, dtype=bool)[polc]
    # per_frame
    k_frame = f % n_p
    settle_frame = u < s_p  # tick - frame_start_tick < s
    # per_pixel
    off = dt - spec.line_settle_ticks - x * spec.dwell_ticks
    k_pix = off * n_p // spec.dwell_ticks
    k_start = -((-k_pix * spec.dwell_ticks) // n_p)  # ceil(k * dwell / n)
    settle_pix = (off - k_start) < s_p
    reject(np.where(pp, settle_pix, settle_frame), "mass_settle")
    k = np.where(pp, k_pix, k_frame)

    for i, name in enumerate(REASONS):
        reasons[name] = int(np.count_nonzero(why == i))

    b = undecided
    species = np.asarray(offs, dtype=np.int64)[polc[b]] + k[b]
    z = f[b] // spec.frames_per_slice
    idx = ((species * spec.n_slices + z) * spec.ny + j[b]) * spec.nx + x[b]
    cube_flat += np.bincount(idx, minlength=cube_flat.size)
    return cube_flat.astype(np.uint32).reshape(spec.cube_shape), reasons


# --------------------------------------------------------------------------------------
# Encoders
# --------------------------------------------------------------------------------------

_KIND_MARKER, _KIND_EVENT = 0, 1


def _merge(
    ticks: npt.ArrayLike,
    channels: npt.ArrayLike,
    marker_ticks: npt.ArrayLike,
    marker_masks: npt.ArrayLike,
    extra_ticks: npt.ArrayLike | None = None,
) -> tuple[I64, I64, I64, npt.NDArray[np.intp]]:
    """Time-ordered (tick, kind, value, source index); at equal ticks markers (kind 0)
    come first, then extra records (kind 2, e.g. T2 syncs), then events (kind 1); equal
    kinds keep their input order."""
    et = np.asarray(ticks, dtype=np.int64)
    ec = np.asarray(channels, dtype=np.int64)
    mt = np.asarray(marker_ticks, dtype=np.int64)
    mm = np.asarray(marker_masks, dtype=np.int64)
    xt = np.asarray([] if extra_ticks is None else extra_ticks, dtype=np.int64)
    if et.shape != ec.shape or mt.shape != mm.shape:
        raise ValueError("ticks/channels and marker_ticks/marker_masks must match in length")
    t = np.concatenate([mt, xt, et])
    kind = np.concatenate(
        [np.zeros(mt.size, np.int64), np.full(xt.size, 2, np.int64), np.ones(et.size, np.int64)]
    )
    val = np.concatenate([mm, np.zeros(xt.size, np.int64), ec])
    prio = np.where(kind == 1, 2, np.where(kind == 2, 1, 0))
    order = np.lexsort((prio, t))  # lexsort is stable
    return t[order], kind[order], val[order], order


def _overflow_plan(
    t: I64, wrap: int, max_count: int, rng: np.random.Generator | None, origin: int
) -> tuple[I64, I64, I64]:
    """For records at ticks ``t`` (sorted): the overflow records to put before each.

    Returns (record position each overflow goes before, overflow count, field value).
    With ``max_count == 1`` (no counted overflows) every wrap is one record. Otherwise
    each gap is split into chunks of a random cap (1 for short gaps sometimes, else
    random or maximal); a count of 1 is randomly written as field 0 (meaning 1)."""
    rel = t - origin
    if rel.size and rel[0] < 0:
        raise ValueError("ticks before the origin")
    w = rel // wrap
    gap = np.diff(w, prepend=0)
    pos = np.flatnonzero(gap)
    g = gap[pos]
    if max_count == 1 or rng is None:
        cap = np.full(g.size, max_count, dtype=np.int64)
    else:
        choice = rng.integers(0, 3, size=g.size)
        rand_cap = rng.integers(2, max_count + 1, size=g.size)
        cap = np.where(choice == 0, np.where(g <= 8, 1, rand_cap), rand_cap)
        cap = np.where(choice == 2, max_count, cap)
    nrec = -(-g // cap)
    rep_pos = np.repeat(pos, nrec)
    rep_cap = np.repeat(cap, nrec)
    rep_g = np.repeat(g, nrec)
    first = np.cumsum(nrec) - nrec
    within = np.arange(rep_pos.size, dtype=np.int64) - np.repeat(first, nrec)
    count = np.minimum(rep_cap, rep_g - within * rep_cap)
    fieldv = count.copy()
    if max_count > 1 and rng is not None:
        ones = count == 1
        fieldv[ones] = rng.integers(0, 2, size=int(ones.sum()))
    return rep_pos.astype(np.int64), count, fieldv


def _interleave(main: U32, before_pos: I64, extra: U32) -> U32:
    """Insert ``extra[i]`` before ``main[before_pos[i]]`` (before_pos sorted)."""
    out = np.empty(main.size + extra.size, dtype=np.uint32)
    extra_at = before_pos + np.arange(extra.size, dtype=np.int64)
    is_extra = np.zeros(out.size, dtype=bool)
    is_extra[extra_at] = True
    out[is_extra] = extra
    out[~is_extra] = main
    return out


def _check_markers(masks: I64) -> None:
    if masks.size and (masks.min() < 1 or masks.max() > 15):
        raise ValueError("marker masks must be 1..15")


def encode_t3_generic(
    ticks: npt.ArrayLike,
    channels: npt.ArrayLike,
    marker_ticks: npt.ArrayLike,
    marker_masks: npt.ArrayLike,
    rng: np.random.Generator,
    *,
    dtimes: npt.ArrayLike | None = None,
    origin: int = 0,
    counted_overflows: bool = True,
) -> U32:
    """Generic (HydraHarp V2 / MultiHarp / TimeHarp260) T3 records.

    Bits 0-9 nsync, 10-24 dtime, 25-30 channel, 31 special. Tick ``t`` is written as
    ``(t - origin) mod 1024`` after ``(t - origin) // 1024`` overflows in total. Overflows
    are special channel 63 with the count in the nsync field (0 means 1); with
    ``counted_overflows`` counts are mixed at random (single, random chunks, 1023),
    else every overflow is a single record with field 1. Markers: special, channel = mask.
    Events: channel field = input (0..62); dtime random (or ``dtimes`` per event)."""
    t, kind, val, order = _merge(ticks, channels, marker_ticks, marker_masks)
    is_ev = kind == _KIND_EVENT
    if np.any((val[is_ev] < 0) | (val[is_ev] > 62)):
        raise ValueError("generic T3 event channels must be 0..62")
    _check_markers(val[~is_ev])
    n_ev = int(np.count_nonzero(is_ev))
    if dtimes is None:
        dt_ev = rng.integers(0, 1 << 15, size=n_ev, dtype=np.int64)
    else:
        dt_ev = np.asarray(dtimes, dtype=np.int64)[order[is_ev] - (order.size - n_ev)]
    dtime = np.zeros(t.size, dtype=np.int64)
    dtime[is_ev] = dt_ev & 0x7FFF
    nsync = (t - origin) & 0x3FF
    rec = np.where(
        is_ev,
        (val << 25) | (dtime << 10) | nsync,
        (1 << 31) | (val << 25) | nsync,
    ).astype(np.uint32)
    pos, _count, fieldv = _overflow_plan(
        t, WRAP_T3_GENERIC, 1023 if counted_overflows else 1, rng, origin
    )
    ovf = ((1 << 31) | (63 << 25) | (fieldv & 0x3FF)).astype(np.uint32)
    return _interleave(rec, pos, ovf)


def encode_t3_picoharp(
    ticks: npt.ArrayLike,
    channels: npt.ArrayLike,
    marker_ticks: npt.ArrayLike,
    marker_masks: npt.ArrayLike,
    rng: np.random.Generator,
    *,
    dtimes: npt.ArrayLike | None = None,
    origin: int = 0,
) -> U32:
    """PicoHarp T3 records: bits 0-15 nsync, 16-27 dtime, 28-31 channel.

    Events: channel field = input + 1 (inputs 0..3). Special (channel 15): dtime low 4
    bits = marker mask; mask 0 = overflow (+65536, always single, nsync field 0)."""
    t, kind, val, order = _merge(ticks, channels, marker_ticks, marker_masks)
    is_ev = kind == _KIND_EVENT
    if np.any((val[is_ev] < 0) | (val[is_ev] > 3)):
        raise ValueError("PicoHarp T3 event channels must be 0..3")
    _check_markers(val[~is_ev])
    n_ev = int(np.count_nonzero(is_ev))
    if dtimes is None:
        dt_ev = rng.integers(0, 1 << 12, size=n_ev, dtype=np.int64)
    else:
        dt_ev = np.asarray(dtimes, dtype=np.int64)[order[is_ev] - (order.size - n_ev)]
    dtime = np.zeros(t.size, dtype=np.int64)
    dtime[is_ev] = dt_ev & 0xFFF
    nsync = (t - origin) & 0xFFFF
    rec = np.where(
        is_ev,
        ((val + 1) << 28) | (dtime << 16) | nsync,
        (15 << 28) | (val << 16) | nsync,
    ).astype(np.uint32)
    pos, _count, _f = _overflow_plan(t, WRAP_T3_PICOHARP, 1, None, origin)
    ovf = np.full(pos.size, 15 << 28, dtype=np.uint32)
    return _interleave(rec, pos, ovf)


def encode_t2_generic(
    ticks: npt.ArrayLike,
    channels: npt.ArrayLike,
    marker_ticks: npt.ArrayLike,
    marker_masks: npt.ArrayLike,
    rng: np.random.Generator,
    *,
    sync_ticks: npt.ArrayLike | None = None,
    origin: int = 0,
    counted_overflows: bool = True,
) -> U32:
    """Generic / HydraHarp V2 T2 records: bits 0-24 time, 25-30 channel, 31 special.

    Overflow: special channel 63, count in the time field (0 means 1), +2**25 each.
    Markers: special channel = mask (1..15). Optional syncs: special channel 0 (ordered
    after markers and before events at equal ticks). Events: channel field = input."""
    t, kind, val, _order = _merge(ticks, channels, marker_ticks, marker_masks, sync_ticks)
    is_ev = kind == _KIND_EVENT
    if np.any((val[is_ev] < 0) | (val[is_ev] > 62)):
        raise ValueError("generic T2 event channels must be 0..62")
    _check_markers(val[kind == _KIND_MARKER])
    tf = (t - origin) & 0x1FFFFFF
    rec = np.where(is_ev, (val << 25) | tf, (1 << 31) | (val << 25) | tf).astype(np.uint32)
    pos, _count, fieldv = _overflow_plan(
        t, WRAP_T2_GENERIC, (1 << 25) - 1 if counted_overflows else 1, rng, origin
    )
    ovf = ((1 << 31) | (63 << 25) | (fieldv & 0x1FFFFFF)).astype(np.uint32)
    return _interleave(rec, pos, ovf)


# --------------------------------------------------------------------------------------
# Garbage (records with invalid codes)
# --------------------------------------------------------------------------------------


def garbage_t3_generic(n: int, rng: np.random.Generator) -> U32:
    """Generic T3 special records with an invalid channel code (0 or 16..62)."""
    bad = np.concatenate([[0], np.arange(16, 63)])
    ch = bad[rng.integers(0, bad.size, size=n)].astype(np.int64)
    low = rng.integers(0, 1 << 25, size=n, dtype=np.int64)
    return ((1 << 31) | (ch << 25) | low).astype(np.uint32)


def garbage_t2_generic(n: int, rng: np.random.Generator) -> U32:
    """Generic T2 special records with an invalid channel code (16..62)."""
    ch = rng.integers(16, 63, size=n, dtype=np.int64)
    low = rng.integers(0, 1 << 25, size=n, dtype=np.int64)
    return ((1 << 31) | (ch << 25) | low).astype(np.uint32)


def garbage_t3_picoharp(n: int, rng: np.random.Generator) -> U32:
    """PicoHarp T3 records with an invalid channel field (0 or 5..14)."""
    bad = np.concatenate([[0], np.arange(5, 15)])
    ch = bad[rng.integers(0, bad.size, size=n)].astype(np.int64)
    low = rng.integers(0, 1 << 28, size=n, dtype=np.int64)
    return ((ch << 28) | low).astype(np.uint32)


def insert_garbage(
    records: U32, garbage: U32, rng: np.random.Generator
) -> tuple[U32, npt.NDArray[np.int64]]:
    """Insert ``garbage`` at random places; returns the new stream and the garbage's
    indices in it."""
    before = np.sort(rng.integers(0, records.size + 1, size=garbage.size)).astype(np.int64)
    out = _interleave(records, before, garbage)
    return out, before + np.arange(garbage.size, dtype=np.int64)


# --------------------------------------------------------------------------------------
# .ptu writer
# --------------------------------------------------------------------------------------

TY_EMPTY8: Final = 0xFFFF0008
TY_BOOL8: Final = 0x00000008
TY_INT8: Final = 0x10000008
TY_FLOAT8: Final = 0x20000008
TY_ANSISTRING: Final = 0x4001FFFF

TagValue = bool | int | float | str


def _tag(ident: str, typ: int, value: bytes, idx: int = -1) -> bytes:
    name = ident.encode("ascii")
    if len(name) > 32:
        raise ValueError(f"tag ident too long: {ident}")
    return name.ljust(32, b"\0") + struct.pack("<iI", idx, typ) + value


def write_ptu(
    path: str | Path,
    record_type_code: int,
    records: npt.ArrayLike,
    global_resolution: float,
    resolution: float,
    tags: Mapping[str, TagValue] | Sequence[tuple[str, TagValue]] | None = None,
    *,
    minimal: bool = False,
) -> None:
    """Write a minimal valid PicoQuant .ptu file.

    Header: ``PQTTTR\\0\\0``, version ``1.0.00`` padded to 8 bytes, then tags (32-byte
    ident, i32 index -1, u32 type, 8-byte value): TTResultFormat_TTTRRecType,
    TTResult_NumberOfRecords, MeasDesc_GlobalResolution, MeasDesc_Resolution, any extra
    ``tags`` (bool → Bool8, int → Int8, float → Float8, str → AnsiString), Header_End;
    then the records as little-endian u32. Unless ``minimal``, the (always-present in
    real files, and required by ``ptufile``) TTResultFormat_BitsPerRecord = 32 and
    Measurement_Mode (2 or 3, from the record type) are written after the record type."""
    rec = np.ascontiguousarray(np.asarray(records, dtype="<u4"))
    out = bytearray(b"PQTTTR\0\0" + b"1.0.00".ljust(8, b"\0"))
    out += _tag("TTResultFormat_TTTRRecType", TY_INT8, struct.pack("<q", record_type_code))
    if not minimal:
        out += _tag("TTResultFormat_BitsPerRecord", TY_INT8, struct.pack("<q", 32))
        mode = (record_type_code >> 8) & 0xFF  # 2 = T2, 3 = T3
        out += _tag("Measurement_Mode", TY_INT8, struct.pack("<q", mode))
    out += _tag("TTResult_NumberOfRecords", TY_INT8, struct.pack("<q", rec.size))
    out += _tag("MeasDesc_GlobalResolution", TY_FLOAT8, struct.pack("<d", global_resolution))
    out += _tag("MeasDesc_Resolution", TY_FLOAT8, struct.pack("<d", resolution))
    items = tags.items() if isinstance(tags, Mapping) else (tags or ())
    for ident, v in items:
        if isinstance(v, bool):
            out += _tag(ident, TY_BOOL8, struct.pack("<q", -1 if v else 0))
        elif isinstance(v, int):
            out += _tag(ident, TY_INT8, struct.pack("<q", v))
        elif isinstance(v, float):
            out += _tag(ident, TY_FLOAT8, struct.pack("<d", v))
        else:
            data = v.encode("latin-1") + b"\0"
            data = data.ljust(-(-len(data) // 8) * 8, b"\0")
            out += _tag(ident, TY_ANSISTRING, struct.pack("<q", len(data))) + data
    out += _tag("Header_End", TY_EMPTY8, b"\0" * 8)
    Path(path).write_bytes(bytes(out) + rec.tobytes())
