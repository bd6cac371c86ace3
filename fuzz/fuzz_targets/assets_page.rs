#![no_main]

// See vpp_reconciler::fuzzing::assets_page.
libfuzzer_sys::fuzz_target!(|data: &[u8]| vpp_reconciler::fuzzing::assets_page(data));
