//! Generating line periods: the raster timeline's markers and each polarity's Poisson
//! counts with dead time, from the current rates and one random stream. Everything that
//! decides what is drawn lives here, apart from what has been written (`emitter.rs`), so
//! a call spanning several lines can generate on one thread while another writes.

use rand::SeedableRng;
use rand_xoshiro::Xoshiro256PlusPlus;

use super::line::{
    push_marker, Counts, Draw, Entry, Line, Pol, END, FLYBACK, LINE_SETTLE, LIVE, MASS_SETTLE,
};
use super::EmitterConfig;
use crate::raster::{FrameMarkerAt, MarkerMasks, Switching};

/// One line period's place in the raster and where its parts begin: line start, first
/// pixel, line stop, next line start.
#[derive(Debug, Clone, Copy)]
struct Period {
    frame: u64,
    y: u32,
    t0: u64,
    pix0: u64,
    stop: u64,
    t_next: u64,
}

#[derive(Debug)]
pub(super) struct Generator {
    masks: MarkerMasks,
    end_markers: bool,
    any_per_frame: bool,
    nx: u64,
    ny: u32,
    dwell: u64,
    line_settle: u64,
    flyback: u64,
    frame_gap: u64,
    frames_per_slice: u64,
    settle_fraction: f64,
    dead_time: u64,
    pols: Vec<Pol>,
    /// Pixel offsets of every per-pixel mass switch, all polarities, sorted and unique.
    switch_offsets: Vec<u64>,
    /// Counts per tick, `[species][y][x]`; a new set waits for the next line start.
    rates: Vec<f64>,
    next_rates: Option<Vec<f64>>,
    dark: f64,
    rng: Xoshiro256PlusPlus,
    dtime_bins: u64,
    /// Lost counts are kept as entries for the event log.
    log_lost: bool,
    /// Start of the next line to generate (None once ticks run out), and its place.
    next_t0: Option<u64>,
    next_at: (u64, u32),
    frame_start: u64,
    /// A line stop on the next line's start tick goes out in that line's first record.
    carry: u8,
    /// A jump waits for the next line start to move the link's time base.
    rebase: bool,
}

impl Generator {
    /// `cfg` is validated; `dtime_bins` is 0 for T2 layouts.
    pub(super) fn new(cfg: &EmitterConfig, dtime_bins: u64) -> Self {
        let r = &cfg.raster;
        let mut pols = Vec::new();
        let mut offsets = Vec::new();
        let mut base = 0;
        for p in &r.polarities {
            let n = p.species.len() as u64;
            let per_pixel = p.switching == Switching::PerPixel;
            let bounds: Vec<u64> = (0..=n).map(|k| (k * r.dwell_ticks).div_ceil(n)).collect();
            if per_pixel {
                offsets.extend_from_slice(&bounds[..n as usize]);
            }
            pols.push(Pol {
                base,
                n,
                per_pixel,
                settle: p.settle_ticks,
                bounds,
                next_free: 0,
            });
            base += p.species.len();
        }
        offsets.sort_unstable();
        offsets.dedup();
        Generator {
            masks: r.markers,
            end_markers: r.frame_marker_at == FrameMarkerAt::End,
            any_per_frame: cfg.any_per_frame(),
            nx: u64::from(r.nx),
            ny: r.ny,
            dwell: r.dwell_ticks,
            line_settle: r.line_settle_ticks,
            flyback: r.flyback_ticks,
            frame_gap: cfg.frame_gap_ticks,
            frames_per_slice: u64::from(r.frames_per_slice),
            settle_fraction: cfg.settle_rate_fraction,
            dead_time: cfg.dead_time_ticks,
            pols,
            switch_offsets: offsets,
            rates: vec![0.0; base * r.ny as usize * r.nx as usize],
            next_rates: None,
            dark: cfg.dark_rate_hz * cfg.tick_s,
            rng: Xoshiro256PlusPlus::seed_from_u64(cfg.seed),
            dtime_bins,
            log_lost: cfg.record_events,
            next_t0: Some(cfg.start_tick),
            next_at: (0, 0),
            frame_start: cfg.start_tick,
            carry: 0,
            rebase: false,
        }
    }

    pub(super) fn n_pols(&self) -> usize {
        self.pols.len()
    }

    /// Where the next line starts; None once the tick has run out.
    pub(super) fn next_start(&self) -> Option<u64> {
        self.next_t0
    }

    /// A line period without the frame gap.
    pub(super) fn line_period(&self) -> u64 {
        self.line_settle + self.nx * self.dwell + self.flyback
    }

    /// Counts per tick, checked by the caller; used from the next line start on.
    pub(super) fn set_rates(&mut self, per_tick: Vec<f64>) {
        self.next_rates = Some(per_tick);
    }

    /// The next line starts `ticks` later, at `to`. Returns the line stop the line before
    /// still owes (written at the old tick by the caller), if any.
    pub(super) fn jump(&mut self, to: u64) -> u8 {
        self.next_t0 = Some(to);
        self.rebase = true;
        std::mem::take(&mut self.carry)
    }

