//! `cargo bench -p opsims-core --bench journal`: the run journal against a plain write.
//!
//! 1. Compression of detector streams by codec: the emitter in the daemon's default
//!    configuration (HydraHarp T2, 1 ps) and in the pipeline bench's (MultiHarp T3), and
//!    the real `.ptu` files in `shared/data/ptu` (if present).
//! 2. Full speed: `OPSIMS_BENCH_JOURNAL_GB` (default 2) GB of emitter frames through the
//!    `JournalWriter` (until `close` returns: all durable), then the same bytes through a
//!    1 MiB `BufWriter` with `sync_data` every 100 ms; both on the target directory's disk.
//!    The journal is read back and verified.
//! 3. Paced at 25 M events/s (at least 100 MB/s of frames) for
//!    `OPSIMS_BENCH_JOURNAL_PACE_S` (default 8) s: the process CPU it takes and the
//!    largest backlog.

use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use opsims_core::journal::{
    BlockEncoder, FrameBatch, JournalConfig, JournalReader, JournalWriter, Transform,
    TransformPolicy,
};
use opsims_core::link::ptu;
use opsims_core::raster::{FrameMarkerAt, MarkerMasks, Polarity, RasterConfig, Switching};
use opsims_core::sim::{Emitter, EmitterConfig};
use opsims_core::CoreError;

/// The target: 25 M events/s, at least 100 MB/s of 4-byte records.
const TARGET_EVENTS_S: f64 = 25e6;
const TARGET_BYTES_S: f64 = 100e6;

fn env_f64(key: &str, default: f64) -> f64 {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// User + system CPU seconds of this process.
fn cpu_s() -> f64 {
    // SAFETY: getrusage only writes the struct it is given.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 * 1e-6;
    tv(u.ru_utime) + tv(u.ru_stime)
}

fn polarity(name: &str, ch: u8, species: &[&str], settle_ticks: u64) -> Polarity {
    Polarity {
        name: name.into(),
        channels: vec![ch],
        species: species.iter().map(|s| s.to_string()).collect(),
        switching: Switching::PerFrame,
        settle_ticks,
    }
}

/// The emitter as `config/opsimsd.toml` sets it up (T2) or as the pipeline bench (T3).
fn emitter_config(t2: bool) -> EmitterConfig {
    let (record_type, tick_s, dwell, settle, fly, gap, pset, dead) = if t2 {
        (
            0x0101_0204,
            1e-12,
            2_000_000,
            800_000,
            4_000_000,
            80_000_000,
            400_000_000,
            20_000,
        )
    } else {
        (0x0001_0307, 80e-9, 64, 32, 128, 0, 0, 0)
    };
    EmitterConfig {
        record_type,
        tick_s,
        raster: RasterConfig {
            nx: 256,
            ny: 256,
            dwell_ticks: dwell,
            line_settle_ticks: settle,
            flyback_ticks: fly,
            line_tolerance_ticks: 0,
            frames_per_slice: 20,
            markers: MarkerMasks {
                frame: 4,
                line_start: 1,
                line_stop: 2,
                mass_switch: 8,
            },
            frame_marker_at: FrameMarkerAt::Start,
            polarities: vec![
                polarity("positive", 0, &["Na+", "Si+", "Zr+", "ZrO+"], pset),
                polarity("negative", 1, &["O-", "P-", "SiO2-", "PO2-", "ZrO2-"], pset),
            ],
        },
        frame_gap_ticks: gap,
        dead_time_ticks: dead,
        dark_rate_hz: 10.0,
        settle_rate_fraction: 0.05,
        start_tick: 987_654_321_000,
        seed: 1,
        record_truth: false,
        record_events: false,
        max_records_per_frame: 65_536,
        fine_fs: None,
    }
}

/// `seconds` of emitter stream at `rate_hz` counts/s per polarity pair, with smooth
/// structure across the raster; the frames and the events they carry.
fn emitter_stream(t2: bool, rate_hz: f64, seconds: f64) -> (Vec<Vec<u8>>, u64) {
    let cfg = emitter_config(t2);
    let mut em = Emitter::new(cfg.clone()).expect("emitter config");
    let rates: Vec<f64> = (0..cfg.n_species() * 256 * 256)
        .map(|i| {
            let (x, y) = ((i % 256) as f64 / 256.0, (i / 256 % 256) as f64 / 256.0);
            rate_hz / 2.0 * (1.0 + 0.5 * (6.0 * x).sin() * (4.0 * y).cos())
        })
        .collect();
    em.set_rates(&rates).expect("rates");
    let end = cfg.start_tick + (seconds / cfg.tick_s) as u64;
    let steps = 400;
    let mut frames = Vec::new();
    for k in 1..=steps {
        let until = cfg.start_tick + (end - cfg.start_tick) / steps * k;
        frames.extend(em.emit_until(until).expect("emit"));
    }
    (frames, em.truth_counters().events)
}

/// Stored size and encode time of `frames` in 4 MiB batches, as the writer thread does.
fn encode_all(frames: &[Vec<u8>], level: i32, t: TransformPolicy) -> (usize, f64) {
    let mut enc = BlockEncoder::new(level, t).expect("zstd");
    let mut batch = FrameBatch::with_capacity(4 << 20);
    let (mut stored, start) = (0, Instant::now());
    for f in frames {
        batch.push(0, f);
        if batch.data_len() >= 4 << 20 {
            stored += enc.frames(0, &batch).len();
            batch.clear();
        }
    }
    if !batch.is_empty() {
        stored += enc.frames(0, &batch).len();
    }
    (stored, start.elapsed().as_secs_f64())
}

fn codec_table(streams: &[(String, Vec<Vec<u8>>)]) {
    use TransformPolicy::{Auto, Fixed};
    let codecs = [
        ("zstd-1", 1, Fixed(Transform::None)),
        ("zstd-1 shuffle", 1, Fixed(Transform::Shuffle)),
        ("zstd-1 delta+shuffle", 1, Fixed(Transform::DeltaShuffle)),
        ("zstd-3 delta+shuffle", 3, Fixed(Transform::DeltaShuffle)),
        ("zstd-1 auto", 1, Auto),
    ];
    println!("compression ratio (raw/stored) and encode MB/s on one core:");
    for (name, frames) in streams {
        let raw: usize = frames.iter().map(Vec::len).sum();
        let cells: Vec<String> = codecs
            .iter()
            .map(|&(c, level, t)| {
                let (stored, secs) = encode_all(frames, level, t);
                format!(
                    "{c} {:.3} ({:.0} MB/s)",
                    raw as f64 / stored as f64,
                    raw as f64 / secs / 1e6
                )
            })
            .collect();
        println!(
            "  {name} [{:.1} MB]: {}",
            raw as f64 / 1e6,
            cells.join(", ")
        );
    }
}

fn ptu_streams() -> Vec<(String, Vec<Vec<u8>>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data/ptu");
    let mut paths: Vec<PathBuf> = match fs::read_dir(&dir) {
        Ok(entries) => entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "ptu"))
            .collect(),
        Err(_) => {
            println!("  (no .ptu files at {})", dir.display());
            return Vec::new();
        }
    };
    paths.sort();
    paths
        .into_iter()
        .filter_map(|p| {
            let file = ptu::read(&p).ok()?;
            let bytes: Vec<u8> = file.records.iter().flat_map(|r| r.to_le_bytes()).collect();
            // Cut as the link would carry them: 65 536 records per frame.
            let frames = bytes.chunks(4 << 16).map(<[u8]>::to_vec).collect();
            Some((
                format!("{} (real)", p.file_name()?.to_string_lossy()),
                frames,
            ))
        })
        .collect()
}

