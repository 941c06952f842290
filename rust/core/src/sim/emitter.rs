//! The emitter's state machine. One raster line period (line start to the next line
//! start) is generated at a time, into reused buffers: the line's markers and each
//! polarity's counts, each in time order, dead time applied. Records are then written in
//! time order across those runs up to the requested tick; the rest of the line waits for
//! the next call, so the stream does not depend on how the caller slices time.

use rand::SeedableRng;
use rand_xoshiro::Xoshiro256PlusPlus;

use super::events::{fate, EventLog};
use super::line::{
    push_marker, Counts, Draw, Entry, Pol, END, FLYBACK, LINE_SETTLE, LIVE, LOST, MARKER,
    MASS_SETTLE,
};
use super::writer::LinkWriter;
use super::{EmitterConfig, SimError, TruthCounters, MAX_COUNTS_PER_LINE};
use crate::error::Result;
use crate::link::frame::FrameHeader;
use crate::link::tttr::RecordType;
use crate::raster::{FrameMarkerAt, MarkerMasks, Switching};

/// The simulated detector front-end (module doc); `DetectorEmitter` in Python.
pub struct Emitter {
    cfg: EmitterConfig,
    masks: MarkerMasks,
    end_markers: bool,
    any_per_frame: bool,
    nx: u64,
    ny: u32,
    dwell: u64,
    pols: Vec<Pol>,
    /// Pixel offsets of every per-pixel mass switch, all polarities, sorted and unique.
    switch_offsets: Vec<u64>,
    channel_of: Vec<u8>,
    /// Counts per tick, `[species][y][x]`; a new set waits for the next line start.
    rates: Vec<f64>,
    next_rates: Option<Vec<f64>>,
    dark: f64,
    rng: Xoshiro256PlusPlus,
    dtime_bins: u64,
    /// Start of the next line to generate (None once ticks run out), and its place.
    next_t0: Option<u64>,
    next_at: (u64, u32),
    frame_start: u64,
    /// A line stop on the next line's start tick goes out in that line's first record.
    carry: u8,
    /// The line's markers, closed by `END`; `mpos` is the next to write.
    markers: Vec<Entry>,
    mpos: usize,
    /// The generated line: frame, y, its row offset in a truth cube, and its slice.
    cur: (u64, u32, usize, u32),
    writer: LinkWriter,
    truth: TruthCounters,
    /// Every count with its fate, when `record_events`; drained by `take_events`.
    log: Option<EventLog>,
    /// (tick the counter jumped from, ticks jumped), in order.
    jumps: Vec<(u64, u64)>,
    /// A jump waits for the next line start to move the link's time base.
    rebase: bool,
    cubes: Vec<Vec<u32>>,
    n_slices: usize,
    last_until: u64,
    last_tick: u64,
    at: (u64, u32),
}

fn dtime_bits(kind: RecordType) -> u32 {
    match kind {
        RecordType::PicoHarpT3 => 12,
        RecordType::HydraHarpV1T3 | RecordType::GenericT3 => 15,
        _ => 0,
    }
}

