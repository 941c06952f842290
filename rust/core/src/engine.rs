//! The detector pipeline of one source: link frames → records → ticks → voxels, with
//! the counters that account for every record and the clock model of the source.

use std::collections::VecDeque;

use crate::clock::{ClockModel, ClockState};
use crate::counters::Counters;
use crate::cube::{BudgetPolicy, CubeSet};
use crate::error::{CoreError, Result};
use crate::link::frame::{Assembler, FrameHeader, Item};
use crate::link::tttr::{Decoder, EventLayout, RecordSink, RecordType};
use crate::raster::{Raster, RasterConfig};

/// See [`Engine::digest`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineDigest {
    pub counters: Counters,
    pub n_slices: usize,
    pub frames_per_slice: u64,
    /// Per species: name, CRC-32 of its cube, counts binned.
    pub species: Vec<(String, u32, u64)>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct EngineConfig {
    pub record_type: RecordType,
    /// Seconds per device tick (T2: time tag unit; T3: sync period).
    pub tick_s: f64,
    pub raster: RasterConfig,
    pub memory_budget_bytes: u64,
    pub budget_policy: BudgetPolicy,
    pub clock_window_s: f64,
    /// Simulated seconds per host second (1.0 for hardware): an accelerated simulator's
    /// ticks pass `clock_time_scale` times faster against the host clock.
    pub clock_time_scale: f64,
}

/// A stretch of the live link whose records never arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LossInterval {
    /// Sequence numbers `first_lost .. resumed_at` are missing (empty when the sender
    /// restarted its numbering).
    pub first_lost: u64,
    pub resumed_at: u64,
    /// Last tick seen before the loss and the overflow base the link resumed with.
    pub last_tick_before: u64,
    pub resume_base: u64,
}

const LOSS_HISTORY: usize = 1024;

struct Sink<'a> {
    raster: &'a mut Raster,
    cubes: &'a mut CubeSet,
    counters: &'a mut Counters,
}

impl Sink<'_> {
    fn feed(&mut self, decoder: &mut Decoder, records: &[u32]) {
        self.counters.records += records.len() as u64;
        decoder.feed(records, self);
    }
}

impl RecordSink for Sink<'_> {
    #[inline(always)]
    fn event(&mut self, tick: u64, channel: u8, _dtime: u16) {
        self.raster.event(tick, channel, self.counters);
    }
    #[inline(always)]
    fn events(&mut self, records: &[u32], base: &mut u64, layout: &EventLayout) -> usize {
        let taken = self.raster.events(records, base, layout, self.counters);
        self.counters.overflow_records += taken.overflows;
        self.counters.wraps += taken.wraps;
        taken.records
    }
    fn marker(&mut self, tick: u64, mask: u8) {
        self.raster.marker(tick, mask, self.cubes, self.counters);
    }
    fn sync(&mut self, _tick: u64) {
        self.counters.syncs += 1;
    }
    fn overflow(&mut self, count: u64) {
        self.counters.overflow_records += 1;
        self.counters.wraps += count;
    }
    fn malformed(&mut self, _record: u32) {
        self.counters.malformed += 1;
    }
}

pub struct Engine {
    cfg: EngineConfig,
    decoder: Decoder,
    raster: Raster,
    cubes: CubeSet,
    counters: Counters,
    clock: ClockModel,
    assembler: Assembler,
    next_sequence: Option<u64>,
    /// Records were lost (a gap, a rejected frame): the next accepted frame's header gives
    /// the raster position to resume from.
    resync: bool,
    losses: VecDeque<LossInterval>,
    last_link_error: Option<String>,
}

impl Engine {
    pub fn new(cfg: EngineConfig) -> Result<Self> {
        if !(cfg.tick_s.is_finite() && cfg.tick_s > 0.0) {
            return Err(CoreError::Config(format!(
                "tick_s must be a positive number, got {}",
                cfg.tick_s
            )));
        }
        if !(cfg.clock_time_scale.is_finite() && cfg.clock_time_scale > 0.0) {
            return Err(CoreError::Config(format!(
                "clock_time_scale must be a positive number, got {}",
                cfg.clock_time_scale
            )));
        }
        let raster = Raster::new(cfg.raster.clone())?;
        let cubes = CubeSet::new(
            raster.n_species(),
            cfg.raster.ny as usize,
            cfg.raster.nx as usize,
            cfg.memory_budget_bytes,
            cfg.budget_policy,
        )?;
        Ok(Engine {
            decoder: Decoder::new(cfg.record_type),
            clock: ClockModel::new(cfg.tick_s / cfg.clock_time_scale, cfg.clock_window_s)?,
            raster,
            cubes,
            counters: Counters::default(),
            assembler: Assembler::new(),
            next_sequence: None,
            resync: false,
            losses: VecDeque::new(),
            last_link_error: None,
            cfg,
        })
    }

