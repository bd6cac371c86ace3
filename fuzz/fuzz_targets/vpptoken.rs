#![no_main]

// See vpp_reconciler::fuzzing::vpptoken.
libfuzzer_sys::fuzz_target!(|data: &[u8]| vpp_reconciler::fuzzing::vpptoken(data));
