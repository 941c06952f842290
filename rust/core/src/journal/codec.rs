//! Block payloads: the detector batch layout, the word transform and zstd.
//!
//! A batch's raw payload is `n: u32`, then `n` entries `(len: u32, host_ns: i64)`, then
//! the frames' bytes back to back. Only the frame bytes are transformed, each frame on its
//! own from its first byte, so the 32-bit records line up with the words whatever the
//! other frames hold (measurements in `docs/journal.md`).

use zstd::zstd_safe;

use super::format::{BlockHeader, Codec, Compressor, Transform, BLOCK_HEADER_LEN};
use super::BlockKind;

/// Opaque payloads shorter than this are stored as they are: too small to gain.
pub const COMPRESS_MIN: usize = 512;
const INDEX_ENTRY: usize = 12;
/// `Auto` compresses this much of a batch with each transform to choose one...
const TRIAL_BYTES: usize = 256 << 10;
/// ...every this many batches (about 1 % more work at 4 MiB batches).
const TRIAL_EVERY: u32 = 16;

/// How the writer chooses each detector batch's transform (the block header records
/// the one used, so the reader needs no policy).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransformPolicy {
    /// Try every transform on the start of a batch now and then; keep the smallest.
    /// Delta + shuffle wins on the emitter's streams, shuffle alone on some real files.
    Auto,
    Fixed(Transform),
}

impl TransformPolicy {
    pub fn name(self) -> &'static str {
        match self {
            TransformPolicy::Auto => "auto",
            TransformPolicy::Fixed(t) => t.name(),
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "auto" => Some(TransformPolicy::Auto),
            _ => Transform::from_name(name).map(TransformPolicy::Fixed),
        }
    }
}

/// Detector frames gathered for one block, in arrival order.
#[derive(Debug, Default)]
pub struct FrameBatch {
    index: Vec<(u32, i64)>,
    data: Vec<u8>,
}

impl FrameBatch {
    /// Bytes of a frame's index entry: its length and arrival time.
    pub const ENTRY: usize = INDEX_ENTRY;

    pub fn with_capacity(bytes: usize) -> Self {
        FrameBatch {
            index: Vec::new(),
            data: Vec::with_capacity(bytes),
        }
    }

    /// Empty, with room for `bytes` already in memory: its pages are touched now, not
    /// as the first frames fill it.
    pub fn prefaulted(bytes: usize) -> Self {
        let mut batch = Self::with_capacity(bytes);
        batch.data.resize(bytes, 0);
        batch.data.clear();
        batch
    }

    pub fn capacity(&self) -> usize {
        self.data.capacity()
    }

    /// The caller keeps each frame within `u32` (the writer checks `MAX_BLOCK_LEN`).
    pub fn push(&mut self, host_ns: i64, frame: &[u8]) {
        self.index.push((frame.len() as u32, host_ns));
        self.data.extend_from_slice(frame);
    }

    pub fn frames(&self) -> usize {
        self.index.len()
    }

    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    pub fn data_len(&self) -> usize {
        self.data.len()
    }

    /// Length of the raw payload this batch encodes to.
    pub fn raw_len(&self) -> usize {
        4 + INDEX_ENTRY * self.index.len() + self.data.len()
    }

    /// Arrival time of the newest frame: the block's host time.
    pub fn last_host_ns(&self) -> i64 {
        self.index.last().map_or(0, |e| e.1)
    }

    /// Empty it, keeping the allocation for the next batch.
    pub fn clear(&mut self) {
        self.index.clear();
        self.data.clear();
    }

    fn write_index(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&(self.index.len() as u32).to_le_bytes());
        for &(len, ns) in &self.index {
            out.extend_from_slice(&len.to_le_bytes());
            out.extend_from_slice(&ns.to_le_bytes());
        }
    }

    /// The untransformed payload (what a reader gets back).
    pub fn raw_payload(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.raw_len());
        self.write_index(&mut out);
        out.extend_from_slice(&self.data);
        out
    }
}

/// The frames of a decoded detector batch: `(host_ns, bytes)` each.
pub struct Frames<'a> {
    index: &'a [u8],
    data: &'a [u8],
}

impl<'a> Iterator for Frames<'a> {
    type Item = (i64, &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        let (entry, rest) = self.index.split_first_chunk::<INDEX_ENTRY>()?;
        self.index = rest;
        let len = u32::from_le_bytes([entry[0], entry[1], entry[2], entry[3]]) as usize;
        let mut ns = [0u8; 8];
        ns.copy_from_slice(&entry[4..]);
        let (frame, rest) = self.data.split_at(len);
        self.data = rest;
        Some((i64::from_le_bytes(ns), frame))
    }
}

