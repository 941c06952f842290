"""Run protocols: the paper's experiments as a list of steps, and the runner that drives
the potentiostat through them (docs/protocols.md).

Step times are in the instrument's own seconds (sample ticks), so a protocol means the
same on hardware and on the time-accelerated simulator. The cell is put at open circuit
between steps and whenever a run ends, however it ends.
"""

from __future__ import annotations

import enum
import itertools
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from opsims._native import ConfigError
from opsims.config_table import TableReader, as_float
from opsims.sim.sims import BEAM_MODES

KINDS = ("rest", "constant_current", "strip", "eis", "new_region", "beam", "profile")

#: Expanding a protocol makes at most this many steps, counting every copy a series makes
#: at every depth of nesting and every density of every series: series multiply, and a
#: control message must not keep the daemon expanding (docs/protocols.md).
MAX_EXPANSION = 100_000


class _Budget:
    """What is left of :data:`MAX_EXPANSION` while one protocol expands."""

    def __init__(self) -> None:
        self.left = MAX_EXPANSION

    def spend(self, path: str, n: int = 1) -> None:
        self.left -= n
        if self.left < 0:
            raise ConfigError(
                f"{path}: the protocol expands to more than {MAX_EXPANSION} steps "
                "(series multiply their steps)"
            )


@dataclass(frozen=True)
class Step:
    kind: str
    label: str
    current_a: float = 0.0
    duration_s: float = math.inf
    until_v: float | None = None  # stop when |Ewe| reaches this
    until_charge_c: float | None = None  # stop when |charge passed in the step| reaches this
    depletion_v: float = 5.0  # strip: |Ewe| above this means the reservoir is empty
    f_start_hz: float = 7e6
    f_stop_hz: float = 100.0
    points_per_decade: int = 10
    amplitude_v: float = 0.3
    mode: str = ""  # beam: the SIMS beam mode to set
    beam_after: str = "off"  # profile: the beam mode once the profile is done

    @property
    def voltage_stop(self) -> float | None:
        """The |Ewe| that ends this current step: the instrument is told it with the
        current (so it opens the circuit at that very sample, however fast the cell
        moves), the native step stop is armed with it, and the runner checks it too."""
        if self.kind == "strip":
            return self.depletion_v
        return self.until_v if self.kind == "constant_current" else None


@dataclass(frozen=True)
class RunProtocol:
    name: str
    steps: tuple[Step, ...]

    @classmethod
    def from_mapping(cls, table: Mapping[str, Any], path: str = "protocol") -> RunProtocol:
        """Check a protocol (TOML or a control message) and expand its series."""
        r = TableReader(table, path)
        name = r.get("name", str, "protocol")
        raw = r.get("steps", list)
        r.reject_unknown()
        steps: list[Step] = []
        budget = _Budget()
        for i, item in enumerate(raw):
            steps += _expand(item, f"{path}.steps[{i}]", budget)
        if not steps:
            raise r.error("steps", "a protocol needs at least one step")
        return cls(name, tuple(steps))


def _expand(item: Any, path: str, budget: _Budget) -> list[Step]:
    if not isinstance(item, Mapping):
        raise ConfigError(f"{path}: expected a table, got {type(item).__name__}")
    r = TableReader(item, path)
    kind = r.get("kind", str)
    if kind == "series":
        densities = r.get("current_densities_ua_um2", list)
        area = r.get_float("probe_area_um2", 1.0, minimum=0, exclusive_minimum=True)
        fresh = r.get("new_region", bool, True)
        inner = r.get("steps", list)
        r.reject_unknown()
        if not densities or not all(
            isinstance(j, (int, float)) and not isinstance(j, bool) and j > 0 for j in densities
        ):
            raise r.error("current_densities_ua_um2", "expected positive numbers")
        out: list[Step] = []
        for j in densities:
            budget.spend(path)
            amps = as_float(j) * area * 1e-6
            if fresh:
                out.append(Step("new_region", f"[J={j}] new region"))
            for n, sub in enumerate(inner):
                out += _series_step(sub, f"{path}.steps[{n}]", amps, f"[J={j}]", budget)
        return out
    if kind not in KINDS:
        raise r.error("kind", f"expected one of {(*KINDS, 'series')}, got {kind!r}")
    step = _step(r, kind, path)
    r.reject_unknown()
    budget.spend(path)
    return [step]


