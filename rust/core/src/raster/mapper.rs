//! The raster state machine: markers open and close lines; events of an open line are
//! classified at once but only reach the cubes when the line closes good.
//!
//! With a fixed dwell, each event is binned into per-line scratch rows as it arrives
//! and a good line's rows are added to the cubes at its close (a bad line's are
//! discarded). With a measured dwell, the pixel is only known at the close, so events are
//! held until then.

use super::{FrameMarkerAt, RasterConfig, Switching};
use crate::counters::{Counters, Reject};
use crate::cube::{CubeSet, SliceAccess};
use crate::error::Result;

mod bulk;
#[cfg(target_arch = "x86_64")]
mod bulk_avx2;
#[cfg(test)]
mod bulk_tests;
use bulk::Bulk;
pub use bulk::Taken;

const NO_POLARITY: u8 = u8::MAX;
const MAX_HELD_DT: u64 = (1 << 56) - 1;

/// How a line ended, which decides whether it was good.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LineEnd {
    Stop,
    NextLine,
    FrameOrEnd,
    Gap,
}

#[derive(Debug, Clone, Copy)]
struct OpenLine {
    start: u64,
    y: u32,
    /// Frame the line belongs to (None: before the first frame marker).
    frame: Option<u64>,
}

/// What one polarity's events of the open line go to, worked out when the line opens.
#[derive(Debug, Clone, Copy, Default)]
struct Target {
    /// First species of the polarity, and (per-frame switching) the species of this frame.
    base: usize,
    row: usize,
    /// Per-frame: events with `dt` below this fall in the frame's mass-settle time.
    settle_until: u64,
    per_pixel: bool,
    n: u64,
    settle: u64,
}

/// Exact `n / d` for `n < 2^63` by a multiply-high with a precomputed reciprocal and one
/// correction step (the estimate is then never more than one too small). A division per
/// event would cost more than the rest of the mapping.
#[derive(Debug, Clone, Copy)]
pub(super) struct FastDiv {
    d: u64,
    magic: u64,
}

impl FastDiv {
    pub(super) fn new(d: u64) -> Self {
        let d = d.max(1);
        FastDiv {
            d,
            magic: (u128::from(u64::MAX) / u128::from(d)) as u64,
        }
    }
    #[inline(always)]
    pub(super) fn div(self, n: u64) -> u64 {
        let q = ((u128::from(n) * u128::from(self.magic)) >> 64) as u64;
        q + u64::from(n - q * self.d >= self.d)
    }
}

#[derive(Debug)]
pub struct Raster {
    cfg: RasterConfig,
    /// Channel → polarity index (NO_POLARITY for unknown channels).
    polarity_of: [u8; 256],
    frames_per_slice: u64,
    last_tick: u64,
    frame: Option<u64>,
    /// The frame that slice 0 begins with: 0 from the start of a stream; after `join`,
    /// the first frame that starts (None until then: the partial frame is not binned).
    origin: Option<u64>,
    frame_start: u64,
    /// End-marked rasters have no marker before frame 0: it starts at its first line.
    frame_start_pending: bool,
    lines_in_frame: u32,
    line: Option<OpenLine>,
    targets: Vec<Target>,
    measured: bool,
    settle: u64,
    span: u64,
    div: FastDiv,
    nx: usize,
    /// Fixed dwell: the open line's counts, `[species][x]` and a dump row for the bulk
    /// path's unknown channels, the species touched (bit mask), and what its events were
    /// counted as so far.
    bins: Vec<u32>,
    touched: u64,
    line_binned: u64,
    line_tally: [u64; Reject::COUNT],
    /// Measured dwell: the open line's events, packed as `dt << 8 | polarity`.
    held: Vec<u64>,
    /// After a link gap, until the next line start: events belong to a line whose start
    /// was lost.
    after_gap: bool,
    bulk: Bulk,
}

impl Raster {
    pub fn new(cfg: RasterConfig) -> Result<Self> {
        cfg.validate()?;
        let mut polarity_of = [NO_POLARITY; 256];
        let mut targets = Vec::new();
        let mut base = 0;
        for (i, p) in cfg.polarities.iter().enumerate() {
            for &c in &p.channels {
                polarity_of[c as usize] = i as u8;
            }
            targets.push(Target {
                base,
                per_pixel: p.switching == Switching::PerPixel,
                n: p.species.len() as u64,
                settle: p.settle_ticks,
                ..Default::default()
            });
            base += p.species.len();
        }
        let nx = cfg.nx as usize;
        Ok(Raster {
            frames_per_slice: cfg.frames_per_slice as u64,
            polarity_of,
            last_tick: 0,
            // With end markers, the first frame is under way before any marker arrives.
            frame: (cfg.frame_marker_at == FrameMarkerAt::End).then_some(0),
            frame_start: 0,
            frame_start_pending: cfg.frame_marker_at == FrameMarkerAt::End,
            origin: Some(0),
            lines_in_frame: 0,
            line: None,
            targets,
            measured: cfg.dwell_ticks == 0,
            settle: cfg.line_settle_ticks,
            span: cfg.nx as u64 * cfg.dwell_ticks,
            div: FastDiv::new(cfg.dwell_ticks),
            nx,
            bins: vec![
                0;
                if cfg.dwell_ticks == 0 {
                    0
                } else {
                    (base + 1) * nx
                }
            ],
            touched: 0,
            line_binned: 0,
            line_tally: [0; Reject::COUNT],
            held: Vec::new(),
            after_gap: false,
            bulk: Bulk::new(&cfg, base),
            cfg,
        })
    }

