"""opsims: acquisition and analysis for operando dual-polarity SIMS."""

from opsims._native import __version__

__all__ = ["__version__"]
