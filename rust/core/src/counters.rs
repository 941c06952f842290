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

/// Running totals since the engine was created. Plain integers so a batch's statistics
/// are the difference of two snapshots.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// TTTR records decoded (of every kind).
    pub records: u64,
    /// Detector events among them.
    pub events: u64,
    pub binned: u64,
    pub rejected: [u64; Reject::COUNT],
    /// Events held by the line still open (not yet binned or rejected).
    pub pending: u64,
    pub markers: u64,
    pub frame_markers: u64,
    pub line_starts: u64,
    pub line_stops: u64,
    pub mass_switches: u64,
    /// Marker records earlier than the record before them: ignored.
    pub markers_out_of_order: u64,
    /// Overflow records, and the wrap periods they added.
    pub overflow_records: u64,
    pub wraps: u64,
    /// T2 sync-input records.
    pub syncs: u64,
    /// Records with no valid layout.
    pub malformed: u64,
    pub lines_good: u64,
    pub lines_bad: u64,
    /// Frames that did not have exactly `ny` lines.
    pub frames_bad_line_count: u64,
    /// Times the cubes were rebinned to stay inside the memory budget.
    pub rebins: u64,
    /// Live-link frames accepted, lost (sequence gaps), failing their checksum, or
    /// rejected for a header that disagrees with the configuration.
    pub link_frames: u64,
    pub link_frames_lost: u64,
    pub link_loss_intervals: u64,
    pub link_frames_corrupt: u64,
    pub link_frames_rejected: u64,
    /// Bytes skipped while looking for the next frame after garbage on the link.
    pub link_bytes_skipped: u64,
}

impl Counters {
    pub fn rejected_total(&self) -> u64 {
        self.rejected.iter().sum()
    }

    /// `after - before`, field by field: the statistics of one batch.
    pub fn since(&self, before: &Counters) -> Counters {
        let mut d = *self;
        d.rejected
            .iter_mut()
            .zip(before.rejected.iter())
            .for_each(|(a, b)| *a -= b);
        for (a, b) in d.scalars_mut().into_iter().zip(before.scalars()) {
            *a = a.wrapping_sub(b);
        }
        // `pending` is a level, not a total: a batch reports the level after it.
        d.pending = self.pending;
        d
    }

    /// Every scalar counter with its published name.
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

    const NAMES: [&'static str; 24] = [
        "records",
        "events",
        "binned",
        "pending",
        "markers",
        "frame_markers",
        "line_starts",
        "line_stops",
        "mass_switches",
        "markers_out_of_order",
        "overflow_records",
        "wraps",
        "syncs",
        "malformed",
        "lines_good",
        "lines_bad",
        "frames_bad_line_count",
        "rebins",
        "link_frames",
        "link_frames_lost",
        "link_loss_intervals",
        "link_frames_corrupt",
        "link_frames_rejected",
        "link_bytes_skipped",
    ];

    fn scalars(&self) -> [u64; 24] {
        [
            self.records,
            self.events,
            self.binned,
            self.pending,
            self.markers,
            self.frame_markers,
            self.line_starts,
            self.line_stops,
            self.mass_switches,
            self.markers_out_of_order,
            self.overflow_records,
            self.wraps,
            self.syncs,
            self.malformed,
            self.lines_good,
            self.lines_bad,
            self.frames_bad_line_count,
            self.rebins,
            self.link_frames,
            self.link_frames_lost,
            self.link_loss_intervals,
            self.link_frames_corrupt,
            self.link_frames_rejected,
            self.link_bytes_skipped,
        ]
    }

    fn scalars_mut(&mut self) -> [&mut u64; 24] {
        [
            &mut self.records,
            &mut self.events,
            &mut self.binned,
            &mut self.pending,
            &mut self.markers,
            &mut self.frame_markers,
            &mut self.line_starts,
            &mut self.line_stops,
            &mut self.mass_switches,
            &mut self.markers_out_of_order,
            &mut self.overflow_records,
            &mut self.wraps,
            &mut self.syncs,
            &mut self.malformed,
            &mut self.lines_good,
            &mut self.lines_bad,
            &mut self.frames_bad_line_count,
            &mut self.rebins,
            &mut self.link_frames,
            &mut self.link_frames_lost,
            &mut self.link_loss_intervals,
            &mut self.link_frames_corrupt,
            &mut self.link_frames_rejected,
            &mut self.link_bytes_skipped,
        ]
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
