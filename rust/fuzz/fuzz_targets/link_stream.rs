#![no_main]
//! `opsims_core::fuzzing::link_stream` (docs/fuzzing.md).

libfuzzer_sys::fuzz_target!(|data: &[u8]| opsims_core::fuzzing::link_stream(data));
