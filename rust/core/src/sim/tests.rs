//! The emitter against the core: what the engine bins from the emitted link must be the
//! emitter's truth, count for count, whatever the layout, switching and frame slicing.

use super::*;
use crate::counters::{Counters, Reject};
use crate::cube::BudgetPolicy;
use crate::engine::{Engine, EngineConfig};
use crate::link::frame::{Assembler, Item};
use crate::link::tttr::{decode_columns, Decoder, RecordKind, RecordSink};
use crate::raster::{FrameMarkerAt, MarkerMasks, Polarity};

const MULTIHARP_T3: u32 = 0x0001_0307;
const HYDRAHARP_V2_T2: u32 = 0x0101_0204;
const PICOHARP_T3: u32 = 0x0001_0303;
const HYDRAHARP_V1_T3: u32 = 0x0001_0304;

fn polarity(name: &str, ch: u8, species: &[&str], switching: Switching, settle: u64) -> Polarity {
    Polarity {
        name: name.into(),
        channels: vec![ch, ch + 2],
        species: species.iter().map(|s| s.to_string()).collect(),
        switching,
        settle_ticks: settle,
    }
}

fn config(record_type: u32, pos: Switching, neg: Switching) -> EmitterConfig {
    EmitterConfig {
        record_type,
        tick_s: 80e-9,
        raster: RasterConfig {
            nx: 12,
            ny: 5,
            dwell_ticks: 40,
            line_settle_ticks: 7,
            flyback_ticks: 23,
            line_tolerance_ticks: 0,
            frames_per_slice: 2,
            markers: MarkerMasks {
                frame: 4,
                line_start: 1,
                line_stop: 2,
                mass_switch: 8,
            },
            frame_marker_at: FrameMarkerAt::Start,
            polarities: vec![
                polarity("positive", 0, &["Na+", "Si+", "Zr+"], pos, 3),
                polarity("negative", 1, &["O-", "P-"], neg, 4),
            ],
        },
        frame_gap_ticks: 150,
        dead_time_ticks: 2,
        dark_rate_hz: 2e5,
        settle_rate_fraction: 0.3,
        start_tick: 0,
        seed: 7,
        record_truth: true,
        record_events: true,
        max_records_per_frame: 97,
        fine_fs: None,
    }
}

/// Rates that differ by species, row and column, so a misplaced count shows.
fn rates(cfg: &EmitterConfig) -> Vec<f64> {
    let (ny, nx) = (cfg.raster.ny as usize, cfg.raster.nx as usize);
    (0..cfg.n_species() * ny * nx)
        .map(|i| 2e5 * (1 + i % 7 + (i / nx) % 3 + 4 * (i / (ny * nx))) as f64)
        .collect()
}

fn engine_for(cfg: &EmitterConfig, clock_window_s: f64) -> Engine {
    let mut raster = cfg.raster.clone();
    if raster.markers.line_stop == 0 {
        // Lets the end of the run close the last line whatever its last record.
        raster.line_tolerance_ticks =
            raster.line_settle_ticks + raster.dwell_ticks * raster.nx as u64;
    }
    Engine::new(EngineConfig {
        record_type: RecordType::from_code(cfg.record_type).unwrap(),
        tick_s: cfg.tick_s,
        raster,
        memory_budget_bytes: 1 << 30,
        budget_policy: BudgetPolicy::Refuse,
        clock_window_s,
        clock_time_scale: 1.0,
    })
    .unwrap()
}

fn append(log: &mut EventLog, mut more: EventLog) {
    log.tick.append(&mut more.tick);
    log.channel.append(&mut more.channel);
    log.species.append(&mut more.species);
    log.z.append(&mut more.z);
    log.y.append(&mut more.y);
    log.x.append(&mut more.x);
    log.fate.append(&mut more.fate);
}

/// Emit up to `end` in uneven steps, feed every frame to a core, and compare.
fn check_against_core(cfg: EmitterConfig, end: u64) -> (Emitter, Counters) {
    let (em, engine, _) = run_against_core(cfg, end, None);
    (em, engine.counters())
}

