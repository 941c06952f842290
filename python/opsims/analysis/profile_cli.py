"""``opsims profile``: depth profiles of a run's cubes over a region of interest, dead
time corrected, normalised, with Poisson errors, or live from the daemon
(docs/depth-profiles.md).

Only the standard library is imported here; numpy, scipy and matplotlib load when the
command runs, so registering it costs the rest of ``opsims`` nothing.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from opsims.analysis.cli_common import (
    CONTROL,
    PUBLISH,
    add_cube_input,
    add_json,
    add_live,
    fail,
    input_errors,
    print_json,
)

if TYPE_CHECKING:
    from opsims.analysis.cubeset import CubeSet
    from opsims.analysis.profile import DepthProfile
    from opsims.analysis.roi import Roi

NORMALISE = ("raw", "rate", "total", "matrix", "primary")


def add_profile_parser(sub: Any) -> None:
    """Register ``profile`` on the ``opsims`` subparsers object."""
    p = sub.add_parser(
        "profile",
        help="depth profiles over a region: dead time corrected, normalised, with errors",
        description="Counts of each species against depth over a region of interest (Fig. 4 "
        "style), corrected for the detectors' dead time, optionally registered for lateral "
        "drift and normalised, with a Poisson error on every value. See "
        "docs/depth-profiles.md.",
    )
    add_cube_input(p, live=True)
    p.add_argument(
        "--species",
        action="append",
        metavar="S[,S...]",
        help="species to profile, e.g. Na+,ZrO+,SiO2- (may be repeated; default: all)",
    )
    roi = p.add_mutually_exclusive_group()
    roi.add_argument("--roi", metavar="x0:x1,y0:y1", help="rectangle in pixels (x0 <= x < x1)")
    roi.add_argument(
        "--roi-um",
        metavar="x0:x1,y0:y1",
        help="rectangle in µm from the probe at the field centre (needs [sims] fov_um)",
    )
    roi.add_argument(
        "--roi-threshold",
        metavar="SPECIES:COUNTS[:D0-D1]",
        help="the island where SPECIES' map (summed over depths D0-D1: nm when the depth is "
        "calibrated, else slices; default all) reaches COUNTS per pixel after smoothing",
    )
    p.add_argument(
        "--roi-pick",
        choices=("centre", "largest"),
        default="centre",
        help="with --roi-threshold: the region at the field centre (default) or the largest",
    )
    p.add_argument(
        "--roi-smooth",
        type=float,
        default=1.0,
        metavar="PX",
        help="with --roi-threshold: Gaussian smoothing of the map, px (default 1; 0 for none)",
    )
    p.add_argument("--outside", action="store_true", help="profile the region outside the ROI")
    p.add_argument(
        "--guard-px",
        type=int,
        default=0,
        metavar="N",
        help="outside regions leave out N px around the ROI (default 0)",
    )
    p.add_argument(
        "--compare-outside",
        action="store_true",
        help="also profile the region outside the ROI: two panels in --plot, 'outside' in "
        "--json, OUT-outside.csv beside --csv",
    )
    p.add_argument("--register", action="store_true", help="correct lateral drift between slices")
    p.add_argument(
        "--register-species",
        metavar="S,S",
        help="species summed for registration (default: the most-counted of each polarity)",
    )
    p.add_argument(
        "--reference",
        choices=("running", "first"),
        default="running",
        help="registration reference: the previous slices registered (default) or the first",
    )
    dead = p.add_mutually_exclusive_group()
    dead.add_argument(
        "--dead-time-ns", type=float, metavar="N", help="dead time of both detectors, ns"
    )
    dead.add_argument("--no-dead-time", action="store_true", help="no dead-time correction")
    p.add_argument("--normalise", choices=NORMALISE, default="raw", help="default raw counts")
    p.add_argument(
        "--total-over",
        choices=("polarity", "all"),
        default="polarity",
        help="with --normalise total: the total of the species' polarity (default) or of all",
    )
    p.add_argument(
        "--matrix",
        metavar="S[,S]",
        help="with --normalise matrix: one matrix species per polarity, e.g. ZrO+,SiO2-",
    )
    depth = p.add_mutually_exclusive_group()
    depth.add_argument(
        "--sputter-rate", type=float, metavar="NM_PER_FRAME", help="depth per raster frame, nm"
    )
    depth.add_argument(
        "--crater-depth-nm", type=float, metavar="NM", help="measured final crater depth, nm"
    )
    p.add_argument("--csv", type=Path, metavar="OUT", help="write the profile as CSV")
    p.add_argument("--plot", type=Path, metavar="OUT", help="write a plot (.png, .svg, .pdf)")
    add_json(p)
    add_live(p, "follow the running daemon's cubes", endpoints_in_config=True)
    p.set_defaults(profile_run=run_profile)


def main(argv: list[str] | None = None) -> int:
    """``opsims profile`` on its own (``python -m opsims.analysis.profile_cli ...``)."""
    parser = argparse.ArgumentParser(prog="opsims")
    add_profile_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["profile", *(sys.argv[1:] if argv is None else argv)])
    return int(args.profile_run(args))


def run_profile(args: argparse.Namespace) -> int:
    problem = _check(args)
    if problem:
        return fail("profile", problem)
    if args.live:
        return _run_live(args)
    from opsims.analysis.cubeset import load_cubes

    try:
        cubes = load_cubes(args.input, state_dir=args.state_dir, config=args.config)
    except input_errors() as e:
        return fail("profile", _message(e))
    try:
        main_profile, outside = analyse(cubes, args)
    except ValueError as e:
        return fail("profile", e)
    try:
        written = _write(args, main_profile, outside)
    except (OSError, ValueError) as e:
        return fail("profile", e)
    if args.json:
        doc = main_profile.to_json()
        if outside is not None:
            doc["outside"] = outside.to_json()
        doc["files"] = written
        print_json(doc)
        return 0
    print(format_summary(main_profile))
    if outside is not None:
        print(format_summary(outside))
    for kind, path in written.items():
        print(f"{kind}: {path}")
    return 0


def _message(e: BaseException) -> str:
    # KeyError's str() is the repr of its key: say what was missing instead.
    return f"missing {e.args[0]!r} in the input" if isinstance(e, KeyError) else str(e)


def _check(args: argparse.Namespace) -> str | None:
    if (args.input is None) == (not args.live):
        return "give an INPUT or --live (not both)"
    for name in ("dead_time_ns", "sputter_rate", "crater_depth_nm"):
        v = getattr(args, name)
        if v is not None and not (v >= 0 if name == "dead_time_ns" else v > 0):
            flag = "--" + name.replace("_", "-")
            return f"{flag} must be {'>= 0' if name == 'dead_time_ns' else '> 0'}, got {v}"
    if args.normalise == "matrix" and not args.matrix:
        return "--normalise matrix needs --matrix (e.g. --matrix ZrO+,SiO2-)"
    if args.matrix and args.normalise != "matrix":
        return "--matrix is for --normalise matrix"
    if (args.outside or args.compare_outside) and not (
        args.roi or args.roi_um or args.roi_threshold
    ):
        return "--outside and --compare-outside need an ROI (--roi, --roi-um or --roi-threshold)"
    if args.outside and args.compare_outside:
        return "give --outside or --compare-outside, not both"
    if args.guard_px < 0 or args.roi_smooth < 0:
        return "--guard-px and --roi-smooth must be >= 0"
    if args.live and not args.config:
        return "--live needs the daemon's --config (detector and [sims] parameters)"
    if args.live and not args.refresh > 0:
        return f"--refresh must be > 0, got {args.refresh}"
    return None


def _names(values: list[str] | str | None) -> list[str] | None:
    if values is None:
        return None
    items = [values] if isinstance(values, str) else values
    out = [s.strip() for v in items for s in v.split(",") if s.strip()]
    return out or None


def analyse(
    cubes: CubeSet, args: argparse.Namespace, static_roi: Roi | None = None
) -> tuple[DepthProfile, DepthProfile | None]:
    """The profile the options ask for (and the one outside the ROI with
    ``--compare-outside``). Raises ValueError with a one-line message."""
    from opsims.analysis.depth import for_cubes
    from opsims.analysis.profile import extract_profile
    from opsims.analysis.registration import estimate_drift

    registration = None
    if args.register:
        registration = estimate_drift(
            cubes, species=_names(args.register_species), reference=args.reference
        )
    depth = for_cubes(cubes, args.crater_depth_nm, args.sputter_rate)
    roi = static_roi if static_roi is not None else build_roi(cubes, args, depth, registration)
    kwargs: dict[str, Any] = {
        "species": _names(args.species),
        "registration": registration,
        "correct_dead_time": not args.no_dead_time,
        "dead_time_s": None if args.dead_time_ns is None else args.dead_time_ns * 1e-9,
        "normalise": args.normalise,
        "matrix": _names(args.matrix) or (),
        "total_over": args.total_over,
        "sputter_rate_nm_per_frame": args.sputter_rate,
        "crater_depth_nm": args.crater_depth_nm,
    }
    outside = None if roi is None else roi.complement(args.guard_px)
    main_roi = outside if args.outside else roi
    profile = extract_profile(cubes, roi=main_roi, **kwargs)
    other = extract_profile(cubes, roi=outside, **kwargs) if args.compare_outside else None
    return profile, other


def build_roi(
    cubes: CubeSet, args: argparse.Namespace, depth: Any, registration: Any = None
) -> Roi | None:
    from opsims.analysis.roi import (
        parse_rectangle,
        parse_rectangle_um,
        parse_threshold,
        threshold_roi,
    )

    _, ny, nx = cubes.shape
    if args.roi:
        return parse_rectangle(args.roi, (ny, nx))
    if args.roi_um:
        return parse_rectangle_um(args.roi_um, (ny, nx), cubes.pixel_um)
    if not args.roi_threshold:
        return None
    spec = parse_threshold(args.roi_threshold)
    slices, text = None, ""
    if spec.depth is not None:
        lo, hi = spec.depth
        slices = depth.slices_between(lo, hi)
        text = f"{lo:g}-{hi:g} nm" if depth.calibrated else f"slices {lo:g}-{hi:g}"
    return threshold_roi(
        cubes, spec.species, spec.counts, slices=slices, slices_text=text,
        smooth_px=args.roi_smooth, pick=args.roi_pick, registration=registration,
    )  # fmt: skip


def _write(
    args: argparse.Namespace, profile: DepthProfile, outside: DepthProfile | None
) -> dict[str, str]:
    written: dict[str, str] = {}
    if args.csv is not None:
        profile.to_csv(args.csv)
        written["csv"] = str(args.csv)
        if outside is not None:
            path = args.csv.with_name(f"{args.csv.stem}-outside{args.csv.suffix}")
            outside.to_csv(path)
            written["csv_outside"] = str(path)
    if args.plot is not None:
        from opsims.analysis.figures import save_figure
        from opsims.analysis.profile_plots import overlay_figure, profile_figure

        if outside is None:
            fig = profile_figure(profile)
        else:
            fig = overlay_figure([outside, profile], ["reference (outside)", "region"])
        written["plot"] = str(save_figure(fig, args.plot))
    return written


def format_summary(p: DepthProfile) -> str:
    """A few lines: where, how, and per species the totals and the first and last value."""
    area = p.roi.area_um2(p.pixel_um)
    size = f"{p.roi.area_px} px" + (f", {area:.1f} µm²" if area is not None else "")
    top = p.depth.edges[-1]
    span = f"0-{top / 1000:.3g} µm" if p.depth.calibrated else f"{p.n_slices} slices"
    lines = [
        f"{Path(p.source).name}: {p.n_slices} slices ({span}); ROI {p.roi.description} ({size}); "
        f"values in {p.unit}",
        f"  {'species':<7} {'pol':<4} {'τ ns':>5} {'raw':>12} {'corrected':>12} "
        f"{'first':>15} {'last':>15}",
    ]
    for s in p.profiles.values():
        corrected = float(s.corrected.sum()) if s.corrected.size else 0.0
        first = _value(s.value, s.sigma, 0)
        last = _value(s.value, s.sigma, -1)
        lines.append(
            f"  {s.species:<7} {s.polarity[:3]:<4} {s.dead_time_s * 1e9:5.0f} "
            f"{int(s.raw.sum()):12d} {corrected:12.6g} {first:>15} {last:>15}"
        )
    lines += [f"  note: {n}" for n in p.notes]
    return "\n".join(lines)


def _value(v: Any, s: Any, i: int) -> str:
    if not len(v) or v[i] != v[i]:
        return "-"
    return f"{float(v[i]):.4g}±{float(s[i]):.2g}"


def live_line(p: DepthProfile) -> str:
    """One line for the live view: depth reached and each species' newest value."""
    depth = f"{p.depth.edges[-1] / 1000:.3f} µm" if p.depth.calibrated else f"{p.n_slices} slices"
    parts = [f"{s.species} {_value(s.value, s.sigma, -1)}" for s in p.profiles.values()]
    return f"{p.n_slices} slices, {depth}, ROI {p.roi.area_px} px ({p.unit}): " + " ".join(parts)


