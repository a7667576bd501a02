//! Kernel struct field offsets for the eBPF programs, from the running kernel's BTF.

use tracer_common::Offsets;

use super::btf::{Btf, BtfError};

/// Reads every offset the programs use. Fails naming the first field this kernel lacks.
pub fn from_btf(btf: &Btf) -> Result<Offsets, BtfError> {
    let off = |s: &str, path: &[&str]| btf.member_offset(s, path).map(|f| f.byte_offset);
    Ok(Offsets {
        valid: 1,
        skb_len: off("sk_buff", &["len"])?,
        skb_data: off("sk_buff", &["data"])?,
        skb_dev: off("sk_buff", &["dev"])?,
        skb_mark: off("sk_buff", &["mark"])?,
        skb_data_len: off("sk_buff", &["data_len"])?,
        dev_ifindex: off("net_device", &["ifindex"])?,
        state_hook: off("nf_hook_state", &["hook"])?,
        state_pf: off("nf_hook_state", &["pf"])?,
        state_in: off("nf_hook_state", &["in"])?,
        state_out: off("nf_hook_state", &["out"])?,
        dev_net: off("net_device", &["nd_net", "net"])?,
        net_inum: off("net", &["ns", "inum"])?,
        ..Offsets::zeroed()
    }
    .windowed())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads the running kernel's BTF (world-readable; present on every kernel flowtrace
    /// supports). The offsets differ between kernels, so only their plausibility is checked.
    #[test]
    fn the_running_kernel_has_every_field() {
        let btf = Btf::from_sys_fs().expect("this machine's kernel has BTF");
        let o = from_btf(&btf).expect("all fields present");
        assert_eq!(o.valid, 1);
        assert!(o.skb_len > 0 && o.skb_data > o.skb_len, "{o:?}");
        assert_eq!(o.state_hook, 0, "nf_hook_state starts with `hook`");
        assert!(o.state_in > o.state_pf);
        assert!(o.dev_ifindex > 0 && o.net_inum > 0);
        // This kernel's fields fit their windows: the observers read each struct once.
        assert_ne!(o.skb_window, tracer_common::offsets::NO_WINDOW, "{o:?}");
        assert_eq!(o.state_window, 0, "{o:?}");
    }
}
