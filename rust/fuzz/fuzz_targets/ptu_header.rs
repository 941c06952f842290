#![no_main]
//! `opsims_core::fuzzing::ptu_header` (docs/fuzzing.md).

libfuzzer_sys::fuzz_target!(|data: &[u8]| opsims_core::fuzzing::ptu_header(data));
