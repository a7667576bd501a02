//! Loading the eBPF object and attaching its programs, with fallbacks and a report of what
//! is attached where.

pub mod bpf_sys;
pub mod btf;
pub mod capabilities;
pub mod counter_slots;
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

/// Takes map `name` out of the loaded object as its concrete type (`HashMap`, `Array`, …).
pub fn take_map<T>(ebpf: &mut aya::Ebpf, name: &str) -> crate::error::Result<T>
where
    T: TryFrom<aya::maps::Map>,
    T::Error: std::fmt::Display,
{
    use crate::error::Error;
    let map = ebpf
        .take_map(name)
        .ok_or_else(|| Error::Load(format!("map {name} missing from the eBPF object")))?;
    T::try_from(map).map_err(|e| Error::Load(format!("map {name}: {e}")))
}
