"""Speed of the 3D render and of map extraction on the paper's raster: a 256 x 256 x 200
Na+ cube of a failed region (0.1 µA µm⁻², the specimen model's columns, Poisson counts,
10 nm slices), against naive baselines in the same run.

    make bench          # or: pytest benchmarks/test_render3d_speed.py --benchmark-only -s

- render: opsims bins to 64 x 64 x 50 voxels, keeps those at or above the 95th percentile
  and draws them to a PNG; the baseline draws every raw voxel at or above the raw 95th
  percentile (no binning), to a PNG of the same size. Target: 10 s for opsims.
- binning: numpy block sums against a Python loop over the voxels.
- map: one summed map over all slices, numpy against a Python loop over the slices.

Prints each median, the baseline / opsims ratio, and whether the render meets the target.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from opsims.analysis.cubeset import CubeSet, parameters_from_document
from opsims.analysis.maps import ion_map, save_figure, selection
from opsims.analysis.render3d import bin_counts, binned_volume, render_figure
from opsims.sim.specimen import Specimen, SpecimenConfig, SpecimenState
from support.simproc import default_document

TARGET_S = 10.0
FAILED = SpecimenState(
    plated_charge_c=3.6e-5,
    peak_plating_density_ua_um2=0.1,
    critical_current_density_ua_um2=0.04,
    failed=True,
    sei_fraction=0.3,
)
RESULTS: dict[str, float] = {}
PAIRS = {"render": ("render opsims", "render unbinned"), "bin": ("bin opsims", "bin loop"),
         "map": ("map opsims", "map loop")}  # fmt: skip


@pytest.fixture(scope="module")
def cubes() -> CubeSet:
    """256 x 256 x 200 slices of 10 nm (40 frames of 0.25 nm), Na+ only."""
    doc = default_document()
    doc["detector"]["raster"]["frames_per_slice"] = 40
    det, sims = parameters_from_document(doc)
    assert sims.fov_um is not None and sims.sputter_rate_nm_per_frame is not None
    spec = Specimen(SpecimenConfig(fov_um=sims.fov_um), det.species, det.nx, det.ny, 1)
    frames = np.full(200, det.frames_per_slice, dtype=np.int64)
    live = CubeSet({}, det, sims, frames, "bench").live_time_s("Na+")
    rng = np.random.default_rng(1)
    cube = np.empty((200, det.ny, det.nx), dtype=np.uint32)
    for z in range(200):
        rate = spec.rates((z + 0.5) * 10.0, FAILED)[det.species.index("Na+")]
        cube[z] = rng.poisson(rate * live[z])
    return CubeSet({"Na+": cube}, det, sims, frames, "bench")


def render_opsims(cs: CubeSet, out: Path) -> int:
    depth, sel = selection(cs)
    fig, renders = render_figure([binned_volume(cs, "Na+", sel, depth)])
    save_figure(fig, out)
    return renders[0].drawn


def render_unbinned(cs: CubeSet, out: Path) -> int:
    cube = cs.cubes["Na+"]
    z, y, x = np.nonzero(cube >= np.percentile(cube, 95))
    fig = Figure(figsize=(5.4, 4.8), layout="constrained")
    FigureCanvasAgg(fig)
    ax: Any = fig.add_subplot(projection="3d")
    points = ax.scatter(x, y, z, c=cube[z, y, x], s=1, marker="s", linewidths=0)
    ax.set_zlim(cube.shape[0], 0)
    fig.colorbar(points, ax=ax, shrink=0.6)
    save_figure(fig, out)
    return int(z.size)


def bin_loop(cube: npt.NDArray[np.uint32], f: tuple[int, int, int]) -> npt.NDArray[np.uint64]:
    nz, ny, nx = (-(-n // k) for n, k in zip(cube.shape, f, strict=True))
    out = np.zeros((nz, ny, nx), dtype=np.uint64)
    for k in range(nz):
        for j in range(ny):
            for i in range(nx):
                block = cube[k * f[0] : (k + 1) * f[0], j * f[1] : (j + 1) * f[1],
                             i * f[2] : (i + 1) * f[2]]  # fmt: skip
                out[k, j, i] = int(block.sum())
    return out


def map_loop(cube: npt.NDArray[np.uint32]) -> npt.NDArray[np.float64]:
    out = np.zeros(cube.shape[1:])
    for z in range(cube.shape[0]):
        out += cube[z]
    return out


def _record(name: str, benchmark: Any, note: str = "") -> None:
    median = float(benchmark.stats.stats.median)
    RESULTS[name] = median
    print(f"\n{name}: {median * 1e3:.1f} ms (median){note}")
    for key, (ours, theirs) in PAIRS.items():
        if name in (ours, theirs) and ours in RESULTS and theirs in RESULTS:
            ratio = RESULTS[theirs] / RESULTS[ours]
            line = f"{key}: {theirs} / {ours} = {ratio:.1f}x"
            if key == "render":
                verdict = "meets" if RESULTS[ours] <= TARGET_S else "misses"
                line += f"; opsims {verdict} the {TARGET_S:.0f} s target"
            print(line)


def test_render_opsims(benchmark: Any, cubes: CubeSet, tmp_path: Path) -> None:
    drawn = benchmark.pedantic(
        render_opsims, args=(cubes, tmp_path / "r.png"), rounds=5, warmup_rounds=1
    )
    _record("render opsims", benchmark, f"; {drawn} voxels drawn")


def test_render_unbinned(benchmark: Any, cubes: CubeSet, tmp_path: Path) -> None:
    drawn = benchmark.pedantic(render_unbinned, args=(cubes, tmp_path / "b.png"), rounds=2)
    _record("render unbinned", benchmark, f"; {drawn} voxels drawn")


def test_bin_opsims(benchmark: Any, cubes: CubeSet) -> None:
    binned = benchmark.pedantic(
        bin_counts, args=(cubes.cubes["Na+"], (4, 4, 4)), rounds=10, warmup_rounds=1
    )
    assert binned.shape == (50, 64, 64)
    _record("bin opsims", benchmark)


def test_bin_loop(benchmark: Any, cubes: CubeSet) -> None:
    cube = cubes.cubes["Na+"]
    binned = benchmark.pedantic(bin_loop, args=(cube, (4, 4, 4)), rounds=1)
    np.testing.assert_array_equal(binned, bin_counts(cube, (4, 4, 4)))
    _record("bin loop", benchmark)


def test_map_opsims(benchmark: Any, cubes: CubeSet) -> None:
    _, sel = selection(cubes)
    m = benchmark.pedantic(ion_map, args=(cubes, "Na+", sel), rounds=10, warmup_rounds=1)
    assert m.total == int(cubes.cubes["Na+"].sum())
    _record("map opsims", benchmark)


def test_map_loop(benchmark: Any, cubes: CubeSet) -> None:
    m = benchmark.pedantic(map_loop, args=(cubes.cubes["Na+"],), rounds=5)
    assert int(m.sum()) == int(cubes.cubes["Na+"].sum())
    _record("map loop", benchmark)
