//! The opsims live detector link: TTTR records in checksummed, sequence-numbered frames
//! over a byte stream (TCP). Layout in `docs/detector-link.md`.
//!
//! The header carries what a receiver needs to recover by itself after loss: the
//! overflow base (the high part of the time tag at the first record), so one lost frame
//! with an overflow record in it cannot shift every later event.

use crate::error::{CoreError, Result};

pub const MAGIC: [u8; 4] = *b"OPSD";
pub const VERSION: u16 = 1;
pub const HEADER_LEN: usize = 80;
const CRC_AT: usize = HEADER_LEN - 4;
/// A frame larger than this is treated as garbage: no front-end batches this much.
pub const MAX_RECORDS: u32 = 1 << 22;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FrameHeader {
    pub sequence: u64,
    /// PicoQuant `TTResultFormat_TTTRRecType` code of the records.
    pub record_type: u32,
    pub n_records: u32,
    /// Tick period in femtoseconds (T2: time tag unit; T3: sync period).
    pub tick_fs: u64,
    /// T3 fine-time bin in femtoseconds (0 for T2).
    pub fine_fs: u64,
    /// Ticks already added by overflows before the frame's first record.
    pub overflow_base: u64,
    /// Device tick when the frame was sent: pairs with the host arrival time for the clock.
    pub sent_tick: u64,
    /// Frame markers, and line starts since the last of them, that the sender saw before
    /// the frame's first record: the raster position a receiver resumes from after a loss.
    pub frame_markers: u64,
    pub line_starts: u32,
    pub frame_mask: u8,
    pub line_start_mask: u8,
    pub line_stop_mask: u8,
    pub mass_switch_mask: u8,
}

fn le_u64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}
fn le_u32(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

impl FrameHeader {
    fn write(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&VERSION.to_le_bytes());
        out.extend_from_slice(&(HEADER_LEN as u16).to_le_bytes());
        out.extend_from_slice(&self.sequence.to_le_bytes());
        out.extend_from_slice(&self.record_type.to_le_bytes());
        out.extend_from_slice(&self.n_records.to_le_bytes());
        for v in [
            self.tick_fs,
            self.fine_fs,
            self.overflow_base,
            self.sent_tick,
            self.frame_markers,
        ] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out.extend_from_slice(&self.line_starts.to_le_bytes());
        out.extend_from_slice(&[
            self.frame_mask,
            self.line_start_mask,
            self.line_stop_mask,
            self.mass_switch_mask,
        ]);
        out.extend_from_slice(&[0; 4]); // reserved
    }

    /// Parse the fixed header (without checking the checksum, which covers the payload).
    fn read(b: &[u8]) -> Result<Self> {
        if b.len() < HEADER_LEN {
            return Err(CoreError::Frame(format!(
                "header needs {HEADER_LEN} bytes, got {}",
                b.len()
            )));
        }
        if b[0..4] != MAGIC {
            return Err(CoreError::Frame("bad magic".into()));
        }
        let version = u16::from_le_bytes([b[4], b[5]]);
        if version != VERSION {
            return Err(CoreError::Frame(format!("unsupported version {version}")));
        }
        let hlen = u16::from_le_bytes([b[6], b[7]]) as usize;
        if hlen != HEADER_LEN {
            return Err(CoreError::Frame(format!(
                "header length {hlen}, expected {HEADER_LEN}"
            )));
        }
        let h = FrameHeader {
            sequence: le_u64(b, 8),
            record_type: le_u32(b, 16),
            n_records: le_u32(b, 20),
            tick_fs: le_u64(b, 24),
            fine_fs: le_u64(b, 32),
            overflow_base: le_u64(b, 40),
            sent_tick: le_u64(b, 48),
            frame_markers: le_u64(b, 56),
            line_starts: le_u32(b, 64),
            frame_mask: b[68],
            line_start_mask: b[69],
            line_stop_mask: b[70],
            mass_switch_mask: b[71],
        };
        if h.n_records > MAX_RECORDS {
            return Err(CoreError::Frame(format!(
                "{} records exceed the limit {MAX_RECORDS}",
                h.n_records
            )));
        }
        Ok(h)
    }

    pub fn frame_len(&self) -> usize {
        HEADER_LEN + self.n_records as usize * 4
    }
}

/// Build one frame: header, CRC-32 of header and payload, little-endian records.
pub fn encode(header: &FrameHeader, records: &[u32]) -> Vec<u8> {
    let mut h = *header;
    h.n_records = records.len() as u32;
    let mut out = Vec::with_capacity(h.frame_len());
    h.write(&mut out);
    let crc_at = out.len();
    out.extend_from_slice(&[0; 4]);
    for r in records {
        out.extend_from_slice(&r.to_le_bytes());
    }
    let crc = checksum(&out);
    out[crc_at..crc_at + 4].copy_from_slice(&crc.to_le_bytes());
    out
}

fn checksum(frame: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&frame[..CRC_AT]);
    h.update(&frame[HEADER_LEN..]);
    h.finalize()
}

/// What the assembler found in the byte stream.
#[derive(Debug, PartialEq, Eq)]
pub enum Item {
    /// A whole frame whose checksum matched; the records are in `Assembler::records()`.
    Frame(FrameHeader),
    /// A frame whose checksum did not match: dropped (it counts as lost).
    Corrupt(FrameHeader),
}

