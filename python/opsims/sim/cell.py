"""The simulated Na | NASICON half-cell under the probe (the working electrode).

Sign convention (EC-Lab): ``I < 0`` plates Na onto the probe, ``I > 0`` strips it; Ewe is
the probe against the Na counter electrode. Apart from measurement noise, which comes from
the caller's generator, the model is deterministic and every integrated quantity is a
closed form in charge or time, so the state does not depend on the step size.
Equations, defaults and the paper observations each part reproduces: docs/cell-model.md.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping
from dataclasses import dataclass, fields

import numpy as np
import numpy.typing as npt

from opsims._native import ConfigError

_PATH = "sim.cell"
_NOISE_BLOCK = 4096
_TWO_PI = 2.0 * math.pi
# Thresholds count as reached within this relative margin, so that rounding in summed steps
# cannot move an event by a whole step (30 s split in sevenths sums to 29.999...).
_EPS = 1e-9


class CellConfigError(ConfigError, ValueError):
    """A bad cell setting; the message starts with the key path."""


@dataclass(frozen=True)
class CellConfig:
    """Model parameters (SI units unless the name says otherwise; see docs/cell-model.md)."""

    probe_area_um2: float = 1.0
    critical_current_density_ua_um2: float = 0.04
    # Failure (dendrite) above the CCD, Fig. 2a(ii).
    failure_onset_s: float = 30.0
    failed_voltage_fraction: float = 0.3
    dendrite_collapse_s: float = 60.0
    # Plating overpotential: 40-60 mV nucleation/growth oscillation at 0.04 µA, Fig. 2a(i).
    plating_overpotential_v: float = 0.039
    nucleation_oscillation_v: float = 0.020
    nucleation_period_c: float = 7.2e-6
    overpotential_ref_density_ua_um2: float = 0.04
    overpotential_exponent: float = 0.5
    # Stripping and depletion, Fig. 2b(i): 30 min plating is emptied in 40 s at 0.04 µA.
    strip_overpotential_v: float = 0.030
    strip_reservoir_fraction: float = 40.0 / 1800.0
    depletion_rise_v: float = 1.0
    depletion_knee_c: float = 1.6e-7
    depletion_spike_v: float = 13.0
    spike_rise_s: float = 1.0
    # SEI: gradual growth with passed charge plus one step early in a re-plating, Fig. 2b(ii).
    sei_charge_c: float = 1.0e-4
    sei_growth_max: float = 0.5
    sei_step_fraction: float = 0.3
    sei_step_charge_c: float = 3.6e-6
    settled_oscillation_fraction: float = 0.15
    settled_period_factor: float = 2.0
    # Resistances and capacitances, chosen so the paper's scenarios give Table 1.
    island_ref_charge_c: float = 7.2e-5
    r_bulk_ohm: float = 600.0
    r_gb_fresh_ohm: float = 1276.0
    r_gb_sei_ohm: float = 7452.0
    r_int_contact_ohm: float = 5000.0
    r_int_island_ohm: float = 14158.0
    r_int_sei_gain: float = 1.645
    failed_r_gb_factor: float = 15794.0 / 3188.0
    failed_r_int_factor: float = 57494.0 / 25135.0
    c_gb_fresh_f: float = 3.236e-10
    c_gb_sei_drop: float = 0.1642
    c_int_contact_f: float = 0.8e-9
    c_int_island_f: float = 1.6e-9
    failed_c_gb_factor: float = 2.6 / 3.1
    failed_c_int_factor: float = 3.6 / 2.4
    n_gb: float = 0.90
    n_int: float = 0.85
    # Rest and noise.
    rest_potential_v: float = 0.0
    relax_s: float = 2.0
    noise_v: float = 5e-4
    current_noise_a: float = 2e-11
    eis_noise_rel: float = 0.01
    eis_ref_amplitude_v: float = 0.3

    def __post_init__(self) -> None:
        for f in fields(self):
            _check(f.name, getattr(self, f.name), _PATH)

    @classmethod
    def from_mapping(cls, table: Mapping[str, object], path: str = _PATH) -> CellConfig:
        """Build from a parsed TOML table; unknown keys and bad values name their key path."""
        names = {f.name for f in fields(cls)}
        for key in sorted(table):
            if key not in names:
                raise CellConfigError(f"{path}.{key}: unknown key")
        return cls(**{k: _check(k, v, path) for k, v in table.items()})


_MAY_BE_ZERO = frozenset(
    {
        "failure_onset_s",
        "nucleation_oscillation_v",
        "overpotential_exponent",
        "strip_overpotential_v",
        "depletion_rise_v",
        "sei_growth_max",
        "sei_step_fraction",
        "settled_oscillation_fraction",
        "r_gb_sei_ohm",
        "r_int_sei_gain",
        "c_gb_sei_drop",
        "c_int_contact_f",
        "noise_v",
        "current_noise_a",
        "eis_noise_rel",
    }
)
_AT_MOST_ONE = frozenset(
    {
        "failed_voltage_fraction",
        "strip_reservoir_fraction",
        "sei_growth_max",
        "sei_step_fraction",
        "settled_oscillation_fraction",
        "n_gb",
        "n_int",
    }
)


def _check(key: str, value: object, path: str) -> float:
    where = f"{path}.{key}"
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise CellConfigError(f"{where}: expected a number, got {type(value).__name__} {value!r}")
    v = float(value)
    if not math.isfinite(v):
        raise CellConfigError(f"{where}: must be finite (got {value!r})")
    if key == "rest_potential_v":
        return v
    if key in _MAY_BE_ZERO and v < 0:
        raise CellConfigError(f"{where}: must be >= 0 (got {value!r})")
    if key not in _MAY_BE_ZERO and v <= 0:
        raise CellConfigError(f"{where}: must be > 0 (got {value!r})")
    # c_gb_sei_drop = 1 would take C_gb to zero at full SEI.
    if (key in _AT_MOST_ONE and v > 1) or (key == "c_gb_sei_drop" and v >= 1):
        raise CellConfigError(f"{where}: must be <= 1 (< 1 for c_gb_sei_drop) (got {value!r})")
    return v


class Mode(enum.IntEnum):
    OPEN_CIRCUIT = 0
    GALVANOSTATIC = 1
    EIS = 2


@dataclass(frozen=True)
class CellState:
    """Snapshot of the true state, for ground truth and the SIMS specimen model."""

    time_s: float
    mode: Mode
    current_a: float
    plated_charge_c: float  # net Na moved into the region (plated minus stripped), >= 0
    reservoir_c: float  # what stripping can still take out of the island
    current_density_ua_um2: float
    peak_plating_density_ua_um2: float
    failed: bool
    depleted: bool
    sei_fraction: float
    r_bulk_ohm: float
    r_gb_ohm: float
    r_int_ohm: float
    island_charge_c: float  # charge in the surface island (sets its area), 0 after depletion
    ewe_v: float  # noise-free Ewe now


class Cell:
    """One probe region of the half-cell; see the module docstring for the sign convention."""

    def __init__(self, config: CellConfig, rng: np.random.Generator) -> None:
        self._cfg = config
        self._rng = rng
        self._noise: list[float] = []
        self._k = 0
        self._time = 0.0
        self._mode = Mode.OPEN_CIRCUIT
        self._current = 0.0
        self.new_region()

    # -- control ---------------------------------------------------------------------------

    def set_current(self, amps: float) -> None:
        """Galvanostatic at ``amps`` (I < 0 plates). Zero current leaves Ewe relaxing."""
        if not math.isfinite(amps):
            raise ValueError(f"current must be finite, got {amps!r}")
        if amps == 0.0 or (self._current != 0.0 and (amps > 0) != (self._current > 0)):
            self._to_rest()  # the spike memory ends with the stripping that built it
        self._mode = Mode.GALVANOSTATIC
        self._current = float(amps)

    def open_circuit(self) -> None:
        """Stop the current at once (I = 0 exactly); Ewe relaxes to the rest potential."""
        self._to_rest()
        self._mode = Mode.OPEN_CIRCUIT

    def new_region(self) -> None:
        """Move the probe to a fresh, unfailed, unsodiated region (at open circuit)."""
        self._mode, self._current = Mode.OPEN_CIRCUIT, 0.0
        self._q_pass = self._q_net = self._q_isl = self._phase = 0.0
        self._armed = self._step = self._failed = self._depleted = False
        self._q_since_arm = self._t_above = self._t_fail = self._t_dep = 0.0
        self._peak_j = 0.0
        self._p0 = self._t_rest = 0.0

    def _to_rest(self) -> None:
        self._p0 = self._ewe() - self._cfg.rest_potential_v - self._ohmic()
        self._t_rest = self._t_dep = 0.0
        self._current = 0.0

    # -- time ------------------------------------------------------------------------------

    def advance(self, dt_s: float) -> None:
        """Evolve the true state by ``dt_s`` seconds at the present current."""
        if not dt_s >= 0.0 or dt_s == math.inf:
            raise ValueError(f"dt must be finite and >= 0, got {dt_s!r}")
        c = self._cfg
        self._time += dt_s
        i = self._current
        if self._failed:
            self._t_fail += dt_s
        if i == 0.0:
            self._t_rest += dt_s
            return
        dq = abs(i) * dt_s
        self._q_pass += dq
        if i < 0.0:
            j = self._density()
            self._peak_j = max(self._peak_j, j)
            self._depleted = False
            self._q_net += dq
            self._q_isl += dq
            self._advance_phase(dq)
            if not self._failed and j > c.critical_current_density_ua_um2 * (1 + 1e-9):
                self._t_above += dt_s
                if self._t_above >= c.failure_onset_s - _EPS:  # failure is permanent for the region
                    self._failed = True
                    self._t_fail = max(0.0, self._t_above - c.failure_onset_s)
            return
        self._armed = not self._step  # a strip sets up the SEI step of the next plating
        self._q_since_arm = 0.0
        if self._depleted:
            self._t_dep += dt_s
            return
        reservoir = c.strip_reservoir_fraction * self._q_isl
        if dq < reservoir * (1 - _EPS):
            # Preferential pathways: the island drains 1/fraction times faster than it grew.
            self._q_isl -= dq / c.strip_reservoir_fraction
            self._q_net = max(0.0, self._q_net - dq)
        else:
            self._q_net = max(0.0, self._q_net - reservoir)
            self._q_isl = 0.0
            self._depleted = True
            self._t_dep = max(0.0, dq - reservoir) / abs(i)

    def _advance_phase(self, dq: float) -> None:
        c = self._cfg
        if self._armed and not self._step:
            need = c.sei_step_charge_c - self._q_since_arm
            if dq < need * (1 - _EPS):
                self._q_since_arm += dq
                self._phase += dq / c.nucleation_period_c
                return
            self._phase += need / c.nucleation_period_c
            self._q_since_arm = c.sei_step_charge_c
            self._step, dq = True, max(0.0, dq - need)
        period = c.nucleation_period_c * (c.settled_period_factor if self._step else 1.0)
        self._phase += dq / period

    # -- observables -----------------------------------------------------------------------

    def sample(self) -> tuple[float, float]:
        """(Ewe in V, current in A) with measurement noise; I is exactly 0 when none flows."""
        c = self._cfg
        ewe = self._ewe() + c.noise_v * self._normal()
        if self._current == 0.0:
            return ewe, 0.0
        return ewe, self._current + c.current_noise_a * self._normal()

    def _normal(self) -> float:
        if self._k >= len(self._noise):
            self._noise = self._rng.standard_normal(_NOISE_BLOCK).tolist()
            self._k = 0
        self._k += 1
        return self._noise[self._k - 1]

    def _density(self) -> float:
        return abs(self._current) * 1e6 / self._cfg.probe_area_um2

    def _sei(self) -> float:
        c = self._cfg
        grown = c.sei_growth_max * -math.expm1(-self._q_pass / c.sei_charge_c)
        return min(1.0, grown + (c.sei_step_fraction if self._step else 0.0))

    def _resistances(self) -> tuple[float, float, float]:
        c, sei = self._cfg, self._sei()
        area = self._q_isl / c.island_ref_charge_c  # island area relative to Table 1 (I)
        r_gb = c.r_gb_fresh_ohm + c.r_gb_sei_ohm * sei
        r_int = c.r_int_contact_ohm + c.r_int_island_ohm * area * (1 + c.r_int_sei_gain * sei)
        if self._failed:
            r_gb, r_int = r_gb * c.failed_r_gb_factor, r_int * c.failed_r_int_factor
        return c.r_bulk_ohm, r_gb, r_int

    def _ohmic(self) -> float:
        return self._current * sum(self._resistances()) * self._shunt()

    def _shunt(self) -> float:
        """DC response left by a dendrite: falls to a fraction and stays, Fig. 2a(ii)."""
        if not self._failed:
            return 1.0
        f = self._cfg.failed_voltage_fraction
        return f + (1.0 - f) * math.exp(-self._t_fail / self._cfg.dendrite_collapse_s)

    def _ewe(self) -> float:
        c, i = self._cfg, self._current
        if i == 0.0:
            return c.rest_potential_v + self._p0 * math.exp(-self._t_rest / c.relax_s)
        j_rel = self._density() / c.overpotential_ref_density_ua_um2
        scale = math.pow(j_rel, c.overpotential_exponent)
        if i < 0.0:
            base, amp = c.plating_overpotential_v, c.nucleation_oscillation_v
            if self._armed and not self._step:
                eta = base + amp  # re-nucleation on the stripped interface: the step's top
            else:
                osc = 0.5 + 0.5 * math.cos(_TWO_PI * self._phase)
                eta = base + amp * osc * (c.settled_oscillation_fraction if self._step else 1.0)
            eta = -scale * eta
        else:
            reservoir = c.strip_reservoir_fraction * self._q_isl
            knee = c.depletion_knee_c
            eta = scale * c.strip_overpotential_v + c.depletion_rise_v * knee / (reservoir + knee)
            if self._depleted:  # Fig. 2b(i): the spike once the reservoir is empty
                eta += (c.depletion_spike_v - eta) * -math.expm1(-self._t_dep / c.spike_rise_s)
        return c.rest_potential_v + self._ohmic() + eta * self._shunt()

    def eis_parameters(self) -> dict[str, float]:
        """True circuit R_s + (R_gb||CPE_gb) + (R_int||CPE_int): ohm, F s^(n-1), F."""
        c = self._cfg
        r_s, r_gb, r_int = self._resistances()
        area = self._q_isl / c.island_ref_charge_c
        c_gb = c.c_gb_fresh_f * (1.0 - c.c_gb_sei_drop * self._sei())
        c_int = c.c_int_contact_f + c.c_int_island_f * area
        if self._failed:
            c_gb, c_int = c_gb * c.failed_c_gb_factor, c_int * c.failed_c_int_factor
        # C_eff = (R^(1-n) Q)^(1/n)  =>  Q = C^n R^(n-1)
        return {
            "r_s": r_s,
            "r_gb": r_gb,
            "q_gb": c_gb**c.n_gb * r_gb ** (c.n_gb - 1.0),
            "n_gb": c.n_gb,
            "c_gb": c_gb,
            "r_int": r_int,
            "q_int": c_int**c.n_int * r_int ** (c.n_int - 1.0),
            "n_int": c.n_int,
            "c_int": c_int,
        }

    def impedance(
        self, freqs_hz: npt.NDArray[np.float64], amplitude_v: float
    ) -> npt.NDArray[np.complex128]:
        """Measured impedance (ohm) at ``freqs_hz``; switches to EIS mode with no DC current.

        Noise is multiplicative, complex Gaussian, with relative s.d. ``eis_noise_rel`` at
        ``eis_ref_amplitude_v`` and inversely proportional to the amplitude (the paper used
        300 mV "to reduce noise").
        """
        f = np.asarray(freqs_hz, dtype=np.float64)
        if not (np.all(np.isfinite(f)) and np.all(f > 0)):
            raise ValueError("frequencies must be finite and > 0")
        if not (math.isfinite(amplitude_v) and amplitude_v > 0):
            raise ValueError(f"amplitude must be finite and > 0, got {amplitude_v!r}")
        self._to_rest()
        self._mode = Mode.EIS
        p = self.eis_parameters()
        jw = 1j * _TWO_PI * f
        z = (
            p["r_s"]
            + p["r_gb"] / (1.0 + p["r_gb"] * p["q_gb"] * jw ** p["n_gb"])
            + p["r_int"] / (1.0 + p["r_int"] * p["q_int"] * jw ** p["n_int"])
        )
        sigma = self._cfg.eis_noise_rel * self._cfg.eis_ref_amplitude_v / amplitude_v
        if sigma > 0:
            e = self._rng.standard_normal((2, f.size)).reshape((2, *f.shape))
            z = z * (1.0 + sigma * (e[0] + 1j * e[1]))
        return np.asarray(z, dtype=np.complex128)

    def state(self) -> CellState:
        c = self._cfg
        r_s, r_gb, r_int = self._resistances()
        return CellState(
            time_s=self._time,
            mode=self._mode,
            current_a=self._current,
            plated_charge_c=self._q_net,
            reservoir_c=c.strip_reservoir_fraction * self._q_isl,
            current_density_ua_um2=self._density(),
            peak_plating_density_ua_um2=self._peak_j,
            failed=self._failed,
            depleted=self._depleted,
            sei_fraction=self._sei(),
            r_bulk_ohm=r_s,
            r_gb_ohm=r_gb,
            r_int_ohm=r_int,
            island_charge_c=self._q_isl,
            ewe_v=self._ewe(),
        )
