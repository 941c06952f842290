//! The run journal: the lossless record of a run (DESIGN.md "Recording").
//!
//! A journal is a directory of append-only segment files, `segment-000000.ojs`, ...
//! holding checksummed, sequence-numbered blocks: batches of raw detector link frames
//! (byte-identical, compressed), and opaque payloads of the other kinds. One writer
//! thread compresses, writes and syncs, so [`JournalWriter::append`] only copies into a
//! bounded queue; the reader verifies every block and resynchronises after corruption;
//! [`recover`] cuts a torn tail after a crash. Layout and semantics in `docs/journal.md`.

mod codec;
mod format;
mod reader;
mod recover;
mod scan;
mod sink;
mod worker;
mod writer;

#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::error::{CoreError, Result};

pub use codec::{forward, frames, inverse, BlockEncoder, FrameBatch, Frames, TransformPolicy};
pub use format::{
    BlockHeader, Codec, Compressor, SegmentHeader, Transform, BLOCK_HEADER_LEN, FORMAT_VERSION,
    MAX_BLOCK_LEN, SEGMENT_HEADER_LEN,
};
pub use reader::{Block, Blocks, CorruptSpan, JournalReader, JournalReport, SeqGap};
pub use recover::{recover, Recovery};
pub use writer::{JournalStatus, JournalWriter};

/// What a block holds. Codes are on disk: never renumber.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BlockKind {
    /// A batch of raw detector link frames with their arrival times.
    DetectorFrames = 1,
    /// The rest are opaque bytes from the caller (msgpack or JSON from Python).
    Potentiostat = 2,
    Clock = 3,
    Safety = 4,
    Control = 5,
    Step = 6,
    Note = 7,
    /// Written by `close`: the run ended cleanly (payload in `docs/journal.md`).
    Closed = 126,
    /// Written by `recover` after a crash.
    Recovered = 127,
}

const KINDS: [BlockKind; 9] = [
    BlockKind::DetectorFrames,
    BlockKind::Potentiostat,
    BlockKind::Clock,
    BlockKind::Safety,
    BlockKind::Control,
    BlockKind::Step,
    BlockKind::Note,
    BlockKind::Closed,
    BlockKind::Recovered,
];

impl BlockKind {
    pub fn name(self) -> &'static str {
        match self {
            BlockKind::DetectorFrames => "detector_frames",
            BlockKind::Potentiostat => "potentiostat",
            BlockKind::Clock => "clock",
            BlockKind::Safety => "safety",
            BlockKind::Control => "control",
            BlockKind::Step => "step",
            BlockKind::Note => "note",
            BlockKind::Closed => "closed",
            BlockKind::Recovered => "recovered",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        KINDS.into_iter().find(|k| k.name() == name)
    }

    pub fn from_code(code: u8) -> Option<Self> {
        KINDS.into_iter().find(|&k| k as u8 == code)
    }

    /// Whether callers may append it (the end markers belong to the journal itself).
    pub fn is_appendable(self) -> bool {
        !matches!(self, BlockKind::Closed | BlockKind::Recovered)
    }
}

/// The file name of segment `index`.
pub fn segment_name(index: u32) -> String {
    format!("segment-{index:06}.ojs")
}

/// The index of a segment file name, or None for any other file.
pub fn segment_index(name: &str) -> Option<u32> {
    let digits = name.strip_prefix("segment-")?.strip_suffix(".ojs")?;
    (digits.len() >= 6 && digits.bytes().all(|b| b.is_ascii_digit()))
        .then(|| digits.parse().ok())
        .flatten()
}

/// Everything [`JournalWriter::open`] needs.
#[derive(Debug, Clone, PartialEq)]
pub struct JournalConfig {
    pub dir: PathBuf,
    /// Written into every segment header; None: made from the time and the process id.
    pub run_id: Option<String>,
    /// Continue a journal already in `dir` (recovering it first if it was left open)
    /// instead of refusing a directory that is not empty.
    pub append: bool,
    /// A segment is closed and the next begun once a block would take it past this.
    pub segment_bytes: u64,
    /// Detector frames are batched into blocks of up to this many raw bytes.
    pub block_bytes: usize,
    /// Written data is synced at least this often (and the open batch closed).
    pub flush_interval: Duration,
    /// ... or as soon as this much is written but not synced.
    pub flush_bytes: u64,
    /// Raw bytes accepted but not yet durable; `append` refuses beyond this.
    pub queue_bytes: u64,
    /// zstd level of detector batches and large opaque payloads.
    pub level: i32,
    pub transform: TransformPolicy,
    /// After a disk error, the write is tried again this often.
    pub retry_interval: Duration,
    /// How long `close` keeps retrying a failing disk before it gives up.
    pub close_timeout: Duration,
}

impl JournalConfig {
    pub fn new(dir: impl AsRef<Path>) -> Self {
        JournalConfig {
            dir: dir.as_ref().to_path_buf(),
            run_id: None,
            append: false,
            segment_bytes: 256 << 20,
            block_bytes: 4 << 20,
            flush_interval: Duration::from_millis(100),
            flush_bytes: 64 << 20,
            queue_bytes: 512 << 20,
            level: 1,
            transform: TransformPolicy::Auto,
            retry_interval: Duration::from_secs(1),
            close_timeout: Duration::from_secs(10),
        }
    }

    /// Every value checked, with its key in the message.
    pub fn validate(&self) -> Result<()> {
        let err = |m: String| Err(CoreError::Config(format!("journal.{m}")));
        let min_segment = (SEGMENT_HEADER_LEN + BLOCK_HEADER_LEN) as u64;
        if self.segment_bytes < min_segment {
            return err(format!("segment_bytes must be >= {min_segment}"));
        }
        if self.block_bytes == 0 || self.block_bytes > MAX_BLOCK_LEN / 2 {
            return err(format!(
                "block_bytes must be within 1..={}",
                MAX_BLOCK_LEN / 2
            ));
        }
        if self.queue_bytes == 0 || self.flush_bytes == 0 {
            return err("queue_bytes and flush_bytes must be > 0".into());
        }
        for (name, d) in [
            ("flush_interval", self.flush_interval),
            ("retry_interval", self.retry_interval),
        ] {
            if d.is_zero() || d > Duration::from_secs(3600) {
                return err(format!("{name} must be within (0, 3600] s"));
            }
        }
        let levels = zstd::compression_level_range();
        if !levels.contains(&self.level) {
            return err(format!(
                "level must be within {levels:?}, got {}",
                self.level
            ));
        }
        if let Some(id) = &self.run_id {
            if id.is_empty() || id.len() > format::RUN_ID_MAX || !id.is_ascii() {
                return err(format!(
                    "run_id must be 1..={} ASCII characters",
                    format::RUN_ID_MAX
                ));
            }
        }
        Ok(())
    }
}
