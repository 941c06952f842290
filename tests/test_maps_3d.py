"""Ion maps, 3D renders, the column finder and the volume exports, held to the simulator's
ground truth: cubes drawn from the specimen model (Poisson counts from its rates, or the
native detector emitter's true counts) of an unsodiated region, a region cycled at the
CCD (0.04 µA µm⁻²) and one failed at 0.1 µA µm⁻², from the surface to 2 µm."""

from __future__ import annotations

import base64
import copy
import json
import math
import struct
import subprocess
import sys
import time
import tomllib
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import numpy.typing as npt
import pytest
from opsims._native import DetectorEmitter
from opsims.analysis.columns import ColumnSearch, find_columns
from opsims.analysis.cubeset import CubeSet, load_cubes, parameters_from_document
from opsims.analysis.imaging_cli import main
from opsims.analysis.maps import (
    centroid,
    depth_axis,
    ion_map,
    ion_maps,
    maps_figure,
    ortho_figure,
    ortho_slices,
    save_figure,
    select_slices,
    selection,
)
from opsims.analysis.render3d import (
    bin_counts,
    bin_factors,
    binned_volume,
    plan_render,
    render_figure,
)
from opsims.analysis.volume_export import write_h5, write_npy, write_vti
from opsims.sim.specimen import Specimen, SpecimenConfig, SpecimenState
from support.simproc import default_document, merge, run_daemon, run_sim, small_raster, to_toml

U32 = npt.NDArray[np.uint32]
FAILED = SpecimenState(
    plated_charge_c=3.6e-5,
    peak_plating_density_ua_um2=0.1,
    critical_current_density_ua_um2=0.04,
    failed=True,
    sei_fraction=0.3,
)
CYCLED = SpecimenState(
    plated_charge_c=3.6e-5,
    peak_plating_density_ua_um2=0.04,
    critical_current_density_ua_um2=0.04,
    failed=False,
    sei_fraction=0.3,
)
UNSODIATED = SpecimenState()
#: Below the Na island layer (100 nm thick, 20 nm interface): only columns and matrix.
BELOW_ISLAND = (200.0, 2000.0)


def document(
    nx: int = 256, fov_um: float = 150.0, frames_per_slice: int = 80, rate: float = 0.25
) -> dict[str, Any]:
    """The shipped configuration with this raster and depth calibration; no magnet settle,
    so every frame's live time is the dwell times the pixels."""
    d = copy.deepcopy(default_document())
    d["detector"]["raster"].update(nx=nx, ny=nx, frames_per_slice=frames_per_slice)
    for p in d["detector"]["raster"]["polarities"]:
        p["settle_ticks"] = 0
    d["sims"].update(fov_um=fov_um, sputter_rate_nm_per_frame=rate)
    return d


def poisson_cubes(
    state: SpecimenState, species: tuple[str, ...], *, n_slices: int = 100, seed: int = 1
) -> tuple[Specimen, CubeSet]:
    """Counts drawn with numpy from the specimen's rates: the paper's 150 µm field on
    256 x 256 pixels, 20 nm slices (80 frames of 0.25 nm), 0-2000 nm. Each slice's mean
    is the rate averaged over four depths within it times the species' live time."""
    det, sims = parameters_from_document(document())
    assert sims.fov_um is not None and sims.sputter_rate_nm_per_frame is not None
    spec = Specimen(SpecimenConfig(fov_um=sims.fov_um), det.species, det.nx, det.ny, seed)
    frames = np.full(n_slices, det.frames_per_slice, dtype=np.int64)
    empty = CubeSet({}, det, sims, frames, "specimen")
    rows = [det.species.index(s) for s in species]
    live = {s: empty.live_time_s(s) for s in species}
    rng = np.random.default_rng(seed)
    cubes = {s: np.empty((n_slices, det.ny, det.nx), dtype=np.uint32) for s in species}
    dz = det.frames_per_slice * sims.sputter_rate_nm_per_frame
    for z in range(n_slices):
        rates = np.mean([spec.rates((z + (k + 0.5) / 4) * dz, state)[rows] for k in range(4)], 0)
        for r, s in zip(rates, species, strict=True):
            cubes[s][z] = rng.poisson(r * live[s][z])
    return spec, CubeSet(cubes, det, sims, frames, "specimen")


