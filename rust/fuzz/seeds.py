"""Seed inputs for the cargo-fuzz targets, made with the project's own encoders.

    python rust/fuzz/seeds.py OUT_DIR      (make fuzz runs it into rust/fuzz/work/seeds)

writes ``OUT_DIR/<target>/<name>`` for each target of ``opsims_core::fuzzing``: link
streams from the simulated detector front-end (:class:`opsims._native.DetectorEmitter`)
and from :func:`opsims._native.encode_link_frame`, TTTR records, ``.ptu`` files from the
tests' writer (``tests/support/tttr_synth.py``), potentiostat streams from
``opsims.link.potentiostat`` and journals from :class:`opsims._native.JournalWriter`.
Nothing here comes from the measured files in ``shared/data/ptu``.

Each input starts with the few bytes its harness reads first (the engine configuration,
cut points, flags); the layouts are in ``rust/core/src/fuzzing`` and docs/fuzzing.md.
"""

from __future__ import annotations

import struct
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from opsims._native import DetectorEmitter, JournalWriter, encode_link_frame
from opsims.link import potentiostat as pot

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))
from support.tttr_synth import write_ptu  # noqa: E402

#: `link::CODES` in the harness: an index into it selects the record type.
CODES = [
    0x00010203,
    0x00010303,
    0x00010204,
    0x00010304,
    0x01010204,
    0x01010304,
    0x00010205,
    0x00010305,
    0x00010206,
    0x00010306,
    0x00010207,
    0x00010307,
]


