//! `cargo bench -p opsims-core`: events/s of decode + map + bin on one core, for a
//! 256 x 256 dual-polarity raster in MultiHarp T3 records fed in 1 M-record batches.
//! (The Python benchmark in `benchmarks/` compares the same work with numpy.)

use std::time::Instant;

use opsims_core::cube::BudgetPolicy;
use opsims_core::engine::{Engine, EngineConfig};
use opsims_core::link::encode::Encoder;
use opsims_core::link::tttr::RecordType;
use opsims_core::raster::{FrameMarkerAt, MarkerMasks, Polarity, RasterConfig, Switching};

const NX: u64 = 256;
const NY: u64 = 256;
const DWELL: u64 = 64;
const SETTLE: u64 = 32;
const LINE: u64 = SETTLE + NX * DWELL;
const PERIOD: u64 = LINE + 128;

fn config() -> EngineConfig {
    let species = |names: &[&str]| names.iter().map(|s| s.to_string()).collect();
    EngineConfig {
        record_type: RecordType::GenericT3,
        tick_s: 80e-9,
        raster: RasterConfig {
            nx: NX as u32,
            ny: NY as u32,
            dwell_ticks: DWELL,
            line_settle_ticks: SETTLE,
            flyback_ticks: PERIOD - LINE,
            line_tolerance_ticks: 0,
            frames_per_slice: 9,
            markers: MarkerMasks {
                frame: 4,
                line_start: 1,
                line_stop: 2,
                mass_switch: 0,
            },
            frame_marker_at: FrameMarkerAt::Start,
            polarities: vec![
                Polarity {
                    name: "positive".into(),
                    channels: vec![0],
                    species: species(&["Na+", "Si+", "Zr+", "ZrO+"]),
                    switching: Switching::PerFrame,
                    settle_ticks: 0,
                },
                Polarity {
                    name: "negative".into(),
                    channels: vec![1],
                    species: species(&["O-", "P-", "SiO2-", "PO2-", "ZrO2-"]),
                    switching: Switching::PerFrame,
                    settle_ticks: 0,
                },
            ],
        },
        memory_budget_bytes: 8 << 30,
        budget_policy: BudgetPolicy::Rebin,
        clock_window_s: 30.0,
        clock_time_scale: 1.0,
    }
}

/// A raster stream with `per_line` events per line at random times, in time order.
fn stream(events: u64, per_line: u64) -> Vec<u32> {
    let mut enc = Encoder::new(RecordType::GenericT3);
    let mut out = Vec::with_capacity((events + events / 8) as usize);
    let mut rng = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let mut offsets = vec![0u64; per_line as usize];
    let (mut written, mut t) = (0, 1000u64);
    while written < events {
        enc.marker(t, 4, &mut out).unwrap();
        for _ in 0..NY {
            enc.marker(t, 1, &mut out).unwrap();
            offsets.iter_mut().for_each(|o| *o = next() % LINE);
            offsets.sort_unstable();
            for &o in &offsets {
                enc.event(t + o, (next() & 1) as u8, 0, &mut out).unwrap();
            }
            enc.marker(t + LINE, 2, &mut out).unwrap();
            t += PERIOD;
            written += per_line;
        }
        t += 1000;
    }
    out
}

fn main() {
    let events = std::env::var("OPSIMS_BENCH_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50_000_000u64);
    let records = stream(events, 768);
    let mut best = f64::INFINITY;
    let mut stats = Default::default();
    for _ in 0..3 {
        let mut engine = Engine::new(config()).unwrap();
        let start = Instant::now();
        for batch in records.chunks(1 << 20) {
            engine.feed_records(batch);
        }
        engine.finish();
        best = best.min(start.elapsed().as_secs_f64());
        stats = engine.counters();
    }
    let c: opsims_core::counters::Counters = stats;
    assert_eq!(c.events, c.binned + c.rejected_total());
    println!(
        "decode+map+bin: {} records, {} events ({} binned) in {:.3} s: {:.1} M events/s",
        records.len(),
        c.events,
        c.binned,
        best,
        c.events as f64 / best / 1e6
    );
}
