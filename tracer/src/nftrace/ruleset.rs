//! The nf_tables batch messages that build the marking table: sets a4, a6 and p, and the
//! base chains whose rules only do `meta nftrace set 1` (they change no verdict).

use super::expr::Expr;
use super::rules::{chains, Match, Rule, NFT_META_NFTRACE, NFT_REG_1, SET_A4, SET_A6, SET_P};
use super::wire::*;
use std::net::{Ipv4Addr, Ipv6Addr};

// Attribute numbers, from linux/netfilter/nf_tables.h.
const NFTA_TABLE_NAME: u16 = 1;
const NFTA_TABLE_FLAGS: u16 = 2;
pub const NFT_TABLE_F_OWNER: u32 = 2;
const NFTA_CHAIN_TABLE: u16 = 1;
const NFTA_CHAIN_NAME: u16 = 3;
const NFTA_CHAIN_HOOK: u16 = 4;
const NFTA_CHAIN_POLICY: u16 = 5;
const NFTA_CHAIN_TYPE: u16 = 7;
const NFTA_HOOK_HOOKNUM: u16 = 1;
const NFTA_HOOK_PRIORITY: u16 = 2;
const NFTA_RULE_TABLE: u16 = 1;
const NFTA_RULE_CHAIN: u16 = 2;
const NFTA_RULE_EXPRESSIONS: u16 = 4;
const NFTA_SET_TABLE: u16 = 1;
const NFTA_SET_NAME: u16 = 2;
const NFTA_SET_FLAGS: u16 = 3;
const NFTA_SET_KEY_TYPE: u16 = 4;
const NFTA_SET_KEY_LEN: u16 = 5;
const NFTA_SET_ID: u16 = 10;
const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;
const NFTA_SET_ELEM_LIST_SET: u16 = 2;
const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
const NFTA_SET_ELEM_KEY: u16 = 1;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_DATA_VALUE: u16 = 1;
const NF_ACCEPT: u32 = 1;

/// Elements per NEWSETELEM message, to keep each message well below a page.
const ELEMS_PER_MSG: usize = 64;

/// What the NEWTABLE message of a batch does (see `Batch::pending`).
pub const CREATE_TABLE: &str = "creating it";

/// A batch of nf_tables messages, each asking for an ack.
pub struct Batch {
    pub msg: MsgBuf,
    seq: u32,
    /// Packets marked per second at most by each rule (0: no limit).
    pub limit: u32,
    /// The sequence number of each message that needs an ack, and what it does.
    pub pending: Vec<(u32, String)>,
}

impl Batch {
    pub fn new(first_seq: u32) -> Batch {
        let mut msg = MsgBuf::default();
        msg.begin_msg(
            NFNL_MSG_BATCH_BEGIN,
            NLM_F_REQUEST,
            first_seq,
            0,
            NFNL_SUBSYS_NFTABLES,
        );
        msg.end_msg();
        Batch {
            msg,
            seq: first_seq.wrapping_add(1),
            limit: 0,
            pending: Vec::new(),
        }
    }

    fn begin(&mut self, ty: u16, flags: u16, what: String) {
        let seq = self.seq;
        self.seq = self.seq.wrapping_add(1);
        self.msg.begin_msg(
            nft_type(ty),
            NLM_F_REQUEST | NLM_F_ACK | flags,
            seq,
            NFPROTO_INET,
            0,
        );
        self.pending.push((seq, what));
    }

    /// Closes the batch; returns the bytes and the next free sequence number.
    pub fn finish(mut self) -> (Vec<u8>, Vec<(u32, String)>, u32) {
        let seq = self.seq;
        self.msg.begin_msg(
            NFNL_MSG_BATCH_END,
            NLM_F_REQUEST,
            seq,
            0,
            NFNL_SUBSYS_NFTABLES,
        );
        self.msg.end_msg();
        (self.msg.buf, self.pending, seq.wrapping_add(1))
    }