/// As `check_against_core`; `end` and `jump = (at, ticks)` are true ticks: once the
/// run passes `at` the counter jumps, and later calls are in the jumped counter. Frames
/// arrive at the host without delay.
fn run_against_core(
    cfg: EmitterConfig,
    end: u64,
    jump: Option<(u64, u64)>,
) -> (Emitter, Engine, EventLog) {
    let mut em = Emitter::new(cfg.clone()).unwrap();
    // The clock model trusts its line once a refit saw 16 pairs, and refits when a pair
    // opens a bucket (1/512 of the window): a window of ms, as these runs are, lets it.
    let mut engine = engine_for(&cfg, 0.01);
    em.set_rates(&rates(&cfg)).unwrap();
    let mut log = EventLog::default();
    let mut t = cfg.start_tick.saturating_sub(5000);
    let (mut step, mut shift) = (1, 0);
    while t < end {
        t = (t + step).min(end);
        step = step * 7 % 1999 + 1;
        if let Some((at, ticks)) = jump {
            if shift == 0 && t >= at {
                em.jump(ticks).unwrap();
                shift = ticks;
            }
        }
        let host_ns = (t as f64 * cfg.tick_s * 1e9) as i64;
        for f in em.emit_until(t + shift).unwrap() {
            engine.feed_link(&f, host_ns);
        }

        if step % 3 == 0 {
            append(&mut log, em.take_events().unwrap());
        }
    }
    append(&mut log, em.take_events().unwrap());
    engine.finish();
    let c = engine.counters();
    let truth = em.truth_counters();
    let reason = |r: Reject| c.rejected[r as usize];
    assert_eq!(c.link_frames, truth.link_frames);
    assert_eq!(
        c.link_loss_intervals + c.link_frames_rejected + c.link_frames_corrupt,
        0
    );
    assert_eq!(c.records, truth.records);
    assert_eq!(c.events, truth.events);
    assert_eq!(c.binned, truth.binned, "{cfg:?}");
    assert_eq!(reason(Reject::LineSettle), truth.line_settle);
    assert_eq!(reason(Reject::Flyback), truth.flyback);
    assert_eq!(reason(Reject::MassSettle), truth.mass_settle);
    assert_eq!(
        c.rejected_total(),
        truth.line_settle + truth.flyback + truth.mass_settle
    );
    assert_eq!(c.lines_bad, 0);
    assert_eq!(
        (
            c.markers,
            c.frame_markers,
            c.line_starts,
            c.line_stops,
            c.mass_switches
        ),
        (
            truth.markers,
            truth.frame_markers,
            truth.line_starts,
            truth.line_stops,
            truth.mass_switches
        )
    );
    assert_eq!(
        (c.overflow_records, c.wraps),
        (truth.overflow_records, truth.wraps)
    );
    let (ny, nx) = (cfg.raster.ny as usize, cfg.raster.nx as usize);
    let n = em.n_slices();
    assert!(engine.cubes().n_slices() <= n);
    for s in 0..cfg.n_species() {
        let mut want = vec![0; n * ny * nx];
        em.truth_cube(s, 0, n, &mut want).unwrap();
        let mut got = vec![0; n * ny * nx];
        let have = engine.cubes().n_slices();
        engine
            .cubes()
            .copy_range(s, 0, have, &mut got[..have * ny * nx])
            .unwrap();
        assert_eq!(got, want, "species {s} of {cfg:?}");
        let total: u64 = want.iter().map(|&v| u64::from(v)).sum();
        assert_eq!(engine.cubes().binned_by_species()[s], total);
    }
    assert!(truth.binned > 1000 && truth.dead_time_lost > 0, "{truth:?}");
    if cfg.raster.line_settle_ticks > 0 && cfg.raster.flyback_ticks > 0 {
        assert!(truth.line_settle > 0 && truth.flyback > 0 && truth.mass_settle > 0);
    }
    check_log(&em, &log);
    (em, engine, log)
}

