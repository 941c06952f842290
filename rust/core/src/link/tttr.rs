//! PicoQuant TTTR records: decoding and unwrapping into monotonic 64-bit device ticks.
//!
//! Bit layouts, overflow rules and marker semantics are written down in
//! `docs/tttr-records.md`; the `OverflowRule` table below is the code side of it.

use crate::error::{CoreError, Result};

/// The record families opsims decodes, keyed by PicoQuant's `TTResultFormat_TTTRRecType`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RecordType {
    PicoHarpT2,
    PicoHarpT3,
    HydraHarpV1T2,
    HydraHarpV1T3,
    /// HydraHarp V2, TimeHarp 260 N/P, MultiHarp and the generic layout share one format.
    GenericT2,
    GenericT3,
}

/// How overflow records of one record type advance the time base.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OverflowRule {
    /// Ticks added per wrap of the time field.
    pub period: u64,
    /// The record carries a wrap count (0 is read as 1); otherwise each record is one wrap.
    pub counted: bool,
}

impl RecordType {
    /// Every variant, in a fixed order.
    pub const ALL: [RecordType; 6] = [
        RecordType::PicoHarpT2,
        RecordType::PicoHarpT3,
        RecordType::HydraHarpV1T2,
        RecordType::HydraHarpV1T3,
        RecordType::GenericT2,
        RecordType::GenericT3,
    ];

    /// Every record type code `from_code` knows (several share a layout).
    pub const KNOWN_CODES: [u32; 12] = [
        0x0001_0203,
        0x0001_0303,
        0x0001_0204,
        0x0001_0304,
        0x0101_0204,
        0x0101_0304,
        0x0001_0205,
        0x0001_0305,
        0x0001_0206,
        0x0001_0306,
        0x0001_0207,
        0x0001_0307,
    ];

    pub fn from_code(code: u32) -> Result<Self> {
        match code {
            0x0001_0203 => Ok(RecordType::PicoHarpT2),
            0x0001_0303 => Ok(RecordType::PicoHarpT3),
            0x0001_0204 => Ok(RecordType::HydraHarpV1T2),
            0x0001_0304 => Ok(RecordType::HydraHarpV1T3),
            // HydraHarp V2, TimeHarp 260 N, TimeHarp 260 P, MultiHarp / generic.
            0x0101_0204 | 0x0001_0205 | 0x0001_0206 | 0x0001_0207 => Ok(RecordType::GenericT2),
            0x0101_0304 | 0x0001_0305 | 0x0001_0306 | 0x0001_0307 => Ok(RecordType::GenericT3),
            _ => Err(CoreError::UnknownRecordType(code)),
        }
    }

    /// Canonical code: the generic variants answer with the MultiHarp/generic code.
    pub fn code(self) -> u32 {
        match self {
            RecordType::PicoHarpT2 => 0x0001_0203,
            RecordType::PicoHarpT3 => 0x0001_0303,
            RecordType::HydraHarpV1T2 => 0x0001_0204,
            RecordType::HydraHarpV1T3 => 0x0001_0304,
            RecordType::GenericT2 => 0x0001_0207,
            RecordType::GenericT3 => 0x0001_0307,
        }
    }

    pub fn is_t3(self) -> bool {
        matches!(
            self,
            RecordType::PicoHarpT3 | RecordType::HydraHarpV1T3 | RecordType::GenericT3
        )
    }