/// Reassembles frames from arbitrary chunks of a byte stream, resynchronising on the
/// magic after garbage.
#[derive(Debug, Default)]
pub struct Assembler {
    buf: Vec<u8>,
    /// Read position in `buf`; bytes before it are consumed.
    pos: usize,
    records: Vec<u32>,
    pub bytes_skipped: u64,
}

impl Assembler {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn push(&mut self, bytes: &[u8]) {
        if self.pos > 0 && self.pos * 2 >= self.buf.len() {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// Records of the last frame `next` returned.
    pub fn records(&self) -> &[u32] {
        &self.records
    }

    /// Bytes waiting for the rest of their frame.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// The next complete item, or None when more bytes are needed.
    pub fn next_item(&mut self) -> Option<Item> {
        loop {
            let avail = &self.buf[self.pos..];
            if avail.len() < HEADER_LEN {
                // Drop what cannot begin a frame; keep a possible start for the next read.
                self.skip_to_magic(false);
                return None;
            }
            let header = match FrameHeader::read(avail) {
                Ok(h) => h,
                Err(_) => {
                    self.skip_to_magic(true);
                    continue;
                }
            };
            let len = header.frame_len();
            if avail.len() < len {
                return None;
            }
            let frame = &avail[..len];
            let stored = le_u32(frame, CRC_AT);
            let item = if checksum(frame) == stored {
                self.records.clear();
                self.records
                    .extend(frame[HEADER_LEN..].chunks_exact(4).map(|c| le_u32(c, 0)));
                Item::Frame(header)
            } else {
                Item::Corrupt(header)
            };
            self.pos += len;
            return Some(item);
        }
    }

    /// Drop bytes up to the next place a frame could start: the magic, or a prefix of it
    /// at the end of what we hold. `past_current` skips the current position itself.
    fn skip_to_magic(&mut self, past_current: bool) {
        let avail = &self.buf[self.pos..];
        let from = usize::from(past_current);
        let skip = (from..avail.len())
            .find(|&i| {
                let n = (avail.len() - i).min(MAGIC.len());
                avail[i..i + n] == MAGIC[..n]
            })
            .unwrap_or(avail.len());
        self.pos += skip;
        self.bytes_skipped += skip as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(seq: u64) -> FrameHeader {
        FrameHeader {
            sequence: seq,
            record_type: 0x0001_0307,
            tick_fs: 80_000_000,
            fine_fs: 5_000,
            overflow_base: 1 << 40,
            sent_tick: (1 << 40) + 77,
            frame_mask: 4,
            line_start_mask: 1,
            line_stop_mask: 2,
            ..Default::default()
        }
    }

    fn collect(a: &mut Assembler) -> Vec<(Item, Vec<u32>)> {
        let mut out = Vec::new();
        while let Some(item) = a.next_item() {
            out.push((item, a.records().to_vec()));
        }
        out
    }

    #[test]
    fn roundtrip_in_every_split() {
        let recs: Vec<u32> = (0..37).map(|i| i * 0x0101_0101).collect();
        let bytes = [encode(&header(5), &recs), encode(&header(6), &[])].concat();
        for split in 0..bytes.len() {
            let mut a = Assembler::new();
            a.push(&bytes[..split]);
            let mut got = collect(&mut a);
            a.push(&bytes[split..]);
            got.extend(collect(&mut a));
            assert_eq!(got.len(), 2, "split at {split}");
            let mut h5 = header(5);
            h5.n_records = 37;
            assert_eq!(got[0], (Item::Frame(h5), recs.clone()));
            assert_eq!(got[1], (Item::Frame(header(6)), vec![]));
            assert_eq!(a.bytes_skipped, 0);
            assert_eq!(a.buffered(), 0);
        }
    }

    #[test]
    fn garbage_is_skipped_and_counted() {
        let frame = encode(&header(1), &[1, 2, 3]);
        let garbage =
            b"xxOPSxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx";
        let mut a = Assembler::new();
        a.push(garbage);
        a.push(&frame);
        let got = collect(&mut a);
        assert_eq!(got.len(), 1);
        assert!(matches!(got[0].0, Item::Frame(_)));
        assert_eq!(a.bytes_skipped, garbage.len() as u64);
    }

    #[test]
    fn flipped_payload_bit_is_corrupt_and_stream_continues() {
        let mut bad = encode(&header(1), &[1, 2, 3]);
        bad[HEADER_LEN + 5] ^= 0x10;
        let good = encode(&header(2), &[4]);
        let mut a = Assembler::new();
        a.push(&[bad, good].concat());
        let got = collect(&mut a);
        assert!(matches!(got[0].0, Item::Corrupt(h) if h.sequence == 1));
        assert!(matches!(got[1].0, Item::Frame(h) if h.sequence == 2));
    }

    #[test]
    fn absurd_record_count_resynchronises() {
        let mut bad = encode(&header(1), &[1]);
        bad[20..24].copy_from_slice(&u32::MAX.to_le_bytes());
        let good = encode(&header(2), &[4]);
        let mut a = Assembler::new();
        a.push(&[bad.clone(), good].concat());
        let got = collect(&mut a);
        assert_eq!(got.len(), 1);
        assert!(matches!(got[0].0, Item::Frame(h) if h.sequence == 2));
        assert_eq!(a.bytes_skipped, bad.len() as u64);
    }
}
