//! Attaching the tc observers: TCX links where the kernel has them (≥ 6.6), else a clsact
//! qdisc with netlink filters (or as `--tc-attach` says). TCX links are detached when the
//! `Ebpf` object is dropped, and by the kernel if flowtrace is killed; netlink filters and the
//! clsact qdiscs flowtrace added are owned and written down by the [`Ledger`], so that the
//! next start removes them if flowtrace is killed.

use std::fmt;

use aya::{
    programs::{tc, LinkOrder, SchedClassifier, TcAttachType},
    Ebpf,
};
use tracer_common::Direction;

use super::tc_ledger::Ledger;
use crate::{
    cli::TcAttach,
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
    mode: TcAttach,
    ledger: &mut Ledger,
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
            Err(e) => return Err(Error::load(format!("{name}: {e}"))),
        }
        for point in points {
            let mechanism = attach_one(prog, point, attach_type, direction, mode, ledger)?;
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
    mode: TcAttach,
    ledger: &mut Ledger,
) -> Result<Mechanism> {
    let tcx_err = if mode == TcAttach::Netlink {
        "not tried (--tc-attach netlink)".to_owned()
    } else {
        // First in the chain, so drops by programs after ours are still observed.
        let tcx = prog.attach_with_options(
            &point.name,
            attach_type,
            tc::TcAttachOptions::TcxOrder(LinkOrder::first()),
        );
        match tcx {
            Ok(_) => return Ok(Mechanism::Tcx),
            Err(e) if mode == TcAttach::Tcx => {
                return Err(Error::Attach {
                    iface: point.name.clone(),
                    direction: direction.as_str(),
                    reason: format!("TCX: {e} (--tc-attach tcx allows no fallback)"),
                })
            }
            Err(e) => e.to_string(),
        }
    };
    log::debug!(
        "TCX attach on {} not used ({tcx_err}); trying clsact",
        point.name
    );
    match tc::qdisc_add_clsact(&point.name) {
        Ok(()) => ledger.qdisc_added(point.ifindex, &point.name),
        // Already there: "File exists", or "Exclusivity flag on" from newer kernels.
        Err(tc::TcError::NetlinkError(e))
            if ["exists", "Exclusivity"]
                .iter()
                .any(|m| e.to_string().contains(m)) =>
        {
            ledger.qdisc_found(point.ifindex, &point.name)
        }
        Err(e) => log::debug!("clsact on {}: {e}", point.name),
    }
    let attach_err = |e: String| Error::Attach {
        iface: point.name.clone(),
        direction: direction.as_str(),
        reason: format!("TCX: {tcx_err}; clsact: {e}"),
    };
    let id = prog
        .attach_with_options(
            &point.name,
            attach_type,
            tc::TcAttachOptions::Netlink(tc::NlOptions::default()),
        )
        .map_err(|e| attach_err(e.to_string()))?;
    let link = prog.take_link(id).map_err(|e| attach_err(e.to_string()))?;
    ledger.filter_attached(point.ifindex, &point.name, link);
    Ok(Mechanism::Netlink)
}
