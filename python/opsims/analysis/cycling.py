"""Cycle-graph data as one typed series, whatever it was recorded in.

:func:`load_cycling` reads a run directory of opsimsd (or a run id under the state
directory), a NeXus export (``.nxs``, ``.h5``, ``.hdf5``), an EC-Lab chronopotentiometry
text export (``.mpt``), an EC-Lab binary file (``.mpr``, through the optional ``galvani``)
or a CSV whose header names time, voltage and current with their units.

The record is cut into segments where the current changes sign (plating ``I < 0``,
stripping ``I > 0``, rest ``I = 0``: EC-Lab's sign), where the set current changes, and
where a new protocol step (or EC-Lab sequence, ``Ns``) begins. Regions come from the
step log's ``new_region`` steps, or a ``region`` column; otherwise the whole record is
one region. See docs/cycle-analysis.md.
"""

from __future__ import annotations

import itertools
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from opsims.analysis.ecfiles import (
    MPT_MAGIC,
    ChronoData,
    EcFileError,
    read_chrono_csv,
    read_chrono_mpt,
)

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
SegmentKind = Literal["plate", "strip", "rest"]

#: |I| at or below this share of the record's 99th-percentile |I| counts as no current.
ZERO_CURRENT_FRACTION = 0.01
#: A jump of |I| by more than this share between two samples starts a new segment.
CURRENT_STEP_FRACTION = 0.2
NEXUS_EC = "/entry/electrochemistry"
NEXUS_COLUMNS = ("host_ns", "time", "ewe_v", "current_a")
NEXUS_STEPS = "/entry/logs/step"
_DENSITY_LABEL = re.compile(r"\[J=([-+0-9.eE]+)\]")
_KIND: dict[int, SegmentKind] = {-1: "plate", 0: "rest", 1: "strip"}


@dataclass(frozen=True)
class Segment:
    """Samples ``start:stop`` of one current level: plating, stripping or rest."""

    kind: SegmentKind
    start: int
    stop: int
    step: int | None = None  # protocol step index, or EC-Lab's Ns
    label: str = ""  # the protocol step's label
    set_current_a: float | None = None  # the step's programmed current, from the step log

    def __len__(self) -> int:
        return self.stop - self.start


@dataclass(frozen=True)
class Region:
    """One probe region: its current segments in time order."""

    index: int
    label: str
    segments: tuple[Segment, ...]
    #: J (µA µm⁻²) the protocol named in a ``[J=…]`` label, when it did.
    label_density_ua_um2: float | None = None

    @property
    def currents(self) -> tuple[Segment, ...]:
        return tuple(s for s in self.segments if s.kind != "rest")


@dataclass(frozen=True)
class CyclingSeries:
    """Time (s), Ewe (V) and I (A, negative while plating) of a record, in regions."""

    source: str
    format: str  # run, nexus, mpt, mpr, csv or array
    time_s: F64
    ewe_v: F64
    current_a: F64
    regions: tuple[Region, ...]
    meta: dict[str, Any] = field(default_factory=dict)

    def region(self, index: int) -> Region:
        for r in self.regions:
            if r.index == index:
                return r
        raise KeyError(f"no region {index} (regions: {[r.index for r in self.regions]})")

    def arrays(self, seg: Segment) -> tuple[F64, F64, F64]:
        """(t, Ewe, I) of a segment."""
        sl = slice(seg.start, seg.stop)
        return self.time_s[sl], self.ewe_v[sl], self.current_a[sl]


@dataclass(frozen=True)
class StepSpan:
    """One protocol step from the step log, in host time."""

    step: int
    kind: str
    label: str
    start_ns: int
    end_ns: int
    current_a: float | None


# -- loading ------------------------------------------------------------------------------


def load_cycling(source: str | Path, state_dir: str | Path | None = None) -> CyclingSeries:
    """A cycle-graph record from a run directory (or run id), ``.nxs``, ``.mpt``, ``.mpr``
    or CSV. Malformed files raise :class:`EcFileError` (a ``ValueError``) naming the file,
    line and column; an unknown run raises ``FileNotFoundError``."""
    from opsims.replay import find_run, names_a_run

    p = Path(source)
    if names_a_run(p):
        return load_run(find_run(source, state_dir))
    suffix = p.suffix.lower()
    if suffix in (".nxs", ".h5", ".hdf5"):
        return load_nexus(p)
    if suffix == ".mpr":
        return load_mpr(p)
    if suffix == ".mpt" or _starts_with(p, MPT_MAGIC.encode()):
        return from_chrono(read_chrono_mpt(p), "mpt")
    return from_chrono(read_chrono_csv(p), "csv")


