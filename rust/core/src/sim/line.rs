//! The pieces of one generated line period (`Line`): records-to-be (`Entry`), each
//! polarity's Poisson counts with dead time (`Draw`) and marker records, each run in
//! time order.

use rand::RngCore;
use rand_distr::{Distribution, Exp1};
use rand_xoshiro::Xoshiro256PlusPlus;

use super::events::fate;

// What an entry of the generated line is: a count by its fate if sent (the core's
// verdict), or a marker.
pub(super) const LIVE: u8 = fate::IN_VOXEL;
pub(super) const LINE_SETTLE: u8 = fate::LINE_SETTLE;
pub(super) const FLYBACK: u8 = fate::FLYBACK;
pub(super) const MASS_SETTLE: u8 = fate::MASS_SETTLE;
pub(super) const MARKER: u8 = 5;
/// Added to the kind of a count the dead time removed, so the log still knows whether
/// it was a dark count.
pub(super) const LOST: u8 = 0x80;

/// A record-to-be. Events carry their species (a polarity's first species for dark
/// counts), which names the channel; a marker carries its mask in `x`.
#[derive(Debug, Clone, Copy)]
pub(super) struct Entry {
    pub(super) tick: u64,
    pub(super) x: u32,
    pub(super) dtime: u16,
    pub(super) species: u8,
    pub(super) kind: u8,
}

/// One polarity's detector: its species, switching, dead time and the line's counts.
#[derive(Debug)]
pub(super) struct Pol {
    pub(super) base: usize,
    pub(super) n: u64,
    pub(super) per_pixel: bool,
    pub(super) settle: u64,
    /// Per-pixel switching: part k covers pixel offsets `bounds[k]..bounds[k + 1]`.
    pub(super) bounds: Vec<u64>,
    /// Counts before this tick fall in the dead time of the last recorded one.
    pub(super) next_free: u64,
}

/// One polarity's counts in a generated line.
#[derive(Debug)]
pub(super) struct Run {
    /// Counts in time order, closed by `END`; `pos` is the next to write.
    pub(super) events: Vec<Entry>,
    pub(super) pos: usize,
    /// Ticks of counts lost to dead time, closed by `END.tick`, when they are not logged
    /// (then they are entries of `events`); `lost_pos` is the next to count.
    pub(super) lost: Vec<u64>,
    pub(super) lost_pos: usize,
}

/// A generated line period (line start to the next line start), ready to write.
#[derive(Debug)]
pub(super) struct Line {
    /// Markers in time order, closed by `END`; `mpos` is the next to write.
    pub(super) markers: Vec<Entry>,
    pub(super) mpos: usize,
    /// One per polarity.
    pub(super) runs: Vec<Run>,
    pub(super) frame: u64,
    pub(super) y: u32,
    /// Its slice of the cubes.
    pub(super) z: usize,
    /// After a counter jump the link's time base moves here before the line is written.
    pub(super) rebase_to: Option<u64>,
}

impl Line {
    /// A line with nothing left to write.
    pub(super) fn new(n_pols: usize) -> Self {
        let run = || Run {
            events: vec![END],
            pos: 0,
            lost: vec![END.tick],
            lost_pos: 0,
        };
        Line {
            markers: vec![END],
            mpos: 0,
            runs: (0..n_pols).map(|_| run()).collect(),
            frame: 0,
            y: 0,
            z: 0,
            rebase_to: None,
        }
    }
}

/// Where one polarity's draws go.
pub(super) struct Counts<'a> {
    pub(super) next_free: &'a mut u64,
    pub(super) events: &'a mut Vec<Entry>,
    pub(super) lost: &'a mut Vec<u64>,
}

/// Random draws for one line.
pub(super) struct Draw<'a> {
    pub(super) rng: &'a mut Xoshiro256PlusPlus,
    pub(super) dtime_bins: u64,
    pub(super) dead_time: u64,
    /// Lost counts become entries (for the event log), not just ticks.
    pub(super) log_lost: bool,
}

impl Draw<'_> {
    #[inline(always)]
    fn exp(&mut self) -> f64 {
        Distribution::<f64>::sample(&Exp1, self.rng)
    }

    /// Counts of a Poisson process of `rate` per tick over `[a, a + len)`, appended in
    /// time order. Exponential gaps give exactly a Poisson(rate·len) count at uniform
    /// times, already sorted, for one ziggurat draw per count.
    #[inline(always)]
    pub(super) fn run(&mut self, a: u64, len: u64, rate: f64, tag: Entry, c: &mut Counts) {
        if rate <= 0.0 || len == 0 {
            return;
        }
        let (inv, end) = (1.0 / rate, len as f64);
        let mut off = self.exp() * inv;
        while off < end {
            let dt = off as u64;
            if dt >= len {
                break; // `len as f64` rounded up (a gap beyond 2^53 ticks)
            }
            let tick = a + dt;
            if tick >= *c.next_free {
                // Non-paralysable: only a recorded count starts a dead time.
                *c.next_free = tick.saturating_add(self.dead_time);
                // Multiply-shift: bias below bins / 2^64, far under any test's reach.
                let dtime = if self.dtime_bins > 1 {
                    ((u128::from(self.rng.next_u64()) * u128::from(self.dtime_bins)) >> 64) as u16
                } else {
                    0
                };
                c.events.push(Entry { tick, dtime, ..tag });
            } else if self.log_lost {
                c.events.push(Entry {
                    tick,
                    kind: tag.kind | LOST,
                    ..tag
                });
            } else {
                c.lost.push(tick);
            }
            off += self.exp() * inv;
        }
    }
}

/// Closes every run of a generated line: no record can carry the last tick, since a
/// line period must end before it.
pub(super) const END: Entry = Entry {
    tick: u64::MAX,
    x: 0,
    dtime: 0,
    species: 0,
    kind: MARKER,
};

pub(super) fn push_marker(markers: &mut Vec<Entry>, tick: u64, mask: u8) {
    match markers.last_mut() {
        // Simultaneous markers are one record with several bits, as the hardware writes.
        Some(m) if m.tick == tick => m.x |= u32::from(mask),
        _ => markers.push(Entry {
            tick,
            x: u32::from(mask),
            dtime: 0,
            species: 0,
            kind: MARKER,
        }),
    }
}
