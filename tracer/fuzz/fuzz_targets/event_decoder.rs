//! Any bytes as a ring-buffer record: an observation or a decode error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tracer::parsers::{decode, parse_ethernet};

fuzz_target!(|data: &[u8]| {
    let _ = decode(data);
    let _ = parse_ethernet(data);
});