def _starts_with(p: Path, magic: bytes) -> bool:
    try:
        with open(p, "rb") as f:
            return f.read(len(magic)) == magic
    except OSError:
        return False  # the reader says why


def from_chrono(data: ChronoData, fmt: str) -> CyclingSeries:
    """A series from a text record; EC-Lab's ``Ns`` (or a ``step`` column) separates steps."""
    step = data.labels.get("ns", data.labels.get("step"))
    meta: dict[str, Any] = {
        "encoding": data.meta.encoding,
        "decimal_comma": data.meta.decimal_comma,
    }
    if data.meta.header:
        meta["header"] = data.meta.header
    return build_series(
        data.meta.source,
        fmt,
        data.time_s,
        data.ewe_v,
        data.current_a,
        step=step,
        region=data.labels.get("region"),
        meta=meta,
    )


def load_run(run_dir: Path) -> CyclingSeries:
    """A run of opsimsd: the journal's samples, cut by its step log."""
    from opsims.export import read_records
    from opsims.replay import run_info

    info = run_info(run_dir)
    records = read_records(run_dir)
    s = records.samples
    if not len(s):
        raise EcFileError(run_dir / "journal", None, None, "no potentiostat samples")
    order = np.argsort(s["host_ns"], kind="stable")
    host_ns = s["host_ns"][order].astype(np.int64)
    start = int(info.get("started_ns") or host_ns[0])
    spans = step_spans(records.logs.get("step", []), str(run_dir / "journal"))
    meta = {"run_id": info.get("run_id"), "protocol": info.get("protocol_name")}
    scale = float(info.get("engine", {}).get("clock_time_scale", 1.0))
    return with_steps(
        str(run_dir), "run", host_ns, start, s["ewe_v"][order], s["current_a"][order], spans,
        meta, scale,
    )  # fmt: skip


