use std::fs::{self, OpenOptions};
use std::io::Write;

use super::*;

/// A closed journal of `n` incompressible note blocks of `len` bytes.
fn journal(dir: &TempDir, n: u64, len: usize) {
    let w = JournalWriter::open(config(dir)).unwrap();
    for i in 0..n {
        w.append(BlockKind::Note, i as i64, &noise(len, i)).unwrap();
    }
    w.close().unwrap();
}

fn flip(path: &Path, at: u64) {
    let mut bytes = fs::read(path).unwrap();
    bytes[at as usize] ^= 0x40;
    fs::write(path, bytes).unwrap();
}

#[test]
fn crc_corruption_in_the_middle_is_reported_and_skipped() {
    let dir = TempDir::new("crc");
    journal(&dir, 10, 300);
    let (blocks, _) = read_all(dir.path());
    let victim = &blocks[4];
    flip(
        &dir.segment(0),
        victim.offset + BLOCK_HEADER_LEN as u64 + 100,
    );

    let (after, report) = read_all(dir.path());
    assert_eq!(after.len(), blocks.len() - 1);
    assert!(after.iter().all(|b| b.seq != 4));
    assert_eq!(after[4], blocks[5]);
    assert_eq!(report.corrupt.len(), 1);
    let span = &report.corrupt[0];
    assert_eq!(
        (span.segment, span.offset, span.len),
        (0, victim.offset, blocks[5].offset - victim.offset)
    );
    assert!(span.reason.contains("CRC"), "{}", span.reason);
    assert_eq!(
        report.gaps,
        vec![SeqGap {
            expected: 4,
            found: 5
        }]
    );
    assert!(report.closed && report.torn_tail.is_none());
}

#[test]
fn damaged_header_resyncs_on_the_next_block() {
    let dir = TempDir::new("resync");
    journal(&dir, 10, 300);
    let (blocks, _) = read_all(dir.path());
    // The length field: the header checksum catches it, the reader looks for a magic.
    flip(&dir.segment(0), blocks[6].offset + 29);
    let (after, report) = read_all(dir.path());
    assert_eq!(after.len(), blocks.len() - 1);
    assert_eq!(report.corrupt.len(), 1);
    let span = &report.corrupt[0];
    assert_eq!(span.offset, blocks[6].offset);
    assert_eq!(span.len, blocks[7].offset - blocks[6].offset);
    assert!(span.reason.contains("header CRC"), "{}", span.reason);
    assert_eq!(
        report.gaps,
        vec![SeqGap {
            expected: 6,
            found: 7
        }]
    );
}

/// A journal left open (dropped without close) with half a block after its end.
fn torn(dir: &TempDir) -> (Vec<Block>, u64, u64) {
    let w = JournalWriter::open(config(dir)).unwrap();
    for i in 0..5 {
        w.append(BlockKind::Potentiostat, 100 + i, &noise(200, i as u64))
            .unwrap();
    }
    drop(w);
    let path = dir.segment(0);
    let good_len = fs::metadata(&path).unwrap().len();
    let mut enc = BlockEncoder::new(1, TransformPolicy::Fixed(Transform::None)).unwrap();
    let block = enc.opaque(BlockKind::Potentiostat, 5, 105, &noise(200, 5));
    let half = block.len() as u64 / 2;
    let mut f = OpenOptions::new().append(true).open(&path).unwrap();
    f.write_all(&block[..half as usize]).unwrap();
    let (blocks, _) = read_all(dir.path());
    (blocks, good_len, half)
}

