"""Circuit fitting: the circuit language, recovery of the paper's Table 1 from synthetic
spectra with automatic initial guesses, process assignment, honest uncertainties,
agreement with impedance.py on the real sample spectra, the report, plots and CLI."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from opsims.analysis import eis_cli
from opsims.analysis.assignment import BY_KEY, DEFAULT_GEOMETRY_CM_1, assign, score
from opsims.analysis.capacitance import effective_capacitance, fitted_arcs
from opsims.analysis.circuits import Circuit, CircuitError
from opsims.analysis.ecfiles import Spectrum, read_spectra
from opsims.analysis.eis_fit import DEFAULT_CIRCUIT, FitError, fit_circuit
from opsims.analysis.eis_report import analyse_spectrum, format_report, format_table

EIS_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "eis"
MPT = EIS_DIR / "exampleDataBioLogic.mpt"
CSV = EIS_DIR / "exampleData.csv"
needs_eis_files = pytest.mark.skipif(
    not (MPT.is_file() and CSV.is_file()), reason=f"sample spectra not found in {EIS_DIR}"
)
F64 = npt.NDArray[np.float64]
C128 = npt.NDArray[np.complex128]
REPO = Path(__file__).resolve().parents[1]

# Table 1 of the paper: R_GB, R_Int (ohm), C_GB, C_Int (F). The exponents are not
# published; 0.90 and 0.85 are the simulator's (docs/cell-model.md), R0 its bulk 600 ohm.
TABLE1 = {
    "0.04 (I)": (3188.0, 25135.0, 3.1e-10, 2.4e-9),
    "0.04 (II)": (5993.0, 19451.0, 2.9e-10, 1.6e-9),
    "0.1": (15794.0, 57494.0, 2.6e-10, 3.6e-9),
}
N_GB, N_INT, R_BULK = 0.90, 0.85, 600.0
F_PAPER = np.geomspace(7e6, 100, 60)  # 7 MHz to 100 Hz, as swept
CIRCUIT = Circuit(DEFAULT_CIRCUIT)


def truth(row: tuple[float, float, float, float]) -> dict[str, float]:
    """Circuit values whose effective capacitances are the table's C (Q = C^n R^(n-1))."""
    r_gb, r_int, c_gb, c_int = row
    return {
        "R0": R_BULK,
        "R1": r_gb,
        "CPE1_Q": c_gb**N_GB * r_gb ** (N_GB - 1),
        "CPE1_n": N_GB,
        "R2": r_int,
        "CPE2_Q": c_int**N_INT * r_int ** (N_INT - 1),
        "CPE2_n": N_INT,
    }


def noisy(z: C128, seed: int, rel: float = 0.01) -> C128:
    """1 % multiplicative complex Gaussian noise (per component)."""
    rng = np.random.default_rng(seed)
    return z * (1 + rel * (rng.normal(size=z.size) + 1j * rng.normal(size=z.size)))


def table1_spectrum(label: str, seed: int = 20240601) -> Spectrum:
    z = CIRCUIT.impedance(F_PAPER, truth(TABLE1[label]))
    return Spectrum.from_arrays(F_PAPER, noisy(z, seed), source=f"table1 {label}")


# -- circuit language ----------------------------------------------------------------
def test_parameter_names_and_nesting() -> None:
    c = Circuit("L0-R0-p(R1,CPE1)-p(R2-Wo1,p(C2,R3-W1))-Ws1")
    assert c.names == (
        "L0",
        "R0",
        "R1",
        "CPE1_Q",
        "CPE1_n",
        "R2",
        "Wo1_R",
        "Wo1_tau",
        "C2",
        "R3",
        "W1",
        "Ws1_R",
        "Ws1_tau",
    )
    assert Circuit(" R0 - p( R1 , CPE1 ) ").text == "R0-p(R1,CPE1)"


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("", "empty"),
        ("R0-", r"expected an element .* at position 3"),
        ("p(R1)", "at least two branches"),
        ("p(R1,C1", r"expected ',' or '\)' to close p\("),
        ("X1", "expected an element"),
        ("R", "needs a label"),
        ("R1-R1", "used twice"),
        ("R0-p(R1,C1))", "expected '-', ',' or end at position 11"),
        ("R0--R1", "at position 3"),
    ],
)
def test_bad_circuit_strings(text: str, match: str) -> None:
    with pytest.raises(CircuitError, match=match) as e:
        Circuit(text)
    if text:
        assert "^" in str(e.value)  # a caret under the offending position


