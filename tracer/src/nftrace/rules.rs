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
const NFT_CT_DIRECTION: u32 = 1;
const NFT_CT_STATUS: u32 = 2;
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

fn addr_rules(v6: bool) -> Vec<Rule> {
    [false, true]
        .into_iter()
        .map(|dst| Rule::Mark(Match::Addr { v6, dst }))
        .collect()
}

/// Only the connections NAT hides a target in: `ct original saddr` (the target's connections
/// out, MASQUERADE'd: their replies come back to the host's address) and `ct reply saddr`
/// (connections DNAT'd to a target: the packets in, before DNAT, are to the host's address).
/// A connection's other packets carry a target's address themselves, and the address rules
/// mark them; `ct … daddr` would only mark them again, at the cost of two lookups each. Each
/// lookup is gated on the direction and the NAT that hides the target (`Match::exprs`).
fn ct_rules(v6: bool) -> Vec<Rule> {
    [false, true]
        .into_iter()
        .map(|reply| {
            Rule::Mark(Match::Ct {
                v6,
                reply,
                dst: false,
            })
        })
        .collect()
}

/// A rule of the marking table: a match that marks, or, last in a base chain, IPv6 packets
/// sent on to the chain that holds the IPv6 rules (`meta nfproto ipv6 goto CHAIN`). An IPv4
/// packet, nearly every packet of a Docker host, then costs that one rule instead of one per
/// IPv6 rule: measured under a neighbour's UDP flood, the table cost 0.88 of the neighbour's
/// rate with the IPv6 rules inline and 0.93 with them behind the goto and the ct lookups gated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    Mark(Match),
    V6(&'static str),
}

/// A chain of the marking table: a base chain at (hook, priority), or (`hook: None`) a regular
/// chain reached by a goto, created before the chain that names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chain {
    pub name: &'static str,
    pub hook: Option<(u32, i32)>,
    pub rules: Vec<Rule>,
}

/// The chains, in the order they are created. Every packet the host receives or forwards
/// passes PREROUTING, and the mark stays with it through the later hooks: `pre` (before raw)
/// marks what carries a target's address or is to a published port, `prenat` (once conntrack
/// and DNAT have run) what belongs to a connection NAT maps to a target. The host's own packets
/// start at OUTPUT: `out`. Each of these rules runs for every packet the host handles, the
/// neighbours' too, so there are as few as the scope needs (no FORWARD chain: nothing reaches
/// it unmarked that a rule there would mark).
pub fn chains() -> Vec<Chain> {
    let with = |mut rules: Vec<Rule>, more: &[Rule]| {
        rules.extend_from_slice(more);
        rules
    };
    let base = |name, hook, prio, rules| Chain {
        name,
        hook: Some((hook, prio)),
        rules,
    };
    let regular = |name, rules| Chain {
        name,
        hook: None,
        rules,
    };
    vec![
        regular("pre6", addr_rules(true)),
        base(
            "pre",
            NF_INET_PRE_ROUTING,
            -350,
            with(
                addr_rules(false),
                &[Rule::Mark(Match::Ports), Rule::V6("pre6")],
            ),
        ),
        regular("prenat6", ct_rules(true)),
        base(
            "prenat",
            NF_INET_PRE_ROUTING,
            -99,
            with(ct_rules(false), &[Rule::V6("prenat6")]),
        ),
        regular("out6", with(addr_rules(true), &ct_rules(true))),
        base(
            "out",
            NF_INET_LOCAL_OUT,
            -350,
            with(
                with(addr_rules(false), &ct_rules(false)),
                &[Rule::V6("out6")],
            ),
        ),
    ]
}

/// `ct status` bits (enum ip_conntrack_status), in the kernel's byte order like the register.
const IPS_SRC_NAT: [u8; 4] = (1u32 << 4).to_ne_bytes();
const IPS_DST_NAT: [u8; 4] = (1u32 << 5).to_ne_bytes();
const ZERO32: [u8; 4] = [0; 4];
/// `ct direction` values (enum ip_conntrack_dir).
const DIR_ORIGINAL: [u8; 1] = [0];
const DIR_REPLY: [u8; 1] = [1];

