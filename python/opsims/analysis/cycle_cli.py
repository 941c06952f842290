"""``opsims cycle`` and ``opsims ccd``: cycle graphs judged region by region, and the
critical current density of a series (docs/cycle-analysis.md).

Only the standard library is imported here; numpy, h5py and matplotlib load when a
command runs, so registering the subcommands costs the rest of ``opsims`` nothing.
"""

from __future__ import annotations

import argparse
import json
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from opsims.analysis.cli_common import PUBLISH, add_json, add_state_dir, fail

if TYPE_CHECKING:
    from opsims.analysis.ccd import CcdRow
    from opsims.analysis.classify import Criteria, RegionReport, SegmentReport
    from opsims.analysis.cycling import CyclingSeries

INPUT_HELP = "a run directory or run id, .nxs export, EC-Lab .mpt or .mpr, or CSV"
AREA_HELP = "electrode (probe tip) area in µm² for J = |I| / area (default 1, the paper's)"


def add_cycle_parsers(sub: Any) -> None:
    """Register ``cycle`` and ``ccd`` on the ``opsims`` subparsers object."""
    cyc = sub.add_parser(
        "cycle",
        help="cycle graphs: each region cycled / failed, depleted, SEI step",
        description="Plot voltage and current against time (Fig. 2 style) and judge each "
        "region of a cycling record: plating cycled or failed, stripping depleted, the SEI "
        "step on re-plating, with the numbers each decision used. See "
        "docs/cycle-analysis.md.",
    )
    cyc.add_argument("input", nargs="?", help=INPUT_HELP + " (not with --live)")
    cyc.add_argument(
        "--live",
        action="store_true",
        help="wait for the next run opsimsd publishes and judge it when it ends",
    )
    cyc.add_argument("--publish", default=PUBLISH, help="with --live")
    cyc.add_argument("--timeout", type=float, help="with --live: give up after this many s")
    cyc.add_argument("--region", type=int, help="only this region")
    cyc.add_argument(
        "--plot",
        type=Path,
        metavar="OUT",
        help="write the cycle graph to OUT (.png, .svg or .pdf); several regions: "
        "OUT-regionN.png etc.",
    )
    _common(cyc)
    cyc.set_defaults(cycle_run=run_cycle)
    ccd = sub.add_parser(
        "ccd",
        help="critical current density of regions cycled at increasing J",
        description="Judge every region of the inputs, tabulate J, verdict and the "
        "numbers, and give the CCD: the highest J that cycled, every higher J having "
        "failed. See docs/cycle-analysis.md.",
    )
    ccd.add_argument("inputs", nargs="+", help=INPUT_HELP + " (one or more)")
    how = ccd.add_mutually_exclusive_group()
    how.add_argument(
        "--current-density-from",
        choices=("step", "file-name"),
        default="step",
        help="step: the protocol's [J=…] label, else the step's set current, else the "
        "measured current, over the area (default); file-name: J0.06 or 0.06uA in the name",
    )
    how.add_argument("--j", metavar="VALUES", help="J per region in input order: 0.02,0.04,…")
    ccd.add_argument("--plot", type=Path, metavar="OUT", help="J against verdict and levels")
    _common(ccd)
    ccd.set_defaults(cycle_run=run_ccd)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--area-um2", type=float, default=1.0, metavar="A", help=AREA_HELP)
    add_state_dir(p)
    add_json(p)


# -- opsims cycle ---------------------------------------------------------------------------


def run_cycle(args: argparse.Namespace) -> int:
    from opsims.analysis.classify import SCHEMA, Criteria, classify_series

    if not args.area_um2 > 0:
        return fail("cycle", "--area-um2 must be > 0")
    criteria = Criteria()
    if (args.input is None) == (not args.live):
        return fail("cycle", "give an INPUT or --live (not both)")
    try:
        if args.live:
            from opsims.analysis.live import listening, live_run

            ready = partial(listening, "opsims cycle", args.publish)
            series = live_run(args.publish, timeout_s=args.timeout, on_ready=ready)
        else:
            series = _load(args.input, args.state_dir)
    except (FileNotFoundError, ValueError, OSError, TimeoutError) as e:
        return fail("cycle", e)
    reports = classify_series(series, criteria, args.area_um2)
    if args.region is not None:
        reports = [r for r in reports if r.region.index == args.region]
        if not reports:
            regions = [g.index for g in series.regions]
            return fail("cycle", f"{args.input}: no region {args.region} (regions: {regions})")
    try:
        plots = _plots(args.plot, series, reports, criteria)
    except (OSError, ValueError) as e:
        return fail("cycle", f"--plot: {e}")
    if args.json:
        doc = {
            "schema": SCHEMA,
            "source": series.source,
            "format": series.format,
            "area_um2": args.area_um2,
            "criteria": criteria.to_dict(),
            "regions": [r.to_dict() for r in reports],
            "plots": plots,
        }
        print(json.dumps(doc, allow_nan=False))
        return 0
    print(f"{series.source} ({series.format}): {len(reports)} region(s)")
    for r in reports:
        print(format_region(r))
    for p in plots:
        print(f"plot: {p}")
    return 0


