//! The on-disk layout: segment file header and block header, with their checksums.
//! Every field and offset is tabled in `docs/journal.md`; all integers little-endian.

use super::BlockKind;

/// First bytes of every segment file.
pub const SEGMENT_MAGIC: [u8; 8] = *b"OPSJRNL\0";
/// First bytes of every block: what the reader resynchronises on after corruption.
pub const BLOCK_MAGIC: [u8; 4] = *b"OPJB";
pub const FORMAT_VERSION: u8 = 1;
pub const SEGMENT_HEADER_LEN: usize = 64;
pub const BLOCK_HEADER_LEN: usize = 48;
/// Longest run id a segment header holds (a UUID string fits).
pub const RUN_ID_MAX: usize = 36;
/// No block is larger than this, raw or stored: a header claiming more is garbage.
pub const MAX_BLOCK_LEN: usize = 256 << 20;

const RUN_ID_AT: usize = 24;
const SEGMENT_CRC_AT: usize = 60;
const HEADER_CRC_AT: usize = 40;
const BLOCK_CRC_AT: usize = 44;

/// How a block's payload is stored: a compressor and a reversible transform before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Codec {
    pub compressor: Compressor,
    pub transform: Transform,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compressor {
    None = 0,
    Zstd = 1,
}

/// Applied to each detector frame's 32-bit words before compression (docs/journal.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transform {
    None = 0,
    /// Byte planes: all first bytes of the words, then all second bytes, ...
    Shuffle = 1,
    /// Word-to-word differences (wrapping), then byte planes.
    DeltaShuffle = 2,
}

impl Transform {
    pub fn name(self) -> &'static str {
        match self {
            Transform::None => "none",
            Transform::Shuffle => "shuffle",
            Transform::DeltaShuffle => "delta_shuffle",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        [Self::None, Self::Shuffle, Self::DeltaShuffle]
            .into_iter()
            .find(|t| t.name() == name)
    }
}

impl Codec {
    pub const STORED: Codec = Codec {
        compressor: Compressor::None,
        transform: Transform::None,
    };

    fn byte(self) -> u8 {
        (self.transform as u8) << 4 | self.compressor as u8
    }

    fn from_byte(b: u8) -> Option<Self> {
        let compressor = match b & 0x0f {
            0 => Compressor::None,
            1 => Compressor::Zstd,
            _ => return None,
        };
        let transform = match b >> 4 {
            0 => Transform::None,
            1 => Transform::Shuffle,
            2 => Transform::DeltaShuffle,
            _ => return None,
        };
        // A transform only ever precedes compression.
        (compressor == Compressor::Zstd || transform == Transform::None).then_some(Codec {
            compressor,
            transform,
        })
    }
}

fn le_u32(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

fn le_u64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

/// The header at the start of every segment file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentHeader {
    pub version: u8,
    pub index: u32,
    pub created_ns: i64,
    pub run_id: String,
}

impl SegmentHeader {
    pub fn encode(&self) -> [u8; SEGMENT_HEADER_LEN] {
        let mut b = [0u8; SEGMENT_HEADER_LEN];
        b[0..8].copy_from_slice(&SEGMENT_MAGIC);
        b[8..10].copy_from_slice(&u16::from(self.version).to_le_bytes());
        b[10..12].copy_from_slice(&(SEGMENT_HEADER_LEN as u16).to_le_bytes());
        b[12..16].copy_from_slice(&self.index.to_le_bytes());
        b[16..24].copy_from_slice(&self.created_ns.to_le_bytes());
        let id = self.run_id.as_bytes();
        let n = id.len().min(RUN_ID_MAX);
        b[RUN_ID_AT..RUN_ID_AT + n].copy_from_slice(&id[..n]);
        let crc = crc32fast::hash(&b[..SEGMENT_CRC_AT]);
        b[SEGMENT_CRC_AT..].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// Parse and verify; the error says why the header cannot be trusted.
    pub fn parse(b: &[u8]) -> Result<Self, String> {
        if b.len() < SEGMENT_HEADER_LEN {
            return Err(format!("segment header needs {SEGMENT_HEADER_LEN} bytes"));
        }
        if b[0..8] != SEGMENT_MAGIC {
            return Err("bad segment magic".into());
        }
        if crc32fast::hash(&b[..SEGMENT_CRC_AT]) != le_u32(b, SEGMENT_CRC_AT) {
            return Err("segment header CRC mismatch".into());
        }
        let version = u16::from_le_bytes([b[8], b[9]]);
        if version != u16::from(FORMAT_VERSION) {
            return Err(format!("unsupported format version {version}"));
        }
        let id = &b[RUN_ID_AT..RUN_ID_AT + RUN_ID_MAX];
        let end = id.iter().position(|&c| c == 0).unwrap_or(RUN_ID_MAX);
        Ok(SegmentHeader {
            version: FORMAT_VERSION,
            index: le_u32(b, 12),
            created_ns: le_u64(b, 16) as i64,
            run_id: String::from_utf8_lossy(&id[..end]).into_owned(),
        })
    }
}

/// The fixed header in front of every block's stored payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockHeader {
    pub kind: BlockKind,
    pub codec: Codec,
    pub seq: u64,
    pub host_ns: i64,
    pub raw_len: u32,
    pub stored_len: u32,
    /// Frames in a detector batch; 1 for every other kind.
    pub items: u32,
}

impl BlockHeader {
    /// Header and payload as one buffer with both checksums filled in.
    pub fn seal(&self, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(BLOCK_HEADER_LEN + payload.len());
        out.resize(BLOCK_HEADER_LEN, 0);
        self.write_into(&mut out[..BLOCK_HEADER_LEN], payload);
        out.extend_from_slice(payload);
        out
    }

