"""Minimise the committed regression corpus (``make fuzz-cmin``; docs/fuzzing.md).

For each target, the inputs in ``rust/fuzz/corpus/<target>`` and in the fuzzer's scratch
``rust/fuzz/work/<target>`` are cut down to at most ``--per-target`` files that cover the
most code edges: libFuzzer's set-cover merge on edges alone, then, when that is still too
many, a greedy choice by the edges each file adds. Crash reproducers (``crash-*``, kept
after the bug they found was fixed) always stay. The fuzz targets must be built first
(``cargo +nightly fuzz build --fuzz-dir rust/fuzz``).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

FUZZ = Path(__file__).resolve().parent
TARGETS = ["link_stream", "tttr_records", "ptu_header", "potentiostat_wire", "journal_segment"]


def binary(target: str) -> Path:
    root = Path(os.environ.get("CARGO_TARGET_DIR", FUZZ / "target"))
    return root / "x86_64-unknown-linux-gnu" / "release" / target


def edges(exe: Path, path: Path) -> set[str]:
    """The edges one input covers (from a merge control file of it alone)."""
    with tempfile.TemporaryDirectory() as t:
        into, src = Path(t, "into"), Path(t, "src")
        into.mkdir()
        src.mkdir()
        shutil.copy(path, src)
        control = Path(t, "control")
        subprocess.run(
            [exe, "-merge=1", "-use_counters=0", f"-merge_control_file={control}", into, src],
            capture_output=True,
            check=False,
        )
        cov = [
            line.split()[2:] for line in control.read_text().splitlines() if line.startswith("COV")
        ]
    return {e for line in cov for e in line}


def minimise(target: str, per_target: int) -> None:
    exe = binary(target)
    corpus, work = FUZZ / "corpus" / target, FUZZ / "work" / target
    corpus.mkdir(parents=True, exist_ok=True)
    crashes = sorted(corpus.glob("crash-*"))
    with tempfile.TemporaryDirectory() as t:
        merged = Path(t)
        sources = [str(d) for d in (corpus, work) if d.is_dir()]
        subprocess.run(
            [exe, "-set_cover_merge=1", "-use_counters=0", "-timeout=10", merged, *sources],
            capture_output=True,
            check=True,
        )
        # libFuzzer names merged inputs by their SHA-1: the reproducers are there already.
        known = {hashlib.sha1(c.read_bytes()).hexdigest() for c in crashes}
        files = [p for p in merged.iterdir() if p.name not in known]
        cover = {p: edges(exe, p) for p in files}
        chosen: list[Path] = []
        covered: set[str] = set()
        while len(chosen) < per_target - len(crashes):
            best = max(
                cover, key=lambda p: (len(cover[p] - covered), -p.stat().st_size), default=None
            )
            if best is None or not cover[best] - covered:
                break
            chosen.append(best)
            covered |= cover.pop(best)
        for old in corpus.iterdir():
            if not old.name.startswith("crash-"):
                old.unlink()
        for p in chosen:
            data = p.read_bytes()
            (corpus / hashlib.sha1(data).hexdigest()).write_bytes(data)
    total = set().union(covered, *cover.values())
    kept = 100 * len(covered) / max(len(total), 1)
    found = f"{len(chosen)} files + {len(crashes)} crash reproducers"
    print(f"{target}: {found}, {kept:.1f} % of {len(total)} edges")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-target", type=int, default=40)
    parser.add_argument("targets", nargs="*", default=TARGETS)
    args = parser.parse_args()
    for target in args.targets:
        minimise(target, args.per_target)


if __name__ == "__main__":
    main()
