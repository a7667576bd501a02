//! nf_tables expressions (enum nft_{meta,cmp,payload,ct,lookup,immediate,limit}_attributes of
//! linux/netfilter/nf_tables.h), encoded as a rule's NFTA_RULE_EXPRESSIONS list elements.

use super::wire::MsgBuf;

const NFTA_LIST_ELEM: u16 = 1;
const NFTA_EXPR_NAME: u16 = 1;
const NFTA_EXPR_DATA: u16 = 2;
const NFTA_DATA_VALUE: u16 = 1;
const NFTA_DATA_VERDICT: u16 = 2;
/// Verdict codes: netfilter's NF_ACCEPT, and `enum nft_verdicts`' NFT_GOTO.
const NF_ACCEPT: i32 = 1;
const NFT_GOTO: i32 = -4;

/// One nf_tables expression, as the kernel takes it.
#[derive(Debug, Clone, Copy)]
pub enum Expr<'a> {
    MetaLoad {
        key: u32,
        dreg: u32,
    },
    MetaSet {
        key: u32,
        sreg: u32,
    },
    Cmp {
        sreg: u32,
        data: &'a [u8],
    },
    /// `!=` where `Cmp` is `==`.
    CmpNe {
        sreg: u32,
        data: &'a [u8],
    },
    /// `dreg = (sreg & mask) ^ xor`, over `mask.len()` bytes.
    Bitwise {
        sreg: u32,
        dreg: u32,
        mask: &'a [u8],
        xor: &'a [u8],
    },
    Payload {
        base: u32,
        offset: u32,
        len: u32,
        dreg: u32,
    },
    /// A conntrack key; `dir` only for the keys of one direction's tuple (the kernel refuses
    /// it with the others, such as the direction or the status).
    Ct {
        key: u32,
        dir: Option<u8>,
        dreg: u32,
    },
    Lookup {
        set: &'a str,
        set_id: u32,
        sreg: u32,
    },
    Immediate {
        dreg: u32,
        data: &'a [u8],
    },
    /// The verdict `accept` (an immediate into the verdict register).
    Accept,
    /// The verdict `goto CHAIN`.
    Goto {
        chain: &'a str,
    },
    /// `limit rate RATE/second burst BURST packets`.
    Limit {
        rate: u64,
        burst: u32,
    },
}

