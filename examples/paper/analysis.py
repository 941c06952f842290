"""The recorded study analysed as a user would, with the ``opsims`` commands (their
``--json`` output), and every result held against the simulator's ground truth."""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from opsims.analysis.figures import save_figure
from opsims.analysis.profile import DepthProfile
from opsims.analysis.profile_plots import overlay_figure
from opsims.sim.specimen import Specimen, SpecimenConfig, SpecimenState

OXIDES = ("ZrO2-", "SiO2-", "PO2-", "ZrO+")  # the SEI's species (Figs. 4, 6)
#: Below the Na layer of the island (100 nm) and within the SEI's near-surface layer (Fig. 4).
SURFACE_NM = (150.0, 500.0)
ROI_UM = 8.0  # the profile's region: ±8 µm around the probe, inside every footprint
TABLE1 = {"J=0.04 (I)": ("J=0.04", 1), "J=0.04 (II)": ("J=0.04", 3), "J=0.1": ("J=0.1", 1)}


class Checks:
    def __init__(self) -> None:
        self.items: list[dict[str, Any]] = []

    def add(self, name: str, passed: bool, expected: Any, measured: Any) -> None:
        self.items.append(
            {"name": name, "passed": bool(passed), "expected": expected, "measured": measured}
        )


def opsims(*args: str) -> dict[str, Any]:
    """One ``opsims`` command with ``--json``, as a process."""
    cmd = [sys.executable, "-m", "opsims.cli", *args, "--json"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[2:])}: exit {out.returncode}: {out.stderr.strip()}")
    doc: dict[str, Any] = json.loads(out.stdout)
    return doc


def analyse(out: Path, runs: list[dict[str, Any]], say: Callable[[str], None]) -> dict[str, Any]:
    truth = json.loads((out / "truth" / "truth.json").read_text())
    config = tomllib.loads((out / "opsimsd.toml").read_text())
    figures = out / "figures"
    figures.mkdir(exist_ok=True)
    by_name = {r["name"]: r for r in runs}
    run_dir = {r["name"]: str(out / "state" / "runs" / r["run_id"]) for r in runs}
    checks = Checks()
    for r in runs:
        checks.add(
            f"{r['name']}: the run completed without an interlock trip",
            r["reason"] == "complete" and not r["trips"],
            "complete, no trip",
            f"{r['reason']}, trips {r['trips']}",
        )
    model = _Model(config, truth)
    summary: dict[str, Any] = {"runs": runs, "figures": {}}
    say("  cycle graphs and the critical current density (opsims ccd)")
    summary["ccd"] = _ccd(run_dir, runs, figures, checks, config)
    say("  impedance (opsims eis fit)")
    summary["eis"] = _eis(run_dir, runs, truth, figures, checks)
    say("  ion maps of the 0.02 island (opsims map)")
    summary["maps"] = _island_maps(run_dir["J=0.02"], model, by_name, figures, checks)
    say("  depth profiles (opsims profile)")
    summary["profiles"] = _profiles(run_dir, model, figures, checks)
    say("  3D reconstructions and columns (opsims render3d)")
    summary["render3d"] = _renders(run_dir, model, figures, checks)
    summary["checks"] = checks.items
    summary["figures"] = sorted(str(p.relative_to(out)) for p in figures.glob("*.png"))
    return summary


# --- the ground truth of the specimen ---------------------------------------------------------