def test_elements_match_impedance_py() -> None:
    circuits = pytest.importorskip("impedance.models.circuits")
    text = "R0-p(R1,CPE1)-Wo1-Ws1-W1-L1-C1"
    values = [12.0, 3e3, 2e-9, 0.83, 50.0, 0.3, 80.0, 2.0, 40.0, 1e-7, 1e-6]
    f = np.geomspace(1e6, 1e-2, 50)
    ours = Circuit(text).impedance(f, values)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "simulating circuit based on initial parameters"
        theirs = circuits.CustomCircuit(text, initial_guess=values).predict(f, use_initial=True)
    np.testing.assert_allclose(ours, theirs, rtol=1e-12)


def test_analytic_jacobian_and_fast_path() -> None:
    rng = np.random.default_rng(3)
    w = 2 * np.pi * np.geomspace(1e6, 1e-2, 40)
    for text in (DEFAULT_CIRCUIT, "L0-R0-p(R1,C1)-p(R2-Wo1,C2)", "R0-p(R1-Ws1,CPE1)-W1"):
        c = Circuit(text)
        x = rng.normal(size=len(c.params))
        x[[p.role == "exponent" for p in c.params]] = 0.8
        z, jac = c.evaluate(w, x)
        h = 1e-6
        for k in range(x.size):
            dx = np.zeros_like(x)
            dx[k] = h
            num = (c.evaluate(w, x + dx, False)[0] - c.evaluate(w, x - dx, False)[0]) / (2 * h)
            np.testing.assert_allclose(jac[k], num, rtol=1e-6, atol=1e-9 * np.abs(z).max())
    # The vectorised path for series R / R||CPE chains equals the general tree walk.
    c = Circuit(DEFAULT_CIRCUIT)
    x = c.to_internal(truth(TABLE1["0.1"]))
    z_fast, j_fast = c.evaluate(w, x)
    c._chain = None
    z_tree, j_tree = c.evaluate(w, x)
    np.testing.assert_allclose(z_fast, z_tree, rtol=1e-13)
    np.testing.assert_allclose(j_fast, j_tree, rtol=1e-12, atol=1e-15)


def test_effective_capacitance_formula() -> None:
    # n = 1 is a capacitor; and C_eff reproduces the apex: 2 pi f_apex R C_eff = 1.
    assert effective_capacitance(1e3, 2e-9, 1.0) == pytest.approx(2e-9)
    r, q, n = 3188.0, 1.236e-9, 0.9
    c_eff = effective_capacitance(r, q, n)
    w_apex = (r * q) ** (-1 / n)
    assert w_apex * r * c_eff == pytest.approx(1.0)


# -- Table 1 recovery ----------------------------------------------------------------
@pytest.mark.parametrize("label", list(TABLE1))
def test_table1_recovered_from_automatic_guesses(label: str) -> None:
    r_gb, r_int, c_gb, c_int = TABLE1[label]
    report = analyse_spectrum(table1_spectrum(label))
    gb, it = report.arc_for("grain_boundary"), report.interfacial_arc()
    assert gb is not None and it is not None, format_report(report)
    assert report.arc_for("surface_layer") is it  # the paper's interfacial layer (SEI)
    for got, err, want in (
        (gb.r_ohm, gb.r_err, r_gb),
        (it.r_ohm, it.r_err, r_int),
        (gb.c_eff_f, gb.c_eff_err, c_gb),
        (it.c_eff_f, it.c_eff_err, c_int),
    ):
        assert abs(got / want - 1) < 0.03, (label, got, want)
        assert abs(got - want) < 2 * err, (label, got, want, err)
    assert report.sigma_gb is not None
    sigma_true = DEFAULT_GEOMETRY_CM_1 / r_gb
    assert abs(report.sigma_gb.value_s_cm - sigma_true) < 2 * report.sigma_gb.err_s_cm
    assert report.kk.passed
    assert report.series is not None and report.series.identifiable
    assert report.series.value == pytest.approx(R_BULK, rel=0.03)
    assert report.warnings == []