/// The event log holds every count: by fate the truth counters, binned the truth cubes.
fn check_log(em: &Emitter, log: &EventLog) {
    let cfg = em.config();
    let truth = em.truth_counters();
    let count = |f: u8| log.fate.iter().filter(|&&x| x == f).count() as u64;
    assert_eq!(
        [0, 1, 2, 3, 4].map(count),
        [
            truth.binned,
            truth.line_settle,
            truth.flyback,
            truth.mass_settle,
            truth.dead_time_lost
        ]
    );
    assert!(log.tick.windows(2).all(|w| w[0] <= w[1]));
    let (ny, nx, n) = (
        cfg.raster.ny as usize,
        cfg.raster.nx as usize,
        em.n_slices(),
    );
    let mut cubes = vec![vec![0u32; n * ny * nx]; cfg.n_species()];
    for i in 0..log.len() {
        let (f, s) = (log.fate[i], log.species[i]);
        let dark = f == fate::LINE_SETTLE || f == fate::FLYBACK;
        assert!(if dark { s == -1 } else { s >= -1 }, "{f} {s}");
        if f == fate::IN_VOXEL {
            let (z, y, x) = (log.z[i] as usize, log.y[i] as usize, log.x[i] as usize);
            cubes[s as usize][(z * ny + y) * nx + x] += 1;
        } else {
            assert_eq!((log.z[i], log.y[i], log.x[i]), (0, 0, 0));
        }
    }
    for (s, cube) in cubes.iter().enumerate() {
        let mut want = vec![0; n * ny * nx];
        em.truth_cube(s, 0, n, &mut want).unwrap();
        assert_eq!(*cube, want, "species {s}");
    }
}

fn line_start(cfg: &EmitterConfig, frame: u64, y: u64) -> u64 {
    cfg.start_tick + frame * cfg.frame_period_ticks() + y * cfg.line_period_ticks()
}

#[test]
fn core_bins_exactly_the_truth_t3_per_frame_and_per_pixel() {
    let cfg = config(MULTIHARP_T3, Switching::PerFrame, Switching::PerPixel);
    let end = line_start(&cfg, 7, 2);
    let (em, c) = check_against_core(cfg, end);
    assert_eq!(c.frame_markers, 8);
    assert_eq!(em.position().0, 7);
}

#[test]
fn core_bins_exactly_the_truth_t2_start_below_a_wrap() {
    let mut cfg = config(HYDRAHARP_V2_T2, Switching::PerPixel, Switching::PerFrame);
    cfg.start_tick = 3 * (1 << 25) - 300;
    cfg.dark_rate_hz = 1e6;
    let end = line_start(&cfg, 6, 3);
    let (_, c) = check_against_core(cfg, end);
    // The link starts at base 2 * 2^25 (earlier wraps are not sent) and crosses one.
    assert_eq!(c.wraps, 1);
}

#[test]
fn core_bins_exactly_the_truth_with_end_markers_and_no_line_stops() {
    for (code, start) in [(PICOHARP_T3, 0), (HYDRAHARP_V1_T3, 5 * 1024 - 9)] {
        let mut cfg = config(code, Switching::PerPixel, Switching::PerPixel);
        cfg.raster.frame_marker_at = FrameMarkerAt::End;
        cfg.raster.markers.line_stop = 0;
        cfg.raster.flyback_ticks = 0;
        cfg.start_tick = start;
        let end = line_start(&cfg, 5, 4) + 33;
        check_against_core(cfg, end);
    }
}

#[test]
fn core_bins_exactly_the_truth_with_end_markers_per_frame_from_tick_zero() {
    // Frame 0 of an end-marked raster has no marker before it: the core starts its
    // settle at tick 0, which is the raster's start only when start_tick is 0.
    let mut cfg = config(MULTIHARP_T3, Switching::PerFrame, Switching::PerFrame);
    cfg.raster.frame_marker_at = FrameMarkerAt::End;
    cfg.raster.polarities[0].settle_ticks = 700; // beyond the first line
    cfg.raster.markers.mass_switch = 0;
    let end = line_start(&cfg, 6, 0);
    check_against_core(cfg, end);
}

#[test]
fn coinciding_markers_share_a_record_and_zero_gaps_still_map() {
    let mut cfg = config(MULTIHARP_T3, Switching::PerPixel, Switching::PerFrame);
    cfg.raster.flyback_ticks = 0;
    cfg.raster.line_settle_ticks = 0;
    cfg.frame_gap_ticks = 0;
    cfg.raster.markers.line_stop = 0;
    let end = line_start(&cfg, 4, 1) + 5;
    let (_, c) = check_against_core(cfg.clone(), end);
    // A line is 12 pixels of 3 switches; the first switch shares the line start's record
    // (with the frame bit and the per-frame switch on line 0). The last line is cut at +5.
    let lines = 4 * 5 + 2;
    assert_eq!(c.line_starts, lines);
    assert_eq!(c.markers, (lines - 1) * 12 * 3 + 1);
    assert_eq!(c.mass_switches, c.markers);
}

