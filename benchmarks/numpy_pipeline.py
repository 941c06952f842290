"""Numpy baseline: decode + map + bin generic T3 records on a clean regular raster.

Pure numpy (no opsims), the yardstick the native engine is measured against. It covers
the generic (HydraHarp V2 / MultiHarp) T3 format, per-frame mass switching and frame /
line-start / (optional) line-stop markers, and assumes a clean stream: time-ordered, no
malformed records, no missed markers (line validity is not checked).

The approach: special records (overflows, markers) are rare, so all stream state is
computed once per *segment* between two consecutive special records, in small tables.
Every record then only needs its segment number ``k`` (a running count of special
records) to look up ``tick - line_start`` and the voxel row of its channel; special and
rejected records are sent to a dump bin that ``np.bincount`` counts and we drop.

Run ``python -m benchmarks.numpy_pipeline [n_events]`` from the repository root to time
it on a synthetic stream (generated with tests/support/tttr_synth.py).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

__all__ = ["RasterLike", "numpy_decode_map_bin"]

I64 = npt.NDArray[np.int64]


class PolarityLike(Protocol):
    @property
    def channels(self) -> tuple[int, ...]: ...
    @property
    def species(self) -> tuple[str, ...]: ...
    @property
    def switching(self) -> str: ...
    @property
    def settle_ticks(self) -> int: ...


class RasterLike(Protocol):
    """What the baseline reads of a ``tests.support.tttr_synth.RasterSpec``."""

    @property
    def nx(self) -> int: ...
    @property
    def ny(self) -> int: ...
    @property
    def dwell_ticks(self) -> int: ...
    @property
    def line_settle_ticks(self) -> int: ...
    @property
    def frames(self) -> int: ...
    @property
    def frames_per_slice(self) -> int: ...
    @property
    def frame_mask(self) -> int: ...
    @property
    def line_start_mask(self) -> int: ...
    @property
    def line_stop_mask(self) -> int | None: ...
    @property
    def polarities(self) -> Sequence[PolarityLike]: ...


_SPECIAL = np.uint32(0x8000_0000)


def _segment_tables(
    sp: npt.NDArray[np.uint32], spec: RasterLike, n_cols: int, col_pol: list[int]
) -> tuple[I64, I64, I64, int]:
    """Per segment k (after k special records, k = 0..len(sp)):

    - ``off_line[k]``: add a record's nsync field to get ``tick - line_start``;
    - ``row[k * n_cols + col]``: index of pixel 0 of the voxel row for channel column
      ``col`` in the padded count array (rows of ``nx + 1`` bins, the last one catching
      out-of-line times), or of the dump row when nothing maps (before the first frame or
      line, line closed, overrun, slice out of range, unknown channel, special record);
    - ``lo[k * n_cols + col]``: smallest binnable ``tick - line_start`` (line settle, or
      later while the polarity's mass switch settles after the frame marker);
    - and the dump row's index.
    """
    nx, ny = spec.nx, spec.ny
    n_z = -(-spec.frames // spec.frames_per_slice)
    n_species = sum(len(p.species) for p in spec.polarities)
    dump = n_species * n_z * ny * (nx + 1)
    m = sp.size
    ch = ((sp >> 25) & 63).astype(np.int64)
    low = (sp & 1023).astype(np.int64)
    n_ovf = np.where(ch == 63, np.where(low == 0, 1, low), 0)
    ovf_after = np.cumsum(n_ovf)
    sp_tick = (ovf_after - n_ovf) * 1024 + low
    mk = np.where((ch >= 1) & (ch <= 15), ch, 0)
    has_frame = (mk & spec.frame_mask) != 0
    has_start = (mk & spec.line_start_mask) != 0
    has_stop = (mk & (spec.line_stop_mask or 0)) != 0

    i = np.arange(m, dtype=np.int64)

    def last(flag: npt.NDArray[np.bool_]) -> I64:
        """Index of the last special with ``flag`` among the first k, per segment k."""
        out = np.full(m + 1, -1, dtype=np.int64)
        if m:
            out[1:] = np.maximum.accumulate(np.where(flag, i, -1))
        return out

    lf, ll, lst = last(has_frame), last(has_start), last(has_stop)
    start_after = np.concatenate([[0], np.cumsum(has_start)])  # starts among first k
    frame = np.concatenate([[0], np.cumsum(has_frame)]) - 1
    base = np.concatenate([[0], ovf_after]) * 1024
    lf_c = np.maximum(lf, 0)
    # starts since the frame marker, counting one in the frame marker's own record
    y = start_after - start_after[lf_c] - 1
    # within one record the bits apply as stop, frame, start: a start in the same record
    # as the frame or the stop leaves the line open
    is_open = (lf >= 0) & (ll >= lf) & (ll >= lst)
    sp_tick1 = np.concatenate([sp_tick, [0]])  # index -1 (none yet) reads 0
    ls_tick, fs_tick = sp_tick1[ll], sp_tick1[lf]
    off_line = np.where(is_open, base - ls_tick, np.int64(-(1 << 40)))
    f0 = np.maximum(frame, 0)
    z = f0 // spec.frames_per_slice
    ok_row = is_open & (y < ny) & (z < n_z)

    row = np.full((m + 1, n_cols), dump, dtype=np.int64)
    lo = np.full((m + 1, n_cols), spec.line_settle_ticks, dtype=np.int64)
    offsets = np.cumsum([0] + [len(p.species) for p in spec.polarities])
    for col, pi in enumerate(col_pol):
        if pi < 0:
            continue
        p = spec.polarities[pi]
        species = offsets[pi] + f0 % len(p.species)
        row[:, col] = np.where(ok_row, ((species * n_z + z) * ny + y) * (nx + 1), dump)
        if p.settle_ticks:
            # tick - frame_start >= s  <=>  dt >= s - (line_start - frame_start)
            lo[:, col] = np.maximum(lo[:, col], p.settle_ticks - (ls_tick - fs_tick))
    return off_line, row.ravel(), lo.ravel(), dump


def numpy_decode_map_bin(
    records: npt.ArrayLike, spec: RasterLike, *, chunk: int = 1 << 18
) -> npt.NDArray[np.uint32]:
    """Decode generic T3 ``records`` (u32) and bin the events on the raster ``spec``.

    Returns the cube ``uint32[n_species, n_slices, ny, nx]`` (n_slices from
    ``spec.frames``). Rejected events of every kind are simply not counted."""
    for p in spec.polarities:
        if p.switching != "per_frame":
            raise NotImplementedError("the numpy baseline does per_frame switching only")
    rec = np.ascontiguousarray(records, dtype=np.uint32).ravel()
    nx, ny, dwell, settle = spec.nx, spec.ny, spec.dwell_ticks, spec.line_settle_ticks
    n_species = sum(len(p.species) for p in spec.polarities)
    n_z = -(-spec.frames // spec.frames_per_slice)

    # channel column from the top 7 bits (special bit + channel): owned channels get
    # columns 0.., everything else (specials, unknown channels) the dump column
    owned = [(c, pi) for pi, p in enumerate(spec.polarities) for c in p.channels]
    n_cols = len(owned) + 1
    lut = np.full(128, len(owned), dtype=np.int64)
    for col, (c, _) in enumerate(owned):
        lut[c] = col
    col_pol = [pi for _, pi in owned] + [-1]

    sp_idx = np.flatnonzero(rec >= _SPECIAL)
    off_line, row, lo, dump = _segment_tables(rec[sp_idx], spec, n_cols, col_pol)
    plain = bool(np.all(lo == settle))

    # 32-bit arithmetic halves the memory traffic when every value fits: times since a
    # line start are clipped to +-2**30 (far outside any line either way)
    narrow = dump + nx + 1 < 2**31 and sp_idx.size < 2**31 and settle + nx * dwell < 2**30
    it: type[np.signedinteger[Any]] = np.int32 if narrow else np.int64
    ut: type[np.unsignedinteger[Any]] = np.uint32 if narrow else np.uint64
    if narrow:
        off_line = np.clip(off_line, -(2**30), 2**30)
        lo = np.clip(lo, -(2**30), 2**30)
    off_line_n = off_line.astype(it)
    row_n, lo_n, lut_n = row.astype(it), (lo - settle).astype(it), lut.astype(it)
    line_len = ut(nx * dwell)  # binnable: 0 <= dt - settle < nx * dwell
    dwell_u, settle_n, n_cols_n = ut(dwell), it(settle), it(n_cols)

    idx = np.empty(rec.size, dtype=np.int64)
    for a in range(0, rec.size, chunk):
        r = rec[a : a + chunk]
        k = np.cumsum(r >= _SPECIAL, dtype=it)
        k += it(np.searchsorted(sp_idx, a))  # a special's own k counts itself: dumped anyway
        kc = k * n_cols_n
        kc += lut_n[r >> 25]
        dt = (r & np.uint32(1023)).astype(it)
        dt += off_line_n[k]
        dt -= settle_n
        if not plain:  # mass settle: before lo, push dt negative
            dt[dt < lo_n[kc]] = -1
        u = dt.view(ut)  # negative -> huge
        np.minimum(u, line_len, out=u)  # out of the line -> x = nx, the row's spare bin
        u //= dwell_u
        dt += row_n[kc]
        idx[a : a + r.size] = dt
    counts = np.bincount(idx, minlength=dump + nx + 1)[:dump]
    cube = counts.reshape(n_species, n_z, ny, nx + 1)[..., :nx]
    return cube.astype(np.uint32)


def main(argv: Sequence[str] = ()) -> None:  # pragma: no cover - a manual benchmark
    import importlib
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    synth = importlib.import_module("support.tttr_synth")
    n = int(float(argv[0])) if argv else 50_000_000
    spec = synth.RasterSpec(
        nx=256,
        ny=256,
        dwell_ticks=40,
        line_settle_ticks=100,
        flyback_ticks=400,
        frame_gap_ticks=2000,
        frames=100,
        frames_per_slice=1,
        polarities=(
            synth.Polarity((0,), ("Na+", "Si+", "Zr+", "ZrO+"), "per_frame", 0),
            synth.Polarity((1,), ("O-", "P-", "SiO2-", "PO2-", "ZrO2-"), "per_frame", 0),
        ),
        start_tick=10_000_000,
    )
    rng = np.random.default_rng(1)
    t0 = time.perf_counter()
    ticks, ch = synth.random_events(spec, n, rng, 0.01)
    mt, mm = synth.marker_times(spec)
    rec = synth.encode_t3_generic(ticks, ch, mt, mm, rng)
    t1 = time.perf_counter()
    print(f"generated {n:,} events, {rec.size:,} records in {t1 - t0:.1f} s")
    best = float("inf")
    cube = None
    for _ in range(3):
        t0 = time.perf_counter()
        cube = numpy_decode_map_bin(rec, spec)
        best = min(best, time.perf_counter() - t0)
    print(
        f"numpy_decode_map_bin: best of 3 {best:.3f} s = {n / best / 1e6:.1f} M events/s, "
        f"{rec.size / best / 1e6:.1f} M records/s"
    )
    if n <= 60_000_000:  # the oracle needs ~10 int64 temporaries per event
        want, _ = synth.ground_truth(spec, ticks, ch)
        assert cube is not None and np.array_equal(cube, want)
        print("equals ground_truth")


if __name__ == "__main__":  # pragma: no cover
    main(sys.argv[1:])