    /// Generate the line period at `next_start()` into `line`; false when the tick runs
    /// out within it (nothing is generated then, and `next_start()` becomes None).
    pub(super) fn generate(&mut self, line: &mut Line) -> bool {
        let Some(t0) = self.next_t0 else {
            return false;
        };
        let (frame, y) = self.next_at;
        let last_line = y + 1 == self.ny;
        let span = self.nx * self.dwell;
        let tail = self.flyback + if last_line { self.frame_gap } else { 0 };
        // The validation bounds one frame period, so only the tick itself can run out.
        let Some(t_next) = t0.checked_add(self.line_settle + span + tail) else {
            self.next_t0 = None;
            return false;
        };
        if let Some(r) = self.next_rates.take() {
            self.rates = r;
        }
        line.rebase_to = std::mem::take(&mut self.rebase).then_some(t0);
        if y == 0 {
            self.frame_start = t0;
        }
        let period = Period {
            frame,
            y,
            t0,
            pix0: t0 + self.line_settle,
            stop: t0 + self.line_settle + span,
            t_next,
        };
        self.line_markers(&mut line.markers, period);
        line.markers.push(END);
        line.mpos = 0;
        self.line_events(line, period);
        (line.frame, line.y) = (frame, y);
        line.z = (frame / self.frames_per_slice) as usize;
        self.next_at = if last_line {
            (frame + 1, 0)
        } else {
            (frame, y + 1)
        };
        self.next_t0 = Some(t_next);
        true
    }

    fn line_markers(&mut self, mk: &mut Vec<Entry>, p: Period) {
        let Period {
            frame,
            y,
            t0,
            pix0,
            stop,
            t_next,
        } = p;
        let m = self.masks;
        mk.clear();
        let mut first = std::mem::take(&mut self.carry) | m.line_start;
        if y == 0 {
            // End markers: frame f's marker is frame f+1's first record; frame 0 has none before it.
            if !self.end_markers || frame > 0 {
                first |= m.frame;
            }
            if self.any_per_frame {
                first |= m.mass_switch;
            }
        }
        push_marker(mk, t0, first);
        if m.mass_switch != 0 && !self.switch_offsets.is_empty() {
            for x in 0..self.nx {
                let px = pix0 + x * self.dwell;
                for &o in &self.switch_offsets {
                    push_marker(mk, px + o, m.mass_switch);
                }
            }
        }
        if m.line_stop != 0 {
            if stop < t_next {
                push_marker(mk, stop, m.line_stop);
            } else {
                self.carry = m.line_stop;
            }
        }
    }

    fn line_events(&mut self, line: &mut Line, period: Period) {
        let Period {
            frame,
            y,
            t0,
            pix0,
            stop,
            t_next,
        } = period;
        let (nx, dwell) = (self.nx, self.dwell);
        let plane = self.ny as usize * nx as usize;
        let row = y as usize * nx as usize;
        let fraction = self.settle_fraction;
        let mut d = Draw {
            rng: &mut self.rng,
            dtime_bins: self.dtime_bins,
            dead_time: self.dead_time,
            log_lost: self.log_lost,
        };
        for (p, run) in self.pols.iter_mut().zip(&mut line.runs) {
            run.events.clear();
            run.lost.clear();
            let c = &mut Counts {
                next_free: &mut p.next_free,
                events: &mut run.events,
                lost: &mut run.lost,
            };
            let tag = |kind: u8, species: usize, x: u64| Entry {
                tick: 0,
                x: x as u32,
                dtime: 0,
                species: species as u8,
                kind,
            };
            d.run(t0, pix0 - t0, self.dark, tag(LINE_SETTLE, p.base, 0), c);
            if p.per_pixel {
                for x in 0..nx {
                    let px = pix0 + x * dwell;
                    for k in 0..p.n as usize {
                        let s = p.base + k;
                        let rate = self.rates[s * plane + row + x as usize];
                        let (a, b) = (px + p.bounds[k], px + p.bounds[k + 1]);
                        let live = b.min(a + p.settle);
                        d.run(a, live - a, fraction * rate, tag(MASS_SETTLE, s, x), c);
                        d.run(live, b - live, rate, tag(LIVE, s, x), c);
                    }
                }
            } else {
                let s = p.base + (frame % p.n) as usize;
                let rates = &self.rates[s * plane + row..][..nx as usize];
                let settled = self.frame_start.saturating_add(p.settle);
                for (x, &rate) in (0..nx).zip(rates) {
                    let a = pix0 + x * dwell;
                    if settled > a {
                        let live = settled.min(a + dwell);
                        d.run(a, live - a, fraction * rate, tag(MASS_SETTLE, s, x), c);
                        d.run(live, a + dwell - live, rate, tag(LIVE, s, x), c);
                    } else {
                        d.run(a, dwell, rate, tag(LIVE, s, x), c);
                    }
                }
            }
            d.run(stop, t_next - stop, self.dark, tag(FLYBACK, p.base, 0), c);
            run.events.push(END);
            run.lost.push(END.tick);
            run.pos = 0;
            run.lost_pos = 0;
        }
    }
}
