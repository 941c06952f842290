"""TTTR record decoding (opsims._native.decode_records) against ptufile on real files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
from opsims import _native
from support.shared_data import PTU_DIR, PTU_FILES, needs_ptu_files

EVENT, MARKER, OVERFLOW, SYNC, MALFORMED = 0, 1, 2, 3, 4


def ptufile_records(path: Path) -> npt.NDArray[np.void]:
    import ptufile

    with ptufile.PtuFile(path) as f:
        out: npt.NDArray[np.void] = f.decode_records()
    return out


@needs_ptu_files
@pytest.mark.parametrize("name", PTU_FILES)
def test_decode_matches_ptufile(name: str) -> None:
    path = PTU_DIR / name
    f = _native.read_ptu(path)
    ours = _native.decode_records(f.record_type, f.records)
    ref = ptufile_records(path)
    kind = ours["kind"]
    tick = ours["tick"]
    assert kind.shape == ref.shape
    assert not np.any(kind == MALFORMED), "real files contain no malformed records"

    ref_time = ref["time"]
    ref_channel = ref["channel"].astype(np.int16)
    ref_marker = ref["marker"]
    is_t3 = "dtime" in (ref.dtype.names or ())

    ev = kind == EVENT
    assert ev.sum() > 0
    np.testing.assert_array_equal(tick[ev], ref_time[ev])
    np.testing.assert_array_equal(ours["channel"][ev], ref_channel[ev])
    if is_t3:
        np.testing.assert_array_equal(ours["dtime"][ev], ref["dtime"][ev])
    else:
        assert not ours["dtime"].any()

    mk = kind == MARKER
    np.testing.assert_array_equal(tick[mk], ref_time[mk])
    np.testing.assert_array_equal(ref_channel[mk], -1)
    np.testing.assert_array_equal(ours["marker"][mk], ref_marker[mk])
    assert not ours["marker"][~mk].any()

    # ptufile writes overflows as channel -1 without a marker.
    ov = kind == OVERFLOW
    np.testing.assert_array_equal(ref_channel[ov], -1)
    np.testing.assert_array_equal(ref_marker[ov], 0)

    # ptufile reports T2 sync records as channel 0 photons.
    sy = kind == SYNC
    np.testing.assert_array_equal(tick[sy], ref_time[sy])
    np.testing.assert_array_equal(ref_channel[sy], 0)

    # Every ptufile photon or marker is one of ours, and the time base is monotonic.
    assert (ev | mk | sy).sum() == (ref_channel >= 0).sum() + (ref_marker > 0).sum()
    timed = tick[ev | mk | sy]
    if not is_t3:
        assert np.all(np.diff(timed.astype(np.int64)) >= 0)


@needs_ptu_files
def test_hazelnut_marker_counts() -> None:
    f = _native.read_ptu(PTU_DIR / "hazelnut_z1.ptu")
    d = _native.decode_records(f.record_type, f.records)
    masks = d["marker"][d["kind"] == MARKER]
    assert int((masks == 1).sum()) == 1280  # line start
    assert int((masks == 2).sum()) == 1280  # line stop
    assert int((masks == 4).sum()) == 5  # frame
    assert int((d["kind"] == OVERFLOW).sum()) == 2470


@needs_ptu_files
def test_hydraharp_v2_counted_overflows() -> None:
    f = _native.read_ptu(PTU_DIR / "hydraharp_v20_t3.ptu")
    rec = f.records
    ovf = (rec >> 31 == 1) & (((rec >> 25) & 63) == 63)
    counts = np.maximum(rec[ovf] & 0x3FF, 1).astype(np.uint64)
    assert counts.max() > 1
    d = _native.decode_records(f.record_type, rec)
    last_event = np.flatnonzero(d["kind"] == EVENT)[-1]
    before = ovf[:last_event]
    base = int(np.maximum(rec[:last_event][before] & 0x3FF, 1).astype(np.uint64).sum()) * 1024
    assert int(d["tick"][last_event]) == base + int(rec[last_event] & 0x3FF)


def test_bad_record_type_raises() -> None:
    records = np.zeros(4, dtype=np.uint32)
    for code in (0, 0x00010308, 0xFFFFFFFF):
        with pytest.raises(_native.RecordFormatError, match=f"{code:08x}"):
            _native.decode_records(code, records)
    assert issubclass(_native.RecordFormatError, _native.OpsimsError)


def test_synthetic_layouts() -> None:
    # PicoHarp T3: event ch1, overflow, marker 2, reserved channel 0.
    ph3 = np.array(
        [(1 << 28) | (5 << 16) | 7, 15 << 28, (15 << 28) | (2 << 16) | 9, 1 << 16], np.uint32
    )
    d = _native.decode_records(0x00010303, ph3)
    assert d["kind"].tolist() == [EVENT, OVERFLOW, MARKER, MALFORMED]
    assert d["tick"].tolist()[:3] == [7, 65536, 65536 + 9]
    assert (d["channel"][0], d["dtime"][0], d["marker"][2]) == (0, 5, 2)

    # Generic T2: overflow with count 0 means one wrap; sync; marker; event.
    ovf = (1 << 31) | (63 << 25)
    g2 = np.array(
        [ovf, (1 << 31) | 4, (1 << 31) | (3 << 25) | 5, (2 << 25) | 6, ovf | 3], np.uint32
    )
    d = _native.decode_records(0x01010204, g2)
    p = 1 << 25
    assert d["kind"].tolist() == [OVERFLOW, SYNC, MARKER, EVENT, OVERFLOW]
    assert d["tick"].tolist() == [p, p + 4, p + 5, p + 6, 4 * p]
    assert (d["marker"][2], d["channel"][3]) == (3, 2)


def test_non_contiguous_input() -> None:
    rng = np.random.default_rng(1)
    rec = rng.integers(0, 2**32, size=1001, dtype=np.uint32)
    a = _native.decode_records(0x00010307, rec[::3])
    b = _native.decode_records(0x00010307, np.ascontiguousarray(rec[::3]))
    for key in ("kind", "tick", "channel", "dtime", "marker"):
        np.testing.assert_array_equal(a[key], b[key])
        assert a[key].shape == (len(rec[::3]),)


def test_empty_input() -> None:
    d = _native.decode_records(0x00010203, np.zeros(0, np.uint32))
    assert {k: v.size for k, v in d.items()} == dict.fromkeys(
        ("kind", "tick", "channel", "dtime", "marker"), 0
    )
    assert d["tick"].dtype == np.uint64
    assert d["dtime"].dtype == np.uint16