impl Emitter {
    pub fn new(cfg: EmitterConfig) -> Result<Self> {
        let kind = cfg.validate()?;
        let r = &cfg.raster;
        let tick_fs = (cfg.tick_s * 1e15).round() as u64;
        let (fine_fs, dtime_bins) = if kind.is_t3() {
            let field = 1u64 << dtime_bits(kind);
            let fine = cfg.fine_fs.unwrap_or(tick_fs.div_ceil(field));
            (fine, tick_fs.div_ceil(fine).clamp(1, field))
        } else {
            (0, 0)
        };
        let mut pols = Vec::new();
        let mut channel_of = Vec::new();
        let mut offsets = Vec::new();
        for p in &r.polarities {
            let n = p.species.len() as u64;
            let per_pixel = p.switching == Switching::PerPixel;
            let bounds: Vec<u64> = (0..=n).map(|k| (k * r.dwell_ticks).div_ceil(n)).collect();
            if per_pixel {
                offsets.extend_from_slice(&bounds[..n as usize]);
            }
            pols.push(Pol {
                base: channel_of.len(),
                n,
                per_pixel,
                settle: p.settle_ticks,
                bounds,
                next_free: 0,
                events: vec![END],
                pos: 0,
                lost: vec![END.tick],
                lost_pos: 0,
            });
            channel_of.extend(std::iter::repeat_n(p.channels[0], p.species.len()));
        }
        offsets.sort_unstable();
        offsets.dedup();
        let template = FrameHeader {
            record_type: cfg.record_type,
            tick_fs,
            fine_fs,
            frame_mask: r.markers.frame,
            line_start_mask: r.markers.line_start,
            line_stop_mask: r.markers.line_stop,
            mass_switch_mask: r.markers.mass_switch,
            ..FrameHeader::default()
        };
        let n_cells = channel_of.len() * (r.ny as usize) * (r.nx as usize);
        let mut writer = LinkWriter::new(kind, template, cfg.max_records_per_frame as usize);
        writer.skip_to(cfg.start_tick);
        Ok(Emitter {
            masks: r.markers,
            end_markers: r.frame_marker_at == FrameMarkerAt::End,
            any_per_frame: cfg.any_per_frame(),
            nx: u64::from(r.nx),
            ny: r.ny,
            dwell: r.dwell_ticks,
            pols,
            switch_offsets: offsets,
            cubes: vec![Vec::new(); channel_of.len()],
            channel_of,
            rates: vec![0.0; n_cells],
            next_rates: None,
            dark: cfg.dark_rate_hz * cfg.tick_s,
            rng: Xoshiro256PlusPlus::seed_from_u64(cfg.seed),
            dtime_bins,
            next_t0: Some(cfg.start_tick),
            next_at: (0, 0),
            frame_start: cfg.start_tick,
            carry: 0,
            markers: vec![END],
            mpos: 0,
            cur: (0, 0, 0, 0),
            writer,
            truth: TruthCounters::default(),
            log: cfg.record_events.then(EventLog::default),
            jumps: Vec::new(),
            rebase: false,
            n_slices: 0,
            last_until: 0,
            last_tick: 0,
            at: (0, 0),
            cfg,
        })
    }

    pub fn config(&self) -> &EmitterConfig {
        &self.cfg
    }
    pub fn species(&self) -> Vec<String> {
        self.cfg.raster.species_names()
    }
    pub fn next_sequence(&self) -> u64 {
        self.writer.next_sequence()
    }
    /// Frame and line of the last line start sent, and the tick of the last record sent.
    pub fn position(&self) -> (u64, u32, u64) {
        (self.at.0, self.at.1, self.last_tick)
    }
    /// Slices of frames begun (a slice appears with its first line).
    pub fn n_slices(&self) -> usize {
        self.n_slices
    }

    pub fn truth_counters(&self) -> TruthCounters {
        let (records, overflow_records, wraps) = self.writer.counts();
        TruthCounters {
            records,
            link_frames: self.writer.next_sequence(),
            overflow_records,
            wraps,
            ..self.truth
        }
    }

    /// Counts per second, `[species][y][x]` flattened; used from the next line start on.
    pub fn set_rates(&mut self, rates_hz: &[f64]) -> std::result::Result<(), SimError> {
        let (ny, nx) = (self.ny as usize, self.nx as usize);
        if rates_hz.len() != self.rates.len() {
            return Err(SimError::Value(format!(
                "rates: expected {} values ([{}, {ny}, {nx}]), got {}",
                self.rates.len(),
                self.channel_of.len(),
                rates_hz.len()
            )));
        }
        let tick_s = self.cfg.tick_s;
        let limit = MAX_COUNTS_PER_LINE / (self.nx * self.dwell) as f64;
        let mut per_tick = Vec::with_capacity(rates_hz.len());
        for (i, &r) in rates_hz.iter().enumerate() {
            let t = r * tick_s;
            if !(r.is_finite() && r >= 0.0 && t <= limit) {
                let (s, y, x) = (i / (ny * nx), i / nx % ny, i % nx);
                return Err(SimError::Value(format!(
                    "rates[{s}, {y}, {x}] = {r}: rates must be finite, >= 0 and below {:.3e} counts/s",
                    limit / tick_s
                )));
            }
            per_tick.push(t);
        }
        self.next_rates = Some(per_tick);
        Ok(())
    }

    /// Every record with a tick below `until`, as complete link frames (at least one:
    /// an empty frame still gives the receiver a clock pair), all sent at `until`.
    pub fn emit_until(&mut self, until: u64) -> std::result::Result<Vec<Vec<u8>>, SimError> {
        if until < self.last_until {
            return Err(SimError::Value(format!(
                "emit_until({until}): time went back (last call was at {})",
                self.last_until
            )));
        }
        self.last_until = until;
        self.writer.begin(until);
        while self.emit_line(until)? {
            match self.next_t0 {
                Some(t0) if t0 < until => self.generate_line(t0),
                _ => break,
            }
        }
        Ok(self.writer.finish())
    }

