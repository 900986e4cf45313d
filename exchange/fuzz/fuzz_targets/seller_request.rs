#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| pingpost_fuzz::seller_request(data));
