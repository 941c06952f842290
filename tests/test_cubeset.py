"""The cube sets the SIMS analyses read: the live time of every voxel is the time the
detector emitter really spent measuring it, the ``[sims]`` table is checked key by key,
and an ``.npz`` written by ``opsims replay --out`` loads with the daemon's configuration."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from opsims import ConfigError, DetectorConfig, DetectorEmitter
from opsims.analysis.cubeset import (
    CubeSet,
    SimsParameters,
    load_cubes,
    parameters_from_document,
    trim_dark,
)
from opsims.daemon.config import DaemonConfig
from support.simproc import DEFAULT_CONFIG as CONFIG
from support.simproc import merge, to_toml

RATE_HZ = 2.0e6


def _doc(**raster: Any) -> dict[str, Any]:
    doc = tomllib.loads(CONFIG.read_text())
    doc["detector"]["raster"].update(raster)
    return doc


def _emitted_cubes(detector: DetectorConfig, frames: int) -> dict[str, np.ndarray]:
    """Every species at one rate: what a voxel holds is then proportional to its live time."""
    e = detector.engine_args()
    em = DetectorEmitter(
        e["record_type"], e["tick_s"], e["nx"], e["ny"], e["dwell_ticks"], e["polarities"],
        line_settle_ticks=e["line_settle_ticks"], flyback_ticks=e["flyback_ticks"],
        frames_per_slice=e["frames_per_slice"], frame_marker=e["frame_marker"],
        line_start_marker=e["line_start_marker"], line_stop_marker=e["line_stop_marker"],
        mass_switch_marker=e["mass_switch_marker"], seed=3, record_truth=True,
    )  # fmt: skip
    em.set_rates(np.full((len(em.species), detector.ny, detector.nx), RATE_HZ))
    em.emit_until(em.frame_period_ticks * frames + 1)
    return {s: em.truth_cube(s) for s in em.species}


@pytest.mark.parametrize("switching", ["per_frame", "per_pixel"])
def test_live_time_is_the_time_each_species_was_measured(switching: str) -> None:
    # 7 frames per slice: neither 4 nor 5 species divide it, so slices differ.
    doc = _doc(nx=16, ny=8, frames_per_slice=7)
    for p in doc["detector"]["raster"]["polarities"]:
        p["switching"] = switching
        p["settle_ticks"] = 0
    detector, sims = parameters_from_document(doc)
    frames = 7 * 12
    cubes = _emitted_cubes(detector, frames)
    n = next(iter(cubes.values())).shape[0]
    cs = CubeSet(cubes, detector, sims, np.full(n, 7), "emitter")
    pixels = detector.nx * detector.ny
    for s in cs.species:
        live = cs.live_time_s(s)[:12]
        expected = RATE_HZ * live * pixels
        got = cubes[s][:12].sum(axis=(1, 2))
        # Poisson: within 5 sigma slice by slice, and the total within 3
        assert np.all(np.abs(got - expected) < 5 * np.sqrt(expected) + 1), (s, got, expected)
        assert abs(got.sum() - expected.sum()) < 3 * np.sqrt(expected.sum())
        species = next(p.species for p in detector.polarities if s in p.species)
        n, k = len(species), species.index(s)
        exact = (
            sum(1 for f in range(frames) if f % n == k) if switching == "per_frame" else frames / n
        )
        assert cs.frames_measured(s)[:12].sum() == pytest.approx(exact)


def test_depth_of_each_slice_follows_the_sputter_rate_and_a_partial_last_slice() -> None:
    detector, sims = parameters_from_document(_doc(frames_per_slice=20))
    cs = CubeSet({"Na+": np.zeros((3, 256, 256), np.uint32)}, detector, sims,
                 np.array([20, 20, 5]), "test")  # fmt: skip
    depth = cs.depth_per_slice_nm()
    assert depth is not None
    np.testing.assert_allclose(depth, [2.5, 7.5, 10.625])  # 0.25 nm per frame
    assert cs.pixel_um == pytest.approx(150.0 / 256)
    assert cs.dead_time_s("O-") == pytest.approx(20e-9)


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"fov_um": 0}, "sims.fov_um: must be > 0"),
        ({"sputter_rate_nm_per_frame": "fast"}, "sims.sputter_rate_nm_per_frame: expected"),
        ({"dead_time_ns": -1.0}, "sims.dead_time_ns: must be a finite number >= 0"),
        ({"dead_time_ns": {"sideways": 20.0}}, "sims.dead_time_ns: no polarity named sideways"),
        ({"fov": 150.0}, "sims: unknown key(s) fov"),
    ],
)
def test_bad_sims_tables_name_the_key(table: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        SimsParameters.from_mapping(table, ("positive", "negative"))
    # ... and the daemon refuses to start on them.
    doc = merge(tomllib.loads(CONFIG.read_text()), {"sims": table})
    with pytest.raises(ConfigError, match="sims"):
        DaemonConfig.from_document(doc, CONFIG)


def test_per_polarity_dead_times() -> None:
    s = SimsParameters.from_mapping({"dead_time_ns": {"positive": 15, "negative": 30.0}},
                                    ("positive", "negative"))  # fmt: skip
    assert s.dead_time_s == {"positive": pytest.approx(15e-9), "negative": pytest.approx(30e-9)}


def test_an_npz_loads_with_the_daemons_configuration(tmp_path: Path) -> None:
    doc = _doc(nx=16, ny=8, frames_per_slice=4)
    detector, _ = parameters_from_document(doc)
    cubes = _emitted_cubes(detector, 10)
    path = tmp_path / "cubes.npz"
    arrays: dict[str, Any] = {"frames_per_slice": np.int64(4), "frames": np.int64(10), **cubes}
    np.savez(path, allow_pickle=False, **arrays)
    config = tmp_path / "opsimsd.toml"
    config.write_text(to_toml(doc))
    cs = load_cubes(path, config=config)
    assert cs.species == detector.species
    assert list(cs.frames_in_slice) == [4, 4, 2]
    for s in cs.species:
        np.testing.assert_array_equal(cs.cubes[s], cubes[s])
    with pytest.raises(ValueError, match="carries no configuration"):
        load_cubes(path)


def test_slices_recorded_with_the_beam_blanked_are_trimmed() -> None:
    """Electrochemistry with the beam off, then a profile, then off again: depth 0 is the
    first slice with secondary ions."""
    doc = _doc(nx=16, ny=8, frames_per_slice=2)
    for p in doc["detector"]["raster"]["polarities"]:
        p["settle_ticks"] = 0  # the default 0.4 ms would cover this small frame whole
    detector, sims = parameters_from_document(doc)
    e = detector.engine_args()
    em = DetectorEmitter(
        e["record_type"], e["tick_s"], e["nx"], e["ny"], e["dwell_ticks"], e["polarities"],
        line_settle_ticks=e["line_settle_ticks"], flyback_ticks=e["flyback_ticks"],
        frames_per_slice=2, frame_marker=e["frame_marker"],
        line_start_marker=e["line_start_marker"], line_stop_marker=e["line_stop_marker"],
        mass_switch_marker=e["mass_switch_marker"], dark_rate_hz=10.0, seed=5,
        record_truth=True,
    )  # fmt: skip
    shape = (len(em.species), detector.ny, detector.nx)
    # Rates apply from the next line start not yet made: each phase is whole frames.
    for end_frame, rate in ((10, 0.0), (30, RATE_HZ), (36, 0.0)):
        em.set_rates(np.full(shape, rate))
        em.emit_until(end_frame * em.frame_period_ticks)
    cubes = {s: em.truth_cube(s) for s in em.species}
    n = next(iter(cubes.values())).shape[0]
    cs = trim_dark(CubeSet(cubes, detector, sims, np.full(n, 2), "emitter"))
    assert cs.first_slice == 5 and cs.shape[0] == 10, (cs.first_slice, cs.shape)
    assert all(c.shape[0] == 10 for c in cs.cubes.values()) and len(cs.frames_in_slice) == 10
