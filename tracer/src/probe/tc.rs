//! Attaching the tc observers: TCX links where the kernel has them (≥ 6.6), else a clsact
//! qdisc with netlink filters. Everything attached here is detached when the `Ebpf` object
//! is dropped; a clsact qdisc that flowtrace itself added is removed by [`QdiscGuard`].

use std::{fmt, process::Command};

use aya::{
    programs::{tc, LinkOrder, SchedClassifier, TcAttachType},
    Ebpf,
};
use tracer_common::Direction;

use crate::{
    error::{Error, Result},
    target::topology::AttachPoint,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mechanism {
    /// fd-owned TCX links: gone when the process dies, even by SIGKILL.
    Tcx,
    /// clsact qdisc + netlink filter: removed on every orderly exit.
    Netlink,
}

impl fmt::Display for Mechanism {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Tcx => "TCX",
            Self::Netlink => "clsact/netlink",
        })
    }
}

#[derive(Clone, Debug)]
pub struct Attached {
    pub point: AttachPoint,
    pub direction: Direction,
    pub mechanism: Mechanism,
}

/// Removes the clsact qdiscs flowtrace added (never one that was there before).
#[derive(Default)]
pub struct QdiscGuard {
    added: Vec<String>,
}

impl Drop for QdiscGuard {
    fn drop(&mut self) {
        for iface in &self.added {
            let _ = Command::new("tc")
                .args(["qdisc", "del", "dev", iface, "clsact"])
                .status();
        }
    }
}

fn program<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut SchedClassifier> {
    ebpf.program_mut(name)
        .ok_or_else(|| Error::Load(format!("program {name} missing from the eBPF object")))?
        .try_into()
        .map_err(|e| Error::Load(format!("{name}: {e}")))
}

/// Loads both tc programs and attaches them to every point, ingress and egress.
pub fn attach(
    ebpf: &mut Ebpf,
    points: &[AttachPoint],
    qdiscs: &mut QdiscGuard,
) -> Result<Vec<Attached>> {
    let mut out = Vec::new();
    for (name, attach_type, direction) in [
        ("tc_ingress", TcAttachType::Ingress, Direction::Ingress),
        ("tc_egress", TcAttachType::Egress, Direction::Egress),
    ] {
        let prog = program(ebpf, name)?;
        // Loaded once; later calls (a restarted container's new veth) only attach.
        match prog.load() {
            Ok(()) | Err(aya::programs::ProgramError::AlreadyLoaded) => {}
            Err(e) => return Err(Error::Load(format!("{name}: {e}"))),
        }
        for point in points {
            let mechanism = attach_one(prog, point, attach_type, direction, qdiscs)?;
            out.push(Attached {
                point: point.clone(),
                direction,
                mechanism,
            });
        }
    }
    Ok(out)
}

fn attach_one(
    prog: &mut SchedClassifier,
    point: &AttachPoint,
    attach_type: TcAttachType,
    direction: Direction,
    qdiscs: &mut QdiscGuard,
) -> Result<Mechanism> {
    // First in the chain, so drops by programs after ours are still observed.
    let tcx = prog.attach_with_options(
        &point.name,
        attach_type,
        tc::TcAttachOptions::TcxOrder(LinkOrder::first()),
    );
    let tcx_err = match tcx {
        Ok(_) => return Ok(Mechanism::Tcx),
        Err(e) => e.to_string(),
    };
    log::debug!(
        "TCX attach on {} failed ({tcx_err}); trying clsact",
        point.name
    );
    match tc::qdisc_add_clsact(&point.name) {
        Ok(()) => qdiscs.added.push(point.name.clone()),
        Err(tc::TcError::NetlinkError(e)) if e.to_string().contains("exists") => {}
        Err(e) => log::debug!("clsact on {}: {e}", point.name),
    }
    prog.attach_with_options(
        &point.name,
        attach_type,
        tc::TcAttachOptions::Netlink(tc::NlOptions::default()),
    )
    .map(|_| Mechanism::Netlink)
    .map_err(|e| Error::Attach {
        iface: point.name.clone(),
        direction: direction.as_str(),
        reason: format!("TCX: {tcx_err}; clsact: {e}"),
    })
}
