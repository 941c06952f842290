//! Device time → host time: one model per source, fitted online from
//! (device tick, host arrival ns) pairs.
//!
//! Arrival = true host time + delay with delay ≥ 0, so the true line lies under every
//! pair. The window's pairs are kept as per-bucket minima and maxima (bounded memory at
//! any update rate); the fit is the line under all of them with the least total height
//! above it. That linear program is solved by the lower convex hull edge over the mean
//! device time, so jitter only ever pushes points up and barely moves the fit. When the
//! delays are bounded too (the pairs fill a band with a sharp top edge), the line is
//! taken from the band instead, which closes the fit's rare large tilts (see `band`).
//!
//! Model: `host_ns = offset_ns + device_ns · (1 + drift_ppm · 1e-6)` with
//! `device_ns = tick · tick_s · 1e9` (nominal). Arithmetic is done relative to a
//! reference pair in the window so 64-bit ticks and ns keep full precision.

use std::collections::VecDeque;

use crate::error::{CoreError, Result};

mod band;
use band::{hull, Band, Side};

/// What the model currently says, for publishing.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ClockState {
    /// Host ns at device tick 0 according to the current fit.
    pub offset_ns: f64,
    /// `(host ns per nominal device ns − 1) · 1e6`: positive when the device counter runs
    /// slow against the host (each device ns lasts longer than a host ns).
    pub drift_ppm: f64,
    /// Typical delay: median over the window's buckets of the mean height of their pairs
    /// above the fitted line, ns.
    pub residual_ns: f64,
    /// Pairs in the current window.
    pub points: usize,
    /// Whether the drift has been fitted (enough spread in time) or only the offset
    /// (drift then is the last fitted value, or 0).
    pub fitted: bool,
}

/// Buckets per window: bounds memory and the O(n) refit.
const BUCKETS: f64 = 512.0;
/// Device-time spread needed before the drift is fitted (or half the window if shorter).
const MIN_FIT_SPAN_NS: f64 = 1e9;
/// A pair this far below the line cannot be delay: the clock jumped (floor; scales with
/// the residual).
const BELOW_TOL_MIN_NS: f64 = 2e6;
/// A pair this far above the line is late or the clock jumped (floor; scales likewise).
const ABOVE_TOL_MIN_NS: f64 = 20e6;
/// Rate error allowed when extrapolating the line or before the drift is fitted.
const MAX_RATE_ERROR: f64 = 1e-3;
/// Pairs a window needs before a pair below its line counts as impossible: until then
/// the lowest pairs seen may simply have been delayed.
const MIN_TRUSTED_PAIRS: u64 = 16;
/// Consecutive impossible pairs that confirm a jump (one alone may be corrupt).
const CONFIRM_PAIRS: usize = 3;
/// How long pairs must stay far above the line before it counts as a jump.
const ABOVE_HOLD_MAX_NS: f64 = 1e9;
/// Suspect pairs kept to seed the window after a jump.
const PENDING_CAP: usize = 256;
/// In `update_many`, refit at least this often so suspects are judged on a fresh line.
const BATCH_REFIT: usize = 64;

/// The lowest pair of one slice of device time, plus sums over all its pairs relative
/// to that lowest one (kept small so f64 stays exact) for the typical delay, and the
/// highest pair (the top edge of the band, see `band`).
#[derive(Debug, Clone)]
struct Bucket {
    idx: i128,
    tick: u64,
    host: i64,
    n: u64,
    sum_dx: f64,
    sum_de: f64,
    top_tick: u64,
    top_host: i64,
}