def _series_step(item: Any, path: str, amps: float, tag: str, budget: _Budget) -> list[Step]:
    """A step inside a series: `sign = -1` (plate) or `+1` (strip) times the density."""
    if not isinstance(item, Mapping):
        raise ConfigError(f"{path}: expected a table, got {type(item).__name__}")
    table = dict(item)
    sign = table.pop("sign", None)
    if sign is not None:
        if sign not in (-1, 1):
            raise TableReader(item, path).error("sign", f"expected -1 or 1, got {sign!r}")
        table["current_a"] = sign * amps
    steps = _expand(table, path, budget)
    budget.spend(path, len(steps))
    return [Step(**{**s.__dict__, "label": f"{tag} {s.label}"}) for s in steps]


def _step(r: TableReader, kind: str, path: str) -> Step:
    label = r.get("label", str, f"{kind}")
    if kind == "rest":
        return Step(kind, label, duration_s=r.get_float("duration_s", minimum=0))
    if kind == "new_region":
        return Step(kind, label)
    if kind == "beam":
        return Step(kind, label, mode=_beam_mode(r, "mode"))
    if kind == "profile":
        return Step(
            kind,
            label,
            duration_s=r.get_float("duration_s", minimum=0),
            beam_after=_beam_mode(r, "beam_after", "off"),
        )
    if kind == "eis":
        return Step(
            kind,
            label,
            f_start_hz=r.get_float("f_start_hz", 7e6, minimum=0, exclusive_minimum=True),
            f_stop_hz=r.get_float("f_stop_hz", 100.0, minimum=0, exclusive_minimum=True),
            points_per_decade=r.get("points_per_decade", int, 10),
            amplitude_v=r.get_float("amplitude_v", 0.3, minimum=0, exclusive_minimum=True),
        )
    current = r.get_float("current_a")
    if current == 0:
        raise r.error("current_a", "must not be 0 (use a rest step)")
    if kind == "strip":
        if current < 0:
            raise r.error("current_a", "stripping takes a positive current (EC-Lab sign)")
        return Step(
            kind,
            label,
            current_a=current,
            duration_s=r.get_float("max_duration_s", 600.0, minimum=0),
            depletion_v=r.get_float("depletion_v", 5.0, minimum=0, exclusive_minimum=True),
        )
    duration = r.get_float("duration_s", math.inf, minimum=0) if "duration_s" in r.table else None
    until_v = (
        r.get_float("until_v", minimum=0, exclusive_minimum=True) if "until_v" in r.table else None
    )
    until_q = r.get_float("until_charge_c", minimum=0) if "until_charge_c" in r.table else None
    if duration is None and until_v is None and until_q is None:
        raise r.error("duration_s", "needed unless until_v or until_charge_c ends the step")
    return Step(
        kind,
        label,
        current_a=current,
        duration_s=math.inf if duration is None else duration,
        until_v=until_v,
        until_charge_c=until_q,
    )


def _beam_mode(r: TableReader, key: str, default: str | None = None) -> str:
    mode: str = r.get(key, str) if default is None else r.get(key, str, default)
    if mode not in BEAM_MODES:
        raise r.error(key, f"expected one of {', '.join(BEAM_MODES)}, got {mode!r}")
    return mode


class Instrument(Protocol):
    """What the runner needs from the potentiostat link (both ends provide it)."""

    def set_current(self, amps: float, limit_v: float | None = None) -> Any: ...
    def open_circuit(self) -> Any: ...
    def start_eis(self, f_start: float, f_stop: float, ppd: int, amplitude: float) -> Any: ...


class RunState(enum.Enum):
    IDLE = "idle"
    RUNNING = "running"
    FINISHED = "finished"
    ABORTED = "aborted"


