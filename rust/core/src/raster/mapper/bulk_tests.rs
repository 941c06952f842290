//! The bulk path against the record-by-record path: random streams with every kind of
//! record the bulk path must hand back (markers, out-of-order and unknown-channel events,
//! settle and overrun, malformed and garbage records) give identical cubes and counters
//! at every batch boundary, for every record layout.

use super::bulk::SpanDiv;
use crate::counters::Counters;
use crate::cube::{BudgetPolicy, CubeSet};
use crate::link::encode::Encoder;
use crate::link::tttr::{Decoder, EventLayout, RecordSink, RecordType};
use crate::raster::{FrameMarkerAt, MarkerMasks, Polarity, Raster, RasterConfig, Switching};

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        // SplitMix64.
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// The engine's sink, with or without the bulk path.
struct Pipe {
    raster: Raster,
    cubes: CubeSet,
    c: Counters,
    bulk: bool,
}

#[derive(Clone, Copy, PartialEq)]
enum Path {
    RecordByRecord,
    Scalar,
    Vectors,
}

impl RecordSink for Pipe {
    fn event(&mut self, tick: u64, channel: u8, _dtime: u16) {
        self.raster.event(tick, channel, &mut self.c);
    }
    fn events(&mut self, records: &[u32], base: &mut u64, layout: &EventLayout) -> usize {
        if !self.bulk {
            return 0;
        }
        let taken = self.raster.events(records, base, layout, &mut self.c);
        self.c.overflow_records += taken.overflows;
        self.c.wraps += taken.wraps;
        taken.records
    }
    fn marker(&mut self, tick: u64, mask: u8) {
        self.raster.marker(tick, mask, &mut self.cubes, &mut self.c);
    }
    fn overflow(&mut self, count: u64) {
        self.c.overflow_records += 1;
        self.c.wraps += count;
    }
    fn malformed(&mut self, _record: u32) {
        self.c.malformed += 1;
    }
}

impl Pipe {
    fn new(cfg: &RasterConfig, path: Path) -> Pipe {
        let mut raster = Raster::new(cfg.clone()).unwrap();
        if path == Path::Scalar {
            raster.without_vectors();
        }
        let bulk = path != Path::RecordByRecord;
        let cubes = CubeSet::new(
            raster.n_species(),
            cfg.ny as usize,
            cfg.nx as usize,
            1 << 24,
            BudgetPolicy::Rebin,
        )
        .unwrap();
        Pipe {
            raster,
            cubes,
            c: Counters::default(),
            bulk,
        }
    }
    fn feed(&mut self, dec: &mut Decoder, records: &[u32]) {
        dec.feed(records, self);
        self.raster.flush(&mut self.c);
        self.c.pending = self.raster.pending();
    }
    fn cube(&self) -> Vec<u32> {
        let (ny, nx) = self.cubes.shape_yx();
        let z = self.cubes.n_slices();
        let mut all = Vec::new();
        for s in 0..self.cubes.n_species() {
            let mut out = vec![0; z * ny * nx];
            self.cubes.copy_range(s, 0, z, &mut out).unwrap();
            all.extend(out);
        }
        all
    }
}

fn config(rng: &mut Rng) -> RasterConfig {
    let switching = |r: &mut Rng| {
        if r.below(4) == 0 {
            Switching::PerPixel
        } else {
            Switching::PerFrame
        }
    };
    let dwell: u64 = [1, 2, 3, 7, 16, 64][rng.below(6) as usize];
    let widest = [6, 40][rng.below(2) as usize];
    let nx = 1 + rng.below(widest) as u32;
    let stops = rng.below(3) != 0;
    let species = |n: u64| (0..n).map(|i| format!("s{i}")).collect::<Vec<_>>();
    let (sw0, sw1) = (switching(rng), switching(rng));
    let (n0, n1) = (1 + rng.below(3), 1 + rng.below(2));
    // Per-pixel settle must leave time in the split pixel.
    let settle = |sw: Switching, n: u64, r: &mut Rng| match sw {
        Switching::PerPixel => r.below(dwell.div_ceil(n)),
        Switching::PerFrame => [0, 0, 5, 40][r.below(4) as usize],
    };
    let (s0, s1) = (settle(sw0, n0, rng), settle(sw1, n1, rng));
    RasterConfig {
        nx,
        ny: 1 + rng.below(3) as u32,
        dwell_ticks: dwell,
        line_settle_ticks: rng.below(4),
        flyback_ticks: rng.below(8),
        line_tolerance_ticks: rng.below(2),
        frames_per_slice: 1 + rng.below(2) as u32,
        markers: MarkerMasks {
            frame: 4,
            line_start: 1,
            line_stop: if stops { 2 } else { 0 },
            mass_switch: 8,
        },
        frame_marker_at: if rng.below(2) == 0 {
            FrameMarkerAt::Start
        } else {
            FrameMarkerAt::End
        },
        polarities: vec![
            Polarity {
                name: "p".into(),
                channels: vec![0, 3],
                species: species(n0),
                switching: sw0,
                settle_ticks: s0,
            },
            Polarity {
                name: "n".into(),
                channels: vec![1],
                species: species(n1),
                switching: sw1,
                settle_ticks: s1,
            },
        ],
    }
}