def test_standard_errors_cover_the_truth() -> None:
    """Over 60 noise draws the ±2 sigma intervals hold the truth about 95 % of the time."""
    want = truth(TABLE1["0.04 (I)"])
    clean = CIRCUIT.impedance(F_PAPER, want)
    r_gb, r_int, c_gb, c_int = TABLE1["0.04 (I)"]
    hits = np.zeros(4)
    draws = 60
    for seed in range(draws):
        gb, it = fitted_arcs(fit_circuit(F_PAPER, noisy(clean, 1000 + seed)))
        hits += [
            abs(gb.r_ohm - r_gb) < 2 * gb.r_err,
            abs(it.r_ohm - r_int) < 2 * it.r_err,
            abs(gb.c_eff_f - c_gb) < 2 * gb.c_eff_err,
            abs(it.c_eff_f - c_int) < 2 * it.c_eff_err,
        ]
    coverage = hits / draws
    assert np.all(coverage >= 0.85) and np.all(coverage <= 1.0), coverage


@pytest.mark.parametrize("weighting", ["modulus", "proportional", "unit"])
def test_every_weighting_recovers_exact_data(weighting: Any) -> None:
    want = truth(TABLE1["0.1"])
    fit = fit_circuit(F_PAPER, CIRCUIT.impedance(F_PAPER, want), weighting=weighting)
    for name, value in want.items():
        assert fit.values[name] == pytest.approx(value, rel=1e-5), name
    assert fit.rms_relative < 1e-7


