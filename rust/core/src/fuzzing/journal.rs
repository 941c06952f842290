//! Journal segment files: the reader (scan, verify, resynchronise, decompress) and
//! `recover`, on files written from the fuzzer's bytes into a temporary directory.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use super::{pieces, Input};
use crate::error::CoreError;
use crate::journal::{recover, segment_name, BlockKind, CorruptSpan, JournalReader, JournalReport};
use crate::link::stream::{DecodedFrames, StreamDecoder};

const SEGMENT_MAGIC: &[u8] = b"OPSJRNL\0";
const BLOCK_MAGIC: &[u8] = b"OPJB";

/// A directory of its own under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        static N: AtomicU64 = AtomicU64::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let name = format!("opsims-fuzz-journal-{}-{n}", std::process::id());
        let path = std::env::temp_dir().join(name);
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("a temporary directory can be made");
        TempDir(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn crc_at(b: &mut [u8], at: usize, crc: u32) {
    b[at..at + 4].copy_from_slice(&crc.to_le_bytes());
}

/// Fill in the checksums of the segment header and of every block header (and of its
/// block when it fits in the file), last block first: the fuzzer then reaches block
/// decoding without computing CRCs.
fn reseal(file: &mut [u8]) {
    if file.len() >= 64 && file.starts_with(SEGMENT_MAGIC) {
        let crc = crc32fast::hash(&file[..60]);
        crc_at(file, 60, crc);
    }
    let starts: Vec<usize> = (0..file.len().saturating_sub(47))
        .filter(|&i| file[i..].starts_with(BLOCK_MAGIC))
        .collect();
    for &at in starts.iter().rev() {
        let crc = crc32fast::hash(&file[at..at + 40]);
        crc_at(file, at + 40, crc);
        let s = &file[at + 28..at + 32];
        let stored = u32::from_le_bytes([s[0], s[1], s[2], s[3]]) as usize;
        let end = at + 48 + stored;
        if end <= file.len() {
            let mut h = crc32fast::Hasher::new();
            h.update(&file[at..at + 44]);
            h.update(&file[at + 48..end]);
            let crc = h.finalize();
            crc_at(file, at + 44, crc);
        }
    }
}

fn file_len(dir: &Path, segment: u32) -> u64 {
    std::fs::metadata(dir.join(segment_name(segment))).map_or(0, |m| m.len())
}

fn check_spans<'a>(dir: &Path, spans: impl IntoIterator<Item = &'a CorruptSpan>) {
    for s in spans {
        let len = file_len(dir, s.segment);
        assert!(
            s.len > 0 && s.offset + s.len <= len,
            "span {s:?} outside its {len}-byte segment"
        );
    }
}

/// Read every block; detector batches are split into frames and decoded as a link
/// stream, as a replay does. Returns the report.
fn read_back(dir: &Path) -> JournalReport {
    let reader = JournalReader::open(dir).expect("the directory can be listed");
    let mut blocks = reader.blocks().expect("a reader can be made");
    let (mut n, mut dec) = (0u64, StreamDecoder::new());
    let (mut cols, mut frames) = (None, DecodedFrames::default());
    for b in &mut blocks {
        let b = b.expect("reading files that exist does not fail");
        n += 1;
        assert!(
            b.offset + 48 <= file_len(dir, b.segment),
            "a block past its file's end"
        );
        match b.frames() {
            Ok(batch) => {
                assert_eq!(b.kind, BlockKind::DetectorFrames);
                for (_host_ns, bytes) in batch {
                    let _ = dec.push(bytes, &mut cols, &mut frames);
                }
            }
            Err(CoreError::Journal(_)) => {}
            Err(e) => panic!("Block::frames failed with {e:?}, not a journal error"),
        }
    }
    let report = blocks.into_report();
    assert_eq!(
        report.blocks, n,
        "the report counts other blocks than were read"
    );
    check_spans(dir, report.corrupt.iter().chain(&report.torn_tail));
    report
}

/// Arbitrary bytes as the segment files of a journal (one to three, checksums
/// optionally filled in): the reader reports every byte it cannot verify as a span
/// inside its file and never fails on damage; reading twice gives the same report;
/// `recover`, if asked, leaves a journal that a second `recover` does not change.
pub fn journal_segment(data: &[u8]) {
    let mut inp = Input::new(data);
    let flags = inp.u8();
    let sealed = flags & 1 != 0;
    let n_files = 1 + usize::from((flags >> 1) % 3);
    let recover_too = flags & 8 != 0;
    let mut index = u32::from(inp.u8() % 4);
    let mut indices = vec![index];
    for _ in 1..n_files {
        index += 1 + u32::from(inp.u8() % 2);
        indices.push(index);
    }
    let cuts: Vec<usize> = (1..n_files).map(|_| usize::from(inp.u16())).collect();
    let bytes = inp.rest();
    let mut parts = pieces(bytes.len(), cuts);
    parts.resize(n_files, (bytes.len(), bytes.len()));

    let dir = TempDir::new();
    for (&i, &(a, b)) in indices.iter().zip(&parts) {
        let mut file = bytes[a..b].to_vec();
        if sealed {
            reseal(&mut file);
        }
        std::fs::write(dir.0.join(segment_name(i)), &file).expect("a segment can be written");
    }
    let report = read_back(&dir.0);
    assert_eq!(report.segments as usize, n_files);
    assert_eq!(read_back(&dir.0), report, "reading twice gave two reports");
    if !recover_too {
        return;
    }
    match recover(&dir.0) {
        Ok(_) => {}
        Err(CoreError::Journal(_) | CoreError::Io(_)) => return,
        Err(e) => panic!("recover failed with {e:?}"),
    }
    let after = read_back(&dir.0);
    assert!(
        after.torn_tail.is_none(),
        "a torn tail after recover: {after:?}"
    );
    assert!(
        after.closed || after.recovered,
        "recover left the journal open: {after:?}"
    );
    let again = recover(&dir.0).expect("recovering a recovered journal succeeds");
    assert!(
        again.cut.is_none() && !again.marker_written,
        "a second recover changed the journal: {again:?}"
    );
}
