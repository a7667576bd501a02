//! What the marking table holds: its sets and base chains, and the match of each rule
//! (each then does `meta nftrace set 1`), as the nf_tables expressions nft generates.

use super::expr::Expr;
use super::wire::{NFPROTO_IPV4, NFPROTO_IPV6};

// Registers, meta and ct keys, payload bases (linux/netfilter/nf_tables.h).
pub const NFT_REG_1: u32 = 1;
const NFT_REG32_01: u32 = 9;
pub const NFT_META_NFTRACE: u32 = 12;
const NFT_META_NFPROTO: u32 = 15;
const NFT_META_L4PROTO: u32 = 16;
const NFT_CT_SRC_IP: u32 = 19;
const NFT_CT_SRC_IP6: u32 = 21;
const NFT_PAYLOAD_NETWORK_HEADER: u32 = 1;
const NFT_PAYLOAD_TRANSPORT_HEADER: u32 = 2;

/// Netfilter hooks (enum nf_inet_hooks).
const NF_INET_PRE_ROUTING: u32 = 0;
const NF_INET_LOCAL_OUT: u32 = 3;

/// Set names, key types (as nft numbers its datatypes), key lengths and set ids.
pub const SET_A4: (&str, u32, u32, u32) = ("a4", 7, 4, 1);
pub const SET_A6: (&str, u32, u32, u32) = ("a6", 8, 16, 2);
/// inet_proto (12) . inet_service (13), concatenated as nft does: (12 << 6) | 13.
pub const SET_P: (&str, u32, u32, u32) = ("p", (12 << 6) | 13, 8, 3);

/// What a rule matches before it sets nftrace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Match {
    /// `ip saddr @a4`, `ip daddr @a4`, `ip6 saddr @a6`, `ip6 daddr @a6`.
    Addr { v6: bool, dst: bool },
    /// `ct original|reply ip|ip6 saddr|daddr @a4|@a6`.
    Ct { v6: bool, reply: bool, dst: bool },
    /// `meta l4proto . th dport @p`.
    Ports,
}

fn addr_rules() -> Vec<Match> {
    let mut v = Vec::new();
    for v6 in [false, true] {
        for dst in [false, true] {
            v.push(Match::Addr { v6, dst });
        }
    }
    v
}

/// Only the connections NAT hides a target in: `ct original saddr` (the target's connections
/// out, MASQUERADE'd: their replies come back to the host's address) and `ct reply saddr`
/// (connections DNAT'd to a target: the packets in, before DNAT, are to the host's address).
/// A connection's other packets carry a target's address themselves, and the address rules
/// mark them; `ct … daddr` would only mark them again, at the cost of two lookups each.
fn ct_rules() -> Vec<Match> {
    let mut v = Vec::new();
    for v6 in [false, true] {
        for reply in [false, true] {
            v.push(Match::Ct {
                v6,
                reply,
                dst: false,
            });
        }
    }
    v
}

/// (name, hook, priority, rules) of the base chains. Every packet the host receives or
/// forwards passes PREROUTING, and the mark stays with it through the later hooks: `pre`
/// (before raw) marks what carries a target's address or is to a published port, `prenat`
/// (once conntrack and DNAT have run) what belongs to a connection NAT maps to a target. The
/// host's own packets start at OUTPUT: `out`. Each of these rules runs for every packet the
/// host handles, the neighbours' too, so there are as few as the scope needs (no FORWARD
/// chain: nothing reaches it unmarked that a rule there would mark).
pub fn chains() -> Vec<(&'static str, u32, i32, Vec<Match>)> {
    let mut pre = addr_rules();
    pre.push(Match::Ports);
    vec![
        ("pre", NF_INET_PRE_ROUTING, -350, pre),
        ("prenat", NF_INET_PRE_ROUTING, -99, ct_rules()),
        (
            "out",
            NF_INET_LOCAL_OUT,
            -350,
            [addr_rules(), ct_rules()].concat(),
        ),
    ]
}

impl Match {
    pub fn exprs(self) -> Vec<Expr<'static>> {
        let set = |v6: bool| if v6 { SET_A6 } else { SET_A4 };
        let lookup = |(name, _, _, id): (&'static str, u32, u32, u32)| Expr::Lookup {
            set: name,
            set_id: id,
            sreg: NFT_REG_1,
        };
        match self {
            Match::Addr { v6, dst } => {
                let (offset, len) = match (v6, dst) {
                    (false, false) => (12, 4),
                    (false, true) => (16, 4),
                    (true, false) => (8, 16),
                    (true, true) => (24, 16),
                };
                let proto: &'static [u8] = if v6 { &[NFPROTO_IPV6] } else { &[NFPROTO_IPV4] };
                vec![
                    Expr::MetaLoad {
                        key: NFT_META_NFPROTO,
                        dreg: NFT_REG_1,
                    },
                    Expr::Cmp {
                        sreg: NFT_REG_1,
                        data: proto,
                    },
                    Expr::Payload {
                        base: NFT_PAYLOAD_NETWORK_HEADER,
                        offset,
                        len,
                        dreg: NFT_REG_1,
                    },
                    lookup(set(v6)),
                ]
            }
            Match::Ct { v6, reply, dst } => {
                let key = if v6 { NFT_CT_SRC_IP6 } else { NFT_CT_SRC_IP } + dst as u32;
                vec![
                    Expr::Ct {
                        key,
                        dir: reply as u8,
                        dreg: NFT_REG_1,
                    },
                    lookup(set(v6)),
                ]
            }
            Match::Ports => vec![
                Expr::MetaLoad {
                    key: NFT_META_L4PROTO,
                    dreg: NFT_REG_1,
                },
                Expr::Payload {
                    base: NFT_PAYLOAD_TRANSPORT_HEADER,
                    offset: 2,
                    len: 2,
                    dreg: NFT_REG32_01,
                },
                lookup(SET_P),
            ],
        }
    }
}