def engine_bytes(
    *,
    layout: int = 0,
    end_marker: bool = False,
    refuse: bool = False,
    small_budget: bool = False,
    no_stops: bool = False,
    mass: bool = False,
    nx: int = 4,
    ny: int = 4,
    dwell: int = 200,
    settle: int = 0,
    line_settle: int = 0,
    flyback: int = 100,
    tolerance: int = 4,
    frames_per_slice: int = 1,
    scale: int = 0,
    tick: int = 24,
) -> bytes:
    """The bytes `engine_config` reads for this configuration (fixed dwell; tick_s is
    (tick + 1) ps)."""
    flags = layout | end_marker << 2 | refuse << 3 | small_budget << 4 | no_stops << 6
    flags |= mass << 7
    return (
        bytes([flags, nx - 1, ny - 1])
        + struct.pack("<H", dwell - 1)
        + bytes([settle, line_settle // 4])
        + struct.pack("<H", flyback)
        + bytes([tolerance, frames_per_slice - 1, scale, tick])
    )


def polarities(
    layout: int, dwell: int, settle: int
) -> list[tuple[str, list[int], list[str], str, int]]:
    """The harness's polarity layouts, for the emitter."""
    if layout == 0:
        return [("p", [0], ["p0"], "per_frame", 0)]
    if layout == 1:
        return [("p", [0, 1], ["p0", "p1"], "per_frame", settle)]
    if layout == 2:
        return [
            ("p", [0, 1], ["p0", "p1"], "per_frame", settle),
            ("n", [2, 3], ["n0", "n1", "n2"], "per_pixel", settle % max(dwell // 3, 1)),
        ]
    return [("q", [1], ["q0", "q1"], "per_pixel", settle % max(dwell // 2, 1))]


def emitter_stream(code: int, layout: int, frames: int = 3, **kw: int) -> list[bytes]:
    """Link frames of a few raster frames from the simulated front-end."""
    nx, ny, dwell = kw.get("nx", 4), kw.get("ny", 4), kw.get("dwell", 200)
    settle = kw.get("settle", 0)
    pols = polarities(layout, dwell, settle)
    em = DetectorEmitter(
        code,
        (kw.get("tick", 24) + 1) * 1e-12,
        nx,
        ny,
        dwell,
        pols,
        line_settle_ticks=kw.get("line_settle", 0),
        flyback_ticks=kw.get("flyback", 100),
        frame_marker_at="end" if kw.get("end_marker") else "start",
        line_stop_marker=0 if kw.get("no_stops") else 2,
        mass_switch_marker=8 if kw.get("mass") else 0,
        frames_per_slice=kw.get("frames_per_slice", 1),
        dark_rate_hz=1e7,
        seed=code ^ layout,
        max_records_per_frame=64,
        start_tick=kw.get("start_tick", 0),
    )
    n_species = sum(len(p[2]) for p in pols)
    em.set_rates(np.full((n_species, ny, nx), 3e8))
    out: list[bytes] = []
    step = em.line_period_ticks
    for k in range(1, frames * ny + 2):
        out += em.emit_until(k * step)
    return out


def cut_bytes(cuts: list[int]) -> bytes:
    return bytes([len(cuts)]) + b"".join(struct.pack("<H", c) for c in cuts)


def link_stream_seeds() -> dict[str, bytes]:
    seeds = {}
    variants: list[tuple[str, int, dict[str, Any]]] = [
        ("generic_t3", 11, {"layout": 0}),
        ("generic_t2_two_polarities", 10, {"layout": 2, "settle": 30}),
        ("hydraharp_v1_t3_end_markers", 3, {"layout": 1, "end_marker": True, "settle": 20}),
        ("hydraharp_v2_t2_no_stops", 4, {"layout": 0, "no_stops": True}),
        ("picoharp_t3_mass", 1, {"layout": 1, "mass": True, "settle": 10}),
        ("timeharp_t3_per_pixel", 7, {"layout": 3, "settle": 5}),
        ("small_budget_refuse", 11, {"layout": 0, "small_budget": True, "refuse": True, "ny": 2}),
        ("joined_late", 11, {"layout": 1, "start_tick": 1 << 40}),
    ]
    for name, idx, kw in variants:
        frames = emitter_stream(CODES[idx], frames=12 if kw.get("small_budget") else 3, **kw)
        stream = b"".join(frames)[:12000]
        cfg = engine_bytes(**{k: v for k, v in kw.items() if k != "start_tick"})
        head = bytes([idx]) + cfg + b"\0" + struct.pack("<qI", 10**18, 1_000_000)
        seeds[name] = head + cut_bytes([37, len(stream) // 2]) + stream
    # The structured mode: frames the harness encodes itself (ops in `frames_stream`).
    # Per frame: a frame + line start marker (mask 5), then four lines of six events 50
    # ticks apart, a line stop at 400 ticks (4 pixels of 100) and the next line start.
    ops = bytearray()
    for _ in range(4):
        ops += bytes([3]) + struct.pack("<H", 0)  # a frame, header as configured
        recs = [(0x40 | (5 << 2), 100)]
        for _ in range(4):
            recs += [(0, 50)] * 6 + [(0x40 | (2 << 2), 100), (0x40 | (1 << 2), 100)]
        ops += bytes([len(recs)])
        for op, delta in recs:
            ops += bytes([op]) + struct.pack("<H", delta)
        ops += bytes([1])  # a cut after each frame
    ops += bytes([0, 5]) + b"OPSD\x01"  # garbage that starts like a frame
    ops += bytes([2]) + struct.pack("<H", 200) + b"\x10"  # a flipped bit
    cfg = engine_bytes(layout=0, dwell=100, flyback=300, tolerance=50)
    head = bytes([11]) + cfg + b"\1" + struct.pack("<qI", 0, 5_000_000)
    seeds["structured_frames"] = head + bytes(ops)
    # A frame built by encode_link_frame with a header that disagrees (wrong tick).
    frame = encode_link_frame(
        7, CODES[11], np.arange(20, dtype=np.uint32), tick_fs=1, frame_markers=3, line_starts=2
    )
    seeds["wrong_tick_header"] = (
        bytes([11]) + engine_bytes() + b"\0" + struct.pack("<qI", 0, 1) + cut_bytes([]) + frame
    )
    return seeds


def tttr_records_seeds() -> dict[str, bytes]:
    seeds = {}
    for idx in (1, 2, 3, 4, 5, 8, 11):  # every layout the emitter makes
        layout = idx % 4
        frames = emitter_stream(CODES[idx], layout=layout, settle=12)
        words = b"".join(f[80:] for f in frames)[:8000]
        head = bytes([idx]) + engine_bytes(layout=layout, settle=12) + b"\0" + struct.pack("<H", 77)
        seeds[f"emitter_{CODES[idx]:08x}"] = head + words
    # The encoded mode (PicoHarp T2 too, which the emitter does not make).
    ops = bytearray()
    for i in range(200):
        if i % 9 == 0:
            ops += bytes([0x40 | (1 << 2) | 3]) + struct.pack("<H", 40000)  # line start
        else:
            ops += bytes([(i % 4) << 3 | 2]) + struct.pack("<H", 3000 + i)
    for idx in (0, 2, 10):
        head = bytes([idx]) + engine_bytes(layout=1, dwell=5000) + b"\1" + struct.pack("<H", 50)
        seeds[f"encoded_{CODES[idx]:08x}"] = head + bytes(ops)
    return seeds


def ptu_seeds(tmp: Path) -> dict[str, bytes]:
    seeds = {}
    image: dict[str, int | str] = {
        "ImgHdr_PixX": 4,
        "ImgHdr_PixY": 4,
        "ImgHdr_LineStart": 1,
        "ImgHdr_LineStop": 2,
    }
    image |= {"ImgHdr_Frame": 3, "File_Comment": "fuzz seed", "Measurement_SubMode": 3}
    for idx in (1, 3, 5, 11, 10):
        frames = emitter_stream(CODES[idx], layout=0)
        words = np.frombuffer(b"".join(f[80:] for f in frames)[:4000], dtype="<u4")
        path = tmp / "seed.ptu"
        write_ptu(path, CODES[idx], words, 25e-12, 5e-12, image)
        seeds[f"image_{CODES[idx]:08x}"] = path.read_bytes()
    # Every tag type, a short record area and a count that overstates it.
    head = bytearray(b"PQTTTR\0\0" + b"1.0.00".ljust(8, b"\0"))

    def tag(ident: str, typ: int, value: bytes, idx: int = -1) -> bytes:
        return ident.encode().ljust(32, b"\0") + struct.pack("<iI", idx, typ) + value

    head += tag("TTResultFormat_TTTRRecType", 0x10000008, struct.pack("<q", CODES[0]))
    head += tag("TTResultFormat_BitsPerRecord", 0x10000008, struct.pack("<q", 0))
    head += tag("TTResult_NumberOfRecords", 0x10000008, struct.pack("<q", 1000))
    head += tag("Flag", 0x00000008, struct.pack("<q", -1))
    head += tag("Bits", 0x11000008, struct.pack("<Q", 0xF0))
    head += tag("Colour", 0x12000008, struct.pack("<Q", 0xFF00FF))
    head += tag("When", 0x21000008, struct.pack("<d", 45000.5))
    head += tag("Empty", 0xFFFF0008, bytes(8))
    head += tag("Unknown", 0x33000008, bytes(8))
    arr = struct.pack("<3d", 1.0, 2.5, -3.0)
    head += tag("Array", 0x2001FFFF, struct.pack("<q", len(arr)), 0) + arr
    wide = "wide µ".encode("utf-16-le") + b"\0\0"
    head += tag("Wide", 0x4002FFFF, struct.pack("<q", len(wide))) + wide
    blob = bytes(range(16))
    head += tag("Blob", 0xFFFFFFFF, struct.pack("<q", len(blob))) + blob
    head += tag("Header_End", 0xFFFF0008, bytes(8))
    seeds["every_tag_type"] = bytes(head) + struct.pack("<5I", 1, 2, 3, 0xF0000000, 5) + b"\1\2"
    return seeds


def potentiostat_seeds() -> dict[str, bytes]:
    hello = pot.Hello(1, 16, 1_000_000_000, 10_000, 1e-5, "fuzz potentiostat").pack()
    samples = np.zeros(6, dtype=pot.SAMPLE_DTYPE)
    samples["tick"] = [65_000, 65_400, 200, 600, 1000, 1400]  # a 16-bit counter wraps
    samples["ewe_v"] = np.linspace(0.1, 0.6, 6)
    samples["current_a"] = -4e-8
    samples["mode"] = 1
    samples["flags"] = [0, 0, 2, 0, 1, 0]
    status = pot.Status(77, pot.ControlMode.EIS, True, 4, 29, 0.0, 0.1, 1e-9).pack()
    messages = [
        (pot.Kind.HELLO, hello),
        (pot.Kind.SAMPLES, pot.pack_samples(samples)),
        (pot.Kind.REPLY, pot.Reply(3, pot.ReplyCode.OK, "status", status).pack()),
        (pot.Kind.EIS_POINT, pot.EisPoint(1800, 3, 29, 7e6, 3188.0, -25135.0).pack()),
        (pot.Kind.EVENT, pot.Event(2000, pot.EventCode.LIMIT_REACHED, "|Ewe| 5 V").pack()),
        (pot.Kind.SET_CURRENT, pot.pack_current(4e-8, 5.0)),
        (pot.Kind.START_EIS, pot.EisRequest(7e6, 100.0, 10, 0.3).pack()),
        (pot.Kind.HELLO, hello),  # a reconnect: the next batch is anchored
        (pot.Kind.SAMPLES, pot.pack_samples(samples[:3])),
        (pot.Kind.HEARTBEAT, b""),
    ]
    stream = b"".join(pot.encode(k, i, p) for i, (k, p) in enumerate(messages))

    def head(cuts: list[int], sealed: int) -> bytes:
        return cut_bytes(cuts) + struct.pack("<qI", 10**18, 10**8) + bytes([sealed])

    damaged = bytearray(stream)
    damaged[40] ^= 0x20
    other_version = pot.encode(pot.Kind.HELLO, 0, hello, version=2)
    return {
        "session": head([5, 100, 101], 0) + stream,
        "session_sealed": head([], 1) + stream,
        "damaged": head([17], 0) + b"xxOPS" + bytes(damaged),
        "other_version": head([], 0) + other_version + stream[:200],
    }


def journal_flags(n_files: int, sealed: bool = False, recover: bool = False) -> int:
    """The first byte of a `journal_segment` input: bit 0 seals, bit 3 recovers, and
    (byte >> 1) % 3 is the number of files less one."""
    for f in range(256):
        if (f & 1, f & 8, (f >> 1) % 3) == (sealed, recover << 3, n_files - 1):
            return f
    raise ValueError(n_files)


def journal_seeds(tmp: Path) -> dict[str, bytes]:
    seeds = {}
    frames = emitter_stream(CODES[11], layout=0)
    noise = np.random.default_rng(5).integers(0, 256, 4096, dtype=np.uint8).tobytes()
    for name, transform, seg in [("delta_shuffle", "delta_shuffle", 1 << 20),
                                 ("shuffle_segments", "shuffle", 700),
                                 ("stored", "none", 1 << 20)]:  # fmt: skip
        d = tmp / name
        with JournalWriter(d, run_id=f"fuzz-{name}", segment_bytes=seg, block_bytes=2048,
                           transform=transform, level=1) as w:  # fmt: skip
            for i, f in enumerate(frames[:12]):
                w.append_frame(1_000_000 * i, f)
                if i % 4 == 0:
                    w.append("potentiostat", 1_000_000 * i + 1, noise[: 200 * (1 + i)])
            w.append("note", 99, b"a note " * 100)
        files = sorted(d.glob("segment-*.ojs"))
        data = [p.read_bytes() for p in files]
        n = min(len(data), 3)
        first = int(files[0].name[8:14])
        cuts, at = [], 0
        for part in data[: n - 1]:
            at += len(part)
            cuts.append(at)
        head = bytes([journal_flags(n), first]) + bytes([0] * (n - 1))
        seeds[name] = head + b"".join(struct.pack("<H", c) for c in cuts) + b"".join(data[:n])
    # One file, sealed, recovered after its closed block is torn off.
    body = seeds["delta_shuffle"][2:]
    seeds["torn_recover"] = bytes([journal_flags(1, True, True), 0]) + body[: len(body) - 30]
    return seeds


def main() -> None:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "rust/fuzz/work/seeds")
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        targets = {
            "link_stream": link_stream_seeds(),
            "tttr_records": tttr_records_seeds(),
            "ptu_header": ptu_seeds(tmp),
            "potentiostat_wire": potentiostat_seeds(),
            "journal_segment": journal_seeds(tmp),
        }
    for target, seeds in targets.items():
        d = out / target
        d.mkdir(parents=True, exist_ok=True)
        for name, data in seeds.items():
            (d / f"seed-{name}").write_bytes(data)
        print(f"{target}: {len(seeds)} seeds, {sum(map(len, seeds.values()))} bytes")


if __name__ == "__main__":
    main()
