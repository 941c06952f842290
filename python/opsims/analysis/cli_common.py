"""What the analysis commands share: bad input said in one line with exit code 2, the
options that name the cubes to read and those that follow the running daemon, and the
depth selection, outputs and printing of ``opsims map`` and ``opsims render3d``.

Only the standard library is imported here; the analyses load when a command runs, so
registering the subcommands costs the rest of ``opsims`` nothing.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from opsims.analysis.cubeset import CubeSet
    from opsims.analysis.depth import DepthAxis
    from opsims.analysis.maps import SliceRange

PUBLISH = "tcp://127.0.0.1:7410"
CONTROL = "tcp://127.0.0.1:7411"
CUBES_HELP = (
    "a run directory or run id, a NeXus export (.nxs), or an .npz from opsims replay or "
    "snapshot --out (with --config)"
)
STATE_DIR_HELP = "for run ids: default $OPSIMS_STATE_DIR or ./state"
_NUMBER = r"\s*(\d+(?:\.\d*)?(?:[eE][+]?\d+)?)\s*"


class CliError(Exception):
    """Bad input: one line on stderr, exit code 2."""


def fail(command: str, message: object) -> int:
    """Say on one line of stderr what is wrong; returns the exit code for bad input, 2."""
    print(f"opsims {command}: {message}", file=sys.stderr)
    return 2


def input_errors() -> tuple[type[BaseException], ...]:
    """What reading and analysing an input raises when the input is bad (not a bug)."""
    from opsims._native import OpsimsError

    return (CliError, OpsimsError, OSError, ValueError, KeyError)


# --- options -------------------------------------------------------------------------------


def add_state_dir(p: argparse.ArgumentParser) -> None:
    p.add_argument("--state-dir", type=Path, help=STATE_DIR_HELP)


def add_json(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print one JSON object")


def add_cube_input(p: argparse.ArgumentParser, *, live: bool) -> None:
    """INPUT, ``--state-dir`` and ``--config``: which cubes, and their parameters. With
    ``live`` the command can follow the daemon instead (``--live``, no INPUT)."""
    if live:
        p.add_argument("input", nargs="?", help=f"{CUBES_HELP}; not with --live")
    else:
        p.add_argument("input", help=CUBES_HELP)
    add_state_dir(p)
    p.add_argument(
        "--config",
        type=Path,
        help="the daemon's configuration (TOML): detector and [sims] parameters; needed "
        f"for an .npz{' and --live' if live else ''}, overrides what a run or export carries",
    )


def add_live(p: argparse.ArgumentParser, live_help: str, *, endpoints_in_config: bool) -> None:
    """``--live`` and how to follow the daemon's cubes. With ``endpoints_in_config`` the
    endpoints default to None: the command takes them from the configuration's
    ``[daemon]`` table, else :data:`PUBLISH` and :data:`CONTROL`."""
    where = "the config's, else " if endpoints_in_config else ""
    p.add_argument("--live", action="store_true", help=live_help)
    p.add_argument(
        "--publish",
        default=None if endpoints_in_config else PUBLISH,
        help=f"with --live: the daemon's PUB endpoint (default: {where}{PUBLISH})",
    )
    p.add_argument(
        "--control",
        default=None if endpoints_in_config else CONTROL,
        help=f"with --live: its control endpoint (default: {where}{CONTROL})",
    )
    p.add_argument(
        "--refresh", type=float, default=2.0, metavar="S", help="with --live: s between updates (2)"
    )
    p.add_argument(
        "--duration", type=float, metavar="S", help="with --live: stop after S s (default: ^C)"
    )


# --- input ---------------------------------------------------------------------------------


def load_cube_input(args: argparse.Namespace) -> CubeSet:
    """The cubes of ``args.input`` (with ``--state-dir`` and ``--config``); CliError
    when a file named is not there or the input holds no cubes."""
    from opsims.analysis.cubeset import load_cubes

    path = Path(args.input)
    if path.suffix in (".nxs", ".h5", ".hdf5", ".npz") and not path.exists():
        raise CliError(f"{path}: no such file")
    if args.config is not None and not args.config.is_file():
        raise CliError(f"--config {args.config}: no such file")
    cs = load_cubes(args.input, state_dir=args.state_dir, config=args.config)
    if not cs.cubes:
        raise CliError(f"{cs.source}: no cubes")
    return cs


# --- output --------------------------------------------------------------------------------


def print_json(doc: dict[str, Any]) -> None:
    from opsims.analysis.jsonable import json_safe

    print(json.dumps(json_safe(doc), allow_nan=False), flush=True)


def report(
    command: str,
    as_json: bool,
    make: Callable[[], dict[str, Any]],
    text: Callable[[dict[str, Any]], None],
) -> int:
    """Print the document ``make`` returns, as one JSON object or as text, and return 0;
    bad input (:func:`input_errors`) is one line on stderr and exit code 2."""
    try:
        doc = make()
    except input_errors() as e:
        # A KeyError's str() is its repr; the others read as sentences already.
        return fail(command, e.args[0] if isinstance(e, KeyError) and e.args else e)
    if as_json:
        print_json(doc)
    else:
        text(doc)
    return 0


def save_plot(fig: Any, out: Path) -> str:
    """Write a figure atomically, so a viewer polling the file never reads half of it."""
    from opsims.analysis.figures import save_figure

    tmp = out.with_name(f".{out.stem}.partial{out.suffix}")
    try:
        save_figure(fig, tmp)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return str(out)


def per_species(out: Path, species: str, n: int, tag: str = "") -> Path:
    """``out`` for one species; ``out-[tag-]SPECIES.ext`` when there are several."""
    if n == 1 and not tag:
        return out
    middle = f"{tag}-" if tag else ""
    return out.with_name(f"{out.stem}-{middle}{species}{out.suffix}")


@contextmanager
def timer(timings: dict[str, float], name: str) -> Iterator[None]:
    start = time.perf_counter()
    try:
        yield
    finally:
        timings[name] = round(timings.get(name, 0.0) + time.perf_counter() - start, 4)


# --- map and render3d: which species and slices ------------------------------------------


def add_selection(p: argparse.ArgumentParser) -> None:
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


def parse_depth_range(text: str) -> tuple[float, float]:
    """``A-B`` in nm."""
    match = re.fullmatch(_NUMBER + "-" + _NUMBER, text)
    if match is None:
        raise CliError(f"--depth-nm: expected A-B in nm (e.g. 200-2000), got {text!r}")
    return float(match[1]), float(match[2])


def parse_slices(text: str) -> tuple[int | None, int | None]:
    """``A:B``, either side empty."""
    match = re.fullmatch(r"\s*(\d*)\s*:\s*(\d*)\s*", text)
    if match is None:
        raise CliError(f"--slices: expected A:B slice indices (e.g. 10:200), got {text!r}")
    return (int(match[1]) if match[1] else None, int(match[2]) if match[2] else None)


def selection_args(args: argparse.Namespace) -> tuple[list[str] | None, dict[str, Any]]:
    """``--species`` (None when not given) and the depth or slice range, as
    ``maps.selection`` takes it."""
    return _species(args.species), _range(args)


def _species(given: list[str] | None) -> list[str] | None:
    if not given:
        return None
    names = [s.strip() for item in given for s in item.split(",") if s.strip()]
    if not names:
        raise CliError("--species: no species named")
    return list(dict.fromkeys(names))


def _range(args: argparse.Namespace) -> dict[str, Any]:
    crater = args.crater_depth_nm
    if crater is not None and not (math.isfinite(crater) and crater > 0):
        raise CliError(f"--crater-depth-nm must be > 0, got {crater:g}")
    return {
        "depth_nm": None if args.depth_nm is None else parse_depth_range(args.depth_nm),
        "slices": None if args.slices is None else parse_slices(args.slices),
        "crater_depth_nm": crater,
    }


def header(cs: CubeSet, depth: DepthAxis, sel: SliceRange) -> dict[str, Any]:
    """The JSON keys every map and render3d document starts with."""
    return {
        "source": cs.source,
        "run_id": cs.run_id,
        "shape": list(cs.shape),
        "species_available": cs.species,
        "pixel_um": cs.pixel_um,
        "depth": {"calibration": depth.calibration, "unit": depth.unit},
        "selection": sel.to_dict(),
    }


def _range_text(start: int, stop: int, depth_nm: Sequence[float] | None) -> str:
    text = f"slices {start}-{stop - 1}"
    if depth_nm is not None:
        text += f" ({depth_nm[0]:.4g}-{depth_nm[1]:.4g} nm)"
    return text


def figure_title(cs: CubeSet, sel: SliceRange) -> str:
    """The source's name and the slices drawn."""
    return f"{Path(cs.source).name}: {_range_text(sel.start, sel.stop, sel.depth_nm)}"


def print_selection(doc: dict[str, Any]) -> None:
    """The first line of a map or render3d text summary: the source and its slices."""
    sel = doc["selection"]
    print(f"{doc['source']}: {_range_text(sel['start'], sel['stop'], sel['depth_nm'])}")


def print_files(doc: dict[str, Any]) -> None:
    for kind, paths in doc["files"].items():
        for p in paths:
            print(f"{kind}: {p}")
