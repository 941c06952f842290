"""``opsims eis fit``: fit an equivalent circuit to impedance spectra from a file.

Only argparse is imported here; numpy, scipy and matplotlib load when the command runs,
so registering the subcommand costs the rest of ``opsims`` nothing.
"""

from __future__ import annotations

import argparse
import json
import sys
from functools import partial
from pathlib import Path
from typing import Any

DEFAULT_CIRCUIT = "R0-p(R1,CPE1)-p(R2,CPE2)"
DEFAULT_GEOMETRY_CM_1 = 1.27e3


def add_eis_parser(sub: Any) -> None:
    """Register ``eis fit`` on the ``opsims`` subparsers object."""
    eis = sub.add_parser("eis", help="impedance analysis of EC-Lab .mpt / CSV spectra")
    eis_sub = eis.add_subparsers(dest="eis_command", required=True)
    fit = eis_sub.add_parser(
        "fit",
        help="fit an equivalent circuit (automatic initial guesses), check KK, assign arcs",
        description="Fit an equivalent circuit to each spectrum in FILE from automatic "
        "initial guesses, check the data with a linear Kramers-Kronig test, give the "
        "effective capacitance of each R||CPE arc, assign the arcs to processes by "
        "capacitance and frequency order, and compute sigma_GB. See docs/eis-analysis.md.",
    )
    fit.add_argument(
        "file",
        type=Path,
        nargs="?",
        help="EC-Lab text export (.mpt), CSV (f, Re, Im), an opsimsd run directory or run "
        "id, or its NeXus export (.nxs); not with --live",
    )
    fit.add_argument(
        "--live",
        action="store_true",
        help="fit each impedance sweep opsimsd publishes as it completes",
    )
    fit.add_argument("--publish", default="tcp://127.0.0.1:7410", help="with --live")
    fit.add_argument("--sweeps", type=int, default=1, help="with --live: how many (default 1)")
    fit.add_argument("--timeout", type=float, help="with --live: give up after this many s")
    fit.add_argument("--state-dir", type=Path, help="for a run id: default $OPSIMS_STATE_DIR")
    fit.add_argument(
        "--circuit", default=DEFAULT_CIRCUIT, help=f"circuit string (default {DEFAULT_CIRCUIT})"
    )
    fit.add_argument(
        "--weighting",
        choices=("modulus", "proportional", "unit"),
        default="modulus",
        help="residual weighting (default modulus)",
    )
    fit.add_argument(
        "--geometry-cm-1",
        type=float,
        default=DEFAULT_GEOMETRY_CM_1,
        metavar="L_A",
        help="cell geometric factor L/A in cm^-1 for sigma_GB "
        f"(default {DEFAULT_GEOMETRY_CM_1:g}, from the paper's Table 1)",
    )
    fit.add_argument("--cycle", type=int, help="only the spectrum with this cycle number")
    fit.add_argument(
        "--plot",
        type=Path,
        metavar="OUT",
        help="write Nyquist, Bode and KK plots to OUT (.png or .svg); with "
        "several spectra, OUT-cycleN.png etc.",
    )
    fit.add_argument(
        "--normalise-capacitance",
        action="store_true",
        help="compare C*L/A (not C) with the capacitance ranges",
    )
    fit.add_argument("--json", action="store_true", help="print one JSON object")
    fit.set_defaults(eis_run=run_fit)


def _spectra(args: argparse.Namespace, read_file: Any) -> list[Any]:
    from opsims.analysis.live import is_recorded, listening, live_sweeps, read_recorded_spectra

    if args.live:
        got = []
        ready = partial(listening, "opsims eis fit", args.publish)
        for spectrum in live_sweeps(args.publish, timeout_s=args.timeout, on_ready=ready):
            got.append(spectrum)
            if len(got) >= args.sweeps:
                return got
        raise ValueError(f"{len(got)} of {args.sweeps} sweeps within {args.timeout} s")
    if is_recorded(args.file):
        from opsims._native import JournalError

        try:
            spectra: list[Any] = read_recorded_spectra(args.file, args.state_dir)
        except (JournalError, FileNotFoundError, KeyError) as e:
            raise ValueError(f"{args.file}: {e}") from e
        if not spectra:
            raise ValueError(f"{args.file}: no impedance sweep recorded")
        return spectra
    result: list[Any] = read_file(args.file)
    return result


def run_fit(args: argparse.Namespace) -> int:
    from opsims.analysis.assignment import BY_KEY
    from opsims.analysis.capacitance import FORMULA
    from opsims.analysis.circuits import CircuitError
    from opsims.analysis.ecfiles import EcFileError, read_spectra
    from opsims.analysis.eis_fit import FitError
    from opsims.analysis.eis_report import SCHEMA, analyse_spectrum, format_report, format_table

    if (args.file is None) == (not args.live):
        print("opsims eis fit: give a FILE or --live (not both)", file=sys.stderr)
        return 2
    try:
        spectra = _spectra(args, read_spectra)
        if args.cycle is not None:
            cycles = [s.meta.cycle for s in spectra]
            spectra = [s for s in spectra if s.meta.cycle == args.cycle]
            if not spectra:
                print(
                    f"opsims eis fit: {args.file}: no cycle {args.cycle} (cycles: {cycles})",
                    file=sys.stderr,
                )
                return 2
        reports = [
            analyse_spectrum(
                s,
                args.circuit,
                args.weighting,
                args.geometry_cm_1,
                normalise=args.normalise_capacitance,
            )
            for s in spectra
        ]
    except (EcFileError, CircuitError, FitError, ValueError) as e:
        print(f"opsims eis fit: {e}", file=sys.stderr)
        return 2
    plots: list[str] = []
    if args.plot is not None:
        from opsims.analysis.eis_plots import save_report_plot

        for r in reports:
            out = args.plot
            if len(reports) > 1:
                out = out.with_name(f"{out.stem}-cycle{r.spectrum.meta.cycle}{out.suffix}")
            try:
                plots.append(str(save_report_plot(r, out)))
            except (OSError, ValueError) as e:
                print(f"opsims eis fit: --plot: {e}", file=sys.stderr)
                return 2
    if args.json:
        doc = {
            "schema": SCHEMA,
            "file": str(args.file),
            "circuit": reports[0].fit.circuit.text,
            "weighting": args.weighting,
            "geometry_cm_1": args.geometry_cm_1,
            "capacitance_formula": FORMULA,
            "capacitance_basis": "C*L/A" if args.normalise_capacitance else "C as fitted",
            "processes": {
                k: {
                    "label": p.label,
                    "c_low_f": p.c_low_f,
                    "c_high_f": p.c_high_f,
                    "source": p.source,
                }
                for k, p in BY_KEY.items()
            },
            "spectra": [r.to_dict() for r in reports],
            "plots": plots,
        }
        print(json.dumps(doc, allow_nan=False))
        return 0
    for r in reports:
        print(format_report(r))
        print()
    print("Table (as the reference paper's Table 1; ± one standard error):")
    print(format_table(reports))
    for p in plots:
        print(f"plot: {p}")
    return 0
