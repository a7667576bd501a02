//! Putting a filter expression in the kernel: each direction's translated filter goes in
//! its `FILTER_PROGS` slot, next to the program it tail-calls on a match (see
//! `tracer_common::flow`). aya cannot load instructions made at run time, so the filters are
//! loaded with `bpf(BPF_PROG_LOAD)`; the program array holds them while flowtrace runs and
//! is emptied by the kernel when its last fd closes.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use aya::{maps::Map, programs::SchedClassifier, Ebpf};
use tracer_common::flow::{
    FILTER_SLOT_EGRESS, FILTER_SLOT_INGRESS, MATCHED_SLOT_EGRESS, MATCHED_SLOT_INGRESS,
};

use super::{bpf_sys, loader};
use crate::{
    error::{Error, Result},
    pcapfilter::CompiledFilter,
};

const BPF_PROG_TYPE_SCHED_CLS: u32 = 3;

/// The loaded filters; dropping this closes their fds.
pub struct KernelFilter {
    _progs: Vec<OwnedFd>,
    /// eBPF instructions per direction.
    pub instructions: usize,
}

/// Loads `filter` for both directions and fills `FILTER_PROGS`. Call it before the tc
/// programs are attached, with every map still in `ebpf`.
pub fn install(ebpf: &mut Ebpf, filter: &CompiledFilter) -> Result<KernelFilter> {
    let map_fd = match ebpf.map("FILTER_PROGS") {
        Some(Map::ProgramArray(m)) => m.fd().as_fd().as_raw_fd(),
        _ => {
            return Err(Error::Load(
                "map FILTER_PROGS missing from the eBPF object".into(),
            ))
        }
    };
    let slot_error =
        |slot: u32, e: std::io::Error| Error::Load(format!("FILTER_PROGS[{slot}]: {e}"));
    for (name, slot) in [
        ("tc_ingress_matched", MATCHED_SLOT_INGRESS),
        ("tc_egress_matched", MATCHED_SLOT_EGRESS),
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
        bpf_sys::set_program_slot(map_fd, slot, fd).map_err(|e| slot_error(slot, e))?;
    }
    let mut progs = Vec::new();
    let mut instructions = 0;
    for (slot, on_match, name) in [
        (FILTER_SLOT_INGRESS, MATCHED_SLOT_INGRESS, "ft_filter_in"),
        (FILTER_SLOT_EGRESS, MATCHED_SLOT_EGRESS, "ft_filter_out"),
    ] {
        let insns = filter.ebpf(map_fd, on_match)?;
        instructions = insns.len();
        let fd = bpf_sys::load_program(
            name,
            BPF_PROG_TYPE_SCHED_CLS,
            0,
            insns.as_ptr().cast(),
            insns.len(),
        )
        .map_err(|(err, log)| Error::load(format!("the filter `{}`: {err}{log}", filter.expr)))?;
        bpf_sys::set_program_slot(map_fd, slot, fd.as_raw_fd()).map_err(|e| slot_error(slot, e))?;
        progs.push(fd);
    }
    Ok(KernelFilter {
        _progs: progs,
        instructions,
    })
}
