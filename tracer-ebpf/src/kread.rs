//! Reading kernel memory at offsets that come from BTF (never compiled in).

use aya_ebpf::helpers::bpf_probe_read_kernel;

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
