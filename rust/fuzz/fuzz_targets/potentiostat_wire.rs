#![no_main]
//! `opsims_core::fuzzing::potentiostat_wire` (docs/fuzzing.md).

libfuzzer_sys::fuzz_target!(|data: &[u8]| opsims_core::fuzzing::potentiostat_wire(data));
