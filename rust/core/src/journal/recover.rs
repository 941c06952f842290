//! `recover`: end a journal that was left open (a crash, a power cut, a kill). The torn
//! tail is cut at the last verified block and a recovered block is appended, so the
//! journal says what happened; a second call finds it ended and changes nothing.

use std::fs::{self, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::path::Path;

use super::codec::{BlockEncoder, TransformPolicy};
use super::format::{SegmentHeader, Transform, FORMAT_VERSION, SEGMENT_HEADER_LEN};
use super::reader::{CorruptSpan, JournalReader};
use super::sink::sync_dir;
use super::{segment_name, BlockKind};
use crate::acquisition::realtime_ns;
use crate::error::Result;

/// What `recover` kept and did.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Recovery {
    pub run_id: Option<String>,
    /// Verified blocks kept, end markers not counted.
    pub blocks: u64,
    pub frames: u64,
    /// Sequence number and host time of the last kept block (end markers not counted).
    pub last_seq: Option<u64>,
    pub last_host_ns: Option<i64>,
    /// The torn tail cut by this call, and the bytes cut (more than its length when
    /// removing an empty last segment of an ended journal bared another tail).
    pub cut: Option<CorruptSpan>,
    pub bytes_cut: u64,
    /// Spans in the middle that did not verify: left in place, only reported.
    pub corrupt: Vec<CorruptSpan>,
    /// The journal had ended cleanly (closed block last).
    pub was_closed: bool,
    /// This call appended the recovered block.
    pub marker_written: bool,
    /// Where a writer continuing the journal goes on.
    pub next_seq: u64,
    pub next_segment: u32,
}

/// Recover the journal in `dir` if it was left open; idempotent.
pub fn recover(dir: impl AsRef<Path>) -> Result<Recovery> {
    let dir = dir.as_ref();
    let reader = JournalReader::open(dir)?;
    let mut blocks = reader.blocks()?;
    let mut r = Recovery::default();
    for b in &mut blocks {
        let b = b?;
        if b.kind.is_appendable() {
            r.blocks += 1;
            r.frames += u64::from(if b.kind == BlockKind::DetectorFrames {
                b.items
            } else {
                0
            });
            r.last_seq = Some(b.seq);
            r.last_host_ns = Some(b.host_ns);
        }
    }
    let mut report = blocks.into_report();
    r.run_id = report.run_id.clone();
    r.was_closed = report.closed;
    r.next_seq = report.last_seq.map_or(0, |s| s.wrapping_add(1));
    while let Some(tail) = report.torn_tail.take() {
        r.bytes_cut += cut(dir, &tail)?;
        let removed = tail.offset < SEGMENT_HEADER_LEN as u64;
        r.cut.get_or_insert(tail);
        // An ended journal gets no marker to stand in a removed last segment: the segment
        // before it is the last now, and bytes after its last block are the torn tail.
        if !(removed && (report.closed || report.recovered)) {
            break;
        }
        report = JournalReader::open(dir)?.scan()?;
    }
    r.corrupt = report.corrupt.clone();
    if let (Some(segment), false) = (report.last_segment, report.closed || report.recovered) {
        let run_id = r.run_id.clone().unwrap_or_else(|| "recovered".into());
        write_marker(dir, segment, &run_id, &r)?;
        r.marker_written = true;
        r.next_seq = r.next_seq.wrapping_add(1);
    }
    r.next_segment = report.last_segment.map_or(0, |s| s.saturating_add(1));
    Ok(r)
}

/// Cut the file at the tail's offset (remove it if not even its header verified; the
/// marker then recreates it with a header).
fn cut(dir: &Path, tail: &CorruptSpan) -> Result<u64> {
    let path = dir.join(segment_name(tail.segment));
    let len = fs::metadata(&path)?.len();
    if tail.offset < SEGMENT_HEADER_LEN as u64 {
        fs::remove_file(&path)?;
    } else {
        let f = OpenOptions::new().write(true).open(&path)?;
        f.set_len(tail.offset)?;
        f.sync_all()?;
    }
    sync_dir(dir)?;
    Ok(len.saturating_sub(tail.offset.min(len)))
}

/// Append the recovered block to `segment` (created with a header if it is not there).
/// Payload: last kept seq (u64::MAX: none), bytes cut, host ns of the recovery.
fn write_marker(dir: &Path, segment: u32, run_id: &str, r: &Recovery) -> Result<()> {
    let path = dir.join(segment_name(segment));
    let mut f = OpenOptions::new().create(true).append(true).open(&path)?;
    if f.seek(SeekFrom::End(0))? == 0 {
        let header = SegmentHeader {
            version: FORMAT_VERSION,
            index: segment,
            created_ns: realtime_ns(),
            run_id: run_id.to_owned(),
        };
        f.write_all(&header.encode())?;
    }
    let now = realtime_ns();
    let mut payload = Vec::with_capacity(24);
    payload.extend_from_slice(&r.last_seq.unwrap_or(u64::MAX).to_le_bytes());
    payload.extend_from_slice(&r.bytes_cut.to_le_bytes());
    payload.extend_from_slice(&now.to_le_bytes());
    let mut enc = BlockEncoder::new(1, TransformPolicy::Fixed(Transform::None))?;
    f.write_all(&enc.opaque(BlockKind::Recovered, r.next_seq, now, &payload))?;
    f.sync_all()?;
    sync_dir(dir)?;
    Ok(())
}