    /// Short stable name of the layout (the variant name).
    pub fn name(self) -> &'static str {
        match self {
            RecordType::PicoHarpT2 => "PicoHarpT2",
            RecordType::PicoHarpT3 => "PicoHarpT3",
            RecordType::HydraHarpV1T2 => "HydraHarpV1T2",
            RecordType::HydraHarpV1T3 => "HydraHarpV1T3",
            RecordType::GenericT2 => "GenericT2",
            RecordType::GenericT3 => "GenericT3",
        }
    }

    /// Instrument name of a known code, finer than the layout (several codes share one).
    pub fn code_name(code: u32) -> Option<&'static str> {
        Some(match code {
            0x0001_0203 => "PicoHarp T2",
            0x0001_0303 => "PicoHarp T3",
            0x0001_0204 => "HydraHarp V1 T2",
            0x0001_0304 => "HydraHarp V1 T3",
            0x0101_0204 => "HydraHarp V2 T2",
            0x0101_0304 => "HydraHarp V2 T3",
            0x0001_0205 => "TimeHarp 260N T2",
            0x0001_0305 => "TimeHarp 260N T3",
            0x0001_0206 => "TimeHarp 260P T2",
            0x0001_0306 => "TimeHarp 260P T3",
            0x0001_0207 => "Generic T2",
            0x0001_0307 => "Generic T3",
            _ => return None,
        })
    }

    /// The overflow table. PicoHarp T2 wraps at 210698240, not at 2^28: the counter
    /// is reset by the hardware there. HydraHarp V1 ignores the count field.
    pub const fn overflow_rule(self) -> OverflowRule {
        match self {
            RecordType::PicoHarpT2 => OverflowRule {
                period: 210_698_240,
                counted: false,
            },
            RecordType::PicoHarpT3 => OverflowRule {
                period: 65_536,
                counted: false,
            },
            RecordType::HydraHarpV1T2 => OverflowRule {
                period: 33_552_000,
                counted: false,
            },
            RecordType::HydraHarpV1T3 => OverflowRule {
                period: 1_024,
                counted: false,
            },
            RecordType::GenericT2 => OverflowRule {
                period: 33_554_432,
                counted: true,
            },
            RecordType::GenericT3 => OverflowRule {
                period: 1_024,
                counted: true,
            },
        }
    }

    /// Width in bits of the time field (T2 time tag, T3 sync count).
    pub const fn time_bits(self) -> u32 {
        match self {
            RecordType::PicoHarpT2 => 28,
            RecordType::PicoHarpT3 => 16,
            RecordType::HydraHarpV1T2 | RecordType::GenericT2 => 25,
            RecordType::HydraHarpV1T3 | RecordType::GenericT3 => 10,
        }
    }

    /// Where this layout's plain detector events keep their fields.
    pub fn event_layout(self) -> &'static EventLayout {
        match self {
            RecordType::PicoHarpT2 => &<PicoHarpT2 as Layout>::EVENTS,
            RecordType::PicoHarpT3 => &<PicoHarpT3 as Layout>::EVENTS,
            RecordType::HydraHarpV1T2 => &<HydraHarp<false, false> as Layout>::EVENTS,
            RecordType::HydraHarpV1T3 => &<HydraHarp<true, false> as Layout>::EVENTS,
            RecordType::GenericT2 => &<HydraHarp<false, true> as Layout>::EVENTS,
            RecordType::GenericT3 => &<HydraHarp<true, true> as Layout>::EVENTS,
        }
    }

    /// Number of detector channels a valid event can carry (0-based, below this).
    pub const fn channels(self) -> u8 {
        match self {
            RecordType::PicoHarpT2 => 5,
            RecordType::PicoHarpT3 => 4,
            _ => 64,
        }
    }
}

/// Where a plain detector-event record keeps its fields: what a sink needs to take runs
/// of them in bulk (`RecordSink::events`) without a call per record.
#[derive(Debug)]
pub struct EventLayout {
    /// Distinct and nonzero per layout, so a sink can cache tables built for one.
    pub id: u8,
    /// `record >> key_shift` (below 128) tells what the record is.
    pub key_shift: u32,
    /// Per key: the 0-based channel of a detector event, [`OVERFLOW`] or [`NOT_EVENT`].
    pub channel: [u8; 128],
    /// The tick within the current time base (T2: time tag; T3: sync count).
    pub time_mask: u32,
    /// How overflow records advance the time base.
    pub overflow: OverflowRule,
}

/// `EventLayout::channel` of a key that is not a detector event (special or malformed).
pub const NOT_EVENT: u8 = u8::MAX;
/// `EventLayout::channel` of the key of overflow records, where the key alone tells them.
pub const OVERFLOW: u8 = u8::MAX - 1;

impl EventLayout {
    /// Keys `first..first + n` are channels `0..n`, `overflow` (if below 128) is the
    /// overflow key, and every other key is not an event.
    const fn new(
        kind: RecordType,
        id: u8,
        key_shift: u32,
        first: usize,
        n: usize,
        overflow: usize,
    ) -> Self {
        let mut channel = [NOT_EVENT; 128];
        let mut k = first;
        while k < first + n {
            channel[k] = (k - first) as u8;
            k += 1;
        }
        if overflow < 128 {
            channel[overflow] = OVERFLOW;
        }
        EventLayout {
            id,
            key_shift,
            channel,
            time_mask: (1 << kind.time_bits()) - 1,
            overflow: kind.overflow_rule(),
        }
    }
}

/// Receives decoded records in stream order. Generic so the decoder inlines into each user.
pub trait RecordSink {
    /// A detector event: absolute device tick (T2: time tag; T3: sync count), 0-based
    /// input channel, and the T3 fine time (0 in T2).
    fn event(&mut self, tick: u64, channel: u8, dtime: u16);
    /// A marker record: absolute tick and the marker bit mask (bit 0 = marker 1).
    fn marker(&mut self, tick: u64, mask: u8);
    /// A T2 sync-input record (not a detector event).
    fn sync(&mut self, _tick: u64) {}
    /// An overflow record that advanced the time base by `count` wrap periods.
    fn overflow(&mut self, _count: u64) {}
    /// A record that fits no valid layout (reserved channel, invalid marker code).
    fn malformed(&mut self, _record: u32) {}
    /// Offered before each record: the sink may take a prefix of `records` made of
    /// detector events and overflow records only (as `layout` tells them), with the same
    /// effect as the `event` and `overflow` calls they would make, advancing the time
    /// base `base` over the overflows it takes; returns how many records it took.
    #[inline(always)]
    fn events(&mut self, _records: &[u32], _base: &mut u64, _layout: &EventLayout) -> usize {
        0
    }
}

