//! The detector side: the live link into an engine (`link_stream`) and raw TTTR records
//! into the decoder and the raster mapper (`tttr_records`).

use super::{pieces, Input};
use crate::counters::Counters;
use crate::cube::BudgetPolicy;
use crate::engine::{Engine, EngineConfig};
use crate::link::encode::Encoder;
use crate::link::frame::{encode, FrameHeader};
use crate::link::stream::{DecodedFrames, StreamDecoder};
use crate::link::tttr::{
    decode_columns, Decoder, RecordColumns, RecordKind, RecordSink, RecordType,
};
use crate::raster::{FrameMarkerAt, MarkerMasks, Polarity, RasterConfig, Switching};

/// Every record type code the core knows.
const CODES: [u32; 12] = RecordType::KNOWN_CODES;

fn record_type(inp: &mut Input<'_>) -> RecordType {
    let code = CODES[usize::from(inp.u8()) % CODES.len()];
    RecordType::from_code(code).expect("every code in CODES is known")
}

fn polarity(name: &str, channels: &[u8], species: usize, per_pixel: bool, settle: u64) -> Polarity {
    Polarity {
        name: name.into(),
        channels: channels.to_vec(),
        species: (0..species).map(|s| format!("{name}{s}")).collect(),
        switching: if per_pixel {
            Switching::PerPixel
        } else {
            Switching::PerFrame
        },
        settle_ticks: settle,
    }
}

/// A small engine configuration chosen by the input: every layout of polarities and
/// switching, fixed or measured dwell, start or end frame markers, a budget that runs
/// out (rebin or refuse) or not. Mostly valid; an invalid one is refused by
/// `Engine::new`, which is an answer too.
fn engine_config(inp: &mut Input<'_>, record_type: RecordType) -> EngineConfig {
    let flags = inp.u8();
    let measured = flags & 0x20 != 0;
    let nx = 1 + u32::from(inp.u8() % 16);
    let ny = 1 + u32::from(inp.u8() % 16);
    let dwell_ticks = if measured {
        0
    } else {
        1 + u64::from(inp.u16())
    };
    let settle = u64::from(inp.u8());
    // Per-pixel switching needs a fixed dwell with time left after each species' settle.
    let per_pixel = !measured;
    let pixel_settle = |n: u64| settle % (dwell_ticks / n).max(1);
    let polarities = match flags & 3 {
        0 => vec![polarity("p", &[0], 1, false, 0)],
        1 => vec![polarity("p", &[0, 1], 2, false, settle)],
        2 => vec![
            polarity("p", &[0, 1], 2, false, settle),
            polarity("n", &[2, 3], 3, per_pixel, pixel_settle(3)),
        ],
        _ => vec![polarity("q", &[1], 2, per_pixel, pixel_settle(2))],
    };
    let n_species: u64 = polarities.iter().map(|p| p.species.len() as u64).sum();
    let markers = MarkerMasks {
        frame: 4,
        line_start: 1,
        line_stop: if measured || flags & 0x40 == 0 { 2 } else { 0 },
        mass_switch: if flags & 0x80 != 0 { 8 } else { 0 },
    };
    let raster = RasterConfig {
        nx,
        ny,
        dwell_ticks,
        line_settle_ticks: u64::from(inp.u8()) * 4,
        flyback_ticks: u64::from(inp.u16()),
        line_tolerance_ticks: u64::from(inp.u8()),
        frames_per_slice: 1 + u32::from(inp.u8() % 4),
        markers,
        frame_marker_at: if flags & 4 != 0 {
            FrameMarkerAt::End
        } else {
            FrameMarkerAt::Start
        },
        polarities,
    };
    // The cube set's minimum (two chunks of 16 slices for these small rasters): a run of
    // a few dozen frames exhausts it.
    let minimum = u64::from(nx * ny) * 4 * 16 * n_species * 2;
    let scale = inp.u8();
    EngineConfig {
        record_type,
        tick_s: f64::from(1 + u32::from(inp.u8())) * 1e-12,
        raster,
        // Otherwise 4 MiB: hundreds of slices, and digests of the cubes stay quick.
        memory_budget_bytes: if flags & 0x10 != 0 { minimum } else { 1 << 22 },
        budget_policy: if flags & 8 != 0 {
            BudgetPolicy::Refuse
        } else {
            BudgetPolicy::Rebin
        },
        clock_window_s: 30.0,
        clock_time_scale: [1.0, 10.0, 1000.0, 0.5][usize::from(scale % 4)],
    }
}

