//! Device time → host time. INTERFACE STUB — bodies to be written.

use crate::error::Result;

/// What the model currently says, for publishing.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ClockState {
    /// Host ns at device tick 0 according to the current fit.
    pub offset_ns: f64,
    /// Device clock rate error relative to host, in ppm (positive: device runs fast).
    pub drift_ppm: f64,
    /// Median height of the window's points above the fitted line, ns (the typical delay).
    pub residual_ns: f64,
    /// Pairs in the current window.
    pub points: usize,
    /// Whether the drift has been fitted (enough spread in time) or only the offset.
    pub fitted: bool,
}

#[derive(Debug, Clone)]
pub struct ClockModel {
    tick_s: f64,
}

impl ClockModel {
    /// `tick_s`: nominal device tick in seconds; `window_s`: how much history the fit uses.
    pub fn new(tick_s: f64, _window_s: f64) -> Result<Self> {
        Ok(ClockModel { tick_s })
    }
    /// Add one (device tick, host arrival ns) pair. Arrival is never earlier than truth.
    pub fn update(&mut self, _device_tick: u64, _host_ns: i64) {}
    /// Host ns of a device tick, once at least one pair has been seen.
    pub fn to_host_ns(&self, _device_tick: u64) -> Option<i64> {
        None
    }
    pub fn state(&self) -> ClockState {
        let _ = self.tick_s;
        ClockState {
            offset_ns: 0.0,
            drift_ppm: 0.0,
            residual_ns: 0.0,
            points: 0,
            fitted: false,
        }
    }
}
