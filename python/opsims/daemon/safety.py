"""The daemon's side of the safety interlock (docs/safety.md): its ``[safety]`` table,
the ``safety`` topic's fields, the audit log and the latched trip that survives a
restart. The interlock itself is native (``Acquisition(interlock=...)``); nothing here
sits between a sample and the open-circuit command."""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from opsims.config_table import TableReader, as_float
from opsims.daemon.files import make_dir, open_private
from opsims.wire import EC_SAMPLE_DTYPE

log = logging.getLogger("opsimsd.safety")

#: The widest limits allowed: the instrument's own range (the native EWE_RANGE_V).
EWE_RANGE_V = 20.0


@dataclass(frozen=True)
class SafetyConfig:
    ewe_min_v: float = -10.0
    ewe_max_v: float = 10.0
    compliance_a: float | None = None  # None: the instrument's (its HELLO)
    max_sample_gap_s: float = 0.5
    backwards_tolerance_s: float = 1.0
    confirm_timeout_s: float = 1.0
    resend_interval_s: float = 0.2

    @classmethod
    def from_mapping(cls, table: Mapping[str, Any], path: str = "safety") -> SafetyConfig:
        r = TableReader(table, path)
        d = cls()
        compliance = None
        if "compliance_a" in table:
            compliance = r.get_float("compliance_a", minimum=0, maximum=1, exclusive_minimum=True)
        cfg = cls(
            ewe_min_v=_volts(r, "ewe_min_v", d.ewe_min_v),
            ewe_max_v=_volts(r, "ewe_max_v", d.ewe_max_v),
            compliance_a=compliance,
            max_sample_gap_s=_seconds(r, "max_sample_gap_s", d.max_sample_gap_s, 60),
            backwards_tolerance_s=_seconds(
                r, "backwards_tolerance_s", d.backwards_tolerance_s, 3600
            ),
            confirm_timeout_s=_seconds(r, "confirm_timeout_s", d.confirm_timeout_s, 60),
            resend_interval_s=_seconds(r, "resend_interval_s", d.resend_interval_s, 60),
        )
        r.used.add("compliance_a")
        r.reject_unknown()
        if cfg.ewe_min_v >= cfg.ewe_max_v:
            raise r.error("ewe_max_v", f"must be above ewe_min_v ({cfg.ewe_min_v})")
        return cfg

    def native(self) -> dict[str, Any]:
        """The ``interlock`` dict of :class:`opsims.Acquisition`."""
        return asdict(self)


def _volts(r: TableReader, key: str, default: float) -> float:
    # Read here, not with get_float: TableReader refuses negative integers (`-10`).
    r.used.add(key)
    value = r.table.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise r.error(key, f"expected a number of volts, got {value!r}")
    volts = as_float(value)
    if not (math.isfinite(volts) and abs(volts) <= EWE_RANGE_V):
        raise r.error(key, f"must be within the instrument's ±{EWE_RANGE_V} V, got {value}")
    return volts


def _seconds(r: TableReader, key: str, default: float, maximum: float) -> float:
    return r.get_float(key, default, minimum=0, maximum=maximum, exclusive_minimum=True)


def topic_fields(state: Mapping[str, Any], operator: str | None = None) -> dict[str, Any]:
    """The ``safety`` topic's fields (docs/publishing.md) from ``interlock_state()``."""
    last = state.get("last_reset") or {}
    return {
        "state": state["state"],
        "reason": state["reason"],
        "detail": state["detail"],
        "device_tick": state["device_tick"],
        "sample_host_ns": state["sample_host_ns"],
        "trip_host_ns": state["trip_host_ns"],
        "alarm_host_ns": state["alarm_host_ns"],
        "open_circuit_confirmed": state["open_circuit_confirmed"],
        "operator": operator or (last.get("operator") if state["reason"] == "reset" else None),
    }


def sample_array(state: Mapping[str, Any]) -> np.ndarray:
    """The offending sample as ``EC_SAMPLE_DTYPE [1]``, or ``[0]`` when there is none."""
    s = state.get("sample")
    out = np.zeros(0 if s is None else 1, EC_SAMPLE_DTYPE)
    if s is not None:
        for name in EC_SAMPLE_DTYPE.names or ():
            out[name] = s[name]
    return out


class SafetyRecord:
    """``<state_dir>/safety/``: ``audit.jsonl`` (one line per trip, alarm and reset) and
    ``latched.json`` (the trip in force, so it stays latched across a restart)."""

    def __init__(self, state_dir: Path) -> None:
        self.dir = state_dir / "safety"
        make_dir(self.dir)
        self.audit_path = self.dir / "audit.jsonl"
        self.latched_path = self.dir / "latched.json"
        #: Audit lines or latch files the disk refused (the trip itself holds natively).
        self.write_failures = 0

    def audit(self, event: str, **fields: Any) -> None:
        line = json.dumps({"event": event, "host_ns": time.time_ns(), **fields}, default=str)
        try:
            with open_private(self.audit_path, "a") as f:
                f.write(line + "\n")
                f.flush()
                os.fsync(f.fileno())
        except OSError as e:
            self._failed(f"audit line not written ({line})", e)

    def _failed(self, what: str, e: OSError) -> None:
        # A full or broken disk must not take the daemon down with it: say it loudly.
        self.write_failures += 1
        log.critical("safety record: %s: %s", what, e)

    def latched(self) -> dict[str, Any] | None:
        try:
            doc: dict[str, Any] = json.loads(self.latched_path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as e:
            # Unreadable means we cannot tell: keep the cell off until an operator looks.
            log.error("cannot read %s (%s): latching a trip", self.latched_path, e)
            return {"reason": "link_lost", "detail": f"unreadable latch file: {e}",
                    "trip_host_ns": time.time_ns(), "sample": None}  # fmt: skip
        return doc

    def latch(self, state: Mapping[str, Any]) -> None:
        """Persist a trip (written whole, then renamed, so a crash leaves old or new)."""
        doc = {k: state[k] for k in ("reason", "detail", "trip_host_ns", "sample")}
        tmp = self.latched_path.with_suffix(".tmp")
        try:
            with open_private(tmp) as f:
                json.dump(doc, f)
                f.flush()
                os.fsync(f.fileno())
            tmp.replace(self.latched_path)
        except OSError as e:
            self._failed("the trip is not persisted: it will not survive a restart", e)

    def clear(self) -> None:
        self.latched_path.unlink(missing_ok=True)
