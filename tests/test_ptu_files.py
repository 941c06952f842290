"""PicoQuant .ptu reading (opsims._native.read_ptu): headers against ptufile, bad files."""

from __future__ import annotations

import datetime
import struct
from pathlib import Path

import numpy as np
import pytest
from opsims import _native
from support.shared_data import PTU_DIR, PTU_FILES, needs_ptu_files


@needs_ptu_files
@pytest.mark.parametrize("name", PTU_FILES)
def test_header_matches_ptufile(name: str) -> None:
    import ptufile

    path = PTU_DIR / name
    ours = _native.read_ptu(path)
    with ptufile.PtuFile(path) as ref:
        assert ours.version == ref.version
        assert ours.record_type == int(ref.tags["TTResultFormat_TTTRRecType"])
        assert ours.number_of_records == ref.number_records
        assert ours.global_resolution == ref.global_resolution
        assert ours.resolution == ref.tcspc_resolution
        assert ours.warnings == []
        np.testing.assert_array_equal(ours.records, ref.read_records())
        for key, value in ours.tags.items():
            ident, _, index = key.partition("[")
            expected = ref.tags.get(ident)
            if isinstance(expected, datetime.datetime) or ident == "Header_End":
                continue
            if index:
                assert isinstance(expected, list)
                assert value in expected, key
            else:
                assert value == expected, key
    assert ours.records.dtype == np.uint32
    assert ours.record_type_name != ""


@needs_ptu_files
def test_hazelnut_image_markers() -> None:
    import ptufile

    path = PTU_DIR / "hazelnut_z1.ptu"
    ours = _native.read_ptu(path)
    assert ours.record_type_name == "PicoHarp T3"
    # Tag values are 1-based marker numbers: ImgHdr_Frame = 3 means mask 0b100.
    assert ours.tags["ImgHdr_Frame"] == 3
    assert ours.image_markers == {
        "line_start": 1,
        "line_stop": 2,
        "frame": 4,
        "pix_x": 256,
        "pix_y": 256,
    }
    with ptufile.PtuFile(path) as ref:
        assert ours.image_markers["line_start"] == ref.line_start_mask
        assert ours.image_markers["line_stop"] == ref.line_stop_mask
        assert ours.image_markers["frame"] == ref.frame_change_mask


@needs_ptu_files
def test_records_are_read_only() -> None:
    f = _native.read_ptu(PTU_DIR / "picoharp_v30_t2.ptu")
    with pytest.raises(ValueError, match="read-only"):
        f.records[0] = 1


@needs_ptu_files
def test_truncated_records_are_kept_with_a_warning(tmp_path: Path) -> None:
    data = (PTU_DIR / "hydraharp_v20_t2.ptu").read_bytes()
    full = _native.read_ptu(PTU_DIR / "hydraharp_v20_t2.ptu")
    cut = tmp_path / "cut.ptu"
    cut.write_bytes(data[: len(data) - 4 * 100 - 2])
    f = _native.read_ptu(cut)
    assert f.number_of_records == full.number_of_records - 101
    np.testing.assert_array_equal(f.records, full.records[: f.number_of_records])
    assert any("declares" in w for w in f.warnings)


def _tag(ident: str, type_code: int, value: bytes) -> bytes:
    return ident.encode().ljust(32, b"\0") + struct.pack("<iI", -1, type_code) + value


def _minimal_file() -> bytes:
    head = b"PQTTTR\0\0" + b"1.0.00\0\0"
    head += _tag("TTResultFormat_TTTRRecType", 0x10000008, struct.pack("<q", 0x00010203))
    head += _tag("TTResult_NumberOfRecords", 0x10000008, struct.pack("<q", 2))
    head += _tag("Header_End", 0xFFFF0008, bytes(8))
    return head + struct.pack("<II", 5, 0xF0000000)


def test_minimal_file_reads(tmp_path: Path) -> None:
    p = tmp_path / "min.ptu"
    p.write_bytes(_minimal_file())
    f = _native.read_ptu(p)
    assert f.records.tolist() == [5, 0xF0000000]
    assert f.global_resolution is None
    assert f.image_markers["frame"] is None
    d = _native.decode_records(f.record_type, f.records)
    assert d["kind"].tolist() == [0, 2]


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (b"", "too short"),
        (b"PQTT", "too short"),
        (b"PQHISTO\0" + bytes(64), "magic"),
        (b"PQTTTR\0\x001.0.00\0\0", "Header_End"),
        (_minimal_file()[:60], "truncated"),
        (_minimal_file()[:100], "truncated"),
        (b"PQTTTR\0\0" + bytes(8) + _tag("S", 0x4001FFFF, struct.pack("<q", -3)), "negative"),
        (b"PQTTTR\0\0" + bytes(8) + _tag("S", 0xFFFFFFFF, struct.pack("<q", 1 << 40)), "truncated"),
    ],
)
def test_bad_files_raise_ptu_error(tmp_path: Path, content: bytes, match: str) -> None:
    p = tmp_path / "bad.ptu"
    p.write_bytes(content)
    with pytest.raises(_native.PtuError, match=match):
        _native.read_ptu(p)
    assert issubclass(_native.PtuError, _native.OpsimsError)


def test_garbage_never_crashes(tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    base = bytearray(_minimal_file())
    p = tmp_path / "g.ptu"
    for _ in range(300):
        g = bytearray(base)
        for at in rng.integers(0, len(g), size=3):
            g[int(at)] = int(rng.integers(0, 256))
        p.write_bytes(bytes(g))
        try:
            f = _native.read_ptu(p)
        except _native.PtuError:
            continue
        assert f.number_of_records <= 2
    p.write_bytes(rng.integers(0, 256, size=4096, dtype=np.uint8).tobytes())
    with pytest.raises(_native.PtuError):
        _native.read_ptu(p)


def test_missing_file_is_os_error(tmp_path: Path) -> None:
    with pytest.raises(OSError, match="nope"):
        _native.read_ptu(tmp_path / "nope.ptu")
