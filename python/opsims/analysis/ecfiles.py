"""Readers for impedance spectra: EC-Lab text exports (``.mpt``) and plain CSV.

EC-Lab ``.mpt`` (BioLogic): line 1 ``EC-Lab ASCII FILE``, line 2 ``Nb header lines : N``
where N counts every header line *including* the tab-separated column-name line, then
one row per point. The file is written in a Windows code page (cp1252: ``µ``, ``²``),
decimal separators follow the PC's locale (``1,5E+003`` on a German PC), the voltage
column is ``Ewe/V`` or ``<Ewe>/V`` depending on the recording setting, and one file can
hold several spectra told apart by ``cycle number``. The header's ``Safety Limits :``
block lists the limits the instrument enforced; it is kept as metadata.

CSV: three columns ``freq, Re(Z), Im(Z)`` (Ω, Im negative for capacitive arcs) without a
header, as written by common fitting tools; a header row naming the columns (``-Im`` for
the negated imaginary part) and ``;`` separators with decimal commas are accepted too.

Cycle graphs (chronopotentiometry): ``read_chrono_mpt`` and ``read_chrono_csv`` read
time, Ewe and I (with their units) and EC-Lab's ``Ns`` / ``cycle number`` columns, with
the same code page, decimal-comma and header handling (docs/cycle-analysis.md).

Every malformed input raises :class:`EcFileError` naming the file, line and column.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import numpy.typing as npt

F64 = npt.NDArray[np.float64]
C128 = npt.NDArray[np.complex128]

MPT_MAGIC = "EC-Lab ASCII FILE"
_COLUMNS = {
    "freq": ("freq/Hz",),
    "re": ("Re(Z)/Ohm",),
    "neg_im": ("-Im(Z)/Ohm",),
    "time": ("time/s",),
    "ewe": ("Ewe/V", "<Ewe>/V"),
    "current": ("I/mA", "<I>/mA"),
    "cycle": ("cycle number",),
}
_LIMIT = re.compile(
    r"^\s*(?P<q>\|?[A-Za-z<>]+\|?)\s*(?P<rel>[<>]=?)\s*"
    r"(?P<v>[-+]?[0-9]+(?:[.,][0-9]*)?(?:[eE][-+]?[0-9]+)?)\s*(?P<u>\S*)"
)


class EcFileError(ValueError):
    """A malformed spectrum file: ``path:line: column 'name': what is wrong``."""

    def __init__(
        self, path: str | Path, line: int | None, column: str | None, message: str
    ) -> None:
        self.path = str(path)
        self.line = line
        self.column = column
        self.message = message
        where = self.path if line is None else f"{self.path}:{line}"
        col = "" if column is None else f" column {column!r}:"
        super().__init__(f"{where}:{col} {message}")


@dataclass(frozen=True)
class SafetyLimit:
    """One line of the ``Safety Limits`` block, parsed when it reads ``Q > value unit``."""

    text: str
    quantity: str | None = None
    relation: str | None = None
    value: float | None = None
    unit: str | None = None


@dataclass(frozen=True)
class SpectrumMeta:
    """Where a spectrum came from and what the file said about it."""

    source: str
    format: str  # "mpt" or "csv"
    encoding: str
    decimal_comma: bool = False
    cycle: int | None = None
    header: dict[str, str] = field(default_factory=dict)
    safety_limits: tuple[SafetyLimit, ...] = ()
    columns: tuple[str, ...] = ()
    dropped_rows: int = 0  # rows with frequency ≤ 0 (non-impedance steps of a sequence)


@dataclass(frozen=True)
class Spectrum:
    """One impedance spectrum: frequencies (Hz), complex Z (Ω), optional time/Ewe/I."""

    freq_hz: F64
    z: C128
    meta: SpectrumMeta
    time_s: F64 | None = None
    ewe_v: F64 | None = None
    current_ma: F64 | None = None

    def __post_init__(self) -> None:
        if self.freq_hz.shape != self.z.shape or self.freq_hz.ndim != 1:
            raise ValueError("freq_hz and z must be 1-D arrays of the same length")

    def __len__(self) -> int:
        return int(self.freq_hz.size)

    @classmethod
    def from_arrays(
        cls, freq_hz: npt.ArrayLike, z: npt.ArrayLike, source: str = "<array>"
    ) -> Spectrum:
        f = np.asarray(freq_hz, dtype=np.float64)
        zz = np.asarray(z, dtype=np.complex128)
        return cls(f, zz, SpectrumMeta(source=source, format="array", encoding=""))


def read_spectra(path: str | Path) -> list[Spectrum]:
    """All spectra in a file: EC-Lab ``.mpt`` (one per cycle number) or CSV (one)."""
    p = Path(path)
    raw = _read_bytes(p)
    text, encoding = _decode(raw)
    first = text.split("\n", 1)[0].strip()
    if p.suffix.lower() == ".mpt" or first.startswith(MPT_MAGIC) or "freq/Hz" in first:
        return _parse_mpt(p, text, encoding)
    return [_parse_csv(p, text, encoding)]


def read_mpt(path: str | Path) -> list[Spectrum]:
    """The spectra of an EC-Lab text export, one per cycle number, in file order."""
    p = Path(path)
    text, encoding = _decode(_read_bytes(p))
    return _parse_mpt(p, text, encoding)


def read_csv(path: str | Path) -> Spectrum:
    """A spectrum from a CSV file of frequency, Re(Z), Im(Z)."""
    p = Path(path)
    text, encoding = _decode(_read_bytes(p))
    return _parse_csv(p, text, encoding)


# -- internals ---------------------------------------------------------------------
def _read_bytes(p: Path) -> bytes:
    try:
        return p.read_bytes()
    except OSError as e:
        raise EcFileError(p, None, None, f"cannot read: {e.strerror or e}") from e


def _decode(raw: bytes) -> tuple[str, str]:
    """Text and encoding. EC-Lab writes a Windows code page; a file that is valid UTF-8
    (a re-saved export) is read as such, since cp1252 text with µ or ² never is."""
    try:
        return raw.decode("utf-8-sig"), "utf-8"
    except UnicodeDecodeError:
        pass
    try:
        return raw.decode("cp1252"), "cp1252"
    except UnicodeDecodeError:
        return raw.decode("latin-1"), "latin-1"  # five bytes cp1252 leaves undefined


def _number(p: Path, line: int, column: str, text: str) -> tuple[float, bool]:
    """A float from a field; (value, True) when it needed a decimal comma."""
    t = text.strip()
    try:
        return float(t), False
    except ValueError:
        pass
    if "," in t and "." not in t:
        try:
            return float(t.replace(",", ".")), True
        except ValueError:
            pass
    shown = t if t else "an empty field"
    raise EcFileError(p, line, column, f"expected a number, got {shown!r}")


def _mpt_header(p: Path, lines: list[str]) -> tuple[int, list[str]]:
    """The header length (the column-name line included) and the column names."""
    if not lines:
        raise EcFileError(p, None, None, "empty file")
    if lines[0].strip().startswith(MPT_MAGIC):
        if len(lines) < 2:
            raise EcFileError(p, 2, None, "missing 'Nb header lines : N'")
        m = re.match(r"\s*Nb header lines\s*:\s*(\d+)\s*$", lines[1])
        if m is None:
            raise EcFileError(p, 2, None, f"expected 'Nb header lines : N', got {lines[1]!r}")
        n_header = int(m.group(1))
        if n_header < 3 or n_header > len(lines):
            raise EcFileError(
                p, 2, None, f"header length {n_header} does not fit a file of {len(lines)} lines"
            )
    else:
        n_header = 1  # an export without the header block: the first line names columns
    return n_header, [c.strip() for c in lines[n_header - 1].rstrip("\t").split("\t")]


def _parse_mpt(p: Path, text: str, encoding: str) -> list[Spectrum]:
    lines = text.splitlines()
    n_header, names = _mpt_header(p, lines)
    header, limits = _header_fields(lines[: n_header - 1])
    col: dict[str, int] = {}
    for key, options in _COLUMNS.items():
        found = next((names.index(o) for o in options if o in names), None)
        if found is not None:
            col[key] = found
    for key in ("freq", "re", "neg_im"):
        if key not in col:
            raise EcFileError(
                p, n_header, _COLUMNS[key][0], f"column not found among {len(names)} column names"
            )
    rows: list[list[float]] = []
    wanted = list(col.items())
    comma = False
    dropped = 0
    for k in range(n_header, len(lines)):
        line_no = k + 1
        if not lines[k].strip():
            continue
        fields = lines[k].rstrip("\t").split("\t")
        row = []
        for _, idx in wanted:
            name = names[idx]
            if idx >= len(fields):
                raise EcFileError(
                    p, line_no, name, f"row has {len(fields)} fields, the header {len(names)}"
                )
            v, used_comma = _number(p, line_no, name, fields[idx])
            comma |= used_comma
            row.append(v)
        f = row[0]
        if not np.isfinite(f) or f <= 0.0:
            dropped += 1
            continue
        for (key, idx), v in zip(wanted, row, strict=True):
            if key in ("re", "neg_im") and not np.isfinite(v):
                raise EcFileError(p, line_no, names[idx], f"non-finite impedance {v}")
        rows.append(row)
    if not rows:
        raise EcFileError(p, None, None, "no impedance rows (frequency > 0) after the header")
    data = np.asarray(rows, dtype=np.float64)
    pos = {key: i for i, (key, _) in enumerate(wanted)}
    columns = tuple(names)
    if "cycle" in pos:
        cycles = np.rint(data[:, pos["cycle"]]).astype(np.int64)
        order = list(dict.fromkeys(cycles.tolist()))
        groups = [(int(c), cycles == c) for c in order]
    else:
        groups = [(None, np.ones(len(data), dtype=bool))]  # type: ignore[list-item]
    out = []
    for cycle, mask in groups:
        d = data[mask]
        meta = SpectrumMeta(
            source=str(p),
            format="mpt",
            encoding=encoding,
            decimal_comma=comma,
            cycle=cycle,
            header=header,
            safety_limits=limits,
            columns=columns,
            dropped_rows=dropped,
        )

        def opt(key: str, d: F64 = d) -> F64 | None:
            return d[:, pos[key]].copy() if key in pos else None

        out.append(
            Spectrum(
                d[:, pos["freq"]].copy(),
                d[:, pos["re"]] - 1j * d[:, pos["neg_im"]],
                meta,
                time_s=opt("time"),
                ewe_v=opt("ewe"),
                current_ma=opt("current"),
            )
        )
    return out


def _header_fields(lines: list[str]) -> tuple[dict[str, str], tuple[SafetyLimit, ...]]:
    """``key : value`` pairs (first occurrence) and the Safety Limits block."""
    header: dict[str, str] = {}
    limits: list[SafetyLimit] = []
    in_limits = False
    for raw in lines[2:]:
        indented = raw.startswith(("\t", " "))
        if in_limits and indented and raw.strip():
            limits.append(_limit(raw.strip()))
            continue
        in_limits = False
        key, sep, value = raw.partition(" : ")
        if not sep:
            key, sep, value = raw.partition(":")
        if sep and key.strip():
            key = key.strip()
            if key == "Safety Limits":
                in_limits = True
                continue
            header.setdefault(key, value.strip())
    return header, tuple(limits)


def _limit(text: str) -> SafetyLimit:
    m = _LIMIT.match(text)
    if m is None:
        return SafetyLimit(text)
    return SafetyLimit(
        text,
        m.group("q"),
        m.group("rel"),
        float(m.group("v").replace(",", ".")),
        m.group("u") or None,
    )


def _parse_csv(p: Path, text: str, encoding: str) -> Spectrum:
    lines = [(k + 1, ln) for k, ln in enumerate(text.splitlines()) if ln.strip()]
    if not lines:
        raise EcFileError(p, None, None, "empty file")
    first = lines[0][1]
    delim = ";" if ";" in first else "\t" if "\t" in first else ","
    names = ["freq", "Re(Z)", "Im(Z)"]
    sign = 1.0
    if not _looks_numeric(first.split(delim)[0]):
        names = [c.strip() for c in first.split(delim)]
        lines = lines[1:]
        if len(names) < 3:
            raise EcFileError(p, 1, None, f"expected 3 columns (freq, Re, Im), got {names}")
        if names[2].lstrip().startswith("-"):
            sign = -1.0
    rows = []
    comma = False
    for line_no, ln in lines:
        fields = ln.split(delim)
        if len(fields) < 3:
            column = names[len(fields)] if len(fields) < len(names) else None
            raise EcFileError(p, line_no, column, f"row has {len(fields)} fields, expected 3")
        row = []
        for name, f in zip(names[:3], fields[:3], strict=True):
            v, used_comma = _number(p, line_no, name, f)
            comma |= used_comma
            if not np.isfinite(v):
                raise EcFileError(p, line_no, name, f"non-finite value {v}")
            row.append(v)
        if row[0] <= 0:
            raise EcFileError(p, line_no, names[0], f"frequency must be > 0, got {row[0]}")
        rows.append(row)
    if not rows:
        raise EcFileError(p, None, None, "no data rows")
    d = np.asarray(rows, dtype=np.float64)
    meta = SpectrumMeta(
        source=str(p), format="csv", encoding=encoding, decimal_comma=comma, columns=tuple(names)
    )
    return Spectrum(d[:, 0].copy(), d[:, 1] + 1j * sign * d[:, 2], meta)


def _looks_numeric(s: str) -> bool:
    try:
        float(s.strip().replace(",", "."))
    except ValueError:
        return False
    return True


# -- chronopotentiometry: cycle graphs ---------------------------------------------------
#: Column names (compared without case or spaces) and the factor to SI units.
CHRONO_TIME = {"time/s": 1.0, "t/s": 1.0, "time/min": 60.0, "time/h": 3600.0}
CHRONO_EWE = {"ewe/v": 1.0, "<ewe>/v": 1.0, "ewe/mv": 1e-3, "<ewe>/mv": 1e-3, "e/v": 1.0}
CHRONO_CURRENT = {
    "i/a": 1.0,
    "<i>/a": 1.0,
    "i/ma": 1e-3,
    "<i>/ma": 1e-3,
    "i/µa": 1e-6,
    "<i>/µa": 1e-6,
    "i/ua": 1e-6,
    "i/na": 1e-9,
}
#: Integer columns kept when present: EC-Lab's sequence and cycle numbers, the protocol
#: step of an ``opsims export``, a region number.
CHRONO_LABELS = {"ns": "ns", "cycle number": "cycle", "step": "step", "region": "region"}


@dataclass(frozen=True)
class ChronoData:
    """A galvanostatic record (cycle graph): time (s), Ewe (V), I (A, EC-Lab sign:
    negative while plating onto the working electrode) per point, and the integer
    columns of ``CHRONO_LABELS`` the file has (``ns``, ``cycle``, ``step``, ``region``)."""

    time_s: F64
    ewe_v: F64
    current_a: F64
    meta: SpectrumMeta
    labels: dict[str, npt.NDArray[np.int64]] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.time_s.size)


def read_chrono_mpt(path: str | Path) -> ChronoData:
    """A chronopotentiometry text export of EC-Lab (``time/s``, ``Ewe/V`` or ``<Ewe>/V``,
    ``I/mA``; ``Ns`` and ``cycle number`` when present)."""
    p = Path(path)
    text, encoding = _decode(_read_bytes(p))
    lines = text.splitlines()
    n_header, names = _mpt_header(p, lines)
    header, limits = _header_fields(lines[: n_header - 1])
    rows = (
        (k + 1, lines[k].rstrip("\t").split("\t"))
        for k in range(n_header, len(lines))
        if lines[k].strip()
    )
    meta = SpectrumMeta(
        source=str(p), format="mpt", encoding=encoding, header=header, safety_limits=limits
    )
    return chrono_table(p, names, n_header, rows, meta)


def read_chrono_csv(path: str | Path) -> ChronoData:
    """A cycle graph as CSV: a header row naming the columns with their units
    (``time/s``, ``Ewe/V``, ``I/mA`` or ``I/A``; ``Ns``, ``cycle number``, ``step``,
    ``region`` when present), ``,`` ``;`` or tab separated; ``#`` lines are comments."""
    p = Path(path)
    text, encoding = _decode(_read_bytes(p))
    lines = [(k + 1, ln) for k, ln in enumerate(text.splitlines())]
    lines = [(k, ln) for k, ln in lines if ln.strip() and not ln.lstrip().startswith("#")]
    if not lines:
        raise EcFileError(p, None, None, "empty file")
    names_line, first = lines[0]
    delim = ";" if ";" in first else "\t" if "\t" in first else ","
    names = [c.strip() for c in first.split(delim)]
    rows = ((k, ln.split(delim)) for k, ln in lines[1:])
    meta = SpectrumMeta(source=str(p), format="csv", encoding=encoding)
    return chrono_table(p, names, names_line, rows, meta)


