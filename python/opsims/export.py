"""``opsims export RUN --to FILE``: a run's record for other tools (docs/export.md).

``.nxs``, ``.h5`` or ``.hdf5``: HDF5 in a NeXus layout, readable with h5py and the HDF5
tools: the detector events as ``NXevent_data``-like arrays, the cubes and depth profile
rebuilt from the journal, the electrochemistry, the impedance points, the safety,
control and step logs, and the run's metadata and configuration.
``.csv`` or ``.mpt``: the cycle graph (time, Ewe, I) as tab-separated text in the layout
of an EC-Lab text export, so tools that read those read it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import numpy.typing as npt

from opsims._native import JournalReader, LinkStreamDecoder
from opsims.replay import JOURNAL_SAMPLE_DTYPE, RUN_FILE, replay, run_info

#: Record kinds of ``decode_records`` / ``LinkStreamDecoder``.
EVENT, MARKER = 0, 1
EIS_FIELDS = ("index", "n_points", "freq_hz", "z_re_ohm", "z_im_ohm", "tick", "event_ns")


@dataclass
class RunRecords:
    """Everything of a run's journal except the detector reads (which are streamed)."""

    samples: npt.NDArray[Any]
    eis: list[dict[str, Any]] = field(default_factory=list)
    logs: dict[str, list[dict[str, Any]]] = field(default_factory=dict)


def read_records(run_dir: Path) -> RunRecords:
    samples: list[bytes] = []
    out = RunRecords(np.zeros(0, JOURNAL_SAMPLE_DTYPE))
    for kind, _seq, host_ns, payload in JournalReader(run_dir / "journal").blocks():
        if kind == "potentiostat":
            samples.append(payload)
        elif kind in ("step", "control", "safety", "clock", "note"):
            doc = msgpack.unpackb(payload)
            if kind == "note" and doc.get("type") == "eis_point":
                out.eis.append(doc)
            else:
                out.logs.setdefault(kind, []).append({"journal_ns": host_ns, **doc})
    out.samples = np.frombuffer(b"".join(samples), dtype=JOURNAL_SAMPLE_DTYPE)
    return out


def detector_reads(run_dir: Path) -> Iterator[tuple[int, bytes]]:
    for _seq, host_ns, frame in JournalReader(run_dir / "journal").frames():
        yield host_ns, frame


def export(run_dir: Path, to: Path) -> dict[str, Any]:
    suffix = to.suffix.lower()
    if suffix in (".nxs", ".h5", ".hdf5"):
        return export_nexus(run_dir, to)
    if suffix in (".csv", ".mpt", ".txt"):
        return export_cycle_text(run_dir, to)
    raise ValueError(f"{to}: export writes .nxs/.h5/.hdf5 (NeXus) or .csv/.mpt (cycle graph)")


# --- NeXus ------------------------------------------------------------------------------


def export_nexus(run_dir: Path, path: Path) -> dict[str, Any]:
    import h5py  # only this export needs it

    info = run_info(run_dir)
    records = read_records(run_dir)
    rebuilt = replay(run_dir)
    tick_s = float(info["engine"]["tick_s"])
    with h5py.File(path, "w") as f:
        f.attrs.update({"default": "entry", "creator": "opsims", "file_name": path.name,
                        "file_time": _iso(time.time_ns())})  # fmt: skip
        entry = _group(f, "entry", "NXentry", default="cubes")
        _entry_metadata(entry, info, run_dir)
        events = _write_events(entry, run_dir, tick_s)
        # Frames binned: the frame markers after the one that set slice 0's origin.
        frames = max(0, int(rebuilt.digest["counters"]["frame_markers"]) - 1)
        _write_cubes(entry, rebuilt.cubes(), rebuilt.core.depth_profile(),
                     rebuilt.core.frames_per_slice, frames)  # fmt: skip
        _write_electrochemistry(entry, records.samples, info)
        _write_eis(entry, records.eis)
        logs = _group(entry, "logs", "NXcollection")
        for kind, docs in sorted(records.logs.items()):
            lines = [json.dumps(d, default=str, sort_keys=True) for d in docs]
            logs.create_dataset(kind, data=np.array(lines, dtype=h5py.string_dtype()))
    return {
        "run_id": info.get("run_id"),
        "file": str(path),
        "events": events,
        "samples": len(records.samples),
        "eis_points": len(records.eis),
        "cubes_identical_to_live": rebuilt.identical,
        "logs": {k: len(v) for k, v in records.logs.items()},
    }