def test_impedance_py_from_our_optimum_stays_there_but_not_from_a_hand_guess() -> None:
    """Same objective (modulus weighting): started at our optimum, impedance.py does not
    move; started from a guess read off the plot, it stops at a higher cost."""
    circuits = pytest.importorskip("impedance.models.circuits")
    s = table1_spectrum("0.04 (I)")
    ours = fit_circuit(s.freq_hz, s.z)
    mod = np.abs(s.z)

    def cost(z_fit: C128) -> float:
        d = (z_fit - s.z) / mod
        return float(np.sum(d.real**2 + d.imag**2))

    at_ours = circuits.CustomCircuit(DEFAULT_CIRCUIT, initial_guess=list(ours.values.values()))
    at_ours.fit(s.freq_hz, s.z, weight_by_modulus=True)
    assert cost(at_ours.predict(s.freq_hz)) == pytest.approx(ours.chi2, rel=1e-6)
    hand = circuits.CustomCircuit(
        DEFAULT_CIRCUIT, initial_guess=[500, 3000, 1e-9, 0.9, 2e4, 1e-8, 0.9]
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # its curve_fit warns about the covariance
        hand.fit(s.freq_hz, s.z, weight_by_modulus=True)
    assert cost(hand.predict(s.freq_hz)) > 2 * ours.chi2


# -- what the report says about doubtful arcs and intercepts -----------------------------
def test_diffusion_tail_is_not_reported_as_a_second_arc() -> None:
    tail = Circuit("R0-p(R1,CPE1)-W1")
    values = {
        "R0": R_BULK,
        "R1": 3188.0,
        "CPE1_Q": truth(TABLE1["0.04 (I)"])["CPE1_Q"],
        "CPE1_n": N_GB,
        "W1": 3e5,
    }
    report = analyse_spectrum(
        Spectrum.from_arrays(F_PAPER, noisy(tail.impedance(F_PAPER, values), 4))
    )
    gb = report.arc_for("grain_boundary")
    assert gb is not None and gb.r_ohm == pytest.approx(3188, rel=0.03)
    lf = report.assignments[-1]
    assert lf.process is None and not lf.arc.in_window
    assert lf.arc.f_apex_hz < 100.0
    assert any("below the lowest measured frequency" in w for w in report.warnings)


def test_series_resistance_not_identifiable_when_the_first_point_is_on_an_arc() -> None:
    f = np.geomspace(1e5, 100, 40)  # starts below the grain-boundary apex (160 kHz)
    z = CIRCUIT.impedance(f, {**truth(TABLE1["0.04 (I)"]), "R0": 20.0})
    report = analyse_spectrum(Spectrum.from_arrays(f, noisy(z, 5)))
    assert report.series is not None
    assert not report.series.identifiable and report.series.value is None
    assert "already on an arc" in report.series.reason
    assert any("series resistance R0 not identifiable" in w for w in report.warnings)
    # The grain-boundary arc peaks beyond the window: flagged, not reported, but it still
    # takes its place in the order, so the next arc is the interfacial layer.
    first, second = report.assignments
    assert first.process is None and first.arc.f_apex_hz > 1e5
    assert second.process == "surface_layer"
    assert "sigma_GB not computed" in report.warnings[-1]


def test_assignment_ranks_and_uses_frequency_order_in_the_overlap() -> None:
    s = table1_spectrum("0.04 (II)")
    arcs = fitted_arcs(fit_circuit(s.freq_hz, s.z))
    (gb, it) = assign(arcs)
    # 1.6e-9 F alone fits the grain-boundary range as well as the surface layer's...
    assert {c.process for c in it.candidates if c.in_range} == {"grain_boundary", "surface_layer"}
    # ...and the lower-frequency of the two arcs is the surface (interfacial) layer.
    assert (gb.process, it.process) == ("grain_boundary", "surface_layer")
    assert any("order of the arcs in frequency" in e for e in it.evidence)
    assert score(1e-12, BY_KEY["bulk"]) == 1.0  # the centre of a range scores 1


def test_brick_layer_conductivity_with_a_resolved_bulk_arc() -> None:
    # A bulk arc (53 MHz) resolved inside a 300 MHz window: sigma_gb = (L/A)(1/R_gb)(C_bulk/C_gb).
    c = Circuit("R0-p(R1,C1)-p(R2,CPE2)-p(R3,CPE3)")
    f = np.geomspace(3e8, 100, 70)
    want = {
        "R0": 50.0,
        "R1": 800.0,
        "C1": 1.5e-12,
        "R2": 3188.0,
        "CPE2_Q": 3.1e-10**0.9 * 3188.0**-0.1,
        "CPE2_n": 0.9,
        "R3": 25135.0,
        "CPE3_Q": 2.4e-9**0.85 * 25135.0**-0.15,
        "CPE3_n": 0.85,
    }
    report = analyse_spectrum(Spectrum.from_arrays(f, noisy(c.impedance(f, want), 6)), c)
    bulk, gb = report.arc_for("bulk"), report.arc_for("grain_boundary")
    assert bulk is not None and gb is not None, format_report(report)
    assert report.sigma_gb_brick is not None
    expected = DEFAULT_GEOMETRY_CM_1 / 3188.0 * 1.5e-12 / 3.1e-10
    assert report.sigma_gb_brick.value_s_cm == pytest.approx(expected, rel=0.05)


def test_fit_input_errors() -> None:
    with pytest.raises(FitError, match="cannot determine"):
        fit_circuit(F_PAPER[:3], CIRCUIT.impedance(F_PAPER[:3], truth(TABLE1["0.1"])))
    with pytest.raises(FitError, match="weighting must be one of"):
        fit_circuit(F_PAPER, CIRCUIT.impedance(F_PAPER, truth(TABLE1["0.1"])), weighting="x")  # type: ignore[arg-type]
    with pytest.raises(FitError, match="finite and > 0"):
        fit_circuit(-F_PAPER, CIRCUIT.impedance(F_PAPER, truth(TABLE1["0.1"])))


# -- real spectra against impedance.py ---------------------------------------------------
def _impedance_py_fit(text: str, guess: list[float], f: F64, z: C128, modulus: bool) -> Any:
    circuits = pytest.importorskip("impedance.models.circuits")
    model = circuits.CustomCircuit(text, initial_guess=guess)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # curve_fit's covariance warnings
        model.fit(f, z, weight_by_modulus=modulus)
    return model


def _cost(f: F64, z: C128, z_fit: C128, modulus: bool) -> float:
    d = (z_fit - z) / (np.abs(z) if modulus else 1.0)
    return float(np.sum(d.real**2 + d.imag**2))


def _rel_rms(a: C128, b: C128) -> float:
    return float(np.sqrt(np.mean(np.abs(a - b) ** 2 / np.abs(b) ** 2)))


@needs_eis_files
@pytest.mark.parametrize("weighting", ["modulus", "unit"])
def test_biologic_spectrum_agrees_with_impedance_py(weighting: Any) -> None:
    (s,) = read_spectra(MPT)
    text = "R0-p(R1,CPE1)"
    ours = fit_circuit(s.freq_hz, s.z, text, weighting=weighting)
    # impedance.py needs a start; read off the Nyquist plot: intercept 60, diameter 40.
    theirs = _impedance_py_fit(text, [60, 40, 0.05, 0.8], s.freq_hz, s.z, weighting == "modulus")
    for k, name in enumerate(ours.circuit.names):
        assert ours.values[name] == pytest.approx(theirs.parameters_[k], rel=1e-4), name
        assert ours.stderr[name] == pytest.approx(theirs.conf_[k], rel=0.02), name
    assert _rel_rms(ours.predict(s.freq_hz), theirs.predict(s.freq_hz)) < 1e-6


@needs_eis_files
def test_example_csv_default_circuit_agrees_with_impedance_py() -> None:
    s = read_spectra(CSV)[0]
    keep = s.z.imag < 0  # the inductive points above 1.3 kHz are not in this circuit
    f, z = s.freq_hz[keep], s.z[keep]
    ours = fit_circuit(f, z, DEFAULT_CIRCUIT, weighting="unit")
    theirs = _impedance_py_fit(DEFAULT_CIRCUIT, [0.01, 0.01, 100, 0.8, 0.05, 100, 0.8], f, z, False)
    for k, name in enumerate(ours.circuit.names):
        assert ours.values[name] == pytest.approx(theirs.parameters_[k], rel=1e-3), name
    assert _rel_rms(ours.predict(f), theirs.predict(f)) < 1e-5


@needs_eis_files
@pytest.mark.parametrize("weighting", ["modulus", "unit"])
def test_example_csv_docs_circuit_needs_no_guess(weighting: Any) -> None:
    """impedance.py's own getting-started fit: its hand-picked guess, and a naive one,
    against our automatic starts. Ours reaches a cost at least as low as both."""
    s = read_spectra(CSV)[0]
    keep = s.z.imag < 0
    f, z = s.freq_hz[keep], s.z[keep]
    text = "R0-p(R1,C1)-p(R2-Wo1,C2)"
    modulus = weighting == "modulus"
    ours = fit_circuit(f, z, text, weighting=weighting)
    docs = _impedance_py_fit(text, [0.01, 0.01, 100, 0.01, 0.05, 100, 1], f, z, modulus)
    naive = _impedance_py_fit(text, [1.0] * 7, f, z, modulus)
    c_ours = _cost(f, z, ours.predict(f), modulus)
    c_docs = _cost(f, z, docs.predict(f), modulus)
    c_naive = _cost(f, z, naive.predict(f), modulus)
    assert c_ours == pytest.approx(ours.chi2 * (1 if modulus else np.median(np.abs(z)) ** 2))
    assert c_ours <= c_docs * (1 + 1e-9) and c_ours <= c_naive * (1 + 1e-9)
    assert c_ours < 0.95 * c_docs  # a lower minimum than the documented start finds
    # Both describe the spectrum to within a few per cent.
    assert _rel_rms(ours.predict(f), docs.predict(f)) < 0.02


# -- report, table, plots, CLI ----------------------------------------------------------
def test_report_json_and_table() -> None:
    reports = [analyse_spectrum(table1_spectrum(label)) for label in TABLE1]
    text = format_table(reports)
    assert text.splitlines()[0].split()[:3] == ["spectrum", "R_GB", "(Ω)"]
    assert len(text.splitlines()) == 4
    doc = reports[0].to_dict()
    json.dumps(doc, allow_nan=False)
    assert doc["table"]["R_GB_ohm"]["value"] == pytest.approx(3188, rel=0.03)
    assert doc["conductivity"]["units"] == "S/cm"
    assert doc["arcs"][0]["assignment"]["process"] == "grain_boundary"
    assert doc["kk"]["verdict"] == "pass"


def test_plots_png_and_svg(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    from opsims.analysis.eis_plots import save_report_plot

    report = analyse_spectrum(table1_spectrum("0.1"))
    png = save_report_plot(report, tmp_path / "fit.png")
    svg = save_report_plot(report, tmp_path / "fit.svg")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert b"<svg" in svg.read_bytes()[:500]
    with pytest.raises(ValueError, match=r"\.png, \.svg"):
        save_report_plot(report, tmp_path / "fit.txt")


def test_cli_defaults_match_the_library() -> None:
    assert eis_cli.DEFAULT_CIRCUIT == DEFAULT_CIRCUIT
    assert eis_cli.DEFAULT_GEOMETRY_CM_1 == DEFAULT_GEOMETRY_CM_1


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "opsims.cli", "eis", "fit", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )


@needs_eis_files
def test_cli_json_on_the_real_mpt(tmp_path: Path) -> None:
    out = tmp_path / "mpt.svg"
    proc = _cli(str(MPT), "--json", "--plot", str(out))
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["schema"] == "opsims.eis-fit/1" and doc["circuit"] == DEFAULT_CIRCUIT
    assert "Hsu-Mansfeld" in doc["capacitance_formula"]
    (spec,) = doc["spectra"]
    assert spec["cycle"] == 1 and spec["n_points"] == 43
    assert spec["series_resistance"]["value_ohm"] == pytest.approx(63.5, abs=1.0)
    assert set(spec["parameters"]) == set(CIRCUIT.names)
    # One real arc (R ~ 45 ohm, apex ~ 0.36 Hz); the default circuit's second arc is
    # not supported by these data and is said to be so.
    arcs = spec["arcs"]
    assert [a["resolved"] for a in arcs].count(True) == 1
    assert any("not resolved" in w for w in spec["warnings"])
    assert spec["kk"]["verdict"] == "fail"
    assert [round(o["freq_hz"], 1) for o in spec["kk"]["outliers"]] == [56.2, 5.3]
    assert spec["fit_quality"]["weighting"] == "modulus" and spec["fit_quality"]["success"]
    assert doc["plots"] == [str(out)] and out.read_bytes().find(b"<svg") >= 0


@needs_eis_files
def test_cli_text_and_errors(tmp_path: Path) -> None:
    proc = _cli(str(MPT), "--circuit", "R0-p(R1,CPE1)", "--weighting", "unit", "--cycle", "1")
    assert proc.returncode == 0, proc.stderr
    assert "R1||CPE1" in proc.stdout and "Table" in proc.stdout
    bad = _cli(str(MPT), "--circuit", "R0-p(R1,CPE1")
    assert bad.returncode == 2 and "close p(" in bad.stderr
    missing = _cli(str(MPT), "--cycle", "7")
    assert missing.returncode == 2 and "no cycle 7" in missing.stderr
    broken = tmp_path / "broken.csv"
    broken.write_text("1,2,3\n4,x,6\n")
    proc = _cli(str(broken))
    assert proc.returncode == 2 and "broken.csv:2: column 'Re(Z)'" in proc.stderr


def test_cli_several_cycles_make_a_table_and_one_plot_each(tmp_path: Path) -> None:
    """An EC-Lab export with two spectra (cycle numbers 1 and 2), decimal commas."""
    cols = ["freq/Hz", "Re(Z)/Ohm", "-Im(Z)/Ohm", "time/s", "<Ewe>/V", "cycle number"]
    rows = []
    for cycle, label in ((1, "0.04 (I)"), (2, "0.1")):
        s = table1_spectrum(label)
        for f, z in zip(s.freq_hz, s.z, strict=True):
            vals = [f, z.real, -z.imag, 1.0, 0.0, cycle]
            rows.append("\t".join(f"{v:.7E}".replace(".", ",") for v in vals) + "\t")
    head = ["EC-Lab ASCII FILE", "Nb header lines : 6", "", "Safety Limits :", "\tEwe > 10 V"]
    path = tmp_path / "two.mpt"
    path.write_bytes("\r\n".join([*head, "\t".join(cols) + "\t", *rows]).encode("cp1252"))
    proc = _cli(str(path), "--plot", str(tmp_path / "fit.png"))
    assert proc.returncode == 0, proc.stderr
    table = [line.split() for line in proc.stdout.splitlines() if line.startswith("two.mpt #")]
    assert [row[:2] for row in table] == [["two.mpt", "#1"], ["two.mpt", "#2"]]
    assert float(table[0][2]) == pytest.approx(3188, rel=0.03)  # R_GB of 0.04 (I)
    assert (tmp_path / "fit-cycle1.png").is_file() and (tmp_path / "fit-cycle2.png").is_file()
    doc = json.loads(_cli(str(path), "--json", "--cycle", "2").stdout)
    (spec,) = doc["spectra"]
    assert spec["cycle"] == 2
    assert spec["table"]["R_GB_ohm"]["value"] == pytest.approx(15794, rel=0.03)
