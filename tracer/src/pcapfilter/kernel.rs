//! Putting a filter expression in the kernel: each direction's translated filter (on the
//! packet, and on the view of it after NAT) goes in its `FILTER_PROGS` slot, next to the
//! programs they tail-call on a match and on a miss (see `tracer_common::flow`). aya cannot
//! load instructions made at run time, so the filters are loaded with `bpf(BPF_PROG_LOAD)`; the
//! program array holds them while flowtrace runs and is emptied by the kernel when its last fd
//! closes.

use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};

use aya::{maps::Map, programs::SchedClassifier, Ebpf};
use tracer_common::flow::{
    FILTER_SLOT_EGRESS, FILTER_SLOT_INGRESS, MATCHED_SLOT_EGRESS, MATCHED_SLOT_INGRESS, MISS_SLOT,
    VIEW_FILTER_SLOT,
};

use super::{CompiledFilter, Plan, Source};
use crate::{
    error::{Error, Result},
    probe::{bpf_sys, loader},
};

const BPF_PROG_TYPE_SCHED_CLS: u32 = 3;

/// The loaded filters; dropping this closes their fds.
pub struct KernelFilter {
    _progs: Vec<OwnedFd>,
    /// eBPF instructions of the filter on the packet.
    pub instructions: usize,
}

fn map_fd(ebpf: &Ebpf, name: &str) -> Result<RawFd> {
    match ebpf.map(name) {
        Some(Map::ProgramArray(m)) | Some(Map::PerCpuArray(m)) => Ok(m.fd().as_fd().as_raw_fd()),
        _ => Err(Error::Load(format!(
            "map {name} missing from the eBPF object"
        ))),
    }
}

/// Loads `filter` for both directions and fills `FILTER_PROGS`. Call it before the tc
/// programs are attached, with every map still in `ebpf`.
pub fn install(ebpf: &mut Ebpf, filter: &CompiledFilter) -> Result<KernelFilter> {
    let array = map_fd(ebpf, "FILTER_PROGS")?;
    let view = map_fd(ebpf, "VIEW")?;
    let set = |slot: u32, prog: RawFd| {
        bpf_sys::set_program_slot(array, slot, prog)
            .map_err(|e| Error::Load(format!("FILTER_PROGS[{slot}]: {e}")))
    };
    for (name, slot) in [
        ("tc_ingress_matched", MATCHED_SLOT_INGRESS),
        ("tc_egress_matched", MATCHED_SLOT_EGRESS),
        ("tc_ingress_miss", MISS_SLOT),
    ] {
        let prog: &mut SchedClassifier = loader::program(ebpf, name).map_err(Error::Load)?;
        match prog.load() {
            Ok(()) | Err(aya::programs::ProgramError::AlreadyLoaded) => {}
            Err(e) => return Err(Error::load(format!("{name}: {e}"))),
        }
        let fd = prog
            .fd()
            .map_err(|e| Error::Load(format!("{name}: {e}")))?
            .as_fd()
            .as_raw_fd();
        set(slot, fd)?;
    }
    let plan = |source, on_match, on_miss| Plan {
        source,
        prog_array_fd: array,
        on_match,
        on_miss,
    };
    let (packet, on_view) = (Source::Packet, Source::View { map_fd: view });
    let mut progs = Vec::new();
    let mut instructions = 0;
    // Ingress: a miss may still match on the view of the packet after NAT. Egress: netfilter
    // has done its rewriting.
    for (slot, plan, name) in [
        (
            FILTER_SLOT_INGRESS,
            plan(packet, MATCHED_SLOT_INGRESS, Some(MISS_SLOT)),
            "ft_filter_in",
        ),
        (
            FILTER_SLOT_EGRESS,
            plan(packet, MATCHED_SLOT_EGRESS, None),
            "ft_filter_out",
        ),
        (
            VIEW_FILTER_SLOT,
            plan(on_view, MATCHED_SLOT_INGRESS, None),
            "ft_view_in",
        ),
    ] {
        let insns = filter.ebpf(plan)?;
        if matches!(plan.source, Source::Packet) {
            instructions = insns.len();
        }
        let fd = bpf_sys::load_program(
            name,
            BPF_PROG_TYPE_SCHED_CLS,
            0,
            insns.as_ptr().cast(),
            insns.len(),
        )
        .map_err(|(err, log)| Error::load(format!("the filter `{}`: {err}{log}", filter.expr)))?;
        set(slot, fd.as_raw_fd())?;
        progs.push(fd);
    }
    Ok(KernelFilter {
        _progs: progs,
        instructions,
    })
}