#[test]
fn torn_tail_is_cut_by_recover_once() {
    let dir = TempDir::new("torn");
    let (blocks, good_len, half) = torn(&dir);
    assert_eq!(blocks.len(), 5);
    let (_, report) = read_all(dir.path());
    assert!(!report.closed && !report.recovered);
    let tail = report.torn_tail.clone().unwrap();
    assert_eq!((tail.segment, tail.offset, tail.len), (0, good_len, half));
    assert!(report.corrupt.is_empty());

    let r = recover(dir.path()).unwrap();
    assert_eq!(
        (r.blocks, r.last_seq, r.last_host_ns),
        (5, Some(4), Some(104))
    );
    assert_eq!(r.bytes_cut, half);
    assert!(r.marker_written && !r.was_closed);
    assert_eq!((r.next_seq, r.next_segment), (6, 1));

    let (after, report) = read_all(dir.path());
    assert_eq!(&after[..5], &blocks[..]);
    assert_eq!((after[5].kind, after[5].seq), (BlockKind::Recovered, 5));
    assert_eq!(after[5].offset, good_len);
    assert!(report.recovered && report.torn_tail.is_none() && report.gaps.is_empty());

    let bytes = fs::read(dir.segment(0)).unwrap();
    let again = recover(dir.path()).unwrap();
    assert_eq!(
        (again.blocks, again.last_seq, again.bytes_cut),
        (5, Some(4), 0)
    );
    assert!(!again.marker_written);
    assert_eq!(fs::read(dir.segment(0)).unwrap(), bytes);
}

#[test]
fn zeroed_tail_is_torn_not_corrupt() {
    // A crash can leave the file longer than what reached the disk, filled with zeros.
    let dir = TempDir::new("zeros");
    journal(&dir, 3, 100);
    let path = dir.segment(0);
    let len = fs::metadata(&path).unwrap().len();
    OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap()
        .write_all(&[0; 5000])
        .unwrap();
    let (_, report) = read_all(dir.path());
    assert!(report.corrupt.is_empty());
    assert_eq!(
        report.torn_tail.map(|t| (t.offset, t.len)),
        Some((len, 5000))
    );
    let r = recover(dir.path()).unwrap();
    // It had closed: the zeros are cut and no marker is needed.
    assert!(r.was_closed && !r.marker_written);
    assert_eq!(fs::metadata(&path).unwrap().len(), len);
}

#[test]
fn headerless_last_segment_is_removed_and_marked() {
    let dir = TempDir::new("headerless");
    let cfg = JournalConfig {
        segment_bytes: 2000,
        ..config(&dir)
    };
    let w = JournalWriter::open(cfg).unwrap();
    for i in 0..4 {
        w.append(BlockKind::Note, i, &noise(900, i as u64)).unwrap();
    }
    drop(w);
    let last = *JournalReader::open(dir.path())
        .unwrap()
        .segment_indices()
        .last()
        .unwrap();
    fs::write(dir.segment(last + 1), b"OPSJ").unwrap();
    let r = recover(dir.path()).unwrap();
    assert_eq!((r.bytes_cut, r.blocks), (4, 4));
    let (blocks, report) = read_all(dir.path());
    assert_eq!(
        blocks.last().map(|b| (b.kind, b.segment)),
        Some((BlockKind::Recovered, last + 1))
    );
    assert!(report.recovered && report.gaps.is_empty() && report.corrupt.is_empty());
}

#[test]
fn open_refuses_a_used_directory_unless_appending() {
    let dir = TempDir::new("append");
    let (_, _, _) = torn(&dir);
    assert!(matches!(
        JournalWriter::open(config(&dir)),
        Err(CoreError::Journal(m)) if m.contains("not empty")
    ));
    let cfg = JournalConfig {
        append: true,
        ..config(&dir)
    };
    let w = JournalWriter::open(cfg.clone()).unwrap();
    w.append(BlockKind::Step, 7, b"step 2").unwrap();
    w.close().unwrap();
    let w = JournalWriter::open(cfg).unwrap();
    w.append(BlockKind::Step, 8, b"step 3").unwrap();
    w.close().unwrap();

    let (blocks, report) = read_all(dir.path());
    let kinds: Vec<BlockKind> = blocks[5..].iter().map(|b| b.kind).collect();
    use BlockKind::*;
    assert_eq!(kinds, [Recovered, Step, Closed, Step, Closed]);
    assert!(
        report.gaps.is_empty() && report.corrupt.is_empty() && report.closed,
        "{report:?}"
    );
    assert_eq!(report.segments, 3);
    assert_eq!(report.recoveries, 1);
    assert_eq!(report.run_id.as_deref().map(str::len), Some(25));
}

