"""Clock alignment: device ticks → host ns under drift and one-sided network jitter.

The simulation here is independent of the native code: a device whose tick
``start + k`` truly happens at host ``host0 + k * tick_ns * (1 + drift)`` sends
(tick, arrival) pairs at ~100 Hz, each arriving 0-2 ms late (never early). Drift is
defined as the model publishes it: host ns per nominal device ns, minus one, in ppm.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opsims._native import ClockModel, ConfigError

Jitter = Literal["uniform", "exponential", "bursty"]

I64 = npt.NDArray[np.int64]
U64 = npt.NDArray[np.uint64]
F64 = npt.NDArray[np.float64]


@dataclass(frozen=True)
class Device:
    tick_s: float
    drift_ppm: float
    start_tick: int
    host0: int

    @property
    def tick_ns(self) -> float:
        return self.tick_s * 1e9

    @property
    def host_per_tick(self) -> float:
        return self.tick_ns * (1.0 + self.drift_ppm * 1e-6)

    def true_rel(self, ticks: U64) -> F64:
        """True host ns of ticks relative to ``host0`` (float64 cannot hold epoch ns)."""
        k = (ticks - np.uint64(self.start_tick)).astype(np.float64)
        return k * self.host_per_tick

    def error_ns(self, model: ClockModel, ticks: U64) -> F64:
        got = (model.to_host_ns(ticks) - np.int64(self.host0)).astype(np.float64)
        return got - self.true_rel(ticks)


def delays_ns(rng: np.random.Generator, kind: Jitter, t_ns: F64) -> F64:
    n = t_ns.size
    if kind == "uniform":
        return rng.uniform(0.0, 2e6, n)
    if kind == "exponential":
        return np.minimum(rng.exponential(0.5e6, n), 2e6)
    # Congestion: 0.4 s out of every 2.5 s, every pair is 1.5-2 ms late.
    congested = (t_ns % 2.5e9) < 0.4e9
    return np.where(congested, rng.uniform(1.5e6, 2e6, n), rng.uniform(0.0, 2e6, n))


def simulate(dev: Device, kind: Jitter, seed: int, seconds: float = 10.0) -> tuple[U64, I64]:
    """(device tick, host arrival ns) pairs at ~100 Hz of host time."""
    rng = np.random.default_rng(seed)
    n = int(seconds * 100) + 50
    t_ns = np.cumsum(rng.uniform(8e6, 12e6, n))
    t_ns = t_ns[t_ns < seconds * 1e9]
    k = np.rint(t_ns / dev.host_per_tick).astype(np.uint64)
    ticks = np.uint64(dev.start_tick) + k
    arrival_rel = dev.true_rel(ticks) + delays_ns(rng, kind, t_ns)
    hosts = np.int64(dev.host0) + np.rint(arrival_rel).astype(np.int64)
    return ticks, hosts


def worst_recent_error(dev: Device, model: ClockModel, ticks: U64, last_s: float = 2.0) -> float:
    """Worst |model - truth| over the ticks of the last ``last_s`` seconds, ns."""
    span = np.uint64(int(last_s * 1e9 / dev.host_per_tick))
    recent = ticks[ticks >= ticks[-1] - span]
    return float(np.max(np.abs(dev.error_ns(model, recent))))


CASES = [
    pytest.param(tick_s, drift, start, id=f"{tick_s:g}s-{drift:+g}ppm-{start:#x}")
    for tick_s in (1e-12, 80e-9)
    for drift in (50.0, -50.0)
    for start in (0, 1 << 62)
]


@pytest.mark.parametrize("kind", ["uniform", "exponential", "bursty"])
@pytest.mark.parametrize(("tick_s", "drift", "start"), CASES)
def test_error_below_50us_after_10s(tick_s: float, drift: float, start: int, kind: Jitter) -> None:
    for seed in range(8):
        dev = Device(tick_s, drift, start + seed * 1_000_003, 1_700_000_000_000_000_000 + seed)
        ticks, hosts = simulate(dev, kind, seed)
        model = ClockModel(tick_s, 30.0)
        model.update_many(ticks, hosts)
        assert worst_recent_error(dev, model, ticks) < 50e3
        assert model.fitted
        assert model.jumps == 0
        assert abs(model.drift_ppm - drift) < 5.0
        assert 0.0 <= model.residual_ns < 2e6


# Derandomized, and stated at 15 s: over any drift and delay shape the bound is
# statistical; the 10 s worst case of the requirement is test_uniform_jitter_tail_at_10s.
@settings(max_examples=40, deadline=None, derandomize=True)
@given(
    drift=st.floats(-100.0, 100.0),
    seed=st.integers(0, 2**32 - 1),
    kind=st.sampled_from(["uniform", "exponential", "bursty"]),
    start=st.integers(0, 2**63),
    tick_s=st.sampled_from([1e-12, 1e-9, 80e-9]),
)
def test_property_any_drift_converges(
    drift: float, seed: int, kind: Jitter, start: int, tick_s: float
) -> None:
    dev = Device(tick_s, drift, start, -(10**17) + seed)
    ticks, hosts = simulate(dev, kind, seed, seconds=15.0)
    model = ClockModel(tick_s)
    model.update_many(ticks, hosts)
    assert worst_recent_error(dev, model, ticks) < 50e3
    assert abs(model.drift_ppm - drift) < 5.0


def test_update_one_by_one_matches_update_many() -> None:
    dev = Device(80e-9, 42.0, 1 << 40, 5_000_000_000)
    ticks, hosts = simulate(dev, "uniform", 3)
    a, b = ClockModel(80e-9), ClockModel(80e-9)
    for t, h in zip(ticks.tolist(), hosts.tolist(), strict=True):
        a.update(t, h)
    b.update_many(ticks, hosts)
    assert a.state() == b.state()
    np.testing.assert_array_equal(a.to_host_ns(ticks), b.to_host_ns(ticks))


def test_state_and_properties_agree() -> None:
    dev = Device(1e-12, -50.0, 123, 0)
    ticks, hosts = simulate(dev, "exponential", 9)
    model = ClockModel(1e-12, window_s=5.0)
    model.update_many(ticks, hosts)
    state = model.state()
    assert set(state) == {"offset_ns", "drift_ppm", "residual_ns", "points", "fitted", "jumps"}
    assert state["offset_ns"] == model.offset_ns
    assert state["drift_ppm"] == model.drift_ppm
    assert state["residual_ns"] == model.residual_ns
    assert state["points"] == model.points
    assert state["fitted"] is model.fitted is True
    assert state["jumps"] == model.jumps == 0
    # 5 s window of ~100 Hz pairs.
    assert 400 < model.points <= 520
    # offset_ns is host ns at tick 0 on the fitted line (here 10 s before the data).
    assert abs(model.offset_ns - (dev.host0 - 123 * 1e-3 * (1 - 50e-6))) < 50e3
    with pytest.raises(AttributeError):
        model.drift_ppm = 0.0  # type: ignore[misc]


def test_host_clock_step_is_detected_and_recovered() -> None:
    dev = Device(80e-9, 50.0, 1 << 50, 0)
    ticks, hosts = simulate(dev, "uniform", 4, seconds=25.0)
    stepped = hosts.copy()
    half = ticks.size // 2
    stepped[half:] -= 1_000_000_000  # NTP steps the host clock back by 1 s
    model = ClockModel(80e-9)
    model.update_many(ticks[: half + 10], stepped[: half + 10])
    model.update_many(ticks[half + 10 :], stepped[half + 10 :])
    assert model.jumps == 1
    recent = ticks[-200:]
    err = dev.error_ns(model, recent) + 1e9
    assert np.max(np.abs(err)) < 50e3


def test_before_first_pair() -> None:
    model = ClockModel(1e-9)
    assert model.points == 0
    assert not model.fitted
    with pytest.raises(RuntimeError):
        model.to_host_ns(np.array([1], dtype=np.uint64))
    model.update(1_000, 2_000)
    np.testing.assert_array_equal(
        model.to_host_ns(np.array([1_000, 1_500], dtype=np.uint64)), [2_000, 2_500]
    )


def test_non_contiguous_arrays() -> None:
    dev = Device(1e-9, 10.0, 0, 0)
    ticks, hosts = simulate(dev, "uniform", 1)
    a, b = ClockModel(1e-9), ClockModel(1e-9)
    a.update_many(ticks[::2], hosts[::2])
    b.update_many(ticks[::2].copy(), hosts[::2].copy())
    assert a.state() == b.state()
    np.testing.assert_array_equal(a.to_host_ns(ticks[::3]), b.to_host_ns(ticks[::3].copy()))


@pytest.mark.parametrize(
    ("tick_s", "window_s"),
    [
        (0.0, 30.0),
        (-1e-9, 30.0),
        (float("nan"), 30.0),
        (float("inf"), 30.0),
        (1e-9, 0.0),
        (1e-9, -1.0),
        (1e-9, float("nan")),
        (1e-9, float("inf")),
    ],
)
def test_invalid_config(tick_s: float, window_s: float) -> None:
    with pytest.raises(ConfigError, match=r"clock\.(tick_s|window_s)"):
        ClockModel(tick_s, window_s)


def test_mismatched_lengths() -> None:
    model = ClockModel(1e-9)
    with pytest.raises(ValueError, match="length"):
        model.update_many(np.zeros(3, dtype=np.uint64), np.zeros(2, dtype=np.int64))
    assert model.points == 0


def test_uniform_jitter_tail_at_10s() -> None:
    """The requirement's worst case as a Monte-Carlo: 50 ppm drift, 0-2 ms uniform delay
    at ~100 pairs/s, exactly 10 s of data; no run may end above 50 us. (Fitted from the
    lowest pairs alone, about 1 run in 2000 did.)"""
    worst, runs = 0.0, int(os.environ.get("OPSIMS_CLOCK_TAIL_RUNS", 4000))
    for seed in range(runs):
        tick_s = (80e-9, 1e-12)[seed % 2]
        drift = 50.0 if seed % 4 < 2 else -50.0
        start = seed * 1_000_003 + (1 << 62) * (seed % 3 == 0)
        dev = Device(tick_s, drift, start, 1_700_000_000_000_000_000 + seed)
        ticks, hosts = simulate(dev, "uniform", 10_000 + seed)
        model = ClockModel(tick_s, 30.0)
        model.update_many(ticks, hosts)
        worst = max(worst, worst_recent_error(dev, model, ticks))
    assert worst < 50e3, f"worst {worst / 1e3:.1f} us over {runs} runs"