fn payload(frames: &[Vec<u8>]) -> (Vec<u32>, Vec<crate::link::frame::FrameHeader>) {
    let mut a = Assembler::new();
    let (mut records, mut headers) = (Vec::new(), Vec::new());
    for f in frames {
        a.push(f);
        while let Some(item) = a.next_item() {
            let Item::Frame(h) = item else {
                panic!("corrupt frame")
            };
            records.extend_from_slice(a.records());
            headers.push(h);
        }
    }
    (records, headers)
}

#[test]
fn stream_does_not_depend_on_how_time_is_sliced() {
    let cfg = config(MULTIHARP_T3, Switching::PerFrame, Switching::PerPixel);
    let end = line_start(&cfg, 3, 1) + 17;
    let emit = |cfg: &EmitterConfig, ticks: &[u64]| {
        let mut em = Emitter::new(cfg.clone()).unwrap();
        em.set_rates(&rates(cfg)).unwrap();
        let frames: Vec<Vec<u8>> = ticks
            .iter()
            .flat_map(|&t| em.emit_until(t).unwrap())
            .collect();
        let cubes: Vec<Vec<u32>> = (0..cfg.n_species())
            .map(|s| {
                let plane = (cfg.raster.ny * cfg.raster.nx) as usize;
                let mut c = vec![0; em.n_slices() * plane];
                em.truth_cube(s, 0, em.n_slices(), &mut c).unwrap();
                c
            })
            .collect();
        let log = em.take_events().map(|l| (l.tick, l.fate)).ok();
        (payload(&frames), em.truth_counters(), cubes, log)
    };
    // One call spans many lines: generated on a second thread while written. Steps of
    // 61 ticks stay within a line or two: generated inline.
    assert!(end / cfg.line_period_ticks() > 3 * 5);
    let ((whole, h1), t1, c1, log1) = emit(&cfg, &[end]);
    let steps: Vec<u64> = (0..=end).step_by(61).chain([end]).collect();
    let ((sliced, h2), t2, c2, log2) = emit(&cfg, &steps);
    assert_eq!(whole, sliced);
    let same = |t: TruthCounters| TruthCounters {
        link_frames: 0,
        ..t
    };
    assert_eq!(same(t1), same(t2));
    assert_eq!((c1, log1.clone()), (c2, log2));
    assert!(log1.is_some_and(|(tick, _)| tick.len() as u64 > t1.events));
    assert!(h2.len() > h1.len());
    for (i, h) in h2.iter().enumerate() {
        assert_eq!(h.sequence, i as u64);
    }
    // Without the event log the dead-time losses are kept apart, counted the same.
    let quiet = EmitterConfig {
        record_events: false,
        ..cfg.clone()
    };
    for ticks in [&[end][..], &steps] {
        let ((records, _), t, _, log) = emit(&quiet, ticks);
        assert_eq!((records, same(t), log), (whole.clone(), same(t1), None));
    }
}

#[test]
fn every_header_carries_the_base_and_raster_position_before_its_first_record() {
    let mut cfg = config(HYDRAHARP_V1_T3, Switching::PerPixel, Switching::PerFrame);
    cfg.start_tick = 40 * 1024 - 5; // an overflow 5 ticks into the raster
    cfg.frame_gap_ticks = 5000; // several overflow records before one record: cuts among them
    for max in [1, 2, 3, 97] {
        cfg.max_records_per_frame = max;
        let mut em = Emitter::new(cfg.clone()).unwrap();
        em.set_rates(&rates(&cfg)).unwrap();
        let end = line_start(&cfg, 2, 3) + 11;
        let frames = em.emit_until(end).unwrap();
        let (records, headers) = payload(&frames);
        let cols = decode_columns(RecordType::HydraHarpV1T3, &records);
        // The link starts at the base below start_tick, not at 0.
        let skipped = 39 * 1024;
        let (mut at, mut base, mut nframes, mut lines) = (0, skipped, 0u64, 0u32);
        for h in &headers {
            assert!(h.n_records as usize <= max as usize);
            assert_eq!(
                (h.overflow_base, h.frame_markers, h.line_starts),
                (base, nframes, lines)
            );
            assert_eq!(h.sent_tick, end);
            for i in at..at + h.n_records as usize {
                if cols.kind[i] == RecordKind::Overflow as u8 {
                    base = skipped + cols.tick[i];
                } else if cols.kind[i] == RecordKind::Marker as u8 {
                    let m = cols.marker[i];
                    if m & 4 != 0 {
                        (nframes, lines) = (nframes + 1, 0);
                    }
                    lines += u32::from(m & 1);
                }
            }
            at += h.n_records as usize;
        }
        assert_eq!(
            headers.last().unwrap().n_records as usize,
            records.len() - (at - headers.last().unwrap().n_records as usize)
        );
    }
}