/// A fitted line in coordinates relative to a reference pair:
/// `x = (tick − ref_tick) · tick_ns`, `e = (host − ref_host) − x`, line `e = c + s·x`.
#[derive(Debug, Clone, Copy)]
struct Fit {
    ref_tick: u64,
    ref_host: i64,
    c: f64,
    s: f64,
    x_min: f64,
    x_max: f64,
    fitted: bool,
    residual: f64,
    pairs: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Suspect {
    /// Below the line, or device time far before the window: impossible without a jump.
    Impossible,
    /// Far above the line: a late pair, or a jump if it lasts.
    Late,
}

#[derive(Debug, Clone)]
pub struct ClockModel {
    tick_s: f64,
    tick_ns: f64,
    window_s: f64,
    window_ns: f64,
    window_ticks: i128,
    bucket_ticks: i128,
    epoch_tick: u64,
    newest_tick: u64,
    buckets: VecDeque<Bucket>,
    pairs: u64,
    prior_s: f64,
    fit: Option<Fit>,
    dirty: bool,
    pending: VecDeque<(u64, i64)>,
    pending_kind: Option<Suspect>,
    pending_since: i64,
    jumps: u64,
    // Reused between refits so steady-state updates do not allocate.
    xs: Vec<f64>,
    es: Vec<f64>,
    hull: Vec<usize>,
    top_xs: Vec<f64>,
    top_es: Vec<f64>,
    top_hull: Vec<usize>,
    counts: Vec<u64>,
    heights: Vec<f64>,
}

/// `(x, e)` of a pair relative to a reference pair (i128 differences: no overflow).
fn rel(tick: u64, host: i64, ref_tick: u64, ref_host: i64, tick_ns: f64) -> (f64, f64) {
    let x = (i128::from(tick) - i128::from(ref_tick)) as f64 * tick_ns;
    let dh = (i128::from(host) - i128::from(ref_host)) as f64;
    (x, dh - x)
}

impl ClockModel {
    /// `tick_s`: nominal device tick in seconds; `window_s`: how much history the fit uses.
    pub fn new(tick_s: f64, window_s: f64) -> Result<Self> {
        if !(tick_s.is_finite() && (1e-15..=1.0).contains(&tick_s)) {
            return Err(CoreError::Config(format!(
                "clock.tick_s must be a finite number of seconds in [1e-15, 1], got {tick_s}"
            )));
        }
        if !(window_s.is_finite() && window_s > 0.0 && window_s <= 1e6) {
            return Err(CoreError::Config(format!(
                "clock.window_s must be a finite number of seconds in (0, 1e6], got {window_s}"
            )));
        }
        let window_ticks = (window_s / tick_s).floor();
        if window_ticks < 2.0 {
            return Err(CoreError::Config(format!(
                "clock.window_s must span at least 2 device ticks, got {window_s} s \
                 with tick_s {tick_s}"
            )));
        }
        // Bounded above by 1e6 / 1e-15 = 1e21, well inside i128.
        let bucket_ticks = (window_ticks / BUCKETS).ceil().max(1.0);
        Ok(ClockModel {
            tick_s,
            tick_ns: tick_s * 1e9,
            window_s,
            window_ns: window_s * 1e9,
            window_ticks: window_ticks as i128,
            bucket_ticks: bucket_ticks as i128,
            epoch_tick: 0,
            newest_tick: 0,
            buckets: VecDeque::new(),
            pairs: 0,
            prior_s: 0.0,
            fit: None,
            dirty: false,
            pending: VecDeque::new(),
            pending_kind: None,
            pending_since: 0,
            jumps: 0,
            xs: Vec::new(),
            es: Vec::new(),
            hull: Vec::new(),
            top_xs: Vec::new(),
            top_es: Vec::new(),
            top_hull: Vec::new(),
            counts: Vec::new(),
            heights: Vec::new(),
        })
    }

    pub fn tick_s(&self) -> f64 {
        self.tick_s
    }
    pub fn window_s(&self) -> f64 {
        self.window_s
    }
    /// Clock jumps detected since creation (each restarted the window).
    pub fn jumps(&self) -> u64 {
        self.jumps
    }
    /// Buckets held: bounded by the window, whatever the update rate.
    pub fn buckets(&self) -> usize {
        self.buckets.len()
    }

    /// Forget all pairs and the fitted drift (the jump counter is kept).
    pub fn reset(&mut self) {
        self.buckets.clear();
        self.pairs = 0;
        self.prior_s = 0.0;
        self.fit = None;
        self.dirty = false;
        self.pending.clear();
        self.pending_kind = None;
    }