/// Append every frame of `pool` until `total` bytes went in; JournalFull waits and retries.
fn feed(w: &JournalWriter, pool: &[Vec<u8>], total: u64, pace: Option<f64>) -> (u64, u64) {
    let (mut bytes, mut waits, mut ns) = (0u64, 0u64, 0i64);
    let start = Instant::now();
    while bytes < total {
        for f in pool {
            if let Some(rate) = pace {
                let due = Duration::from_secs_f64(bytes as f64 / rate);
                if let Some(ahead) = due.checked_sub(start.elapsed()) {
                    std::thread::sleep(ahead);
                }
            }
            ns += 1000;
            loop {
                match w.append_frame(ns, f) {
                    Ok(()) => break,
                    Err(CoreError::JournalFull(_)) => {
                        waits += 1;
                        std::thread::sleep(Duration::from_micros(200));
                    }
                    Err(e) => panic!("append: {e}"),
                }
            }
            bytes += f.len() as u64;
            if bytes >= total {
                break;
            }
        }
    }
    (bytes, waits)
}

/// The same bytes with a plain buffered writer, synced every 100 ms and at the end.
fn plain_write(path: &Path, pool: &[Vec<u8>], total: u64) -> std::io::Result<u64> {
    let file = File::create(path)?;
    let mut out = BufWriter::with_capacity(1 << 20, file);
    let (mut bytes, mut last_sync) = (0u64, Instant::now());
    while bytes < total {
        for f in pool {
            out.write_all(f)?;
            bytes += f.len() as u64;
            if last_sync.elapsed() >= Duration::from_millis(100) {
                out.flush()?;
                out.get_ref().sync_data()?;
                last_sync = Instant::now();
            }
            if bytes >= total {
                break;
            }
        }
    }
    out.flush()?;
    out.get_ref().sync_data()?;
    Ok(bytes)
}

struct Run {
    wall: f64,
    cpu: f64,
}