class _Model:
    """The simulator's specimen as it was when each region was profiled."""

    def __init__(self, config: dict[str, Any], truth: dict[str, Any]) -> None:
        det = truth["detector"]
        raster = config["detector"]["raster"]
        self.species = [s for p in raster["polarities"] for s in p["species"]]
        self.polarity = {s: p["name"] for p in raster["polarities"] for s in p["species"]}
        self.specimen = Specimen(
            SpecimenConfig.from_mapping(config["sim"].get("specimen", {})),
            self.species,
            raster["nx"],
            raster["ny"],
            int(det["specimen_seed"]),
        )
        # Regions in the order the runs made them: 1 the reference, then one per J.
        self.states: dict[int, SpecimenState] = {}
        for region in det["regions"]:
            if region["profiles"]:
                self.states[int(region["region"])] = SpecimenState(**region["profiles"][0]["state"])

    def region_of(self, name: str) -> int:
        order = ["reference", "J=0.02", "J=0.04", "J=0.06", "J=0.1", "J=0.2", "J=0.5"]
        return order.index(name) + 1

    def state(self, name: str) -> SpecimenState:
        return self.states[self.region_of(name)]

    def truth(self, name: str, depth_nm: float) -> dict[str, Any]:
        return self.specimen.composition_truth(depth_nm, self.state(name))

    def rate(self, name: str, depths: np.ndarray, roi: np.ndarray) -> dict[str, float]:
        """Each species' mean count rate over the ROI and depths, s⁻¹ per pixel."""
        rates = sum(
            self.specimen.rates(float(d), self.state(name))[:, roi].mean(axis=1) for d in depths
        ) / len(depths)
        return {s: float(rates[i]) for i, s in enumerate(self.species)}


# --- electrochemistry ----------------------------------------------------------------------------


def _ccd(
    run_dir: dict[str, str],
    runs: list[dict[str, Any]],
    figures: Path,
    checks: Checks,
    config: dict[str, Any],
) -> dict[str, Any]:
    regions = [run_dir[r["name"]] for r in runs if r["density_ua_um2"] is not None]
    doc = opsims(
        "ccd", *regions, "--current-density-from", "step", "--plot", str(figures / "ccd.png")
    )
    for r in runs:
        if r["name"] in ("J=0.04", "J=0.1"):
            tag = r["name"].replace("=", "")
            opsims("cycle", run_dir[r["name"]], "--plot", str(figures / f"cycle-{tag}.png"))
    expected = config["sim"].get("cell", {}).get("critical_current_density_ua_um2", 0.04)
    checks.add(
        "critical current density (µA µm⁻²)",
        doc["ccd_ua_um2"] == expected,
        expected,
        doc["ccd_ua_um2"],
    )
    for row in doc["rows"]:
        want = "cycled" if row["density_ua_um2"] <= expected else "failed"
        checks.add(
            f"J={row['density_ua_um2']:g}: {want}", row["verdict"] == want, want, row["verdict"]
        )
    return doc


def _eis(
    run_dir: dict[str, str],
    runs: list[dict[str, Any]],
    truth: dict[str, Any],
    figures: Path,
    checks: Checks,
) -> dict[str, Any]:
    sweeps = iter(truth["potentiostat"]["sweeps"])  # in the order they were measured
    fits: dict[str, list[dict[str, Any]]] = {}
    true_of: dict[str, list[dict[str, float]]] = {}
    for r in runs:
        plot = ["--plot", str(figures / f"eis-{r['name'].replace('=', '')}.png")]
        doc = opsims(
            "eis", "fit", run_dir[r["name"]], *(plot if r["name"] in ("J=0.04", "J=0.1") else [])
        )
        fits[r["name"]] = doc["spectra"]
        true_of[r["name"]] = [next(sweeps)["parameters"] for _ in doc["spectra"]]
    table = []
    for label, (name, cycle) in TABLE1.items():
        spectrum = fits[name][cycle]
        t = true_of[name][cycle]
        got = _table_row(spectrum)
        want = {"R_GB": t["r_gb"], "R_Int": t["r_int"], "C_GB": t["c_gb"], "C_Int": t["c_int"]}
        table.append({"label": label, "fit": got, "truth": want})
        for key, value in want.items():
            measured = got.get(key)
            ok = measured is not None and abs(measured - value) <= 0.15 * value
            checks.add(f"Table 1 {label}: {key}", ok, _sig(value), _sig(measured))
        arcs = [a["assignment"]["process"] for a in spectrum["arcs"]]
        checks.add(
            f"Table 1 {label}: arcs assigned",
            arcs == ["grain_boundary", "surface_layer"],
            ["grain_boundary", "surface_layer"],
            arcs,
        )
    return {"table1": table, "fits": {k: len(v) for k, v in fits.items()}}


