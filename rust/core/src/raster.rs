//! Raster mapping: detector events + sync markers → (species, z, y, x) or a counted
//! rejection. The rules are written down in `docs/raster.md`; this file follows them
//! check by check.
//!
//! Events of a line are held until the line closes, because only its closing marker
//! tells whether the line was good: a lost overflow or a missed marker must not put
//! counts into the wrong pixels.

use crate::counters::{Counters, Reject};
use crate::cube::{CubeSet, SliceAccess};
use crate::error::{CoreError, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Switching {
    /// The magnet steps once per frame through the polarity's species.
    PerFrame,
    /// Every pixel's dwell is split evenly among the polarity's species.
    PerPixel,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Polarity {
    pub name: String,
    pub channels: Vec<u8>,
    pub species: Vec<String>,
    pub switching: Switching,
    pub settle_ticks: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MarkerMasks {
    pub frame: u8,
    pub line_start: u8,
    pub line_stop: u8,
    pub mass_switch: u8,
}

/// Where the frame marker stands in the raster. Instruments differ: some mark the start
/// of each frame, others (PicoQuant image files among them) the end.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FrameMarkerAt {
    #[default]
    Start,
    End,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RasterConfig {
    pub nx: u32,
    pub ny: u32,
    /// Pixel dwell in ticks; 0 = measured per line from its start and stop markers.
    pub dwell_ticks: u64,
    pub line_settle_ticks: u64,
    pub flyback_ticks: u64,
    pub line_tolerance_ticks: u64,
    pub frames_per_slice: u32,
    pub markers: MarkerMasks,
    pub frame_marker_at: FrameMarkerAt,
    pub polarities: Vec<Polarity>,
}

const NO_POLARITY: u8 = u8::MAX;

impl RasterConfig {
    pub fn validate(&self) -> Result<()> {
        let err = |m: String| Err(CoreError::Config(m));
        if self.nx == 0 || self.ny == 0 {
            return err(format!(
                "raster.nx and raster.ny must be > 0 (got {} x {})",
                self.nx, self.ny
            ));
        }
        if self.frames_per_slice == 0 {
            return err("raster.frames_per_slice must be > 0".into());
        }
        let m = self.markers;
        if m.frame == 0 || m.line_start == 0 {
            return err("raster.markers: frame and line_start bits are required".into());
        }
        let masks = [m.frame, m.line_start, m.line_stop, m.mass_switch];
        for (i, a) in masks.iter().enumerate() {
            for b in &masks[i + 1..] {
                if a & b != 0 {
                    return err(format!(
                        "raster.markers: masks 0x{a:x} and 0x{b:x} share a bit"
                    ));
                }
            }
        }
        if self.dwell_ticks == 0 && m.line_stop == 0 {
            return err("raster.dwell_ticks = 0 (measured dwell) needs line_stop markers".into());
        }
        if self
            .dwell_ticks
            .checked_mul(self.nx as u64)
            .and_then(|v| v.checked_add(self.line_settle_ticks))
            .is_none()
        {
            return err("raster: line_settle_ticks + nx * dwell_ticks overflows".into());
        }
        if self.polarities.is_empty() {
            return err("raster.polarities: at least one polarity is required".into());
        }
        let mut seen = [false; 256];
        let mut n_species = 0usize;
        for p in &self.polarities {
            if p.species.is_empty() {
                return err(format!("raster.polarities.{}: no species", p.name));
            }
            if p.channels.is_empty() {
                return err(format!("raster.polarities.{}: no channels", p.name));
            }
            for &c in &p.channels {
                if seen[c as usize] {
                    return err(format!(
                        "raster.polarities.{}: channel {c} belongs to two polarities",
                        p.name
                    ));
                }
                seen[c as usize] = true;
            }
            n_species += p.species.len();
            if p.switching == Switching::PerPixel {
                if self.dwell_ticks == 0 {
                    return err(format!(
                        "raster.polarities.{}: per_pixel switching needs a fixed dwell_ticks",
                        p.name
                    ));
                }
                if p.settle_ticks * p.species.len() as u64 >= self.dwell_ticks {
                    return err(format!(
                        "raster.polarities.{}: settle_ticks leaves no time in a {}-way split pixel",
                        p.name,
                        p.species.len()
                    ));
                }
            }
        }
        if n_species > u16::MAX as usize {
            return err("raster: too many species".into());
        }
        Ok(())
    }

    pub fn species_names(&self) -> Vec<String> {
        self.polarities
            .iter()
            .flat_map(|p| p.species.iter().cloned())
            .collect()
    }

    fn line_length(&self) -> u64 {
        self.line_settle_ticks + self.nx as u64 * self.dwell_ticks
    }
}

/// How a line ended, which decides whether it was good.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LineEnd {
    Stop,
    NextLine,
    FrameOrEnd,
    Gap,
}

#[derive(Debug)]
struct OpenLine {
    start: u64,
    y: u32,
    /// Frame the line belongs to (None: before the first frame marker).
    frame: Option<u64>,
    frame_start: u64,
}

#[derive(Debug)]
pub struct Raster {
    cfg: RasterConfig,
    /// Channel → polarity index (NO_POLARITY for unknown channels).
    polarity_of: [u8; 256],
    /// First global species index of each polarity.
    species_base: Vec<usize>,
    frames_per_slice: u64,
    last_tick: u64,
    frame: Option<u64>,
    frame_start: u64,
    lines_in_frame: u32,
    line: Option<OpenLine>,
    /// Events of the open line: tick offset from line start, and polarity.
    held_dt: Vec<u64>,
    held_pol: Vec<u8>,
}

impl Raster {
    pub fn new(cfg: RasterConfig) -> Result<Self> {
        cfg.validate()?;
        let mut polarity_of = [NO_POLARITY; 256];
        let mut species_base = Vec::new();
        let mut base = 0;
        for (i, p) in cfg.polarities.iter().enumerate() {
            for &c in &p.channels {
                polarity_of[c as usize] = i as u8;
            }
            species_base.push(base);
            base += p.species.len();
        }
        let first_frame = (cfg.frame_marker_at == FrameMarkerAt::End).then_some(0);
        Ok(Raster {
            frames_per_slice: cfg.frames_per_slice as u64,
            cfg,
            polarity_of,
            species_base,
            last_tick: 0,
            // With end markers, the first frame is under way before any marker arrives.
            frame: first_frame,
            frame_start: 0,
            lines_in_frame: 0,
            line: None,
            held_dt: Vec::new(),
            held_pol: Vec::new(),
        })
    }

    pub fn config(&self) -> &RasterConfig {
        &self.cfg
    }
    pub fn n_species(&self) -> usize {
        self.species_base.last().copied().unwrap_or(0)
            + self.cfg.polarities.last().map_or(0, |p| p.species.len())
    }
    /// The latest tick of any record accepted in order.
    pub fn last_tick(&self) -> u64 {
        self.last_tick
    }
    /// Frames per slice now (doubles each time the cubes are rebinned).
    pub fn frames_per_slice(&self) -> u64 {
        self.frames_per_slice
    }

    #[inline]
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
        match &self.line {
            Some(line) => {
                self.held_dt.push(tick - line.start);
                self.held_pol.push(pol);
                c.pending += 1;
            }
            None => {
                let reason = if self.frame.is_none() {
                    Reject::BeforeFirstFrame
                } else if self.lines_in_frame == 0 {
                    Reject::BeforeFirstLine
                } else {
                    Reject::Flyback
                };
                c.rejected[reason as usize] += 1;
            }
        }
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
            self.frame = Some(self.frame.map_or(0, |f| f + 1));
            self.frame_start = tick;
            self.lines_in_frame = 0;
        }
        if mask & m.line_start != 0 {
            c.line_starts += 1;
            self.close_line(tick, LineEnd::NextLine, cubes, c);
            self.line = Some(OpenLine {
                start: tick,
                y: self.lines_in_frame,
                frame: self.frame,
                frame_start: self.frame_start,
            });
            self.lines_in_frame = self.lines_in_frame.saturating_add(1);
        }
    }

    /// The link lost records: the open line cannot be trusted.
    pub fn link_gap(&mut self, cubes: &mut CubeSet, c: &mut Counters) {
        let t = self.last_tick;
        self.close_line(t, LineEnd::Gap, cubes, c);
    }

    /// End of run: close the open line with the last tick seen.
    pub fn finish(&mut self, cubes: &mut CubeSet, c: &mut Counters) {
        let t = self.last_tick;
        self.close_line(t, LineEnd::FrameOrEnd, cubes, c);
    }

    fn line_is_good(&self, duration: u64, end: LineEnd) -> bool {
        let tol = self.cfg.line_tolerance_ticks;
        let stops = self.cfg.markers.line_stop != 0;
        if self.cfg.dwell_ticks == 0 {
            return end == LineEnd::Stop && duration > self.cfg.line_settle_ticks;
        }
        let len = self.cfg.line_length();
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
        let Some(line) = self.line.take() else { return };
        let duration = tick - line.start;
        let held = self.held_dt.len() as u64;
        c.pending -= held;
        if !self.line_is_good(duration, end) {
            c.lines_bad += 1;
            let reason = if end == LineEnd::Gap {
                Reject::LinkGap
            } else {
                Reject::BadLine
            };
            c.rejected[reason as usize] += held;
        } else {
            c.lines_good += 1;
            self.commit(&line, duration, cubes, c);
        }
        self.held_dt.clear();
        self.held_pol.clear();
    }

    /// Bin the held events of a good line, check by check as docs/raster.md orders them.
    fn commit(&mut self, line: &OpenLine, duration: u64, cubes: &mut CubeSet, c: &mut Counters) {
        if self.held_dt.is_empty() {
            return;
        }
        let Some(frame) = line.frame else {
            c.rejected[Reject::BeforeFirstFrame as usize] += self.held_dt.len() as u64;
            return;
        };
        let settle = self.cfg.line_settle_ticks;
        let nx = self.cfg.nx as u64;
        // Pixel edges: pixel x covers offsets (after the settle) in [edge(x), edge(x+1)).
        let (dwell, span) = if self.cfg.dwell_ticks == 0 {
            (0, duration - settle)
        } else {
            (self.cfg.dwell_ticks, nx * self.cfg.dwell_ticks)
        };
        let edge = |x: u64| -> u64 {
            if dwell != 0 {
                x * dwell
            } else {
                ((x as u128 * span as u128).div_ceil(nx as u128)) as u64
            }
        };
        let overrun = line.y >= self.cfg.ny;
        // None: the budget refused the slice; events that reach the last check say so.
        let z = self.slice_for(frame, cubes);
        let mut rows = match z {
            Some(z) if !overrun => cubes.line_rows(z, line.y as usize),
            _ => Vec::new(),
        };
        let frame_offset = line.start - line.frame_start;
        let mut x = 0u64;
        let mut next_edge = edge(1);
        for i in 0..self.held_dt.len() {
            let dt = self.held_dt[i];
            if dt < settle {
                c.rejected[Reject::LineSettle as usize] += 1;
                continue;
            }
            let off = dt - settle;
            if off >= span {
                c.rejected[Reject::Flyback as usize] += 1;
                continue;
            }
            if overrun {
                c.rejected[Reject::LineOverrun as usize] += 1;
                continue;
            }
            // Events are in time order, so x only moves forward: no division per event.
            while off >= next_edge {
                x += 1;
                next_edge = edge(x + 1);
            }
            let p = self.held_pol[i] as usize;
            let pol = &self.cfg.polarities[p];
            let n = pol.species.len() as u64;
            let step = match pol.switching {
                Switching::PerFrame => {
                    if frame_offset + dt < pol.settle_ticks {
                        c.rejected[Reject::MassSettle as usize] += 1;
                        continue;
                    }
                    frame % n
                }
                Switching::PerPixel => {
                    let in_pixel = off - x * dwell;
                    let k = in_pixel * n / dwell;
                    if in_pixel - (k * dwell).div_ceil(n) < pol.settle_ticks {
                        c.rejected[Reject::MassSettle as usize] += 1;
                        continue;
                    }
                    k
                }
            };
            if rows.is_empty() {
                c.rejected[Reject::Budget as usize] += 1;
                continue;
            }
            let cell = &mut rows[self.species_base[p] + step as usize][x as usize];
            *cell = cell.wrapping_add(1);
            c.binned += 1;
        }
    }

    /// The slice of `frame`, growing or rebinning the cubes as the budget allows.
    fn slice_for(&mut self, frame: u64, cubes: &mut CubeSet) -> Option<usize> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cube::BudgetPolicy;

    const FRAME: u8 = 4;
    const START: u8 = 1;
    const STOP: u8 = 2;

    fn config(switching: Switching, settle: u64, stops: bool) -> RasterConfig {
        RasterConfig {
            nx: 4,
            ny: 2,
            dwell_ticks: 12,
            line_settle_ticks: 5,
            flyback_ticks: 7,
            line_tolerance_ticks: 0,
            frames_per_slice: 1,
            markers: MarkerMasks {
                frame: FRAME,
                line_start: START,
                line_stop: if stops { STOP } else { 0 },
                mass_switch: 0,
            },
            frame_marker_at: FrameMarkerAt::Start,
            polarities: vec![
                Polarity {
                    name: "positive".into(),
                    channels: vec![0],
                    species: vec!["A".into(), "B".into(), "C".into()],
                    switching,
                    settle_ticks: settle,
                },
                Polarity {
                    name: "negative".into(),
                    channels: vec![1],
                    species: vec!["N".into()],
                    switching: Switching::PerFrame,
                    settle_ticks: 0,
                },
            ],
        }
    }

    struct Run {
        raster: Raster,
        cubes: CubeSet,
        c: Counters,
    }

    impl Run {
        fn new(cfg: RasterConfig, budget: u64, policy: BudgetPolicy) -> Run {
            let raster = Raster::new(cfg).unwrap();
            let cubes = CubeSet::new(raster.n_species(), 2, 4, budget, policy).unwrap();
            Run {
                raster,
                cubes,
                c: Counters::default(),
            }
        }
        fn m(&mut self, t: u64, mask: u8) {
            self.raster.marker(t, mask, &mut self.cubes, &mut self.c);
        }
        fn e(&mut self, t: u64, ch: u8) {
            self.raster.event(t, ch, &mut self.c);
        }
        fn voxel(&self, s: usize, z: usize, y: usize, x: usize) -> u32 {
            let mut out = vec![0u32; 8];
            self.cubes.copy_range(s, z, z + 1, &mut out).unwrap();
            out[y * 4 + x]
        }
        fn rejected(&self, r: Reject) -> u64 {
            self.c.rejected[r as usize]
        }
        fn balanced(&self) -> bool {
            self.c.events == self.c.binned + self.c.rejected_total() + self.c.pending
        }
    }

    #[test]
    fn maps_a_hand_computed_frame() {
        let mut r = Run::new(
            config(Switching::PerFrame, 0, true),
            1 << 20,
            BudgetPolicy::Refuse,
        );
        r.e(50, 0); // before any frame
        r.m(100, FRAME);
        r.e(105, 0); // frame started, no line yet
        r.m(110, START);
        r.e(112, 0); // settle (dt 2 < 5)
        r.e(115, 0); // x 0
        r.e(126, 1); // x 0, negative
        r.e(127, 0); // x 1
        r.e(162, 0); // x 3 (off 47)
        r.e(200, 9); // unknown channel
        r.m(163, STOP); // 5 + 4*12 = 53 ticks: good line
        r.e(164, 0); // after the stop: flyback
        r.m(170, START);
        r.e(175, 1); // y 1, x 0
        r.m(223, STOP);
        r.m(300, FRAME | START); // frame 1, line 0 at once
        r.e(305, 0); // frame 1 → species B, x 0
        r.m(353, STOP);
        assert_eq!(r.voxel(0, 0, 0, 0), 1);
        assert_eq!(r.voxel(0, 0, 0, 1), 1);
        assert_eq!(r.voxel(0, 0, 0, 3), 1);
        assert_eq!(r.voxel(3, 0, 0, 0), 1);
        assert_eq!(r.voxel(3, 0, 1, 0), 1);
        assert_eq!(r.voxel(1, 1, 0, 0), 1);
        assert_eq!(r.rejected(Reject::BeforeFirstFrame), 1);
        assert_eq!(r.rejected(Reject::BeforeFirstLine), 1);
        assert_eq!(r.rejected(Reject::LineSettle), 1);
        assert_eq!(r.rejected(Reject::Flyback), 1);
        assert_eq!(r.rejected(Reject::UnknownChannel), 1);
        assert_eq!(r.c.binned, 6);
        assert_eq!(r.c.lines_good, 3);
        assert_eq!(r.c.frames_bad_line_count, 0);
        assert!(r.balanced());
    }

    #[test]
    fn a_line_of_the_wrong_length_bins_nothing() {
        let mut r = Run::new(
            config(Switching::PerFrame, 0, true),
            1 << 20,
            BudgetPolicy::Refuse,
        );
        r.m(0, FRAME);
        r.m(10, START);
        r.e(20, 0);
        r.e(30, 1);
        assert_eq!(r.c.pending, 2);
        r.m(10 + 53 + 12, STOP); // one pixel too long: a lost marker or overflow
        assert_eq!(r.rejected(Reject::BadLine), 2);
        assert_eq!(r.c.binned, 0);
        assert_eq!(r.c.lines_bad, 1);
        r.m(100, START); // a line closed by the next start while stops are expected
        r.e(110, 0);
        r.m(200, START);
        assert_eq!(r.rejected(Reject::BadLine), 3);
        assert!(r.balanced());
    }

    #[test]
    fn without_stop_markers_the_line_period_is_checked() {
        let mut r = Run::new(
            config(Switching::PerFrame, 0, false),
            1 << 20,
            BudgetPolicy::Refuse,
        );
        r.m(0, FRAME);
        r.m(10, START);
        r.e(20, 0);
        r.m(10 + 53 + 7, START); // settle + pixels + flyback: good
        r.e(75, 0);
        r.m(70 + 53 + 8, FRAME); // frame closes line 1: long enough
        assert_eq!(r.c.binned, 2);
        assert_eq!(r.c.frames_bad_line_count, 0);
        r.m(140, START);
        r.e(150, 0);
        r.m(150, START); // far too short
        assert_eq!(r.rejected(Reject::BadLine), 1);
        assert!(r.balanced());
    }

    #[test]
    fn per_pixel_switching_splits_the_dwell() {
        // dwell 12 split three ways: steps start at 0, 4, 8; settle 1.
        let mut r = Run::new(
            config(Switching::PerPixel, 1, true),
            1 << 20,
            BudgetPolicy::Refuse,
        );
        r.m(0, FRAME);
        r.m(100, START);
        for off in [0u64, 1, 3, 4, 5, 8, 9, 11, 12, 13] {
            r.e(100 + 5 + off, 0);
        }
        r.m(153, STOP);
        assert_eq!(r.rejected(Reject::MassSettle), 4); // offsets 0, 4, 8, 12
        assert_eq!(r.voxel(0, 0, 0, 0), 2); // 1, 3
        assert_eq!(r.voxel(1, 0, 0, 0), 1); // 5
        assert_eq!(r.voxel(2, 0, 0, 0), 2); // 9, 11
        assert_eq!(r.voxel(0, 0, 0, 1), 1); // 13
        assert!(r.balanced());
    }

    #[test]
    fn per_frame_mass_settle_counts_from_the_frame_marker() {
        let mut r = Run::new(
            config(Switching::PerFrame, 30, true),
            1 << 20,
            BudgetPolicy::Refuse,
        );
        r.m(0, FRAME);
        r.m(10, START);
        r.e(20, 0); // 20 < 30: settling
        r.e(20, 1); // the negative polarity has no settle
        r.e(40, 0);
        r.m(63, STOP);
        assert_eq!(r.rejected(Reject::MassSettle), 1);
        assert_eq!(r.c.binned, 2);
    }

    #[test]
    fn extra_lines_and_short_frames_are_counted() {
        let mut r = Run::new(
            config(Switching::PerFrame, 0, true),
            1 << 20,
            BudgetPolicy::Refuse,
        );
        r.m(0, FRAME);
        for y in 0..3u64 {
            r.m(100 * y, START);
            r.e(100 * y + 10, 0);
            r.m(100 * y + 53, STOP);
        }
        assert_eq!(r.rejected(Reject::LineOverrun), 1);
        r.m(1000, FRAME);
        assert_eq!(r.c.frames_bad_line_count, 1);
        r.m(1100, START);
        r.m(1153, STOP);
        r.m(2000, FRAME);
        assert_eq!(r.c.frames_bad_line_count, 2);
        assert!(r.balanced());
    }

    #[test]
    fn out_of_order_records_are_rejected_not_binned() {
        let mut r = Run::new(
            config(Switching::PerFrame, 0, true),
            1 << 20,
            BudgetPolicy::Refuse,
        );
        r.m(100, FRAME);
        r.m(110, START);
        r.e(130, 0);
        r.e(120, 0);
        r.m(105, STOP);
        assert_eq!(r.rejected(Reject::OutOfOrder), 1);
        assert_eq!(r.c.markers_out_of_order, 1);
        r.m(163, STOP);
        assert_eq!(r.c.binned, 1);
    }

    #[test]
    fn link_gap_drops_the_open_line_as_link_gap() {
        let mut r = Run::new(
            config(Switching::PerFrame, 0, true),
            1 << 20,
            BudgetPolicy::Refuse,
        );
        r.m(0, FRAME);
        r.m(10, START);
        r.e(20, 0);
        r.raster.link_gap(&mut r.cubes, &mut r.c);
        assert_eq!(r.rejected(Reject::LinkGap), 1);
        assert!(r.balanced());
    }

    #[test]
    fn refused_budget_rejects_with_reason_budget() {
        let slice = 2 * 4 * 4;
        let chunk = slice * 16;
        let mut r = Run::new(
            config(Switching::PerFrame, 0, true),
            chunk * 4 * 2,
            BudgetPolicy::Refuse,
        );
        for f in 0..40u64 {
            r.m(1000 * f, FRAME);
            r.m(1000 * f + 10, START);
            r.e(1000 * f + 20, 0);
            r.m(1000 * f + 63, STOP);
        }
        assert_eq!(r.c.binned, 32);
        assert_eq!(r.rejected(Reject::Budget), 8);
        assert!(r.balanced());
    }

    #[test]
    fn invalid_configs_name_the_key() {
        let mut cfg = config(Switching::PerFrame, 0, true);
        cfg.polarities[1].channels = vec![0];
        let err = Raster::new(cfg).unwrap_err().to_string();
        assert!(err.contains("channel 0 belongs to two polarities"), "{err}");
        let mut cfg = config(Switching::PerPixel, 4, true);
        cfg.dwell_ticks = 12;
        assert!(Raster::new(cfg).is_err());
        let mut cfg = config(Switching::PerFrame, 0, false);
        cfg.dwell_ticks = 0;
        assert!(Raster::new(cfg)
            .unwrap_err()
            .to_string()
            .contains("line_stop"));
    }

    #[test]
    fn end_markers_close_frames_instead_of_opening_them() {
        let mut cfg = config(Switching::PerFrame, 0, true);
        cfg.frame_marker_at = FrameMarkerAt::End;
        let mut r = Run::new(cfg, 1 << 20, BudgetPolicy::Refuse);
        r.e(5, 0); // frame 0 is under way, but no line yet
        for (f, t0) in [(0u64, 10u64), (1, 200)] {
            for y in 0..2 {
                r.m(t0 + 60 * y, START);
                r.e(t0 + 60 * y + 5, 0);
                r.m(t0 + 60 * y + 53, STOP);
            }
            r.m(t0 + 150, FRAME);
            assert_eq!(r.voxel(f as usize, f as usize, 1, 0), 1);
        }
        assert_eq!(r.rejected(Reject::BeforeFirstLine), 1);
        assert_eq!(r.c.frames_bad_line_count, 0);
        assert_eq!(r.cubes.n_slices(), 2);
    }
}