/// A raster-like stream: frames of lines with events mostly inside them, plus every
/// irregularity the bulk path must leave to the careful path.
fn stream(kind: RecordType, cfg: &RasterConfig, rng: &mut Rng) -> Vec<u32> {
    let mut enc = Encoder::new(kind);
    let mut out = Vec::new();
    let line = cfg.line_settle_ticks + u64::from(cfg.nx) * cfg.dwell_ticks;
    let period = kind.overflow_rule().period;
    // Long pauses cross several wraps (counted overflows in the generic layouts).
    let pause = |r: &mut Rng| {
        if r.below(8) == 0 {
            r.below(3 * period)
        } else {
            r.below(20)
        }
    };
    let mut t = rng.below(50);
    for _ in 0..1 + rng.below(4) {
        enc.marker(t, 4, &mut out).unwrap();
        t += pause(rng);
        for _ in 0..cfg.ny + rng.below(2) as u32 {
            let start = t;
            // Occasionally an extra mark rides on the line start.
            let mask = if rng.below(10) == 0 { 1 | 8 } else { 1 };
            enc.marker(start, mask, &mut out).unwrap();
            let mut offsets: Vec<u64> = (0..rng.below(3 * line + 4))
                .map(|_| rng.below(line + 2))
                .collect();
            offsets.sort_unstable();
            // Mostly the nominal length; sometimes off by a tick or two.
            let end = match rng.below(8) {
                0 => start + line + 1 + rng.below(2),
                1 => start + line.saturating_sub(1),
                _ => start + line,
            };
            let mut stopped = cfg.markers.line_stop == 0 || rng.below(12) == 0;
            for off in offsets {
                let tick = start + off;
                if !stopped && tick >= end {
                    enc.marker(end, 2, &mut out).unwrap();
                    stopped = true;
                }
                let ch = [0u8, 1, 3, 2, 1, 0, 0, 1][rng.below(8) as usize];
                let ch = ch.min(kind.channels() - 1);
                enc.event(tick, ch, 0, &mut out).unwrap();
                match rng.below(150) {
                    // The same event again: in order at equal ticks.
                    0 => out.push(*out.last().unwrap()),
                    // An event whose time field went back: out of order (or, after a
                    // wrap, far ahead).
                    1 => out.push(*out.last().unwrap() & !0x7),
                    // Anything at all.
                    2 => out.push(rng.next() as u32),
                    _ => {}
                }
                t = tick;
            }
            if !stopped {
                enc.marker(end, 2, &mut out).unwrap();
            }
            t = t.max(end);
            t += cfg.flyback_ticks + pause(rng) / 4;
        }
        t += pause(rng);
    }
    // Overflow records as real hardware writes them: generic layouts often count a single
    // wrap as 0, HydraHarp V1 leaves junk in the count it ignores.
    let ovf = (1 << 31) | (63 << 25);
    for r in out.iter_mut().filter(|r| **r & !0x1FF_FFFF == ovf) {
        match kind {
            RecordType::GenericT2 | RecordType::GenericT3
                if *r & 0x1FF_FFFF == 1 && rng.below(2) == 0 =>
            {
                *r = ovf;
            }
            RecordType::HydraHarpV1T2 | RecordType::HydraHarpV1T3 => {
                *r = ovf | (rng.next() as u32 & (kind.event_layout().time_mask));
            }
            _ => {}
        }
    }
    out
}

