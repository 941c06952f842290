"""``opsims map`` and ``opsims render3d``: ion maps (Fig. 1c), orthogonal slices, 3D
renders of raw total counts (Figs. 5, 6), transport columns, and volume exports for
ParaView and other tools (docs/ion-maps-3d.md). Each command is in its own module
(:mod:`opsims.analysis.map_cli`, :mod:`opsims.analysis.render3d_cli`); this one registers
both and runs either on its own.

Only the standard library is imported here; numpy, scipy, h5py and matplotlib load when
a command runs, so registering the subcommands costs the rest of ``opsims`` nothing.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

from opsims.analysis.map_cli import add_map_parser
from opsims.analysis.map_cli import run_map as run_map
from opsims.analysis.render3d_cli import add_render3d_parser
from opsims.analysis.render3d_cli import run_render3d as run_render3d


def add_imaging_parsers(sub: Any) -> None:
    """Register ``map`` and ``render3d`` on the ``opsims`` subparsers object."""
    add_map_parser(sub)
    add_render3d_parser(sub)


def main(argv: list[str] | None = None) -> int:
    """``opsims map`` and ``opsims render3d`` on their own (as ``opsims`` dispatches them)."""
    parser = argparse.ArgumentParser(prog="opsims")
    sub = parser.add_subparsers(dest="command", required=True)
    add_imaging_parsers(sub)
    args = parser.parse_args(argv)
    run: Callable[[argparse.Namespace], int] = args.imaging_run
    return int(run(args))


if __name__ == "__main__":
    sys.exit(main())
