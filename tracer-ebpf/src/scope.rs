//! Is a packet that is not tracked yet one of the traced containers'? The rules are
//! `tracer_common::scope`'s; this is where the tc and netfilter observers look them up.

use aya_ebpf::helpers::bpf_probe_read_kernel_buf;
use tracer_common::{
    flow::{FlowKey, Frame},
    scope::{
        has_ports, judged_at_hook, port_key, IpScope, ScopeAddr, NF_SCOPE_BYTES, POINT_ALL,
        POINT_TRACED,
    },
    Direction, Offsets,
};

use crate::{
    kread::field,
    maps::{FLOWS, SCOPE_ADDRS, SCOPE_POINTS, SCOPE_PORTS},
};

#[inline(always)]
fn traced_addr(a: &ScopeAddr) -> bool {
    // SAFETY: a lookup with a stack key; the value is not kept.
    unsafe { SCOPE_ADDRS.get(a).is_some() }
}

#[inline(always)]
fn published(proto: u8, dport: u16) -> bool {
    // SAFETY: as above.
    unsafe { SCOPE_PORTS.get(&port_key(proto, dport)).is_some() }
}

/// At a tc hop: is the packet in scope? Everything is at a traced veth; elsewhere only IP.
#[inline(always)]
pub fn at_tc<F: Frame>(frame: &F, ifindex: u32, direction: u8) -> bool {
    // SAFETY: as above.
    let flags = unsafe { SCOPE_POINTS.get(&ifindex) }.copied().unwrap_or(0);
    if flags & (POINT_TRACED | POINT_ALL) != 0 {
        return true;
    }
    let Some(p) = FlowKey::parse_frame(frame) else {
        return false;
    };
    let k = &p.key;
    if traced_addr(&ScopeAddr::of_key(&k.src, p.ipv6))
        || traced_addr(&ScopeAddr::of_key(&k.dst, p.ipv6))
    {
        return true;
    }
    if direction != Direction::Ingress as u8 {
        return false;
    }
    if p.l4.is_some() && published(k.proto, u16::from_be_bytes(k.dport)) {
        return true;
    }
    // SAFETY: as above.
    unsafe { FLOWS.get(k).is_some() }
}

/// At a netfilter observer, for a packet no tc observer took: judged only at the entry of
/// PREROUTING and OUTPUT (`judged_at_hook`), the first hook every packet passes, so a packet
/// from an interface flowtrace is not attached to (another Docker network's bridge) or sent
/// by the host is in scope from there on.
#[inline(always)]
pub fn at_netfilter(skb: u64, state: u64, slot: u8, off: &Offsets) -> bool {
    if slot != 0 {
        return false;
    }
    let hook: u8 = field(state, off.state_hook);
    let pf: u8 = field(state, off.state_pf);
    if !judged_at_hook(u32::from(hook)) || !(pf == 2 || pf == 10) {
        return false;
    }
    let data: u64 = field(skb, off.skb_data);
    if data == 0 {
        return false;
    }
    let mut h = [0u8; NF_SCOPE_BYTES];
    // SAFETY: bpf_probe_read_kernel_buf checks the address and fails cleanly.
    if unsafe { bpf_probe_read_kernel_buf(data as *const u8, &mut h) }.is_err() {
        return false;
    }
    let Some(s) = IpScope::parse(&h) else {
        return false;
    };
    if traced_addr(&s.src) || traced_addr(&s.dst) {
        return true;
    }
    if let Some(port) = s.dport() {
        if has_ports(s.proto) && published(s.proto, port) {
            return true;
        }
    }
    // SAFETY: a lookup with a stack key; the value is not kept.
    unsafe { FLOWS.get(&s.flow_key()).is_some() }
}
