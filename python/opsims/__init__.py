"""opsims: acquisition and analysis for operando dual-polarity SIMS."""

from opsims._native import (
    BudgetError,
    ConfigError,
    EventCore,
    OpsimsError,
    PtuError,
    RecordFormatError,
    __version__,
    encode_link_frame,
)
from opsims.detector import DetectorConfig, MarkerBits, Polarity

__all__ = [
    "BudgetError",
    "ConfigError",
    "DetectorConfig",
    "EventCore",
    "MarkerBits",
    "OpsimsError",
    "Polarity",
    "PtuError",
    "RecordFormatError",
    "__version__",
    "encode_link_frame",
]
