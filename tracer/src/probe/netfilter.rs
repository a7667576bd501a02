//! BPF netfilter observers (BPF_PROG_TYPE_NETFILTER, kernel ≥ 6.4), which aya 0.14 cannot
//! load. The programs are compiled into the same object as everything else (so they share
//! its maps). aya creates those maps; here the object is parsed again with aya-obj, relocated
//! against aya's map fds, loaded with `bpf(BPF_PROG_LOAD)`, and linked at every IPv4 hook with
//! `bpf(BPF_LINK_CREATE)`. Links are fds: they vanish with the process, even on SIGKILL.

use std::{
    collections::HashSet,
    os::fd::{AsFd, AsRawFd, OwnedFd, RawFd},
};

use aya::{maps::Map, Ebpf};

use super::bpf_sys::{self, sys_bpf};
use tracer_common::netfilter::{priority_candidates, HOOK_NAMES, NFPROTO_IPV4, SLOT_PRIORITIES};

const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_PROG_TYPE_NETFILTER: u32 = 32;
const BPF_NETFILTER: u32 = 45;

#[derive(Debug, thiserror::Error)]
pub enum NfError {
    #[error("cannot parse the eBPF object: {0}")]
    Parse(String),
    #[error("cannot relocate {0}")]
    Relocate(String),
    #[error("program {0} missing from the eBPF object")]
    Missing(String),
    #[error("the kernel refused to load {name} as a netfilter program ({err}){log}")]
    Load {
        name: String,
        err: std::io::Error,
        log: String,
    },
    #[error("cannot link {name} at {hook} priority {priority}: {err}")]
    Link {
        name: String,
        hook: &'static str,
        priority: i32,
        err: std::io::Error,
    },
}

/// `union bpf_attr` for BPF_LINK_CREATE with the netfilter member (uapi, stable ABI).
#[repr(C)]
#[derive(Default)]
struct LinkCreateAttr {
    prog_fd: u32,
    target_fd: u32,
    attach_type: u32,
    flags: u32,
    pf: u32,
    hooknum: u32,
    priority: i32,
    nf_flags: u32,
}

fn load(name: &str, insns: &[aya_obj::generated::bpf_insn]) -> Result<OwnedFd, NfError> {
    bpf_sys::load_program(
        name,
        BPF_PROG_TYPE_NETFILTER,
        BPF_NETFILTER,
        insns.as_ptr().cast(),
        insns.len(),
    )
    .map_err(|(err, log)| NfError::Load {
        name: name.to_owned(),
        err,
        log,
    })
}

fn map_fd(map: &Map) -> Option<RawFd> {
    let data = match map {
        Map::Array(m)
        | Map::RingBuf(m)
        | Map::LruHashMap(m)
        | Map::HashMap(m)
        | Map::PerCpuHashMap(m)
        | Map::PerCpuArray(m)
        | Map::ProgramArray(m) => m,
        _ => return None,
    };
    Some(data.fd().as_fd().as_raw_fd())
}

/// Links `prog` at `hooknum` at the first of the slot's priorities no other BPF netfilter link
/// holds (another flowtrace beside this one: the kernel allows one per priority).
fn link_at_free_priority(prog: &OwnedFd, hooknum: usize, slot: usize) -> std::io::Result<OwnedFd> {
    let mut last = std::io::Error::from_raw_os_error(libc::EBUSY);
    for priority in priority_candidates(slot) {
        let mut attr = LinkCreateAttr {
            prog_fd: prog.as_raw_fd() as u32,
            attach_type: BPF_NETFILTER,
            pf: u32::from(NFPROTO_IPV4),
            hooknum: hooknum as u32,
            priority,
            ..Default::default()
        };
        match sys_bpf(BPF_LINK_CREATE, &mut attr) {
            Ok(link) => return Ok(link),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => last = e,
            Err(e) => return Err(e),
        }
    }
    Err(last)
}

/// The attached observers; dropping this detaches them.
pub struct NetfilterObservers {
    _links: Vec<OwnedFd>,
    _progs: Vec<OwnedFd>,
    pub links: usize,
}

/// Loads the slot programs from `object` (the same bytes `ebpf` was loaded from) and links
/// slot `s` at IPv4 hook `h` at its slot's priority where bit `s` of `plan[h]` is set (see
/// `tracer_common::netfilter::slots_for`). Call it while `ebpf` still holds all its maps
/// (before any `take_map`).
pub fn attach(
    ebpf: &Ebpf,
    object: &[u8],
    plan: &[u8; HOOK_NAMES.len()],
) -> Result<NetfilterObservers, NfError> {
    let mut obj = aya_obj::Object::parse(object).map_err(|e| NfError::Parse(e.to_string()))?;
    let obj_maps: Vec<(String, aya_obj::Map)> = obj
        .maps
        .iter()
        .map(|(n, m)| (n.clone(), m.clone()))
        .collect();
    let fds: Vec<(String, RawFd)> = ebpf
        .maps()
        .filter_map(|(n, m)| map_fd(m).map(|fd| (n.to_owned(), fd)))
        .collect();
    // Every map must be relocated to its own fd: a missing one would make aya-obj fall back to
    // matching by section, which can pick another map's fd.
    if let Some((missing, _)) = obj_maps
        .iter()
        .find(|(n, _)| !fds.iter().any(|(f, _)| f == n))
    {
        return Err(NfError::Relocate(format!(
            "map {missing}: it is not loaded (attach netfilter before taking maps)"
        )));
    }
    let relocations = obj_maps.iter().filter_map(|(name, m)| {
        fds.iter()
            .find(|(n, _)| n == name)
            .map(|(_, fd)| (name.as_str(), *fd, m))
    });
    let text_sections: HashSet<usize> = obj.functions.keys().map(|(s, _)| *s).collect();
    obj.relocate_maps(relocations, &text_sections)
        .map_err(|e| NfError::Relocate(e.to_string()))?;
    obj.relocate_calls(&text_sections)
        .map_err(|e| NfError::Relocate(e.to_string()))?;

    let mut progs = Vec::new();
    let mut links = Vec::new();
    for (slot, priority) in SLOT_PRIORITIES.iter().enumerate() {
        let name = format!("nf_slot{slot}");
        let prog = obj
            .programs
            .get(&name)
            .ok_or_else(|| NfError::Missing(name.clone()))?;
        let func = obj
            .functions
            .get(&prog.function_key())
            .ok_or_else(|| NfError::Missing(name.clone()))?;
        if !plan.iter().any(|m| m & (1 << slot) != 0) {
            continue;
        }
        let fd = load(&name, &func.instructions)?;
        for (hooknum, hook) in HOOK_NAMES.iter().enumerate() {
            if plan[hooknum] & (1 << slot) == 0 {
                continue;
            }
            let link = link_at_free_priority(&fd, hooknum, slot).map_err(|err| NfError::Link {
                name: name.clone(),
                hook,
                priority: *priority,
                err,
            })?;
            links.push(link);
        }
        progs.push(fd);
    }
    Ok(NetfilterObservers {
        links: links.len(),
        _links: links,
        _progs: progs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attr_layouts_match_the_uapi() {
        // Offsets of the last fields used, from include/uapi/linux/bpf.h.
        assert_eq!(std::mem::offset_of!(LinkCreateAttr, pf), 16);
        assert_eq!(std::mem::offset_of!(LinkCreateAttr, priority), 24);
        assert_eq!(size_of::<LinkCreateAttr>(), 32);
    }
}