    pub fn config(&self) -> &RasterConfig {
        &self.cfg
    }
    pub fn n_species(&self) -> usize {
        self.targets.last().map_or(0, |t| t.base + t.n as usize)
    }
    /// Frames per slice now (doubles each time the cubes are rebinned).
    pub fn frames_per_slice(&self) -> u64 {
        self.frames_per_slice
    }
    /// The latest tick of any record accepted in order.
    pub fn last_tick(&self) -> u64 {
        self.last_tick
    }
    /// Events held by the open line, not yet binned or rejected (after [`Raster::flush`]).
    pub fn pending(&self) -> u64 {
        self.held.len() as u64 + self.line_binned + self.line_tally.iter().sum::<u64>()
    }

    #[inline(always)]
    pub fn event(&mut self, tick: u64, channel: u8, c: &mut Counters) {
        c.events += 1;
        let pol = self.polarity_of[channel as usize];
        if pol == NO_POLARITY {
            c.rejected[Reject::UnknownChannel as usize] += 1;
            return;
        }
        if tick < self.last_tick {
            c.rejected[Reject::OutOfOrder as usize] += 1;
            return;
        }
        self.last_tick = tick;
        let Some(line) = self.line else {
            let reason = if self.after_gap {
                Reject::LinkGap
            } else if self.frame.is_none() {
                Reject::BeforeFirstFrame
            } else if self.lines_in_frame == 0 {
                Reject::BeforeFirstLine
            } else {
                Reject::Flyback
            };
            c.rejected[reason as usize] += 1;
            return;
        };
        let dt = tick - line.start;
        if self.measured {
            // A dt beyond 2^56 ticks is far past any line's end: saturate into flyback.
            self.held.push(dt.min(MAX_HELD_DT) << 8 | u64::from(pol));
        } else if let Err(reason) = self.bin(line, dt, pol as usize) {
            self.line_tally[reason as usize] += 1;
        }
    }

    /// The checks of docs/raster.md in their order, then a count in the line's bins.
    #[inline(always)]
    fn bin(&mut self, line: OpenLine, dt: u64, pol: usize) -> std::result::Result<(), Reject> {
        if line.frame.is_none() {
            return Err(Reject::BeforeFirstFrame);
        }
        if dt < self.settle {
            return Err(Reject::LineSettle);
        }
        let off = dt - self.settle;
        if off >= self.span {
            return Err(Reject::Flyback);
        }
        if line.y >= self.cfg.ny {
            return Err(Reject::LineOverrun);
        }
        let x = self.div.div(off);
        let t = &self.targets[pol];
        let species = if t.per_pixel {
            per_pixel_species(t, off - x * self.cfg.dwell_ticks, self.cfg.dwell_ticks)?
        } else if dt < t.settle_until {
            return Err(Reject::MassSettle);
        } else {
            t.row
        };
        let cell = &mut self.bins[species * self.nx + x as usize];
        *cell = cell.wrapping_add(1);
        self.touched |= 1 << species;
        self.line_binned += 1;
        Ok(())
    }

    pub fn marker(&mut self, tick: u64, mask: u8, cubes: &mut CubeSet, c: &mut Counters) {
        c.markers += 1;
        if tick < self.last_tick {
            c.markers_out_of_order += 1;
            return;
        }
        self.last_tick = tick;
        let m = self.cfg.markers;
        if mask & m.mass_switch != 0 {
            c.mass_switches += 1;
        }
        if mask & m.line_stop != 0 {
            c.line_stops += 1;
            self.close_line(tick, LineEnd::Stop, cubes, c);
        }
        if mask & m.frame != 0 {
            c.frame_markers += 1;
            self.close_line(tick, LineEnd::FrameOrEnd, cubes, c);
            if self.frame.is_some() && self.lines_in_frame != self.cfg.ny {
                c.frames_bad_line_count += 1;
            }
            // Saturating: a link header can put the raster at any frame, the last one too.
            self.frame = Some(self.frame.map_or(0, |f| f.saturating_add(1)));
            self.origin = self.origin.or(self.frame);
            self.frame_start = tick;
            self.frame_start_pending = false;
            self.lines_in_frame = 0;
        }
        if mask & m.line_start != 0 {
            c.line_starts += 1;
            self.close_line(tick, LineEnd::NextLine, cubes, c);
            self.open_line(tick);
        }
    }