/// Split a raw detector batch payload into its frames, after checking the index adds up.
pub fn frames(payload: &[u8]) -> Result<Frames<'_>, String> {
    let (n, rest) = payload
        .split_first_chunk::<4>()
        .ok_or("frame batch shorter than its count")?;
    let n = u32::from_le_bytes(*n) as usize;
    let index_len = n
        .checked_mul(INDEX_ENTRY)
        .filter(|&l| l <= rest.len())
        .ok_or("frame batch index longer than the block")?;
    let (index, data) = rest.split_at(index_len);
    let total: u64 = index
        .chunks_exact(INDEX_ENTRY)
        .map(|e| u64::from(u32::from_le_bytes([e[0], e[1], e[2], e[3]])))
        .sum();
    if total != data.len() as u64 {
        return Err(format!(
            "frame lengths add up to {total} bytes, the batch holds {}",
            data.len()
        ));
    }
    Ok(Frames { index, data })
}

/// The forward transform of one frame, appended to `out` (same length as `frame`).
pub fn forward(t: Transform, frame: &[u8], out: &mut Vec<u8>) {
    if t == Transform::None {
        out.extend_from_slice(frame);
        return;
    }
    let n = frame.len() / 4;
    let start = out.len();
    out.resize(start + 4 * n, 0);
    let planes = &mut out[start..];
    let (p0, rest) = planes.split_at_mut(n);
    let (p1, rest) = rest.split_at_mut(n);
    let (p2, p3) = rest.split_at_mut(n);
    let delta = t == Transform::DeltaShuffle;
    let mut prev = 0u32;
    for (i, w) in frame.chunks_exact(4).enumerate() {
        let w = u32::from_le_bytes([w[0], w[1], w[2], w[3]]);
        let d = if delta { w.wrapping_sub(prev) } else { w };
        prev = w;
        let b = d.to_le_bytes();
        (p0[i], p1[i], p2[i], p3[i]) = (b[0], b[1], b[2], b[3]);
    }
    out.extend_from_slice(&frame[4 * n..]);
}

/// The inverse of `forward`, appended to `out`.
pub fn inverse(t: Transform, stored: &[u8], out: &mut Vec<u8>) {
    if t == Transform::None {
        out.extend_from_slice(stored);
        return;
    }
    let n = stored.len() / 4;
    let (p0, rest) = stored.split_at(n);
    let (p1, rest) = rest.split_at(n);
    let (p2, rest) = rest.split_at(n);
    let (p3, tail) = rest.split_at(n);
    let delta = t == Transform::DeltaShuffle;
    out.reserve(stored.len());
    let mut prev = 0u32;
    for i in 0..n {
        let d = u32::from_le_bytes([p0[i], p1[i], p2[i], p3[i]]);
        let w = if delta { prev.wrapping_add(d) } else { d };
        prev = w;
        out.extend_from_slice(&w.to_le_bytes());
    }
    out.extend_from_slice(tail);
}

/// Builds sealed blocks (header + stored payload) on the writer thread.
pub struct BlockEncoder {
    zstd: zstd::bulk::Compressor<'static>,
    policy: TransformPolicy,
    /// `Auto`'s current choice and the batches until it is tried again.
    chosen: Transform,
    trial_in: u32,
    scratch: Vec<u8>,
}

impl BlockEncoder {
    pub fn new(level: i32, policy: TransformPolicy) -> std::io::Result<Self> {
        Ok(BlockEncoder {
            zstd: zstd::bulk::Compressor::new(level)?,
            policy,
            chosen: Transform::DeltaShuffle,
            trial_in: 0,
            scratch: Vec::new(),
        })
    }

    /// The transform for this batch.
    fn pick(&mut self, batch: &FrameBatch) -> Transform {
        match self.policy {
            TransformPolicy::Fixed(t) => t,
            TransformPolicy::Auto => {
                if self.trial_in == 0 {
                    self.chosen = self.trial(batch);
                    self.trial_in = TRIAL_EVERY;
                }
                self.trial_in -= 1;
                self.chosen
            }
        }
    }

    /// The transform under which the start of the batch compresses smallest.
    fn trial(&mut self, batch: &FrameBatch) -> Transform {
        let mut best = (usize::MAX, Transform::DeltaShuffle);
        let mut src = Vec::with_capacity(TRIAL_BYTES);
        let mut out = Vec::with_capacity(zstd_safe::compress_bound(TRIAL_BYTES));
        for t in [Transform::DeltaShuffle, Transform::Shuffle, Transform::None] {
            src.clear();
            let mut at = 0;
            for &(len, _) in &batch.index {
                let take = (len as usize).min(TRIAL_BYTES - src.len());
                forward(t, &batch.data[at..at + take], &mut src);
                at += len as usize;
                if src.len() >= TRIAL_BYTES {
                    break;
                }
            }
            let size = self
                .zstd
                .compress_to_buffer(&src, &mut out)
                .unwrap_or(usize::MAX);
            if size < best.0 {
                best = (size, t);
            }
        }
        best.1
    }