    /// Add one (device tick, host arrival ns) pair. Arrival is never earlier than truth.
    pub fn update(&mut self, device_tick: u64, host_ns: i64) {
        self.ingest(device_tick, host_ns);
        if self.dirty {
            self.refit();
        }
    }

    /// Add many pairs; refits once per [`BATCH_REFIT`] pairs and at the end.
    pub fn update_many<I: IntoIterator<Item = (u64, i64)>>(&mut self, pairs: I) {
        for (i, (tick, host)) in pairs.into_iter().enumerate() {
            self.ingest(tick, host);
            if self.dirty && (self.fit.is_none() || i % BATCH_REFIT == BATCH_REFIT - 1) {
                self.refit();
            }
        }
        if self.dirty {
            self.refit();
        }
    }

    /// Host ns of a device tick, once at least one pair has been seen.
    pub fn to_host_ns(&self, device_tick: u64) -> Option<i64> {
        let f = self.fit.as_ref()?;
        let dx = (i128::from(device_tick) - i128::from(f.ref_tick)) as f64 * self.tick_ns;
        // dx + s·dx rather than (1 + s)·dx: keeps the small drift term exact.
        let rel = f.c + dx + f.s * dx;
        // `as` saturates (far-away ticks), and so does the add.
        Some(f.ref_host.saturating_add(rel.round() as i64))
    }

    pub fn state(&self) -> ClockState {
        match &self.fit {
            None => ClockState {
                offset_ns: 0.0,
                drift_ppm: self.prior_s * 1e6,
                residual_ns: 0.0,
                points: 0,
                fitted: false,
            },
            Some(f) => {
                let x0 = -(f.ref_tick as f64) * self.tick_ns;
                ClockState {
                    offset_ns: f.ref_host as f64 + f.c + x0 + f.s * x0,
                    drift_ppm: f.s * 1e6,
                    residual_ns: f.residual,
                    points: usize::try_from(self.pairs).unwrap_or(usize::MAX),
                    fitted: f.fitted,
                }
            }
        }
    }

    fn ingest(&mut self, tick: u64, host: i64) {
        if self.fit.is_none() && self.dirty {
            self.refit();
        }
        if let Some(fit) = self.fit {
            match self.classify(&fit, tick, host) {
                None => {
                    self.pending.clear();
                    self.pending_kind = None;
                }
                Some(kind) => {
                    self.suspect(kind, tick, host);
                    return;
                }
            }
        }
        self.insert(tick, host);
    }

    fn classify(&self, fit: &Fit, tick: u64, host: i64) -> Option<Suspect> {
        let (x, e) = rel(tick, host, fit.ref_tick, fit.ref_host, self.tick_ns);
        let h = e - (fit.c + fit.s * x);
        let outside = if x < fit.x_min {
            fit.x_min - x
        } else {
            (x - fit.x_max).max(0.0)
        };
        // Before the drift is fitted the line may be off by the rate error over the
        // whole span, not just beyond it.
        let reach = if fit.fitted {
            outside
        } else {
            outside + (fit.x_max - fit.x_min)
        };
        let allow = MAX_RATE_ERROR * reach;
        let below = BELOW_TOL_MIN_NS.max(4.0 * fit.residual) + allow;
        let above = ABOVE_TOL_MIN_NS.max(20.0 * fit.residual) + allow;
        // A monotonic counter never goes back further than a window: it was reset.
        let trusted = fit.pairs >= MIN_TRUSTED_PAIRS;
        if (trusted && h < -below) || x < fit.x_min - self.window_ns {
            Some(Suspect::Impossible)
        } else if h > above {
            Some(Suspect::Late)
        } else {
            None
        }
    }

    fn suspect(&mut self, kind: Suspect, tick: u64, host: i64) {
        if self.pending_kind != Some(kind) {
            self.pending.clear();
            self.pending_kind = Some(kind);
            self.pending_since = host;
        }
        if self.pending.len() >= PENDING_CAP {
            self.pending.pop_front();
        }
        self.pending.push_back((tick, host));
        let confirmed = self.pending.len() >= CONFIRM_PAIRS
            && match kind {
                Suspect::Impossible => true,
                Suspect::Late => {
                    let held = (i128::from(host) - i128::from(self.pending_since)) as f64;
                    held >= ABOVE_HOLD_MAX_NS.min(self.window_ns / 2.0)
                }
            };
        if confirmed {
            self.restart_from_pending();
        }
    }

