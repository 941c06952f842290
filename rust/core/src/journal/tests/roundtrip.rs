use super::*;
use crate::journal::writer::SPARE_BATCHES;

const OPAQUE: [BlockKind; 6] = [
    BlockKind::Potentiostat,
    BlockKind::Clock,
    BlockKind::Safety,
    BlockKind::Control,
    BlockKind::Step,
    BlockKind::Note,
];

#[test]
fn every_kind_round_trips_in_sequence() {
    let dir = TempDir::new("kinds");
    let w = JournalWriter::open(config(&dir)).unwrap();
    let mut sent = Vec::new();
    for (i, kind) in OPAQUE.into_iter().enumerate() {
        // A small payload stays raw, a large repetitive one is compressed.
        let small = format!("{{\"kind\":\"{}\",\"i\":{i}}}", kind.name()).into_bytes();
        let large = small.repeat(100);
        for (j, p) in [small, large, Vec::new()].into_iter().enumerate() {
            let host_ns = -5 + (i * 10 + j) as i64;
            w.append(kind, host_ns, &p).unwrap();
            sent.push((kind, host_ns, p));
        }
    }
    let st = w.close().unwrap();
    assert!(st.closed);
    assert_eq!(st.blocks_appended, sent.len() as u64);
    assert_eq!(st.blocks_durable, sent.len() as u64 + 1);
    assert_eq!(st.durable_seq, Some(sent.len() as u64));
    assert_eq!(st.queued_bytes, 0);
    assert!(st.stored_bytes_durable < st.raw_bytes_durable);

    let (blocks, report) = read_all(dir.path());
    assert_eq!(blocks.len(), sent.len() + 1);
    for (i, (b, (kind, host_ns, p))) in blocks.iter().zip(&sent).enumerate() {
        assert_eq!(
            (b.seq, b.kind, b.host_ns, &b.payload),
            (i as u64, *kind, *host_ns, p)
        );
    }
    let last = &blocks[sent.len()];
    assert_eq!(last.kind, BlockKind::Closed);
    let before = u64::from_le_bytes(last.payload[..8].try_into().unwrap());
    assert_eq!(before, sent.len() as u64 - 1);
    assert!(report.closed && !report.recovered);
    assert!(report.corrupt.is_empty() && report.gaps.is_empty());
    assert_eq!(report.torn_tail, None);
    assert_eq!(report.last_seq, Some(sent.len() as u64));
    assert_eq!(report.blocks, sent.len() as u64 + 1);
    assert_eq!(report.segments, 1);
}

#[test]
fn frames_come_back_byte_identical() {
    let dir = TempDir::new("frames");
    let cfg = JournalConfig {
        block_bytes: 64 << 10,
        ..config(&dir)
    };
    let w = JournalWriter::open(cfg).unwrap();
    let mut sent: Vec<(i64, Vec<u8>)> = emitter_frames(200)
        .into_iter()
        .enumerate()
        .map(|(i, f)| (1_000_000 * i as i64, f))
        .collect();
    // Chunks that are not whole link frames: odd lengths, empty, one beyond block_bytes.
    for (i, len) in [0usize, 1, 3, 7, 4097, 100_000].into_iter().enumerate() {
        sent.push((-(i as i64), noise(len, i as u64)));
    }
    for (ns, f) in &sent {
        w.append_frame(*ns, f).unwrap();
    }
    w.append(BlockKind::Note, 5, b"between frames").unwrap();
    let st = w.close().unwrap();
    assert_eq!(st.frames_appended, sent.len() as u64);
    assert_eq!(st.frames_durable, sent.len() as u64);

    let (blocks, report) = read_all(dir.path());
    let got: Vec<(i64, Vec<u8>)> = blocks
        .iter()
        .filter(|b| b.kind == BlockKind::DetectorFrames)
        .flat_map(|b| b.frames().unwrap().map(|(ns, f)| (ns, f.to_vec())))
        .collect();
    assert_eq!(got, sent);
    assert!(report.frames == sent.len() as u64 && report.gaps.is_empty());
    assert!(blocks.len() > 5, "several batches: {}", blocks.len());
    assert_eq!(report.blocks, st.blocks_appended + 1);
}

