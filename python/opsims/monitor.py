"""A live terminal view of a running opsimsd: the cell (Ewe, I), the run step, detector
rates and per-species counts, link states and losses — from the PUB stream, so any
number of monitors can watch without touching acquisition (the plot view asks the
control socket for the depth profile when it starts or loses its place)."""

from __future__ import annotations

import contextlib
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TextIO

import numpy as np
import numpy.typing as npt

from opsims.client import Control, LiveProfile, Subscriber
from opsims.wire import Message

MAP_CHARS = " .:-=+*#%@"
TOPICS = ("ec", "events", "run", "status", "link", "profile", "safety")


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
    detectors: dict[str, dict[str, float]] = field(default_factory=dict)
    binned_by_species: dict[str, int] = field(default_factory=dict)
    links: dict[str, str] = field(default_factory=dict)
    live_profile: LiveProfile = field(default_factory=LiveProfile)
    transitions: list[dict[str, Any]] = field(default_factory=list)
    safety: dict[str, Any] = field(default_factory=dict)

    def apply(self, msg: Message) -> None:
        f = msg.fields
        if msg.topic == "ec":
            s = msg.arrays["samples"]
            if len(s):
                self.ewe_v, self.current_a = float(s["ewe_v"][-1]), float(s["current_a"][-1])
                self.samples += len(s)
        elif msg.topic == "events":
            self.rates, self.totals = f["rates"], f["totals"]
            self.detectors = f.get("detectors", {})
            self.binned_by_species = f.get("binned_by_species", {})
        elif msg.topic == "run":
            self.run = f
            self.transitions.append(f)
            self.run_over = f["step"] == -1 and f["state"] != "started"
        elif msg.topic == "status":
            self.links = {k: v["state"] for k, v in f["links"].items()}
        elif msg.topic == "link":
            self.links[f["link"]] = f["state"]
        elif msg.topic == "safety":
            self.safety = f
        elif msg.topic == "profile":
            self.live_profile.apply(msg)

    @property
    def profile(self) -> npt.NDArray[np.uint64] | None:
        return self.live_profile.profile

    @property
    def species(self) -> list[str]:
        return self.live_profile.species


def line(state: LiveState, gaps: int) -> str:
    run = state.run
    step = f"{run.get('label') or run.get('kind', '')} ({run.get('state', '')})" if run else "-"
    # The most counted species first: the matrix and the island's ions.
    top = sorted(state.binned_by_species.items(), key=lambda kv: -kv[1])[:4]
    counts = " ".join(f"{n} {_si(c)}" for n, c in top)
    per_detector = " ".join(
        f"{name[:3]} {d['binned_rate_hz'] / 1e6:5.2f}" for name, d in state.detectors.items()
    )
    links = " ".join(f"{k}:{v}" for k, v in sorted(state.links.items()))
    drops = state.totals.get("link_frames_lost", 0) + state.totals.get("events_dropped", 0)
    return (f"Ewe {state.ewe_v * 1e3:9.1f} mV  I {state.current_a * 1e9:6.1f} nA | "
            f"{step:<28.28} | {state.rates.get('events', 0.0) / 1e6:6.2f} Mev/s "
            f"({per_detector} binned)  {counts} | {links}  drops {drops} gaps {gaps}")  # fmt: skip


def _si(n: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.1f}{unit}"
    return f"{n:.0f}"


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
                    if msg.topic == "safety" and msg.fields.get("state") != "armed":
                        f = msg.fields
                        out.write(
                            f"\n  SAFETY {f['state']}: {f.get('reason')} {f.get('detail', '')}\n"
                        )
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


#: EC samples kept for the cycle graph: about 1 h at the default 100 Hz.
PLOT_SAMPLES = 400_000


