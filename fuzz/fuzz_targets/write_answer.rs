#![no_main]

// See vpp_reconciler::fuzzing::write_answer.
libfuzzer_sys::fuzz_target!(|data: &[u8]| vpp_reconciler::fuzzing::write_answer(data));
