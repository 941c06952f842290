//! The raster's bulk path: runs of detector-event and overflow records binned into the
//! open line by one tight loop, for the common case (fixed dwell, a per-frame species
//! out of its mass settle, in order, inside the line's pixels). Every other record ends
//! the run and goes through `Raster::event` or the decoder, so counts stay bit-identical.
//! Where the CPU and the layout allow, `bulk_avx2` takes the run 8 records at a time.

#[cfg(target_arch = "x86_64")]
use super::bulk_avx2::{self, Lanes};
use super::{Raster, NO_POLARITY};
use crate::counters::{Counters, Reject};
use crate::link::tttr::{EventLayout, NOT_EVENT, OVERFLOW};
use crate::raster::RasterConfig;

/// Exact `n / d` for `n < 2^32` and `2 <= d <= 2^32` by one multiply-high with
/// `ceil(2^64 / d)` (Lemire, Kaser & Kurz 2019, theorem 1): offsets within a line span
/// of at most 2^32 ticks need no correction step.
#[derive(Debug, Clone, Copy)]
pub(in crate::raster) struct SpanDiv {
    magic: u64,
}

impl SpanDiv {
    pub(in crate::raster) fn new(d: u64, span: u64) -> Option<Self> {
        (d >= 2 && span <= 1 << 32).then(|| SpanDiv {
            magic: u64::MAX / d + 1,
        })
    }
    #[inline(always)]
    pub(in crate::raster) fn div(self, n: u64) -> u64 {
        ((u128::from(n) * u128::from(self.magic)) >> 64) as u64
    }
}

/// Code of a record key in the open line: a row offset in `bins` (the dump row for an
/// unknown channel), or one of these.
const SLOW: i32 = -1;
const OVERFLOW_RECORD: i32 = -2;

/// The bulk state of the open line.
#[derive(Debug, Clone)]
pub(super) struct Bulk {
    /// None when the configuration never takes the bulk path (measured or 1-tick dwell,
    /// spans beyond 2^32 ticks).
    div: Option<SpanDiv>,
    /// The open line takes bulk records.
    open: bool,
    /// Per polarity, the code its events have in the open line.
    per_polarity: Vec<i32>,
    /// `EventLayout::id` the key codes were built for (0: to be built).
    layout: u8,
    code: [i32; 128],
    /// Offset of the dump row: unknown channels are counted there until `flush`, which
    /// keeps a branch and a counter out of the loop.
    dump: usize,
    dump_dirty: bool,
    /// Tick of the open line's first pixel (line start + settle).
    first_pixel: u64,
    /// Species rows the codes point at.
    rows: u64,
    /// The vector loop for the layout the codes were built for, where it applies.
    #[cfg(target_arch = "x86_64")]
    lanes: Option<Lanes>,
    /// Tests turn the vector loop off to check the scalar one.
    #[cfg(target_arch = "x86_64")]
    vectors: bool,
}

/// What one bulk call took: records, and among them overflow records and their wraps.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Taken {
    pub records: usize,
    pub overflows: u64,
    pub wraps: u64,
}

impl Bulk {
    pub(super) fn new(cfg: &RasterConfig, n_species: usize) -> Self {
        let nx = cfg.nx as usize;
        let span = u64::from(cfg.nx) * cfg.dwell_ticks;
        // Row offsets, the dump row's included, must fit the codes.
        let fits = (n_species + 1)
            .checked_mul(nx)
            .is_some_and(|n| n <= i32::MAX as usize);
        Bulk {
            div: SpanDiv::new(cfg.dwell_ticks, span).filter(|_| fits),
            open: false,
            per_polarity: vec![SLOW; cfg.polarities.len()],
            layout: 0,
            code: [SLOW; 128],
            dump: n_species * nx,
            dump_dirty: false,
            first_pixel: 0,
            rows: 0,
            #[cfg(target_arch = "x86_64")]
            lanes: None,
            #[cfg(target_arch = "x86_64")]
            vectors: true,
        }
    }
}

impl Raster {
    /// A line opened at `start`; `binnable`: it is in a frame and not an overrun.
    pub(super) fn open_bulk(&mut self, start: u64, binnable: bool) {
        let b = &mut self.bulk;
        // The whole line must lie below 2^64 for the wrapping offsets of `events`.
        let first_pixel = start
            .checked_add(self.settle)
            .filter(|p| p.checked_add(self.span).is_some());
        b.open = binnable && b.div.is_some() && first_pixel.is_some();
        let Some(first_pixel) = first_pixel.filter(|_| b.open) else {
            return;
        };
        b.first_pixel = first_pixel;
        b.rows = 0;
        for (code, t) in b.per_polarity.iter_mut().zip(&self.targets) {
            // Species split per pixel, or in a mass settle that reaches into the pixels,
            // need the per-event checks.
            let new = if t.per_pixel || t.settle_until > self.settle {
                SLOW
            } else {
                b.rows |= 1 << t.row;
                (t.row * self.nx) as i32
            };
            if *code != new {
                *code = new;
                b.layout = 0;
            }
        }
    }

    /// Before the open line closes.
    pub(super) fn close_bulk(&mut self, c: &mut Counters) {
        self.flush(c);
        self.bulk.open = false;
    }

