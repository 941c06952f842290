"""The ``opsims`` command."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="opsims", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="bin a synthetic dual-polarity raster live, no hardware")
    demo.add_argument("--frames", type=int, default=40, help="raster frames to run (default 40)")
    args = parser.parse_args(argv)
    if args.command == "demo":
        from opsims.demo import main as demo_main

        return demo_main(args.frames)
    return 2


if __name__ == "__main__":
    sys.exit(main())
