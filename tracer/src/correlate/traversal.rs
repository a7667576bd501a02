//! nftables trace events joined into traversals: one packet's walk through one base chain of
//! one table (its hook's built-in chain and every chain it jumps to), with the rule or policy
//! that gave the verdict. The kernel sends a trace event per rule that matched (and per
//! return and policy), on one CPU in order for one walk, tagged with an id derived from the
//! sk_buff; the first event of each walk carries the packet's headers. Walks of different
//! packets interleave, so events are grouped by id.

use tracer_common::flow::FlowKey;

use crate::nftrace::{TraceEvent, TraceKind};

/// Verdict codes (uapi `linux/netfilter.h`, `nf_tables.h`).
pub const NF_DROP: i32 = 0;
pub const NF_ACCEPT: i32 = 1;
const NF_STOLEN: i32 = 2;
const NF_QUEUE: i32 = 3;
const NFT_JUMP: i32 = -3;
const NFT_GOTO: i32 = -4;

/// One packet's walk through one table at one hook.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Traversal {
    /// The table's family (`NFPROTO_*` of its nfgenmsg: 1 inet, 2 ip, 10 ip6).
    pub family: u8,
    pub table: String,
    /// The base chain the walk started in (for iptables-nft: the hook's name).
    pub base_chain: String,
    /// The final verdict (`NF_ACCEPT`, `NF_DROP`, …).
    pub verdict: i32,
    /// The rule that gave it: (chain, handle); None when the policy decided.
    pub rule: Option<(String, u64)>,
    /// True when the base chain's policy decided.
    pub by_policy: bool,
    /// Chains walked, in order (a return shows as the caller again).
    pub chain_path: Vec<String>,
    /// The packet as the table saw it at the walk's start: its key and the fingerprint NAT
    /// leaves alone (see `FlowKey::parse_frame`).
    pub key: FlowKey,
    pub fingerprint: u64,
}

/// A walk under way.
struct Partial {
    t: Traversal,
    /// Chains entered by jump (not goto), to know where a return goes.
    stack: Vec<String>,
}

/// Groups trace events into traversals.
#[derive(Default)]
pub struct Assembler {
    open: super::NetMap<u32, Partial>,
    /// Walks whose start was never seen (events lost, or begun before flowtrace listened).
    pub orphans: u64,
}

/// Walks under way kept at most (a walk ends within microseconds; more means lost events).
const MAX_OPEN: usize = 4096;

impl Assembler {
    /// Takes one event; returns the traversal it completed, if any.
    pub fn push(&mut self, e: TraceEvent) -> Option<Traversal> {
        if let Some(net) = e.network_header.as_deref() {
            // The first event of a walk.
            let (key, fingerprint) = headers_key(net, e.transport_header.as_deref())?;
            if self.open.len() >= MAX_OPEN {
                self.open.clear();
            }
            self.open.insert(
                e.id,
                Partial {
                    t: Traversal {
                        family: e.family,
                        table: e.table.clone(),
                        base_chain: e.chain.clone(),
                        verdict: NF_ACCEPT,
                        rule: None,
                        by_policy: false,
                        chain_path: vec![e.chain.clone()],
                        key,
                        fingerprint,
                    },
                    stack: vec![e.chain.clone()],
                },
            );
        }
        let Some(p) = self.open.get_mut(&e.id) else {
            self.orphans += 1;
            return None;
        };
        if p.t.table != e.table {
            self.orphans += 1;
            return None;
        }
        let done = step(p, &e);
        if done {
            self.open.remove(&e.id).map(|p| p.t)
        } else {
            None
        }
    }
}

