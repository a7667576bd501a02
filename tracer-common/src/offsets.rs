//! Kernel struct field offsets, read from the running kernel's BTF at start-up by the user
//! side and handed to the eBPF programs as a read-only global (`OFFSETS`). Nothing here is
//! compiled in: a zero `valid` means "not filled", and the programs then report nothing.

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Offsets {
    /// 1 once filled in from BTF.
    pub valid: u32,
    /// `sk_buff.len`
    pub skb_len: u32,
    /// `sk_buff.data` (pointer)
    pub skb_data: u32,
    /// `sk_buff.dev` (pointer)
    pub skb_dev: u32,
    /// `sk_buff.mark`
    pub skb_mark: u32,
    /// `sk_buff.data_len` (bytes in fragments, so `len - data_len` are linear)
    pub skb_data_len: u32,
    /// `net_device.ifindex`
    pub dev_ifindex: u32,
    /// `nf_hook_state.hook` (u8)
    pub state_hook: u32,
    /// `nf_hook_state.pf` (u8)
    pub state_pf: u32,
    /// `nf_hook_state.in` (pointer)
    pub state_in: u32,
    /// `nf_hook_state.out` (pointer)
    pub state_out: u32,
    /// `net_device.nd_net.net` (pointer to the device's `struct net`)
    pub dev_net: u32,
    /// `net.ns.inum`: the namespace's inode number
    pub net_inum: u32,
}

impl Offsets {
    pub const fn zeroed() -> Self {
        Self {
            valid: 0,
            skb_len: 0,
            skb_data: 0,
            skb_dev: 0,
            skb_mark: 0,
            skb_data_len: 0,
            dev_ifindex: 0,
            state_hook: 0,
            state_pf: 0,
            state_in: 0,
            state_out: 0,
            dev_net: 0,
            net_inum: 0,
        }
    }
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain-old-data, repr(C), every bit pattern valid.
    unsafe impl aya::Pod for super::Offsets {}
}

#[cfg(test)]
mod tests {
    #[test]
    fn zeroed_is_not_valid() {
        assert_eq!(super::Offsets::zeroed().valid, 0);
        assert_eq!(super::Offsets::zeroed(), super::Offsets::default());
    }
}
