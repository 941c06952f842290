"""``opsims-sim``: run the instrument simulator until SIGTERM, SIGINT or a ``stop`` on its
control port.

On start it prints one JSON line with the ports it listens on (useful with port 0), so a
test or a script can connect without guessing.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from dataclasses import replace
from pathlib import Path
from types import FrameType

from opsims._native import ConfigError
from opsims.announce import announce


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="opsims-sim", description=__doc__)
    parser.add_argument("--config", type=Path, required=True, help="TOML with [detector], [sim]")
    parser.add_argument("--truth", type=Path, help="write the ground truth here on exit")
    parser.add_argument("--any-port", action="store_true", help="let the system choose ports")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set sim.acceleration=60 (TOML syntax)",
    )
    args = parser.parse_args(argv)

    from opsims.sim.config import SimConfig
    from opsims.sim.server import Simulator

    try:
        config = SimConfig.load(args.config, args.set)
        if args.any_port:
            config = replace(config, detector_port=0, potentiostat_port=0, control_port=0)
        sim = Simulator(config)
    except ConfigError as e:
        print(f"opsims-sim: configuration error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"opsims-sim: cannot listen: {e}", file=sys.stderr)
        return 1

    def on_signal(signum: int, frame: FrameType | None) -> None:
        sim.stop_event.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    sim.start()
    announce(host=config.host, **sim.ports)
    while not sim.wait(0.5):
        pass
    sim.stop()
    if args.truth is not None:
        for path in sim.dump_truth(args.truth):
            print(json.dumps({"event": "truth", "path": str(path)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