    /// `add table inet NAME { flags owner; }`, failing if it exists.
    pub fn table(&mut self, table: &str) {
        self.begin(
            NFT_MSG_NEWTABLE,
            NLM_F_CREATE | NLM_F_EXCL,
            CREATE_TABLE.into(),
        );
        self.msg.attr_str(NFTA_TABLE_NAME, table);
        self.msg.attr_be32(NFTA_TABLE_FLAGS, NFT_TABLE_F_OWNER);
        self.msg.end_msg();
    }

    pub fn set(&mut self, table: &str, (name, key_type, key_len, id): (&str, u32, u32, u32)) {
        self.begin(
            NFT_MSG_NEWSET,
            NLM_F_CREATE | NLM_F_EXCL,
            format!("creating set {name}"),
        );
        self.msg.attr_str(NFTA_SET_TABLE, table);
        self.msg.attr_str(NFTA_SET_NAME, name);
        self.msg.attr_be32(NFTA_SET_FLAGS, 0);
        self.msg.attr_be32(NFTA_SET_KEY_TYPE, key_type);
        self.msg.attr_be32(NFTA_SET_KEY_LEN, key_len);
        self.msg.attr_be32(NFTA_SET_ID, id);
        self.msg.end_msg();
    }

    /// A base chain `type filter hook HOOK priority PRIO; policy accept;` or, without a hook,
    /// a regular chain.
    pub fn chain(&mut self, table: &str, name: &str, hook: Option<(u32, i32)>) {
        self.begin(
            NFT_MSG_NEWCHAIN,
            NLM_F_CREATE | NLM_F_EXCL,
            format!("creating chain {name}"),
        );
        self.msg.attr_str(NFTA_CHAIN_TABLE, table);
        self.msg.attr_str(NFTA_CHAIN_NAME, name);
        if let Some((hook, prio)) = hook {
            self.msg.nest_start(NFTA_CHAIN_HOOK);
            self.msg.attr_be32(NFTA_HOOK_HOOKNUM, hook);
            self.msg.attr_be32(NFTA_HOOK_PRIORITY, prio as u32);
            self.msg.nest_end();
            self.msg.attr_be32(NFTA_CHAIN_POLICY, NF_ACCEPT);
            self.msg.attr_str(NFTA_CHAIN_TYPE, "filter");
        }
        self.msg.end_msg();
    }

    /// `meta nfproto ipv6 goto TARGET` appended to `chain`.
    pub fn goto_v6(&mut self, table: &str, chain: &str, target: &str) {
        self.rule_with(table, chain, super::rules::goto_v6(target));
    }