/// Unwraps one record stream. State is kept between `feed` calls.
#[derive(Debug, Clone)]
pub struct Decoder {
    kind: RecordType,
    overflow_ticks: u64,
}

impl Decoder {
    pub fn new(kind: RecordType) -> Self {
        Decoder {
            kind,
            overflow_ticks: 0,
        }
    }
    pub fn kind(&self) -> RecordType {
        self.kind
    }
    /// Ticks added so far by overflow records (the high part of the next tick).
    pub fn overflow_base(&self) -> u64 {
        self.overflow_ticks
    }
    /// Resynchronise after a link gap from the base the sender put in the frame header.
    pub fn set_overflow_base(&mut self, ticks: u64) {
        self.overflow_ticks = ticks;
    }
    pub fn feed<S: RecordSink>(&mut self, records: &[u32], sink: &mut S) {
        // One dispatch per call; the loop below is monomorphised per layout and sink.
        let base = &mut self.overflow_ticks;
        match self.kind {
            RecordType::PicoHarpT2 => run::<PicoHarpT2, S>(records, base, sink),
            RecordType::PicoHarpT3 => run::<PicoHarpT3, S>(records, base, sink),
            RecordType::HydraHarpV1T2 => run::<HydraHarp<false, false>, S>(records, base, sink),
            RecordType::HydraHarpV1T3 => run::<HydraHarp<true, false>, S>(records, base, sink),
            RecordType::GenericT2 => run::<HydraHarp<false, true>, S>(records, base, sink),
            RecordType::GenericT3 => run::<HydraHarp<true, true>, S>(records, base, sink),
        }
    }
}

/// One record layout. `step` decodes a record and advances `base` on overflow.
trait Layout {
    const EVENTS: EventLayout;
    fn step<S: RecordSink>(rec: u32, base: &mut u64, sink: &mut S);
}

#[inline]
fn run<L: Layout, S: RecordSink>(records: &[u32], base: &mut u64, sink: &mut S) {
    // A local copy lets the base live in a register for the whole loop.
    let mut b = *base;
    let mut rest = records;
    loop {
        // Runs of plain events go to the sink in bulk; it hands back what it cannot take.
        let taken = sink.events(rest, &mut b, &L::EVENTS);
        let Some((&rec, tail)) = rest[taken..].split_first() else {
            break;
        };
        L::step(rec, &mut b, sink);
        rest = tail;
    }
    *base = b;
}

/// Special channel value of both PicoHarp layouts.
const PH_SPECIAL: u32 = 15;

struct PicoHarpT2;
impl Layout for PicoHarpT2 {
    const EVENTS: EventLayout = EventLayout::new(RecordType::PicoHarpT2, 1, 28, 0, 5, 128);
    #[inline(always)]
    fn step<S: RecordSink>(rec: u32, base: &mut u64, sink: &mut S) {
        const PERIOD: u64 = RecordType::PicoHarpT2.overflow_rule().period;
        let channel = rec >> 28;
        let time = u64::from(rec & 0x0FFF_FFFF);
        if channel == PH_SPECIAL {
            // The low 4 bits of the time tag are the marker code; 0 means overflow.
            let code = (rec & 0xF) as u8;
            if code == 0 {
                *base = base.wrapping_add(PERIOD);
                sink.overflow(1);
            } else {
                sink.marker(base.wrapping_add(time), code);
            }
        } else if channel < u32::from(RecordType::PicoHarpT2.channels()) {
            sink.event(base.wrapping_add(time), channel as u8, 0);
        } else {
            sink.malformed(rec);
        }
    }
}

