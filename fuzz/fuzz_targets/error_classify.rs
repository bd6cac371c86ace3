#![no_main]

// See vpp_reconciler::fuzzing::error_classify.
libfuzzer_sys::fuzz_target!(|data: &[u8]| vpp_reconciler::fuzzing::error_classify(data));