/// The accounting every engine keeps at every moment between calls.
fn check_counters(c: &Counters, what: &str) {
    assert_eq!(
        c.events,
        c.binned + c.rejected_total() + c.pending,
        "{what}: events != binned + rejected_total + pending in {c:?}"
    );
    assert_eq!(
        c.records,
        c.events + c.markers + c.overflow_records + c.syncs + c.malformed,
        "{what}: a record was not counted as exactly one kind in {c:?}"
    );
    assert!(c.markers_out_of_order <= c.markers, "{what}: {c:?}");
}

fn finish_and_check(engine: &mut Engine, what: &str) {
    engine.finish();
    let c = engine.counters();
    check_counters(&c, what);
    assert_eq!(
        c.pending, 0,
        "{what}: events still pending after finish: {c:?}"
    );
}

/// A link stream made of frames the fuzzer describes field by field (so the checksums
/// match and the engine's handling of headers, gaps and records is reached), garbage,
/// flipped bytes and cut points.
fn frames_stream(inp: &mut Input<'_>, cfg: &EngineConfig) -> (Vec<u8>, Vec<usize>) {
    let (mut out, mut cuts) = (Vec::new(), Vec::new());
    let kind = cfg.record_type;
    let mut enc = Encoder::starting_at(kind, 0);
    let (mut tick, mut seq) = (0u64, 0u64);
    let tick_fs = (cfg.tick_s * 1e15).round() as u64;
    let m = cfg.raster.markers;
    let mut ops = 0;
    while !inp.is_empty() && ops < 64 && out.len() < 1 << 20 {
        ops += 1;
        match inp.u8() % 8 {
            0 => {
                let n = usize::from(inp.u8());
                out.extend_from_slice(inp.bytes(n));
            }
            1 => cuts.push(out.len()),
            2 if !out.is_empty() => {
                let at = usize::from(inp.u16()) % out.len();
                out[at] ^= inp.u8() | 1;
            }
            _ => {
                let flags = inp.u16();
                seq = match flags & 3 {
                    0 | 1 => seq.wrapping_add(1),
                    2 => seq.wrapping_add(u64::from(inp.u8())),
                    _ => inp.u64(),
                };
                let mut header = FrameHeader {
                    sequence: seq,
                    record_type: kind.code(),
                    tick_fs,
                    overflow_base: enc.overflow_base(),
                    frame_mask: m.frame,
                    line_start_mask: m.line_start,
                    line_stop_mask: m.line_stop,
                    mass_switch_mask: m.mass_switch,
                    ..FrameHeader::default()
                };
                if flags & 4 != 0 {
                    header.record_type = CODES[usize::from(inp.u8()) % CODES.len()];
                }
                if flags & 8 != 0 {
                    header.tick_fs = inp.u64();
                }
                if flags & 16 != 0 {
                    header.frame_mask = inp.u8();
                    header.line_start_mask = inp.u8();
                }
                if flags & 32 != 0 {
                    header.frame_markers = u64::from(inp.u8());
                    header.line_starts = u32::from(inp.u8());
                }
                if flags & 64 != 0 {
                    header.frame_markers = inp.u64();
                    header.line_starts = inp.u32();
                }
                if flags & 128 != 0 {
                    header.overflow_base = inp.u64();
                }
                let mut records = Vec::new();
                for _ in 0..inp.u8() % 64 {
                    let op = inp.u8();
                    if op & 0x80 != 0 {
                        records.push(inp.u32());
                        continue;
                    }
                    tick = tick.saturating_add(u64::from(inp.u16()) << (op % 6));
                    // An encoder error (a channel the layout lacks) just drops the record.
                    let _ = if op & 0x40 != 0 {
                        enc.marker(tick, (op >> 2) & 0xF, &mut records)
                    } else {
                        enc.event(tick, (op >> 3) & 3, u16::from(op), &mut records)
                    };
                }
                header.sent_tick = tick;
                if flags & 256 != 0 {
                    header.sent_tick = inp.u64();
                }
                out.extend(encode(&header, &records));
            }
        }
    }
    (out, cuts)
}