struct PicoHarpT3;
impl Layout for PicoHarpT3 {
    // Channels 1..=4 on the wire, reported 0-based.
    const EVENTS: EventLayout = EventLayout::new(RecordType::PicoHarpT3, 2, 28, 1, 4, 128);
    #[inline(always)]
    fn step<S: RecordSink>(rec: u32, base: &mut u64, sink: &mut S) {
        const PERIOD: u64 = RecordType::PicoHarpT3.overflow_rule().period;
        let channel = rec >> 28;
        let dtime = ((rec >> 16) & 0xFFF) as u16;
        let nsync = u64::from(rec & 0xFFFF);
        if channel == PH_SPECIAL {
            // dtime holds the marker code; only 4 marker bits exist, so more is invalid.
            if dtime == 0 {
                *base = base.wrapping_add(PERIOD);
                sink.overflow(1);
            } else if dtime <= 0xF {
                sink.marker(base.wrapping_add(nsync), dtime as u8);
            } else {
                sink.malformed(rec);
            }
        } else if (1..=u32::from(RecordType::PicoHarpT3.channels())).contains(&channel) {
            // Hardware channels are 1-based here; report 0-based.
            sink.event(base.wrapping_add(nsync), (channel - 1) as u8, dtime);
        } else {
            sink.malformed(rec);
        }
    }
}

/// HydraHarp-style layout: bit 31 special, 6-bit channel, then (T3) 15-bit dtime and
/// 10-bit nsync, or (T2) a 25-bit time tag. `COUNTED` selects V2/generic overflows.
struct HydraHarp<const T3: bool, const COUNTED: bool>;
impl<const T3: bool, const COUNTED: bool> HydraHarp<T3, COUNTED> {
    const KIND: RecordType = match (T3, COUNTED) {
        (false, false) => RecordType::HydraHarpV1T2,
        (true, false) => RecordType::HydraHarpV1T3,
        (false, true) => RecordType::GenericT2,
        (true, true) => RecordType::GenericT3,
    };
    const PERIOD: u64 = Self::KIND.overflow_rule().period;
    const TIME_MASK: u32 = (1 << Self::KIND.time_bits()) - 1;
}
const HH_OVERFLOW: u8 = 63;
impl<const T3: bool, const COUNTED: bool> Layout for HydraHarp<T3, COUNTED> {
    // Key = special bit and channel: the 64 keys without the special bit are events, and
    // the special channel 63 is an overflow.
    const EVENTS: EventLayout =
        EventLayout::new(Self::KIND, 3 + T3 as u8 + 2 * COUNTED as u8, 25, 0, 64, 127);
    #[inline(always)]
    fn step<S: RecordSink>(rec: u32, base: &mut u64, sink: &mut S) {
        let special = rec >> 31 != 0;
        let channel = ((rec >> 25) & 0x3F) as u8;
        let time = rec & Self::TIME_MASK;
        if !special {
            let dtime = if T3 { ((rec >> 10) & 0x7FFF) as u16 } else { 0 };
            sink.event(base.wrapping_add(u64::from(time)), channel, dtime);
        } else if channel == HH_OVERFLOW {
            // Real V2 files write count 0 for a single wrap.
            let count = if COUNTED { u64::from(time.max(1)) } else { 1 };
            *base = base.wrapping_add(count.wrapping_mul(Self::PERIOD));
            sink.overflow(count);
        } else if (1..=15).contains(&channel) {
            sink.marker(base.wrapping_add(u64::from(time)), channel);
        } else if channel == 0 && !T3 {
            sink.sync(base.wrapping_add(u64::from(time)));
        } else {
            sink.malformed(rec);
        }
    }
}

/// What one record was, as reported in `RecordColumns::kind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum RecordKind {
    Event = 0,
    Marker = 1,
    Overflow = 2,
    Sync = 3,
    Malformed = 4,
}

/// Column-wise decode of a record slice: one row per input record.
/// Overflow rows carry the time base after the wrap; malformed rows the current base.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecordColumns {
    pub kind: Vec<u8>,
    pub tick: Vec<u64>,
    pub channel: Vec<u8>,
    pub dtime: Vec<u16>,
    pub marker: Vec<u8>,
    base: u64,
    period: u64,
}

impl RecordColumns {
    fn with_capacity(n: usize, base: u64, period: u64) -> Self {
        RecordColumns {
            kind: Vec::with_capacity(n),
            tick: Vec::with_capacity(n),
            channel: Vec::with_capacity(n),
            dtime: Vec::with_capacity(n),
            marker: Vec::with_capacity(n),
            base,
            period,
        }
    }
    fn push(&mut self, kind: RecordKind, tick: u64, channel: u8, dtime: u16, marker: u8) {
        self.kind.push(kind as u8);
        self.tick.push(tick);
        self.channel.push(channel);
        self.dtime.push(dtime);
        self.marker.push(marker);
    }
}