    /// Copy slices `z0..z1` of one species' truth cube into `out` (`[z][y][x]`).
    pub fn truth_cube(
        &self,
        species: usize,
        z0: usize,
        z1: usize,
        out: &mut [u32],
    ) -> std::result::Result<(), SimError> {
        let plane = self.ny as usize * self.nx as usize;
        if !self.cfg.record_truth {
            return Err(SimError::Value(
                "truth cubes are not kept: create the emitter with record_truth=True".into(),
            ));
        }
        if species >= self.cubes.len() || z0 > z1 || z1 > self.n_slices {
            return Err(SimError::Value(format!(
                "truth_cube: species {species}, slices {z0}..{z1} outside {} species x {} slices",
                self.cubes.len(),
                self.n_slices
            )));
        }
        if out.len() != (z1 - z0) * plane {
            return Err(SimError::Value(
                "truth_cube: output has the wrong size".into(),
            ));
        }
        out.copy_from_slice(&self.cubes[species][z0 * plane..z1 * plane]);
        Ok(())
    }

    /// The device counter jumps forward by `ticks` at the next line start not yet
    /// generated: that line and everything after it (records, markers, the caller's
    /// `emit_until` ticks) are in the jumped counter. The jump falls at the end of a
    /// flyback, so with line-stop markers no line is lost. The link's time base follows
    /// in the next frame's header, without overflow records for the jumped span.
    pub fn jump(&mut self, ticks: u64) -> std::result::Result<(), SimError> {
        if ticks == 0 {
            return Err(SimError::Value("jump: ticks must be > 0".into()));
        }
        let Some(t0) = self.next_t0 else {
            return Err(SimError::Value("jump: the device tick has run out".into()));
        };
        let to = t0.checked_add(ticks).ok_or_else(|| {
            SimError::Value(format!("jump: {ticks} ticks from {t0} overflows the tick"))
        })?;
        if self.carry != 0 {
            // The stop of the line before belongs at the old tick, not with the next
            // line's start: the line would look too long. Still in time order, as the
            // line's entries end before t0.
            let stop = Entry {
                tick: t0,
                x: u32::from(std::mem::take(&mut self.carry)),
                dtime: 0,
                species: 0,
                kind: MARKER,
            };
            self.markers.insert(self.markers.len() - 1, stop);
        }
        self.jumps.push((t0, ticks));
        self.truth.clock_jumps += 1;
        self.next_t0 = Some(to);
        self.rebase = true;
        Ok(())
    }

    /// Every jump so far: (tick the counter jumped from, ticks jumped).
    pub fn jumps(&self) -> &[(u64, u64)] {
        &self.jumps
    }

    /// The counts emitted (or lost to dead time) since the last call, in time order.
    pub fn take_events(&mut self) -> std::result::Result<EventLog, SimError> {
        match &mut self.log {
            Some(log) => Ok(std::mem::take(log)),
            None => Err(SimError::Value(
                "events are not logged: create the emitter with record_events=True".into(),
            )),
        }
    }

    /// Write the generated line's records below `until`; true when the line is done.
    fn emit_line(&mut self, until: u64) -> Result<bool> {
        let m = self.masks;
        let (frame, y, row, z) = self.cur;
        let keep = self.cfg.record_truth;
        let t = &mut self.truth;
        // Dark counts carry their polarity's first species: the log says -1.
        let species = |kind: u8, s: u8| match kind & !LOST {
            LINE_SETTLE | FLYBACK => -1,
            _ => i16::from(s),
        };
        loop {
            // The earliest head of the line's runs; on equal ticks markers come first
            // (an event on a line start belongs to the new line), then polarities in order.
            let mut e = self.markers[self.mpos];
            let mut from = usize::MAX;
            for (i, p) in self.pols.iter().enumerate() {
                let head = p.events[p.pos];
                if head.tick < e.tick {
                    (e, from) = (head, i);
                }
            }
            if e.tick >= until {
                // Counts lost before `until`, whose ticks were kept apart (not logging).
                for p in &mut self.pols {
                    while p.lost[p.lost_pos] < until {
                        p.lost_pos += 1;
                        t.dead_time_lost += 1;
                    }
                }
                return Ok(e.tick == END.tick);
            }
            match self.pols.get_mut(from) {
                Some(p) => p.pos += 1,
                None => self.mpos += 1,
            }
            match e.kind {
                MARKER => {
                    let mask = e.x as u8;
                    self.writer.marker(e.tick, mask)?;
                    self.last_tick = e.tick;
                    t.markers += 1;
                    t.frame_markers += u64::from(mask & m.frame != 0);
                    t.line_stops += u64::from(mask & m.line_stop != 0);
                    t.mass_switches += u64::from(mask & m.mass_switch != 0);
                    if mask & m.line_start != 0 {
                        t.line_starts += 1;
                        t.lines += 1;
                        t.frames += u64::from(y == 0);
                        self.at = (frame, y);
                    }
                }
                kind if kind & LOST != 0 => {
                    t.dead_time_lost += 1;
                    if let Some(log) = &mut self.log {
                        let ch = self.channel_of[e.species as usize];
                        let s = species(kind, e.species);
                        log.push(e.tick, ch, s, (0, 0, 0), fate::DEAD_TIME_LOST);
                    }
                }
                kind => {
                    let s = e.species as usize;
                    let ch = self.channel_of[s];
                    self.writer.event(e.tick, ch, e.dtime)?;
                    self.last_tick = e.tick;
                    t.events += 1;
                    match kind {
                        LIVE => {
                            t.binned += 1;
                            if keep {
                                let c = &mut self.cubes[s][row + e.x as usize];
                                *c = c.wrapping_add(1);
                            }
                        }
                        LINE_SETTLE => t.line_settle += 1,
                        FLYBACK => t.flyback += 1,
                        _ => t.mass_settle += 1,
                    }
                    if let Some(log) = &mut self.log {
                        // The validation bounds nx and ny to u16 indices when logging.
                        let at = if kind == LIVE {
                            (z, y as u16, e.x as u16)
                        } else {
                            (0, 0, 0)
                        };
                        log.push(e.tick, ch, species(kind, e.species), at, kind);
                    }
                }
            }
        }
    }