    /// Fill a header in place in front of a payload already at `buf[BLOCK_HEADER_LEN..]`.
    pub fn seal_in_place(&self, buf: &mut [u8]) {
        let (head, payload) = buf.split_at_mut(BLOCK_HEADER_LEN);
        self.write_into(head, payload);
    }

    fn write_into(&self, b: &mut [u8], payload: &[u8]) {
        b[0..4].copy_from_slice(&BLOCK_MAGIC);
        b[4] = FORMAT_VERSION;
        b[5] = self.kind as u8;
        b[6] = self.codec.byte();
        b[7] = 0;
        b[8..16].copy_from_slice(&self.seq.to_le_bytes());
        b[16..24].copy_from_slice(&self.host_ns.to_le_bytes());
        b[24..28].copy_from_slice(&self.raw_len.to_le_bytes());
        b[28..32].copy_from_slice(&self.stored_len.to_le_bytes());
        b[32..36].copy_from_slice(&self.items.to_le_bytes());
        b[36..40].fill(0);
        let hcrc = crc32fast::hash(&b[..HEADER_CRC_AT]);
        b[HEADER_CRC_AT..BLOCK_CRC_AT].copy_from_slice(&hcrc.to_le_bytes());
        let mut h = crc32fast::Hasher::new();
        h.update(&b[..BLOCK_CRC_AT]);
        h.update(payload);
        b[BLOCK_CRC_AT..BLOCK_HEADER_LEN].copy_from_slice(&h.finalize().to_le_bytes());
    }

    /// Parse a header whose own checksum matches (the payload is checked by `verify`).
    pub fn parse(b: &[u8]) -> Result<Self, String> {
        if b.len() < BLOCK_HEADER_LEN {
            return Err(format!("block header needs {BLOCK_HEADER_LEN} bytes"));
        }
        if b[0..4] != BLOCK_MAGIC {
            return Err("bad block magic".into());
        }
        if crc32fast::hash(&b[..HEADER_CRC_AT]) != le_u32(b, HEADER_CRC_AT) {
            return Err("block header CRC mismatch".into());
        }
        if b[4] != FORMAT_VERSION {
            return Err(format!("unsupported block format version {}", b[4]));
        }
        let kind = BlockKind::from_code(b[5]).ok_or_else(|| format!("unknown kind {}", b[5]))?;
        let codec =
            Codec::from_byte(b[6]).ok_or_else(|| format!("unknown codec 0x{:02x}", b[6]))?;
        let h = BlockHeader {
            kind,
            codec,
            seq: le_u64(b, 8),
            host_ns: le_u64(b, 16) as i64,
            raw_len: le_u32(b, 24),
            stored_len: le_u32(b, 28),
            items: le_u32(b, 32),
        };
        for (name, v) in [("raw", h.raw_len), ("stored", h.stored_len)] {
            if v as usize > MAX_BLOCK_LEN {
                return Err(format!("{name} length {v} exceeds {MAX_BLOCK_LEN}"));
            }
        }
        if h.codec.compressor == Compressor::None && h.raw_len != h.stored_len {
            return Err("uncompressed block with raw length != stored length".into());
        }
        Ok(h)
    }

    /// Whole block length on disk.
    pub fn block_len(&self) -> usize {
        BLOCK_HEADER_LEN + self.stored_len as usize
    }

    /// Whether the block checksum over `block` (header and payload) matches.
    pub fn verify(block: &[u8]) -> bool {
        let mut h = crc32fast::Hasher::new();
        h.update(&block[..BLOCK_CRC_AT]);
        h.update(&block[BLOCK_HEADER_LEN..]);
        h.finalize() == le_u32(block, BLOCK_CRC_AT)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> BlockHeader {
        BlockHeader {
            kind: BlockKind::Control,
            codec: Codec::STORED,
            seq: 7,
            host_ns: -5,
            raw_len: 3,
            stored_len: 3,
            items: 1,
        }
    }

    #[test]
    fn block_header_roundtrip_and_checks() {
        let block = header().seal(b"abc");
        assert_eq!(BlockHeader::parse(&block), Ok(header()));
        assert!(BlockHeader::verify(&block));
        let mut bad = block.clone();
        bad[BLOCK_HEADER_LEN + 1] ^= 1;
        assert!(BlockHeader::parse(&bad).is_ok());
        assert!(!BlockHeader::verify(&bad));
        let mut bad = block;
        bad[9] ^= 1;
        assert_eq!(
            BlockHeader::parse(&bad),
            Err("block header CRC mismatch".into())
        );
    }

    #[test]
    fn segment_header_roundtrip() {
        let h = SegmentHeader {
            version: FORMAT_VERSION,
            index: 3,
            created_ns: 1_700_000_000_000_000_000,
            run_id: "run-42".into(),
        };
        let b = h.encode();
        assert_eq!(SegmentHeader::parse(&b), Ok(h));
        let mut bad = b;
        bad[30] ^= 4;
        assert!(SegmentHeader::parse(&bad).is_err());
    }

    #[test]
    fn codec_byte_roundtrip_and_rejects() {
        for transform in [Transform::None, Transform::Shuffle, Transform::DeltaShuffle] {
            let c = Codec {
                compressor: Compressor::Zstd,
                transform,
            };
            assert_eq!(Codec::from_byte(c.byte()), Some(c));
        }
        assert_eq!(Codec::from_byte(0x20), None); // transform without compression
        assert_eq!(Codec::from_byte(0x05), None);
    }
}