    /// A rule of these expressions appended to `chain`.
    fn rule_with<'e>(
        &mut self,
        table: &str,
        chain: &str,
        exprs: impl IntoIterator<Item = Expr<'e>>,
    ) {
        self.begin(
            NFT_MSG_NEWRULE,
            NLM_F_CREATE | NLM_F_APPEND,
            format!("adding a rule to chain {chain}"),
        );
        self.msg.attr_str(NFTA_RULE_TABLE, table);
        self.msg.attr_str(NFTA_RULE_CHAIN, chain);
        self.msg.nest_start(NFTA_RULE_EXPRESSIONS);
        for e in exprs {
            e.put(&mut self.msg);
        }
        self.msg.nest_end();
        self.msg.end_msg();
    }

    /// `MATCH [limit rate N/second burst N packets] meta nftrace set 1` appended to `chain`.
    /// (A rule cannot skip packets already marked: the kernel does not load `meta nftrace`,
    /// EOPNOTSUPP; so each rule has its own budget.)
    pub fn rule(&mut self, table: &str, chain: &str, m: Match) {
        let mut exprs = m.exprs();
        if self.limit > 0 {
            exprs.push(Expr::Limit {
                rate: u64::from(self.limit),
                burst: self.limit,
            });
        }
        exprs.extend([
            Expr::Immediate {
                dreg: NFT_REG_1,
                data: &[1],
            },
            Expr::MetaSet {
                key: NFT_META_NFTRACE,
                sreg: NFT_REG_1,
            },
            // Marked: the chain's other rules have nothing left to do for this packet (an
            // accept ends only this chain; every other table's chains still run).
            Expr::Accept,
        ]);
        self.rule_with(table, chain, exprs);
    }

    /// Removes every element of a set (DELSETELEM without an element list).
    pub fn flush_set(&mut self, table: &str, set: &str) {
        self.begin(NFT_MSG_DELSETELEM, 0, format!("flushing set {set}"));
        self.msg.attr_str(NFTA_SET_ELEM_LIST_TABLE, table);
        self.msg.attr_str(NFTA_SET_ELEM_LIST_SET, set);
        self.msg.end_msg();
    }

    /// Adds `keys` to a set, in as many messages as needed.
    pub fn elements(&mut self, table: &str, set: &str, keys: &[Vec<u8>]) {
        for chunk in keys.chunks(ELEMS_PER_MSG) {
            self.begin(
                NFT_MSG_NEWSETELEM,
                NLM_F_CREATE,
                format!("adding elements to set {set}"),
            );
            self.msg.attr_str(NFTA_SET_ELEM_LIST_TABLE, table);
            self.msg.attr_str(NFTA_SET_ELEM_LIST_SET, set);
            self.msg.nest_start(NFTA_SET_ELEM_LIST_ELEMENTS);
            for key in chunk {
                self.msg.nest_start(NFTA_LIST_ELEM);
                self.msg.nest_start(NFTA_SET_ELEM_KEY);
                self.msg.attr(NFTA_DATA_VALUE, key);
                self.msg.nest_end();
                self.msg.nest_end();
            }
            self.msg.nest_end();
            self.msg.end_msg();
        }
    }

    /// The whole marking table: table, sets, chains and rules.
    pub fn ruleset(&mut self, table: &str) {
        self.table(table);
        for s in [SET_A4, SET_A6, SET_P] {
            self.set(table, s);
        }
        for c in chains() {
            self.chain(table, c.name, c.hook);
            for r in c.rules {
                match r {
                    Rule::Mark(m) => self.rule(table, c.name, m),
                    Rule::V6(target) => self.goto_v6(table, c.name, target),
                }
            }
        }
    }

    /// Flushes the three sets and fills them with the targets.
    pub fn targets(&mut self, table: &str, t: &Targets, flush: bool) {
        let v4: Vec<Vec<u8>> = t.v4.iter().map(|a| a.octets().to_vec()).collect();
        let v6: Vec<Vec<u8>> = t.v6.iter().map(|a| a.octets().to_vec()).collect();
        let p: Vec<Vec<u8>> = t.ports.iter().map(|&(pr, po)| port_key(pr, po)).collect();
        for (set, keys) in [(SET_A4.0, v4), (SET_A6.0, v6), (SET_P.0, p)] {
            if flush {
                self.flush_set(table, set);
            }
            self.elements(table, set, &keys);
        }
    }
}

/// The key of `p`: proto and port, each padded to 4 bytes (a concatenation's registers).
pub fn port_key(proto: u8, port: u16) -> Vec<u8> {
    let [hi, lo] = port.to_be_bytes();
    vec![proto, 0, 0, 0, hi, lo, 0, 0]
}

/// The contents of the sets, sorted and without duplicates.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Targets {
    pub v4: Vec<Ipv4Addr>,
    pub v6: Vec<Ipv6Addr>,
    pub ports: Vec<(u8, u16)>,
}

