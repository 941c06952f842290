"""The study's report: one Markdown page with the tables, beside its figures."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def write_report(out: Path, summary: dict[str, Any]) -> Path:
    lines = ["# The operando dual-polarity SIMS study, reproduced on the simulator", ""]
    checks = summary["checks"]
    passed = sum(c["passed"] for c in checks)
    lines += [
        f"{passed} of {len(checks)} checks against the simulator's ground truth pass "
        f"(preset `{summary.get('preset')}`).",
        "",
    ]
    lines += ["## Runs", "", "| region | run | end | trips |", "| --- | --- | --- | --- |"]
    for r in summary["runs"]:
        lines.append(f"| {r['name']} | `{r['run_id']}` | {r['reason']} | {len(r['trips'])} |")
    ccd = summary.get("ccd")
    if ccd:
        lines += [
            "",
            "## Cycle graphs and the critical current density (Fig. 2, Fig. 3)",
            "",
            f"CCD = **{ccd['ccd_ua_um2']} µA µm⁻²** ({ccd['note']}).",
            "",
            "| J (µA µm⁻²) | verdict | depleted | plateau (V) | min ratio |",
            "| --- | --- | --- | --- | --- |",
        ]
        for row in ccd["rows"]:
            plateau = row.get("plateau_v")
            ratio = row.get("min_ratio")
            lines.append(
                f"| {row['density_ua_um2']:g} | {row['verdict']} | {row['depleted']} | "
                f"{_f(plateau)} | {_f(ratio)} |"
            )
        lines += [
            "",
            "![CCD](figures/ccd.png)",
            "",
            "![cycle 0.04](figures/cycle-J0.04.png)",
            "![cycle 0.1](figures/cycle-J0.1.png)",
        ]
    eis = summary.get("eis")
    if eis:
        lines += [
            "",
            "## Impedance (Table 1)",
            "",
            "| | R_GB (Ω) | R_Int (Ω) | C_GB (F) | C_Int (F) | sigma_GB (S/cm) |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        for row in eis["table1"]:
            f, t = row["fit"], row["truth"]
            lines.append(
                f"| {row['label']} fit | {_f(f['R_GB'])} | {_f(f['R_Int'])} | "
                f"{_f(f['C_GB'])} | {_f(f['C_Int'])} | {_f(f['sigma_GB'])} |"
            )
            lines.append(
                f"| {row['label']} truth | {_f(t['R_GB'])} | {_f(t['R_Int'])} | "
                f"{_f(t['C_GB'])} | {_f(t['C_Int'])} | |"
            )
        lines += ["", "![EIS 0.04 (I)](figures/eis-J0.04-cycle1.png)"]
    maps = summary.get("maps")
    if maps:
        lines += [
            "",
            "## Ion maps of the 0.02 µA µm⁻² island (Fig. 1c)",
            "",
            f"Island width {maps['island_width_um']:.1f} µm "
            f"(truth {maps['island_width_truth_um']:.1f} µm). Counts on the island over "
            "counts outside its footprint:",
            "",
            "| " + " | ".join(maps["ratios_inside_outside"]) + " |",
            "| " + " | ".join("---" for _ in maps["ratios_inside_outside"]) + " |",
            "| " + " | ".join(f"{v:.2f}" for v in maps["ratios_inside_outside"].values()) + " |",
            "",
            "![Fig. 1c](figures/fig1c-maps.png)",
        ]
    prof = summary.get("profiles")
    if prof:
        lines += [
            "",
            "## Depth profiles (Fig. 4)",
            "",
            f"Count rates within ±{prof['roi_um']:g} µm of the probe; "
            f"enrichment over {prof['surface_nm'][0]:g} to {prof['surface_nm'][1]:g} nm "
            "against the non-sodiated region, with the specimen model's value:",
            "",
            "| region | species | enrichment | model |",
            "| --- | --- | --- | --- |",
        ]
        for row in prof["oxide_enrichment"]:
            lines.append(
                f"| {row['region']} | {row['species']} | {row['enrichment']:.2f} ± "
                f"{row['sigma']:.2f} | {row['model']:.2f} |"
            )
        lines += ["", "![Fig. 4](figures/fig4.png)"]
    if summary.get("render3d"):
        lines += [
            "",
            "## 3D reconstructions (Figs. 5, 6)",
            "",
            "| region | Na columns found (x, y µm) | truth |",
            "| --- | --- | --- |",
        ]
        for name, r in summary["render3d"].items():
            found = ", ".join(f"({c[0]:.0f}, {c[1]:.0f})" for c in r["found"]) or "none"
            truth = ", ".join(f"({c[0]:.0f}, {c[1]:.0f})" for c in r["truth"]) or "none"
            lines.append(f"| {name} | {found} | {truth} |")
        for fig in (
            "fig5-reference",
            "fig5-J0.04",
            "fig5-J0.1",
            "fig6-reference",
            "fig6-J0.04",
            "fig6-J0.1",
        ):
            lines.append(f"![{fig}](figures/{fig}.png)")
    lines += ["", "## Checks", "", "| check | expected | measured | |", "| --- | --- | --- | --- |"]
    for c in checks:
        lines.append(
            f"| {c['name']} | {c['expected']} | {c['measured']} | "
            f"{'pass' if c['passed'] else '**FAIL**'} |"
        )
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def _f(x: float | None) -> str:
    return "—" if x is None else f"{x:.3g}"
