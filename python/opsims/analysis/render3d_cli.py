"""``opsims render3d``: 3D renders of raw total counts (Figs. 5, 6), transport columns,
and volume exports for ParaView and other tools (docs/ion-maps-3d.md).

Only the standard library is imported here; numpy, scipy, h5py and matplotlib load when
the command runs, so registering it costs the rest of ``opsims`` nothing.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from opsims.analysis import cli_common as common

if TYPE_CHECKING:
    from opsims.analysis.cubeset import CubeSet
    from opsims.analysis.depth import DepthAxis
    from opsims.analysis.maps import SliceRange

RENDER_SCHEMA = "opsims.render3d/1"


def add_render3d_parser(sub: Any) -> None:
    """Register ``render3d`` on the ``opsims`` subparsers object."""
    r = sub.add_parser(
        "render3d",
        help="3D renders of raw total counts (Figs. 5, 6), columns, .vti/.h5/.npy export",
        description="Sum a species' cube into at most N voxels per axis and draw the "
        "voxels above a threshold, coloured by raw total counts with the surface at the "
        "top (Figs. 5, 6); several species side by side with their own colour bars. "
        "Optionally find the high-count columns and export the volume for ParaView "
        "(.vti), HDF5 or numpy. See docs/ion-maps-3d.md.",
    )
    common.add_cube_input(r, live=False)
    common.add_selection(r)
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
    common.add_json(r)
    r.set_defaults(imaging_run=run_render3d)


def run_render3d(args: argparse.Namespace) -> int:
    return common.report("render3d", args.json, lambda: _render(args), _print_render)


def _render(args: argparse.Namespace) -> dict[str, Any]:
    species, ranges = common.selection_args(args)
    if args.bin < 1:
        raise common.CliError(f"--bin must be >= 1, got {args.bin}")
    if args.percentile is not None and not 0 <= args.percentile < 100:
        raise common.CliError(
            f"--percentile must be in 0..100 (exclusive), got {args.percentile:g}"
        )
    if args.threshold is not None and not args.threshold >= 0:
        raise common.CliError(f"--threshold must be >= 0 counts, got {args.threshold:g}")
    timings: dict[str, float] = {}
    with common.timer(timings, "load"):
        cs = common.load_cube_input(args)
    return _render_outputs(args, cs, species, ranges, timings)


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
    with common.timer(timings, "bin"):
        volumes = [binned_volume(cs, s, sel, depth, args.bin) for s in species]
    searches, marks = _columns(args, cs, species, sel, depth, timings)
    level = {"percentile": args.percentile, "threshold": args.threshold}
    files: dict[str, list[str]] = {"plot": [], "vti": [], "h5": [], "npy": []}
    if args.plot is not None:
        with common.timer(timings, "render"):
            title = common.figure_title(cs, sel)
            fig, renders = render_figure(volumes, marks=marks, title=title, **level)
            files["plot"].append(common.save_plot(fig, args.plot))
    else:
        renders = [plan_render(v, **level)[0] for v in volumes]
    with common.timer(timings, "export"):
        _exports(args, cs, species, sel, depth, files)
    return {
        "schema": RENDER_SCHEMA,
        **common.header(cs, depth, sel),
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
        raise common.CliError(f"--k-sigma must be > 0, got {args.k_sigma:g}")
    with common.timer(timings, "columns"):
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
            out = common.per_species(args.npy, s, len(species))
            files["npy"].append(str(write_npy(out, cs, s, sel)))


def _print_render(doc: dict[str, Any]) -> None:
    common.print_selection(doc)
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
    common.print_files(doc)