    /// Generate the line period starting at `t0` into `self.markers` and the polarities'
    /// `events`.
    fn generate_line(&mut self, t0: u64) {
        let (frame, y) = self.next_at;
        let last_line = y + 1 == self.ny;
        let settle = self.cfg.raster.line_settle_ticks;
        let span = self.nx * self.dwell;
        let tail = self.cfg.raster.flyback_ticks
            + if last_line {
                self.cfg.frame_gap_ticks
            } else {
                0
            };
        // The validation bounds one frame period, so only the tick itself can run out.
        let Some(t_next) = t0.checked_add(settle + span + tail) else {
            self.next_t0 = None;
            return;
        };
        if let Some(r) = self.next_rates.take() {
            self.rates = r;
        }
        if std::mem::take(&mut self.rebase) {
            self.writer.skip_to(t0);
        }
        if y == 0 {
            self.frame_start = t0;
        }
        let (pix0, stop) = (t0 + settle, t0 + settle + span);
        self.line_markers(frame, y, t0, pix0, stop, t_next);
        self.line_events(frame, y, t0, pix0, stop, t_next);
        self.markers.push(END);
        self.mpos = 0;

        let z = (frame / u64::from(self.cfg.raster.frames_per_slice)) as usize;
        let (ny, nx) = (self.ny as usize, self.nx as usize);
        self.n_slices = self.n_slices.max(z + 1);
        if self.cfg.record_truth {
            let need = (z + 1) * ny * nx;
            for c in &mut self.cubes {
                if c.len() < need {
                    c.resize(need, 0);
                }
            }
        }
        let z_log = u32::try_from(z).unwrap_or(u32::MAX);
        self.cur = (frame, y, (z * ny + y as usize) * nx, z_log);
        self.next_at = if last_line {
            (frame + 1, 0)
        } else {
            (frame, y + 1)
        };
        self.next_t0 = Some(t_next);
    }

    fn line_markers(&mut self, frame: u64, y: u32, t0: u64, pix0: u64, stop: u64, t_next: u64) {
        let m = self.masks;
        let mk = &mut self.markers;
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

    fn line_events(&mut self, frame: u64, y: u32, t0: u64, pix0: u64, stop: u64, t_next: u64) {
        let (nx, dwell) = (self.nx, self.dwell);
        let plane = self.ny as usize * nx as usize;
        let row = y as usize * nx as usize;
        let fraction = self.cfg.settle_rate_fraction;
        let mut d = Draw {
            rng: &mut self.rng,
            dtime_bins: self.dtime_bins,
            dead_time: self.cfg.dead_time_ticks,
            log_lost: self.log.is_some(),
        };
        for p in &mut self.pols {
            p.events.clear();
            p.lost.clear();
            let c = &mut Counts {
                next_free: &mut p.next_free,
                events: &mut p.events,
                lost: &mut p.lost,
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
            p.events.push(END);
            p.lost.push(END.tick);
            p.pos = 0;
            p.lost_pos = 0;
        }
    }
}
