//! Journal tests: round trips, damage and recovery, a failing disk. Each test works in its
//! own directory under the system temp dir, removed when it passes.

mod damage;
mod disk;
mod roundtrip;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use super::*;
use crate::raster::{FrameMarkerAt, MarkerMasks, Polarity, RasterConfig, Switching};
use crate::sim::{Emitter, EmitterConfig};

/// A fresh directory path (not created), removed again on drop.
pub(super) struct TempDir(PathBuf);

impl TempDir {
    pub(super) fn new(name: &str) -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let p =
            std::env::temp_dir().join(format!("opsims-journal-{name}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        TempDir(p)
    }

    pub(super) fn path(&self) -> &Path {
        &self.0
    }

    pub(super) fn segment(&self, index: u32) -> PathBuf {
        self.0.join(segment_name(index))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// Small, quick settings: a test never waits long for a flush or a retry.
pub(super) fn config(dir: &TempDir) -> JournalConfig {
    JournalConfig {
        flush_interval: Duration::from_millis(5),
        retry_interval: Duration::from_millis(10),
        close_timeout: Duration::from_secs(5),
        ..JournalConfig::new(dir.path())
    }
}

pub(super) fn read_all(dir: &Path) -> (Vec<Block>, JournalReport) {
    let mut blocks = JournalReader::open(dir).unwrap().blocks().unwrap();
    let got: Vec<Block> = (&mut blocks).map(|b| b.unwrap()).collect();
    (got, blocks.into_report())
}

/// Poll `cond` on the writer's status until it holds (or fail after 5 s).
pub(super) fn wait_for(w: &JournalWriter, what: &str, cond: impl Fn(&JournalStatus) -> bool) {
    let until = Instant::now() + Duration::from_secs(5);
    loop {
        let st = w.status();
        if cond(&st) {
            return;
        }
        assert!(
            Instant::now() < until,
            "timed out waiting for {what}: {st:?}"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Incompressible bytes (xorshift), so block sizes are predictable.
pub(super) fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Link frames of a small dual-polarity raster in MultiHarp T3 records.
pub(super) fn emitter_frames(lines: u64) -> Vec<Vec<u8>> {
    let pol = |name: &str, ch: u8, species: &[&str]| Polarity {
        name: name.into(),
        channels: vec![ch],
        species: species.iter().map(|s| s.to_string()).collect(),
        switching: Switching::PerFrame,
        settle_ticks: 0,
    };
    let cfg = EmitterConfig {
        record_type: 0x0001_0307,
        tick_s: 80e-9,
        raster: RasterConfig {
            nx: 64,
            ny: 16,
            dwell_ticks: 64,
            line_settle_ticks: 32,
            flyback_ticks: 128,
            line_tolerance_ticks: 0,
            frames_per_slice: 1,
            markers: MarkerMasks {
                frame: 4,
                line_start: 1,
                line_stop: 2,
                mass_switch: 0,
            },
            frame_marker_at: FrameMarkerAt::Start,
            polarities: vec![
                pol("positive", 0, &["Na+", "Si+"]),
                pol("negative", 1, &["O-"]),
            ],
        },
        frame_gap_ticks: 0,
        dead_time_ticks: 0,
        dark_rate_hz: 1e3,
        settle_rate_fraction: 0.0,
        start_tick: 1000,
        seed: 3,
        record_truth: false,
        record_events: false,
        max_records_per_frame: 4096,
        fine_fs: None,
    };
    let period = cfg.line_period_ticks();
    let mut em = Emitter::new(cfg.clone()).unwrap();
    let rates = vec![8.0 / (64.0 * 80e-9); cfg.n_species() * 64 * 16];
    em.set_rates(&rates).unwrap();
    (1..=lines)
        .flat_map(|k| em.emit_until(1000 + k * period).unwrap())
        .collect()
}