impl Targets {
    pub fn new(v4: &[Ipv4Addr], v6: &[Ipv6Addr], ports: &[(u8, u16)]) -> Targets {
        let mut t = Targets {
            v4: v4.to_vec(),
            v6: v6.to_vec(),
            ports: ports.to_vec(),
        };
        t.v4.sort_unstable();
        t.v4.dedup();
        t.v6.sort_unstable();
        t.v6.dedup();
        t.ports.sort_unstable();
        t.ports.dedup();
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (message type, top-level attributes) of every message of a finished batch.
    type Decoded = Vec<(u16, Vec<(u16, Vec<u8>)>)>;

    fn decode(bytes: &[u8]) -> Decoded {
        messages(bytes)
            .map(|m| {
                let attrs = attrs(&m.payload[NFGENMSG_LEN..])
                    .map(|(t, v)| (t, v.to_vec()))
                    .collect();
                (m.ty, attrs)
            })
            .collect()
    }

    /// The expression names of a NEWRULE's NFTA_RULE_EXPRESSIONS.
    fn expr_names(rule_attrs: &[(u16, Vec<u8>)]) -> Vec<String> {
        let (_, list) = rule_attrs
            .iter()
            .find(|(t, _)| *t == NFTA_RULE_EXPRESSIONS)
            .unwrap();
        attrs(list)
            .map(|(_, elem)| string(attrs(elem).next().unwrap().1))
            .collect()
    }

    #[test]
    fn ruleset_batch_has_every_object_once() {
        let mut b = Batch::new(100);
        b.ruleset("flowtrace_1");
        let (bytes, pending, next) = b.finish();
        let msgs = decode(&bytes);
        let count = |ty: u16| msgs.iter().filter(|(t, _)| *t == nft_type(ty)).count();
        assert_eq!(msgs.first().unwrap().0, NFNL_MSG_BATCH_BEGIN);
        assert_eq!(msgs.last().unwrap().0, NFNL_MSG_BATCH_END);
        assert_eq!(count(NFT_MSG_NEWTABLE), 1);
        assert_eq!(count(NFT_MSG_NEWSET), 3);
        // pre, prenat, out and their IPv6 chains.
        assert_eq!(count(NFT_MSG_NEWCHAIN), 6);
        // pre6 2, pre 3 + goto, prenat6 2, prenat 2 + goto, out6 4, out 4 + goto.
        assert_eq!(count(NFT_MSG_NEWRULE), 2 + 4 + 2 + 3 + 4 + 5);
        assert_eq!(pending.len(), msgs.len() - 2);
        assert_eq!(next, 100 + msgs.len() as u32);
        // Every message asks for an ack and has its own sequence number.
        let mut seqs: Vec<u32> = messages(&bytes).map(|m| m.seq).collect();
        seqs.dedup();
        assert_eq!(seqs.len(), msgs.len());
    }

    #[test]
    fn rules_are_the_expressions_nft_generates() {
        let mut b = Batch::new(1);
        b.rule(
            "t",
            "pre",
            Match::Addr {
                v6: false,
                dst: true,
            },
        );
        b.rule("t", "pre", Match::Ports);
        b.rule(
            "t",
            "prenat",
            Match::Ct {
                v6: true,
                reply: true,
                dst: false,
            },
        );
        let (bytes, _, _) = b.finish();
        let msgs = decode(&bytes);
        let names: Vec<Vec<String>> = msgs[1..4].iter().map(|(_, a)| expr_names(a)).collect();
        let tail = ["immediate", "meta", "immediate"];
        let head: [&str; 0] = [];
        assert_eq!(
            names[0],
            [&head[..], &["meta", "cmp", "payload", "lookup"][..], &tail].concat()
        );
        assert_eq!(
            names[1],
            [&head[..], &["meta", "payload", "lookup"][..], &tail].concat()
        );
        // Gated: `ct direction original ct status dnat` before the lookup.
        let gate = ["ct", "cmp", "ct", "bitwise", "cmp"];
        assert_eq!(
            names[2],
            [&head[..], &gate, &["ct", "lookup"][..], &tail].concat()
        );
        // With a limit, it comes last before the mark.
        let mut b = Batch::new(1);
        b.limit = 1000;
        b.rule("t", "pre", Match::Ports);
        let (bytes, _, _) = b.finish();
        let names = expr_names(&decode(&bytes)[1].1);
        assert_eq!(
            names,
            [
                &head[..],
                &["meta", "payload", "lookup", "limit"][..],
                &tail
            ]
            .concat()
        );
    }

    /// Every goto names a chain created before it, which has no hook; every base chain ends
    /// with the goto to its IPv6 chain, and IPv6 rules are only there.
    #[test]
    fn ipv6_rules_sit_behind_one_goto() {
        let all = chains();
        let mut created: Vec<&str> = Vec::new();
        for c in &all {
            for r in &c.rules {
                match r {
                    Rule::V6(target) => {
                        assert!(created.contains(target), "{target} before {}", c.name);
                        let t = all.iter().find(|x| x.name == *target).unwrap();
                        assert_eq!(t.hook, None);
                        assert_eq!(c.rules.last(), Some(r), "the goto comes last");
                    }
                    Rule::Mark(Match::Addr { v6, .. } | Match::Ct { v6, .. }) => {
                        assert_eq!(*v6, c.hook.is_none(), "{}: {r:?}", c.name)
                    }
                    Rule::Mark(Match::Ports) => assert!(c.hook.is_some()),
                }
            }
            created.push(c.name);
            if c.hook.is_some() {
                assert!(matches!(c.rules.last(), Some(Rule::V6(_))), "{}", c.name);
            }
        }
        // The goto as nft would encode it; a regular chain has no hook, policy or type.
        let mut b = Batch::new(1);
        b.chain("t", "pre6", None);
        b.goto_v6("t", "pre", "pre6");
        let (bytes, _, _) = b.finish();
        let msgs = decode(&bytes);
        let chain: Vec<u16> = msgs[1].1.iter().map(|(t, _)| *t).collect();
        assert_eq!(chain, [NFTA_CHAIN_TABLE, NFTA_CHAIN_NAME]);
        assert_eq!(expr_names(&msgs[2].1), ["meta", "cmp", "immediate"]);
    }

    #[test]
    fn targets_flush_then_fill_in_chunks() {
        let v4: Vec<Ipv4Addr> = (0..100u8).map(|i| Ipv4Addr::new(198, 51, 100, i)).collect();
        let mut dup = v4.clone();
        dup.extend(&v4);
        let t = Targets::new(&dup, &[], &[(17, 5353), (6, 80), (17, 5353)]);
        assert_eq!(t.v4.len(), 100);
        assert_eq!(t.ports, vec![(6, 80), (17, 5353)]);
        let mut b = Batch::new(1);
        b.targets("t", &t, true);
        let (bytes, _, _) = b.finish();
        let types: Vec<u16> = decode(&bytes).iter().map(|(t, _)| *t).collect();
        let (del, add) = (nft_type(NFT_MSG_DELSETELEM), nft_type(NFT_MSG_NEWSETELEM));
        // a4: flush + 2 chunks; a6: flush only; p: flush + 1.
        let want = [
            NFNL_MSG_BATCH_BEGIN,
            del,
            add,
            add,
            del,
            del,
            add,
            NFNL_MSG_BATCH_END,
        ];
        assert_eq!(types, want);
        // A flush names the set and lists no elements.
        let msgs = decode(&bytes);
        let flush: Vec<u16> = msgs[1].1.iter().map(|(t, _)| *t).collect();
        assert_eq!(flush, [NFTA_SET_ELEM_LIST_TABLE, NFTA_SET_ELEM_LIST_SET]);
    }

    #[test]
    fn port_keys_pad_each_field_to_four_bytes() {
        assert_eq!(port_key(17, 5353), [17, 0, 0, 0, 0x14, 0xe9, 0, 0]);
        assert_eq!(SET_P.1, 781);
    }
}
