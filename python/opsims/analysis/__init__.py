"""Analysis clients: impedance spectra (readers, circuit fitting, KK check, process
assignment; docs/eis-analysis.md) and cycle graphs (cycled / failed regions, depletion,
the SEI step, the critical current density; docs/cycle-analysis.md).

Names load on first use, so ``opsims`` commands that do no analysis never import
scipy or matplotlib.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from opsims.analysis.assignment import PROCESSES, Assignment, assign
    from opsims.analysis.capacitance import Arc, effective_capacitance, fitted_arcs
    from opsims.analysis.ccd import CcdResult, CcdRow, critical_current_density
    from opsims.analysis.circuits import Circuit, CircuitError
    from opsims.analysis.classify import Criteria, RegionReport, classify_series
    from opsims.analysis.cycling import CyclingSeries, Region, Segment, load_cycling
    from opsims.analysis.ecfiles import (
        ChronoData,
        EcFileError,
        Spectrum,
        SpectrumMeta,
        read_chrono_csv,
        read_chrono_mpt,
        read_csv,
        read_mpt,
        read_spectra,
    )
    from opsims.analysis.eis_fit import DEFAULT_CIRCUIT, FitError, FitResult, fit_circuit
    from opsims.analysis.eis_report import EisReport, analyse_spectrum, format_table
    from opsims.analysis.kk import KKResult, kk_check

_WHERE = {
    "PROCESSES": "assignment",
    "Assignment": "assignment",
    "assign": "assignment",
    "Arc": "capacitance",
    "effective_capacitance": "capacitance",
    "fitted_arcs": "capacitance",
    "CcdResult": "ccd",
    "CcdRow": "ccd",
    "critical_current_density": "ccd",
    "Circuit": "circuits",
    "CircuitError": "circuits",
    "Criteria": "classify",
    "RegionReport": "classify",
    "classify_series": "classify",
    "CyclingSeries": "cycling",
    "Region": "cycling",
    "Segment": "cycling",
    "load_cycling": "cycling",
    "ChronoData": "ecfiles",
    "EcFileError": "ecfiles",
    "Spectrum": "ecfiles",
    "SpectrumMeta": "ecfiles",
    "read_chrono_csv": "ecfiles",
    "read_chrono_mpt": "ecfiles",
    "read_csv": "ecfiles",
    "read_mpt": "ecfiles",
    "read_spectra": "ecfiles",
    "DEFAULT_CIRCUIT": "eis_fit",
    "FitError": "eis_fit",
    "FitResult": "eis_fit",
    "fit_circuit": "eis_fit",
    "EisReport": "eis_report",
    "analyse_spectrum": "eis_report",
    "format_table": "eis_report",
    "KKResult": "kk",
    "kk_check": "kk",
}
__all__ = [
    "DEFAULT_CIRCUIT",
    "PROCESSES",
    "Arc",
    "Assignment",
    "CcdResult",
    "CcdRow",
    "ChronoData",
    "Circuit",
    "CircuitError",
    "Criteria",
    "CyclingSeries",
    "EcFileError",
    "EisReport",
    "FitError",
    "FitResult",
    "KKResult",
    "Region",
    "RegionReport",
    "Segment",
    "Spectrum",
    "SpectrumMeta",
    "analyse_spectrum",
    "assign",
    "classify_series",
    "critical_current_density",
    "effective_capacitance",
    "fit_circuit",
    "fitted_arcs",
    "format_table",
    "kk_check",
    "load_cycling",
    "read_chrono_csv",
    "read_chrono_mpt",
    "read_csv",
    "read_mpt",
    "read_spectra",
]


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
    globals()[name] = value
    return value
