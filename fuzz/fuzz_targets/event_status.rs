#![no_main]

// See vpp_reconciler::fuzzing::event_status.
libfuzzer_sys::fuzz_target!(|data: &[u8]| vpp_reconciler::fuzzing::event_status(data));