/// Applies one event to a walk; true when it decided.
fn step(p: &mut Partial, e: &TraceEvent) -> bool {
    // The end of a chain sends no event (only an explicit `return` does): an event from a
    // chain lower on the stack means the walk went back there.
    if p.stack.last() != Some(&e.chain) && p.stack.contains(&e.chain) {
        while p.stack.last() != Some(&e.chain) {
            p.stack.pop();
        }
        p.t.chain_path.push(e.chain.clone());
    }
    match e.kind {
        TraceKind::Policy => {
            p.t.verdict = e.policy.map_or(NF_ACCEPT, |v| v as i32);
            p.t.by_policy = true;
            true
        }
        TraceKind::Return => {
            // The end of a chain with no verdict: back to its caller.
            p.stack.pop();
            if let Some(caller) = p.stack.last() {
                p.t.chain_path.push(caller.clone());
            }
            false
        }
        TraceKind::Rule => match e.verdict {
            Some(NFT_JUMP) | Some(NFT_GOTO) => {
                if let Some(to) = &e.jump_to {
                    if e.verdict == Some(NFT_GOTO) {
                        p.stack.pop();
                    }
                    p.stack.push(to.clone());
                    p.t.chain_path.push(to.clone());
                }
                false
            }
            Some(v @ (NF_DROP | NF_ACCEPT | NF_STOLEN | NF_QUEUE)) => {
                p.t.verdict = v;
                p.t.rule = e.handle.map(|h| (e.chain.clone(), h));
                true
            }
            // A rule's `return` (e.g. `-j RETURN`): the same as reaching the chain's end.
            Some(-5) => {
                p.stack.pop();
                if let Some(caller) = p.stack.last() {
                    p.t.chain_path.push(caller.clone());
                }
                false
            }
            _ => false, // continue (a counter, a log) or break
        },
        TraceKind::Other(_) => false,
    }
}

/// The key and fingerprint of a trace event's headers: the network header (IPv4 or IPv6,
/// as the kernel copied it) and the transport header after it.
pub fn headers_key(network: &[u8], transport: Option<&[u8]>) -> Option<(FlowKey, u64)> {
    let mut ip = network.to_vec();
    match network.first()? >> 4 {
        4 => {
            // The kernel copies the network header up to the transport header (40 bytes at
            // most): the transport header follows where the IP header's length says.
            let ihl = usize::from(network[0] & 0xf) * 4;
            if network.len() < 20 {
                return None;
            }
            ip.resize(ihl.max(20), 0);
        }
        6 if network.len() >= 40 => ip.truncate(40),
        _ => return None,
    }
    ip.extend_from_slice(transport.unwrap_or(&[]));
    ip_key(&ip)
}

/// The key and fingerprint of an IP packet's bytes (from its IP header on).
pub fn ip_key(ip: &[u8]) -> Option<(FlowKey, u64)> {
    let ethertype: [u8; 2] = match ip.first()? >> 4 {
        4 => [0x08, 0x00],
        6 => [0x86, 0xdd],
        _ => return None,
    };
    // The header walk wants a frame: a blank Ethernet header, then the packet. On the stack
    // for what a netfilter record or a trace event holds (this runs for each netfilter step
    // of every packet nftrace decided: an allocation and a free each, in the live profile);
    // a longer packet, which none of them is, on the heap.
    let mut stack = [0u8; FRAME_ROOM];
    let mut heap = Vec::new();
    let frame = match stack.get_mut(12..14 + ip.len()) {
        Some(room) => {
            room[..2].copy_from_slice(&ethertype);
            room[2..].copy_from_slice(ip);
            &stack[..14 + ip.len()]
        }
        None => {
            heap.extend_from_slice(&[0; 12]);
            heap.extend_from_slice(&ethertype);
            heap.extend_from_slice(ip);
            &heap[..]
        }
    };
    let p = FlowKey::parse_frame(frame)?;
    Some((p.key, p.fingerprint))
}

/// Room for a blank Ethernet header and the bytes a netfilter record holds (`SNAP_LEN`), or a
/// trace event's headers (at most 60 bytes of IPv4 or 40 of IPv6, and a transport header).
const FRAME_ROOM: usize = 14 + tracer_common::event::SNAP_LEN;

