#![no_main]

// See vpp_reconciler::fuzzing::retry_after.
libfuzzer_sys::fuzz_target!(|data: &[u8]| vpp_reconciler::fuzzing::retry_after(data));