impl RecordSink for RecordColumns {
    fn event(&mut self, tick: u64, channel: u8, dtime: u16) {
        self.push(RecordKind::Event, tick, channel, dtime, 0);
    }
    fn marker(&mut self, tick: u64, mask: u8) {
        self.push(RecordKind::Marker, tick, 0, 0, mask);
    }
    fn sync(&mut self, tick: u64) {
        self.push(RecordKind::Sync, tick, 0, 0, 0);
    }
    fn overflow(&mut self, count: u64) {
        self.base = self.base.wrapping_add(count.wrapping_mul(self.period));
        self.push(RecordKind::Overflow, self.base, 0, 0, 0);
    }
    fn malformed(&mut self, _record: u32) {
        self.push(RecordKind::Malformed, self.base, 0, 0, 0);
    }
}

impl RecordColumns {
    /// Empty columns for `kind`, to be filled by [`Decoder::feed`] from `base`.
    pub fn new(kind: RecordType, base: u64) -> Self {
        RecordColumns::with_capacity(0, base, kind.overflow_rule().period)
    }

    /// Records decoded so far.
    pub fn len(&self) -> usize {
        self.kind.len()
    }

    pub fn is_empty(&self) -> bool {
        self.kind.is_empty()
    }

    /// The time base the next records continue from (a frame header's overflow base).
    pub fn rebase(&mut self, base: u64) {
        self.base = base;
    }
}