/// The verdict's name as the model writes it.
pub fn verdict_name(v: i32) -> &'static str {
    match v {
        NF_DROP => "drop",
        NF_ACCEPT => "accept",
        NF_STOLEN => "stolen",
        NF_QUEUE => "queue",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn ipv4_udp(id: u16, src: [u8; 4], dst: [u8; 4]) -> (Vec<u8>, Vec<u8>) {
        let mut ip = vec![0x45, 0, 0, 33, 0, 0, 0x40, 0, 64, 17, 0, 0];
        ip[4..6].copy_from_slice(&id.to_be_bytes());
        ip.extend_from_slice(&src);
        ip.extend_from_slice(&dst);
        let udp = vec![0x9c, 0x40, 0x14, 0xe9, 0, 13, 0, 0];
        (ip, udp)
    }

    fn event(id: u32, chain: &str, kind: TraceKind, verdict: Option<i32>) -> TraceEvent {
        TraceEvent {
            id,
            family: 2,
            nfproto: 2,
            table: "filter".into(),
            chain: chain.into(),
            kind,
            handle: Some(7),
            verdict,
            ..TraceEvent::default()
        }
    }

    fn first(id: u32, chain: &str, verdict: Option<i32>, jump: Option<&str>) -> TraceEvent {
        let (ip, udp) = ipv4_udp(0x1234, [172, 18, 0, 2], [198, 51, 100, 2]);
        TraceEvent {
            network_header: Some(ip),
            transport_header: Some(udp),
            jump_to: jump.map(str::to_owned),
            ..event(id, chain, TraceKind::Rule, verdict)
        }
    }

    #[test]
    fn a_drop_in_a_jumped_to_chain_names_that_rule_and_the_path() {
        let mut a = Assembler::default();
        assert!(a
            .push(first(1, "FORWARD", Some(NFT_JUMP), Some("DOCKER-USER")))
            .is_none());
        let mut drop = event(1, "DOCKER-USER", TraceKind::Rule, Some(NF_DROP));
        drop.handle = Some(42);
        let t = a.push(drop).expect("decided");
        assert_eq!(t.verdict, NF_DROP);
        assert_eq!(t.rule, Some(("DOCKER-USER".into(), 42)));
        assert_eq!(t.chain_path, ["FORWARD", "DOCKER-USER"]);
        assert_eq!(t.key.proto, 17);
        assert_eq!(&t.key.src[..4], &[172, 18, 0, 2]);
        assert_eq!(t.key.dport, [0x14, 0xe9]);
    }

    #[test]
    fn returns_go_back_to_the_caller_and_the_policy_can_decide() {
        let mut a = Assembler::default();
        a.push(first(9, "FORWARD", Some(NFT_JUMP), Some("DOCKER-USER")));
        a.push(event(9, "DOCKER-USER", TraceKind::Return, None));
        let mut policy = event(9, "FORWARD", TraceKind::Policy, None);
        policy.policy = Some(0);
        let t = a.push(policy).expect("decided");
        assert!(t.by_policy && t.rule.is_none());
        assert_eq!(t.verdict, NF_DROP);
        assert_eq!(t.chain_path, ["FORWARD", "DOCKER-USER", "FORWARD"]);
    }

    /// Recent Docker's empty chains: no event says the walk left DOCKER-USER or DOCKER-CT,
    /// the next event from the caller does.
    #[test]
    fn silent_ends_of_chains_show_the_caller_again() {
        let mut a = Assembler::default();
        let jump = |chain: &str, to: &str| TraceEvent {
            jump_to: Some(to.to_owned()),
            ..event(4, chain, TraceKind::Rule, Some(NFT_JUMP))
        };
        a.push(first(4, "FORWARD", Some(NFT_JUMP), Some("DOCKER-USER")));
        a.push(jump("FORWARD", "DOCKER-FORWARD"));
        a.push(jump("DOCKER-FORWARD", "DOCKER-CT"));
        a.push(jump("DOCKER-FORWARD", "DOCKER-BRIDGE"));
        a.push(jump("DOCKER-BRIDGE", "DOCKER"));
        let t = a
            .push(event(4, "DOCKER", TraceKind::Rule, Some(NF_DROP)))
            .expect("decided");
        assert_eq!(
            t.chain_path,
            [
                "FORWARD",
                "DOCKER-USER",
                "FORWARD",
                "DOCKER-FORWARD",
                "DOCKER-CT",
                "DOCKER-FORWARD",
                "DOCKER-BRIDGE",
                "DOCKER"
            ]
        );
    }

    #[test]
    fn interleaved_walks_are_kept_apart_and_orphans_counted() {
        let mut a = Assembler::default();
        a.push(first(1, "FORWARD", Some(NFT_JUMP), Some("A")));
        a.push(first(2, "FORWARD", Some(NFT_JUMP), Some("B")));
        let t2 = a
            .push(event(2, "B", TraceKind::Rule, Some(NF_ACCEPT)))
            .expect("2");
        let t1 = a
            .push(event(1, "A", TraceKind::Rule, Some(NF_DROP)))
            .expect("1");
        assert_eq!((t1.verdict, t2.verdict), (NF_DROP, NF_ACCEPT));
        assert_eq!(t1.chain_path, ["FORWARD", "A"]);
        assert!(a
            .push(event(3, "X", TraceKind::Rule, Some(NF_DROP)))
            .is_none());
        assert_eq!(a.orphans, 1);
    }

    #[test]
    fn counters_and_continues_do_not_decide() {
        let mut a = Assembler::default();
        assert!(a.push(first(5, "INPUT", Some(-1), None)).is_none());
        let t = a
            .push(event(5, "INPUT", TraceKind::Rule, Some(NF_ACCEPT)))
            .expect("accept");
        assert_eq!(t.chain_path, ["INPUT"]);
    }

    /// Any length, on the stack or past its room: the key and fingerprint of the packet in a
    /// frame of its own, and nothing for a truncated or non-IP packet.
    #[test]
    fn ip_keys_are_those_of_the_packet_in_a_frame() {
        let (ip, udp) = ipv4_udp(0x2345, [172, 18, 0, 2], [198, 51, 100, 2]);
        let mut v6 = vec![0x60, 0x01, 0x23, 0x45, 0, 8, 17, 64];
        v6.extend_from_slice(&[0x20, 0x01, 0x0d, 0xb8].repeat(8));
        for (ethertype, head) in [
            ([0x08, 0x00], [ip, udp.clone()].concat()),
            ([0x86, 0xdd], [v6, udp].concat()),
        ] {
            for len in 0..FRAME_ROOM + 40 {
                let mut packet = head.clone();
                packet.resize(len, 0x5a);
                let frame = [&[0u8; 12][..], &ethertype, &packet].concat();
                let want = FlowKey::parse_frame(&frame[..]).map(|p| (p.key, p.fingerprint));
                assert_eq!(ip_key(&packet), want, "{len} bytes");
                assert_eq!(want.is_some(), len >= head.len() - 8, "{len} bytes");
            }
        }
        assert_eq!(ip_key(&[0x30; 40]), None);
    }

    #[test]
    fn odd_headers_give_no_walk() {
        assert!(headers_key(&[], None).is_none());
        assert!(headers_key(&[0x20; 3], None).is_none());
        assert!(headers_key(&[0x45, 0, 0], None).is_none());
        let (ip, udp) = ipv4_udp(1, [1, 2, 3, 4], [5, 6, 7, 8]);
        let (_, fp_a) = headers_key(&ip, Some(&udp)).expect("key");
        let (ip2, _) = ipv4_udp(2, [1, 2, 3, 4], [5, 6, 7, 8]);
        let (_, fp_b) = headers_key(&ip2, Some(&udp)).expect("key");
        assert_ne!(fp_a, fp_b, "the IP ID is in the fingerprint");
    }
}