#[test]
fn bulk_equals_record_by_record() {
    let mut rng = Rng(2024);
    let kinds = RecordType::ALL;
    for round in 0..1500 {
        let kind = kinds[round % kinds.len()];
        let cfg = config(&mut rng);
        let records = stream(kind, &cfg, &mut rng);
        let paths = [Path::RecordByRecord, Path::Scalar, Path::Vectors];
        let mut pipes = paths.map(|p| (Pipe::new(&cfg, p), Decoder::new(kind)));
        let mut rest = &records[..];
        while !rest.is_empty() {
            let n = (1 + rng.below(rest.len() as u64 + 20) as usize).min(rest.len());
            let (batch, tail) = rest.split_at(n);
            for (pipe, dec) in pipes.iter_mut() {
                pipe.feed(dec, batch);
            }
            let (slow, slow_dec) = &pipes[0];
            for (fast, dec) in &pipes[1..] {
                assert_eq!(fast.c, slow.c, "round {round} {kind:?} {cfg:?}");
                assert_eq!(fast.raster.last_tick(), slow.raster.last_tick());
                assert_eq!(dec.overflow_base(), slow_dec.overflow_base());
            }
            rest = tail;
        }
        for (pipe, _) in pipes.iter_mut() {
            pipe.raster.finish(&mut pipe.cubes, &mut pipe.c);
        }
        let slow = &pipes[0].0;
        for (fast, _) in &pipes[1..] {
            assert_eq!(fast.c, slow.c, "round {round} {kind:?} {cfg:?}");
            assert_eq!(fast.cube(), slow.cube(), "round {round} {kind:?} {cfg:?}");
        }
        let c = slow.c;
        assert_eq!(c.events, c.binned + c.rejected_total());
    }
}

#[test]
fn bulk_is_used_on_clean_lines() {
    // A long clean line in generic T3: all of it should go through the bulk path.
    let mut rng = Rng(7);
    let mut cfg = config(&mut rng);
    cfg.dwell_ticks = 5;
    for p in cfg.polarities.iter_mut() {
        p.switching = Switching::PerFrame;
        p.settle_ticks = 0;
    }
    let kind = RecordType::GenericT3;
    let mut enc = Encoder::new(kind);
    let mut records = Vec::new();
    enc.marker(10, 4, &mut records).unwrap();
    enc.marker(20, 1, &mut records).unwrap();
    let first = 20 + cfg.line_settle_ticks;
    for i in 0..u64::from(cfg.nx) * 5 {
        enc.event(first + i, (i % 2) as u8, 0, &mut records)
            .unwrap();
    }
    let mut pipe = Pipe::new(&cfg, Path::Vectors);
    let mut dec = Decoder::new(kind);
    dec.feed(&records[..2], &mut pipe);
    let mut base = dec.overflow_base();
    let events = &records[2..];
    let taken = pipe
        .raster
        .events(events, &mut base, kind.event_layout(), &mut pipe.c);
    assert_eq!(taken.records, events.len());
    pipe.raster.flush(&mut pipe.c);
    assert_eq!(pipe.raster.pending(), events.len() as u64);
}

#[test]
fn span_division_is_exact() {
    let mut rng = Rng(99);
    for d in (2..300u64).chain([1 << 20, (1 << 32) - 1, 1 << 32]) {
        let span = (1u64 << 32).min(d * 5000);
        let div = SpanDiv::new(d, span).unwrap();
        for n in [0, 1, d - 1, d, d + 1, span - 1, span - d, span / 2] {
            assert_eq!(div.div(n), n / d, "{n} / {d}");
        }
        for _ in 0..2000 {
            let n = rng.below(span);
            assert_eq!(div.div(n), n / d, "{n} / {d}");
        }
    }
    assert!(SpanDiv::new(1, 10).is_none());
    assert!(SpanDiv::new(3, (1 << 32) + 1).is_none());
}

#[cfg(target_arch = "x86_64")]
#[test]
fn lane_division_is_exact() {
    use super::bulk_avx2::divider;
    let mut rng = Rng(5);
    for d in (2..300u64).chain([1000, 4096, 65_537, (1 << 20) + 3, 1 << 29, 1 << 30]) {
        for span in [d, 2 * d, d * 256, d * 5000, 1 << 30] {
            let Some((magic, shift)) = divider(span, d) else {
                assert!(span > 1 << 30, "{span} / {d}");
                continue;
            };
            let div = |n: u64| (n * u64::from(magic)) >> shift;
            for n in [0, 1, d - 1, d, span - 1, span / 2, span - d] {
                assert_eq!(div(n), n / d, "{n} / {d} in {span}");
            }
            for _ in 0..500 {
                let n = rng.below(span);
                assert_eq!(div(n), n / d, "{n} / {d} in {span}");
            }
        }
    }
    assert!(divider(10, 1).is_none());
    assert!(divider((1 << 30) + 1, 3).is_none());
}
