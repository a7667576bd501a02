//! Discovering what to trace: containers (Docker API), namespaces, interfaces and routes.

pub mod docker;
pub mod netlink;
pub mod netns;
pub mod nft;
pub mod rule_match;
pub mod rule_text;
pub mod ruleset;
pub mod ruleset_reads;
pub mod scope;
pub mod topology;
