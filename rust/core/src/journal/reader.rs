//! `JournalReader`: every segment in order, every block verified, and a report of what
//! did not verify. Corruption is never an error: it is a span in the report and the
//! reader goes on with the next block that verifies.

use std::collections::VecDeque;
use std::fs;
use std::path::{Path, PathBuf};

use super::codec::{frames, BlockDecoder, Frames};
use super::scan::{SegmentScan, Step};
use super::{segment_index, BlockKind};
use crate::error::{CoreError, Result};

/// One verified block with its raw payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Block {
    pub kind: BlockKind,
    pub seq: u64,
    pub host_ns: i64,
    /// Frames of a detector batch; 1 otherwise.
    pub items: u32,
    pub segment: u32,
    /// File offset of the block header in its segment.
    pub offset: u64,
    pub payload: Vec<u8>,
}

impl Block {
    /// The `(host_ns, bytes)` of each frame of a detector batch.
    pub fn frames(&self) -> Result<Frames<'_>> {
        if self.kind != BlockKind::DetectorFrames {
            return Err(CoreError::Journal(format!(
                "block {} is {}, not detector frames",
                self.seq,
                self.kind.name()
            )));
        }
        frames(&self.payload).map_err(|e| CoreError::Journal(format!("block {}: {e}", self.seq)))
    }
}

/// Bytes of a segment that did not verify.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CorruptSpan {
    pub segment: u32,
    pub offset: u64,
    pub len: u64,
    pub reason: String,
}

/// A block whose sequence number was not the one after its predecessor's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeqGap {
    pub expected: u64,
    pub found: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct JournalReport {
    pub run_id: Option<String>,
    pub segments: u32,
    /// Runs of segment indices missing between the first and the last file, as
    /// `(first, last)` inclusive: one entry per hole, however many files it spans.
    pub missing_segments: Vec<(u32, u32)>,
    pub last_segment: Option<u32>,
    /// Verified blocks (of every kind) and detector frames in them.
    pub blocks: u64,
    pub frames: u64,
    pub raw_bytes: u64,
    pub stored_bytes: u64,
    pub first_seq: Option<u64>,
    pub last_seq: Option<u64>,
    pub last_host_ns: Option<i64>,
    /// The last block is the closed block: the run ended cleanly.
    pub closed: bool,
    /// The last block is a recovered marker: left open, then recovered.
    pub recovered: bool,
    pub recoveries: u64,
    /// Appends the writer refused, as its closed block says.
    pub refused_appends: u64,
    pub corrupt: Vec<CorruptSpan>,
    /// Bytes after the last verified block of the last segment (a crash mid-write).
    pub torn_tail: Option<CorruptSpan>,
    pub gaps: Vec<SeqGap>,
}

impl JournalReport {
    fn accept(&mut self, b: &Block, stored: u32) {
        self.blocks += 1;
        if b.kind == BlockKind::DetectorFrames {
            self.frames += u64::from(b.items);
        }
        self.raw_bytes += b.payload.len() as u64;
        self.stored_bytes += u64::from(stored);
        // Wrapping: a block of a damaged journal can carry any sequence number.
        let expected = self.last_seq.map_or(0, |s| s.wrapping_add(1));
        if b.seq != expected {
            self.gaps.push(SeqGap {
                expected,
                found: b.seq,
            });
        }
        self.first_seq.get_or_insert(b.seq);
        self.last_seq = Some(b.seq);
        self.last_host_ns = Some(b.host_ns);
        self.closed = b.kind == BlockKind::Closed;
        self.recovered = b.kind == BlockKind::Recovered;
        if b.kind == BlockKind::Recovered {
            self.recoveries += 1;
        }
        if b.kind == BlockKind::Closed {
            if let Some(n) = b.payload.get(8..16) {
                let mut a = [0u8; 8];
                a.copy_from_slice(n);
                self.refused_appends = self.refused_appends.saturating_add(u64::from_le_bytes(a));
            }
        }
    }
}

/// A journal directory and its segment files.
#[derive(Debug, Clone)]
pub struct JournalReader {
    segments: Vec<(u32, PathBuf)>,
}

impl JournalReader {
    pub fn open(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref();
        let mut segments = Vec::new();
        for entry in
            fs::read_dir(dir).map_err(|e| CoreError::Journal(format!("{}: {e}", dir.display())))?
        {
            let entry = entry?;
            let name = entry.file_name();
            if let Some(i) = name.to_str().and_then(segment_index) {
                segments.push((i, entry.path()));
            }
        }
        segments.sort();
        Ok(JournalReader { segments })
    }

