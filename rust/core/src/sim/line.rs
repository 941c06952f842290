//! The pieces of one generated line period: records-to-be (`Entry`), each polarity's
//! Poisson counts with dead time (`Draw`), marker records, and their merge in time order.

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
    pub(super) events: Vec<Entry>,
}

/// Random draws for one line.
pub(super) struct Draw<'a> {
    pub(super) rng: &'a mut Xoshiro256PlusPlus,
    pub(super) dtime_bins: u64,
    pub(super) dead_time: u64,
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
    pub(super) fn run(
        &mut self,
        a: u64,
        len: u64,
        rate: f64,
        tag: Entry,
        next_free: &mut u64,
        out: &mut Vec<Entry>,
    ) {
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
            if tick >= *next_free {
                // Non-paralysable: only a recorded count starts a dead time.
                *next_free = tick.saturating_add(self.dead_time);
                // Multiply-shift: bias below bins / 2^64, far under any test's reach.
                let dtime = if self.dtime_bins > 1 {
                    ((u128::from(self.rng.next_u64()) * u128::from(self.dtime_bins)) >> 64) as u16
                } else {
                    0
                };
                out.push(Entry { tick, dtime, ..tag });
            } else {
                out.push(Entry {
                    tick,
                    kind: tag.kind | LOST,
                    ..tag
                });
            }
            off += self.exp() * inv;
        }
    }
}

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

/// Merge the markers and every polarity's events by tick; at equal ticks markers come
/// first (an event on a line start belongs to the new line), then polarities in order.
pub(super) fn merge(
    line: &mut Vec<Entry>,
    markers: &[Entry],
    pols: &[Pol],
    scratch: &mut [Vec<Entry>; 2],
) {
    let [events, spare] = scratch;
    match pols {
        [] => merge2(markers, &[], line),
        [p] => merge2(markers, &p.events, line),
        [p, q, rest @ ..] => {
            merge2(&p.events, &q.events, events);
            for r in rest {
                merge2(events, &r.events, spare);
                std::mem::swap(events, spare);
            }
            merge2(markers, events, line);
        }
    }
}

/// Two sorted runs into `out`; on equal ticks `a` goes first.
fn merge2(a: &[Entry], b: &[Entry], out: &mut Vec<Entry>) {
    out.clear();
    out.reserve(a.len() + b.len());
    let (mut i, mut j) = (0, 0);
    while let (Some(x), Some(y)) = (a.get(i), b.get(j)) {
        if y.tick < x.tick {
            out.push(*y);
            j += 1;
        } else {
            out.push(*x);
            i += 1;
        }
    }
    out.extend_from_slice(&a[i..]);
    out.extend_from_slice(&b[j..]);
}
