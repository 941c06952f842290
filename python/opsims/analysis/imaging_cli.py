"""``opsims map`` and ``opsims render3d``: ion maps (Fig. 1c), orthogonal slices, 3D
renders of raw total counts (Figs. 5, 6), transport columns, and volume exports for
ParaView and other tools (docs/ion-maps-3d.md).

Only the standard library is imported here; numpy, scipy, h5py and matplotlib load when
a command runs, so registering the subcommands costs the rest of ``opsims`` nothing.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from opsims.analysis.cubeset import CubeSet
    from opsims.analysis.maps import DepthAxis, SliceRange

INPUT_HELP = "a run directory or run id, a NeXus export (.nxs), or an .npz (with --config)"
PUBLISH = "tcp://127.0.0.1:7410"
CONTROL = "tcp://127.0.0.1:7411"
MAP_SCHEMA = "opsims.map/1"
RENDER_SCHEMA = "opsims.render3d/1"
_NUMBER = r"\s*(\d+(?:\.\d*)?(?:[eE][+]?\d+)?)\s*"


def add_imaging_parsers(sub: Any) -> None:
    """Register ``map`` and ``render3d`` on the ``opsims`` subparsers object."""
    m = sub.add_parser(
        "map",
        help="ion maps over a depth range, dual polarity (Fig. 1c), orthogonal slices",
        description="Sum each species' raw counts over a depth range and draw the maps "
        "of both polarities side by side, each with its own colour bar (Fig. 1c), with "
        "µm axes centred on the probe; optionally xy/xz/yz slices through a point. See "
        "docs/ion-maps-3d.md.",
    )
    m.add_argument("input", nargs="?", help=INPUT_HELP + "; not with --live")
    _selection(m)
    m.add_argument(
        "--ortho",
        metavar="X,Y,DEPTH",
        help="also the xy, xz and yz planes through this point (x, y in µm from the probe, "
        "depth in nm; pixel and slice indices without calibration; an empty field: the "
        "centre), one figure per species next to --plot: OUT-ortho-SPECIES.png",
    )
    m.add_argument("--plot", type=Path, metavar="OUT", help="the maps figure (.png/.svg/.pdf)")
    m.add_argument(
        "--npy",
        type=Path,
        metavar="OUT",
        help="each map as uint64 [y, x]; several species: OUT-SPECIES.npy",
    )
    m.add_argument(
        "--live",
        action="store_true",
        help="follow the running daemon's cubes and rewrite --plot every --refresh s "
        "(needs the daemon's --config)",
    )
    m.add_argument("--publish", default=PUBLISH, help="with --live: the daemon's PUB endpoint")
    m.add_argument("--control", default=CONTROL, help="with --live: its control endpoint")
    m.add_argument("--refresh", type=float, default=2.0, metavar="S", help="with --live (2 s)")
    m.add_argument(
        "--duration", type=float, metavar="S", help="with --live: stop after S s (default: ^C)"
    )
    _common(m)
    m.set_defaults(imaging_run=run_map)

    r = sub.add_parser(
        "render3d",
        help="3D renders of raw total counts (Figs. 5, 6), columns, .vti/.h5/.npy export",
        description="Sum a species' cube into at most N voxels per axis and draw the "
        "voxels above a threshold, coloured by raw total counts with the surface at the "
        "top (Figs. 5, 6); several species side by side with their own colour bars. "
        "Optionally find the high-count columns and export the volume for ParaView "
        "(.vti), HDF5 or numpy. See docs/ion-maps-3d.md.",
    )
    r.add_argument("input", help=INPUT_HELP)
    _selection(r)
    level = r.add_mutually_exclusive_group()
    level.add_argument(
        "--percentile",
        type=float,
        metavar="P",
        help="draw the voxels at or above this percentile of the binned counts (default 95)",
    )
    level.add_argument(
        "--threshold", type=float, metavar="N", help="draw the voxels with at least N counts"
    )
    r.add_argument(
        "--bin", type=int, default=64, metavar="N", help="at most N voxels along each axis (64)"
    )
    r.add_argument("--plot", type=Path, metavar="OUT", help="the 3D figure (.png/.svg/.pdf)")
    r.add_argument("--vti", type=Path, metavar="OUT", help="VTK image data for ParaView")
    r.add_argument(
        "--vti-encoding",
        choices=("raw", "base64"),
        default="raw",
        help="appended raw binary (default) or inline base64",
    )
    r.add_argument(
        "--vti-data",
        choices=("cell", "point"),
        default="cell",
        help="one cell per voxel (default) or one point per voxel",
    )
    r.add_argument("--h5", type=Path, metavar="OUT", help="HDF5: one dataset per species")
    r.add_argument(
        "--npy", type=Path, metavar="OUT", help="uint32 [z, y, x]; several: OUT-SPECIES.npy"
    )
    r.add_argument(
        "--columns",
        action="store_true",
        help="find each species' high-count columns over the depth range (mark them on the plot)",
    )
    r.add_argument(
        "--k-sigma", type=float, default=5.0, metavar="K", help="with --columns: detection (5)"
    )
    _common(r)
    r.set_defaults(imaging_run=run_render3d)


def _selection(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--species",
        action="append",
        metavar="S[,S...]",
        help="species, comma-separated or repeated (map: all; render3d: Na+ or the first)",
    )
    rng = p.add_mutually_exclusive_group()
    rng.add_argument("--depth-nm", metavar="A-B", help="slices whose centre lies in A..B nm")
    rng.add_argument("--slices", metavar="A:B", help="slices A to B-1 (either may be empty)")
    p.add_argument(
        "--crater-depth-nm",
        type=float,
        metavar="D",
        help="measured crater depth: calibrates depth as D spread evenly over the frames "
        "(instead of the configured sputter rate)",
    )


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--state-dir", type=Path, help="for run ids: default $OPSIMS_STATE_DIR or ./state"
    )
    p.add_argument(
        "--config", type=Path, help="the daemon's configuration file: detector and [sims]"
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")


def main(argv: list[str] | None = None) -> int:
    """``opsims map`` and ``opsims render3d`` on their own (as ``opsims`` dispatches them)."""
    parser = argparse.ArgumentParser(prog="opsims")
    sub = parser.add_subparsers(dest="command", required=True)
    add_imaging_parsers(sub)
    args = parser.parse_args(argv)
    run: Callable[[argparse.Namespace], int] = args.imaging_run
    return int(run(args))


class _Bad(Exception):
    """Bad input: one line on stderr, exit code 2."""


def _fail(command: str, message: object) -> int:
    print(f"opsims {command}: {message}", file=sys.stderr)
    return 2


def _errors() -> tuple[type[BaseException], ...]:
    from opsims._native import OpsimsError

    return (_Bad, OpsimsError, OSError, ValueError, KeyError)


# --- option parsing ------------------------------------------------------------------------


def parse_depth_range(text: str) -> tuple[float, float]:
    """``A-B`` in nm."""
    match = re.fullmatch(_NUMBER + "-" + _NUMBER, text)
    if match is None:
        raise _Bad(f"--depth-nm: expected A-B in nm (e.g. 200-2000), got {text!r}")
    return float(match[1]), float(match[2])


def parse_slices(text: str) -> tuple[int | None, int | None]:
    """``A:B``, either side empty."""
    match = re.fullmatch(r"\s*(\d*)\s*:\s*(\d*)\s*", text)
    if match is None:
        raise _Bad(f"--slices: expected A:B slice indices (e.g. 10:200), got {text!r}")
    return (int(match[1]) if match[1] else None, int(match[2]) if match[2] else None)


def parse_point(text: str) -> tuple[float | None, float | None, float | None]:
    """``X,Y,DEPTH``, any field empty."""
    parts = text.split(",")
    if len(parts) != 3:
        raise _Bad(f"--ortho: expected X,Y,DEPTH (e.g. 0,0,500), got {text!r}")
    try:
        values = [float(p) if p.strip() else None for p in parts]
    except ValueError:
        raise _Bad(f"--ortho: expected numbers X,Y,DEPTH, got {text!r}") from None
    if any(v is not None and not math.isfinite(v) for v in values):
        raise _Bad(f"--ortho: values must be finite, got {text!r}")
    return values[0], values[1], values[2]


def _species(given: list[str] | None) -> list[str] | None:
    if not given:
        return None
    names = [s.strip() for item in given for s in item.split(",") if s.strip()]
    if not names:
        raise _Bad("--species: no species named")
    return list(dict.fromkeys(names))


def _range_args(args: argparse.Namespace) -> dict[str, Any]:
    crater = args.crater_depth_nm
    if crater is not None and not (math.isfinite(crater) and crater > 0):
        raise _Bad(f"--crater-depth-nm must be > 0, got {crater:g}")
    return {
        "depth_nm": None if args.depth_nm is None else parse_depth_range(args.depth_nm),
        "slices": None if args.slices is None else parse_slices(args.slices),
        "crater_depth_nm": crater,
    }


def _load(args: argparse.Namespace) -> CubeSet:
    from opsims.analysis.cubeset import load_cubes

    path = Path(args.input)
    if path.suffix in (".nxs", ".h5", ".hdf5", ".npz") and not path.exists():
        raise _Bad(f"{path}: no such file")
    if args.config is not None and not args.config.is_file():
        raise _Bad(f"--config {args.config}: no such file")
    cs = load_cubes(args.input, state_dir=args.state_dir, config=args.config)
    if not cs.cubes:
        raise _Bad(f"{cs.source}: no cubes")
    return cs


def per_species(out: Path, species: str, n: int, tag: str = "") -> Path:
    """``out`` for one species; ``out-[tag-]SPECIES.ext`` when there are several."""
    if n == 1 and not tag:
        return out
    middle = f"{tag}-" if tag else ""
    return out.with_name(f"{out.stem}-{middle}{species}{out.suffix}")


@contextmanager
def _timer(timings: dict[str, float], name: str) -> Iterator[None]:
    start = time.perf_counter()
    try:
        yield
    finally:
        timings[name] = round(timings.get(name, 0.0) + time.perf_counter() - start, 4)


def _header(cs: CubeSet, depth: DepthAxis, sel: SliceRange) -> dict[str, Any]:
    return {
        "source": cs.source,
        "run_id": cs.run_id,
        "shape": list(cs.shape),
        "species_available": cs.species,
        "pixel_um": cs.pixel_um,
        "depth": {"calibration": depth.calibration, "unit": depth.unit},
        "selection": sel.to_dict(),
    }


def _print_json(doc: dict[str, Any]) -> None:
    from opsims.analysis.jsonable import json_safe

    print(json.dumps(json_safe(doc), allow_nan=False))


def _save(fig: Any, out: Path) -> str:
    """Write a figure atomically, so a viewer polling the file never reads half of it."""
    from opsims.analysis.maps import save_figure

    tmp = out.with_name(f".{out.stem}.partial{out.suffix}")
    try:
        save_figure(fig, tmp)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return str(out)


# --- opsims map ----------------------------------------------------------------------------


def run_map(args: argparse.Namespace) -> int:
    if (args.input is None) == (not args.live):
        return _fail("map", "give an INPUT or --live (not both)")
    try:
        species = _species(args.species)
        ranges = _range_args(args)
        point = None if args.ortho is None else parse_point(args.ortho)
        if args.live:
            return _run_live(args, species, ranges, point)
        timings: dict[str, float] = {}
        with _timer(timings, "load"):
            cs = _load(args)
        doc = _map_outputs(args, cs, species, ranges, point, timings)
    except _errors() as e:
        return _fail("map", _message(e))
    if args.json:
        _print_json(doc)
    else:
        _print_map(doc)
    return 0


def _message(e: BaseException) -> str:
    # A KeyError's str() is its repr; the others read as sentences already.
    return str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)


def _map_outputs(
    args: argparse.Namespace,
    cs: CubeSet,
    species: list[str] | None,
    ranges: dict[str, Any],
    point: tuple[float | None, float | None, float | None] | None,
    timings: dict[str, float],
) -> dict[str, Any]:
    from opsims.analysis.maps import (
        check_species,
        ion_maps,
        maps_figure,
        ortho_figure,
        ortho_slices,
        selection,
    )

    names = cs.species if species is None else species
    check_species(cs, names)
    with _timer(timings, "maps"):
        depth, sel = selection(cs, **ranges)
        maps = ion_maps(cs, names, sel)
    ortho = []
    if point is not None:
        with _timer(timings, "ortho"):
            ortho = [
                ortho_slices(
                    cs,
                    s,
                    x=point[0],
                    y=point[1],
                    depth=point[2],
                    crater_depth_nm=ranges["crater_depth_nm"],
                )
                for s in names
            ]
    files: dict[str, list[str]] = {"plot": [], "npy": []}
    if args.plot is not None:
        with _timer(timings, "plot"):
            title = f"{Path(cs.source).name}: {_range_title(sel)}"
            files["plot"].append(_save(maps_figure(maps, title), args.plot))
            for o in ortho:
                out = per_species(args.plot, o.species, len(ortho), "ortho")
                files["plot"].append(_save(ortho_figure(o), out))
    if args.npy is not None:
        import numpy as np

        for m in maps:
            out = per_species(args.npy, m.species, len(maps))
            np.save(out, m.counts)
            files["npy"].append(str(out))
    return {
        "schema": MAP_SCHEMA,
        **_header(cs, depth, sel),
        "maps": [m.to_dict() for m in maps],
        "ortho": [o.to_dict() for o in ortho],
        "files": files,
        "timings_s": timings,
    }


def _range_title(sel: SliceRange) -> str:
    text = f"slices {sel.start}-{sel.stop - 1}"
    if sel.depth_nm is not None:
        text += f" ({sel.depth_nm[0]:.4g}-{sel.depth_nm[1]:.4g} nm)"
    return text


def _print_map(doc: dict[str, Any]) -> None:
    sel = doc["selection"]
    depth = "" if sel["depth_nm"] is None else " ({:.4g}-{:.4g} nm)".format(*sel["depth_nm"])
    print(f"{doc['source']}: slices {sel['start']}-{sel['stop'] - 1}{depth}")
    for m in doc["maps"]:
        print(
            f"  {m['species']:<6} {m['polarity']:<8} {m['total_counts']:>12} counts, "
            f"max {m['max_counts']} per pixel, live {m['live_time_s'] * 1e3:.3g} ms per pixel"
        )
    for o in doc["ortho"]:
        pos = o["position"]
        print(
            f"  {o['species']} planes at x={pos['x']:.4g} y={pos['y']:.4g} "
            f"{pos['lateral_unit']}, depth {pos['depth']:.4g} {pos['depth_unit']}"
        )
    for kind, paths in doc["files"].items():
        for p in paths:
            print(f"{kind}: {p}")


def _run_live(
    args: argparse.Namespace,
    species: list[str] | None,
    ranges: dict[str, Any],
    point: tuple[float | None, float | None, float | None] | None,
) -> int:
    import tomllib

    from opsims.analysis.cubeset import from_mirror, parameters_from_document
    from opsims.analysis.live import listening
    from opsims.client import ControlError, CubeMirror

    if args.config is None:
        raise _Bad("--live needs the daemon's configuration file (--config)")
    if not (args.refresh > 0) or (args.duration is not None and not args.duration >= 0):
        raise _Bad("--refresh must be > 0 and --duration >= 0")
    doc = tomllib.loads(args.config.read_text())
    detector, _ = parameters_from_document(doc)
    unknown = [s for s in species or [] if s not in detector.species]
    if unknown:
        raise _Bad(f"no species {', '.join(unknown)} in {args.config}")
    end = math.inf if args.duration is None else time.monotonic() + args.duration
    refreshes, waiting, result = 0, "no cubes yet", None
    try:
        mirror = CubeMirror(args.publish, args.control)
    except ControlError as e:
        raise _Bad(f"daemon at {args.control}: {e}") from e
    try:
        listening("opsims map", args.publish)
        due = time.monotonic()
        while time.monotonic() < end:
            if time.monotonic() >= due:
                due = time.monotonic() + args.refresh
                cs = from_mirror(mirror, doc)
                try:
                    if not cs.cubes:
                        raise ValueError("no cubes yet")
                    timings: dict[str, float] = {}
                    result = _map_outputs(args, cs, species, ranges, point, timings)
                    refreshes += 1
                except ValueError as e:  # e.g. the depth range is not reached yet
                    waiting = str(e)
            mirror.poll(timeout_s=max(0.0, min(due, end) - time.monotonic()))
    except KeyboardInterrupt:
        pass
    except ControlError as e:
        raise _Bad(f"daemon at {args.control}: {e}") from e
    finally:
        mirror.close()
    if result is None:
        raise _Bad(f"nothing drawn: {waiting}")
    result["live"] = {"refreshes": refreshes, "seq": mirror.seq, "syncs": mirror.syncs}
    if args.json:
        _print_json(result)
    else:
        _print_map(result)
    return 0


# --- opsims render3d -----------------------------------------------------------------------


def run_render3d(args: argparse.Namespace) -> int:
    try:
        species = _species(args.species)
        ranges = _range_args(args)
        if args.bin < 1:
            raise _Bad(f"--bin must be >= 1, got {args.bin}")
        if args.percentile is not None and not 0 <= args.percentile < 100:
            raise _Bad(f"--percentile must be in 0..100 (exclusive), got {args.percentile:g}")
        if args.threshold is not None and not args.threshold >= 0:
            raise _Bad(f"--threshold must be >= 0 counts, got {args.threshold:g}")
        timings: dict[str, float] = {}
        with _timer(timings, "load"):
            cs = _load(args)
        doc = _render_outputs(args, cs, species, ranges, timings)
    except _errors() as e:
        return _fail("render3d", _message(e))
    if args.json:
        _print_json(doc)
    else:
        _print_render(doc)
    return 0


def _render_outputs(
    args: argparse.Namespace,
    cs: CubeSet,
    species: list[str] | None,
    ranges: dict[str, Any],
    timings: dict[str, float],
) -> dict[str, Any]:
    from opsims.analysis.maps import check_species, selection
    from opsims.analysis.render3d import binned_volume, plan_render, render_figure

    if species is None:
        species = ["Na+"] if "Na+" in cs.cubes else cs.species[:1]
    check_species(cs, species)
    depth, sel = selection(cs, **ranges)
    with _timer(timings, "bin"):
        volumes = [binned_volume(cs, s, sel, depth, args.bin) for s in species]
    searches, marks = _columns(args, cs, species, sel, depth, timings)
    level = {"percentile": args.percentile, "threshold": args.threshold}
    files: dict[str, list[str]] = {"plot": [], "vti": [], "h5": [], "npy": []}
    if args.plot is not None:
        with _timer(timings, "render"):
            title = f"{Path(cs.source).name}: {_range_title(sel)}"
            fig, renders = render_figure(volumes, marks=marks, title=title, **level)
            files["plot"].append(_save(fig, args.plot))
    else:
        renders = [plan_render(v, **level)[0] for v in volumes]
    with _timer(timings, "export"):
        _exports(args, cs, species, sel, depth, files)
    return {
        "schema": RENDER_SCHEMA,
        **_header(cs, depth, sel),
        "renders": [r.to_dict() for r in renders],
        "columns": [s.to_dict() for s in searches],
        "files": files,
        "timings_s": timings,
    }


def _columns(
    args: argparse.Namespace,
    cs: CubeSet,
    species: list[str],
    sel: SliceRange,
    depth: DepthAxis,
    timings: dict[str, float],
) -> tuple[list[Any], dict[str, list[tuple[float, float, float, float]]]]:
    if not args.columns:
        return [], {}
    from opsims.analysis.columns import find_columns

    if not args.k_sigma > 0:
        raise _Bad(f"--k-sigma must be > 0, got {args.k_sigma:g}")
    with _timer(timings, "columns"):
        searches = [find_columns(cs, s, sel, depth, k_sigma=args.k_sigma) for s in species]
    scale = 1e-3 if depth.calibrated else 1.0  # the render's depth axis is in µm
    marks = {
        s.species: [
            (c.centre[0], c.centre[1], c.extent[0] * scale, c.extent[1] * scale)
            for c in s.columns
            if c.extent is not None
        ]
        for s in searches
    }
    return searches, marks


def _exports(
    args: argparse.Namespace,
    cs: CubeSet,
    species: list[str],
    sel: SliceRange,
    depth: DepthAxis,
    files: dict[str, list[str]],
) -> None:
    from opsims.analysis.volume_export import write_h5, write_npy, write_vti

    if args.vti is not None:
        path = write_vti(
            args.vti,
            cs,
            species,
            sel,
            depth,
            encoding=args.vti_encoding,
            location=args.vti_data,
        )
        files["vti"].append(str(path))
    if args.h5 is not None:
        files["h5"].append(str(write_h5(args.h5, cs, species, sel, depth)))
    if args.npy is not None:
        for s in species:
            files["npy"].append(str(write_npy(per_species(args.npy, s, len(species)), cs, s, sel)))


def _print_render(doc: dict[str, Any]) -> None:
    sel = doc["selection"]
    depth = "" if sel["depth_nm"] is None else " ({:.4g}-{:.4g} nm)".format(*sel["depth_nm"])
    print(f"{doc['source']}: slices {sel['start']}-{sel['stop'] - 1}{depth}")
    for r in doc["renders"]:
        lo, hi = r["colour_range"]
        print(
            f"  {r['species']:<6} {'x'.join(map(str, r['binned_shape']))} voxels, "
            f"{r['voxels_drawn']} drawn of {r['voxels_above']} at >= "
            f"{r['threshold_counts']:.4g} counts ({r['threshold_rule']}); "
            f"colour {lo:.4g}-{hi:.4g} counts"
        )
    for s in doc["columns"]:
        print(f"  {s['species']}: {len(s['columns'])} column(s)")
        for c in s["columns"]:
            where = "({:.3g}, {:.3g})".format(*c["centre"])
            extent = ""
            if c["extent"] is not None:
                top, bottom = c["extent"]
                extent = f", depth {top:.4g}-{bottom:.4g} {c['depth_unit']}"
            print(
                f"    at {where} {c['lateral_unit']}, {c['width']:.3g} {c['lateral_unit']} "
                f"wide, peak {c['peak_counts']:.4g} counts (x{c['contrast']:.2f}){extent}"
            )
    for kind, paths in doc["files"].items():
        for p in paths:
            print(f"{kind}: {p}")


if __name__ == "__main__":
    sys.exit(main())
