//! The emitter's state machine. One raster line period (line start to the next line
//! start) is generated at a time (`generate.rs`), into reused buffers: the line's markers
//! and each polarity's counts, each in time order, dead time applied. Records are then
//! written in time order across those runs up to the requested tick; the rest of the line
//! waits for the next call, so the stream does not depend on how the caller slices time.
//! When a call spans several lines, one thread generates while the caller's writes: the
//! random stream is drawn in the same order either way, so the output is the same.

use std::sync::mpsc;

use super::events::{fate, EventLog};
use super::generate::Generator;
use super::line::{Entry, Line, END, FLYBACK, LINE_SETTLE, LIVE, LOST, MARKER};
use super::writer::LinkWriter;
use super::{EmitterConfig, SimError, TruthCounters, MAX_COUNTS_PER_LINE};
use crate::error::Result;
use crate::link::frame::FrameHeader;
use crate::link::tttr::RecordType;
use crate::raster::MarkerMasks;

/// A call generates on a second thread from this many lines on: below, the thread's
/// start costs more than it saves.
const PIPELINE_MIN_LINES: u64 = 3;
/// Lines generated ahead of the writer at most (a bound on memory).
const PIPELINE_DEPTH: usize = 2;

/// The simulated detector front-end (module doc); `DetectorEmitter` in Python.
pub struct Emitter {
    cfg: EmitterConfig,
    gen: Generator,
    out: Output,
    /// Line buffers to reuse.
    spare: Vec<Line>,
    /// (tick the counter jumped from, ticks jumped), in order.
    jumps: Vec<(u64, u64)>,
    last_until: u64,
}