@dataclass
class Runner:
    """Drives one protocol; fed samples and instrument events by the daemon's loop."""

    instrument: Instrument
    publish: Callable[[dict[str, Any]], object]
    new_region: Callable[[], None] | None = None
    #: Sets the SIMS beam mode (``off``, ``image``, ``profile``); raises if it cannot.
    beam: Callable[[str], None] | None = None
    state: RunState = RunState.IDLE
    protocol: RunProtocol | None = None
    run_id: str = ""
    index: int = -1
    _started_s: float | None = None  # None until the step's first sample
    _charge_c: float = 0.0
    _last_s: float | None = None
    _beam_after: str | None = None  # a profile step is on: the beam mode it ends with
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    @property
    def step(self) -> Step | None:
        p = self.protocol
        return p.steps[self.index] if p and 0 <= self.index < len(p.steps) else None

    def start(self, protocol: RunProtocol, run_id: str | None = None) -> str:
        if self.state == RunState.RUNNING:
            raise RuntimeError(f"run {self.run_id} is still running")
        self.protocol = protocol
        self.run_id = run_id or f"run-{next(self._ids)}"
        self.state = RunState.RUNNING
        self.index = -1
        self._beam_after = None
        self._emit(-1, "started", detail=protocol.name)
        self._next(self._last_s)
        return self.run_id

    def stop(self, detail: str = "stopped by operator") -> None:
        """End the run now: open circuit, then finished (reason ``stop``)."""
        if self.state == RunState.RUNNING:
            self._end(RunState.FINISHED, "stop", detail)

    def abort(self, detail: str, reason: str = "abort") -> None:
        """End the run as aborted; ``reason`` is ``abort``, ``safety`` or ``shutdown``."""
        if self.state == RunState.RUNNING:
            self._end(RunState.ABORTED, reason, detail)

    def on_samples(
        self, device_s: Iterable[float], ewe_v: Iterable[float], current_a: Iterable[float]
    ) -> None:
        for t, v, i in zip(device_s, ewe_v, current_a, strict=True):
            if self._last_s is not None and self.state == RunState.RUNNING:
                self._charge_c += i * max(0.0, t - self._last_s)
            self._last_s = t
            if self.state == RunState.RUNNING:
                self._check(t, v)

    def on_eis_done(self, aborted: bool = False) -> None:
        step = self.step
        if self.state != RunState.RUNNING or step is None or step.kind != "eis":
            return
        if aborted:
            self.abort("the instrument aborted the impedance sweep")
        else:
            self._finish_step(self._last_s, "sweep", "sweep done")

    def on_voltage_stop(self, device_s: float, detail: str) -> None:
        """The instrument (``limit_reached``) or the native step stop (``step_stop``)
        ended the current step at the sample of ``device_s``. A report of a step that
        already ended (the runner's own check saw the same sample first) is ignored."""
        step = self.step
        if self.state != RunState.RUNNING or step is None or step.voltage_stop is None:
            return
        if self._started_s is not None and device_s <= self._started_s:
            return
        reason = "depletion" if step.kind == "strip" else "voltage"
        self._finish_step(device_s, reason, detail)

    def _check(self, t: float, v: float) -> None:
        step = self.step
        if step is None or step.kind in ("eis", "new_region", "beam"):
            return
        if self._started_s is None:  # the run started before any sample had arrived
            self._started_s = t
            self._emit(self.index, "started", device_s=t)
        if not math.isfinite(v):
            return  # the interlock judges non-finite samples; the protocol waits
        if step.kind == "strip" and abs(v) >= step.depletion_v:
            detail = f"|Ewe| {abs(v):.3g} V >= {step.depletion_v} V"
            self._finish_step(t, "depletion", detail)
        elif step.until_v is not None and abs(v) >= step.until_v:
            self._finish_step(t, "voltage", f"|Ewe| reached {step.until_v} V")
        elif step.until_charge_c is not None and abs(self._charge_c) >= step.until_charge_c:
            self._finish_step(t, "charge", f"charge reached {step.until_charge_c} C")
        elif t - self._started_s >= step.duration_s:  # device seconds
            self._finish_step(t, "duration", f"{step.duration_s:g} s passed")

    def _finish_step(self, t: float | None, reason: str, detail: str) -> None:
        self.instrument.open_circuit()
        if self.state != RunState.RUNNING:
            return  # the open circuit failed and aborted the run
        after, self._beam_after = self._beam_after, None
        if after is not None and not self._set_beam(after):
            return
        if self.step is not None:
            self._emit(self.index, "finished", reason, detail, device_s=t)
        self._next(t)

    def _next(self, t: float | None) -> None:
        assert self.protocol is not None
        self.index += 1
        step = self.step
        if step is None:
            self._end(RunState.FINISHED, "complete", "every step done")
            return
        self._started_s = t
        self._charge_c = 0.0
        if t is not None:
            self._emit(self.index, "started", device_s=t)
        if step.kind in ("constant_current", "strip"):
            self.instrument.set_current(step.current_a, step.voltage_stop)
        elif step.kind == "eis":
            self.instrument.start_eis(
                step.f_start_hz, step.f_stop_hz, step.points_per_decade, step.amplitude_v
            )
        elif step.kind == "new_region":
            if self.new_region is None:
                self.abort("no way to move to a new region on this instrument")
                return
            self.new_region()
            self._finish_step(t, "region", "moved to a fresh region")
        elif step.kind in ("beam", "profile"):
            mode = step.mode if step.kind == "beam" else "profile"
            if not self._set_beam(mode):
                return
            if step.kind == "beam":
                self._finish_step(t, "beam", f"beam {mode}")
            else:  # the circuit stays open while the beam sputters
                self._beam_after = step.beam_after

    def _set_beam(self, mode: str) -> bool:
        """Switch the SIMS beam; False when the run cannot go on (it is aborted then)."""
        if self.beam is None:
            self.abort("no way to control the SIMS beam on this instrument")
            return False
        try:
            self.beam(mode)
        except (OSError, RuntimeError, ValueError) as e:
            self.abort(f"the SIMS beam did not switch to {mode}: {e}")
            return False
        return self.state == RunState.RUNNING

    def _end(self, state: RunState, reason: str, detail: str) -> None:
        self.state = state  # first: a failing open-circuit may call abort again
        self.instrument.open_circuit()  # then at once, whatever happens next
        after, self._beam_after = self._beam_after, None
        if after is not None and self.beam is not None:  # a profile was cut short
            try:
                self.beam(after)
            except (OSError, RuntimeError, ValueError) as e:
                detail = f"{detail}; the SIMS beam did not switch to {after}: {e}"
        if self.step is not None and state == RunState.ABORTED:
            self._emit(self.index, "aborted", reason, detail, device_s=self._last_s)
        self._emit(-1, state.value, reason, detail)

    def _emit(
        self,
        index: int,
        state: str,
        reason: str = "",
        detail: str = "",
        device_s: float | None = None,
    ) -> None:
        """One ``run`` topic message (docs/publishing.md)."""
        p = self.protocol
        step = p.steps[index] if p is not None and 0 <= index < len(p.steps) else None
        self.publish(
            {
                "run_id": self.run_id,
                "protocol": p.name if p else "",
                "step": index,
                "n_steps": len(p.steps) if p else 0,
                "kind": step.kind if step else "run",
                "label": step.label if step else "",
                "state": state,
                "reason": reason,
                "detail": detail,
                "device_s": device_s,
                "params": _params(step) if step else {},
            }
        )


def _params(step: Step) -> dict[str, Any]:
    """The step's settings that apply to its kind (what a `run` message reports)."""
    keys = {
        "rest": ("duration_s",),
        "constant_current": ("current_a", "duration_s", "until_v", "until_charge_c"),
        "strip": ("current_a", "duration_s", "depletion_v"),
        "eis": ("f_start_hz", "f_stop_hz", "points_per_decade", "amplitude_v"),
        "new_region": (),
        "beam": ("mode",),
        "profile": ("duration_s", "beam_after"),
    }[step.kind]
    values = {k: getattr(step, k) for k in keys}
    return {k: (None if isinstance(v, float) and math.isinf(v) else v) for k, v in values.items()}