#[test]
fn emitter_frames_compress() {
    let dir = TempDir::new("ratio");
    let w = JournalWriter::open(config(&dir)).unwrap();
    let frames = emitter_frames(200);
    for (i, f) in frames.iter().enumerate() {
        w.append_frame(i as i64, f).unwrap();
    }
    let ratio = w.close().unwrap().compression_ratio();
    let all = frames.concat();
    let plain = all.len() as f64 / zstd::bulk::compress(&all, 1).unwrap().len() as f64;
    // The word transform is what gains on TTTR records (docs/journal.md).
    assert!(
        ratio > 1.2 && ratio > 1.1 * plain,
        "{ratio} vs plain zstd {plain}"
    );
}

#[test]
fn transforms_invert_every_length() {
    for t in [Transform::None, Transform::Shuffle, Transform::DeltaShuffle] {
        for len in 0..40 {
            let src = noise(len, len as u64 + 11);
            let mut fwd = Vec::new();
            forward(t, &src, &mut fwd);
            assert_eq!(fwd.len(), src.len());
            let mut back = Vec::new();
            inverse(t, &fwd, &mut back);
            assert_eq!(back, src, "{t:?} len {len}");
        }
    }
}

#[test]
fn codec_stored_when_compression_does_not_help() {
    let mut enc = BlockEncoder::new(1, TransformPolicy::Fixed(Transform::DeltaShuffle)).unwrap();
    let noisy = noise(4096, 1);
    let block = enc.opaque(BlockKind::Note, 0, 0, &noisy);
    let h = BlockHeader::parse(&block).unwrap();
    assert_eq!(h.codec, Codec::STORED);
    assert_eq!(block.len(), BLOCK_HEADER_LEN + noisy.len());
    let mut batch = FrameBatch::default();
    batch.push(9, &noisy);
    let h = BlockHeader::parse(&enc.frames(1, &batch)).unwrap();
    assert_eq!((h.codec, h.items, h.host_ns), (Codec::STORED, 1, 9));
}

#[test]
fn segments_roll_over_in_order() {
    let dir = TempDir::new("roll");
    let cfg = JournalConfig {
        segment_bytes: 16 << 10,
        ..config(&dir)
    };
    let w = JournalWriter::open(cfg).unwrap();
    let payloads: Vec<Vec<u8>> = (0..100).map(|i| noise(1000, i)).collect();
    for (i, p) in payloads.iter().enumerate() {
        w.append(BlockKind::Potentiostat, i as i64, p).unwrap();
    }
    let st = w.close().unwrap();
    let files = JournalReader::open(dir.path()).unwrap().segment_indices();
    assert!(files.len() >= 6, "{files:?}");
    assert_eq!(files, (0..files.len() as u32).collect::<Vec<_>>());
    assert_eq!(st.segments, files.len() as u64);
    let mut total = 0;
    for &i in &files {
        let len = std::fs::metadata(dir.segment(i)).unwrap().len();
        assert!(len <= 16 << 10, "segment {i}: {len} bytes");
        total += len;
    }
    assert_eq!(st.durable_bytes, total);
    let (blocks, report) = read_all(dir.path());
    let got: Vec<&Vec<u8>> = blocks.iter().take(100).map(|b| &b.payload).collect();
    assert_eq!(got, payloads.iter().collect::<Vec<_>>());
    assert!(report.gaps.is_empty() && report.corrupt.is_empty() && report.closed);
    assert!(blocks.iter().enumerate().all(|(i, b)| b.seq == i as u64));
    assert!(blocks.windows(2).all(|w| w[0].segment <= w[1].segment));
}

#[test]
fn sequence_is_contiguous_across_threads() {
    let dir = TempDir::new("threads");
    let cfg = JournalConfig {
        block_bytes: 8 << 10,
        ..config(&dir)
    };
    let w = JournalWriter::open(cfg).unwrap();
    let frames = emitter_frames(40);
    std::thread::scope(|s| {
        for t in 0..3i64 {
            let (w, frames) = (&w, &frames);
            s.spawn(move || {
                for (i, f) in frames.iter().enumerate() {
                    w.append_frame(t * 1_000_000 + i as i64, f).unwrap();
                    if i % 7 == 0 {
                        w.append(BlockKind::Clock, t, &[t as u8; 40]).unwrap();
                    }
                }
            });
        }
    });
    let st = w.close().unwrap();
    let (blocks, report) = read_all(dir.path());
    assert!(report.gaps.is_empty(), "{:?}", report.gaps);
    assert_eq!(report.blocks, st.blocks_appended + 1);
    assert_eq!(report.frames, 3 * frames.len() as u64);
    assert!(blocks.iter().enumerate().all(|(i, b)| b.seq == i as u64));
    // Each thread's frames keep their order.
    for t in 0..3i64 {
        let mine: Vec<i64> = blocks
            .iter()
            .filter(|b| b.kind == BlockKind::DetectorFrames)
            .flat_map(|b| b.frames().unwrap().map(|(ns, _)| ns).collect::<Vec<_>>())
            .filter(|ns| ns / 1_000_000 == t)
            .collect();
        assert_eq!(mine.len(), frames.len());
        assert!(mine.windows(2).all(|p| p[0] < p[1]));
    }
}

