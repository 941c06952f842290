//! PicoQuant TTTR records: decoding and unwrapping into monotonic 64-bit device ticks.
//! INTERFACE STUB — bodies to be written.

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

impl RecordType {
    pub fn from_code(code: u32) -> Result<Self> {
        Err(CoreError::UnknownRecordType(code))
    }
    pub fn code(self) -> u32 {
        0
    }
    pub fn is_t3(self) -> bool {
        matches!(self, RecordType::PicoHarpT3 | RecordType::HydraHarpV1T3 | RecordType::GenericT3)
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
}

/// Unwraps one record stream. State is kept between `feed` calls.
#[derive(Debug, Clone)]
pub struct Decoder {
    kind: RecordType,
    overflow_ticks: u64,
}

impl Decoder {
    pub fn new(kind: RecordType) -> Self {
        Decoder { kind, overflow_ticks: 0 }
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
    pub fn feed<S: RecordSink>(&mut self, _records: &[u32], _sink: &mut S) {}
}
