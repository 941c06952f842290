"""The analyses on what opsimsd records and publishes: impedance spectra out of a run
directory or a NeXus export, and both analyses live from the ZeroMQ stream.

Live, ``eis`` points are gathered into sweeps (a sweep ends with its last point, or the
instrument's ``eis_done``) and each is fitted as it completes; the cycle graph gathers
the ``ec`` samples and ``run`` steps of one run and judges its regions when the run ends.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from opsims.analysis.cycling import CyclingSeries, step_spans, with_steps
from opsims.analysis.ecfiles import Spectrum, SpectrumMeta

#: Where a run directory or export keeps an impedance point's fields.
POINT_FIELDS = ("index", "n_points", "freq_hz", "z_re_ohm", "z_im_ohm")


def spectra_from_points(points: Sequence[Mapping[str, Any]], source: str) -> list[Spectrum]:
    """Sweeps of ``eis_point`` records (docs/publishing.md): a new sweep starts where the
    point index goes back to 0. ``z_im_ohm`` is Im Z (negative on a capacitive arc)."""
    sweeps: list[list[Mapping[str, Any]]] = []
    for p in points:
        if not sweeps or int(p["index"]) == 0:
            sweeps.append([])
        sweeps[-1].append(p)
    out = []
    for n, sweep in enumerate(sweeps):
        f = np.array([float(p["freq_hz"]) for p in sweep])
        z = np.array([complex(float(p["z_re_ohm"]), float(p["z_im_ohm"])) for p in sweep])
        meta = SpectrumMeta(source=source, format="opsims", encoding="", cycle=n)
        out.append(Spectrum(f, z, meta))
    return out


def read_recorded_spectra(path: Path, state_dir: str | Path | None = None) -> list[Spectrum]:
    """The impedance sweeps of a run directory (or run id) or of a NeXus export."""
    if path.suffix.lower() in (".nxs", ".h5", ".hdf5"):
        import h5py

        with h5py.File(path, "r") as f:
            g = f["entry/impedance"]
            cols = {k: g[k][:] for k in POINT_FIELDS}
        rows = zip(*cols.values(), strict=True)
        points = [dict(zip(POINT_FIELDS, row, strict=True)) for row in rows]
        return spectra_from_points(points, str(path))
    from opsims.export import read_records
    from opsims.replay import find_run

    run_dir = find_run(path, state_dir)
    return spectra_from_points(read_records(run_dir).eis, str(run_dir))


def is_recorded(path: Path) -> bool:
    """A run directory, a run id, or a NeXus export (rather than an EC-Lab or CSV file)."""
    from opsims.replay import names_a_run

    return names_a_run(path) or path.suffix.lower() in (".nxs", ".h5", ".hdf5")


# --- live --------------------------------------------------------------------------------


def listening(command: str, publish: str) -> None:
    """Said on stderr once subscribed, so a caller can start what it wants watched."""
    print(f"{command}: listening on {publish}", file=sys.stderr, flush=True)


def live_sweeps(
    publish: str, *, timeout_s: float | None = None, on_ready: Callable[[], None] | None = None
) -> Iterator[Spectrum]:
    """Each impedance sweep published by opsimsd, as it completes."""
    from opsims.client import Subscriber

    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    points: list[Mapping[str, Any]] = []
    n = 0
    with Subscriber(publish, ("eis", "instrument")) as sub:
        if on_ready is not None:
            on_ready()
        while deadline is None or time.monotonic() < deadline:
            msg = sub.recv(0.2)
            if msg is None:
                continue
            f = msg.fields
            if msg.topic == "eis":
                if int(f["index"]) == 0:
                    points = []
                points.append(f)
                done = int(f["index"]) + 1 == int(f["n_points"])
            else:
                done = f.get("name") == "eis_done" and bool(points)
            if done and points:
                yield spectra_from_points(points, f"{publish} sweep {n}")[0]
                points, n = [], n + 1


def live_run(
    publish: str,
    *,
    timeout_s: float | None = None,
    on_ready: Callable[[], None] | None = None,
) -> CyclingSeries:
    """The ``ec`` samples and ``run`` steps of the next run published, once it ends."""
    from opsims.client import Subscriber

    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    run_id: str | None = None
    steps: list[dict[str, Any]] = []
    host: list[np.ndarray] = []
    ewe: list[np.ndarray] = []
    current: list[np.ndarray] = []
    start_ns = 0
    scale = 1.0
    with Subscriber(publish, ("ec", "run")) as sub:
        if on_ready is not None:
            on_ready()
        while deadline is None or time.monotonic() < deadline:
            msg = sub.recv(0.2)
            if msg is None:
                continue
            f = msg.fields
            if msg.topic == "run":
                if run_id is None and f["step"] == -1 and f["state"] == "started":
                    run_id, start_ns = str(f["run_id"]), msg.host_ns
                if f.get("run_id") != run_id:
                    continue
                steps.append({**f, "journal_ns": msg.host_ns})
                if f["step"] == -1 and f["state"] != "started":
                    break
            elif run_id is not None and f.get("run_id") == run_id:
                s = msg.arrays["samples"]
                scale = float(f.get("time_scale", 1.0))
                host.append(s["host_ns"])
                ewe.append(s["ewe_v"])
                current.append(s["current_a"])
        else:
            raise TimeoutError(f"no whole run published on {publish} within {timeout_s} s")
    if not host:
        raise ValueError(f"run {run_id}: no samples were published")
    spans = step_spans(steps, publish)
    meta = {"run_id": run_id, "live": publish}
    return with_steps(
        f"{publish} run {run_id}",
        "live",
        np.concatenate(host).astype(np.int64),
        start_ns,
        np.concatenate(ewe),
        np.concatenate(current),
        spans,
        meta,
        scale,
    )
