//! A recorded detector link read back as records: the byte stream exactly as it arrived
//! (in any pieces) cut into frames, each frame's records decoded from the time base its
//! header carries. For exports and offline tools; the live path is the engine's.

use super::frame::{Assembler, FrameHeader, Item};
use super::tttr::{Decoder, RecordColumns, RecordType};
use crate::error::Result;

/// Frames decoded so far, and where each one's records begin.
#[derive(Debug, Default)]
pub struct DecodedFrames {
    pub headers: Vec<FrameHeader>,
    /// Index of each frame's first record in the columns.
    pub first_record: Vec<u64>,
}

/// Decodes a link stream fed in pieces; whole frames come out, in order.
#[derive(Debug, Default)]
pub struct StreamDecoder {
    assembler: Assembler,
    /// Frames whose checksum failed (dropped, as the engine drops them).
    pub corrupt: u64,
}

impl StreamDecoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Bytes skipped looking for a frame start.
    pub fn bytes_skipped(&self) -> u64 {
        self.assembler.bytes_skipped
    }

    /// Push the next piece; the records of every frame it completes are appended to
    /// `cols` (created at the first frame, for its record type) and the frames to `out`.
    /// A frame of a record type this decoder does not know is an error.
    pub fn push(
        &mut self,
        bytes: &[u8],
        cols: &mut Option<RecordColumns>,
        out: &mut DecodedFrames,
    ) -> Result<()> {
        self.assembler.push(bytes);
        while let Some(item) = self.assembler.next_item() {
            let h = match item {
                Item::Corrupt(_) => {
                    self.corrupt += 1;
                    continue;
                }
                Item::Frame(h) => h,
            };
            let kind = RecordType::from_code(h.record_type)?;
            let c = cols.get_or_insert_with(|| RecordColumns::new(kind, h.overflow_base));
            c.rebase(h.overflow_base);
            out.first_record.push(c.len() as u64);
            let mut decoder = Decoder::new(kind);
            decoder.set_overflow_base(h.overflow_base);
            decoder.feed(self.assembler.records(), c);
            out.headers.push(h);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::link::encode::Encoder;
    use crate::link::frame::encode;
    use crate::link::tttr::RecordKind;

    #[test]
    fn a_stream_in_odd_pieces_decodes_to_every_record_with_absolute_ticks() {
        let kind = RecordType::HydraHarpV1T2;
        let mut enc = Encoder::starting_at(kind, 0);
        let mut stream = Vec::new();
        let mut want = Vec::new();
        for seq in 0..5u64 {
            let base = enc.overflow_base();
            let mut records = Vec::new();
            for i in 0..50u64 {
                let tick = (seq * 50 + i) * 1_000_003;
                enc.event(tick, (i % 2) as u8, 0, &mut records).unwrap();
                want.push(tick);
            }
            let h = FrameHeader {
                sequence: seq,
                record_type: kind.code(),
                overflow_base: base,
                frame_mask: 4,
                line_start_mask: 1,
                line_stop_mask: 2,
                ..FrameHeader::default()
            };
            stream.extend(encode(&h, &records));
        }
        stream.insert(0, 0xAB); // a stray byte before the first frame
        let (mut dec, mut cols, mut frames) =
            (StreamDecoder::new(), None, DecodedFrames::default());
        for piece in stream.chunks(37) {
            dec.push(piece, &mut cols, &mut frames).unwrap();
        }
        let cols = cols.unwrap();
        let events: Vec<u64> = (0..cols.len())
            .filter(|&i| cols.kind[i] == RecordKind::Event as u8)
            .map(|i| cols.tick[i])
            .collect();
        assert_eq!(events, want);
        assert_eq!(frames.headers.len(), 5);
        assert_eq!(frames.first_record[0], 0);
        assert_eq!((dec.corrupt, dec.bytes_skipped()), (0, 1));
    }
}
