//! Loading the eBPF object and attaching its programs, with fallbacks and a report of what
//! is attached where.

pub mod bpf_sys;
pub mod btf;
pub mod capabilities;
pub mod counters;
pub mod drops;
pub mod kallsyms;
pub mod loader;
pub mod netfilter;
pub mod nf_hook;
pub mod offsets;
pub mod privilege;
pub mod scope;
pub mod tables;
pub mod tc;
pub mod tc_ledger;