    /// Count the unknown-channel events the bulk path parked in the dump row. Counters
    /// and `pending` are exact only after this (the engine calls it after every batch).
    pub fn flush(&mut self, c: &mut Counters) {
        if !std::mem::take(&mut self.bulk.dump_dirty) {
            return;
        }
        let row = &mut self.bins[self.bulk.dump..][..self.nx];
        let n: u64 = row.iter().map(|&v| u64::from(v)).sum();
        row.fill(0);
        c.rejected[Reject::UnknownChannel as usize] += n;
        self.line_binned -= n;
    }

    #[cold]
    fn build_codes(&mut self, layout: &EventLayout) {
        let b = &mut self.bulk;
        for (code, &ch) in b.code.iter_mut().zip(&layout.channel) {
            *code = match ch {
                NOT_EVENT => SLOW,
                OVERFLOW => OVERFLOW_RECORD,
                ch => match self.polarity_of[usize::from(ch)] {
                    NO_POLARITY => b.dump as i32,
                    p => b.per_polarity[usize::from(p)],
                },
            };
        }
        b.layout = layout.id;
        #[cfg(target_arch = "x86_64")]
        {
            let dwell = self.cfg.dwell_ticks;
            let dump = b.dump as i32;
            b.lanes = Lanes::new(layout, &b.code, dump, self.span, dwell).filter(|_| b.vectors);
        }
    }

    /// Use the scalar bulk loop only.
    #[cfg(test)]
    pub(super) fn without_vectors(&mut self) {
        #[cfg(target_arch = "x86_64")]
        {
            self.bulk.vectors = false;
        }
        self.bulk.layout = 0;
    }

    /// The bulk path (see the module docs): takes the longest prefix of `records` made of
    /// overflow records and events that `event` would bin into the open line or reject
    /// as `unknown_channel`, advancing `base` over the overflows.
    #[inline(always)]
    pub fn events(
        &mut self,
        records: &[u32],
        base: &mut u64,
        layout: &EventLayout,
        c: &mut Counters,
    ) -> Taken {
        if !self.bulk.open {
            return Taken::default();
        }
        if self.bulk.layout != layout.id {
            self.build_codes(layout);
        }
        let b = &self.bulk;
        let Some(div) = b.div else {
            return Taken::default();
        };
        let (shift, time_mask) = (layout.key_shift, layout.time_mask);
        let (period, counted) = (layout.overflow.period, layout.overflow.counted);
        let (first_pixel, span) = (b.first_pixel, self.span);
        // No tick of the run may wrap (as the decoder's would near 2^64).
        let base_limit = u64::MAX - u64::from(time_mask);
        if *base > base_limit {
            return Taken::default();
        }
        let mut tick_base = *base;
        // Offsets from the first pixel. `time + to_pixel` is `tick - first_pixel`, and a
        // tick before the first pixel wraps to far beyond the span: one compare.
        let mut to_pixel = tick_base.wrapping_sub(first_pixel);
        // Later events must not be earlier than this (unknown channels included, which is
        // stricter than `event` and only sends a few more records the slow way).
        let mut not_before = self.last_tick.saturating_sub(first_pixel);
        let (mut i, mut overflows, mut wraps) = (0, 0, 0);
        let bins = &mut self.bins[..];
        loop {
            #[cfg(target_arch = "x86_64")]
            if let Some(lanes) = b.lanes {
                // SAFETY: `Lanes` exist only where the CPU has AVX2, and were made from
                // these codes, whose rows (plus a pixel) lie inside `bins` as below.
                (i, not_before) =
                    unsafe { bulk_avx2::run(lanes, records, i, bins, to_pixel, not_before) };
            }
            let Some(&rec) = records.get(i) else {
                break;
            };
            let code = b.code[(rec >> shift) as usize & 127];
            let time = u64::from(rec & time_mask);
            let off = time.wrapping_add(to_pixel);
            if code < 0 || off < not_before || off >= span {
                // At most 2^25 wraps of at most 2^28 ticks: no overflow.
                let n = if counted { time.max(1) } else { 1 };
                let step = n * period;
                if code != OVERFLOW_RECORD || step > base_limit - tick_base {
                    break;
                }
                tick_base += step;
                to_pixel = to_pixel.wrapping_add(step);
                overflows += 1;
                wraps += n;
            } else {
                not_before = off;
                let idx = code as usize + div.div(off) as usize;
                debug_assert!(idx < bins.len());
                // SAFETY: a code >= 0 is a row offset of at most `dump` = n_species * nx,
                // and `off < span = nx * dwell` gives `x = off / dwell < nx`, so `idx` is
                // below `bins.len() = (n_species + 1) * nx`.
                let cell = unsafe { bins.get_unchecked_mut(idx) };
                *cell = cell.wrapping_add(1);
            }
            i += 1;
        }
        *base = tick_base;
        let events = i as u64 - overflows;
        if events > 0 {
            c.events += events;
            // Unknown channels included until `flush` takes them back out.
            self.line_binned += events;
            self.touched |= b.rows;
            self.bulk.dump_dirty = true;
            // The last accepted tick is that of the latest event on a known channel.
            for &rec in records[..i].iter().rev() {
                let code = self.bulk.code[(rec >> shift) as usize & 127];
                let time = u64::from(rec & time_mask);
                if code == OVERFLOW_RECORD {
                    tick_base -= if counted { time.max(1) } else { 1 } * period;
                } else if code as usize != self.bulk.dump {
                    self.last_tick = tick_base + time;
                    break;
                }
            }
        }
        Taken {
            records: i,
            overflows,
            wraps,
        }
    }
}