def _find(names: list[str], units: dict[str, float]) -> tuple[int, float] | None:
    keys = [n.replace(" ", "").lower() for n in names]
    for want, factor in units.items():
        if want in keys:
            return keys.index(want), factor
    return None


def chrono_table(
    p: Path,
    names: list[str],
    names_line: int,
    rows: Iterable[tuple[int, list[str]]],
    meta: SpectrumMeta,
) -> ChronoData:
    """Columns found by name in split rows ``(line number, fields)``; every bad field
    raises :class:`EcFileError` with its line and column."""
    wanted = _chrono_columns(p, names, names_line)
    data: list[list[float]] = []
    comma = False
    for line_no, fields in rows:
        row = []
        for idx, factor in wanted.values():
            if idx >= len(fields):
                message = f"row has {len(fields)} fields, the header {len(names)}"
                raise EcFileError(p, line_no, names[idx], message)
            v, used_comma = _number(p, line_no, names[idx], fields[idx])
            comma |= used_comma
            if not np.isfinite(v):
                raise EcFileError(p, line_no, names[idx], f"non-finite value {v}")
            row.append(v * factor)
        if data and row[0] < data[-1][0]:
            message = f"time goes back: {row[0]:g} s after {data[-1][0]:g} s"
            raise EcFileError(p, line_no, names[wanted["time"][0]], message)
        data.append(row)
    if not data:
        raise EcFileError(p, None, None, "no data rows after the header")
    d = np.asarray(data, dtype=np.float64)
    cols = {key: d[:, k] for k, key in enumerate(wanted)}
    labels = {k: np.rint(v).astype(np.int64) for k, v in cols.items() if k in _LABEL_KEYS}
    meta = replace(meta, decimal_comma=comma, columns=tuple(names))
    return ChronoData(cols["time"], cols["ewe"], cols["current"], meta, labels)


_LABEL_KEYS = frozenset(CHRONO_LABELS.values())


def _chrono_columns(p: Path, names: list[str], line: int) -> dict[str, tuple[int, float]]:
    """Key -> (column index, factor to SI): time, Ewe and I first, then the labels."""
    wanted: dict[str, tuple[int, float]] = {}
    for key, units in (("time", CHRONO_TIME), ("ewe", CHRONO_EWE), ("current", CHRONO_CURRENT)):
        found = _find(names, units)
        if found is None:
            shown = {"time": "time/s", "ewe": "Ewe/V", "current": "I/mA"}[key]
            raise EcFileError(p, line, shown, f"column not found among {names}")
        wanted[key] = found
    lowered = [n.strip().lower() for n in names]
    for name, key in CHRONO_LABELS.items():
        if name in lowered:
            wanted[key] = (lowered.index(name), 1.0)
    return wanted
