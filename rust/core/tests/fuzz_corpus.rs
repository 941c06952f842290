//! Replays the committed fuzz corpus (`rust/fuzz/corpus/<target>/`) through the same
//! harnesses the cargo-fuzz targets run (`opsims_core::fuzzing`), on the stable
//! toolchain: CI runs this with `cargo test`, never the fuzzer (docs/fuzzing.md).
//!
//! Every input must return without a panic, within a time bound; a failure names the
//! corpus file. The real PicoQuant files beside the repository
//! (`../shared/data/ptu/*.ptu`, not part of it) go through `ptu_header` when present.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use opsims_core::fuzzing::TARGETS;

/// Per input. Unoptimised test builds are the slow case; the largest corpus inputs take
/// a small fraction of this.
const TIME_BOUND: Duration = Duration::from_secs(10);

fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target)
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<PathBuf> = entries
        .map(|e| e.expect("a corpus directory entry").path())
        .filter(|p| p.is_file())
        .collect();
    out.sort();
    out
}

/// Run every file through `harness`; returns the failures, one line each. The slowest
/// input is printed (`cargo test -- --nocapture` shows it) to watch the margin.
fn replay(name: &str, harness: fn(&[u8]), inputs: &[PathBuf]) -> Vec<String> {
    let mut failures = Vec::new();
    let mut slowest = (Duration::ZERO, None);
    for path in inputs {
        let data = std::fs::read(path).expect("a corpus file can be read");
        let started = Instant::now();
        let outcome = catch_unwind(AssertUnwindSafe(|| harness(&data)));
        let took = started.elapsed();
        if took > slowest.0 {
            slowest = (took, Some(path));
        }
        let file = path.display();
        if let Err(panic) = outcome {
            let why = panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("(no message)");
            failures.push(format!("{name}: {file} panicked: {why}"));
        } else if took > TIME_BOUND {
            failures.push(format!(
                "{name}: {file} took {took:?} (bound {TIME_BOUND:?})"
            ));
        }
    }
    if let (took, Some(path)) = slowest {
        eprintln!(
            "{name}: {} inputs, slowest {took:?} ({})",
            inputs.len(),
            path.display()
        );
    }
    failures
}

#[test]
fn every_corpus_input_runs_without_a_panic_in_bounded_time() {
    let mut failures = Vec::new();
    let mut total = 0;
    for &(name, harness) in TARGETS {
        let inputs = files(&corpus_dir(name));
        assert!(!inputs.is_empty(), "no corpus for fuzz target {name}");
        total += inputs.len();
        failures.extend(replay(name, harness, &inputs));
    }
    assert!(
        failures.is_empty(),
        "{} of {total} corpus inputs failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn every_fuzz_target_has_a_harness_and_a_corpus() {
    let targets = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/fuzz_targets");
    let mut names: Vec<String> = files(&targets)
        .iter()
        .filter_map(|p| Some(p.file_stem()?.to_str()?.to_owned()))
        .collect();
    names.sort();
    let mut harnesses: Vec<String> = TARGETS.iter().map(|t| t.0.to_owned()).collect();
    harnesses.sort();
    assert_eq!(names, harnesses);
}

#[test]
fn real_ptu_files_parse_without_a_panic() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data/ptu");
    let inputs: Vec<PathBuf> = files(&dir)
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "ptu"))
        .collect();
    let harness = TARGETS.iter().find(|t| t.0 == "ptu_header").unwrap().1;
    let failures = replay("ptu_header", harness, &inputs);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
