//! The simulated detector front-end: the other end of the live detector link. Given the
//! raster (the same `RasterConfig` the mapper reads) and a count rate per species and
//! pixel, it writes what a real front-end would send: TTTR records of both polarities
//! with raster and mass-switch markers, in sequence-numbered link frames, and keeps the
//! exact ground truth of where every count landed. The timeline and its rules are in
//! `docs/detector-emitter.md`; they follow `docs/raster.md` so the core maps the stream
//! back to the same voxels.

use crate::error::{CoreError, Result};
use crate::link::frame::MAX_RECORDS;
use crate::link::tttr::RecordType;
use crate::raster::{RasterConfig, Switching};

mod emitter;
mod events;
mod generate;
mod line;
#[cfg(test)]
mod tests;
mod writer;

pub use emitter::Emitter;
pub use events::{fate, EventLog};

/// Everything the emitter needs besides the rates.
#[derive(Debug, Clone, PartialEq)]
pub struct EmitterConfig {
    /// PicoQuant `TTResultFormat_TTTRRecType` code, sent as is in every frame header.
    pub record_type: u32,
    /// Seconds per device tick (T2: time-tag unit; T3: sync period).
    pub tick_s: f64,
    /// Fixed dwell only; `line_tolerance_ticks` is not used here.
    pub raster: RasterConfig,
    /// Time from the end of a frame's last flyback to the next frame marker.
    pub frame_gap_ticks: u64,
    /// Non-paralysable dead time per detector channel.
    pub dead_time_ticks: u64,
    /// Dark counts per second of each polarity's detector, in blanked time.
    pub dark_rate_hz: f64,
    /// Rate while the magnet settles, as a fraction of the next species' rate.
    pub settle_rate_fraction: f64,
    /// Device tick of the first line start. The link's time base starts just below it:
    /// the overflows of the time before are not sent.
    pub start_tick: u64,
    pub seed: u64,
    /// Keep the true counts per voxel (the counters are always kept).
    pub record_truth: bool,
    /// Log every generated count with its fate (`EventLog`), sent or not.
    pub record_events: bool,
    pub max_records_per_frame: u32,
    /// T3 fine-time bin in fs (the header's `fine_fs`); None: one sync period spread over
    /// the whole dtime field. Must be None for T2.
    pub fine_fs: Option<u64>,
}

/// Bound on what one line can allocate (counts expected per species).
pub(crate) const MAX_COUNTS_PER_LINE: f64 = (1u64 << 24) as f64;

/// An error of the emitter: a bad configuration (the core's error), or a bad argument to
/// one call (rates, a tick going backwards, a slice range), which Python sees as ValueError.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error(transparent)]
    Core(#[from] CoreError),
    #[error("{0}")]
    Value(String),
}

