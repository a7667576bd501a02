//! The nf_tables batch messages that build the marking table: sets a4, a6 and p, and the
//! base chains whose rules only do `meta nftrace set 1` (they change no verdict).

use super::expr::Expr;
use super::rules::{
    chains, set_of, Match, Rule, INLINE_MAX, NFT_META_NFTRACE, NFT_REG_1, SET_A4, SET_A6, SET_P,
};
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

    /// `MATCH @SET [limit rate N/second burst N packets] meta nftrace set 1` appended to
    /// `chain`. (A rule cannot skip packets already marked: the kernel does not load `meta
    /// nftrace`, EOPNOTSUPP; so each rule has its own budget.)
    pub fn rule(&mut self, table: &str, chain: &str, m: Match) {
        self.marking(table, chain, m.exprs());
    }

    /// The same with the match's key compared with `key` instead of looked up.
    pub fn rule_equal(&mut self, table: &str, chain: &str, m: Match, key: &[u8]) {
        self.marking(table, chain, m.exprs_equal(key));
    }

    fn marking(&mut self, table: &str, chain: &str, mut exprs: Vec<Expr<'_>>) {
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

    /// Removes every rule of a chain (DELRULE without a handle, as `nft flush chain`).
    pub fn flush_chain(&mut self, table: &str, chain: &str) {
        self.begin(NFT_MSG_DELRULE, 0, format!("flushing chain {chain}"));
        self.msg.attr_str(NFTA_RULE_TABLE, table);
        self.msg.attr_str(NFTA_RULE_CHAIN, chain);
        self.msg.end_msg();
    }

    /// The marking table without its rules: table, sets and chains (`targets` adds the rules).
    pub fn ruleset(&mut self, table: &str) {
        self.table(table);
        for s in [SET_A4, SET_A6, SET_P] {
            self.set(table, s);
        }
        for c in chains() {
            self.chain(table, c.name, c.hook);
        }
    }

    /// Fills the three sets with the targets and writes the chains' rules for them, after
    /// emptying both if `flush`. A match whose set holds at most `INLINE_MAX` keys is a rule
    /// a key comparing it (none for an empty set); a larger one is one rule looking it up.
    pub fn targets(&mut self, table: &str, t: &Targets, flush: bool) {
        let keys = t.keys();
        for (set, k) in &keys {
            if flush {
                self.flush_set(table, set);
            }
            self.elements(table, set, k);
        }
        for c in chains() {
            if flush {
                self.flush_chain(table, c.name);
            }
            for r in c.rules {
                match r {
                    Rule::Mark(m) => {
                        let set = set_of(m).0;
                        let k = keys.iter().find(|(s, _)| *s == set).map(|(_, k)| k);
                        match k {
                            Some(k) if k.len() <= INLINE_MAX => {
                                for key in k {
                                    self.rule_equal(table, c.name, m, key);
                                }
                            }
                            _ => self.rule(table, c.name, m),
                        }
                    }
                    Rule::V6(target) => self.goto_v6(table, c.name, target),
                }
            }
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
    /// Each set's name and keys, as the set holds them.
    fn keys(&self) -> [(&'static str, Vec<Vec<u8>>); 3] {
        [
            (
                SET_A4.0,
                self.v4.iter().map(|a| a.octets().to_vec()).collect(),
            ),
            (
                SET_A6.0,
                self.v6.iter().map(|a| a.octets().to_vec()).collect(),
            ),
            (
                SET_P.0,
                self.ports
                    .iter()
                    .map(|&(pr, po)| port_key(pr, po))
                    .collect(),
            ),
        ]
    }

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
mod tests;
