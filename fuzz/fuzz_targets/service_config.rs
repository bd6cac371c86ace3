#![no_main]

// See vpp_reconciler::fuzzing::service_config.
libfuzzer_sys::fuzz_target!(|data: &[u8]| vpp_reconciler::fuzzing::service_config(data));
