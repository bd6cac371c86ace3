#![no_main]

// See vpp_reconciler::fuzzing::users_page.
libfuzzer_sys::fuzz_target!(|data: &[u8]| vpp_reconciler::fuzzing::users_page(data));