    pub fn config(&self) -> &EngineConfig {
        &self.cfg
    }
    pub fn counters(&self) -> Counters {
        self.counters
    }
    pub fn cubes(&self) -> &CubeSet {
        &self.cubes
    }
    pub fn cubes_mut(&mut self) -> &mut CubeSet {
        &mut self.cubes
    }
    pub fn frames_per_slice(&self) -> u64 {
        self.raster.frames_per_slice()
    }
    pub fn species(&self) -> Vec<String> {
        self.cfg.raster.species_names()
    }
    pub fn clock(&self) -> &ClockModel {
        &self.clock
    }
    pub fn clock_state(&self) -> ClockState {
        self.clock.state()
    }

    /// What this engine built, in a few numbers: two engines fed the same bytes with the
    /// same arrival times have equal digests (a replay checks itself against the live one).
    pub fn digest(&self) -> EngineDigest {
        let binned = self.cubes.binned_by_species();
        EngineDigest {
            counters: self.counters,
            n_slices: self.cubes.n_slices(),
            frames_per_slice: self.frames_per_slice(),
            species: (self.species().into_iter().enumerate())
                .map(|(s, name)| (name, self.cubes.crc32(s), binned[s]))
                .collect(),
        }
    }
    pub fn loss_intervals(&self) -> impl Iterator<Item = &LossInterval> {
        self.losses.iter()
    }
    pub fn last_link_error(&self) -> Option<&str> {
        self.last_link_error.as_deref()
    }

    /// Decode, map and bin a batch of raw records; returns the batch's statistics.
    pub fn feed_records(&mut self, records: &[u32]) -> Counters {
        let before = self.counters;
        self.decode(records);
        self.counters.since(&before)
    }

    fn decode(&mut self, records: &[u32]) {
        let mut sink = Sink {
            raster: &mut self.raster,
            cubes: &mut self.cubes,
            counters: &mut self.counters,
        };
        sink.feed(&mut self.decoder, records);
        self.sync_levels();
    }

    /// Counters that are levels of the raster's state rather than running totals.
    fn sync_levels(&mut self) {
        self.raster.flush(&mut self.counters);
        self.counters.pending = self.raster.pending();
        let growth = self.raster.frames_per_slice() / self.cfg.raster.frames_per_slice as u64;
        self.counters.rebins = u64::from(growth.trailing_zeros());
    }

    /// Bytes from the live link (any chunking), received at `host_ns`.
    pub fn feed_link(&mut self, bytes: &[u8], host_ns: i64) -> Counters {
        let before = self.counters;
        self.assembler.push(bytes);
        while let Some(item) = self.assembler.next_item() {
            match item {
                Item::Corrupt(_) => {
                    // Its sequence number cannot be trusted: the next good frame shows the gap.
                    self.counters.link_frames_corrupt += 1;
                }
                Item::Frame(h) => self.accept_frame(h, host_ns),
            }
        }
        self.counters.link_bytes_skipped = self.assembler.bytes_skipped;
        self.sync_levels();
        self.counters.since(&before)
    }

    fn accept_frame(&mut self, h: FrameHeader, host_ns: i64) {
        if let Some(expected) = self.next_sequence.filter(|&e| e != h.sequence) {
            self.counters.link_loss_intervals += 1;
            // A sequence number far ahead (a garbled sender) must not wrap the total.
            let lost = h.sequence.saturating_sub(expected);
            self.counters.link_frames_lost = self.counters.link_frames_lost.saturating_add(lost);
            if self.losses.len() == LOSS_HISTORY {
                self.losses.pop_front();
            }
            self.losses.push_back(LossInterval {
                first_lost: expected,
                resumed_at: h.sequence,
                last_tick_before: self.raster.last_tick(),
                resume_base: h.overflow_base,
            });
            self.resync = true;
        }
        self.next_sequence = Some(h.sequence.wrapping_add(1));
        if let Err(why) = self.check_header(&h) {
            self.counters.link_frames_rejected += 1;
            self.last_link_error = Some(why);
            // Its records are lost to us, as if the frame had never arrived.
            self.resync = true;
            return;
        }
        let position = (h.frame_markers, h.line_starts);
        let resync = std::mem::take(&mut self.resync);
        if self.counters.link_frames == 0 && position != (0, 0) {
            // The first frame of a stream already running (a restart, or a run's fresh
            // pipeline): start in step with it.
            self.raster
                .join(position, &mut self.cubes, &mut self.counters);
        } else if resync {
            self.raster
                .link_gap(position, &mut self.cubes, &mut self.counters);
        }
        self.counters.link_frames += 1;
        self.decoder.set_overflow_base(h.overflow_base);
        self.clock.update(h.sent_tick, host_ns);
        let mut sink = Sink {
            raster: &mut self.raster,
            cubes: &mut self.cubes,
            counters: &mut self.counters,
        };
        sink.feed(&mut self.decoder, self.assembler.records());
    }