    /// A confirmed jump: the old window describes another timebase, start over from the
    /// suspects. The fitted drift is kept as the prior (same oscillator, usually).
    fn restart_from_pending(&mut self) {
        let pending = std::mem::take(&mut self.pending);
        let prior = self.prior_s;
        self.reset();
        self.prior_s = prior;
        self.jumps += 1;
        for &(tick, host) in &pending {
            self.insert(tick, host);
        }
        self.pending = pending;
        self.pending.clear();
        self.refit();
    }

    fn insert(&mut self, tick: u64, host: i64) {
        if self.buckets.is_empty() {
            self.epoch_tick = tick;
            self.newest_tick = tick;
        }
        if i128::from(self.newest_tick) - i128::from(tick) > self.window_ticks {
            return; // older than the window: a straggler that no longer matters
        }
        let idx = (i128::from(tick) - i128::from(self.epoch_tick)).div_euclid(self.bucket_ticks);
        let pos = match self.buckets.back() {
            Some(b) if b.idx < idx => self.buckets.len(),
            _ => self.buckets.partition_point(|b| b.idx < idx),
        };
        match self.buckets.get_mut(pos) {
            Some(b) if b.idx == idx => {
                if rel(tick, host, b.top_tick, b.top_host, self.tick_ns).1 > 0.0 {
                    b.top_tick = tick;
                    b.top_host = host;
                    self.dirty = true;
                }
                let (dx, de) = rel(tick, host, b.tick, b.host, self.tick_ns);
                if de < 0.0 {
                    // New lowest pair: re-express the sums relative to it.
                    b.sum_dx -= b.n as f64 * dx;
                    b.sum_de -= b.n as f64 * de;
                    b.tick = tick;
                    b.host = host;
                    self.dirty = true;
                } else {
                    b.sum_dx += dx;
                    b.sum_de += de;
                }
                b.n += 1;
            }
            _ => {
                self.buckets.insert(
                    pos,
                    Bucket {
                        idx,
                        tick,
                        host,
                        n: 1,
                        sum_dx: 0.0,
                        sum_de: 0.0,
                        top_tick: tick,
                        top_host: host,
                    },
                );
                self.dirty = true;
            }
        }
        self.pairs += 1;
        if tick > self.newest_tick {
            self.newest_tick = tick;
            while let Some(front) = self.buckets.front() {
                if i128::from(self.newest_tick) - i128::from(front.tick) <= self.window_ticks {
                    break;
                }
                self.pairs = self.pairs.saturating_sub(front.n);
                self.buckets.pop_front();
                self.dirty = true;
            }
        }
    }