    fn open_line(&mut self, tick: u64) {
        // The first line start after a gap re-establishes the raster position: events
        // between later lines are ordinary flyback again.
        self.after_gap = false;
        if self.frame_start_pending {
            self.frame_start = tick;
            self.frame_start_pending = false;
        }
        // A frame before the origin (joined mid-frame) is not binned: no frame as yet.
        let frame = self.frame.filter(|&f| self.origin.is_some_and(|o| f >= o));
        let frame_offset = tick - self.frame_start;
        for t in self.targets.iter_mut() {
            let f = frame.unwrap_or(0);
            t.row = t.base + (f % t.n) as usize;
            t.settle_until = t.settle.saturating_sub(frame_offset);
        }
        self.line = Some(OpenLine {
            start: tick,
            y: self.lines_in_frame,
            frame,
        });
        let binnable = frame.is_some() && self.lines_in_frame < self.cfg.ny;
        self.open_bulk(tick, binnable);
        self.lines_in_frame = self.lines_in_frame.saturating_add(1);
    }

    /// The link lost records: the open line cannot be trusted, and markers may have been
    /// lost with them. `position` is the sender's count of frame markers, and of line
    /// starts since the last one, before the first record after the gap.
    pub fn link_gap(&mut self, position: (u64, u32), cubes: &mut CubeSet, c: &mut Counters) {
        let t = self.last_tick;
        self.close_line(t, LineEnd::Gap, cubes, c);
        self.after_gap = true;
        let (frame_markers, line_starts) = position;
        self.frame = match (self.cfg.frame_marker_at, frame_markers) {
            (FrameMarkerAt::Start, 0) => None,
            (FrameMarkerAt::Start, n) => Some(n - 1),
            (FrameMarkerAt::End, n) => Some(n),
        };
        self.lines_in_frame = line_starts;
    }

    /// This pipeline starts on a stream already running (a link frame whose header says
    /// frames were sent before it): the raster position is the sender's, so the mass
    /// schedule stays in step, and binning begins with the next whole frame, which is
    /// slice 0's first. Until then events count as `before_first_frame` or `link_gap`.
    pub fn join(&mut self, position: (u64, u32), cubes: &mut CubeSet, c: &mut Counters) {
        self.link_gap(position, cubes, c);
        self.origin = None;
    }

    /// End of run: close the open line with the last tick seen, and check the last frame
    /// (a run that stops mid-frame leaves a frame short of lines).
    pub fn finish(&mut self, cubes: &mut CubeSet, c: &mut Counters) {
        let t = self.last_tick;
        self.close_line(t, LineEnd::FrameOrEnd, cubes, c);
        if self.lines_in_frame > 0 && self.lines_in_frame != self.cfg.ny {
            c.frames_bad_line_count += 1;
        }
        self.lines_in_frame = 0;
    }

    fn line_is_good(&self, duration: u64, end: LineEnd) -> bool {
        let tol = self.cfg.line_tolerance_ticks;
        let stops = self.cfg.markers.line_stop != 0;
        if self.measured {
            return end == LineEnd::Stop && duration > self.settle;
        }
        let len = self.settle + self.span;
        match end {
            LineEnd::Gap => false,
            LineEnd::Stop => duration.abs_diff(len) <= tol,
            _ if stops => false,
            LineEnd::NextLine => {
                duration + tol >= len && duration <= len + self.cfg.flyback_ticks + tol
            }
            LineEnd::FrameOrEnd => duration + tol >= len,
        }
    }

    fn close_line(&mut self, tick: u64, end: LineEnd, cubes: &mut CubeSet, c: &mut Counters) {
        self.close_bulk(c);
        let Some(line) = self.line.take() else { return };
        let duration = tick - line.start;
        if self.line_is_good(duration, end) {
            c.lines_good += 1;
            if self.measured {
                self.commit_held(line, duration, cubes, c);
            } else {
                self.commit_bins(line, cubes, c);
            }
        } else {
            c.lines_bad += 1;
            let reason = if end == LineEnd::Gap {
                Reject::LinkGap
            } else {
                Reject::BadLine
            };
            c.rejected[reason as usize] += self.pending();
        }
        self.held.clear();
        self.clear_bins();
    }

