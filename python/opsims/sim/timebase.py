"""Simulated time: one true timeline, run faster than the wall clock by the acceleration
factor, read by device clocks that start anywhere, drift, wrap and can jump."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field


@dataclass
class Timebase:
    """True simulated seconds since the start, `acceleration` times faster than the wall."""

    acceleration: float = 1.0
    #: Host time (CLOCK_REALTIME, ns) and monotonic time at true time 0.
    start_host_ns: int = field(default_factory=time.time_ns)
    start_monotonic_ns: int = field(default_factory=time.monotonic_ns)

    def __post_init__(self) -> None:
        if not self.acceleration > 0:
            raise ValueError(f"acceleration must be > 0, got {self.acceleration}")

    def now_s(self) -> float:
        return (time.monotonic_ns() - self.start_monotonic_ns) * 1e-9 * self.acceleration

    def host_ns_at(self, true_s: float) -> int:
        """The host time at which the simulation reaches `true_s` (without link delay)."""
        return self.start_host_ns + round(true_s / self.acceleration * 1e9)

    def wall_s_until(self, true_s: float) -> float:
        return max(0.0, (true_s - self.now_s()) / self.acceleration)


@dataclass
class DeviceClock:
    """An instrument's counter: `ticks = start + true_s·(1 + drift)/tick + jumps`, read
    modulo 2**counter_bits. `drift_ppm > 0` means the device runs fast."""

    tick_s: float
    drift_ppm: float = 0.0
    start_tick: int = 0
    counter_bits: int = 64
    jumps: list[tuple[float, int]] = field(default_factory=list)
    _offset: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __post_init__(self) -> None:
        if not self.tick_s > 0:
            raise ValueError(f"tick_s must be > 0, got {self.tick_s}")
        if not 8 <= self.counter_bits <= 64:
            raise ValueError(f"counter_bits must be within 8..64, got {self.counter_bits}")

    @property
    def rate(self) -> float:
        """Ticks per true second."""
        return (1.0 + self.drift_ppm * 1e-6) / self.tick_s

    def ticks_at(self, true_s: float) -> int:
        """Unwrapped ticks at true time `true_s` (jumps included)."""
        return self.start_tick + self._offset + int(true_s * self.rate)

    def counter_at(self, true_s: float) -> int:
        """What the instrument reports: the ticks modulo its counter width."""
        return self.ticks_at(true_s) & ((1 << self.counter_bits) - 1)

    def true_s_at(self, ticks: int) -> float:
        """Inverse of :meth:`ticks_at` for unwrapped ticks after the last jump."""
        return (ticks - self.start_tick - self._offset) / self.rate

    def jump(self, true_s: float, ticks: int) -> None:
        """A clock jump (a counter reset or glitch) from `true_s` on."""
        with self._lock:
            self._offset += ticks
            self.jumps.append((true_s, ticks))

    def truth(self) -> dict[str, object]:
        return {
            "tick_s": self.tick_s,
            "drift_ppm": self.drift_ppm,
            "start_tick": self.start_tick,
            "counter_bits": self.counter_bits,
            "jumps": [{"true_s": t, "ticks": n} for t, n in self.jumps],
        }
