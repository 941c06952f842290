"""``opsims map``: ion maps over a depth range (Fig. 1c) and orthogonal slices, from
recorded cubes or live from the daemon (docs/ion-maps-3d.md).

Only the standard library is imported here; numpy and matplotlib load when the command
runs, so registering it costs the rest of ``opsims`` nothing.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from opsims.analysis import cli_common as common

if TYPE_CHECKING:
    from opsims.analysis.cubeset import CubeSet

MAP_SCHEMA = "opsims.map/1"
Point = tuple[float | None, float | None, float | None]


def add_map_parser(sub: Any) -> None:
    """Register ``map`` on the ``opsims`` subparsers object."""
    m = sub.add_parser(
        "map",
        help="ion maps over a depth range, dual polarity (Fig. 1c), orthogonal slices",
        description="Sum each species' raw counts over a depth range and draw the maps "
        "of both polarities side by side, each with its own colour bar (Fig. 1c), with "
        "µm axes centred on the probe; optionally xy/xz/yz slices through a point. See "
        "docs/ion-maps-3d.md.",
    )
    common.add_cube_input(m, live=True)
    common.add_selection(m)
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
    common.add_live(
        m,
        "follow the running daemon's cubes and rewrite --plot every --refresh s "
        "(needs the daemon's --config)",
        endpoints_in_config=False,
    )
    common.add_json(m)
    m.set_defaults(imaging_run=run_map)


def parse_point(text: str) -> Point:
    """``X,Y,DEPTH``, any field empty."""
    parts = text.split(",")
    if len(parts) != 3:
        raise common.CliError(f"--ortho: expected X,Y,DEPTH (e.g. 0,0,500), got {text!r}")
    try:
        values = [float(p) if p.strip() else None for p in parts]
    except ValueError:
        raise common.CliError(f"--ortho: expected numbers X,Y,DEPTH, got {text!r}") from None
    if any(v is not None and not math.isfinite(v) for v in values):
        raise common.CliError(f"--ortho: values must be finite, got {text!r}")
    return values[0], values[1], values[2]


def run_map(args: argparse.Namespace) -> int:
    if (args.input is None) == (not args.live):
        return common.fail("map", "give an INPUT or --live (not both)")
    return common.report("map", args.json, lambda: _map(args), _print_map)


def _map(args: argparse.Namespace) -> dict[str, Any]:
    species, ranges = common.selection_args(args)
    point = None if args.ortho is None else parse_point(args.ortho)
    if args.live:
        return _follow(args, species, ranges, point)
    timings: dict[str, float] = {}
    with common.timer(timings, "load"):
        cs = common.load_cube_input(args)
    return _map_outputs(args, cs, species, ranges, point, timings)


def _map_outputs(
    args: argparse.Namespace,
    cs: CubeSet,
    species: list[str] | None,
    ranges: dict[str, Any],
    point: Point | None,
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
    with common.timer(timings, "maps"):
        depth, sel = selection(cs, **ranges)
        maps = ion_maps(cs, names, sel)
    ortho = []
    if point is not None:
        with common.timer(timings, "ortho"):
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
        with common.timer(timings, "plot"):
            title = common.figure_title(cs, sel)
            files["plot"].append(common.save_plot(maps_figure(maps, title), args.plot))
            for o in ortho:
                out = common.per_species(args.plot, o.species, len(ortho), "ortho")
                files["plot"].append(common.save_plot(ortho_figure(o), out))
    if args.npy is not None:
        import numpy as np

        for m in maps:
            out = common.per_species(args.npy, m.species, len(maps))
            np.save(out, m.counts)
            files["npy"].append(str(out))
    return {
        "schema": MAP_SCHEMA,
        **common.header(cs, depth, sel),
        "maps": [m.to_dict() for m in maps],
        "ortho": [o.to_dict() for o in ortho],
        "files": files,
        "timings_s": timings,
    }


def _print_map(doc: dict[str, Any]) -> None:
    common.print_selection(doc)
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
    common.print_files(doc)


def _follow(
    args: argparse.Namespace,
    species: list[str] | None,
    ranges: dict[str, Any],
    point: Point | None,
) -> dict[str, Any]:
    """Redraw the maps of the daemon's growing cubes every ``--refresh`` s until
    ``--duration`` or ^C; the last document drawn, with how often it was redrawn."""
    import tomllib

    from opsims.analysis.cubeset import from_mirror, parameters_from_document
    from opsims.analysis.live import listening
    from opsims.client import ControlError, CubeMirror

    if args.config is None:
        raise common.CliError("--live needs the daemon's configuration file (--config)")
    if not (args.refresh > 0) or (args.duration is not None and not args.duration >= 0):
        raise common.CliError("--refresh must be > 0 and --duration >= 0")
    doc = tomllib.loads(args.config.read_text())
    detector, _ = parameters_from_document(doc)
    unknown = [s for s in species or [] if s not in detector.species]
    if unknown:
        raise common.CliError(f"no species {', '.join(unknown)} in {args.config}")
    end = math.inf if args.duration is None else time.monotonic() + args.duration
    refreshes, waiting, result = 0, "no cubes yet", None
    try:
        mirror = CubeMirror(args.publish, args.control)
    except ControlError as e:
        raise common.CliError(f"daemon at {args.control}: {e}") from e
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
        raise common.CliError(f"daemon at {args.control}: {e}") from e
    finally:
        mirror.close()
    if result is None:
        raise common.CliError(f"nothing drawn: {waiting}")
    result["live"] = {"refreshes": refreshes, "seq": mirror.seq, "syncs": mirror.syncs}
    return result