def _table_row(spectrum: dict[str, Any]) -> dict[str, float | None]:
    """R and C_eff of the arcs assigned to the grain boundary and the interfacial layer."""
    row: dict[str, float | None] = {
        "R_GB": None,
        "R_Int": None,
        "C_GB": None,
        "C_Int": None,
        "sigma_GB": None,
    }
    for arc in spectrum["arcs"]:
        key = {"grain_boundary": "GB", "surface_layer": "Int"}.get(
            arc["assignment"]["process"] or ""
        )
        if key is not None:
            row[f"R_{key}"], row[f"C_{key}"] = arc["r_ohm"], arc["c_eff_f"]
    sigma = spectrum["conductivity"]["sigma_gb"]
    row["sigma_GB"] = sigma["value"] if sigma else None
    return row


def _sig(x: float | None) -> float | None:
    return None if x is None else float(f"{x:.3g}")


# --- SIMS ----------------------------------------------------------------------------------------


def _island_maps(
    run: str, model: _Model, by_name: dict[str, Any], figures: Path, checks: Checks
) -> dict[str, Any]:
    """Fig. 1c: the 0.02 island's ion maps over its Na layer."""
    npy = figures / "fig1c.npy"
    doc = opsims(
        "map",
        run,
        "--depth-nm",
        "0-80",
        "--plot",
        str(figures / "fig1c-maps.png"),
        "--npy",
        str(npy),
    )
    maps = {s: np.load(figures / f"fig1c-{s}.npy").astype(np.float64) for s in model.species}
    for f in figures.glob("fig1c-*.npy"):
        f.unlink()  # the PNG is the figure
    t = model.truth("J=0.02", 40.0)
    island = np.asarray(t["island_mask"])
    outside = ~np.asarray(t["footprint_mask"])
    gains = model.specimen.config.island_gain
    ratios = {}
    for s in model.species:
        ratio = maps[s][island].mean() / maps[s][outside].mean()
        ratios[s] = ratio
        if abs(np.log(gains[s])) > np.log(1.5):  # the species the island changes clearly
            up = gains[s] > 1
            ok = ratio > 1.5 if up else ratio < 1 / 1.5
            checks.add(
                f"Fig. 1c: {s} {'higher' if up else 'lower'} on the island",
                ok,
                f"x{gains[s]:g} (model gain)",
                round(float(ratio), 2),
            )
    na = maps["Na+"]
    lit = na > 0.5 * (np.percentile(na[island], 90) + np.median(na[outside]))
    pixel = float(doc.get("pixel_um") or 150.0 / na.shape[1])
    width = 2 * np.sqrt(lit.sum() / np.pi) * pixel
    w_true = float(t["island_width_um"])
    checks.add(
        "Fig. 1c: island width (µm)",
        abs(width - w_true) <= 0.2 * w_true,
        round(w_true, 1),
        round(float(width), 1),
    )
    return {
        "ratios_inside_outside": {k: round(float(v), 3) for k, v in ratios.items()},
        "island_width_um": width,
        "island_width_truth_um": w_true,
    }