# --- live -----------------------------------------------------------------------------------


def _complete(cubes: CubeSet) -> CubeSet | None:
    """The cubes without the slice still being acquired nor the slices whose content has
    not arrived: the daemon announces a slice before it has published every species of
    it (at most ``cube_rate_hz``), so the profile ends at the last slice where each
    well-counted species (10 counts a slice on average) has counts. None if no slice is
    left."""
    from dataclasses import replace

    import numpy as np

    n = cubes.shape[0] - 1
    if n < 1:
        return None
    ends = []
    for c in cubes.cubes.values():
        per_slice = c[:n].sum(axis=(1, 2), dtype=np.int64)
        if per_slice.sum() >= 10 * n:
            ends.append(int(np.flatnonzero(per_slice)[-1]) + 1)
    n = min(ends) if ends else n
    if n < 1:
        return None
    return replace(
        cubes,
        cubes={s: c[:n] for s, c in cubes.cubes.items()},
        frames_in_slice=cubes.frames_in_slice[:n],
    )


def _run_live(args: argparse.Namespace) -> int:
    import tomllib

    from opsims.analysis.cubeset import from_mirror
    from opsims.analysis.roi import RoiError
    from opsims.client import ControlError, CubeMirror

    try:
        doc = tomllib.loads(Path(args.config).read_text())
        daemon = doc.get("daemon", {})
        publish = args.publish or daemon.get("publish", PUBLISH)
        control = args.control or daemon.get("control", CONTROL)
        mirror = CubeMirror(publish, control)
    except (ControlError, FileNotFoundError, ValueError, OSError) as e:
        return fail("profile", e)
    print(f"opsims profile: following {publish}", file=sys.stderr, flush=True)
    end = None if args.duration is None else time.monotonic() + args.duration
    static: Roi | None = None
    try:
        while True:
            now = time.monotonic()
            wait = args.refresh if end is None else max(0.0, min(args.refresh, end - now))
            deadline = now + wait
            while True:
                mirror.poll(timeout_s=max(0.0, deadline - time.monotonic()))
                if time.monotonic() >= deadline:
                    break
            try:
                cubes = _complete(from_mirror(mirror, doc))
                if cubes is None:
                    print("waiting for the first complete slice", flush=True)
                else:
                    if static is None and (args.roi or args.roi_um):
                        static = build_roi(cubes, args, None)
                    profile, outside = analyse(cubes, args, static)
                    written = _write(args, profile, outside)
                    if args.json:
                        doc_out = profile.to_json()
                        doc_out["files"] = written
                        print_json(doc_out)
                    else:
                        print(live_line(profile), flush=True)
            except RoiError as e:
                if static is None and (args.roi or args.roi_um):
                    return fail("profile", e)
                # A threshold island may not be there yet: say so and keep following.
                print(f"opsims profile: {e}", file=sys.stderr, flush=True)
            except ValueError as e:
                return fail("profile", e)
            if end is not None and time.monotonic() >= end:
                return 0
    except KeyboardInterrupt:
        return 0
    except ControlError as e:
        return fail("profile", e)
    finally:
        mirror.close()


if __name__ == "__main__":
    raise SystemExit(main())