#[test]
fn an_empty_call_still_sends_a_frame() {
    let mut cfg = config(MULTIHARP_T3, Switching::PerFrame, Switching::PerFrame);
    cfg.start_tick = 1000;
    let mut em = Emitter::new(cfg).unwrap();
    let frames = em.emit_until(500).unwrap();
    assert_eq!(frames.len(), 1);
    assert_eq!(frames[0].len(), crate::link::frame::HEADER_LEN);
    assert_eq!(em.next_sequence(), 1);
    assert!(matches!(em.emit_until(499), Err(SimError::Value(_))));
}

#[test]
fn bad_configurations_and_rates_are_errors() {
    let good = config(MULTIHARP_T3, Switching::PerFrame, Switching::PerFrame);
    let bad: Vec<fn(&mut EmitterConfig)> = vec![
        |c| c.record_type = 0x0001_0203,
        |c| c.record_type = 0x1234,
        |c| c.raster.dwell_ticks = 0,
        |c| c.raster.markers.frame = 16,
        |c| c.raster.markers.line_stop = 4,
        |c| c.raster.polarities[1].channels = vec![0],
        |c| c.tick_s = f64::NAN,
        |c| c.dark_rate_hz = -1.0,
        |c| c.settle_rate_fraction = f64::INFINITY,
        |c| c.max_records_per_frame = 0,
        |c| c.fine_fs = Some(0),
        |c| c.start_tick = u64::MAX - 10,
        |c| {
            c.record_type = PICOHARP_T3;
            c.raster.polarities[1].channels = vec![4];
        },
        |c| {
            c.record_events = true;
            c.raster.nx = 70_000;
            c.raster.dwell_ticks = 1;
        },
        |c| {
            c.record_type = HYDRAHARP_V2_T2;
            c.fine_fs = Some(5000);
        },
    ];
    for (i, change) in bad.iter().enumerate() {
        let mut c = good.clone();
        change(&mut c);
        assert!(
            matches!(
                Emitter::new(c),
                Err(CoreError::Config(_)) | Err(CoreError::UnknownRecordType(_))
            ),
            "case {i}"
        );
    }
    let mut em = Emitter::new(good.clone()).unwrap();
    let mut r = rates(&good);
    assert!(em.set_rates(&r[1..]).is_err());
    for v in [f64::NAN, -1.0, f64::INFINITY, 1e30] {
        r[17] = v;
        assert!(matches!(em.set_rates(&r), Err(SimError::Value(_))), "{v}");
    }
    assert!(em.truth_cube(5, 0, 0, &mut []).is_err());
    assert!(em.truth_cube(0, 0, 1, &mut []).is_err());
}

#[test]
fn three_polarities_merge_in_time_order() {
    let mut cfg = config(MULTIHARP_T3, Switching::PerPixel, Switching::PerFrame);
    cfg.raster
        .polarities
        .push(polarity("third", 5, &["X"], Switching::PerFrame, 0));
    let end = line_start(&cfg, 3, 2);
    let (em, _) = check_against_core(cfg, end);
    assert!(em.truth_counters().events > 1000);
}

