//! Link framing on the sending side: records go into the current frame as the encoder
//! writes them, and a frame is cut every `max` records. A header must say what the
//! receiver needs to resume at that frame alone: the overflow base and raster position
//! before its first record, even when the cut falls among overflow records.

use crate::error::Result;
use crate::link::encode::Encoder;
use crate::link::frame::{self, FrameHeader};
use crate::link::tttr::{Decoder, RecordSink, RecordType};

/// Frames the records as they are written, cutting at `max` records.
#[derive(Debug)]
pub(super) struct LinkWriter {
    enc: Encoder,
    kind: RecordType,
    template: FrameHeader,
    max: usize,
    cur: Vec<u32>,
    /// Frame markers, and line starts since the last, after every record written.
    position: (u64, u32),
    /// Overflow base and raster position before `cur[0]`: the next header's values.
    head: (u64, u64, u32),
    out: Vec<Vec<u8>>,
    records: u64,
    overflow_records: u64,
    /// Ticks of base that `skip_to` added without overflow records.
    skipped: u64,
}

impl LinkWriter {
    /// `template` gives every header field that does not change from frame to frame.
    pub(super) fn new(kind: RecordType, template: FrameHeader, max: usize) -> Self {
        LinkWriter {
            enc: Encoder::new(kind),
            kind,
            template,
            max,
            cur: Vec::new(),
            position: (0, 0),
            head: (0, 0, 0),
            out: Vec::new(),
            records: 0,
            overflow_records: 0,
            skipped: 0,
        }
    }

    /// Move the time base to just below `tick` without sending the overflows between, as
    /// a front-end whose counter has run since long before this link (at the start), or
    /// whose counter jumped (`Emitter::jump`): the next header's base covers them, so
    /// neither opens with a flood of overflow records. Records written so far go out in a
    /// frame of their own first, since a header's base holds for its whole frame.
    pub(super) fn skip_to(&mut self, tick: u64) {
        let period = self.kind.overflow_rule().period;
        let (from, to) = (self.enc.overflow_base(), tick / period * period);
        if to <= from {
            return;
        }
        if !self.cur.is_empty() {
            self.seal(self.cur.len());
        }
        self.enc = Encoder::starting_at(self.kind, to);
        self.skipped += to - from;
        self.head = (to, self.position.0, self.position.1);
    }

    /// Frames sealed from now on say they were sent at `tick`.
    pub(super) fn begin(&mut self, tick: u64) {
        self.template.sent_tick = tick;
    }
    pub(super) fn next_sequence(&self) -> u64 {
        self.template.sequence
    }
    /// Records written (overflows included), the overflow records among them, and the
    /// wrap periods they added.
    pub(super) fn counts(&self) -> (u64, u64, u64) {
        let added = self.enc.overflow_base() - self.skipped;
        let wraps = added / self.kind.overflow_rule().period;
        (self.records, self.overflow_records, wraps)
    }

    pub(super) fn event(&mut self, tick: u64, channel: u8, dtime: u16) -> Result<()> {
        let (at, base) = (self.cur.len(), self.enc.overflow_base());
        self.enc.event(tick, channel, dtime, &mut self.cur)?;
        self.wrote(at, base, 0);
        Ok(())
    }

    pub(super) fn marker(&mut self, tick: u64, mask: u8) -> Result<()> {
        let (at, base) = (self.cur.len(), self.enc.overflow_base());
        self.enc.marker(tick, mask, &mut self.cur)?;
        self.wrote(at, base, mask);
        Ok(())
    }

    /// The encoder appended overflow records and one record at `cur[at..]`; cut frames
    /// while `cur` is full. A cut among the overflow records needs the base there.
    fn wrote(&mut self, mut at: usize, mut base: u64, mask: u8) {
        let n = (self.cur.len() - at) as u64;
        self.records += n;
        self.overflow_records += n - 1;
        if mask == 0 && self.cur.len() < self.max {
            return; // the common case: an event, no cut
        }
        let (mut frames, mut lines) = self.position;
        // A record's bits act in the order line stop, frame, line start (docs/raster.md).
        if mask & self.template.frame_mask != 0 {
            (frames, lines) = (frames + 1, 0);
        }
        if mask & self.template.line_start_mask != 0 {
            lines += 1;
        }
        while self.cur.len() >= self.max {
            let cut = self.max;
            let head = if cut == self.cur.len() {
                (self.enc.overflow_base(), frames, lines)
            } else {
                let b = base_after(self.kind, base, &self.cur[at..cut]);
                (b, self.position.0, self.position.1)
            };
            self.seal(cut);
            self.head = head;
            (at, base) = (0, head.0);
        }
        self.position = (frames, lines);
    }

    fn seal(&mut self, n: usize) {
        let h = FrameHeader {
            overflow_base: self.head.0,
            frame_markers: self.head.1,
            line_starts: self.head.2,
            ..self.template
        };
        self.out.push(frame::encode(&h, &self.cur[..n]));
        self.cur.drain(..n);
        self.template.sequence += 1;
    }

    /// Seal what is left (an empty frame still carries a clock pair) and hand the frames over.
    pub(super) fn finish(&mut self) -> Vec<Vec<u8>> {
        self.seal(self.cur.len());
        self.head = (self.enc.overflow_base(), self.position.0, self.position.1);
        std::mem::take(&mut self.out)
    }
}

/// The overflow base after `overflows` (overflow records only), starting from `base`.
fn base_after(kind: RecordType, base: u64, overflows: &[u32]) -> u64 {
    struct Ignore;
    impl RecordSink for Ignore {
        fn event(&mut self, _: u64, _: u8, _: u16) {}
        fn marker(&mut self, _: u64, _: u8) {}
    }
    let mut d = Decoder::new(kind);
    d.set_overflow_base(base);
    d.feed(overflows, &mut Ignore);
    d.overflow_base()
}