    /// A block of an opaque kind: compressed when large enough and it helps.
    pub fn opaque(&mut self, kind: BlockKind, seq: u64, host_ns: i64, payload: &[u8]) -> Vec<u8> {
        let header = |codec, stored: usize| BlockHeader {
            kind,
            codec,
            seq,
            host_ns,
            raw_len: payload.len() as u32,
            stored_len: stored as u32,
            items: 1,
        };
        if payload.len() >= COMPRESS_MIN {
            if let Some(block) = self.compressed(payload, |n| header(ZSTD, n)) {
                return block;
            }
        }
        header(Codec::STORED, payload.len()).seal(payload)
    }

    /// A block of detector frames: always tried with the transform and zstd.
    pub fn frames(&mut self, seq: u64, batch: &FrameBatch) -> Vec<u8> {
        let transform = self.pick(batch);
        let mut src = std::mem::take(&mut self.scratch);
        src.clear();
        batch.write_index(&mut src);
        let mut at = 0;
        for &(len, _) in &batch.index {
            forward(transform, &batch.data[at..at + len as usize], &mut src);
            at += len as usize;
        }
        let header = |codec, stored: usize| BlockHeader {
            kind: BlockKind::DetectorFrames,
            codec,
            seq,
            host_ns: batch.last_host_ns(),
            raw_len: batch.raw_len() as u32,
            stored_len: stored as u32,
            items: batch.frames() as u32,
        };
        let codec = Codec {
            compressor: Compressor::Zstd,
            transform,
        };
        let block = self.compressed(&src, |n| header(codec, n));
        self.scratch = src;
        block.unwrap_or_else(|| header(Codec::STORED, batch.raw_len()).seal(&batch.raw_payload()))
    }

    /// Compress `src` behind a header; None when that fails or does not shrink it, so
    /// the caller stores it raw (a compressor error never loses data).
    fn compressed(&mut self, src: &[u8], header: impl Fn(usize) -> BlockHeader) -> Option<Vec<u8>> {
        let bound = zstd_safe::compress_bound(src.len());
        // Zeroed by the allocator (calloc), so the unused bound costs nothing.
        let mut out = vec![0u8; BLOCK_HEADER_LEN + bound];
        let n = self
            .zstd
            .compress_to_buffer(src, &mut out[BLOCK_HEADER_LEN..])
            .ok()?;
        if n >= src.len() {
            return None;
        }
        out.truncate(BLOCK_HEADER_LEN + n);
        header(n).seal_in_place(&mut out);
        Some(out)
    }
}

const ZSTD: Codec = Codec {
    compressor: Compressor::Zstd,
    transform: Transform::None,
};

/// Turns stored payloads back into raw ones (reader side).
pub struct BlockDecoder {
    zstd: zstd::bulk::Decompressor<'static>,
    scratch: Vec<u8>,
}

impl BlockDecoder {
    pub fn new() -> std::io::Result<Self> {
        Ok(BlockDecoder {
            zstd: zstd::bulk::Decompressor::new()?,
            scratch: Vec::new(),
        })
    }

    /// The raw payload of a block whose checksum matched; the error says what is wrong.
    pub fn decode(&mut self, h: &BlockHeader, stored: &[u8]) -> Result<Vec<u8>, String> {
        let raw_len = h.raw_len as usize;
        if h.codec.compressor == Compressor::None {
            return Ok(stored.to_vec());
        }
        let mut out = Vec::with_capacity(raw_len);
        let t = h.codec.transform;
        let dst = if t == Transform::None {
            &mut out
        } else {
            self.scratch.clear();
            self.scratch.reserve(raw_len);
            &mut self.scratch
        };
        let n = self
            .zstd
            .decompress_to_buffer(stored, dst)
            .map_err(|e| format!("zstd: {e}"))?;
        if n != raw_len {
            return Err(format!("decompressed to {n} bytes, header says {raw_len}"));
        }
        if t != Transform::None {
            if h.kind != BlockKind::DetectorFrames {
                return Err(format!("{} block with a frame transform", h.kind.name()));
            }
            untransform(t, &self.scratch, &mut out)?;
        }
        Ok(out)
    }
}

impl std::fmt::Debug for BlockDecoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BlockDecoder")
    }
}

fn untransform(t: Transform, src: &[u8], out: &mut Vec<u8>) -> Result<(), String> {
    let parts = frames(src)?;
    let index_len = src.len() - parts.data.len();
    out.extend_from_slice(&src[..index_len]);
    for (_, frame) in parts {
        inverse(t, frame, out);
    }
    Ok(())
}
