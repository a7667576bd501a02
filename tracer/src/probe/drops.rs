//! Attaching the end-of-life programs (`kfree_skb`, `consume_skb`): BTF tracepoints where the
//! kernel has them, raw tracepoints otherwise.

use super::loader::program;
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

/// How one tracepoint was attached: the mechanism, and whether the program for its older
/// form (fewer arguments) was the one the kernel took.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Attached {
    pub mechanism: Mechanism,
    pub older_form: bool,
}

impl std::fmt::Display for Attached {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.mechanism)?;
        if self.older_form {
            f.write_str(" (its older form: without the caller's address)")?;
        }
        Ok(())
    }
}

impl std::fmt::Display for Mechanism {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::TpBtf => "tp_btf",
            Self::RawTracepoint => "raw tracepoint",
        })
    }
}

/// Attaches `tracepoint` with program `<tracepoint>_btf`, else `<tracepoint>_raw`; where the
/// object has a `…_old` variant for an older form of the tracepoint (fewer arguments), that
/// is tried after each. Returns how it was attached, or why nothing worked.
pub fn attach(ebpf: &mut Ebpf, btf: Option<&Btf>, tracepoint: &str) -> Result<Attached, String> {
    let mut why = Vec::new();
    let attached = |mechanism, suffix: &str| Attached {
        mechanism,
        older_form: suffix.ends_with("_old"),
    };
    if let Some(btf) = btf {
        for suffix in ["_btf", "_btf_old"] {
            let name = format!("{tracepoint}{suffix}");
            if ebpf.program(&name).is_none() {
                continue;
            }
            match attach_btf(ebpf, btf, tracepoint, &name) {
                Ok(()) => return Ok(attached(Mechanism::TpBtf, suffix)),
                Err(e) => why.push(format!("tp_btf ({name}): {}", first_line(&e))),
            }
        }
    }
    for suffix in ["_raw", "_raw_old"] {
        let name = format!("{tracepoint}{suffix}");
        if ebpf.program(&name).is_none() {
            continue;
        }
        match attach_raw(ebpf, tracepoint, &name) {
            Ok(()) => return Ok(attached(Mechanism::RawTracepoint, suffix)),
            Err(e) => why.push(format!("raw tracepoint ({name}): {}", first_line(&e))),
        }
    }
    Err(why.join("; "))
}

/// The verifier's log runs to many lines; the first says what was refused.
fn first_line(e: &str) -> &str {
    e.lines().next().unwrap_or(e)
}

fn attach_btf(ebpf: &mut Ebpf, btf: &Btf, tp: &str, name: &str) -> Result<(), String> {
    let prog: &mut BtfTracePoint = program(ebpf, name)?;
    prog.load(tp, btf).map_err(|e| format!("{e}"))?;
    prog.attach().map_err(|e| format!("{e}"))?;
    Ok(())
}

fn attach_raw(ebpf: &mut Ebpf, tp: &str, name: &str) -> Result<(), String> {
    let prog: &mut RawTracePoint = program(ebpf, name)?;
    prog.load().map_err(|e| format!("{e}"))?;
    prog.attach(tp).map_err(|e| format!("{e}"))?;
    Ok(())
}
