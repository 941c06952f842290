#![no_main]
//! `opsims_core::fuzzing::tttr_records` (docs/fuzzing.md).

libfuzzer_sys::fuzz_target!(|data: &[u8]| opsims_core::fuzzing::tttr_records(data));
