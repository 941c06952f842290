"""A live terminal view of a running opsimsd: the cell (Ewe, I), the run step, detector
rates and per-species counts, link states and losses — from the PUB stream only, so any
number of monitors can watch without touching acquisition."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TextIO

import numpy as np
import numpy.typing as npt

from opsims.client import Subscriber
from opsims.wire import Message

MAP_CHARS = " .:-=+*#%@"
TOPICS = ("ec", "events", "run", "status", "link", "profile")


@dataclass
class LiveState:
    """What the monitor has learned from the stream so far."""

    ewe_v: float = float("nan")
    current_a: float = float("nan")
    samples: int = 0
    run: dict[str, Any] = field(default_factory=dict)
    run_over: bool = False
    rates: dict[str, float] = field(default_factory=dict)
    totals: dict[str, int] = field(default_factory=dict)
    links: dict[str, str] = field(default_factory=dict)
    profile: npt.NDArray[np.uint64] | None = None
    species: list[str] = field(default_factory=list)
    transitions: list[dict[str, Any]] = field(default_factory=list)

    def apply(self, msg: Message) -> None:
        f = msg.fields
        if msg.topic == "ec":
            s = msg.arrays["samples"]
            if len(s):
                self.ewe_v, self.current_a = float(s["ewe_v"][-1]), float(s["current_a"][-1])
                self.samples += len(s)
        elif msg.topic == "events":
            self.rates, self.totals = f["rates"], f["totals"]
        elif msg.topic == "run":
            self.run = f
            self.transitions.append(f)
            self.run_over = f["step"] == -1 and f["state"] != "started"
        elif msg.topic == "status":
            self.links = {k: v["state"] for k, v in f["links"].items()}
        elif msg.topic == "link":
            self.links[f["link"]] = f["state"]
        elif msg.topic == "profile":
            self.profile, self.species = msg.arrays["profile"], f["species"]


def line(state: LiveState, gaps: int) -> str:
    run = state.run
    step = f"{run.get('label') or run.get('kind', '')} ({run.get('state', '')})" if run else "-"
    counts = ""
    if state.profile is not None and state.profile.size:
        totals = state.profile.sum(axis=0)
        pairs = list(zip(state.species, totals, strict=False))[:4]
        counts = " ".join(f"{n} {int(c) / 1e3:.0f}k" for n, c in pairs)
    links = " ".join(f"{k}:{v}" for k, v in sorted(state.links.items()))
    return (f"Ewe {state.ewe_v * 1e3:9.1f} mV  I {state.current_a * 1e9:6.1f} nA | "
            f"{step:<28.28} | {state.rates.get('events', 0.0) / 1e6:6.2f} Mev/s  {counts} | "
            f"{links}  gaps {gaps}")  # fmt: skip


def ascii_map(m: npt.NDArray[np.float64], width: int = 48) -> list[str]:
    """An ion map as text, one character per block of pixels, darkest = most counts."""
    ny, nx = m.shape
    step = max(1, nx // width)
    rows, cols = ny // (2 * step), nx // step
    coarse = m[: rows * 2 * step, : cols * step].reshape(rows, 2 * step, cols, step).sum((1, 3))
    top = coarse.max()
    levels = (coarse / top * (len(MAP_CHARS) - 1)).astype(int) if top > 0 else coarse.astype(int)
    return ["".join(MAP_CHARS[v] for v in row) for row in levels]


def watch(
    publish: str,
    *,
    until: Callable[[LiveState], bool] = lambda s: False,
    out: TextIO = sys.stdout,
    refresh_s: float = 1.0,
) -> LiveState:
    """Print a line every `refresh_s` until `until(state)` or Ctrl-C; returns the state."""
    state = LiveState()
    with Subscriber(publish, TOPICS) as sub:
        next_line = time.monotonic()
        try:
            while not until(state):
                msg = sub.recv(0.1)
                if msg is not None:
                    state.apply(msg)
                    if msg.topic == "run":
                        f = msg.fields
                        out.write(f"\n  run {f['run_id']}: {f.get('label') or f['kind']} "
                                  f"{f['state']} {f.get('detail', '')}\n")  # fmt: skip
                if time.monotonic() >= next_line:
                    out.write("\r" + line(state, sub.gaps))
                    out.flush()
                    next_line = time.monotonic() + refresh_s
        except KeyboardInterrupt:
            pass
        out.write("\n")
    return state
