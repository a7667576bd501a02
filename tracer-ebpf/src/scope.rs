//! Is a packet that is not tracked yet one of the traced containers'? The rules are
//! `tracer_common::scope`'s; this is where the tc and netfilter observers look them up.

use aya_ebpf::helpers::bpf_probe_read_kernel_buf;
use tracer_common::{
    flow::Frame,
    scope::{dport, has_ports, judged_at_hook, port_key, ScopeAddr, POINT_ALL, POINT_TRACED},
    Direction, Offsets,
};

use crate::{
    kread::field,
    maps::{FLOWS, SCOPE_ADDRS, SCOPE_POINTS, SCOPE_PORTS, SCOPE_SCRATCH},
};

#[inline(always)]
fn traced_addr(a: &ScopeAddr) -> bool {
    // SAFETY: a lookup with a stack key; the value is not kept.
    unsafe { SCOPE_ADDRS.get(a).is_some() }
}

#[inline(always)]
fn published(proto: u8, dport: u16) -> bool {
    // SAFETY: as above.
    unsafe { SCOPE_PORTS.get(port_key(proto, dport)).is_some() }
}

/// At a tc hop: is the packet in scope? Everything is at a traced veth; elsewhere only IP.
/// The keys are built in `SCOPE_SCRATCH`, not on the stack: this runs as a subprogram of the
/// tc programs, whose frames together must stay within 512 bytes on every kernel.
#[inline(always)]
pub fn at_tc<F: Frame>(frame: &F, ifindex: u32, direction: u8) -> bool {
    // SAFETY: as above.
    let flags = unsafe { SCOPE_POINTS.get(ifindex) }.copied().unwrap_or(0);
    if flags & (POINT_TRACED | POINT_ALL) != 0 {
        return true;
    }
    let Some(s) = SCOPE_SCRATCH.get_ptr_mut(0) else {
        return false;
    };
    let Some(et) = frame.bytes::<2>(12) else {
        return false;
    };
    let (mut ethertype, mut l3) = (u16::from_be_bytes(et), 14);
    if ethertype == 0x8100 || ethertype == 0x88a8 {
        let Some(et) = frame.bytes::<2>(16) else {
            return false;
        };
        ethertype = u16::from_be_bytes(et);
        l3 = 18;
    }
    // SAFETY: `s` is this CPU's scratch entry; nothing else runs on this CPU meanwhile.
    let (proto, l4) = unsafe {
        match ethertype {
            0x0800 => {
                let Some(h) = frame.bytes::<20>(l3) else {
                    return false;
                };
                (*s).src = ScopeAddr::v4([h[12], h[13], h[14], h[15]]);
                (*s).dst = ScopeAddr::v4([h[16], h[17], h[18], h[19]]);
                let first = u16::from_be_bytes([h[6], h[7]]) & 0x1fff == 0;
                (h[9], first.then_some(l3 + u32::from(h[0] & 0xf) * 4))
            }
            0x86dd => {
                let (Some(h), Some(a), Some(b)) = (
                    frame.bytes::<8>(l3),
                    frame.bytes::<16>(l3 + 8),
                    frame.bytes::<16>(l3 + 24),
                ) else {
                    return false;
                };
                (*s).src = ScopeAddr::v6(a);
                (*s).dst = ScopeAddr::v6(b);
                (h[6], Some(l3 + 40))
            }
            _ => return false,
        }
    };
    // SAFETY: as above; lookups with keys in the scratch entry, values not kept.
    unsafe {
        if traced_addr(&(*s).src) || traced_addr(&(*s).dst) {
            return true;
        }
        if direction != Direction::Ingress as u8 {
            return false;
        }
        let ports = match l4 {
            Some(at) if has_ports(proto) => frame.bytes::<4>(at),
            _ => None,
        };
        if let Some(p) = ports {
            if published(proto, dport(p)) {
                return true;
            }
        }
        (*s).set_key(proto, ports);
        // By reference: the key stays in the scratch entry instead of being copied to the stack.
        #[allow(clippy::needless_borrows_for_generic_args)]
        FLOWS.get(&(*s).key).is_some()
    }
}

/// At a netfilter observer, for a packet no tc observer took: judged only at the entry of
/// PREROUTING and OUTPUT (`judged_at_hook`), the first hook every packet passes, so a packet
/// from an interface flowtrace is not attached to (another Docker network's bridge) or sent
/// by the host is in scope from there on.
#[inline(never)]
pub fn at_netfilter(skb: u64, state: u64, off: &Offsets) -> bool {
    let hook: u8 = field(state, off.state_hook);
    let pf: u8 = field(state, off.state_pf);
    if !judged_at_hook(u32::from(hook)) || !(pf == 2 || pf == 10) {
        return false;
    }
    let data: u64 = field(skb, off.skb_data);
    if data == 0 {
        return false;
    }
    let Some(s) = SCOPE_SCRATCH.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: `s` is this CPU's scratch entry; nothing else runs on this CPU meanwhile.
    // bpf_probe_read_kernel_buf checks the address and fails cleanly.
    unsafe {
        if bpf_probe_read_kernel_buf(data as *const u8, &mut (*s).head).is_err() {
            return false;
        }
        let Some((proto, ports)) = (*s).parse_head() else {
            return false;
        };
        if traced_addr(&(*s).src) || traced_addr(&(*s).dst) {
            return true;
        }
        if let Some(p) = ports {
            if published(proto, dport(p)) {
                return true;
            }
        }
        (*s).set_key(proto, ports);
        // By reference: the key stays in the scratch entry instead of being copied to the stack.
        #[allow(clippy::needless_borrows_for_generic_args)]
        FLOWS.get(&(*s).key).is_some()
    }
}
