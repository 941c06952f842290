//! A failing disk: the next segment's path is a symlink to /dev/full, so every write to
//! it fails with ENOSPC until the test removes the link (as root, permission bits cannot
//! make a directory fail, so this is the portable failure).

use std::fs;
use std::os::unix::fs::symlink;

use super::*;

/// A writer whose second segment is /dev/full; None where there is no /dev/full.
fn full_after_first_segment(dir: &TempDir, queue_bytes: u64) -> Option<JournalWriter> {
    if !Path::new("/dev/full").exists() {
        eprintln!("no /dev/full: skipped");
        return None;
    }
    let cfg = JournalConfig {
        segment_bytes: 4096,
        queue_bytes,
        close_timeout: Duration::from_millis(300),
        ..config(dir)
    };
    let w = JournalWriter::open(cfg).unwrap();
    symlink("/dev/full", dir.segment(1)).unwrap();
    Some(w)
}

#[test]
fn full_disk_keeps_blocks_queued_and_refuses_beyond_the_bound() {
    let dir = TempDir::new("full");
    let Some(w) = full_after_first_segment(&dir, 20_000) else {
        return;
    };
    let mut accepted = Vec::new();
    let mut refused = 0;
    for i in 0..100u64 {
        let p = noise(1000, i);
        match w.append(BlockKind::Potentiostat, i as i64, &p) {
            Ok(()) => accepted.push(p),
            Err(CoreError::JournalFull(m)) => {
                assert!(m.contains("No space left"), "{m}");
                refused += 1;
            }
            Err(e) => panic!("{e}"),
        }
        if i == 10 {
            wait_for(&w, "the disk error", |s| s.disk_error.is_some());
        }
    }
    let st = w.status();
    let err = st.disk_error.clone().unwrap();
    assert!(
        err.contains("segment-000001.ojs") && err.contains("No space left"),
        "{err}"
    );
    assert!(st.disk_errors >= 1);
    assert!(refused > 0 && st.refused_appends == refused, "{st:?}");
    assert!(st.queued_bytes <= 20_000 && st.queued_high_water <= 20_000);
    assert_eq!(st.queued_bytes, st.bytes_appended - st.raw_bytes_durable);
    let stalled = st.durable_seq.unwrap();
    assert!(stalled < accepted.len() as u64);
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(
        w.status().durable_seq,
        Some(stalled),
        "nothing durable while full"
    );

    // Space again: everything queued is written, nothing was lost.
    fs::remove_file(dir.segment(1)).unwrap();
    wait_for(&w, "the backlog", |s| s.queued_bytes == 0);
    let st = w.close().unwrap();
    assert_eq!(st.disk_error, None);
    let (blocks, report) = read_all(dir.path());
    let got: Vec<&Vec<u8>> = blocks[..blocks.len() - 1]
        .iter()
        .map(|b| &b.payload)
        .collect();
    assert_eq!(got, accepted.iter().collect::<Vec<_>>());
    assert!(report.gaps.is_empty() && report.corrupt.is_empty() && report.closed);
    assert_eq!(report.refused_appends, refused);
}

#[test]
fn close_on_a_full_disk_gives_up_and_says_what_was_lost() {
    let dir = TempDir::new("full-close");
    let Some(w) = full_after_first_segment(&dir, 1 << 20) else {
        return;
    };
    for i in 0..10 {
        w.append(BlockKind::Note, i, &noise(1000, i as u64))
            .unwrap();
    }
    let t = Instant::now();
    let err = w.close().unwrap_err().to_string();
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    assert!(
        err.contains("not durable") && err.contains("No space left"),
        "{err}"
    );
    let st = w.status();
    assert!(!st.closed && st.queued_bytes > 0);
    assert!(st.writer_error.unwrap().contains("close gave up"));
    drop(w);
    // What did reach the disk reads back; recovery ends the journal.
    fs::remove_file(dir.segment(1)).unwrap();
    let r = recover(dir.path()).unwrap();
    assert!(r.marker_written && r.blocks >= 1 && r.blocks < 10);
}

#[test]
fn drop_without_close_flushes_and_does_not_hang() {
    let dir = TempDir::new("drop");
    let w = JournalWriter::open(JournalConfig {
        flush_interval: Duration::from_secs(60),
        ..config(&dir)
    })
    .unwrap();
    for (i, f) in emitter_frames(20).iter().enumerate() {
        w.append_frame(i as i64, f).unwrap();
    }
    w.append(BlockKind::Safety, 1, b"trip").unwrap();
    let t = Instant::now();
    drop(w);
    assert!(t.elapsed() < Duration::from_secs(3));
    let (blocks, report) = read_all(dir.path());
    assert_eq!(report.frames, emitter_frames(20).len() as u64);
    assert!(blocks.iter().any(|b| b.kind == BlockKind::Safety));
    assert!(!report.closed && report.torn_tail.is_none());
}

#[test]
fn drop_on_a_full_disk_does_not_hang() {
    let dir = TempDir::new("drop-full");
    let Some(w) = full_after_first_segment(&dir, 1 << 20) else {
        return;
    };
    for i in 0..10 {
        w.append(BlockKind::Note, i, &noise(1000, i as u64))
            .unwrap();
    }
    wait_for(&w, "the disk error", |s| s.disk_error.is_some());
    let t = Instant::now();
    drop(w);
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
}

#[test]
fn empty_frames_count_against_the_bound() {
    let dir = TempDir::new("empty-frames");
    let w = JournalWriter::open(JournalConfig {
        queue_bytes: 1200,
        flush_interval: Duration::from_secs(60),
        ..config(&dir)
    })
    .unwrap();
    for i in 0..100 {
        w.append_frame(i, b"").unwrap();
    }
    assert!(matches!(
        w.append_frame(100, b""),
        Err(CoreError::JournalFull(_))
    ));
    assert_eq!(w.status().queued_bytes, 1200);
    let st = w.close().unwrap();
    assert_eq!(
        (st.frames_durable, st.refused_appends, st.queued_bytes),
        (100, 1, 0)
    );
}