#[test]
fn a_late_start_begins_the_link_at_the_base_below_it() {
    // HydraHarp V1 T3 writes one overflow record per 1024 ticks: 2^30 of them skipped.
    for (code, start) in [
        (HYDRAHARP_V2_T2, 1u64 << 62),
        (MULTIHARP_T3, 987_654_321_000),
        (HYDRAHARP_V1_T3, 1 << 40),
    ] {
        let mut cfg = config(code, Switching::PerFrame, Switching::PerPixel);
        cfg.start_tick = start;
        let period = RecordType::from_code(code).unwrap().overflow_rule().period;
        let mut em = Emitter::new(cfg.clone()).unwrap();
        let (_, headers) = payload(&em.emit_until(start).unwrap());
        assert_eq!(headers[0].overflow_base, start / period * period);
        check_against_core(cfg.clone(), line_start(&cfg, 4, 1));
    }
}

/// Every event record of the link with its tick, decoding each frame from its header's
/// base as the core does.
fn sent_events(kind: RecordType, frames: &[Vec<u8>]) -> Vec<(u64, u8)> {
    struct Events(Vec<(u64, u8)>);
    impl RecordSink for Events {
        fn event(&mut self, tick: u64, channel: u8, _: u16) {
            self.0.push((tick, channel));
        }
        fn marker(&mut self, _: u64, _: u8) {}
    }
    let (mut a, mut d, mut out) = (Assembler::new(), Decoder::new(kind), Events(Vec::new()));
    for f in frames {
        a.push(f);
        while let Some(item) = a.next_item() {
            let Item::Frame(h) = item else {
                panic!("corrupt frame")
            };
            d.set_overflow_base(h.overflow_base);
            d.feed(a.records(), &mut out);
        }
    }
    out.0
}

#[test]
fn the_event_log_is_the_records_sent_plus_the_dead_time_losses() {
    let mut cfg = config(HYDRAHARP_V2_T2, Switching::PerPixel, Switching::PerFrame);
    cfg.start_tick = 3 * (1 << 25) - 300;
    let kind = RecordType::from_code(cfg.record_type).unwrap();
    let mut em = Emitter::new(cfg.clone()).unwrap();
    em.set_rates(&rates(&cfg)).unwrap();
    let (mut frames, mut log) = (Vec::new(), EventLog::default());
    let j = 5 << 25;
    for (i, frame) in (1..6).enumerate() {
        if i == 2 {
            em.jump(j).unwrap();
        }
        let shift = if i >= 2 { j } else { 0 };
        frames.extend(em.emit_until(line_start(&cfg, frame, 2) + shift).unwrap());
        append(&mut log, em.take_events().unwrap());
    }
    let sent: Vec<(u64, u8)> = (0..log.len())
        .filter(|&i| log.fate[i] != fate::DEAD_TIME_LOST)
        .map(|i| (log.tick[i], log.channel[i]))
        .collect();
    assert_eq!(sent_events(kind, &frames), sent);
    check_log(&em, &log);
    let (tb, ticks) = em.jumps()[0];
    assert_eq!(ticks, j);
    assert!(log.tick.iter().all(|&t| t < tb || t >= tb + j));
    assert!(em.take_events().unwrap().is_empty());
}

#[test]
fn a_clock_jump_moves_the_lines_after_it_and_the_core_follows() {
    // With a flyback, and without one (the line stop would share the next line start's
    // record, but belongs before the jump).
    for (code, flyback) in [(MULTIHARP_T3, 23), (HYDRAHARP_V1_T3, 0)] {
        let mut cfg = config(code, Switching::PerFrame, Switching::PerPixel);
        cfg.raster.flyback_ticks = flyback;
        let at = line_start(&cfg, 3, 1) + 100;
        // 80 ms at 80 ns ticks: far beyond what arrival jitter explains.
        let j = 1_000_000;
        // Ends after a frame gap: the last line's stop is sent, also without a flyback.
        let end = line_start(&cfg, 9, 0);
        let (em, engine, log) = run_against_core(cfg.clone(), end, Some((at, j)));
        let truth = em.truth_counters();
        assert_eq!(truth.clock_jumps, 1);
        let &[(tb, ticks)] = em.jumps() else {
            panic!("{:?}", em.jumps())
        };
        assert_eq!(ticks, j);
        // It jumped at a line start near the call: one line period at most after it.
        let starts: Vec<u64> = (0..10)
            .flat_map(|f| (0..5).map(move |y| (f, y)))
            .map(|(f, y)| line_start(&cfg, f, y))
            .collect();
        assert!(starts.contains(&tb) && tb + 2000 > at && tb <= at + cfg.line_period_ticks());
        assert!(log.tick.iter().any(|&t| t >= tb + j));
        // The jumped span costs no overflow records: the next header moves the base.
        assert!(truth.overflow_records < 40, "{truth:?}");
        assert_eq!(engine.counters().lines_bad, 0);
        assert_eq!(engine.clock().jumps(), 1);
    }
}

