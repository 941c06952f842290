#![no_main]
//! `opsims_core::fuzzing::journal_segment` (docs/fuzzing.md).

libfuzzer_sys::fuzz_target!(|data: &[u8]| opsims_core::fuzzing::journal_segment(data));
