//! Attaching the end-of-life programs (`kfree_skb`, `consume_skb`): BTF tracepoints where the
//! kernel has them, raw tracepoints otherwise.

use aya::{
    programs::{BtfTracePoint, RawTracePoint},
    Btf, Ebpf,
};

/// Which mechanism carries one tracepoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mechanism {
    TpBtf,
    RawTracepoint,
}

impl std::fmt::Display for Mechanism {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::TpBtf => "tp_btf",
            Self::RawTracepoint => "raw tracepoint",
        })
    }
}

/// Attaches `tracepoint` with program `<tracepoint>_btf`, else `<tracepoint>_raw`.
/// Returns the mechanism used, or why neither worked.
pub fn attach(ebpf: &mut Ebpf, btf: Option<&Btf>, tracepoint: &str) -> Result<Mechanism, String> {
    let mut why = Vec::new();
    if let Some(btf) = btf {
        match attach_btf(ebpf, btf, tracepoint) {
            Ok(()) => return Ok(Mechanism::TpBtf),
            Err(e) => why.push(format!("tp_btf: {e}")),
        }
    }
    match attach_raw(ebpf, tracepoint) {
        Ok(()) => Ok(Mechanism::RawTracepoint),
        Err(e) => {
            why.push(format!("raw tracepoint: {e}"));
            Err(why.join("; "))
        }
    }
}

fn attach_btf(ebpf: &mut Ebpf, btf: &Btf, tp: &str) -> Result<(), String> {
    let name = format!("{tp}_btf");
    let prog: &mut BtfTracePoint = ebpf
        .program_mut(&name)
        .ok_or("missing from the object")?
        .try_into()
        .map_err(|e| format!("{e}"))?;
    prog.load(tp, btf).map_err(|e| format!("{e}"))?;
    prog.attach().map_err(|e| format!("{e}"))?;
    Ok(())
}

fn attach_raw(ebpf: &mut Ebpf, tp: &str) -> Result<(), String> {
    let name = format!("{tp}_raw");
    let prog: &mut RawTracePoint = ebpf
        .program_mut(&name)
        .ok_or("missing from the object")?
        .try_into()
        .map_err(|e| format!("{e}"))?;
    prog.load().map_err(|e| format!("{e}"))?;
    prog.attach(tp).map_err(|e| format!("{e}"))?;
    Ok(())
}
