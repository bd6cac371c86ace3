#![no_main]

// See vpp_reconciler::fuzzing::assignments_page.
libfuzzer_sys::fuzz_target!(|data: &[u8]| vpp_reconciler::fuzzing::assignments_page(data));
