#![no_main]

// See vpp_reconciler::fuzzing::webhook.
libfuzzer_sys::fuzz_target!(|data: &[u8]| vpp_reconciler::fuzzing::webhook(data));