#[test]
fn bad_jumps_are_value_errors() {
    let mut cfg = config(MULTIHARP_T3, Switching::PerFrame, Switching::PerFrame);
    cfg.start_tick = 1000;
    let mut em = Emitter::new(cfg).unwrap();
    assert!(matches!(em.jump(0), Err(SimError::Value(_))));
    assert!(matches!(em.jump(u64::MAX), Err(SimError::Value(_))));
    assert!(em.jumps().is_empty());
    let mut quiet = config(MULTIHARP_T3, Switching::PerFrame, Switching::PerFrame);
    quiet.record_events = false;
    assert!(Emitter::new(quiet).unwrap().take_events().is_err());
}

#[test]
fn a_jump_between_lines_without_flyback_keeps_the_line_stop_before_it() {
    let mut cfg = config(HYDRAHARP_V1_T3, Switching::PerFrame, Switching::PerPixel);
    cfg.raster.flyback_ticks = 0;
    let mut em = Emitter::new(cfg.clone()).unwrap();
    em.set_rates(&rates(&cfg)).unwrap();
    // Inside line 2, whose stop would share line 3's start record.
    let mut frames = em.emit_until(line_start(&cfg, 1, 2) + 50).unwrap();
    let j = 12_345;
    em.jump(j).unwrap();
    assert_eq!(em.jumps(), &[(line_start(&cfg, 1, 3), j)]);
    frames.extend(em.emit_until(line_start(&cfg, 3, 0) + j).unwrap());
    let mut engine = engine_for(&cfg, 30.0);
    for f in &frames {
        engine.feed_link(f, 0);
    }
    engine.finish();
    let c = engine.counters();
    assert_eq!((c.lines_bad, c.line_stops, c.line_starts), (0, 15, 15));
    assert_eq!(c.binned, em.truth_counters().binned);
}

#[test]
fn a_pipeline_that_joins_a_running_stream_stays_in_step_and_starts_with_a_whole_frame() {
    for at in [FrameMarkerAt::Start, FrameMarkerAt::End] {
        let mut cfg = config(MULTIHARP_T3, Switching::PerFrame, Switching::PerPixel);
        cfg.raster.frames_per_slice = 1;
        cfg.raster.frame_marker_at = at;
        let mut em = Emitter::new(cfg.clone()).unwrap();
        em.set_rates(&rates(&cfg)).unwrap();
        let end = line_start(&cfg, 7, 0);
        let frames: Vec<Vec<u8>> = (1..=end / 53)
            .flat_map(|k| em.emit_until(k * 53).unwrap())
            .collect();
        let mut whole = engine_for(&cfg, 30.0);
        // Joined a third of the way in, mid-frame: frame 1 or 2 is partial.
        let mut joined = engine_for(&cfg, 30.0);
        let from = frames.len() / 3;
        for (i, f) in frames.iter().enumerate() {
            whole.feed_link(f, 0);
            if i >= from {
                joined.feed_link(f, 0);
            }
        }
        let (n, m) = (whole.cubes().n_slices(), joined.cubes().n_slices());
        assert!(m >= 3 && m < n, "{at:?}: {m} of {n} slices");
        let origin = n - m;
        let plane = (cfg.raster.ny * cfg.raster.nx) as usize;
        for s in 0..cfg.n_species() {
            let mut a = vec![0; n * plane];
            let mut b = vec![0; m * plane];
            whole.cubes().copy_range(s, 0, n, &mut a).unwrap();
            joined.cubes().copy_range(s, 0, m, &mut b).unwrap();
            // Slice z of the joined pipeline is frame origin + z of the whole stream,
            // species and all (the mass schedule followed the sender's frame count).
            assert_eq!(&a[origin * plane..], &b[..], "{at:?} species {s}");
        }
        let c = joined.counters();
        assert_eq!(c.events, c.binned + c.rejected_total() + c.pending);
        assert!(c.binned > 0 && c.binned < whole.counters().binned);
    }
}