def load_nexus(path: Path) -> CyclingSeries:
    """An ``opsims export`` NeXus file: ``/entry/electrochemistry`` and ``/entry/logs/step``."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            cols = {k: _dataset(f, path, f"{NEXUS_EC}/{k}") for k in NEXUS_COLUMNS}
            raw = f[NEXUS_STEPS][()] if NEXUS_STEPS in f else []
            run_id = f["/entry/run_id"][()] if "/entry/run_id" in f else b""
            scale = float(f[NEXUS_EC].attrs.get("time_scale", 1.0))
    except OSError as e:
        raise EcFileError(path, None, None, f"not a readable HDF5 file: {e}") from e
    host_ns = cols["host_ns"].astype(np.int64)
    if not host_ns.size:
        raise EcFileError(path, None, f"{NEXUS_EC}/host_ns", "no samples")
    # ``time`` counts from the run's start: the step log's host times need that origin.
    start = int(host_ns[0] - round(float(cols["time"][0]) * 1e9))
    spans = step_spans(_json_lines(path, raw), f"{path}:{NEXUS_STEPS}")
    meta = {"run_id": run_id.decode() if isinstance(run_id, bytes) else str(run_id)}
    return with_steps(
        str(path), "nexus", host_ns, start, cols["ewe_v"], cols["current_a"], spans, meta, scale
    )


def _dataset(f: Any, path: Path, name: str) -> npt.NDArray[Any]:
    if name not in f:
        raise EcFileError(path, None, name, "missing (not an opsims NeXus export?)")
    return np.asarray(f[name][()])


def _json_lines(path: Path, raw: Any) -> list[dict[str, Any]]:
    """The step log: one JSON document per entry (the entry number is the "line")."""
    docs = []
    for k, line in enumerate(raw):
        text = line.decode() if isinstance(line, bytes) else str(line)
        try:
            docs.append(json.loads(text))
        except ValueError as e:
            raise EcFileError(path, k + 1, NEXUS_STEPS, f"not JSON: {e}") from e
    return docs


def load_mpr(path: Path) -> CyclingSeries:
    """An EC-Lab binary file through galvani (``pip install 'opsims[mpr]'``)."""
    try:
        from galvani import BioLogic
    except ImportError as e:
        why = "reading .mpr needs galvani: pip install 'opsims[mpr]' (or export .mpt text)"
        raise EcFileError(path, None, None, why) from e
    try:
        with open(path, "rb") as f:  # galvani leaves a file it opened itself open
            data = BioLogic.MPRfile(f).data
    except (ValueError, OSError, AssertionError, NotImplementedError, KeyError) as e:
        raise EcFileError(path, None, None, f"not a readable EC-Lab .mpr file: {e}") from e
    names = list(data.dtype.names or ())
    cols = {}
    for key, options, factor in (
        ("time", ("time/s",), 1.0),
        ("ewe", ("Ewe/V", "<Ewe>/V"), 1.0),
        ("current", ("I/mA", "<I>/mA"), 1e-3),
    ):
        name = next((o for o in options if o in names), None)
        if name is None:
            raise EcFileError(path, None, options[0], f"column not found among {names}")
        cols[key] = np.asarray(data[name], dtype=np.float64) * factor
    step = np.asarray(data["Ns"], dtype=np.int64) if "Ns" in names else None
    return build_series(str(path), "mpr", cols["time"], cols["ewe"], cols["current"], step=step)


# -- the step log -----------------------------------------------------------------------


def step_spans(docs: list[dict[str, Any]], where: str) -> list[StepSpan]:
    """Protocol steps from ``run`` messages (docs/publishing.md) with their journal times:
    each from its ``started`` to its ``finished`` or ``aborted``, else the next start."""
    starts: list[tuple[int, dict[str, Any]]] = []
    ends: dict[int, int] = {}
    for k, d in enumerate(docs):
        try:
            step, ns, state = int(d.get("step", -1)), int(d["journal_ns"]), d.get("state")
        except (KeyError, TypeError, ValueError) as e:
            raise EcFileError(where, k + 1, "journal_ns", f"bad step log entry: {e}") from e
        if step < 0:
            continue
        if state == "started":
            starts.append((ns, d))
        elif state in ("finished", "aborted"):
            ends[step] = ns
    starts.sort(key=lambda x: x[0])
    spans = []
    for n, (ns, d) in enumerate(starts):
        step = int(d["step"])
        nxt = starts[n + 1][0] if n + 1 < len(starts) else np.iinfo(np.int64).max
        current = (d.get("params") or {}).get("current_a")
        spans.append(
            StepSpan(
                step,
                str(d.get("kind", "")),
                str(d.get("label", "")),
                ns,
                min(ends.get(step, nxt), nxt),
                None if current is None else float(current),
            )
        )
    return spans


def with_steps(
    source: str,
    fmt: str,
    host_ns: I64,
    start_ns: int,
    ewe_v: npt.ArrayLike,
    current_a: npt.ArrayLike,
    spans: list[StepSpan],
    meta: dict[str, Any],
    time_scale: float = 1.0,
) -> CyclingSeries:
    """Samples mapped to protocol steps and regions by host time; the series' time is the
    instrument's (host seconds x ``time_scale``, the simulator's acceleration)."""
    step = np.full(host_ns.size, -1, dtype=np.int64)
    for sp in spans:
        lo, hi = np.searchsorted(host_ns, [sp.start_ns, sp.end_ns], side="left")
        step[lo:hi] = sp.step
    fresh = [sp for sp in spans if sp.kind == "new_region"]
    region = np.searchsorted([sp.start_ns for sp in fresh], host_ns, side="right").astype(np.int64)
    by_step = {sp.step: sp for sp in spans}
    names = {n + 1: sp.label for n, sp in enumerate(fresh)}
    t = (host_ns - start_ns).astype(np.float64) * 1e-9 * time_scale
    return build_series(
        source,
        fmt,
        t,
        np.asarray(ewe_v, np.float64),
        np.asarray(current_a, np.float64),
        step=step,
        region=region,
        steps=by_step,
        region_labels=names,
        meta=meta,
    )


# -- segments and regions -------------------------------------------------------------------


def build_series(
    source: str,
    fmt: str,
    time_s: F64,
    ewe_v: F64,
    current_a: F64,
    *,
    step: I64 | None = None,
    region: I64 | None = None,
    steps: dict[int, StepSpan] | None = None,
    region_labels: dict[int, str] | None = None,
    meta: dict[str, Any] | None = None,
) -> CyclingSeries:
    """Cut (t, Ewe, I) into segments and regions (``step`` and ``region``: per sample).
    Non-finite samples (a journal keeps what the instrument sent) are dropped and counted
    in ``meta["non_finite_dropped"]``."""
    t, v, i = (np.ascontiguousarray(a, dtype=np.float64) for a in (time_s, ewe_v, current_a))
    if not (t.shape == v.shape == i.shape and t.ndim == 1):
        raise ValueError("time, Ewe and I must be 1-D arrays of the same length")
    meta = dict(meta or {})
    ok = np.isfinite(t) & np.isfinite(v) & np.isfinite(i)
    if not ok.all():
        meta["non_finite_dropped"] = int((~ok).sum())
        t, v, i = t[ok], v[ok], i[ok]
        step = None if step is None else step[ok]
        region = None if region is None else region[ok]
    by_region = _segments(i, step, region, steps or {})
    labels = region_labels or {}
    regions = tuple(
        Region(k, labels.get(k, ""), tuple(segs), label_density(labels.get(k, "")))
        for k, segs in sorted(by_region.items())
        if any(s.kind != "rest" for s in segs)
    )
    return CyclingSeries(source, fmt, t, v, i, regions, meta)


def _segments(
    i: F64, step: I64 | None, region: I64 | None, steps: dict[int, StepSpan]
) -> dict[int, list[Segment]]:
    """Segments by region. Not cut at step changes: a step log's times can put a boundary
    sample on the wrong side; a segment takes the step of its middle sample."""
    if not i.size:
        return {}
    sign = current_sign(i)
    cut = _current_jumps(i, sign) | (sign[1:] != sign[:-1])
    if region is not None:
        cut |= region[1:] != region[:-1]
    edges = np.concatenate([[0], np.flatnonzero(cut) + 1, [i.size]]).astype(np.int64)
    by_region: dict[int, list[Segment]] = {}
    for a, b in itertools.pairwise(edges.tolist()):
        mid = (a + b - 1) // 2
        n = None if step is None or step[mid] < 0 else int(step[mid])
        span = steps.get(n) if n is not None else None
        seg = Segment(
            _KIND[int(sign[a])],
            a,
            b,
            n,
            span.label if span else "",
            span.current_a if span else None,
        )
        by_region.setdefault(0 if region is None else int(region[a]), []).append(seg)
    return by_region


def current_sign(current_a: F64) -> npt.NDArray[np.int8]:
    """-1 plating, +1 stripping, 0 no current (|I| within ``ZERO_CURRENT_FRACTION``)."""
    if not current_a.size:
        return np.zeros(0, dtype=np.int8)
    scale = float(np.percentile(np.abs(current_a), 99))
    on = np.abs(current_a) > ZERO_CURRENT_FRACTION * scale
    return (np.sign(current_a) * on).astype(np.int8)


def _current_jumps(i: F64, sign: npt.NDArray[np.int8]) -> npt.NDArray[np.bool_]:
    """Between two samples of the same sign, a change of set current."""
    a, b = np.abs(i[:-1]), np.abs(i[1:])
    same = (sign[1:] == sign[:-1]) & (sign[1:] != 0)
    out: npt.NDArray[np.bool_] = same & (np.abs(b - a) > CURRENT_STEP_FRACTION * np.maximum(a, b))
    return out


def label_density(label: str) -> float | None:
    """J from a protocol series label such as ``[J=0.06] new region``."""
    m = _DENSITY_LABEL.search(label)
    if m is None:
        return None
    try:
        return float(m.group(1))
    except ValueError:
        return None


# -- numerics on a segment's arrays ------------------------------------------------------


def reduce_grid(t: F64, y: F64, width: float) -> tuple[F64, F64]:
    """Bin means of width ``width`` when samples are denser than that, else as they are."""
    if t.size < 2 or spacing(t) >= width:
        return t, y
    idx = np.floor((t - t[0]) / width).astype(np.int64)
    _, inv, counts = np.unique(idx, return_inverse=True, return_counts=True)
    return np.bincount(inv, t) / counts, np.bincount(inv, y) / counts


def running_median(t: F64, y: F64, window_s: float) -> tuple[F64, F64]:
    """Centred running median over about ``window_s`` (edges padded with the end values)."""
    dt = spacing(t)
    k = round(window_s / dt) if dt > 0 else 1
    k += 1 - k % 2
    if k <= 1 or y.size < 2:
        return t, y.copy()
    padded = np.pad(y, k // 2, mode="edge")
    windows = np.lib.stride_tricks.sliding_window_view(padded, k)
    return t, np.median(windows, axis=1)


def spacing(t: F64) -> float:
    """The median time step."""
    return float(np.median(np.diff(t))) if t.size > 1 else 0.0


def span(t: F64) -> float:
    """First to last sample (s)."""
    return float(t[-1] - t[0]) if t.size else 0.0


def passed_charge(t: F64, i: F64) -> float:
    """|charge| passed (C), trapezoidal."""
    if t.size < 2:
        return 0.0
    a = np.abs(i)
    return float(np.sum(0.5 * (a[1:] + a[:-1]) * np.diff(t)))
