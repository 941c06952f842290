//! Counters that account for every record. The invariant the tests hold us to:
//! `events == binned + sum(rejected) + pending`.

/// Why an event did not reach a cube. The order is the order of the checks in
/// `docs/raster.md`; the names are what Python and the published stream show.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Reject {
    BeforeFirstFrame,
    BeforeFirstLine,
    Flyback,
    LineSettle,
    MassSettle,
    LineOverrun,
    BadLine,
    LinkGap,
    UnknownChannel,
    OutOfOrder,
    Budget,
}

impl Reject {
    pub const COUNT: usize = 11;
    pub const ALL: [Reject; Reject::COUNT] = [
        Reject::BeforeFirstFrame,
        Reject::BeforeFirstLine,
        Reject::Flyback,
        Reject::LineSettle,
        Reject::MassSettle,
        Reject::LineOverrun,
        Reject::BadLine,
        Reject::LinkGap,
        Reject::UnknownChannel,
        Reject::OutOfOrder,
        Reject::Budget,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Reject::BeforeFirstFrame => "before_first_frame",
            Reject::BeforeFirstLine => "before_first_line",
            Reject::Flyback => "flyback",
            Reject::LineSettle => "line_settle",
            Reject::MassSettle => "mass_settle",
            Reject::LineOverrun => "line_overrun",
            Reject::BadLine => "bad_line",
            Reject::LinkGap => "link_gap",
            Reject::UnknownChannel => "unknown_channel",
            Reject::OutOfOrder => "out_of_order",
            Reject::Budget => "budget",
        }
    }
}

/// Declares the scalar counters once: the struct fields, their published names, and
/// the field-by-field access that batch differences need.
macro_rules! scalar_counters {
    ($($(#[$doc:meta])* $name:ident,)*) => {
        /// Running totals since the engine was created. Plain integers so a batch's
        /// statistics are the difference of two snapshots.
        #[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
        pub struct Counters {
            $($(#[$doc])* pub $name: u64,)*
            pub rejected: [u64; Reject::COUNT],
        }

        impl Counters {
            const NAMES: &'static [&'static str] = &[$(stringify!($name)),*];

            fn scalars(&self) -> Vec<u64> {
                vec![$(self.$name),*]
            }

            fn scalars_mut(&mut self) -> Vec<&mut u64> {
                vec![$(&mut self.$name),*]
            }
        }
    };
}

scalar_counters! {
    /// TTTR records decoded (of every kind).
    records,
    /// Detector events among them.
    events,
    binned,
    /// Events held by the line still open (not yet binned or rejected): a level, not a
    /// total.
    pending,
    markers,
    frame_markers,
    line_starts,
    line_stops,
    mass_switches,
    /// Marker records earlier than the record before them: ignored.
    markers_out_of_order,
    /// Overflow records, and the wrap periods they added.
    overflow_records,
    wraps,
    /// T2 sync-input records.
    syncs,
    /// Records with no valid layout.
    malformed,
    lines_good,
    lines_bad,
    /// Frames that did not have exactly `ny` lines.
    frames_bad_line_count,
    /// Times the cubes were rebinned to stay inside the memory budget.
    rebins,
    /// Live-link frames accepted, lost (sequence gaps), failing their checksum, or rejected
    /// for a header that disagrees with the configuration.
    link_frames,
    link_frames_lost,
    link_loss_intervals,
    link_frames_corrupt,
    link_frames_rejected,
    /// Bytes skipped while looking for the next frame after garbage on the link.
    link_bytes_skipped,
}

impl Counters {
    pub fn rejected_total(&self) -> u64 {
        self.rejected.iter().sum()
    }

    /// `after - before`, field by field: the statistics of one batch.
    pub fn since(&self, before: &Counters) -> Counters {
        let mut d = *self;
        for (a, b) in d.rejected.iter_mut().zip(before.rejected) {
            *a = a.wrapping_sub(b);
        }
        for (a, b) in d.scalars_mut().into_iter().zip(before.scalars()) {
            *a = a.wrapping_sub(b);
        }
        // `pending` is a level, not a total: a batch reports the level after it.
        d.pending = self.pending;
        d
    }

    /// Every counter with its published name, then the total of the rejections.
    pub fn named(&self) -> Vec<(&'static str, u64)> {
        let mut out: Vec<(&'static str, u64)> =
            Self::NAMES.iter().copied().zip(self.scalars()).collect();
        out.extend(
            Reject::ALL
                .iter()
                .map(|r| (r.name(), self.rejected[*r as usize])),
        );
        out.push(("rejected_total", self.rejected_total()));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_is_fieldwise_difference_and_keeps_pending_level() {
        let mut a = Counters {
            records: 10,
            events: 8,
            pending: 3,
            ..Default::default()
        };
        a.rejected[Reject::Flyback as usize] = 2;
        let mut b = a;
        b.records = 25;
        b.events = 20;
        b.pending = 1;
        b.rejected[Reject::Flyback as usize] = 5;
        let d = b.since(&a);
        assert_eq!(d.records, 15);
        assert_eq!(d.events, 12);
        assert_eq!(d.pending, 1);
        assert_eq!(d.rejected[Reject::Flyback as usize], 3);
    }

    #[test]
    fn names_are_unique() {
        let c = Counters::default();
        let names: Vec<_> = c.named().into_iter().map(|(n, _)| n).collect();
        let mut sorted = names.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), names.len());
    }
}