class CyclePlot:
    """Two panels, refreshed from the stream: the cycle graph (Ewe and I against time,
    from ``ec``) and the live depth profile (counts per slice and species, ``profile``).
    Needs matplotlib (the ``plot`` extra)."""

    def __init__(self, headless: bool) -> None:
        import matplotlib

        if headless:
            matplotlib.use("Agg")  # a file only: no display needed
        import matplotlib.pyplot as plt

        self.plt = plt
        self.fig, (self.ax_ec, self.ax_prof) = plt.subplots(2, 1, figsize=(9, 7))
        self.ax_i = self.ax_ec.twinx()
        self.ax_ec.set_title("cycle graph")
        self.ax_ec.set_xlabel("time (s)")
        self.ax_ec.set_ylabel("Ewe (V)", color="C0")
        self.ax_i.set_ylabel("I (nA)", color="C3")
        (self.ewe_line,) = self.ax_ec.plot([], [], color="C0", lw=0.8)
        (self.i_line,) = self.ax_i.plot([], [], color="C3", lw=0.8)
        self.ax_prof.set_title("depth profile")
        self.ax_prof.set_xlabel("slice")
        self.ax_prof.set_ylabel("counts")
        self.fig.tight_layout()
        self.t: list[npt.NDArray[np.float64]] = []
        self.ewe: list[npt.NDArray[np.float64]] = []
        self.cur: list[npt.NDArray[np.float64]] = []
        self.t0_ns: int | None = None
        self.n_samples = 0

    def add_samples(self, s: npt.NDArray[Any]) -> None:
        if not len(s):
            return
        if self.t0_ns is None:
            self.t0_ns = int(s["host_ns"][0])
        self.t.append((s["host_ns"] - self.t0_ns) * 1e-9)
        self.ewe.append(np.asarray(s["ewe_v"], np.float64))
        self.cur.append(np.asarray(s["current_a"], np.float64) * 1e9)
        self.n_samples += len(s)

    def draw(self, state: LiveState) -> None:
        if self.t:
            # Joined once per refresh, then trimmed to the newest PLOT_SAMPLES.
            self.t = [np.concatenate(self.t)[-PLOT_SAMPLES:]]
            self.ewe = [np.concatenate(self.ewe)[-PLOT_SAMPLES:]]
            self.cur = [np.concatenate(self.cur)[-PLOT_SAMPLES:]]
            self.ewe_line.set_data(self.t[0], self.ewe[0])
            self.i_line.set_data(self.t[0], self.cur[0])
            for ax in (self.ax_ec, self.ax_i):
                ax.relim()
                ax.autoscale_view()
        prof = state.profile
        if prof is not None and prof.size:
            ax = self.ax_prof
            ax.cla()
            ax.set_title("depth profile")
            ax.set_xlabel("slice")
            ax.set_ylabel("counts")
            z = np.arange(prof.shape[0])
            for k, name in enumerate(state.species):
                # Slices a species was not measured in (mass switching) are gaps, not 0.
                counts = np.where(prof[:, k] > 0, prof[:, k], np.nan)
                ax.plot(z, counts, lw=1, label=name)
            if prof.max() > 0:
                ax.set_yscale("log")
            ax.legend(fontsize="small", ncol=3, loc="best")
        self.fig.tight_layout()

    def show(self) -> None:
        self.fig.canvas.draw_idle()
        self.plt.pause(0.01)

    def save(self, path: str, state: LiveState) -> None:
        profile = state.profile
        # What the panels hold, for scripts and tests that cannot look at the picture.
        info = {
            "panels": [self.ax_ec.get_title(), self.ax_prof.get_title()],
            "ec_samples": self.n_samples,
            "profile_slices": 0 if profile is None else int(profile.shape[0]),
            "species": state.species,
        }
        self.fig.savefig(path, dpi=100, metadata={"Description": json.dumps(info)})


def plot(
    publish: str,
    control: str | None = None,
    *,
    plot_file: str | None = None,
    duration_s: float | None = None,
    refresh_s: float = 1.0,
) -> LiveState:
    """The live plot view (``opsims monitor --plot``): a window refreshed every
    `refresh_s`, or with `plot_file` no window and a PNG written at the end. Ends after
    `duration_s`, Ctrl-C, or (window) when it is closed. With `control` the depth
    profile is there from the start; without, from the daemon's next rebin."""
    view = CyclePlot(headless=plot_file is not None)
    end = None if duration_s is None else time.monotonic() + duration_s
    with (
        Subscriber(publish, TOPICS) as sub,
        Control(control, timeout_s=2.0) if control else contextlib.nullcontext() as ctl,
    ):
        state = LiveState(live_profile=LiveProfile(ctl))
        next_draw = time.monotonic() + refresh_s
        try:
            while end is None or time.monotonic() < end:
                msg = sub.recv(0.05)
                if msg is not None:
                    state.apply(msg)
                    if msg.topic == "ec":
                        view.add_samples(msg.arrays["samples"])
                if time.monotonic() >= next_draw:
                    next_draw = time.monotonic() + refresh_s
                    if plot_file is None:
                        if not view.plt.fignum_exists(view.fig.number):
                            break  # the window was closed
                        view.draw(state)
                        view.show()
        except KeyboardInterrupt:
            pass
    view.draw(state)
    if plot_file is not None:
        view.save(plot_file, state)
    view.plt.close(view.fig)
    return state
