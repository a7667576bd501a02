//! Loading the eBPF object and attaching its programs, with fallbacks and a report of what
//! is attached where.

pub mod counters;
pub mod loader;
pub mod tc;