#[test]
fn appends_are_refused_after_close_and_for_internal_kinds() {
    let dir = TempDir::new("refuse");
    let w = JournalWriter::open(config(&dir)).unwrap();
    assert!(matches!(
        w.append(BlockKind::Closed, 0, b""),
        Err(CoreError::Journal(_))
    ));
    w.close().unwrap();
    assert!(matches!(
        w.append(BlockKind::Note, 0, b"late"),
        Err(CoreError::Journal(m)) if m.contains("closed")
    ));
    assert!(w.append_frame(0, b"late").is_err());
    assert_eq!(w.status().refused_appends, 2);
    // A second close reports the same clean end.
    assert!(w.close().unwrap().closed);
}

#[test]
fn config_is_validated() {
    let dir = TempDir::new("config");
    let bad = [
        JournalConfig {
            segment_bytes: 10,
            ..config(&dir)
        },
        JournalConfig {
            block_bytes: 0,
            ..config(&dir)
        },
        JournalConfig {
            level: 99,
            ..config(&dir)
        },
        JournalConfig {
            flush_interval: Duration::ZERO,
            ..config(&dir)
        },
        JournalConfig {
            run_id: Some("x".repeat(37)),
            ..config(&dir)
        },
    ];
    for cfg in bad {
        assert!(matches!(
            JournalWriter::open(cfg),
            Err(CoreError::Config(_))
        ));
    }
    assert!(!dir.path().exists());
}

#[test]
fn auto_transform_keeps_up_with_the_best_fixed_one() {
    let ptu = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data/ptu");
    let mut streams = vec![("emitter".to_owned(), emitter_frames(200))];
    for name in ["hydraharp_v20_t2.ptu", "picoharp_v30_t2.ptu"] {
        match crate::link::ptu::read(&ptu.join(name)) {
            Ok(f) => {
                let bytes: Vec<u8> = f.records.iter().flat_map(|r| r.to_le_bytes()).collect();
                streams.push((
                    name.into(),
                    bytes.chunks(1 << 16).map(<[u8]>::to_vec).collect(),
                ));
            }
            Err(e) => eprintln!("{name} not read ({e}): skipped"),
        }
    }
    for (name, frames) in streams {
        let stored = |p: TransformPolicy| {
            let mut enc = BlockEncoder::new(1, p).unwrap();
            let mut batch = FrameBatch::default();
            frames.iter().for_each(|f| batch.push(0, f));
            enc.frames(0, &batch).len()
        };
        let auto = stored(TransformPolicy::Auto);
        let fixed = [Transform::None, Transform::Shuffle, Transform::DeltaShuffle]
            .map(|t| stored(TransformPolicy::Fixed(t)));
        let best = *fixed.iter().min().unwrap();
        assert!(
            auto as f64 <= 1.02 * best as f64,
            "{name}: auto {auto}, fixed {fixed:?}"
        );
    }
}

/// The spare batch buffers are there from the start, and a burst of blocks leaves no more
/// of them behind: the journal's memory is the same after a burst as before it.
#[test]
fn spare_batches_are_made_at_open_and_a_burst_leaves_no_more() {
    let dir = TempDir::new("spares");
    let w = JournalWriter::open(JournalConfig {
        block_bytes: 4096,
        ..config(&dir)
    })
    .unwrap();
    assert_eq!(w.spare_capacities(), [4096; SPARE_BATCHES]);
    for i in 0..300 {
        w.append_frame(i, &noise(1500, i as u64)).unwrap();
    }
    w.close().unwrap();
    let spares = w.spare_capacities();
    assert!(
        !spares.is_empty() && spares.len() <= SPARE_BATCHES,
        "{spares:?}"
    );
}