def _profiles(
    run_dir: dict[str, str], model: _Model, figures: Path, checks: Checks
) -> dict[str, Any]:
    """Fig. 4: both polarities, reference, cycled (0.04) and failed (0.1) regions, as
    count rates; the SEI's oxides enriched near the surface."""
    roi = f"--roi-um=-{ROI_UM}:{ROI_UM},-{ROI_UM}:{ROI_UM}"
    profiles: dict[str, DepthProfile] = {}
    shares: dict[str, dict[str, tuple[float, float]]] = {}
    for name in ("reference", "J=0.04", "J=0.1"):
        tag = name.replace("=", "")
        csv = figures / f"profile-{tag}.csv"
        opsims(
            "profile",
            run_dir[name],
            roi,
            "--normalise",
            "rate",
            "--csv",
            str(csv),
            "--plot",
            str(figures / f"fig4-{tag}.png"),
        )
        profiles[name] = p = DepthProfile.from_csv(csv)
        rows = p.depth.slices_between(*SURFACE_NM)
        shares[name] = {
            s: (
                float(np.mean(p[s].value[rows])),
                float(np.sqrt(np.sum(p[s].sigma[rows] ** 2)) / len(rows)),
            )
            for s in p.species
        }
    fig = overlay_figure(
        [profiles[n] for n in profiles], ["non-sodiated", "0.04 (cycled)", "0.1 (failed)"]
    )
    save_figure(fig, figures / "fig4.png")
    # The model's shares over the same ROI and depths.
    pixel = 150.0 / model.specimen.nx
    x = (np.arange(model.specimen.nx) + 0.5 - model.specimen.nx / 2) * pixel
    inside = (np.abs(x)[None, :] <= ROI_UM) & (np.abs(x)[:, None] <= ROI_UM)
    depths = np.arange(SURFACE_NM[0], SURFACE_NM[1] + 1, 10.0)
    expected = {n: model.rate(n, depths, inside) for n in profiles}
    table = []
    for name in ("J=0.04", "J=0.1"):
        for s in OXIDES:
            (m, sm), (m0, sm0) = shares[name][s], shares["reference"][s]
            ratio = m / m0
            sigma = ratio * np.hypot(sm / m, sm0 / m0)
            want = expected[name][s] / expected["reference"][s]
            table.append(
                {"region": name, "species": s, "enrichment": ratio, "sigma": sigma, "model": want}
            )
            # The model's enrichment within the Poisson error (and 5 % for the ROI's edge);
            # one the counts can show (5 sigma or more) must also stand out of the noise.
            ok = abs(ratio - want) <= 3 * sigma + 0.05 * want
            if (want - 1) / sigma >= 5:
                ok = ok and ratio - 3 * sigma > 1
            checks.add(
                f"Fig. 4: {s} near the surface at {name}, relative to non-sodiated",
                ok,
                round(want, 2),
                f"{ratio:.2f} ± {sigma:.2f}",
            )
    return {"surface_nm": SURFACE_NM, "roi_um": ROI_UM, "oxide_enrichment": table}


def _renders(
    run_dir: dict[str, str], model: _Model, figures: Path, checks: Checks
) -> dict[str, Any]:
    """Figs. 5 and 6: Na⁺ and the oxides in 3D; the Na columns of the failed region."""
    out: dict[str, Any] = {}
    for name in ("reference", "J=0.04", "J=0.1"):
        tag = name.replace("=", "")
        opsims(
            "render3d",
            run_dir[name],
            "--species",
            "Na+",
            "--plot",
            str(figures / f"fig5-{tag}.png"),
        )
        opsims(
            "render3d",
            run_dir[name],
            "--species",
            "ZrO2-,SiO2-,PO2-",
            "--plot",
            str(figures / f"fig6-{tag}.png"),
        )
        # Below the island's Na layer, where the transport columns are.
        doc = opsims(
            "render3d", run_dir[name], "--species", "Na+", "--depth-nm", "200-2000", "--columns"
        )
        found = doc["columns"][0]["columns"]
        t = model.truth(name, 1000.0)
        true_centres = [tuple(c) for c in t["column_centers_um"]]
        out[name] = {"found": [c["centre"] for c in found], "truth": true_centres}
        if name == "reference":
            checks.add(
                "Fig. 5(i): no Na columns in the non-sodiated region", not found, 0, len(found)
            )
            continue
        matched = _match(found, true_centres, t["column_widths_um"])
        label = (
            "Fig. 5(iii): Na columns of the failed region"
            if name == "J=0.1"
            else ("Fig. S4(i): one Na column under the probe below the CCD")
        )
        checks.add(
            label,
            matched == len(true_centres) == len(found),
            f"{len(true_centres)} at {[tuple(round(v, 1) for v in c) for c in true_centres]}",
            f"{len(found)} found, {matched} where the truth has one",
        )
    return out


def _match(
    found: list[dict[str, Any]], centres: list[tuple[float, float]], widths: list[float]
) -> int:
    """How many true columns have a found column within half their width (+ a pixel)."""
    hits = 0
    for (x, y), w in zip(centres, widths, strict=True):
        if any(np.hypot(c["centre"][0] - x, c["centre"][1] - y) <= 0.5 * w + 2.5 for c in found):
            hits += 1
    return hits