/// What has been written: the link stream, and its truth.
struct Output {
    masks: MarkerMasks,
    nx: usize,
    ny: usize,
    channel_of: Vec<u8>,
    record_truth: bool,
    /// The line being written.
    line: Line,
    writer: LinkWriter,
    truth: TruthCounters,
    /// Every count with its fate, when `record_events`; drained by `take_events`.
    log: Option<EventLog>,
    cubes: Vec<Vec<u32>>,
    n_slices: usize,
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
        let channel_of: Vec<u8> = r
            .polarities
            .iter()
            .flat_map(|p| std::iter::repeat_n(p.channels[0], p.species.len()))
            .collect();
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
        let (nx, ny) = (r.nx as usize, r.ny as usize);
        let mut writer = LinkWriter::new(kind, template, cfg.max_records_per_frame as usize);
        writer.skip_to(cfg.start_tick);
        let gen = Generator::new(&cfg, dtime_bins);
        let out = Output {
            masks: r.markers,
            nx,
            ny,
            cubes: vec![Vec::new(); channel_of.len()],
            channel_of,
            record_truth: cfg.record_truth,
            line: Line::new(gen.n_pols()),
            writer,
            truth: TruthCounters::default(),
            log: cfg.record_events.then(EventLog::default),
            n_slices: 0,
            last_tick: 0,
            at: (0, 0),
        };
        Ok(Emitter {
            gen,
            out,
            spare: Vec::new(),
            jumps: Vec::new(),
            last_until: 0,
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
        self.out.writer.next_sequence()
    }
    /// Frame and line of the last line start sent, and the tick of the last record sent.
    pub fn position(&self) -> (u64, u32, u64) {
        (self.out.at.0, self.out.at.1, self.out.last_tick)
    }
    /// Slices of frames begun (a slice appears with its first line).
    pub fn n_slices(&self) -> usize {
        self.out.n_slices
    }

    pub fn truth_counters(&self) -> TruthCounters {
        let (records, overflow_records, wraps) = self.out.writer.counts();
        TruthCounters {
            records,
            link_frames: self.out.writer.next_sequence(),
            overflow_records,
            wraps,
            ..self.out.truth
        }
    }

    /// Counts per second, `[species][y][x]` flattened; used from the next line start on.
    pub fn set_rates(&mut self, rates_hz: &[f64]) -> std::result::Result<(), SimError> {
        let (ny, nx) = (self.cfg.raster.ny as usize, self.cfg.raster.nx as usize);
        let n_cells = self.out.channel_of.len() * self.out.ny * self.out.nx;
        if rates_hz.len() != n_cells {
            return Err(SimError::Value(format!(
                "rates: expected {} values ([{}, {ny}, {nx}]), got {}",
                n_cells,
                self.out.channel_of.len(),
                rates_hz.len()
            )));
        }
        let tick_s = self.cfg.tick_s;
        let r = &self.cfg.raster;
        let limit = MAX_COUNTS_PER_LINE / (u64::from(r.nx) * r.dwell_ticks) as f64;
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
        self.gen.set_rates(per_tick);
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
        self.out.writer.begin(until);
        if self.out.emit_line(until)? {
            if let Some(t0) = self.gen.next_start().filter(|&t0| t0 < until) {
                if (until - t0) / self.gen.line_period() >= PIPELINE_MIN_LINES {
                    self.generate_beside(until)?;
                } else {
                    self.generate_inline(until)?;
                }
            }
        }
        Ok(self.out.writer.finish())
    }

    /// Generate and write line after line while lines start before `until`.
    fn generate_inline(&mut self, until: u64) -> Result<()> {
        while self.gen.next_start().is_some_and(|t0| t0 < until) {
            let mut line = self
                .spare
                .pop()
                .unwrap_or_else(|| Line::new(self.gen.n_pols()));
            if !self.gen.generate(&mut line) {
                self.spare.push(line);
                break;
            }
            self.spare.push(self.out.start(line));
            if !self.out.emit_line(until)? {
                break;
            }
        }
        Ok(())
    }

    /// The same, with the lines generated on a scoped thread while this one writes.
    /// Only the last line can end after `until`, so the writer takes every line sent.
    fn generate_beside(&mut self, until: u64) -> Result<()> {
        let (gen, out, spare) = (&mut self.gen, &mut self.out, &mut self.spare);
        let n_pols = gen.n_pols();
        std::thread::scope(|s| {
            let (to_writer, lines) = mpsc::sync_channel::<Line>(PIPELINE_DEPTH);
            let (to_generator, free) = mpsc::channel::<Line>();
            for line in spare.drain(..) {
                let _ = to_generator.send(line);
            }
            let generator = s.spawn(move || {
                while gen.next_start().is_some_and(|t0| t0 < until) {
                    let mut line = free.try_recv().unwrap_or_else(|_| Line::new(n_pols));
                    if !gen.generate(&mut line) || to_writer.send(line).is_err() {
                        break; // the tick ran out, or the writer stopped on an error
                    }
                }
                drop(to_writer);
                free.try_iter().collect::<Vec<_>>()
            });
            let mut written = Ok(());
            for line in &lines {
                let done = out.start(line);
                if let Err(mpsc::SendError(done)) = to_generator.send(done) {
                    spare.push(done);
                }
                match out.emit_line(until) {
                    Ok(true) => {}
                    Ok(false) => break,
                    Err(e) => {
                        written = Err(e);
                        break;
                    }
                }
            }
            drop(lines);
            drop(to_generator);
            // Generation has no failure of its own; a panic there is a bug, kept as one.
            spare.extend(
                generator
                    .join()
                    .unwrap_or_else(|p| std::panic::resume_unwind(p)),
            );
            written
        })
    }

    /// Copy slices `z0..z1` of one species' truth cube into `out` (`[z][y][x]`).
    pub fn truth_cube(
        &self,
        species: usize,
        z0: usize,
        z1: usize,
        out: &mut [u32],
    ) -> std::result::Result<(), SimError> {
        let plane = self.cfg.raster.ny as usize * self.cfg.raster.nx as usize;
        if !self.cfg.record_truth {
            return Err(SimError::Value(
                "truth cubes are not kept: create the emitter with record_truth=True".into(),
            ));
        }
        if species >= self.out.cubes.len() || z0 > z1 || z1 > self.out.n_slices {
            return Err(SimError::Value(format!(
                "truth_cube: species {species}, slices {z0}..{z1} outside {} species x {} slices",
                self.out.cubes.len(),
                self.out.n_slices
            )));
        }
        if out.len() != (z1 - z0) * plane {
            return Err(SimError::Value(
                "truth_cube: output has the wrong size".into(),
            ));
        }
        out.copy_from_slice(&self.out.cubes[species][z0 * plane..z1 * plane]);
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
        let Some(t0) = self.gen.next_start() else {
            return Err(SimError::Value("jump: the device tick has run out".into()));
        };
        let to = t0.checked_add(ticks).ok_or_else(|| {
            SimError::Value(format!("jump: {ticks} ticks from {t0} overflows the tick"))
        })?;
        let carry = self.gen.jump(to);
        if carry != 0 {
            // The stop of the line before belongs at the old tick, not with the next
            // line's start: the line would look too long. Still in time order, as the
            // line's entries end before t0.
            let stop = Entry {
                tick: t0,
                x: u32::from(carry),
                dtime: 0,
                species: 0,
                kind: MARKER,
            };
            let markers = &mut self.out.line.markers;
            markers.insert(markers.len() - 1, stop);
        }
        self.jumps.push((t0, ticks));
        self.out.truth.clock_jumps += 1;
        Ok(())
    }

    /// Every jump so far: (tick the counter jumped from, ticks jumped).
    pub fn jumps(&self) -> &[(u64, u64)] {
        &self.jumps
    }

    /// The counts emitted (or lost to dead time) since the last call, in time order.
    pub fn take_events(&mut self) -> std::result::Result<EventLog, SimError> {
        match &mut self.out.log {
            Some(log) => Ok(std::mem::take(log)),
            None => Err(SimError::Value(
                "events are not logged: create the emitter with record_events=True".into(),
            )),
        }
    }
}

impl Output {
    /// Make `line` the one being written; returns the one it replaces.
    fn start(&mut self, line: Line) -> Line {
        if let Some(t0) = line.rebase_to {
            self.writer.skip_to(t0);
        }
        self.n_slices = self.n_slices.max(line.z + 1);
        if self.record_truth {
            let need = (line.z + 1) * self.ny * self.nx;
            for c in &mut self.cubes {
                if c.len() < need {
                    c.resize(need, 0);
                }
            }
        }
        std::mem::replace(&mut self.line, line)
    }

