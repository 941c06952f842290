"""Spectrum readers: EC-Lab .mpt text exports (code page, decimal commas, column
variants, several cycles, the Safety Limits block) and CSV; every malformed file gives an
EcFileError naming the file, line and column."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from opsims.analysis.ecfiles import EcFileError, read_csv, read_mpt, read_spectra

EIS_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "eis"
MPT = EIS_DIR / "exampleDataBioLogic.mpt"
CSV = EIS_DIR / "exampleData.csv"
needs_eis_files = pytest.mark.skipif(
    not (MPT.is_file() and CSV.is_file()), reason=f"sample spectra not found in {EIS_DIR}"
)

COLUMNS = [
    "freq/Hz",
    "Re(Z)/Ohm",
    "-Im(Z)/Ohm",
    "|Z|/Ohm",
    "time/s",
    "<Ewe>/V",
    "I/mA",
    "cycle number",
]


def mpt_text(
    rows: list[list[str]],
    columns: list[str] = COLUMNS,
    header: tuple[str, ...] = (),
    safety: tuple[str, ...] = ("Do not start on E overload",),
) -> str:
    """An EC-Lab export as the instrument writes it: CRLF, tab-separated, trailing tab."""
    head = [
        "EC-Lab ASCII FILE",
        "Nb header lines : {n}",
        "",
        "Potentio Electrochemical Impedance Spectroscopy",
        "",
        "Run on channel : 1 (SN 30924)",
        "Safety Limits :",
        *("\t" + s for s in safety),
        *header,
        "Electrode surface area : 0.001 cm²",
        "",
    ]
    head[1] = head[1].format(n=len(head) + 1)
    lines = [*head, "\t".join(columns) + "\t", *("\t".join(r) + "\t" for r in rows)]
    return "\r\n".join(lines) + "\r\n"


def rows_for(cycles: list[int], decimal_comma: bool = False) -> list[list[str]]:
    out = []
    t = 0.0
    for c in cycles:
        for f in (1e4, 1e3, 1e2, 1e1):
            t += 1.0
            r = [
                f"{f:.7E}",
                f"{100 + c + 1e3 / f:.7E}",
                f"{10 * c + 1:.7E}",
                "1.0E+002",
                f"{t:.6E}",
                "-2.5E-004",
                "1.0E-003",
                f"{c:.15E}",
            ]
            out.append([v.replace(".", ",") for v in r] if decimal_comma else r)
    return out


def write(tmp_path: Path, name: str, text: str, encoding: str = "cp1252") -> Path:
    p = tmp_path / name
    p.write_bytes(text.encode(encoding))
    return p


# -- the real files ----------------------------------------------------------------
@needs_eis_files
def test_real_mpt_reads_as_impedance_py_does() -> None:
    (s,) = read_mpt(MPT)
    assert len(s) == 43 and s.meta.cycle == 1
    assert s.meta.encoding == "cp1252" and not s.meta.decimal_comma
    assert s.meta.header["Electrode surface area"] == "0.001 cm²"  # byte 0xB2 in cp1252
    assert [lim.text for lim in s.meta.safety_limits] == ["Do not start on E overload"]
    assert s.ewe_v is not None and s.time_s is not None  # "<Ewe>/V" variant
    assert s.freq_hz[0] == pytest.approx(1000.3201) and s.z[0] == pytest.approx(
        65.470886 - 0.38998979j
    )
    preprocessing = pytest.importorskip("impedance.preprocessing")
    f, z = preprocessing.readBioLogic(str(MPT))
    np.testing.assert_allclose(s.freq_hz, f, rtol=1e-12)
    np.testing.assert_allclose(s.z, z, rtol=1e-12)


@needs_eis_files
def test_real_csv_reads_as_impedance_py_does() -> None:
    s = read_csv(CSV)
    assert len(s) == 66 and s.meta.format == "csv"
    assert s.z[0].imag < 0  # the capacitive low-frequency end: Im(Z) negative in the file
    preprocessing = pytest.importorskip("impedance.preprocessing")
    f, z = preprocessing.readCSV(str(CSV))
    np.testing.assert_allclose(s.freq_hz, f, rtol=1e-12)
    np.testing.assert_allclose(s.z, z, rtol=1e-12)
    assert read_spectra(CSV)[0].z.tolist() == s.z.tolist()


# -- format variants ---------------------------------------------------------------
def test_cp1252_micro_sign_in_header_and_columns(tmp_path: Path) -> None:
    cols = [*COLUMNS, "Cs/µF"]
    rows = [[*r, "1.0E+000"] for r in rows_for([1])]
    p = write(tmp_path, "micro.mpt", mpt_text(rows, cols, header=("Comments : tip 1 µm²",)))
    assert b"\xb5" in p.read_bytes()  # µ as cp1252 writes it
    (s,) = read_mpt(p)
    assert s.meta.encoding == "cp1252"
    assert s.meta.header["Comments"] == "tip 1 µm²"
    assert "Cs/µF" in s.meta.columns


def test_utf8_resaved_export_is_read_as_utf8(tmp_path: Path) -> None:
    p = write(tmp_path, "utf8.mpt", mpt_text(rows_for([1]), header=("Comments : 1 µm",)), "utf-8")
    (s,) = read_mpt(p)
    assert s.meta.encoding == "utf-8" and s.meta.header["Comments"] == "1 µm"


def test_decimal_commas(tmp_path: Path) -> None:
    p = write(tmp_path, "comma.mpt", mpt_text(rows_for([1], decimal_comma=True)))
    (s,) = read_mpt(p)
    assert s.meta.decimal_comma
    np.testing.assert_allclose(s.freq_hz, [1e4, 1e3, 1e2, 1e1])
    np.testing.assert_allclose(s.z.real, [101.1, 102, 111, 201])
    np.testing.assert_allclose(s.z.imag, -11.0)


@pytest.mark.parametrize("ewe", ["Ewe/V", "<Ewe>/V"])
def test_voltage_column_variants(tmp_path: Path, ewe: str) -> None:
    cols = [ewe if c == "<Ewe>/V" else c for c in COLUMNS]
    (s,) = read_mpt(write(tmp_path, "v.mpt", mpt_text(rows_for([1]), cols)))
    assert s.ewe_v is not None
    np.testing.assert_allclose(s.ewe_v, -2.5e-4)


def test_several_cycles_are_split(tmp_path: Path) -> None:
    spectra = read_mpt(write(tmp_path, "cycles.mpt", mpt_text(rows_for([1, 2, 3]))))
    assert [s.meta.cycle for s in spectra] == [1, 2, 3]
    for s in spectra:
        assert len(s) == 4
        c = s.meta.cycle
        assert c is not None
        np.testing.assert_allclose(-s.z.imag, 10 * c + 1)
        assert s.time_s is not None and np.all(np.diff(s.time_s) > 0)


def test_safety_limits_block_is_parsed(tmp_path: Path) -> None:
    safety = ("Ewe > 10 V", "Ewe < -10 V", "|I| > 100 mA", "Do not start on E overload")
    (s,) = read_mpt(write(tmp_path, "safe.mpt", mpt_text(rows_for([1]), safety=safety)))
    lims = s.meta.safety_limits
    assert [lim.text for lim in lims] == list(safety)
    first = (lims[0].quantity, lims[0].relation, lims[0].value, lims[0].unit)
    assert first == ("Ewe", ">", 10.0, "V")
    assert lims[1].value == -10.0 and lims[2].quantity == "|I|" and lims[2].unit == "mA"
    assert lims[3].value is None
    assert s.meta.header["Run on channel"] == "1 (SN 30924)"


def test_rows_without_frequency_are_dropped_and_counted(tmp_path: Path) -> None:
    rows = rows_for([1])
    rows.insert(2, ["0.0E+000", *rows[0][1:]])
    (s,) = read_mpt(write(tmp_path, "zero.mpt", mpt_text(rows)))
    assert len(s) == 4 and s.meta.dropped_rows == 1


def test_csv_with_header_semicolons_and_decimal_commas(tmp_path: Path) -> None:
    text = "freq/Hz;Re(Z)/Ohm;-Im(Z)/Ohm\n1000,5;10,25;2,5\n10;20;7\n"
    s = read_csv(write(tmp_path, "eu.csv", text))
    assert s.meta.decimal_comma
    np.testing.assert_allclose(s.freq_hz, [1000.5, 10])
    np.testing.assert_allclose(s.z, [10.25 - 2.5j, 20 - 7j])  # "-Im" header: sign flipped


# -- malformed files ---------------------------------------------------------------
def test_non_numeric_field_names_line_and_column(tmp_path: Path) -> None:
    rows = rows_for([1])
    rows[2][1] = "12.5.3"
    p = write(tmp_path, "bad.mpt", mpt_text(rows))
    n_header = int(p.read_text(encoding="cp1252").splitlines()[1].split(":")[1])
    with pytest.raises(EcFileError) as e:
        read_mpt(p)
    assert e.value.line == n_header + 3 and e.value.column == "Re(Z)/Ohm"
    assert str(e.value).startswith(f"{p}:{n_header + 3}: column 'Re(Z)/Ohm':")
    assert "'12.5.3'" in str(e.value)


def test_short_row_names_the_missing_column(tmp_path: Path) -> None:
    rows = rows_for([1])
    rows[1] = rows[1][:2]
    with pytest.raises(EcFileError, match=r"column '-Im\(Z\)/Ohm': row has 2 fields") as e:
        read_mpt(write(tmp_path, "short.mpt", mpt_text(rows)))
    assert e.value.line is not None


def test_missing_required_column(tmp_path: Path) -> None:
    cols = [c if c != "freq/Hz" else "frequency" for c in COLUMNS]
    p = write(tmp_path, "nofreq.mpt", mpt_text(rows_for([1]), cols))
    n_header = int(p.read_text(encoding="cp1252").splitlines()[1].split(":")[1])
    with pytest.raises(EcFileError, match=r"column 'freq/Hz': column not found") as e:
        read_mpt(p)
    assert e.value.line == n_header  # the column-name line


@pytest.mark.parametrize(
    ("line2", "match"),
    [
        ("Nb header lines = 12", "expected 'Nb header lines : N'"),
        ("Nb header lines : 999", "does not fit a file of"),
        ("Nb header lines : 1", "does not fit a file of"),
    ],
)
def test_bad_header_length_line(tmp_path: Path, line2: str, match: str) -> None:
    lines = mpt_text(rows_for([1])).split("\r\n")
    lines[1] = line2
    with pytest.raises(EcFileError, match=match) as e:
        read_mpt(write(tmp_path, "hdr.mpt", "\r\n".join(lines)))
    assert e.value.line == 2


def test_csv_errors(tmp_path: Path) -> None:
    with pytest.raises(EcFileError, match=r"short.csv:2: column 'Im\(Z\)': row has 2 fields"):
        read_csv(write(tmp_path, "short.csv", "1,2,3\n4,5\n"))
    with pytest.raises(EcFileError, match=r"word.csv:1: column 'Re\(Z\)': expected a number"):
        read_csv(write(tmp_path, "word.csv", "1,abc,3\n"))
    with pytest.raises(EcFileError, match=r"neg.csv:1: column 'freq': frequency must be > 0"):
        read_csv(write(tmp_path, "neg.csv", "-1,2,3\n"))
    with pytest.raises(EcFileError, match="empty file"):
        read_csv(write(tmp_path, "empty.csv", "\n\n"))
    with pytest.raises(EcFileError, match="cannot read"):
        read_spectra(tmp_path / "missing.mpt")
    assert issubclass(EcFileError, ValueError)