    fn clear_bins(&mut self) {
        let nx = self.nx;
        for s in set_bits(self.touched) {
            self.bins[s * nx..(s + 1) * nx].fill(0);
        }
        self.touched = 0;
        self.line_binned = 0;
        self.line_tally = [0; Reject::COUNT];
    }

    /// Fixed dwell: add a good line's bins to its slice.
    fn commit_bins(&mut self, line: OpenLine, cubes: &mut CubeSet, c: &mut Counters) {
        for (total, n) in c.rejected.iter_mut().zip(self.line_tally) {
            *total += n;
        }
        if self.line_binned == 0 {
            return;
        }
        let Some(frame) = line.frame else { return };
        let Some(z) = self.slice_for(frame, cubes) else {
            c.rejected[Reject::Budget as usize] += self.line_binned;
            return;
        };
        let nx = self.nx;
        for s in set_bits(self.touched) {
            let add = &self.bins[s * nx..(s + 1) * nx];
            cubes
                .line_row(s, z, line.y as usize)
                .iter_mut()
                .zip(add)
                .for_each(|(r, &a)| *r = r.wrapping_add(a));
            cubes.count_binned(s, add.iter().map(|&a| u64::from(a)).sum());
        }
        c.binned += self.line_binned;
    }

    /// Measured dwell: pixel edges come from this line's own length.
    fn commit_held(
        &mut self,
        line: OpenLine,
        duration: u64,
        cubes: &mut CubeSet,
        c: &mut Counters,
    ) {
        let Some(frame) = line.frame else {
            c.rejected[Reject::BeforeFirstFrame as usize] += self.held.len() as u64;
            return;
        };
        let nx = self.cfg.nx as u64;
        let span = duration - self.settle;
        // Pixel x covers offsets in [ceil(x * span / nx), ceil((x+1) * span / nx)).
        let edge = |x: u64| (u128::from(x) * u128::from(span)).div_ceil(u128::from(nx)) as u64;
        let overrun = line.y >= self.cfg.ny;
        let z = if overrun {
            None
        } else {
            self.slice_for(frame, cubes)
        };
        let mut rows = z.map(|z| cubes.line_rows(z, line.y as usize));
        let mut tally = [0u64; Reject::COUNT];
        let mut binned = 0;
        let mut by_row = vec![0u64; self.n_species()];
        let (mut x, mut next_edge) = (0u64, edge(1));
        for &h in &self.held {
            let (dt, pol) = (h >> 8, (h & 0xFF) as usize);
            let reason = if dt < self.settle {
                Reject::LineSettle
            } else if dt - self.settle >= span {
                Reject::Flyback
            } else if overrun {
                Reject::LineOverrun
            } else {
                // Events are in time order, so x only moves forward.
                while dt - self.settle >= next_edge {
                    x += 1;
                    next_edge = edge(x + 1);
                }
                let t = self.targets[pol];
                if dt < t.settle_until {
                    Reject::MassSettle
                } else if let Some(rows) = rows.as_mut() {
                    let cell = &mut rows[t.row][x as usize];
                    *cell = cell.wrapping_add(1);
                    binned += 1;
                    by_row[t.row] += 1;
                    continue;
                } else {
                    Reject::Budget
                }
            };
            tally[reason as usize] += 1;
        }
        drop(rows);
        for (s, n) in by_row.into_iter().enumerate().filter(|&(_, n)| n > 0) {
            cubes.count_binned(s, n);
        }
        c.binned += binned;
        for (total, n) in c.rejected.iter_mut().zip(tally) {
            *total += n;
        }
    }

    /// The slice of `frame`, growing or rebinning the cubes as the budget allows.
    fn slice_for(&mut self, frame: u64, cubes: &mut CubeSet) -> Option<usize> {
        let frame = frame - self.origin.unwrap_or(0);
        loop {
            let z = (frame / self.frames_per_slice) as usize;
            match cubes.ensure_slice(z) {
                SliceAccess::Ready => return Some(z),
                SliceAccess::Refused => return None,
                SliceAccess::Rebinned => self.frames_per_slice *= 2,
            }
        }
    }
}

/// Per-pixel switching: the dwell is split evenly; step k starts at ceil(k * dwell / n).
#[inline]
fn per_pixel_species(t: &Target, in_pixel: u64, dwell: u64) -> std::result::Result<usize, Reject> {
    let k = in_pixel * t.n / dwell;
    if in_pixel - (k * dwell).div_ceil(t.n) < t.settle {
        Err(Reject::MassSettle)
    } else {
        Ok(t.base + k as usize)
    }
}

fn set_bits(mut mask: u64) -> impl Iterator<Item = usize> {
    std::iter::from_fn(move || {
        (mask != 0).then(|| {
            let s = mask.trailing_zeros() as usize;
            mask &= mask - 1;
            s
        })
    })
}
