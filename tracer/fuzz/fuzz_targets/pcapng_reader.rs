//! Any bytes given to the pcapng reader: blocks or an error, never a panic or a hang.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tracer::parsers::Reader;

fuzz_target!(|data: &[u8]| {
    let mut r = Reader::new(data);
    // The reader advances on every block and stops after an error.
    for _ in 0..100_000 {
        match r.next_block() {
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => break,
        }
    }
});