    fn refit(&mut self) {
        self.dirty = false;
        let Some(r) = self.buckets.back() else {
            self.fit = None;
            return;
        };
        let (ref_tick, ref_host) = (r.tick, r.host);
        self.xs.clear();
        self.es.clear();
        self.top_xs.clear();
        self.top_es.clear();
        self.counts.clear();
        for b in &self.buckets {
            self.counts.push(b.n);
            let (x, e) = rel(b.tick, b.host, ref_tick, ref_host, self.tick_ns);
            self.xs.push(x);
            self.es.push(e);
            let (x, e) = rel(b.top_tick, b.top_host, ref_tick, ref_host, self.tick_ns);
            self.top_xs.push(x);
            self.top_es.push(e);
        }
        // Buckets are disjoint tick ranges, so both point sets are sorted by x.
        hull(&self.xs, &self.es, false, &mut self.hull);
        hull(&self.top_xs, &self.top_es, true, &mut self.top_hull);
        let (xs, es) = (&self.xs, &self.es);
        let n = xs.len();
        let (x_min, x_max) = (xs[0], xs[n - 1]);

        let min_span = MIN_FIT_SPAN_NS.min(self.window_ns / 2.0);
        let mean_x = xs.iter().sum::<f64>() / n as f64;
        let edge = self
            .hull
            .windows(2)
            .find(|w| xs[w[1]] >= mean_x)
            .map(|w| (w[0], w[1]));
        let (c, s, fitted) = match edge {
            Some((a, b)) if x_max - x_min >= min_span && xs[b] > xs[a] => {
                let band = Band {
                    lo: Side {
                        xs,
                        es,
                        hull: &self.hull,
                    },
                    hi: Side {
                        xs: &self.top_xs,
                        es: &self.top_es,
                        hull: &self.top_hull,
                    },
                    counts: &self.counts,
                };
                let s = (es[b] - es[a]) / (xs[b] - xs[a]);
                match band.fit(self.pairs, s, &mut self.heights) {
                    Some((c, s)) => (c, s, true),
                    None => (es[a] - s * xs[a], s, true),
                }
            }
            _ => {
                // Offset only: the lowest line of the prior slope under every point.
                let s = self.prior_s;
                let c = xs
                    .iter()
                    .zip(es)
                    .map(|(x, e)| e - s * x)
                    .fold(f64::INFINITY, f64::min);
                (c, s, false)
            }
        };
        if fitted {
            self.prior_s = s;
        }

        self.heights.clear();
        for (b, (x, e)) in self.buckets.iter().zip(xs.iter().zip(es)) {
            let k = b.n as f64;
            self.heights
                .push(e - c - s * x + b.sum_de / k - s * (b.sum_dx / k));
        }
        let mid = self.heights.len() / 2;
        let residual = *self.heights.select_nth_unstable_by(mid, f64::total_cmp).1;

        self.fit = Some(Fit {
            ref_tick,
            ref_host,
            c,
            s,
            x_min,
            x_max,
            fitted,
            residual,
            pairs: self.pairs,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// SplitMix64: tiny, deterministic, good enough for jitter.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        }
        fn uniform(&mut self) -> f64 {
            (self.next() >> 11) as f64 / (1u64 << 53) as f64
        }
    }

    #[derive(Clone, Copy)]
    enum Jitter {
        Uniform,
        Exponential,
        Bursty,
    }

    impl Jitter {
        fn delay_ns(self, rng: &mut Rng, t_ns: f64) -> f64 {
            match self {
                Jitter::Uniform => 2e6 * rng.uniform(),
                Jitter::Exponential => -0.5e6 * (1.0 - rng.uniform()).ln(),
                // 0.5 s of congestion every 3 s: every pair 1.5–2 ms late.
                Jitter::Bursty => {
                    if t_ns % 3e9 < 0.5e9 {
                        1.5e6 + 0.5e6 * rng.uniform()
                    } else {
                        2e6 * rng.uniform()
                    }
                }
            }
        }
    }

    /// A device whose tick `start + k` truly happens at host
    /// `host0 + k · tick_ns · (1 + drift)`.
    struct Device {
        tick_ns: f64,
        drift: f64,
        start_tick: u64,
        host0: i64,
    }

    impl Device {
        /// True host ns of a tick, relative to `host0` (f64 cannot hold epoch ns exactly).
        fn true_rel(&self, tick: u64) -> f64 {
            let k = (tick - self.start_tick) as f64;
            k * self.tick_ns * (1.0 + self.drift)
        }
        /// Host arrival ns of a tick sent with `delay_ns`.
        fn arrival(&self, tick: u64, delay_ns: f64) -> i64 {
            self.host0 + (self.true_rel(tick) + delay_ns).round() as i64
        }
        /// Model error at a tick, ns.
        fn error(&self, m: &ClockModel, tick: u64) -> f64 {
            let got = m.to_host_ns(tick).expect("model has points");
            (got - self.host0) as f64 - self.true_rel(tick)
        }
        fn tick_at(&self, t_rel_ns: f64) -> u64 {
            self.start_tick + (t_rel_ns / (self.tick_ns * (1.0 + self.drift))).round() as u64
        }
    }

    /// Feeds `secs` of ~100 Hz pairs; returns the worst |error| in ns over the last 2 s.
    fn run(dev: &Device, jitter: Jitter, seed: u64, secs: f64, m: &mut ClockModel) -> f64 {
        let mut rng = Rng(seed);
        let mut t = 0.0;
        let mut ticks = Vec::new();
        while t < secs * 1e9 {
            let tick = dev.tick_at(t);
            m.update(tick, dev.arrival(tick, jitter.delay_ns(&mut rng, t)));
            ticks.push(tick);
            t += 8e6 + 4e6 * rng.uniform();
        }
        let last = *ticks.last().unwrap_or(&dev.start_tick);
        let from = dev.tick_at(t - 2e9).max(dev.start_tick);
        let mut worst: f64 = 0.0;
        for i in 0..=100u64 {
            let tick = from + (last - from) / 100 * i;
            worst = worst.max(dev.error(m, tick).abs());
        }
        worst
    }

    #[test]
    fn rejects_bad_config() {
        for (tick, win) in [
            (0.0, 30.0),
            (-1e-12, 30.0),
            (f64::NAN, 30.0),
            (f64::INFINITY, 30.0),
            (1e-12, 0.0),
            (1e-12, -1.0),
            (1e-12, f64::NAN),
            (1e-12, f64::INFINITY),
            (1.0, 1.5),
        ] {
            match ClockModel::new(tick, win) {
                Err(CoreError::Config(msg)) => assert!(msg.starts_with("clock."), "{msg}"),
                other => panic!("({tick}, {win}) gave {other:?}"),
            }
        }
    }

    #[test]
    fn empty_model_has_no_mapping() {
        let m = ClockModel::new(80e-9, 30.0).unwrap();
        assert_eq!(m.to_host_ns(123), None);
        let s = m.state();
        assert_eq!((s.points, s.fitted), (0, false));
    }

    #[test]
    fn one_pair_gives_offset_at_nominal_rate() {
        let mut m = ClockModel::new(1e-9, 30.0).unwrap();
        m.update(1_000, 5_000);
        assert_eq!(m.to_host_ns(1_000), Some(5_000));
        assert_eq!(m.to_host_ns(3_000), Some(7_000));
        assert_eq!(m.to_host_ns(0), Some(4_000));
        assert!(!m.state().fitted);
    }

    #[test]
    fn noiseless_line_is_exact() {
        let dev = Device {
            tick_ns: 80.0,
            drift: 37e-6,
            start_tick: 12_345,
            host0: 1_700_000_000_000_000_000,
        };
        let mut m = ClockModel::new(80e-9, 30.0).unwrap();
        let mut k = 0u64;
        while k * 125_000 < 5 * 12_500_000 {
            let tick = dev.start_tick + k * 125_000; // every 10 ms
            m.update(tick, dev.arrival(tick, 0.0));
            k += 1;
        }
        let s = m.state();
        assert!(s.fitted);
        assert!((s.drift_ppm - 37.0).abs() < 0.01, "{s:?}");
        assert!(s.residual_ns.abs() < 1.0, "{s:?}");
        for tick in [
            dev.start_tick,
            dev.start_tick + 31_000_000,
            dev.start_tick + 70_000_000,
        ] {
            let err = dev.error(&m, tick);
            assert!(err.abs() <= 2.0, "err {err} ns at {tick}");
        }
        // offset_ns is host ns at tick 0, extrapolated back along the fitted rate.
        let want = dev.host0 as f64 - dev.start_tick as f64 * 80.0 * (1.0 + 37e-6);
        assert!(
            (s.offset_ns - want).abs() < 1e3,
            "{} vs {want}",
            s.offset_ns
        );
    }

    #[test]
    fn jitter_error_below_50us_after_10s_across_seeds() {
        for (tick_ns, drift) in [(1e-3, 50e-6), (1e-3, -50e-6), (80.0, 50e-6), (80.0, -50e-6)] {
            for jitter in [Jitter::Uniform, Jitter::Exponential, Jitter::Bursty] {
                for seed in 0..12u64 {
                    let dev = Device {
                        tick_ns,
                        drift,
                        start_tick: seed.wrapping_mul(0x1234_5678_9abc),
                        host0: 1_000_000_000 + seed as i64 * 7_777_777,
                    };
                    let mut m = ClockModel::new(tick_ns * 1e-9, 30.0).unwrap();
                    let worst = run(&dev, jitter, seed + 1, 10.0, &mut m);
                    assert!(
                        worst < 50e3,
                        "tick {tick_ns} drift {drift} seed {seed}: {worst} ns"
                    );
                    let s = m.state();
                    assert!(s.fitted);
                    assert!((s.drift_ppm - drift * 1e6).abs() < 10.0, "{s:?}");
                    assert_eq!(m.jumps(), 0);
                }
            }
        }
    }

    #[test]
    fn huge_start_ticks_keep_precision() {
        for start in [1u64 << 62, (1u64 << 63) + 17, u64::MAX - (1u64 << 45)] {
            let dev = Device {
                tick_ns: 1e-3,
                drift: 50e-6,
                start_tick: start,
                host0: i64::MAX / 2,
            };
            let mut m = ClockModel::new(1e-12, 30.0).unwrap();
            let worst = run(&dev, Jitter::Uniform, 7, 10.0, &mut m);
            assert!(worst < 50e3, "start {start}: {worst} ns");
            assert!(m.state().offset_ns.is_finite());
        }
    }

    #[test]
    fn negative_drift_and_large_drift_are_tracked() {
        for drift in [-100e-6, -50e-6, 0.0, 100e-6, 500e-6] {
            let dev = Device {
                tick_ns: 80.0,
                drift,
                start_tick: 99,
                host0: 0,
            };
            let mut m = ClockModel::new(80e-9, 30.0).unwrap();
            let worst = run(&dev, Jitter::Exponential, 3, 12.0, &mut m);
            assert!(worst < 50e3, "drift {drift}: {worst} ns");
            assert!((m.state().drift_ppm - drift * 1e6).abs() < 5.0);
        }
    }

    #[test]
    fn clock_jump_restarts_the_window() {
        let mut rng = Rng(11);
        let mut m = ClockModel::new(80e-9, 30.0).unwrap();
        let dev = Device {
            tick_ns: 80.0,
            drift: 50e-6,
            start_tick: 1 << 40,
            host0: 0,
        };
        // 15 s normal, then the host clock steps back by 1 s (NTP), then 15 s more.
        let mut t = 0.0;
        let mut step = 0.0;
        let mut check = Vec::new();
        while t < 30e9 {
            if t >= 15e9 {
                step = -1e9;
            }
            let tick = dev.tick_at(t);
            m.update(tick, dev.arrival(tick, step + 2e6 * rng.uniform()));
            if t > 27e9 {
                check.push(tick);
            }
            t += 10e6;
        }
        assert_eq!(m.jumps(), 1);
        for tick in check {
            let err = dev.error(&m, tick) - step;
            assert!(err.abs() < 50e3, "{err}");
        }

        // Then the device counter resets to near zero: detected as well.
        let mut t2 = 0.0;
        let reset = Device {
            tick_ns: 80.0,
            drift: 50e-6,
            start_tick: 5,
            host0: 31_000_000_000,
        };
        while t2 < 12e9 {
            let tick = reset.tick_at(t2);
            m.update(tick, reset.arrival(tick, 2e6 * rng.uniform()));
            t2 += 10e6;
        }
        assert_eq!(m.jumps(), 2);
        let tick = reset.tick_at(11e9);
        let err = reset.error(&m, tick);
        assert!(err.abs() < 50e3, "{err}");
    }

    #[test]
    fn forward_host_step_is_a_jump_after_a_while() {
        let mut m = ClockModel::new(1e-9, 30.0).unwrap();
        let mut rng = Rng(5);
        for k in 0..3000u64 {
            let tick = k * 10_000_000; // 10 ms
            let step: i64 = if k >= 1000 { 5_000_000_000 } else { 0 };
            let host = tick as f64 + step as f64 + 2e6 * rng.uniform();
            m.update(tick, host as i64);
        }
        assert_eq!(m.jumps(), 1);
        let tick = 2_999 * 10_000_000u64;
        let err = m.to_host_ns(tick).unwrap() - (tick as i64 + 5_000_000_000);
        assert!(err.abs() < 50_000, "{err}");
    }

    #[test]
    fn lone_outliers_do_not_restart() {
        let mut m = ClockModel::new(1e-9, 30.0).unwrap();
        for k in 0..2000u64 {
            let tick = k * 10_000_000;
            let host = match k % 500 {
                100 => 0,                        // corrupt host time: far below
                200 => tick as i64 + 3e9 as i64, // stalled for 3 s: far above
                _ => tick as i64 + 1000,
            };
            m.update(tick, host);
        }
        assert_eq!(m.jumps(), 0);
        assert_eq!(m.to_host_ns(15_000_000_000), Some(15_000_001_000));
    }

    #[test]
    fn late_first_pairs_are_not_a_jump() {
        let mut m = ClockModel::new(1e-9, 30.0).unwrap();
        // Connection setup: the first pairs arrive 30 ms late, then the link settles.
        for k in 0..500u64 {
            let tick = k * 10_000_000;
            let delay = if k < 5 { 30_000_000 } else { 1_000 };
            m.update(tick, tick as i64 + delay);
        }
        assert_eq!(m.jumps(), 0);
        assert_eq!(m.to_host_ns(4_000_000_000), Some(4_000_001_000));
    }

    #[test]
    fn memory_is_bounded_by_the_window() {
        let mut m = ClockModel::new(1e-9, 30.0).unwrap();
        let mut rng = Rng(1);
        let mut most = 0;
        // 1e6 pairs at 10 kHz: 100 s, more than three windows.
        for k in 0..1_000_000u64 {
            let tick = k * 100_000;
            m.update(tick, tick as i64 + (1e6 * rng.uniform()) as i64);
            most = most.max(m.buckets());
        }
        assert!(most <= BUCKETS as usize + 2, "{most}");
        let s = m.state();
        assert!(s.points <= 300_001, "{s:?}");
        assert!(m.xs.capacity() <= 4 * BUCKETS as usize);
        assert!(m.pending.capacity() <= 4 * PENDING_CAP);
        let err = m.to_host_ns(99_999_900_000).unwrap() - 99_999_900_000;
        assert!(err.abs() < 50_000, "{err}");
    }

    #[test]
    fn update_many_matches_update() {
        let dev = Device {
            tick_ns: 80.0,
            drift: -20e-6,
            start_tick: 1 << 50,
            host0: 42,
        };
        let mut rng = Rng(9);
        let pairs: Vec<(u64, i64)> = (0..2000)
            .map(|k| {
                let tick = dev.tick_at(k as f64 * 10e6);
                (tick, dev.arrival(tick, 2e6 * rng.uniform()))
            })
            .collect();
        let mut a = ClockModel::new(80e-9, 30.0).unwrap();
        let mut b = a.clone();
        for &(t, h) in &pairs {
            a.update(t, h);
        }
        b.update_many(pairs.iter().copied());
        assert_eq!(a.state(), b.state());
        let probe = pairs[1500].0;
        assert_eq!(a.to_host_ns(probe), b.to_host_ns(probe));
    }

    #[test]
    fn gap_longer_than_window_keeps_drift_as_prior() {
        let mut m = ClockModel::new(1e-9, 5.0).unwrap();
        let d = 1.0 + 40e-6;
        for k in 0..1000u64 {
            let tick = k * 10_000_000;
            m.update(tick, (tick as f64 * d) as i64);
        }
        assert!(m.state().fitted);
        let tick = 60_000_000_000u64; // 50 s later
        m.update(tick, (tick as f64 * d) as i64);
        let s = m.state();
        assert!(!s.fitted);
        assert_eq!(m.jumps(), 0);
        assert!((s.drift_ppm - 40.0).abs() < 0.5, "{s:?}");
        let later = tick + 500_000_000;
        let err = m.to_host_ns(later).unwrap() as f64 - later as f64 * d;
        assert!(err.abs() < 1e3, "{err}");
    }

    #[test]
    fn reset_forgets_everything() {
        let mut m = ClockModel::new(1e-9, 30.0).unwrap();
        m.update(10, 20);
        m.reset();
        assert_eq!(m.to_host_ns(10), None);
        assert_eq!(m.state().points, 0);
    }
}
