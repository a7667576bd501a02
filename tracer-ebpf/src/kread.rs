//! Reading kernel memory at offsets that come from BTF (never compiled in).

use aya_ebpf::helpers::{bpf_probe_read_kernel, bpf_probe_read_kernel_buf};
use tracer_common::offsets::{in_window, Offsets, NO_WINDOW, SKB_WINDOW, STATE_WINDOW};

/// Reads a `T` at `base + off`; zero when it cannot be read.
#[inline(always)]
pub fn field<T: Copy + Default>(base: u64, off: u32) -> T {
    if base == 0 {
        return T::default();
    }
    // SAFETY: bpf_probe_read_kernel checks the address and fails cleanly.
    unsafe { bpf_probe_read_kernel((base + u64::from(off)) as *const T) }.unwrap_or_default()
}

/// `net_device->ifindex` of the device at `dev`, or 0.
#[inline(always)]
pub fn ifindex(dev: u64, off_ifindex: u32) -> u32 {
    field::<i32>(dev, off_ifindex) as u32
}

/// A `T` at `base + off`: loaded directly with `DIRECT` (see `load`), else read as `field`
/// reads it; zero for a null `base`.
///
/// # Safety
/// With `DIRECT`, as `load`.
#[inline(always)]
pub unsafe fn field_of<T: Copy + Default, const DIRECT: bool>(base: u64, off: u32) -> T {
    if !DIRECT {
        return field(base, off);
    }
    if base == 0 {
        return T::default();
    }
    load::<T>(base, off)
}

/// The same for `net_device->ifindex`: `dev` read from a BTF-typed `nf_hook_state` is a
/// `net_device` pointer the verifier knows.
///
/// # Safety
/// With `DIRECT`, as `load`.
#[inline(always)]
pub unsafe fn ifindex_of<const DIRECT: bool>(dev: u64, off_ifindex: u32) -> u32 {
    field_of::<i32, DIRECT>(dev, off_ifindex) as u32
}

/// What the netfilter observers read of a packet's `sk_buff`.
pub struct SkbFields {
    pub len: u32,
    pub data_len: u32,
    pub mark: u32,
    pub data: u64,
}

/// What they read of the hook's `nf_hook_state`: the devices as pointers.
pub struct StateFields {
    pub hook: u8,
    pub pf: u8,
    pub in_dev: u64,
    pub out_dev: u64,
}

/// A `T` at byte `at` of `buf` (`at + size_of::<T>()` within it: see `in_window`).
///
/// # Safety
/// `buf` must be valid for `at + size_of::<T>()` bytes.
#[inline(always)]
unsafe fn at<T: Copy>(buf: *const u8, at: usize) -> T {
    core::ptr::read_unaligned(buf.add(at) as *const T)
}

/// Reads `N` bytes of the struct at `base` from its window's start `w` into `buf`; false if
/// this kernel's fields have no window or the read failed (then they are read one by one).
///
/// # Safety
/// `buf` must be valid for `N` bytes.
#[inline(always)]
unsafe fn read_window<const N: usize>(base: u64, w: u32, buf: *mut [u8; N]) -> bool {
    w != NO_WINDOW
        && bpf_probe_read_kernel_buf((base + u64::from(w)) as *const u8, &mut *buf).is_ok()
}

/// A `T` at `base + off`, loaded directly. Only where the verifier knows `base` by its BTF
/// type (a BPF netfilter program's `skb` and `state`) and `off` as a constant (`OFFSETS`, a
/// frozen read-only global the loader writes from this kernel's BTF): it checks the load
/// against the struct's layout and makes it a plain move, where a `bpf_probe_read_kernel`
/// call costs a helper call and a fault-checked copy.
///
/// # Safety
/// As above; the verifier refuses any other use.
#[inline(always)]
unsafe fn load<T: Copy>(base: u64, off: u32) -> T {
    core::ptr::read((base as *const u8).add(off as usize) as *const T)
}

/// The `sk_buff` fields: loaded directly (`DIRECT`, see `load`), else in one read of the
/// window user space worked out (`Offsets`) into `buf` (scratch: the caller overwrites it
/// next), else one read a field.
///
/// # Safety
/// `buf` must be valid for `SKB_WINDOW` bytes; with `DIRECT`, as `load`.
#[inline(always)]
pub unsafe fn skb_fields<const DIRECT: bool>(
    skb: u64,
    off: &Offsets,
    buf: *mut [u8; SKB_WINDOW as usize],
) -> SkbFields {
    if DIRECT {
        return SkbFields {
            len: load(skb, off.skb_len),
            data_len: load(skb, off.skb_data_len),
            mark: load(skb, off.skb_mark),
            data: load(skb, off.skb_data),
        };
    }
    let w = off.skb_window;
    if read_window(skb, w, buf) {
        let b = buf as *const u8;
        return SkbFields {
            len: at(b, in_window(off.skb_len, w, SKB_WINDOW, 4)),
            data_len: at(b, in_window(off.skb_data_len, w, SKB_WINDOW, 4)),
            mark: at(b, in_window(off.skb_mark, w, SKB_WINDOW, 4)),
            data: at(b, in_window(off.skb_data, w, SKB_WINDOW, 8)),
        };
    }
    SkbFields {
        len: field(skb, off.skb_len),
        data_len: field(skb, off.skb_data_len),
        mark: field(skb, off.skb_mark),
        data: field(skb, off.skb_data),
    }
}

/// The same for `nf_hook_state`.
///
/// # Safety
/// `buf` must be valid for `STATE_WINDOW` bytes; with `DIRECT`, as `load`.
#[inline(always)]
pub unsafe fn state_fields<const DIRECT: bool>(
    state: u64,
    off: &Offsets,
    buf: *mut [u8; STATE_WINDOW as usize],
) -> StateFields {
    if DIRECT {
        return StateFields {
            hook: load(state, off.state_hook),
            pf: load(state, off.state_pf),
            in_dev: load(state, off.state_in),
            out_dev: load(state, off.state_out),
        };
    }
    let w = off.state_window;
    if read_window(state, w, buf) {
        let b = buf as *const u8;
        return StateFields {
            hook: at(b, in_window(off.state_hook, w, STATE_WINDOW, 1)),
            pf: at(b, in_window(off.state_pf, w, STATE_WINDOW, 1)),
            in_dev: at(b, in_window(off.state_in, w, STATE_WINDOW, 8)),
            out_dev: at(b, in_window(off.state_out, w, STATE_WINDOW, 8)),
        };
    }
    StateFields {
        hook: field(state, off.state_hook),
        pf: field(state, off.state_pf),
        in_dev: field(state, off.state_in),
        out_dev: field(state, off.state_out),
    }
}
