"""Writing the analyses' figures: the file name's suffix picks the format."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from matplotlib.figure import Figure

FORMATS = ("png", "svg", "pdf")


def save_figure(fig: Figure, path: str | Path, dpi: int = 120) -> Path:
    """Write the figure; the suffix picks the format (``.png``, ``.svg``, ``.pdf``)."""
    p = Path(path)
    fmt = p.suffix.lstrip(".").lower()
    if fmt not in FORMATS:
        raise ValueError(f"plot file must end in .png, .svg or .pdf, got {p.name!r}")
    fig.savefig(p, format=fmt, dpi=dpi)
    return p