/// Found by fuzzing (journal_segment): a closed journal followed by an empty segment
/// file. `recover` removed the empty segment, which bared the garbage after the closed
/// block as the new last segment's torn tail, and a second `recover` cut it: recovery
/// was not idempotent.
#[test]
fn an_empty_segment_after_a_closed_journal_is_cut_with_the_tail_it_bares() {
    let dir = TempDir::new("closed-then-empty");
    journal(&dir, 3, 100);
    let last = *JournalReader::open(dir.path())
        .unwrap()
        .segment_indices()
        .last()
        .unwrap();
    let garbage = b"bytes after the closed block";
    let mut f = OpenOptions::new()
        .append(true)
        .open(dir.segment(last))
        .unwrap();
    f.write_all(garbage).unwrap();
    fs::write(dir.segment(last + 1), b"OPSJ").unwrap();
    let r = recover(dir.path()).unwrap();
    assert!(r.was_closed && !r.marker_written, "{r:?}");
    assert_eq!(r.bytes_cut, 4 + garbage.len() as u64);
    assert_eq!(r.next_segment, last + 1);
    let again = recover(dir.path()).unwrap();
    assert!(again.cut.is_none() && !again.marker_written, "{again:?}");
    let (blocks, report) = read_all(dir.path());
    assert_eq!(blocks.len(), 4);
    assert!(report.closed && report.torn_tail.is_none() && report.corrupt.is_empty());
}

/// Found by fuzzing (journal_segment): blocks of a damaged journal whose checksums match
/// but whose sequence numbers reach 2^64 - 1, or whose closed blocks count more refused
/// appends than fit, overflowed the report and `recover` (panics in debug builds).
#[test]
fn extreme_sequence_numbers_and_counts_do_not_overflow() {
    let dir = TempDir::new("extreme-seq");
    fs::create_dir_all(dir.path()).unwrap();
    let header = SegmentHeader {
        version: FORMAT_VERSION,
        index: 0,
        created_ns: 0,
        run_id: "extreme".into(),
    };
    let mut file = header.encode().to_vec();
    let mut refused = vec![0u8; 8];
    refused.extend_from_slice(&u64::MAX.to_le_bytes());
    for (kind, seq, payload) in [
        (BlockKind::Closed, u64::MAX, &refused[..]),
        (BlockKind::Closed, u64::MAX, &refused[..]),
        (BlockKind::Note, u64::MAX - 1, b"note"),
    ] {
        let h = BlockHeader {
            kind,
            codec: Codec::STORED,
            seq,
            host_ns: 0,
            raw_len: payload.len() as u32,
            stored_len: payload.len() as u32,
            items: 1,
        };
        file.extend(h.seal(payload));
    }
    fs::write(dir.segment(0), &file).unwrap();
    let (blocks, report) = read_all(dir.path());
    assert_eq!(blocks.len(), 3);
    assert_eq!(report.refused_appends, u64::MAX);
    assert_eq!(
        report.gaps[0],
        SeqGap {
            expected: 0,
            found: u64::MAX
        }
    );
    // Left open (a note is last): the marker takes the next number, wrapping.
    let r = recover(dir.path()).unwrap();
    assert!(r.marker_written);
    assert_eq!(r.next_seq, 0);
    assert!(!recover(dir.path()).unwrap().marker_written);
}

/// Noticed while fuzzing: segment files numbered far apart were reported as every index
/// between them, billions of entries for `segment-000000` next to `segment-4000000000`.
#[test]
fn missing_segments_are_reported_as_runs() {
    let dir = TempDir::new("missing");
    let w = JournalWriter::open(JournalConfig {
        segment_bytes: 2000,
        ..config(&dir)
    })
    .unwrap();
    for i in 0..12 {
        w.append(BlockKind::Note, i, &noise(900, i as u64)).unwrap();
    }
    w.close().unwrap();
    let indices = JournalReader::open(dir.path()).unwrap().segment_indices();
    assert!(indices.len() >= 6, "{indices:?}");
    for gone in [1, 3, 4] {
        fs::remove_file(dir.segment(indices[gone])).unwrap();
    }
    let last = *indices.last().unwrap();
    fs::rename(dir.segment(last), dir.segment(4_000_000_000)).unwrap();

    let (_, report) = read_all(dir.path());
    let before_last = indices[indices.len() - 2];
    assert_eq!(
        report.missing_segments,
        [
            (indices[1], indices[1]),
            (indices[3], indices[4]),
            (before_last + 1, 3_999_999_999)
        ]
    );
    assert_eq!(report.last_segment, Some(4_000_000_000));
}
