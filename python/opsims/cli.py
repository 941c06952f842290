"""The ``opsims`` command."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="opsims", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="a live operando experiment on the simulator, no hardware")
    demo.add_argument("--config", type=Path, default=Path("config/opsimsd.toml"))
    demo.add_argument(
        "--acceleration", type=float, default=30.0, help="simulated s per wall s (default 30)"
    )
    demo.add_argument(
        "--plate-minutes", type=float, default=30.0, help="simulated plating time (default 30)"
    )
    args = parser.parse_args(argv)
    if args.command == "demo":
        from opsims.demo import main as demo_main

        return demo_main(args.config, args.acceleration, args.plate_minutes)
    return 2


if __name__ == "__main__":
    sys.exit(main())
