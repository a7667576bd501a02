//! What this kernel offers for the netfilter layer besides BPF netfilter links: fentry/fexit
//! trampolines (tried by loading a trivial fexit program) and kprobes (the kprobe PMU).

use aya::{programs::FExit, Btf, Ebpf};

/// One mechanism and whether this kernel allows it, with the reason when not.
pub struct Offer {
    pub name: &'static str,
    pub available: Result<(), String>,
}

pub fn probe(ebpf: &mut Ebpf, btf: Option<&Btf>) -> Vec<Offer> {
    let fexit = match btf {
        None => Err("no kernel BTF".to_owned()),
        Some(btf) => try_fexit(ebpf, btf),
    };
    let kprobes = if std::path::Path::new("/sys/bus/event_source/devices/kprobe").exists() {
        Ok(())
    } else {
        Err("no kprobe PMU (CONFIG_KPROBES off?)".to_owned())
    };
    vec![
        Offer {
            name: "fentry/fexit",
            available: fexit,
        },
        Offer {
            name: "kprobes",
            available: kprobes,
        },
    ]
}

fn try_fexit(ebpf: &mut Ebpf, btf: &Btf) -> Result<(), String> {
    let prog: &mut FExit = super::loader::program(ebpf, "probe_fexit")?;
    prog.load("nf_hook_slow", btf).map_err(|e| {
        let text = format!("{e}");
        if text.contains("Operation not permitted") || text.contains("EPERM") {
            "refused by this kernel (EPERM)".to_owned()
        } else {
            text
        }
    })?;
    // Only a probe: unload it again.
    prog.unload().map_err(|e| format!("{e}"))
}

/// `other netfilter mechanisms: fentry/fexit refused by this kernel (EPERM); kprobes: …`
pub fn describe(offers: &[Offer]) -> String {
    let parts: Vec<String> = offers
        .iter()
        .map(|o| match &o.available {
            Ok(()) => format!("{} available (not needed)", o.name),
            Err(why) => format!("{} unavailable: {why}", o.name),
        })
        .collect();
    format!("other netfilter mechanisms: {}", parts.join("; "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describes_each_offer() {
        let text = describe(&[
            Offer {
                name: "fentry/fexit",
                available: Err("refused by this kernel (EPERM)".into()),
            },
            Offer {
                name: "kprobes",
                available: Ok(()),
            },
        ]);
        assert_eq!(
            text,
            "other netfilter mechanisms: fentry/fexit unavailable: refused by this kernel (EPERM); kprobes available (not needed)"
        );
    }
}