    /// Indices of the segment files, in order.
    pub fn segment_indices(&self) -> Vec<u32> {
        self.segments.iter().map(|s| s.0).collect()
    }

    /// Every verified block in order; the report fills in as they are read.
    pub fn blocks(&self) -> Result<Blocks> {
        let mut report = JournalReport {
            segments: self.segments.len() as u32,
            last_segment: self.segments.last().map(|s| s.0),
            ..Default::default()
        };
        report.missing_segments = self
            .segments
            .windows(2)
            .filter(|w| w[1].0 > w[0].0 + 1)
            .map(|w| (w[0].0 + 1, w[1].0 - 1))
            .collect();
        Ok(Blocks {
            todo: self.segments.iter().cloned().collect(),
            cur: None,
            dec: BlockDecoder::new()?,
            report,
            trailing: Vec::new(),
            done: false,
        })
    }

    /// Read and verify everything; only the report is kept.
    pub fn scan(&self) -> Result<JournalReport> {
        let mut blocks = self.blocks()?;
        for b in &mut blocks {
            b?;
        }
        Ok(blocks.into_report())
    }
}

/// The iterator of `JournalReader::blocks`; an I/O error ends it.
#[derive(Debug)]
pub struct Blocks {
    todo: VecDeque<(u32, PathBuf)>,
    cur: Option<(SegmentScan, bool)>,
    dec: BlockDecoder,
    report: JournalReport,
    /// Corrupt spans of the last segment not yet followed by a valid block: if none
    /// follows, they are part of the torn tail.
    trailing: Vec<CorruptSpan>,
    done: bool,
}

impl std::fmt::Debug for SegmentScan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SegmentScan")
    }
}

impl Blocks {
    /// The report so far (complete once the iterator is exhausted).
    pub fn report(&self) -> &JournalReport {
        &self.report
    }

    pub fn into_report(self) -> JournalReport {
        self.report
    }

    fn step(&mut self) -> Result<Option<Block>> {
        loop {
            let Some((scan, last)) = &mut self.cur else {
                let Some((index, path)) = self.todo.pop_front() else {
                    return Ok(None);
                };
                self.cur = Some((SegmentScan::open(index, &path)?, self.todo.is_empty()));
                continue;
            };
            let last = *last;
            match scan.next_step(&mut self.dec)? {
                Step::Header(h) => self.header(h.index, h.run_id),
                Step::Block(b, stored) => {
                    self.report.corrupt.append(&mut self.trailing);
                    self.report.accept(&b, stored);
                    return Ok(Some(b));
                }
                Step::Corrupt(span) if last => self.trailing.push(span),
                Step::Corrupt(span) => self.report.corrupt.push(span),
                Step::End(tail) => {
                    self.cur = None;
                    if last {
                        self.report.torn_tail =
                            merge_tail(std::mem::take(&mut self.trailing), tail);
                    } else {
                        self.report.corrupt.extend(tail);
                    }
                }
            }
        }
    }

    fn header(&mut self, index: u32, run_id: String) {
        match &self.report.run_id {
            None => self.report.run_id = Some(run_id),
            Some(id) if *id != run_id => self.report.corrupt.push(CorruptSpan {
                segment: index,
                offset: 0,
                len: super::SEGMENT_HEADER_LEN as u64,
                reason: format!("segment of run {run_id:?} in the journal of run {id:?}"),
            }),
            Some(_) => {}
        }
    }
}

/// One span from the first trailing corrupt span to the end of the file.
fn merge_tail(trailing: Vec<CorruptSpan>, tail: Option<CorruptSpan>) -> Option<CorruptSpan> {
    let end = tail
        .as_ref()
        .or(trailing.last())
        .map(|s| s.offset + s.len)?;
    let first = trailing.into_iter().next().or(tail)?;
    Some(CorruptSpan {
        len: end - first.offset,
        ..first
    })
}

impl Iterator for Blocks {
    type Item = Result<Block>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        match self.step() {
            Ok(Some(b)) => Some(Ok(b)),
            Ok(None) => {
                self.done = true;
                None
            }
            Err(e) => {
                self.done = true;
                Some(Err(e))
            }
        }
    }
}