/// Arbitrary bytes, or frames built by the fuzzer, cut at the points it chooses, into an
/// engine exactly as `Engine::feed_link` receives the live link, and into the link
/// stream decoder. Checks: the counters balance after every piece and after `finish`;
/// an engine fed the whole stream at once builds the same (`Engine::digest`); the
/// decoder and the engine agree on frames, corrupt frames and skipped bytes.
pub fn link_stream(data: &[u8]) {
    let mut inp = Input::new(data);
    let kind = record_type(&mut inp);
    let cfg = engine_config(&mut inp, kind);
    let structured = inp.bool();
    let host0 = inp.u64() as i64;
    let host_step = i64::from(inp.u32());
    let (stream, cuts) = if structured {
        frames_stream(&mut inp, &cfg)
    } else {
        let n = inp.u8() % 8;
        let cuts: Vec<usize> = (0..n).map(|_| usize::from(inp.u16())).collect();
        (inp.rest().to_vec(), cuts)
    };
    let Ok(mut live) = Engine::new(cfg.clone()) else {
        return;
    };
    let mut whole = Engine::new(cfg).expect("the same configuration is accepted twice");
    let mut dec = StreamDecoder::new();
    let (mut cols, mut frames, mut refused) = (None, DecodedFrames::default(), 0u64);
    for (i, (a, b)) in pieces(stream.len(), cuts).into_iter().enumerate() {
        let host_ns = host0.wrapping_add(host_step.wrapping_mul(i as i64));
        let before = live.counters();
        let batch = live.feed_link(&stream[a..b], host_ns);
        let after = live.counters();
        check_counters(&after, "link_stream after a piece");
        assert_eq!(batch, after.since(&before));
        if dec.push(&stream[a..b], &mut cols, &mut frames).is_err() {
            refused += 1;
        }
    }
    // A frame of an unknown record type stops a push; the frames behind it wait.
    while dec.push(&[], &mut cols, &mut frames).is_err() {
        refused += 1;
    }
    whole.feed_link(&stream, host0);
    assert_eq!(
        live.digest(),
        whole.digest(),
        "the same bytes in other pieces built something else"
    );

    let c = live.counters();
    assert_eq!(
        c.link_frames + c.link_frames_rejected,
        frames.headers.len() as u64 + refused,
        "engine and stream decoder found different frames"
    );
    assert_eq!(c.link_frames_corrupt, dec.corrupt);
    assert_eq!(c.link_bytes_skipped, dec.bytes_skipped());
    let mut first = 0u64;
    for (h, &at) in frames.headers.iter().zip(&frames.first_record) {
        assert_eq!(at, first, "frames.first_record");
        first += u64::from(h.n_records);
    }
    assert_eq!(first, cols.map_or(0, |c| c.len() as u64));

    let clock = live.clock();
    for tick in [0, u64::MAX, c.records] {
        let _ = clock.to_host_ns(tick);
    }
    let _ = clock.state();
    finish_and_check(&mut live, "link_stream after finish");
    finish_and_check(&mut whole, "link_stream (whole) after finish");
    assert_eq!(live.digest(), whole.digest());
}

/// Counts what the decoder reports, kind by kind, and the wraps overflows add.
#[derive(Default)]
struct Tally {
    kinds: [u64; 5],
    wraps: u64,
}

impl RecordSink for Tally {
    fn event(&mut self, _tick: u64, _channel: u8, _dtime: u16) {
        self.kinds[RecordKind::Event as usize] += 1;
    }
    fn marker(&mut self, _tick: u64, _mask: u8) {
        self.kinds[RecordKind::Marker as usize] += 1;
    }
    fn sync(&mut self, _tick: u64) {
        self.kinds[RecordKind::Sync as usize] += 1;
    }
    fn overflow(&mut self, count: u64) {
        self.kinds[RecordKind::Overflow as usize] += 1;
        self.wraps += count;
    }
    fn malformed(&mut self, _record: u32) {
        self.kinds[RecordKind::Malformed as usize] += 1;
    }
}

