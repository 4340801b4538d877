#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| rill_fuzz::request(data));
