//! Any text as a recorded packet line (what `flowtrace read` takes from a recording's
//! comments): rendered as text and drawn on the dashboard, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tracer::parsers::show_untrusted_line;

fuzz_target!(|data: &[u8]| {
    show_untrusted_line(&String::from_utf8_lossy(data));
});