def emitted_cubes(
    state: SpecimenState, *, n: int = 48, frames: int = 400, seed: int = 5
) -> tuple[dict[str, Any], Specimen, CubeSet]:
    """The native detector emitter's true counts, frame by frame at each frame's depth:
    a 75 µm field on 48 x 48 pixels, 100 nm slices (20 frames of 5 nm), all nine species.
    Seed 5 puts the failed island well off the probe along x (Fig. 1b(v))."""
    doc = document(nx=n, fov_um=75.0, frames_per_slice=20, rate=5.0)
    det, sims = parameters_from_document(doc)
    assert sims.fov_um is not None and sims.sputter_rate_nm_per_frame is not None
    spec = Specimen(SpecimenConfig(fov_um=sims.fov_um), det.species, n, n, seed)
    a = det.engine_args()
    em = DetectorEmitter(
        a["record_type"], a["tick_s"], n, n, a["dwell_ticks"], a["polarities"],
        line_settle_ticks=a["line_settle_ticks"], flyback_ticks=a["flyback_ticks"],
        frames_per_slice=det.frames_per_slice, frame_marker=a["frame_marker"],
        line_start_marker=a["line_start_marker"], line_stop_marker=a["line_stop_marker"],
        record_truth=True, seed=seed,
    )  # fmt: skip
    period = em.frame_period_ticks
    for f in range(frames):
        em.set_rates(spec.rates(f * sims.sputter_rate_nm_per_frame, state))
        em.emit_until((f + 1) * period - 1)  # every line of frame f has started
    cubes = {s: em.truth_cube(s) for s in det.species}
    n_slices = frames // det.frames_per_slice
    slices = np.full(n_slices, det.frames_per_slice, dtype=np.int64)
    return doc, spec, CubeSet(cubes, det, sims, slices, "emitter")


@pytest.fixture(scope="module")
def failed() -> tuple[Specimen, CubeSet]:
    return poisson_cubes(FAILED, ("Na+", "O-", "ZrO2-"))


@pytest.fixture(scope="module")
def cycled() -> tuple[Specimen, CubeSet]:
    return poisson_cubes(CYCLED, ("Na+", "O-"), seed=2)


@pytest.fixture(scope="module")
def unsodiated() -> tuple[Specimen, CubeSet]:
    return poisson_cubes(UNSODIATED, ("Na+", "O-"), seed=3)


@pytest.fixture(scope="module")
def emitted() -> tuple[dict[str, Any], Specimen, CubeSet]:
    return emitted_cubes(FAILED)


@pytest.fixture(scope="module")
def npz_input(
    tmp_path_factory: pytest.TempPathFactory, emitted: tuple[dict[str, Any], Specimen, CubeSet]
) -> tuple[Path, Path]:
    """The emitted cubes as ``opsims replay --out`` writes them, and their configuration."""
    doc, _, cs = emitted
    d = tmp_path_factory.mktemp("npz")
    npz, config = d / "run.npz", d / "opsimsd.toml"
    frames = int(cs.frames_in_slice.sum())
    arrays: dict[str, Any] = {k: v for k, v in cs.cubes.items()}
    np.savez(npz, frames_per_slice=np.int64(cs.frames_per_slice), frames=np.int64(frames), **arrays)
    config.write_text(to_toml(doc))
    return npz, config


# --- maps ----------------------------------------------------------------------------------


def test_a_map_is_the_cube_summed_over_the_depth_range(
    emitted: tuple[dict[str, Any], Specimen, CubeSet],
) -> None:
    _, _, cs = emitted
    depth = depth_axis(cs)
    assert depth.calibration == "sputter rate"
    np.testing.assert_allclose(depth.edges, np.arange(21) * 100.0)
    # 250-1050 nm: the slices centred at 250, 350, ... 950 nm (1050 is a centre too).
    sel = select_slices(depth, depth_nm=(250.0, 1050.0))
    assert (sel.start, sel.stop, sel.depth_nm) == (2, 11, (200.0, 1100.0))
    maps = ion_maps(cs, None, sel)
    assert [m.species for m in maps] == cs.species
    for m in maps:
        cube = cs.cubes[m.species]
        np.testing.assert_array_equal(m.counts, cube[2:11].sum(axis=0, dtype=np.uint64))
        assert m.total == int(cube[2:11].sum())
        # Per-frame switching: each positive species in 5 of 20 frames, negative in 4.
        frames = 5 if m.polarity == "positive" else 4
        assert m.live_time_s == pytest.approx(9 * frames * 2e-6)
    by_slice = ion_map(cs, "Na+", select_slices(depth, slices=(2, 11)))
    np.testing.assert_array_equal(by_slice.counts, maps[0].counts)
    # A measured crater depth replaces the sputter rate: 1000 nm over the same frames.
    crater, sel = selection(cs, depth_nm=(0.0, 100.0), crater_depth_nm=1000.0)
    assert crater.calibration == "crater depth" and (sel.start, sel.stop) == (0, 2)