impl EmitterConfig {
    /// The record layout, after checking everything the mapper's validation does not.
    pub fn validate(&self) -> Result<RecordType> {
        let err = |m: String| Err(CoreError::Config(m));
        let r = &self.raster;
        r.validate()?;
        let kind = RecordType::from_code(self.record_type)?;
        if kind == RecordType::PicoHarpT2 {
            // Its markers carry the mask in the low time bits, so a marker cannot be put
            // at an exact tick: the raster would jitter by up to 15 ticks.
            return err(
                "sim: PicoHarp T2 cannot stamp markers at exact ticks; use another record type"
                    .into(),
            );
        }
        if !(self.tick_s.is_finite() && self.tick_s > 0.0 && self.tick_s * 1e15 >= 1.0) {
            return err(format!("tick_s must be at least 1 fs, got {}", self.tick_s));
        }
        if r.dwell_ticks == 0 {
            return err("sim: the emitter needs a fixed dwell_ticks > 0".into());
        }
        let m = r.markers;
        for (name, mask) in [
            ("frame", m.frame),
            ("line_start", m.line_start),
            ("line_stop", m.line_stop),
            ("mass_switch", m.mass_switch),
        ] {
            if mask > 15 {
                return err(format!(
                    "raster.markers.{name}: mask 0x{mask:x} has bits beyond the 4 marker inputs"
                ));
            }
        }
        for p in &r.polarities {
            if p.channels[0] >= kind.channels() {
                return err(format!(
                    "raster.polarities.{}: channel {} does not fit {} records",
                    p.name,
                    p.channels[0],
                    kind.name()
                ));
            }
        }
        for (name, v) in [
            ("dark_rate_hz", self.dark_rate_hz),
            ("settle_rate_fraction", self.settle_rate_fraction),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                return err(format!("sim.{name} must be a finite number >= 0, got {v}"));
            }
        }
        if self.max_records_per_frame == 0 || self.max_records_per_frame > MAX_RECORDS {
            return err(format!(
                "sim.max_records_per_frame must be within 1..={MAX_RECORDS}, got {}",
                self.max_records_per_frame
            ));
        }
        match (kind.is_t3(), self.fine_fs) {
            (false, Some(f)) if f != 0 => {
                return err("sim: a fine-time bin (t3_fine_fs) is only for T3 records".into())
            }
            (true, Some(0)) => return err("sim: the T3 fine-time bin must be > 0 fs".into()),
            _ => {}
        }
        let frame_end = self.line_period().map(|lp| {
            lp * u128::from(r.ny) + u128::from(self.frame_gap_ticks) + u128::from(self.start_tick)
        });
        if frame_end.is_none_or(|t| t > u128::from(u64::MAX)) {
            return err("sim: start_tick plus one frame period overflows the tick".into());
        }
        // The event log's pixel columns are u16.
        if self.record_events && r.nx.max(r.ny) > 1 << 16 {
            return err(format!(
                "sim: record_events needs nx and ny <= 65536, got {} x {}",
                r.nx, r.ny
            ));
        }
        let dark = self.dark_rate_hz * self.tick_s;
        let longest = (self.line_period().unwrap_or(0) + u128::from(self.frame_gap_ticks)) as f64;
        if dark * longest > MAX_COUNTS_PER_LINE {
            return err(format!(
                "sim.dark_rate_hz = {} expects more than {MAX_COUNTS_PER_LINE} counts per line",
                self.dark_rate_hz
            ));
        }
        Ok(kind)
    }

    /// Line start to next line start (without the frame gap), or None if it overflows.
    fn line_period(&self) -> Option<u128> {
        let r = &self.raster;
        let lp = u128::from(r.line_settle_ticks)
            + u128::from(r.nx) * u128::from(r.dwell_ticks)
            + u128::from(r.flyback_ticks);
        (lp <= u128::from(u64::MAX)).then_some(lp)
    }

    pub fn n_species(&self) -> usize {
        self.raster.polarities.iter().map(|p| p.species.len()).sum()
    }

    /// Ticks from one line start to the next within a frame.
    pub fn line_period_ticks(&self) -> u64 {
        self.line_period().map_or(u64::MAX, |v| v as u64)
    }

    /// Ticks from one frame's first line start to the next frame's.
    pub fn frame_period_ticks(&self) -> u64 {
        self.line_period_ticks()
            .saturating_mul(u64::from(self.raster.ny))
            .saturating_add(self.frame_gap_ticks)
    }

    /// Whether any polarity switches per frame (its switch comes with the frame start).
    fn any_per_frame(&self) -> bool {
        self.raster
            .polarities
            .iter()
            .any(|p| p.switching == Switching::PerFrame)
    }
}

/// Declares the truth counters once: fields and published names.
macro_rules! truth_counters {
    ($($(#[$doc:meta])* $name:ident,)*) => {
        /// What the emitter sent (or lost to dead time), by the names the core uses for
        /// the same quantities, so the two can be compared key by key.
        #[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
        pub struct TruthCounters {
            $($(#[$doc])* pub $name: u64,)*
        }

        impl TruthCounters {
            pub fn named(&self) -> Vec<(&'static str, u64)> {
                vec![$((stringify!($name), self.$name)),*]
            }
        }
    };
}

truth_counters! {
    /// Records sent, of every kind, and the link frames that carried them.
    records,
    link_frames,
    /// Detector events sent.
    events,
    /// Events in live pixel time: the counts of the truth cubes.
    binned,
    /// Events the core rejects, by its reason names: dark counts in the line settle, in
    /// flyback and frame gap, and counts while the magnet settles.
    line_settle,
    flyback,
    mass_settle,
    /// Counts that arrived within the dead time of their channel and were not recorded.
    dead_time_lost,
    /// Marker records, and those carrying each meaning (one record may carry several).
    markers,
    frame_markers,
    line_starts,
    line_stops,
    mass_switches,
    /// Raster frames and lines begun (their first line start sent).
    frames,
    lines,
    overflow_records,
    wraps,
    /// Jumps of the device counter (`Emitter::jump`).
    clock_jumps,
}