fn timed<T>(f: impl FnOnce() -> T) -> (T, Run) {
    let (cpu0, t0) = (cpu_s(), Instant::now());
    let out = f();
    let run = Run {
        wall: t0.elapsed().as_secs_f64(),
        cpu: cpu_s() - cpu0,
    };
    (out, run)
}

fn main() {
    let gb = env_f64("OPSIMS_BENCH_JOURNAL_GB", 2.0);
    let pace_s = env_f64("OPSIMS_BENCH_JOURNAL_PACE_S", 8.0);
    let tmp = Path::new(env!("CARGO_TARGET_TMPDIR")).join("journal-bench");
    let _ = fs::remove_dir_all(&tmp);
    fs::create_dir_all(&tmp).expect("temp dir");

    let ((pool, pool_events), gen) = timed(|| emitter_stream(true, 30e6, 1.0));
    let pool_bytes: usize = pool.iter().map(Vec::len).sum();
    let events_per_byte = pool_events as f64 / pool_bytes as f64;
    println!(
        "stream: emitter, daemon defaults (HydraHarp T2, 256x256, 2 us dwell): {} frames, \
         {:.0} MB, {:.1} M events (generated in {:.1} s), replayed",
        pool.len(),
        pool_bytes as f64 / 1e6,
        pool_events as f64 / 1e6,
        gen.wall
    );

    let (t3, _) = emitter_stream(false, 30e6, 0.5);
    let mut streams = vec![
        ("emitter T2 (daemon default)".to_owned(), pool.clone()),
        ("emitter MultiHarp T3 (pipeline bench)".to_owned(), t3),
    ];
    streams.extend(ptu_streams());
    codec_table(&streams);
    drop(streams);

    let total = (gb * 1e9) as u64;
    let dir = tmp.join("run");
    let ((bytes, waits, st), j) = timed(|| {
        let w = JournalWriter::open(JournalConfig::new(&dir)).expect("open");
        let (bytes, waits) = feed(&w, &pool, total, None);
        (bytes, waits, w.close().expect("close"))
    });
    let raw_path = tmp.join("plain.bin");
    let (plain_bytes, p) = timed(|| plain_write(&raw_path, &pool, total).expect("plain write"));
    let mb = |b: u64, s: f64| b as f64 / s / 1e6;
    println!(
        "journal, full speed: {:.2} GB in {:.2} s: {:.1} M events/s, {:.0} MB/s raw, \
         {:.0} MB/s stored, ratio {:.3}, {:.2} cores, {} full-queue waits, {} segments",
        bytes as f64 / 1e9,
        j.wall,
        mb(bytes, j.wall) * events_per_byte,
        mb(bytes, j.wall),
        mb(st.durable_bytes, j.wall),
        st.compression_ratio(),
        j.cpu / j.wall,
        waits,
        st.segments
    );
    println!(
        "plain write + sync_data/100 ms: {:.2} GB in {:.2} s: {:.0} MB/s, {:.2} cores",
        plain_bytes as f64 / 1e9,
        p.wall,
        mb(plain_bytes, p.wall),
        p.cpu / p.wall
    );
    println!(
        "journal / plain: {:.2}x the throughput, {:.2}x the bytes on disk",
        p.wall / j.wall,
        st.durable_bytes as f64 / plain_bytes as f64
    );
    let _ = fs::remove_file(&raw_path);

    let (report, r) = timed(|| JournalReader::open(&dir).and_then(|r| r.scan()));
    let report = report.expect("read back");
    assert!(report.closed && report.corrupt.is_empty() && report.gaps.is_empty());
    assert_eq!(report.frames, st.frames_appended);
    println!(
        "read back and verified: {} blocks, {} frames in {:.2} s ({:.0} MB/s raw)",
        report.blocks,
        report.frames,
        r.wall,
        mb(report.raw_bytes, r.wall)
    );
    let _ = fs::remove_dir_all(&dir);

    // Markers, overflows and frame headers make the bytes of 25 M events more than 100 MB.
    let rate = TARGET_BYTES_S.max(TARGET_EVENTS_S / events_per_byte);
    let dir = tmp.join("paced");
    let ((bytes, waits, st), q) = timed(|| {
        let w = JournalWriter::open(JournalConfig::new(&dir)).expect("open");
        let (bytes, waits) = feed(&w, &pool, (rate * pace_s) as u64, Some(rate));
        (bytes, waits, w.close().expect("close"))
    });
    println!(
        "journal, paced at {:.0} MB/s ({:.1} M events/s) for {:.1} s: {:.2} cores, \
         largest backlog {:.1} MB, {} full-queue waits",
        mb(bytes, q.wall),
        mb(bytes, q.wall) * events_per_byte,
        q.wall,
        q.cpu / q.wall,
        st.queued_high_water as f64 / 1e6,
        waits
    );
    let _ = fs::remove_dir_all(&tmp);
}