    /// Write the generated line's records below `until`; true when the line is done.
    pub(super) fn emit_line(&mut self, until: u64) -> Result<bool> {
        let m = self.masks;
        let l = &mut self.line;
        let (frame, y) = (l.frame, l.y);
        let row = (l.z * self.ny + y as usize) * self.nx;
        // The validation bounds nx and ny to u16 indices when logging.
        let z = u32::try_from(l.z).unwrap_or(u32::MAX);
        let keep = self.record_truth;
        let t = &mut self.truth;
        // Dark counts carry their polarity's first species: the log says -1.
        let species = |kind: u8, s: u8| match kind & !LOST {
            LINE_SETTLE | FLYBACK => -1,
            _ => i16::from(s),
        };
        loop {
            // The earliest head of the line's runs; on equal ticks markers come first
            // (an event on a line start belongs to the new line), then polarities in order.
            let mut e = l.markers[l.mpos];
            let mut from = usize::MAX;
            for (i, run) in l.runs.iter().enumerate() {
                let head = run.events[run.pos];
                if head.tick < e.tick {
                    (e, from) = (head, i);
                }
            }
            if e.tick >= until {
                // Counts lost before `until`, whose ticks were kept apart (not logging).
                for run in &mut l.runs {
                    while run.lost[run.lost_pos] < until {
                        run.lost_pos += 1;
                        t.dead_time_lost += 1;
                    }
                }
                return Ok(e.tick == END.tick);
            }
            match l.runs.get_mut(from) {
                Some(run) => run.pos += 1,
                None => l.mpos += 1,
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
}
