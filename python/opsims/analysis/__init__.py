"""Analysis clients: impedance spectra (readers, circuit fitting, KK check, process
assignment). See docs/eis-analysis.md.

Names load on first use, so ``opsims`` commands that do no analysis never import
scipy or matplotlib.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from opsims.analysis.assignment import PROCESSES, Assignment, assign
    from opsims.analysis.capacitance import Arc, effective_capacitance, fitted_arcs
    from opsims.analysis.circuits import Circuit, CircuitError
    from opsims.analysis.ecfiles import (
        EcFileError,
        Spectrum,
        SpectrumMeta,
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
    "Circuit": "circuits",
    "CircuitError": "circuits",
    "EcFileError": "ecfiles",
    "Spectrum": "ecfiles",
    "SpectrumMeta": "ecfiles",
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
    "Circuit",
    "CircuitError",
    "EcFileError",
    "EisReport",
    "FitError",
    "FitResult",
    "KKResult",
    "Spectrum",
    "SpectrumMeta",
    "analyse_spectrum",
    "assign",
    "effective_capacitance",
    "fit_circuit",
    "fitted_arcs",
    "format_table",
    "kk_check",
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
