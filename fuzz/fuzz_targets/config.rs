#![no_main]

// See vpp_reconciler::fuzzing::config.
libfuzzer_sys::fuzz_target!(|data: &[u8]| vpp_reconciler::fuzzing::config(data));