    /// A frame whose header disagrees with the configuration would be mis-binned.
    fn check_header(&self, h: &FrameHeader) -> std::result::Result<(), String> {
        let rt = RecordType::from_code(h.record_type).map_err(|e| e.to_string())?;
        if rt != self.cfg.record_type {
            return Err(format!(
                "frame {}: record type {rt:?}, configured {:?}",
                h.sequence, self.cfg.record_type
            ));
        }
        let tick_fs = self.cfg.tick_s * 1e15;
        if (h.tick_fs as f64 - tick_fs).abs() > 0.5_f64.max(tick_fs * 1e-9) {
            return Err(format!(
                "frame {}: tick {} fs, configured {tick_fs:.0} fs",
                h.sequence, h.tick_fs
            ));
        }
        let m = self.cfg.raster.markers;
        let got = [
            h.frame_mask,
            h.line_start_mask,
            h.line_stop_mask,
            h.mass_switch_mask,
        ];
        if got != [m.frame, m.line_start, m.line_stop, m.mass_switch] {
            return Err(format!(
                "frame {}: marker masks {got:?} differ from the configuration",
                h.sequence
            ));
        }
        Ok(())
    }

    /// End of run: close the open line so every event is binned or rejected.
    pub fn finish(&mut self) -> Counters {
        let before = self.counters;
        self.raster.finish(&mut self.cubes, &mut self.counters);
        self.sync_levels();
        self.counters.since(&before)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::link::frame::encode;
    use crate::raster::{FrameMarkerAt, MarkerMasks, Polarity, Switching};

    fn engine() -> Engine {
        Engine::new(EngineConfig {
            record_type: RecordType::GenericT3,
            tick_s: 25e-12,
            raster: RasterConfig {
                nx: 4,
                ny: 4,
                dwell_ticks: 100,
                line_settle_ticks: 0,
                flyback_ticks: 100,
                line_tolerance_ticks: 4,
                frames_per_slice: 1,
                markers: MarkerMasks {
                    frame: 4,
                    line_start: 1,
                    line_stop: 2,
                    mass_switch: 0,
                },
                frame_marker_at: FrameMarkerAt::Start,
                polarities: vec![Polarity {
                    name: "p".into(),
                    channels: vec![0],
                    species: vec!["a".into()],
                    switching: Switching::PerFrame,
                    settle_ticks: 0,
                }],
            },
            memory_budget_bytes: 1 << 24,
            budget_policy: BudgetPolicy::Rebin,
            clock_window_s: 30.0,
            clock_time_scale: 1.0,
        })
        .unwrap()
    }

    /// An empty frame that agrees with `engine()`'s configuration.
    fn frame(sequence: u64) -> Vec<u8> {
        let h = FrameHeader {
            sequence,
            record_type: RecordType::GenericT3.code(),
            tick_fs: 25_000,
            frame_mask: 4,
            line_start_mask: 1,
            line_stop_mask: 2,
            ..FrameHeader::default()
        };
        encode(&h, &[])
    }

    /// Found by fuzzing (link_stream): two huge forward jumps of the sequence number
    /// overflowed `link_frames_lost` (a panic in debug builds, a wrapped count in release).
    #[test]
    fn sequence_jumps_saturate_the_lost_frame_count() {
        let mut e = engine();
        for seq in [0, u64::MAX - 1, 0, u64::MAX - 1] {
            e.feed_link(&frame(seq), 0);
        }
        let c = e.counters();
        assert_eq!((c.link_frames, c.link_loss_intervals), (4, 3));
        assert_eq!(c.link_frames_lost, u64::MAX);
    }
}
