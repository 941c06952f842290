"""The reference paper's study, end to end, on the simulator: every region recorded by
opsimsd, then analysed with the ``opsims`` commands a user would run, checked against
the simulator's ground truth and written up as a report (``report.md`` with its PNGs,
``summary.json`` with every check).

    python examples/paper/run_paper.py --out paper-report            # the full study
    python examples/paper/run_paper.py --out paper-report --preset quick

Exit status 0 when every check passes, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from analysis import analyse
from experiment import (
    DEFAULT_CONFIG,
    PRESETS,
    instruments,
    merge,
    perform,
    plan,
    wait_for_links,
    write_toml,
)
from report import write_report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="a new folder for it all")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="full")
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    parser.add_argument(
        "--analyse-only", action="store_true", help="analyse the runs already recorded in OUT"
    )
    args = parser.parse_args(argv)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    preset = PRESETS[args.preset]

    def say(text: str) -> None:
        print(text, flush=True)

    runs_file = out / "runs.json"
    if not args.analyse_only:
        import tomllib

        doc = merge(tomllib.loads(args.config.read_text()), preset.overrides())
        config = out / "opsimsd.toml"
        write_toml(doc, config)
        runs = plan(preset)
        t0 = time.monotonic()
        say(
            f"recording the study ({len(runs)} runs, preset {args.preset}, "
            f"{preset.acceleration:g}x real time) into {out}"
        )
        with open(out / "instruments.log", "w") as log, instruments(config, out, log) as inst:
            wait_for_links(inst.control)
            for run in runs:
                perform(inst, run, say)
            files = inst.sim({"cmd": "truth", "path": str((out / "truth").resolve())})["files"]
        runs_file.write_text(json.dumps([r.to_dict() for r in runs], indent=1))
        say(f"recorded in {time.monotonic() - t0:.0f} s; ground truth: {len(files)} files")
    runs_doc = json.loads(runs_file.read_text())
    t0 = time.monotonic()
    summary = analyse(out, runs_doc, say)
    summary["preset"] = args.preset
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    write_report(out, summary)
    failed = [c for c in summary["checks"] if not c["passed"]]
    say(
        f"analysed in {time.monotonic() - t0:.0f} s: {len(summary['checks']) - len(failed)} of "
        f"{len(summary['checks'])} checks pass; report: {out / 'report.md'}"
    )
    for c in failed:
        say(f"  FAILED {c['name']}: expected {c['expected']}, measured {c['measured']}")
    return 0 if not failed else 1


if __name__ == "__main__":
    sys.exit(main())
