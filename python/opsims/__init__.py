"""opsims: acquisition and analysis for operando dual-polarity SIMS."""

from opsims._native import (
    Acquisition,
    BudgetError,
    ClockModel,
    CommandRefused,
    ConfigError,
    DetectorEmitter,
    EventCore,
    InterlockError,
    OpsimsError,
    PtuError,
    PtuFile,
    RecordFormatError,
    __version__,
    decode_records,
    encode_link_frame,
    read_ptu,
)
from opsims.detector import DetectorConfig, MarkerBits, Polarity

__all__ = [
    "Acquisition",
    "BudgetError",
    "ClockModel",
    "CommandRefused",
    "ConfigError",
    "DetectorConfig",
    "DetectorEmitter",
    "EventCore",
    "InterlockError",
    "MarkerBits",
    "OpsimsError",
    "Polarity",
    "PtuError",
    "PtuFile",
    "RecordFormatError",
    "__version__",
    "decode_records",
    "encode_link_frame",
    "read_ptu",
]
