//! Any bytes as nftrace messages from the kernel (walked into traversals), and as the text of
//! `nft -a list ruleset`: events, walks and rule texts or nothing, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tracer::parsers::{parse_trace, Assembler, RuleTexts};

fuzz_target!(|data: &[u8]| {
    let mut walks = Assembler::default();
    for e in parse_trace(data) {
        let _ = walks.push(e);
    }
    let text = String::from_utf8_lossy(data);
    let texts = RuleTexts::build(&text, &[]);
    let _ = texts.rule("ip", "filter", "FORWARD", 1);
});
