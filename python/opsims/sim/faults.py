"""Fault injection: switches, set from the config or the control port, that make a link
misbehave the way real links do, so every failure path of the daemon can be tested.

One-shot faults count down (``drop_frames = 3`` drops the next three frames); levels stay
until changed (``drop_probability``, ``ignore_open_circuit``). Every injected fault is
logged with its true time so a test can compare what the daemon saw with what happened.
"""

from __future__ import annotations

import threading
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np

from opsims.config_table import TableReader

# Byte offsets in the detector link header (docs/detector-link.md).
_LINK_HEADER = 80
_LINK_CRC_AT = 76


@dataclass
class DetectorFaults:
    drop_frames: int = 0
    drop_probability: float = 0.0
    corrupt_frames: int = 0
    garbage_records: int = 0
    truncate_frames: int = 0
    stall_s: float = 0.0
    disconnect: int = 0
    #: The front-end's counter jumps forward by this many ticks (once), from the next
    #: raster line on. Forward only: the TTTR time base cannot go back.
    clock_jump_ticks: int = field(default=0, metadata={"minimum": 0, "maximum": 1 << 62})


@dataclass
class PotentiostatFaults:
    nan_samples: int = 0
    ignore_open_circuit: bool = False
    stall_s: float = 0.0
    disconnect: int = 0
    clock_jump_ticks: int = 0


@dataclass
class FaultLog:
    entries: list[dict[str, Any]] = field(default_factory=list)

    def add(self, true_s: float, link: str, fault: str, **details: Any) -> None:
        self.entries.append({"true_s": true_s, "link": link, "fault": fault, **details})


class Faults:
    """Thread-safe switches for both links."""

    def __init__(self, detector: DetectorFaults, potentiostat: PotentiostatFaults) -> None:
        self.detector = detector
        self.potentiostat = potentiostat
        self.log = FaultLog()
        self.lock = threading.Lock()

    @classmethod
    def from_mapping(cls, table: Mapping[str, Any], path: str = "sim.faults") -> Faults:
        r = TableReader(table, path)
        det = _read(DetectorFaults, r.get("detector", dict, {}), f"{path}.detector")
        pot = _read(PotentiostatFaults, r.get("potentiostat", dict, {}), f"{path}.potentiostat")
        r.reject_unknown()
        return cls(det, pot)

    def set(self, link: str, name: str, value: Any) -> None:
        """Set one switch by name (the control port's ``fault`` command)."""
        target = {"detector": self.detector, "potentiostat": self.potentiostat}.get(link)
        if target is None:
            raise ValueError(f"fault link must be 'detector' or 'potentiostat', got {link!r}")
        table = {name: value}
        with self.lock:
            update = _read(type(target), table, f"fault.{link}", partial=True)
            setattr(target, name, getattr(update, name))

    def take(self, link: str, name: str) -> bool:
        """Consume one count of a one-shot fault; True when it fires."""
        target = self.detector if link == "detector" else self.potentiostat
        with self.lock:
            left = getattr(target, name)
            if left > 0:
                setattr(target, name, left - 1)
                return True
            return False

    def take_value(self, link: str, name: str) -> Any:
        """Read and clear a level that acts once (a stall, a clock jump)."""
        target = self.detector if link == "detector" else self.potentiostat
        with self.lock:
            value = getattr(target, name)
            setattr(target, name, type(value)())
            return value


def _read(kind: type[Any], table: Mapping[str, Any], path: str, *, partial: bool = False) -> Any:
    r = TableReader(table, path)
    values: dict[str, Any] = {}
    for f in fields(kind):
        default = f.default
        if partial and f.name not in table:
            continue
        expected: Any = (int, float) if isinstance(default, float) else type(default)
        value = r.get(f.name, expected, default)
        low, high = f.metadata.get("minimum"), f.metadata.get("maximum")
        if (low is not None and value < low) or (high is not None and value > high):
            raise r.error(f.name, f"must be within {low}..{high}, got {value}")
        if isinstance(default, float):
            value = float(value)
            if f.name.endswith("probability") and not 0.0 <= value <= 1.0:
                raise r.error(f.name, f"must be within 0..1, got {value}")
            if value < 0:
                raise r.error(f.name, f"must not be negative, got {value}")
        values[f.name] = value
    r.reject_unknown()
    return kind(**values)


def corrupt_frame(frame: bytes, rng: np.random.Generator) -> bytes:
    """Flip one bit after the CRC was computed: the receiver must drop the frame."""
    out = bytearray(frame)
    bit = int(rng.integers(0, len(out) * 8))
    out[bit // 8] ^= 1 << (bit % 8)
    return bytes(out)


def garbage_records(frame: bytes, rng: np.random.Generator, fraction: float = 0.01) -> bytes:
    """Replace some records by random words and re-seal the frame: the front-end itself
    produced garbage, so the frame is valid and the decoder must count the bad records."""
    n = (len(frame) - _LINK_HEADER) // 4
    if n == 0:
        return frame
    out = bytearray(frame)
    records = np.frombuffer(out, dtype="<u4", offset=_LINK_HEADER, count=n).copy()
    k = max(1, int(n * fraction))
    idx = rng.choice(n, size=k, replace=False)
    records[idx] = rng.integers(0, 1 << 32, size=k, dtype=np.uint32)
    out[_LINK_HEADER:] = records.tobytes()
    crc = zlib.crc32(bytes(out[_LINK_HEADER:]), zlib.crc32(bytes(out[:_LINK_CRC_AT])))
    out[_LINK_CRC_AT:_LINK_HEADER] = crc.to_bytes(4, "little")
    return bytes(out)


def truncate_frame(frame: bytes, rng: np.random.Generator) -> bytes:
    """Cut a frame short (a sender that died mid-write): the receiver must resynchronise."""
    return frame[: int(rng.integers(1, max(2, len(frame))))]
