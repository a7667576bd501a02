//! Kernel struct field offsets, read from the running kernel's BTF at start-up by the user
//! side and handed to the eBPF programs as a read-only global (`OFFSETS`). Nothing here is
//! compiled in: a zero `valid` means "not filled", and the programs then report nothing.

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
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
    /// Where the `sk_buff` fields the netfilter observers read (len, data_len, mark, data) lie
    /// within one read of [`SKB_WINDOW`] bytes: its start, or [`NO_WINDOW`] (see [`Self::windowed`]).
    pub skb_window: u32,
    /// The same for `nf_hook_state` (hook, pf, in, out) and [`STATE_WINDOW`] bytes.
    pub state_window: u32,
}

/// Bytes of an `sk_buff` read at once by a netfilter observer (a power of two).
pub const SKB_WINDOW: u32 = 128;
/// Bytes of an `nf_hook_state` read at once (a power of two).
pub const STATE_WINDOW: u32 = 32;
/// The fields do not fit one window on this kernel: they are read one by one.
pub const NO_WINDOW: u32 = u32::MAX;

/// The start of a window of `size` bytes holding every `(offset, width)`, 8-aligned so that
/// each field keeps its natural alignment within it, or [`NO_WINDOW`].
fn window(fields: &[(u32, u32)], size: u32) -> u32 {
    let Some(lo) = fields.iter().map(|f| f.0).min() else {
        return NO_WINDOW;
    };
    let start = lo & !7;
    let fits = fields
        .iter()
        .all(|&(off, width)| off % width == 0 && off + width - start <= size);
    if fits {
        start
    } else {
        NO_WINDOW
    }
}

/// Where a field lies in its window, as the programs read it: the mask keeps a `width`-byte
/// read inside a `size`-byte window whatever the value (the verifier's bound), and is exact
/// for the fields [`window`] accepted.
#[inline(always)]
pub const fn in_window(off: u32, start: u32, size: u32, width: u32) -> usize {
    (off.wrapping_sub(start) & (size - width)) as usize
}

impl Default for Offsets {
    fn default() -> Self {
        Self::zeroed()
    }
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
            skb_window: NO_WINDOW,
            state_window: NO_WINDOW,
        }
    }

    /// These offsets with their windows worked out: the netfilter observers then read each
    /// struct once instead of once a field (a helper call each, at every slot of every hook).
    pub fn windowed(mut self) -> Self {
        self.skb_window = window(
            &[
                (self.skb_len, 4),
                (self.skb_data_len, 4),
                (self.skb_mark, 4),
                (self.skb_data, 8),
            ],
            SKB_WINDOW,
        );
        self.state_window = window(
            &[
                (self.state_hook, 1),
                (self.state_pf, 1),
                (self.state_in, 8),
                (self.state_out, 8),
            ],
            STATE_WINDOW,
        );
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn linux_6_18() -> Offsets {
        Offsets {
            valid: 1,
            skb_len: 112,
            skb_data_len: 116,
            skb_mark: 164,
            skb_data: 200,
            state_hook: 0,
            state_pf: 1,
            state_in: 8,
            state_out: 16,
            ..Offsets::zeroed()
        }
    }

    #[test]
    fn zeroed_is_not_valid() {
        assert_eq!(Offsets::zeroed().valid, 0);
        assert_eq!(Offsets::zeroed(), Offsets::default());
    }

    #[test]
    fn this_kernels_fields_fit_their_windows() {
        let o = linux_6_18().windowed();
        assert_eq!(o.skb_window, 112);
        assert_eq!(o.state_window, 0);
        for (off, width) in [(112, 4), (116, 4), (164, 4), (200, 8)] {
            let at = in_window(off, o.skb_window, SKB_WINDOW, width);
            assert_eq!(at as u32, off - 112);
            assert!(at as u32 + width <= SKB_WINDOW);
        }
        assert_eq!(in_window(16, 0, STATE_WINDOW, 8), 16);
        assert_eq!(in_window(1, 0, STATE_WINDOW, 1), 1);
    }

    #[test]
    fn fields_too_far_apart_or_misaligned_are_read_one_by_one() {
        let far = Offsets {
            skb_data: 240,
            ..linux_6_18()
        };
        assert_eq!(far.windowed().skb_window, NO_WINDOW);
        let odd = Offsets {
            state_out: 20,
            ..linux_6_18()
        };
        assert_eq!(odd.windowed().state_window, NO_WINDOW);
        // A start that is not 8-aligned is rounded down; the span is counted from there.
        let o = Offsets {
            skb_len: 116,
            skb_data_len: 120,
            skb_data: 240,
            ..linux_6_18()
        };
        assert_eq!(o.windowed().skb_window, NO_WINDOW);
        let o = Offsets {
            skb_len: 116,
            skb_data_len: 120,
            skb_data: 232,
            ..linux_6_18()
        };
        assert_eq!(o.windowed().skb_window, 112);
    }

    #[test]
    fn a_window_read_never_leaves_its_window() {
        for off in [0u32, 3, 127, 128, 4000, u32::MAX] {
            for width in [1, 4, 8] {
                let at = in_window(off, 0, SKB_WINDOW, width) as u32;
                assert!(at + width <= SKB_WINDOW);
            }
        }
    }
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain-old-data, repr(C), every bit pattern valid.
    unsafe impl aya::Pod for super::Offsets {}
}
