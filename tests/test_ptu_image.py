"""The real PicoHarp T3 image (hazelnut_z1.ptu) through the whole native pipeline:
decode → raster map (measured dwell, end-of-frame markers) → cube, against ptufile's
image reconstruction, pixel by pixel and frame by frame."""

from __future__ import annotations

import numpy as np
import pytest
from opsims import EventCore, _native
from support.shared_data import PTU_DIR

HAZELNUT = PTU_DIR / "hazelnut_z1.ptu"

pytestmark = pytest.mark.skipif(
    not HAZELNUT.is_file(), reason=f"sample .ptu file not found at {HAZELNUT}"
)


def hazelnut_core(ptu: _native.PtuFile) -> EventCore:
    im = ptu.image_markers
    nx, ny = im["pix_x"], im["pix_y"]
    assert nx is not None and ny is not None and ptu.global_resolution is not None
    return EventCore(
        ptu.record_type,
        ptu.global_resolution,
        nx,
        ny,
        0,  # measured dwell: each line's start-to-stop time over nx
        [("detector", [0, 1, 2, 3], ["photons"], "per_frame", 0)],
        frame_marker=im["frame"] or 0,
        line_start_marker=im["line_start"] or 0,
        line_stop_marker=im["line_stop"] or 0,
        frame_marker_at="end",
    )


def test_hazelnut_cube_equals_ptufile_image() -> None:
    import ptufile

    ptu = _native.read_ptu(HAZELNUT)
    core = hazelnut_core(ptu)
    core.feed(ptu.records)
    core.finish()
    with ptufile.PtuFile(HAZELNUT) as ref:
        expected = ref.decode_image(dtype=np.uint32).sum(axis=(3, 4))
    ours = core.cube("photons")
    assert ours.shape == expected.shape
    assert ours.sum() > 100_000
    np.testing.assert_array_equal(ours, expected)
    c = core.counters()
    assert c["events"] == c["binned"] + c["rejected_total"] + c["pending"]
    assert c["pending"] == 0
    assert c["lines_bad"] == 0
    assert c["frames_bad_line_count"] == 0


def test_hazelnut_in_random_batches_is_bit_identical() -> None:
    ptu = _native.read_ptu(HAZELNUT)
    whole = hazelnut_core(ptu)
    whole.feed(ptu.records)
    whole.finish()
    rng = np.random.default_rng(7)
    split = hazelnut_core(ptu)
    cuts = np.sort(rng.integers(0, ptu.records.size, 200))
    for part in np.split(ptu.records, cuts):
        split.feed(part)
    split.finish()
    np.testing.assert_array_equal(split.cube("photons"), whole.cube("photons"))
    assert split.counters() == whole.counters()