def _load(source: str, state_dir: Path | None) -> CyclingSeries:
    from opsims._native import JournalError
    from opsims.analysis.cycling import load_cycling

    try:
        return load_cycling(source, state_dir)
    except JournalError as e:
        raise ValueError(f"{source}: {e}") from e


def _plots(
    out: Path | None, series: CyclingSeries, reports: list[RegionReport], c: Criteria
) -> list[str]:
    if out is None:
        return []
    from opsims.analysis.cycle_plots import region_figure
    from opsims.analysis.figures import save_figure

    paths = []
    for r in reports:
        p = (
            out
            if len(reports) == 1
            else out.with_name(f"{out.stem}-region{r.region.index}{out.suffix}")
        )
        paths.append(str(save_figure(region_figure(series, r, c), p)))
    return paths


def format_region(r: RegionReport) -> str:
    flags = [r.verdict] + ["depleted"] * r.depleted + ["SEI step"] * r.sei_step
    j = "J unknown" if r.density_ua_um2 is None else f"J = {r.density_ua_um2:.3g} µA µm⁻²"
    label = f" {r.region.label}" if r.region.label else ""
    lines = [f"region {r.region.index}{label}: {j} ({r.density_source}): {', '.join(flags)}"]
    lines += [f"  {_segment_line(s)}" for s in r.segments]
    return "\n".join(lines)


def _segment_line(s: SegmentReport) -> str:
    kind = "replate" if s.replating else s.segment.kind
    head = (
        f"{kind:<7} {s.start_s / 60:7.1f} min +{s.duration_s:7.0f} s  I {s.current_a * 1e6:+.3f} µA"
    )
    if s.plating is not None:
        p = s.plating
        text = f"{p.verdict}: {p.reason}"
        if p.plateau_v is not None:
            text += f"; plateau {p.plateau_v * 1e3:.1f} mV"
        if p.failure_time_s is not None:
            text += f", failed from {p.failure_time_s:.0f} s (fall began ~{p.onset_time_s:.0f} s)"
        if p.sei is not None and p.sei.detected:
            q = p.sei
            text += (
                f"; SEI step at {q.step_time_s:.0f} s: {(q.level_before_v or 0) * 1e3:.1f} -> "
                f"{(q.level_after_v or 0) * 1e3:.1f} mV"
            )
        return f"{head}  {text}"
    if s.strip is not None:
        st = s.strip
        text = f"{st.verdict}: {st.reason}"
        if st.verdict == "depleted" and st.initial_v is not None:
            text += f"; from {st.initial_v:.3g} V, spike {st.spike_v:.3g} V"
            if st.stripped_fraction is not None:
                text += f", {100 * st.stripped_fraction:.1f} % of the plated charge"
        return f"{head}  {text}"
    return head


# -- opsims ccd -----------------------------------------------------------------------------


def run_ccd(args: argparse.Namespace) -> int:
    from opsims.analysis.ccd import SCHEMA, critical_current_density, format_table
    from opsims.analysis.classify import Criteria

    if not args.area_um2 > 0:
        return fail("ccd", "--area-um2 must be > 0")
    criteria = Criteria()
    try:
        rows = _ccd_rows(args, criteria)
    except (FileNotFoundError, ValueError, OSError) as e:
        return fail("ccd", e)
    result = critical_current_density(rows)
    plots: list[str] = []
    if args.plot is not None:
        from opsims.analysis.cycle_plots import ccd_figure
        from opsims.analysis.figures import save_figure

        try:
            plots.append(str(save_figure(ccd_figure(result, criteria), args.plot)))
        except (OSError, ValueError) as e:
            return fail("ccd", f"--plot: {e}")
    if args.json:
        doc = {
            "schema": SCHEMA,
            "area_um2": args.area_um2,
            "density_from": "values" if args.j else args.current_density_from,
            "criteria": criteria.to_dict(),
            **result.to_dict(),
            "plots": plots,
        }
        print(json.dumps(doc, allow_nan=False))
        return 0
    print(format_table(result))
    for p in plots:
        print(f"plot: {p}")
    return 0


def _ccd_rows(args: argparse.Namespace, criteria: Criteria) -> list[CcdRow]:
    from opsims.analysis.ccd import CcdRow, density_from_name
    from opsims.analysis.classify import classify_series

    found = []
    for source in args.inputs:
        series = _load(source, args.state_dir)
        found += [(source, r) for r in classify_series(series, criteria, args.area_um2)]
    given = _values(args.j, len(found)) if args.j else None
    rows = []
    for n, (source, r) in enumerate(found):
        density, how = r.density_ua_um2, r.density_source
        if given is not None:
            density, how = given[n], "--j"
        elif args.current_density_from == "file-name":
            density, how = density_from_name(source, args.area_um2), "file name"
            if density is None:
                raise ValueError(f"{source}: no J (J0.06) or current (0.06uA) in the file name")
        rows.append(CcdRow(source, r.region.index, density, how, r))
    return rows


def _values(text: str, n: int) -> list[float]:
    try:
        values = [float(v) for v in text.replace(" ", ",").split(",") if v]
    except ValueError as e:
        raise ValueError(f"--j: {e}") from e
    if len(values) != n:
        raise ValueError(f"--j: {len(values)} values for {n} regions")
    if not all(v > 0 for v in values):
        raise ValueError("--j: current densities must be > 0")
    return values