def test_map_axes_put_the_island_where_the_truth_does(
    emitted: tuple[dict[str, Any], Specimen, CubeSet],
) -> None:
    _, spec, cs = emitted
    truth: dict[str, Any] = spec.composition_truth(50.0, FAILED)
    m = ion_map(cs, "Na+", select_slices(depth_axis(cs), depth_nm=(0.0, 100.0)))
    # The map's µm axes are the specimen's pixel centres, the probe at (0, 0).
    np.testing.assert_allclose(m.x, truth["x_um"])
    np.testing.assert_allclose(m.y, truth["y_um"])
    assert m.extent == (-37.5, 37.5, 37.5, -37.5)
    # The island from the counts alone: Na+ several times the matrix (Fig. 1c).
    found = m.counts > 2.6 * np.median(m.counts)
    mask = truth["island_mask"]
    assert (found & mask).sum() / (found | mask).sum() > 0.85
    xx, yy = np.meshgrid(truth["x_um"], truth["y_um"])
    tx, ty = float(xx[mask].mean()), float(yy[mask].mean())
    assert tx > 8 and abs(ty) < 3  # the failed island lies off the probe along +x
    cx, cy = centroid(m, found)
    p = truth["pixel_um"]
    assert math.hypot(cx - tx, cy - ty) < p, ((cx, cy), (tx, ty))


def test_map_and_ortho_figures(
    tmp_path: Path, emitted: tuple[dict[str, Any], Specimen, CubeSet]
) -> None:
    _, _, cs = emitted
    _, sel = selection(cs, depth_nm=(0.0, 100.0))
    fig = maps_figure(ion_maps(cs, None, sel))
    # Fig. 1c: one row per polarity, a map and its own colour bar per species.
    images = [ax for ax in fig.axes if ax.images]
    assert [ax.get_title() for ax in images] == cs.species
    assert len(fig.axes) == 2 * len(cs.species)
    png = save_figure(fig, tmp_path / "maps.png")
    assert png.stat().st_size > 20_000
    o = ortho_slices(cs, "Na+", x=10.0, y=-2.0, depth=150.0)
    assert o.index == (30, 22, 1)  # pixels centred at 10.16 and -2.34 µm; 100-200 nm
    np.testing.assert_array_equal(o.xz, cs.cubes["Na+"][:, 22, :])
    np.testing.assert_array_equal(o.yz, cs.cubes["Na+"][:, :, 30])
    np.testing.assert_array_equal(o.xy, cs.cubes["Na+"][1])
    assert o.position == pytest.approx((10.15625, -2.34375, 150.0))
    assert save_figure(ortho_figure(o), tmp_path / "ortho.png").stat().st_size > 10_000
    with pytest.raises(ValueError, match="outside"):
        ortho_slices(cs, "Na+", x=100.0)


def test_bad_ranges_and_species_are_refused(
    emitted: tuple[dict[str, Any], Specimen, CubeSet],
) -> None:
    _, _, cs = emitted
    depth = depth_axis(cs)
    for rng, message in [
        ((500.0, 200.0), "0 <= A < B"),
        ((3000.0, 4000.0), "holds no slice"),
    ]:
        with pytest.raises(ValueError, match=message):
            select_slices(depth, depth_nm=rng)
    with pytest.raises(ValueError, match="not within"):
        select_slices(depth, slices=(5, 50))
    with pytest.raises(ValueError, match="no species Li\\+"):
        ion_maps(cs, ["Na+", "Li+"], select_slices(depth))
    uncalibrated = CubeSet(cs.cubes, cs.detector, type(cs.sims)(), cs.frames_in_slice, "x")
    with pytest.raises(ValueError, match="needs a depth calibration"):
        selection(uncalibrated, depth_nm=(0.0, 100.0))
    m = ion_map(uncalibrated, "Na+", select_slices(depth_axis(uncalibrated), slices=(0, 1)))
    assert m.lateral_unit == "pixel" and m.x[0] == 0.0


# --- columns -------------------------------------------------------------------------------