/// Records from ticks the fuzzer chooses, through the encoder; with what the decoder
/// must give back (kind, tick, channel or mask), overflow records left out.
fn encoded_records(inp: &mut Input<'_>, kind: RecordType) -> (Vec<u32>, Vec<(u8, u64, u8)>) {
    let mut enc = Encoder::new(kind);
    let (mut words, mut expected) = (Vec::new(), Vec::new());
    let mut tick = 0u64;
    while !inp.is_empty() && words.len() < 1 << 16 {
        let op = inp.u8();
        tick = tick.saturating_add(u64::from(inp.u16()) << (op % 6));
        if op & 0x40 != 0 {
            let mask = (op >> 2) & 0xF;
            if enc.marker(tick, mask, &mut words).is_ok() {
                let t = if kind == RecordType::PicoHarpT2 {
                    (tick & !0xF) | u64::from(mask)
                } else {
                    tick
                };
                expected.push((RecordKind::Marker as u8, t, mask));
            }
        } else {
            let channel = (op >> 3) & 7;
            if enc.event(tick, channel, u16::from(op), &mut words).is_ok() {
                expected.push((RecordKind::Event as u8, tick, channel));
            }
        }
    }
    (words, expected)
}

/// Arbitrary 32-bit words (or an encoded stream) as records of each known type: the
/// decoder gives one row per record whatever the split, only valid channels and masks,
/// and inverts the encoder; an engine counts every record as the decoder classed it,
/// balances its counters, and builds the same from the words in two calls as in one.
pub fn tttr_records(data: &[u8]) {
    let mut inp = Input::new(data);
    let kind = record_type(&mut inp);
    let cfg = engine_config(&mut inp, kind);
    let encoded = inp.bool();
    let cut = usize::from(inp.u16());
    let (words, expected) = if encoded {
        let (w, e) = encoded_records(&mut inp, kind);
        (w, Some(e))
    } else {
        let words = inp.rest().chunks_exact(4);
        (
            words
                .map(|w| u32::from_le_bytes([w[0], w[1], w[2], w[3]]))
                .collect(),
            None,
        )
    };
    let cut = cut % (words.len() + 1);

    let cols = decode_columns(kind, &words);
    assert_eq!(cols.len(), words.len());
    let mut split = RecordColumns::new(kind, 0);
    let mut decoder = Decoder::new(kind);
    decoder.feed(&words[..cut], &mut split);
    decoder.feed(&words[cut..], &mut split);
    assert!(split == cols, "decoding in two calls differs from one");
    for i in 0..cols.len() {
        let (k, channel, dtime, mask) =
            (cols.kind[i], cols.channel[i], cols.dtime[i], cols.marker[i]);
        match k {
            0 => {
                assert!(channel < kind.channels(), "event on channel {channel}");
                assert!(kind.is_t3() || dtime == 0, "T2 event with a dtime");
            }
            1 => assert!((1..=15).contains(&mask), "marker mask {mask}"),
            2 | 4 => {}
            3 => assert!(!kind.is_t3(), "a sync record in T3"),
            _ => panic!("record kind {k}"),
        }
    }
    if let Some(expected) = expected {
        let got: Vec<(u8, u64, u8)> = (0..cols.len())
            .filter(|&i| cols.kind[i] != RecordKind::Overflow as u8)
            .map(|i| {
                let k = cols.kind[i];
                let tag = if k == RecordKind::Marker as u8 {
                    cols.marker[i]
                } else {
                    cols.channel[i]
                };
                (k, cols.tick[i], tag)
            })
            .collect();
        assert_eq!(got, expected, "the decoder does not invert the encoder");
    }
    let mut tally = Tally::default();
    Decoder::new(kind).feed(&words, &mut tally);

    let Ok(mut one) = Engine::new(cfg.clone()) else {
        return;
    };
    let mut two = Engine::new(cfg).expect("the same configuration is accepted twice");
    one.feed_records(&words);
    two.feed_records(&words[..cut]);
    check_counters(&two.counters(), "tttr_records after the first part");
    two.feed_records(&words[cut..]);
    let c = one.counters();
    check_counters(&c, "tttr_records");
    assert_eq!(c.records, words.len() as u64);
    let kinds = [
        c.events,
        c.markers,
        c.overflow_records,
        c.syncs,
        c.malformed,
    ];
    assert_eq!(
        kinds, tally.kinds,
        "the engine classed records unlike the decoder"
    );
    assert_eq!(c.wraps, tally.wraps);
    assert_eq!(
        one.digest(),
        two.digest(),
        "records in two calls built something else"
    );
    finish_and_check(&mut one, "tttr_records after finish");
    finish_and_check(&mut two, "tttr_records (split) after finish");
    assert_eq!(one.digest(), two.digest());
}
