//! Hook-level netfilter observers on `nf_hook_slow`, for kernels without BPF netfilter links
//! (before 6.4): fentry/fexit where the kernel allows trampolines, else a kprobe and a
//! kretprobe. They see a packet where a hook starts and, when every table accepted it, where
//! it ends: which hooks it passed and what the hook rewrote (NAT), but not table by table.
//! A drop is still reported by the `kfree_skb` tracepoint; its table and rule come from the
//! ruleset's counters.

use std::fmt;

use aya::{
    programs::{FEntry, FExit, KProbe},
    Btf, Ebpf,
};

use super::loader::program;
use crate::cli::NfAttach;

const FUNCTION: &str = "nf_hook_slow";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HookMechanism {
    FentryFexit,
    Kprobes,
}

impl fmt::Display for HookMechanism {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::FentryFexit => "fentry/fexit on nf_hook_slow",
            Self::Kprobes => "kprobe/kretprobe on nf_hook_slow",
        })
    }
}

fn fentry(ebpf: &mut Ebpf, btf: &Btf) -> Result<(), String> {
    let p: &mut FEntry = program(ebpf, "nf_hook_entry")?;
    p.load(FUNCTION, btf).map_err(|e| format!("{e}"))?;
    p.attach().map(|_| ()).map_err(|e| format!("{e}"))
}

fn fexit(ebpf: &mut Ebpf, btf: &Btf) -> Result<(), String> {
    let p: &mut FExit = program(ebpf, "nf_hook_exit")?;
    p.load(FUNCTION, btf).map_err(|e| format!("{e}"))?;
    p.attach().map(|_| ()).map_err(|e| format!("{e}"))
}

/// Both or neither: an fentry left without its fexit is unloaded again.
fn fentry_fexit(ebpf: &mut Ebpf, btf: Option<&Btf>) -> Result<(), String> {
    let btf = btf.ok_or("no kernel BTF")?;
    fentry(ebpf, btf)?;
    fexit(ebpf, btf).inspect_err(|_| {
        if let Ok(p) = program::<FEntry>(ebpf, "nf_hook_entry") {
            let _ = p.unload();
        }
    })
}

fn kprobe(ebpf: &mut Ebpf, name: &str) -> Result<(), String> {
    let p: &mut KProbe = program(ebpf, name)?;
    p.load().map_err(|e| format!("{name}: {e}"))?;
    p.attach(FUNCTION, 0)
        .map(|_| ())
        .map_err(|e| format!("{name}: {e}"))
}

/// Both or neither: a kprobe left without its kretprobe is unloaded again.
fn kprobes(ebpf: &mut Ebpf) -> Result<(), String> {
    kprobe(ebpf, "nf_hook_kprobe")?;
    kprobe(ebpf, "nf_hook_kretprobe").inspect_err(|_| {
        if let Ok(p) = program::<KProbe>(ebpf, "nf_hook_kprobe") {
            let _ = p.unload();
        }
    })
}

/// Attaches by `mode` (`Auto`: fentry/fexit, else kprobes). Whatever attached is detached
/// when `ebpf` is dropped. The error says what each mechanism answered.
pub fn attach(ebpf: &mut Ebpf, btf: Option<&Btf>, mode: NfAttach) -> Result<HookMechanism, String> {
    let mut why = Vec::new();
    if matches!(mode, NfAttach::Auto | NfAttach::Fexit) {
        match fentry_fexit(ebpf, btf) {
            Ok(()) => return Ok(HookMechanism::FentryFexit),
            Err(e) => why.push(format!("fentry/fexit: {e}")),
        }
    }
    if matches!(mode, NfAttach::Auto | NfAttach::Kprobe) {
        match kprobes(ebpf) {
            Ok(()) => return Ok(HookMechanism::Kprobes),
            Err(e) => why.push(format!("kprobes: {e}")),
        }
    }
    Err(why.join("; "))
}