def _match(search: ColumnSearch, truth: dict[str, Any]) -> list[tuple[int, int]]:
    """Each true column and the found column nearest to it."""
    found = np.array([c.centre for c in search.columns])
    pairs = []
    for k, (x, y) in enumerate(truth["column_centers_um"]):
        pairs.append((k, int(np.argmin(np.hypot(found[:, 0] - x, found[:, 1] - y)))))
    return pairs


@pytest.mark.parametrize("species", ["Na+", "O-"])
def test_the_failed_regions_columns_are_found_where_the_truth_put_them(
    failed: tuple[Specimen, CubeSet], species: str
) -> None:
    """Fig. 5(iii), Fig. S4(ii-iii), Fig. S9: sporadic columns under a failed region,
    in Na+ and in O- that tracks it."""
    spec, cs = failed
    truth: dict[str, Any] = spec.composition_truth(1000.0, FAILED)
    depth, sel = selection(cs, depth_nm=BELOW_ISLAND)
    search = find_columns(cs, species, sel, depth)
    assert len(search.columns) == len(truth["column_centers_um"]) == 5
    pairs = _match(search, truth)
    assert sorted(j for _, j in pairs) == list(range(5))  # one found column per true one
    p = truth["pixel_um"]
    for k, j in pairs:
        c, width = search.columns[j], truth["column_widths_um"][k]
        x, y = truth["column_centers_um"][k]
        assert math.hypot(c.centre[0] - x, c.centre[1] - y) < p + 0.1 * width, (k, c.centre)
        # Full width at half maximum: a little inside the soft 1 µm edge of the disc.
        assert 0.7 * width < c.width < 1.2 * width, (k, c.width, width)
        assert c.extent is not None
        top, bottom = truth["column_depths_nm"][k]
        island = truth["island_mask"][np.argmin(np.abs(truth["y_um"] - y)),
                                      np.argmin(np.abs(truth["x_um"] - x))]  # fmt: skip
        if not island:  # under the island the Na layer above joins the column
            assert abs(c.extent[0] - top) <= 40, (k, c.extent, top)
        if bottom < 1900:
            assert abs(c.extent[1] - bottom) <= 40 and not c.reaches_end, (k, c.extent)
        else:
            assert c.reaches_end and c.extent[1] == 2000.0


def test_one_column_under_the_probe_below_the_ccd(cycled: tuple[Specimen, CubeSet]) -> None:
    """Fig. S4(i): a single column directly under the probe, with no lower end."""
    spec, cs = cycled
    truth: dict[str, Any] = spec.composition_truth(1000.0, CYCLED)
    depth, sel = selection(cs, depth_nm=BELOW_ISLAND)
    search = find_columns(cs, "Na+", sel, depth)
    assert len(search.columns) == 1
    c, width = search.columns[0], truth["column_widths_um"][0]
    assert truth["column_centers_um"] == [(0.0, 0.0)]
    assert math.hypot(*c.centre) < truth["pixel_um"] + 0.1 * width
    assert 0.7 * width < c.width < 1.2 * width
    assert c.extent is not None and c.reaches_end and c.contrast > 3


def test_no_column_in_an_unsodiated_region(unsodiated: tuple[Specimen, CubeSet]) -> None:
    spec, cs = unsodiated
    assert spec.composition_truth(1000.0, UNSODIATED)["column_centers_um"] == []
    for species in ("Na+", "O-"):
        for rng in (BELOW_ISLAND, (0.0, 2000.0)):
            depth, sel = selection(cs, depth_nm=rng)
            search = find_columns(cs, species, sel, depth)
            assert search.columns == [], (species, rng, search.to_dict())


# --- 3D renders ----------------------------------------------------------------------------