def _group(parent: Any, name: str, nx_class: str, **attrs: Any) -> Any:
    g = parent.create_group(name)
    g.attrs["NX_class"] = nx_class
    g.attrs.update(attrs)
    return g


def _iso(ns: int | None) -> str:
    if ns is None:
        return ""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ns / 1e9)) + f".{ns % 10**9:09d}Z"


def _entry_metadata(entry: Any, info: dict[str, Any], run_dir: Path) -> None:
    entry["title"] = str(info.get("protocol_name", ""))
    entry["run_id"] = str(info.get("run_id", ""))
    entry["start_time"] = _iso(info.get("started_ns"))
    entry["end_time"] = _iso(info.get("ended_ns"))
    entry["program_name"] = "opsims"
    entry["run_state"] = str(info.get("state", ""))
    entry["experiment_description"] = (run_dir / "protocol.json").read_text()
    note = _group(entry, "configuration", "NXnote", type="text/plain")
    note["data"] = (run_dir / "config.toml").read_text()
    note["run_json"] = (run_dir / RUN_FILE).read_text()


def _write_events(entry: Any, run_dir: Path, tick_s: float) -> int:
    """Every detector event and marker of the journal's reads, in arrival order; per link
    frame ``event_time_zero`` (its sent tick) and ``event_index`` (its first event)."""
    ev = _group(entry, "events", "NXevent_data")
    ev.attrs["tick_s"] = tick_s
    columns = {
        "event_time_offset": ("<u8", "ticks", "absolute device tick (tick_s seconds each)"),
        "event_id": ("u1", "", "detector channel (0-based)"),
        "event_dtime": ("<u2", "", "T3 fine time (0 for T2)"),
        "event_time_zero": ("<u8", "ticks", "sent tick of each link frame"),
        "event_index": ("<i8", "", "index of each link frame's first event"),
        "frame_sequence": ("<u8", "", "link frame sequence number"),
    }
    ds = {}
    for name, (dtype, units, text) in columns.items():
        ds[name] = ev.create_dataset(name, shape=(0,), maxshape=(None,), dtype=dtype,
                                     chunks=(1 << 16,), compression="gzip",
                                     compression_opts=1)  # fmt: skip
        ds[name].attrs.update({"long_name": text, **({"units": units} if units else {})})
    markers = _group(entry, "markers", "NXcollection")
    mk = {
        name: markers.create_dataset(
            name, shape=(0,), maxshape=(None,), dtype=dtype, chunks=(1 << 14,)
        )
        for name, dtype in (("tick", "<u8"), ("mask", "u1"))
    }
    decoder = LinkStreamDecoder()
    n_events = 0
    for _host_ns, chunk in detector_reads(run_dir):
        got = decoder.push(chunk)
        kind = got["kind"]
        is_event = kind == EVENT
        # A frame's first event: events before each frame's first record, counted.
        before = np.concatenate([[0], np.cumsum(is_event)])
        frames = got["frames"]
        _append(ds["event_time_zero"], frames["sent_tick"])
        _append(ds["frame_sequence"], frames["sequence"])
        _append(ds["event_index"], n_events + before[frames["first_record"]].astype(np.int64))
        _append(ds["event_time_offset"], got["tick"][is_event])
        _append(ds["event_id"], got["channel"][is_event])
        _append(ds["event_dtime"], got["dtime"][is_event])
        is_marker = kind == MARKER
        _append(mk["tick"], got["tick"][is_marker])
        _append(mk["mask"], got["marker"][is_marker])
        n_events += int(is_event.sum())
    ev.attrs["frames_corrupt"] = decoder.corrupt
    ev.attrs["bytes_skipped"] = decoder.bytes_skipped
    return n_events


def _append(ds: Any, values: npt.NDArray[Any]) -> None:
    if not len(values):
        return
    n = ds.shape[0]
    ds.resize((n + len(values),))
    ds[n:] = values


def _write_cubes(
    entry: Any, cubes: dict[str, npt.NDArray[np.uint32]], profile: npt.NDArray[Any],
    frames_per_slice: int, frames: int
) -> None:  # fmt: skip
    species = list(cubes)
    data = _group(entry, "cubes", "NXdata", signal=species[0] if species else "",
                  axes=[".", ".", "."])  # fmt: skip
    data.attrs["frames_per_slice"] = frames_per_slice  # now, after any rebinning
    data.attrs["frames"] = frames
    data.attrs["species"] = species
    for name, cube in cubes.items():
        d = data.create_dataset(name.replace("/", "_"), data=cube, compression="gzip",
                                compression_opts=1)  # fmt: skip
        d.attrs.update({"species": name, "units": "counts", "long_name": f"{name} [z, y, x]"})
    prof = data.create_dataset("depth_profile", data=profile)
    prof.attrs.update({"units": "counts", "long_name": "counts per slice and species [z, species]",
                       "species": species})  # fmt: skip