/// Decodes `records` from a zero time base into columns (for file analysis and tests).
pub fn decode_columns(kind: RecordType, records: &[u32]) -> RecordColumns {
    let mut cols = RecordColumns::with_capacity(records.len(), 0, kind.overflow_rule().period);
    Decoder::new(kind).feed(records, &mut cols);
    cols
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Ev {
        Event(u64, u8, u16),
        Marker(u64, u8),
        Sync(u64),
        Overflow(u64),
        Malformed(u32),
    }

    #[derive(Default)]
    struct Rec(Vec<Ev>);
    impl RecordSink for Rec {
        fn event(&mut self, tick: u64, channel: u8, dtime: u16) {
            self.0.push(Ev::Event(tick, channel, dtime));
        }
        fn marker(&mut self, tick: u64, mask: u8) {
            self.0.push(Ev::Marker(tick, mask));
        }
        fn sync(&mut self, tick: u64) {
            self.0.push(Ev::Sync(tick));
        }
        fn overflow(&mut self, count: u64) {
            self.0.push(Ev::Overflow(count));
        }
        fn malformed(&mut self, record: u32) {
            self.0.push(Ev::Malformed(record));
        }
    }

    fn decode(kind: RecordType, recs: &[u32]) -> Vec<Ev> {
        let mut sink = Rec::default();
        Decoder::new(kind).feed(recs, &mut sink);
        sink.0
    }

    // Record builders, written from the documented layouts.
    fn ph_t2(channel: u32, time: u32) -> u32 {
        (channel << 28) | time
    }
    fn ph_t3(channel: u32, dtime: u32, nsync: u32) -> u32 {
        (channel << 28) | (dtime << 16) | nsync
    }
    fn hh_t2(special: bool, channel: u32, time: u32) -> u32 {
        (u32::from(special) << 31) | (channel << 25) | time
    }
    fn hh_t3(special: bool, channel: u32, dtime: u32, nsync: u32) -> u32 {
        (u32::from(special) << 31) | (channel << 25) | (dtime << 10) | nsync
    }
    /// A plain event with the given time field for any layout.
    fn event_rec(kind: RecordType, time: u32) -> u32 {
        match kind {
            RecordType::PicoHarpT2 => ph_t2(1, time),
            RecordType::PicoHarpT3 => ph_t3(2, 7, time),
            RecordType::HydraHarpV1T2 | RecordType::GenericT2 => hh_t2(false, 3, time),
            RecordType::HydraHarpV1T3 | RecordType::GenericT3 => hh_t3(false, 3, 7, time),
        }
    }
    /// A single-wrap overflow record for any layout.
    fn overflow_rec(kind: RecordType) -> u32 {
        match kind {
            RecordType::PicoHarpT2 => ph_t2(15, 0),
            RecordType::PicoHarpT3 => ph_t3(15, 0, 0),
            RecordType::HydraHarpV1T2 | RecordType::GenericT2 => hh_t2(true, 63, 1),
            RecordType::HydraHarpV1T3 | RecordType::GenericT3 => hh_t3(true, 63, 0, 1),
        }
    }
    fn event_channel(kind: RecordType) -> u8 {
        match kind {
            RecordType::PicoHarpT2 => 1,
            RecordType::PicoHarpT3 => 1,
            _ => 3,
        }
    }
    fn event_dtime(kind: RecordType) -> u16 {
        if kind.is_t3() {
            7
        } else {
            0
        }
    }

    #[test]
    fn codes_round_trip() {
        for code in RecordType::KNOWN_CODES {
            let kind = RecordType::from_code(code).unwrap();
            assert_eq!(RecordType::from_code(kind.code()).unwrap(), kind);
            assert_eq!(kind.is_t3(), code & 0xFF00 == 0x0300, "{code:#x}");
            assert!(RecordType::code_name(code).is_some());
        }
        for kind in RecordType::ALL {
            assert_eq!(RecordType::from_code(kind.code()).unwrap(), kind);
            assert!(!kind.name().is_empty());
        }
        for bad in [0, 1, 0x0001_0202, 0x0001_0308, 0x0201_0204, u32::MAX] {
            assert!(matches!(
                RecordType::from_code(bad),
                Err(CoreError::UnknownRecordType(c)) if c == bad
            ));
        }
    }

    #[test]
    fn overflow_table() {
        use RecordType::*;
        let expect = [
            (PicoHarpT2, 210_698_240, false),
            (PicoHarpT3, 65_536, false),
            (HydraHarpV1T2, 33_552_000, false),
            (HydraHarpV1T3, 1_024, false),
            (GenericT2, 33_554_432, true),
            (GenericT3, 1_024, true),
        ];
        for (kind, period, counted) in expect {
            assert_eq!(
                kind.overflow_rule(),
                OverflowRule { period, counted },
                "{kind:?}"
            );
        }
    }

    #[test]
    fn wraparound_at_every_time_bit() {
        for kind in RecordType::ALL {
            let period = kind.overflow_rule().period;
            for bit in 0..kind.time_bits() {
                for wraps in 0..3u64 {
                    let field = 1u32 << bit;
                    let mut recs = vec![overflow_rec(kind); wraps as usize];
                    recs.push(event_rec(kind, field));
                    recs.push(event_rec(kind, field - 1));
                    let out = decode(kind, &recs);
                    let base = wraps * period;
                    let n = wraps as usize;
                    let (ch, dt) = (event_channel(kind), event_dtime(kind));
                    assert_eq!(
                        out[n],
                        Ev::Event(base + u64::from(field), ch, dt),
                        "{kind:?}"
                    );
                    assert_eq!(out[n + 1], Ev::Event(base + u64::from(field - 1), ch, dt));
                }
            }
            // The largest field value.
            let max = (1u32 << kind.time_bits()) - 1;
            let out = decode(kind, &[overflow_rec(kind), event_rec(kind, max)]);
            let (ch, dt) = (event_channel(kind), event_dtime(kind));
            assert_eq!(
                out[1],
                Ev::Event(period + u64::from(max), ch, dt),
                "{kind:?}"
            );
        }
    }

    #[test]
    fn picoharp_t3_layout() {
        let k = RecordType::PicoHarpT3;
        let out = decode(
            k,
            &[
                ph_t3(1, 0xABC, 0x1234),
                ph_t3(4, 0xFFF, 0xFFFF),
                ph_t3(15, 0, 0x55), // overflow: the nsync field is ignored
                ph_t3(15, 0b0101, 10),
                ph_t3(15, 0x10, 10), // marker code > 15
                ph_t3(0, 1, 1),      // channel 0 is reserved
                ph_t3(5, 1, 1),      // channels 5..14 are reserved
                ph_t3(14, 1, 1),
                ph_t3(2, 3, 4),
            ],
        );
        assert_eq!(
            out,
            vec![
                Ev::Event(0x1234, 0, 0xABC),
                Ev::Event(0xFFFF, 3, 0xFFF),
                Ev::Overflow(1),
                Ev::Marker(65_536 + 10, 0b0101),
                Ev::Malformed(ph_t3(15, 0x10, 10)),
                Ev::Malformed(ph_t3(0, 1, 1)),
                Ev::Malformed(ph_t3(5, 1, 1)),
                Ev::Malformed(ph_t3(14, 1, 1)),
                Ev::Event(65_536 + 4, 1, 3),
            ]
        );
    }

    #[test]
    fn picoharp_t2_layout() {
        let k = RecordType::PicoHarpT2;
        let out = decode(
            k,
            &[
                ph_t2(0, 100),
                ph_t2(4, 0x0FFF_FFFF),
                ph_t2(15, 0x0123_4560), // low 4 bits 0: overflow, high bits ignored
                ph_t2(15, (1000 << 4) | 0b1001),
                ph_t2(5, 7),
                ph_t2(14, 7),
                ph_t2(1, 7),
            ],
        );
        let p = 210_698_240;
        assert_eq!(
            out,
            vec![
                Ev::Event(100, 0, 0),
                Ev::Event(0x0FFF_FFFF, 4, 0),
                Ev::Overflow(1),
                // A marker's tick keeps its code bits, as the hardware writes it.
                Ev::Marker(p + ((1000 << 4) | 0b1001), 0b1001),
                Ev::Malformed(ph_t2(5, 7)),
                Ev::Malformed(ph_t2(14, 7)),
                Ev::Event(p + 7, 1, 0),
            ]
        );
    }

    #[test]
    fn hydraharp_v1_overflow_ignores_count() {
        for (kind, period) in [
            (RecordType::HydraHarpV1T3, 1_024u64),
            (RecordType::HydraHarpV1T2, 33_552_000),
        ] {
            let (ovf0, ovf5) = if kind.is_t3() {
                (hh_t3(true, 63, 0, 0), hh_t3(true, 63, 0, 5))
            } else {
                (hh_t2(true, 63, 0), hh_t2(true, 63, 5))
            };
            let out = decode(kind, &[ovf0, ovf5, event_rec(kind, 3)]);
            let (ch, dt) = (event_channel(kind), event_dtime(kind));
            assert_eq!(
                out,
                vec![
                    Ev::Overflow(1),
                    Ev::Overflow(1),
                    Ev::Event(2 * period + 3, ch, dt)
                ]
            );
        }
    }

    #[test]
    fn generic_overflow_is_counted_and_zero_means_one() {
        for (kind, period) in [
            (RecordType::GenericT3, 1_024u64),
            (RecordType::GenericT2, 33_554_432),
        ] {
            let max = (1u32 << kind.time_bits()) - 1;
            let ovf = |n: u32| {
                if kind.is_t3() {
                    hh_t3(true, 63, 0, n)
                } else {
                    hh_t2(true, 63, n)
                }
            };
            let out = decode(
                kind,
                &[ovf(0), ovf(1), ovf(30), ovf(max), event_rec(kind, 9)],
            );
            let total = 1 + 1 + 30 + u64::from(max);
            let (ch, dt) = (event_channel(kind), event_dtime(kind));
            assert_eq!(
                out,
                vec![
                    Ev::Overflow(1),
                    Ev::Overflow(1),
                    Ev::Overflow(30),
                    Ev::Overflow(u64::from(max)),
                    Ev::Event(total * period + 9, ch, dt),
                ]
            );
        }
    }

    #[test]
    fn hydraharp_t3_fields_markers_and_malformed() {
        for kind in [RecordType::HydraHarpV1T3, RecordType::GenericT3] {
            let recs = [
                hh_t3(false, 0, 0x7FFF, 0x3FF),
                hh_t3(false, 63, 1, 2),
                hh_t3(true, 63, 0, 1),
                hh_t3(true, 1, 0, 5),
                hh_t3(true, 15, 0, 6),
                hh_t3(true, 0, 0, 7),  // no sync records in T3
                hh_t3(true, 16, 0, 8), // marker codes stop at 15
                hh_t3(true, 62, 0, 9),
                hh_t3(false, 5, 100, 10),
            ];
            let out = decode(kind, &recs);
            assert_eq!(
                out,
                vec![
                    Ev::Event(0x3FF, 0, 0x7FFF),
                    Ev::Event(2, 63, 1),
                    Ev::Overflow(1),
                    Ev::Marker(1024 + 5, 1),
                    Ev::Marker(1024 + 6, 15),
                    Ev::Malformed(recs[5]),
                    Ev::Malformed(recs[6]),
                    Ev::Malformed(recs[7]),
                    Ev::Event(1024 + 10, 5, 100),
                ],
                "{kind:?}"
            );
        }
    }

    #[test]
    fn hydraharp_t2_fields_sync_markers_and_malformed() {
        for (kind, period) in [
            (RecordType::HydraHarpV1T2, 33_552_000u64),
            (RecordType::GenericT2, 33_554_432),
        ] {
            let recs = [
                hh_t2(false, 0, 0x1FF_FFFF),
                hh_t2(false, 63, 4),
                hh_t2(true, 63, 1),
                hh_t2(true, 0, 11),
                hh_t2(true, 4, 12),
                hh_t2(true, 16, 13),
                hh_t2(false, 2, 14),
            ];
            let out = decode(kind, &recs);
            assert_eq!(
                out,
                vec![
                    Ev::Event(0x1FF_FFFF, 0, 0),
                    Ev::Event(4, 63, 0),
                    Ev::Overflow(1),
                    Ev::Sync(period + 11),
                    Ev::Marker(period + 12, 4),
                    Ev::Malformed(recs[5]),
                    Ev::Event(period + 14, 2, 0),
                ],
                "{kind:?}"
            );
        }
    }

    #[test]
    fn malformed_does_not_move_time_base() {
        let bad = [
            (RecordType::PicoHarpT2, ph_t2(9, 0)),
            (RecordType::PicoHarpT3, ph_t3(0, 0, 0)),
            (RecordType::PicoHarpT3, ph_t3(15, 0xFF0, 0)),
            (RecordType::HydraHarpV1T2, hh_t2(true, 40, 0)),
            (RecordType::HydraHarpV1T3, hh_t3(true, 0, 0, 0)),
            (RecordType::GenericT2, hh_t2(true, 20, 0x1FF_FFFF)),
            (RecordType::GenericT3, hh_t3(true, 62, 0, 0x3FF)),
        ];
        for (kind, rec) in bad {
            let mut dec = Decoder::new(kind);
            let mut sink = Rec::default();
            dec.feed(&[overflow_rec(kind), rec, event_rec(kind, 1)], &mut sink);
            let p = kind.overflow_rule().period;
            assert_eq!(dec.overflow_base(), p);
            let (ch, dt) = (event_channel(kind), event_dtime(kind));
            assert_eq!(
                sink.0,
                vec![
                    Ev::Overflow(1),
                    Ev::Malformed(rec),
                    Ev::Event(p + 1, ch, dt)
                ],
                "{kind:?}"
            );
        }
    }

    /// A mixed stream with every record class for one layout.
    fn mixed_stream(kind: RecordType) -> Vec<u32> {
        let mut v = Vec::new();
        let mut x: u32 = 0x1234_5678;
        for i in 0..60u32 {
            // Small LCG: varied but reproducible fields.
            x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            let t = x >> (32 - kind.time_bits());
            v.push(event_rec(kind, t));
            match i % 7 {
                0 => v.push(overflow_rec(kind)),
                1 => v.push(match kind {
                    RecordType::PicoHarpT2 => ph_t2(15, (t & !0xF) | 3),
                    RecordType::PicoHarpT3 => ph_t3(15, 4, t),
                    RecordType::HydraHarpV1T2 | RecordType::GenericT2 => hh_t2(true, 2, t),
                    _ => hh_t3(true, 2, 0, t),
                }),
                2 => v.push(x), // anything at all
                3 if !kind.is_t3() => v.push(hh_t2(true, 0, t)),
                4 if matches!(kind, RecordType::GenericT2 | RecordType::GenericT3) => {
                    v.push(if kind.is_t3() {
                        hh_t3(true, 63, 0, 7)
                    } else {
                        hh_t2(true, 63, 0)
                    })
                }
                _ => {}
            }
        }
        v
    }

    #[test]
    fn splitting_anywhere_gives_identical_output() {
        for kind in RecordType::ALL {
            let recs = mixed_stream(kind);
            let whole = decode(kind, &recs);
            for cut in 0..=recs.len() {
                let mut dec = Decoder::new(kind);
                let mut sink = Rec::default();
                dec.feed(&recs[..cut], &mut sink);
                dec.feed(&recs[cut..], &mut sink);
                assert_eq!(sink.0, whole, "{kind:?} cut at {cut}");
            }
            // One record per call as well.
            let mut dec = Decoder::new(kind);
            let mut sink = Rec::default();
            for r in &recs {
                dec.feed(std::slice::from_ref(r), &mut sink);
            }
            assert_eq!(sink.0, whole);
        }
    }

    #[test]
    fn overflow_base_resync_and_no_panic_at_u64_limit() {
        let kind = RecordType::GenericT2;
        let mut dec = Decoder::new(kind);
        dec.set_overflow_base(1_000);
        let mut sink = Rec::default();
        dec.feed(&[event_rec(kind, 5)], &mut sink);
        assert_eq!(sink.0, vec![Ev::Event(1_005, 3, 0)]);
        // Wrapping arithmetic: hostile bases must not panic in debug builds.
        dec.set_overflow_base(u64::MAX);
        dec.feed(
            &[hh_t2(true, 63, 0x1FF_FFFF), event_rec(kind, 0x1FF_FFFF)],
            &mut sink,
        );
    }

    #[test]
    fn columns_match_sink_calls() {
        for kind in RecordType::ALL {
            let recs = mixed_stream(kind);
            let cols = decode_columns(kind, &recs);
            let events = decode(kind, &recs);
            assert_eq!(cols.kind.len(), recs.len());
            let mut base = 0u64;
            for (i, ev) in events.iter().enumerate() {
                let row = (cols.kind[i], cols.tick[i], cols.channel[i], cols.dtime[i]);
                let m = cols.marker[i];
                match *ev {
                    Ev::Event(t, c, d) => assert_eq!((row, m), ((0, t, c, d), 0)),
                    Ev::Marker(t, mask) => assert_eq!((row, m), ((1, t, 0, 0), mask)),
                    Ev::Overflow(n) => {
                        base += n * kind.overflow_rule().period;
                        assert_eq!((row, m), ((2, base, 0, 0), 0));
                    }
                    Ev::Sync(t) => assert_eq!((row, m), ((3, t, 0, 0), 0)),
                    Ev::Malformed(_) => assert_eq!((row, m), ((4, base, 0, 0), 0)),
                }
            }
        }
    }
}