def test_binning_sums_blocks_including_partial_ones() -> None:
    rng = np.random.default_rng(0)
    cube = rng.integers(0, 50, (13, 10, 7), dtype=np.uint32)
    for factors in [(1, 1, 1), (2, 2, 2), (4, 3, 5), (13, 10, 7), (5, 5, 1)]:
        fz, fy, fx = factors
        got = bin_counts(cube, factors)
        want = np.zeros(got.shape, dtype=np.uint64)
        for z, y, x in np.ndindex(cube.shape):
            want[z // fz, y // fy, x // fx] += cube[z, y, x]
        np.testing.assert_array_equal(got, want)
        assert got.sum() == cube.sum()
    assert bin_factors((200, 256, 256)) == (4, 4, 4)
    assert bin_factors((100, 256, 128), 64) == (2, 4, 4)


def test_render_shows_the_columns_in_raw_counts(
    tmp_path: Path, failed: tuple[Specimen, CubeSet]
) -> None:
    """Figs. 5(iii) and 6(iii): Na+, O- and ZrO2- of the failed region side by side."""
    spec, cs = failed
    truth: dict[str, Any] = spec.composition_truth(1000.0, FAILED)
    depth, sel = selection(cs, depth_nm=BELOW_ISLAND)
    species = ["Na+", "O-", "ZrO2-"]
    volumes = [binned_volume(cs, s, sel, depth) for s in species]
    fig, renders = render_figure(volumes, title="failed, 0.1 µA µm⁻²")
    png = save_figure(fig, tmp_path / "render.png")
    width, height = struct.unpack(">II", png.read_bytes()[16:24])  # the PNG's IHDR
    assert (width, height) == (int(3 * 5.4 * 120), int(4.8 * 120))
    assert png.stat().st_size > 50_000
    for vol, r in zip(volumes, renders, strict=True):
        raw = cs.cubes[vol.species][sel.start : sel.stop]
        # 256 x 256 x 90 slices into 64 x 64 x 45 voxels of 4 x 4 x 2.
        assert r.factors == (2, 4, 4) and r.shape == (45, 64, 64)
        binned = raw.reshape(45, 2, 64, 4, 64, 4).sum(axis=(1, 3, 5), dtype=np.uint64)
        np.testing.assert_array_equal(vol.counts, binned)
        # The colour bar spans the raw binned counts, not a normalised scale.
        assert r.colour_range == (float(binned.min()), float(binned.max()))
        assert r.threshold == pytest.approx(np.percentile(binned, 95))
        assert r.drawn == r.above == int((binned >= r.threshold).sum())
        assert 0.04 * binned.size < r.drawn < 0.06 * binned.size
    np.testing.assert_allclose(volumes[0].depth_edges[[0, -1]], [0.2, 2.0])
    np.testing.assert_allclose(volumes[0].x_edges[[0, -1]], [-75.0, 75.0])
    # The brightest 1 % of Na+ voxels below the island (about as many as the columns
    # fill) lie in the true columns.
    _, keep = plan_render(volumes[0], percentile=99.0)
    _, iy, ix = np.unravel_index(keep, volumes[0].counts.shape)
    xc, yc, _ = volumes[0].centres()
    near = np.zeros(keep.size, dtype=bool)
    for (x, y), w in zip(truth["column_centers_um"], truth["column_widths_um"], strict=True):
        near |= np.hypot(xc[ix] - x, yc[iy] - y) < w / 2 + 2.0
    assert near.mean() > 0.95


def test_render_thresholds_and_caps(failed: tuple[Specimen, CubeSet]) -> None:
    _, cs = failed
    depth, sel = selection(cs, depth_nm=BELOW_ISLAND)
    vol = binned_volume(cs, "Na+", sel, depth, max_bins=32)
    assert vol.factors == (3, 8, 8) and vol.counts.shape == (30, 32, 32)
    level = float(np.median(vol.counts))
    r, keep = plan_render(vol, threshold=level)
    assert r.rule == "absolute" and r.above == int((vol.counts >= level).sum())
    r, keep = plan_render(vol, percentile=50.0, max_points=100)
    assert r.drawn == keep.size == 100 and r.above > 100
    # The cap keeps the highest voxels.
    assert vol.counts.ravel()[keep].min() >= np.sort(vol.counts.ravel())[-100]
    with pytest.raises(ValueError, match="percentile"):
        plan_render(vol, percentile=100.0)


# --- exports -------------------------------------------------------------------------------


def read_vti(path: Path) -> tuple[ET.Element, dict[str, npt.NDArray[Any]]]:
    """An independent reader: the XML head with xml.etree, the arrays from the raw
    appended block (UInt64 byte count + data) or from inline base64."""
    data = path.read_bytes()
    marker = b'<AppendedData encoding="raw">'
    cut = data.find(marker)
    head = data if cut < 0 else data[:cut] + b"</VTKFile>"
    root = ET.fromstring(head)
    assert root.get("type") == "ImageData" and root.get("header_type") == "UInt64"
    assert root.get("byte_order") == "LittleEndian" and root.get("version") == "1.0"
    appended = b"" if cut < 0 else data[data.index(b"_", cut) + 1 :]
    arrays = {}
    for a in root.iter("DataArray"):
        assert a.get("type") == "UInt32"
        if a.get("format") == "appended":
            at = int(a.get("offset", "-1"))
            (size,) = struct.unpack("<Q", appended[at : at + 8])
            raw = appended[at + 8 : at + 8 + size]
        else:
            assert a.get("format") == "binary"
            block = base64.b64decode((a.text or "").strip())
            (size,) = struct.unpack("<Q", block[:8])
            raw = block[8:]
            assert len(raw) == size
        arrays[a.get("Name", "")] = np.frombuffer(raw, dtype="<u4")
    return root, arrays


@pytest.mark.parametrize(("encoding", "location"), [("raw", "cell"), ("base64", "point")])
def test_vti_reads_back_exactly(
    tmp_path: Path,
    emitted: tuple[dict[str, Any], Specimen, CubeSet],
    encoding: Any,
    location: Any,
) -> None:
    _, _, cs = emitted
    depth, sel = selection(cs, depth_nm=(250.0, 1050.0))  # slices 2-10: 200-1100 nm
    species = ["Na+", "O-", "ZrO2-"]
    path = write_vti(
        tmp_path / "v.vti", cs, species, sel, depth, encoding=encoding, location=location
    )
    root, arrays = read_vti(path)
    image = root.find("ImageData")
    assert image is not None
    extent = [int(v) for v in (image.get("WholeExtent") or "").split()]
    origin = [float(v) for v in (image.get("Origin") or "").split()]
    spacing = [float(v) for v in (image.get("Spacing") or "").split()]
    piece = image.find("Piece")
    assert piece is not None and piece.get("Extent") == image.get("WholeExtent")
    p = 75.0 / 48
    assert spacing == pytest.approx([p, p, 0.1])  # µm; z: 100 nm slices into the sample
    if location == "cell":
        assert extent == [0, 48, 0, 48, 0, 9]
        assert origin == pytest.approx([-37.5, -37.5, 0.2])
        data = piece.find("CellData")
    else:
        assert extent == [0, 47, 0, 47, 0, 8]
        assert origin == pytest.approx([-37.5 + p / 2, -37.5 + p / 2, 0.25])
        data = piece.find("PointData")
    assert data is not None and data.get("Scalars") == "Na+"
    assert list(arrays) == species
    for s in species:
        want = cs.cubes[s][2:11]
        got = arrays[s].reshape(9, 48, 48)  # x fastest, then y, then z
        np.testing.assert_array_equal(got, want)
    ranges = {a.get("Name"): (a.get("RangeMin"), a.get("RangeMax")) for a in data}
    assert ranges["Na+"] == (str(cs.cubes["Na+"][2:11].min()), str(cs.cubes["Na+"][2:11].max()))


def test_h5_and_npy_read_back_exactly(
    tmp_path: Path, emitted: tuple[dict[str, Any], Specimen, CubeSet]
) -> None:
    _, _, cs = emitted
    depth, sel = selection(cs, slices=(3, None))
    npy = write_npy(tmp_path / "na.npy", cs, "Na+", sel)
    got = np.load(npy)
    assert got.dtype == np.uint32
    np.testing.assert_array_equal(got, cs.cubes["Na+"][3:])
    h5 = write_h5(tmp_path / "c.h5", cs, cs.species, sel, depth)
    with h5py.File(h5, "r") as f:
        assert list(f.attrs["species"]) == cs.species
        for s in cs.species:
            d = f[s]
            assert d.dtype == np.uint32 and d.shape == (17, 48, 48)
            np.testing.assert_array_equal(d[()], cs.cubes[s][3:])
            assert d.attrs["species"] == s and d.attrs["polarity"] == cs.polarity_of(s)
            assert d.attrs["units"] == "counts" and d.attrs["source"] == "emitter"
            assert d.attrs["pixel_um"] == pytest.approx(75.0 / 48)
            assert d.attrs["depth_per_slice_nm"] == pytest.approx(100.0)
            np.testing.assert_allclose(d.attrs["slice_edges_nm"], np.arange(3, 21) * 100.0)
            assert d.attrs["frames_per_slice"] == 20 and d.attrs["slice_start"] == 3
            np.testing.assert_allclose(d.attrs["live_time_s"], cs.live_time_s(s)[3:])
            assert d.attrs["dead_time_s"] == pytest.approx(20e-9)


# --- the commands --------------------------------------------------------------------------


def test_map_command(
    tmp_path: Path, npz_input: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    npz, config = npz_input
    cs = load_cubes(npz, config=config)
    plot, npy = tmp_path / "maps.png", tmp_path / "map.npy"
    argv = ["map", str(npz), "--config", str(config), "--depth-nm", "0-100", "--plot",
            str(plot), "--npy", str(npy), "--species", "Na+,O-", "--ortho", "10,,",
            "--json"]  # fmt: skip
    assert main(argv) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["schema"] == "opsims.map/1" and doc["selection"]["start"] == 0
    assert [m["species"] for m in doc["maps"]] == ["Na+", "O-"]
    for m in doc["maps"]:
        assert m["total_counts"] == int(cs.cubes[m["species"]][0].sum())
    outputs = [str(plot), str(tmp_path / "maps-ortho-Na+.png"), str(tmp_path / "maps-ortho-O-.png")]
    assert doc["files"]["plot"] == outputs and all(Path(p).is_file() for p in outputs)
    np.testing.assert_array_equal(np.load(tmp_path / "map-Na+.npy"), cs.cubes["Na+"][0])
    assert doc["ortho"][0]["index"]["x"] == 30 and doc["timings_s"]["maps"] >= 0
    assert main(["map", str(npz), "--config", str(config), "--slices", ":3"]) == 0
    text = capsys.readouterr().out
    assert "slices 0-2 (0-300 nm)" in text and "Na+" in text and "ZrO2-" in text


def test_render3d_command(
    tmp_path: Path, npz_input: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    npz, config = npz_input
    cs = load_cubes(npz, config=config)
    out = {k: tmp_path / f"r.{k}" for k in ("png", "vti", "h5", "npy")}
    argv = ["render3d", str(npz), "--config", str(config), "--species", "Na+",
            "--species", "O-", "--depth-nm", "200-2000", "--bin", "16", "--columns",
            "--plot", str(out["png"]), "--vti", str(out["vti"]), "--h5", str(out["h5"]),
            "--npy", str(out["npy"]), "--json"]  # fmt: skip
    assert main(argv) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["schema"] == "opsims.render3d/1"
    assert [r["species"] for r in doc["renders"]] == ["Na+", "O-"]
    assert doc["renders"][0]["binned_shape"] == [9, 16, 16]
    assert [s["species"] for s in doc["columns"]] == ["Na+", "O-"]
    assert doc["files"]["npy"] == [str(tmp_path / "r-Na+.npy"), str(tmp_path / "r-O-.npy")]
    for kind in ("plot", "vti", "h5"):
        assert doc["files"][kind] == [str(out["png" if kind == "plot" else kind])]
    _, arrays = read_vti(out["vti"])
    np.testing.assert_array_equal(arrays["O-"].reshape(18, 48, 48), cs.cubes["O-"][2:])
    assert set(doc["timings_s"]) >= {"load", "bin", "columns", "render", "export"}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--species", "Li+"], "no species Li+"),
        (["--depth-nm", "2000-200"], "depth range must be 0 <= A < B"),
        (["--depth-nm", "5000-6000"], "holds no slice"),
        (["--depth-nm", "deep"], "--depth-nm: expected A-B"),
        (["--slices", "3:99"], "slice range 3:99 is not within 0:20"),
        (["--crater-depth-nm", "-5"], "--crater-depth-nm must be > 0"),
        (["--ortho", "1,2"], "--ortho: expected X,Y,DEPTH"),
        (["--plot", "out.jpg"], "must end in .png, .svg or .pdf"),
    ],
)
def test_map_refuses_bad_input_in_one_line(
    npz_input: tuple[Path, Path],
    capsys: pytest.CaptureFixture[str],
    args: list[str],
    message: str,
    tmp_path: Path,
) -> None:
    npz, config = npz_input
    args = [str(tmp_path / a) if a == "out.jpg" else a for a in args]
    assert main(["map", str(npz), "--config", str(config), *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("opsims map: ") and message in err, err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_commands_refuse_missing_and_unreadable_inputs(
    tmp_path: Path, npz_input: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    npz, config = npz_input
    cases = [
        (["render3d", str(tmp_path / "nope.nxs")], "no such file"),
        (["render3d", "no-such-run", "--state-dir", str(tmp_path)], "no run 'no-such-run'"),
        (["render3d", str(npz)], "carries no configuration"),
        (["render3d", str(npz), "--config", str(tmp_path / "x.toml")], "no such file"),
        (["render3d", str(npz), "--config", str(config), "--bin", "0"], "--bin must be >= 1"),
        (["render3d", str(npz), "--config", str(config), "--species", "Na+,K+"], "no species K+"),
        (["render3d", str(npz), "--config", str(config), "--percentile", "100"], "percentile"),
        (["map"], "give an INPUT or --live"),
        (["map", "--live"], "--live needs the daemon's configuration file"),
    ]
    for argv, message in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1 and "Traceback" not in err, (argv, err)


def test_map_live_follows_the_daemons_cubes(tmp_path: Path) -> None:
    """`opsims map --live` against a real simulator and daemon: it draws the maps of
    the growing cubes every second and ends when told."""
    sim_doc = merge(
        small_raster(nx=32, ny=16, dwell_ticks=200_000_000, frames_per_slice=2),
        {"sim": {"acceleration": 20.0, "specimen": {"total_rate_hz": 3000.0}}},
    )
    with run_sim(tmp_path / "sim", sim_doc) as sim:
        daemon_doc = merge(sim_doc, {
            "daemon": {"simulator": "external", "cube_rate_hz": 20.0},
            "links": {"detector": {"port": sim.ports["detector"]},
                      "potentiostat": {"port": sim.ports["potentiostat"]}},
            "sim": {"control_port": sim.ports["control"]},
        })  # fmt: skip
        with run_daemon(tmp_path, daemon_doc) as daemon:
            plot = tmp_path / "live.png"
            cmd = [sys.executable, "-m", "opsims.analysis.imaging_cli", "map", "--live",
                   "--publish", daemon.publish, "--control", daemon.control,
                   "--config", str(tmp_path / "opsimsd.toml"), "--species", "Na+,O-",
                   "--refresh", "1", "--duration", "4", "--plot", str(plot), "--json"]  # fmt: skip
            start = time.monotonic()
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
            elapsed = time.monotonic() - start
            assert daemon.stop() == 0
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "listening on" in proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["live"]["refreshes"] >= 2 and doc["source"] == "live"
    assert [m["species"] for m in doc["maps"]] == ["Na+", "O-"]
    assert doc["maps"][0]["total_counts"] > 0 and doc["shape"][1:] == [16, 32]
    assert plot.is_file() and doc["files"]["plot"] == [str(plot)]
    assert 4 <= elapsed < 30
    assert not list(tmp_path.glob(".live.partial*"))


def test_the_shipped_configuration_reads_as_documented() -> None:
    # The ion maps read pixel size and sputter rate from [sims]: 150 µm over 256 pixels.
    doc = tomllib.loads((Path(__file__).parents[1] / "config" / "opsimsd.toml").read_text())
    det, sims = parameters_from_document(doc)
    cs = CubeSet({"Na+": np.zeros((2, 256, 256), np.uint32)}, det, sims, np.array([20, 20]), "x")
    assert cs.pixel_um == pytest.approx(150 / 256)
    np.testing.assert_allclose(depth_axis(cs).edges, [0.0, 5.0, 10.0])


def test_neighbouring_columns_of_unequal_height_are_two_columns() -> None:
    """A faint column a few pixels from a bright one is a column of its own, not a
    shoulder of the bright one; a bright column's own bumps are not."""
    det, sims = parameters_from_document(document(nx=64))
    yy, xx = np.indices((64, 64), dtype=np.float64)

    def disc(x: float, y: float, r: float) -> npt.NDArray[np.float64]:
        return 1.0 / (1.0 + np.exp((np.hypot(xx - x, yy - y) - r) / 0.4))

    # 4 px wide and 9 px wide, 2 px apart edge to edge; the faint one a third as high.
    mean = 20.0 * (1 + 6 * disc(30, 30, 4.5) + 2 * disc(38.5, 30, 2.0))
    rng = np.random.default_rng(4)
    cube = rng.poisson(np.broadcast_to(mean, (10, 64, 64))).astype(np.uint32)
    cs = CubeSet({"Na+": cube}, det, sims, np.full(10, det.frames_per_slice), "test")
    depth, sel = selection(cs, slices=(0, 10))
    found = find_columns(cs, "Na+", sel, depth, min_area_px=4).columns
    pixel = cs.pixel_um
    assert pixel is not None
    centres = sorted((c.centre[0] / pixel + 31.5, c.centre[1] / pixel + 31.5) for c in found)
    assert len(centres) == 2, centres
    for (x, y), (tx, ty) in zip(centres, [(30, 30), (38.5, 30)], strict=True):
        assert abs(x - tx) <= 1.5 and abs(y - ty) <= 1, centres