def _write_electrochemistry(entry: Any, samples: npt.NDArray[Any], info: dict[str, Any]) -> None:
    ec = _group(entry, "electrochemistry", "NXdata", signal="ewe_v", axes=["time"])
    # The simulator's acceleration: instrument seconds per host second (1 on hardware).
    ec.attrs["time_scale"] = float(info["engine"].get("clock_time_scale", 1.0))
    start = info.get("started_ns") or (int(samples["host_ns"][0]) if len(samples) else 0)
    t = (samples["host_ns"].astype(np.int64) - int(start)) * 1e-9
    for name, values, units in (
        ("time", t, "s"), ("ewe_v", samples["ewe_v"], "V"),
        ("current_a", samples["current_a"], "A"), ("host_ns", samples["host_ns"], "ns"),
        ("tick", samples["tick"], ""), ("mode", samples["mode"], ""),
        ("flags", samples["flags"], ""),
    ):  # fmt: skip
        d = ec.create_dataset(name, data=values)
        if units:
            d.attrs["units"] = units


def _write_eis(entry: Any, points: list[dict[str, Any]]) -> None:
    eis = _group(entry, "impedance", "NXdata", signal="z_re_ohm", axes=["freq_hz"])
    for name in EIS_FIELDS:
        values = np.array([p.get(name, 0) for p in points])
        eis.create_dataset(name, data=values if len(values) else np.zeros(0))
    # A new sweep starts where the point index goes back to 0.
    index = np.array([p.get("index", 0) for p in points], dtype=np.int64)
    eis.create_dataset("sweep", data=np.cumsum(index == 0) - 1 if len(index) else index)


# --- cycle graph as EC-Lab-like text ------------------------------------------------------


def export_cycle_text(run_dir: Path, path: Path) -> dict[str, Any]:
    """``time/s``, ``Ewe/V``, ``I/mA``, ``mode``, ``step``: tab-separated, with an EC-Lab
    style header whose second line gives its length (the column line included)."""
    info = run_info(run_dir)
    records = read_records(run_dir)
    s = records.samples
    start = info.get("started_ns") or (int(s["host_ns"][0]) if len(s) else 0)
    scale = float(info["engine"].get("clock_time_scale", 1.0))
    t = (s["host_ns"].astype(np.int64) - int(start)) * 1e-9 * scale
    step = _step_of(s["host_ns"], records.logs.get("step", []))
    header = [
        "EC-Lab ASCII FILE",
        "",  # the line count, filled in below
        "",
        "Exported by opsims from the run journal",
        f"Run : {info.get('run_id', '')}",
        f"Protocol : {info.get('protocol_name', '')}",
        f"Acquisition started on : {_iso(info.get('started_ns'))}",
        "",
        "time/s\tEwe/V\tI/mA\tmode\tstep",
    ]
    header[1] = f"Nb header lines : {len(header)}"
    with open(path, "w", encoding="cp1252", newline="\r\n") as f:
        f.write("\n".join(header) + "\n")
        for row in zip(t, s["ewe_v"], s["current_a"] * 1e3, s["mode"], step, strict=True):
            f.write(f"{row[0]:.6f}\t{row[1]:.9g}\t{row[2]:.9g}\t{row[3]}\t{row[4]}\n")
    return {"run_id": info.get("run_id"), "file": str(path), "samples": len(s)}


def _step_of(host_ns: npt.NDArray[np.int64], steps: list[dict[str, Any]]) -> npt.NDArray[Any]:
    """The protocol step running at each sample (-1 outside steps), from the step log."""
    starts = [(int(d["journal_ns"]), int(d["step"])) for d in steps
              if d.get("state") == "started" and int(d.get("step", -1)) >= 0]  # fmt: skip
    out = np.full(len(host_ns), -1, dtype=np.int64)
    if not starts:
        return out
    times = np.array([t for t, _ in starts], dtype=np.int64)
    index = np.searchsorted(times, host_ns.astype(np.int64), side="right") - 1
    ok = index >= 0
    out[ok] = np.array([k for _, k in starts])[index[ok]]
    return out