impl Expr<'_> {
    /// Appends the expression as one element of a rule's expression list.
    pub fn put(&self, m: &mut MsgBuf) {
        m.nest_start(NFTA_LIST_ELEM);
        m.attr_str(NFTA_EXPR_NAME, self.name());
        m.nest_start(NFTA_EXPR_DATA);
        self.data(m);
        m.nest_end();
        m.nest_end();
    }

    /// The expression's kernel name.
    fn name(&self) -> &'static str {
        match self {
            Expr::MetaLoad { .. } | Expr::MetaSet { .. } => "meta",
            Expr::Cmp { .. } | Expr::CmpNe { .. } => "cmp",
            Expr::Bitwise { .. } => "bitwise",
            Expr::Payload { .. } => "payload",
            Expr::Ct { .. } => "ct",
            Expr::Lookup { .. } => "lookup",
            Expr::Immediate { .. } | Expr::Accept | Expr::Goto { .. } => "immediate",
            Expr::Limit { .. } => "limit",
        }
    }

    /// The expression's attributes (NFTA_EXPR_DATA's contents).
    fn data(&self, m: &mut MsgBuf) {
        match *self {
            Expr::MetaLoad { key, dreg } => {
                m.attr_be32(1, dreg); // NFTA_META_DREG
                m.attr_be32(2, key); // NFTA_META_KEY
            }
            Expr::MetaSet { key, sreg } => {
                m.attr_be32(2, key); // NFTA_META_KEY
                m.attr_be32(3, sreg); // NFTA_META_SREG
            }
            Expr::Cmp { sreg, data } | Expr::CmpNe { sreg, data } => {
                let op = u32::from(matches!(self, Expr::CmpNe { .. }));
                m.attr_be32(1, sreg); // NFTA_CMP_SREG
                m.attr_be32(2, op); // NFTA_CMP_OP: NFT_CMP_EQ (0) or NFT_CMP_NEQ (1)
                m.nest_start(3); // NFTA_CMP_DATA
                m.attr(NFTA_DATA_VALUE, data);
                m.nest_end();
            }
            Expr::Bitwise {
                sreg,
                dreg,
                mask,
                xor,
            } => {
                m.attr_be32(1, sreg); // NFTA_BITWISE_SREG
                m.attr_be32(2, dreg); // NFTA_BITWISE_DREG
                m.attr_be32(3, mask.len() as u32); // NFTA_BITWISE_LEN
                m.nest_start(4); // NFTA_BITWISE_MASK
                m.attr(NFTA_DATA_VALUE, mask);
                m.nest_end();
                m.nest_start(5); // NFTA_BITWISE_XOR
                m.attr(NFTA_DATA_VALUE, xor);
                m.nest_end();
            }
            Expr::Payload {
                base,
                offset,
                len,
                dreg,
            } => {
                m.attr_be32(1, dreg); // NFTA_PAYLOAD_DREG
                m.attr_be32(2, base); // NFTA_PAYLOAD_BASE
                m.attr_be32(3, offset); // NFTA_PAYLOAD_OFFSET
                m.attr_be32(4, len); // NFTA_PAYLOAD_LEN
            }
            Expr::Ct { key, dir, dreg } => {
                m.attr_be32(1, dreg); // NFTA_CT_DREG
                m.attr_be32(2, key); // NFTA_CT_KEY
                if let Some(dir) = dir {
                    m.attr(3, &[dir]); // NFTA_CT_DIRECTION (u8)
                }
            }
            Expr::Lookup { set, set_id, sreg } => {
                m.attr_str(1, set); // NFTA_LOOKUP_SET
                m.attr_be32(2, sreg); // NFTA_LOOKUP_SREG
                m.attr_be32(4, set_id); // NFTA_LOOKUP_SET_ID
            }
            Expr::Immediate { dreg, data } => {
                m.attr_be32(1, dreg); // NFTA_IMMEDIATE_DREG
                m.nest_start(2); // NFTA_IMMEDIATE_DATA
                m.attr(NFTA_DATA_VALUE, data);
                m.nest_end();
            }
            Expr::Accept => verdict(m, NF_ACCEPT, None),
            Expr::Goto { chain } => verdict(m, NFT_GOTO, Some(chain)),
            Expr::Limit { rate, burst } => {
                m.attr(1, &rate.to_be_bytes()); // NFTA_LIMIT_RATE (be64)
                m.attr(2, &1u64.to_be_bytes()); // NFTA_LIMIT_UNIT: per second
                m.attr_be32(3, burst); // NFTA_LIMIT_BURST
                m.attr_be32(4, 0); // NFTA_LIMIT_TYPE: NFT_LIMIT_PKTS
                m.attr_be32(5, 0); // NFTA_LIMIT_FLAGS
            }
        }
    }
}

/// An immediate into the verdict register: `code` (enum nft_verdicts), and the chain a jump
/// or goto names.
fn verdict(m: &mut MsgBuf, code: i32, chain: Option<&str>) {
    m.attr_be32(1, 0); // NFTA_IMMEDIATE_DREG: NFT_REG_VERDICT
    m.nest_start(2); // NFTA_IMMEDIATE_DATA
    m.nest_start(NFTA_DATA_VERDICT);
    m.attr_be32(1, code as u32); // NFTA_VERDICT_CODE
    if let Some(chain) = chain {
        m.attr_str(2, chain); // NFTA_VERDICT_CHAIN
    }
    m.nest_end();
    m.nest_end();
}