/// What makes a `ct original|reply saddr` lookup worth doing: `ct direction reply ct status
/// snat` for `ct original saddr` (a reply to a target's NAT'd connection), `ct direction
/// original ct status dnat` for `ct reply saddr` (a packet to a target, DNAT'd to it). In the
/// other direction, or without that NAT, the packet carries the target's address itself, and
/// the address rules, which run at the same or an earlier point, have marked it. So a
/// neighbour's packets out skip both lookups.
fn ct_gate(reply: bool) -> [Expr<'static>; 5] {
    let (dir, nat) = if reply {
        (&DIR_ORIGINAL, &IPS_DST_NAT)
    } else {
        (&DIR_REPLY, &IPS_SRC_NAT)
    };
    [
        Expr::Ct {
            key: NFT_CT_DIRECTION,
            dir: None,
            dreg: NFT_REG_1,
        },
        Expr::Cmp {
            sreg: NFT_REG_1,
            data: dir,
        },
        Expr::Ct {
            key: NFT_CT_STATUS,
            dir: None,
            dreg: NFT_REG_1,
        },
        Expr::Bitwise {
            sreg: NFT_REG_1,
            dreg: NFT_REG_1,
            mask: nat,
            xor: &ZERO32,
        },
        Expr::CmpNe {
            sreg: NFT_REG_1,
            data: &ZERO32,
        },
    ]
}

/// `meta nfproto ipv6 goto CHAIN`.
pub fn goto_v6(chain: &str) -> [Expr<'_>; 3] {
    [
        Expr::MetaLoad {
            key: NFT_META_NFPROTO,
            dreg: NFT_REG_1,
        },
        Expr::Cmp {
            sreg: NFT_REG_1,
            data: &[NFPROTO_IPV6],
        },
        Expr::Goto { chain },
    ]
}

/// Scopes of at most this many keys (addresses of a family, or published ports) are written
/// into the rules as comparisons, one rule a key, instead of a lookup in the set: a neighbour's
/// packet misses every rule, and a set lookup cost it about 2% of its rate where a comparison
/// cost nothing measurable (README, "the marking table costs a neighbour").
pub const INLINE_MAX: usize = 4;

/// The set a match looks its key up in.
pub fn set_of(m: Match) -> (&'static str, u32, u32, u32) {
    match m {
        Match::Addr { v6: false, .. } | Match::Ct { v6: false, .. } => SET_A4,
        Match::Addr { v6: true, .. } | Match::Ct { v6: true, .. } => SET_A6,
        Match::Ports => SET_P,
    }
}

impl Match {
    /// The match, its key looked up in its set.
    pub fn exprs(self) -> Vec<Expr<'static>> {
        let (set, _, _, set_id) = set_of(self);
        self.then(Expr::Lookup {
            set,
            set_id,
            sreg: NFT_REG_1,
        })
    }

    /// The match, its key compared with `key` (one of the set's keys, as the set holds it).
    pub fn exprs_equal(self, key: &[u8]) -> Vec<Expr<'_>> {
        self.then(Expr::Cmp {
            sreg: NFT_REG_1,
            data: key,
        })
    }

    /// The expressions that load the key into NFT_REG_1, then `test`.
    fn then(self, test: Expr<'_>) -> Vec<Expr<'_>> {
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
                    test,
                ]
            }
            Match::Ct { v6, reply, dst } => {
                let key = if v6 { NFT_CT_SRC_IP6 } else { NFT_CT_SRC_IP } + dst as u32;
                let mut v = if dst {
                    Vec::new()
                } else {
                    ct_gate(reply).to_vec()
                };
                v.push(Expr::Ct {
                    key,
                    dir: Some(reply as u8),
                    dreg: NFT_REG_1,
                });
                v.push(test);
                v
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
                test,
            ],
        }
    }
}
