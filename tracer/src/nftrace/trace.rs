//! Parsing of nftables trace events (NFT_MSG_TRACE, multicast group NFNLGRP_NFTRACE).
//! The bytes come from the kernel but are treated as untrusted: every length is checked,
//! nothing panics, and a malformed message is skipped.

use super::wire::*;

// enum nft_trace_attributes (linux/netfilter/nf_tables.h)
const NFTA_TRACE_TABLE: u16 = 1;
const NFTA_TRACE_CHAIN: u16 = 2;
const NFTA_TRACE_RULE_HANDLE: u16 = 3;
const NFTA_TRACE_TYPE: u16 = 4;
const NFTA_TRACE_VERDICT: u16 = 5;
const NFTA_TRACE_ID: u16 = 6;
const NFTA_TRACE_NETWORK_HEADER: u16 = 8;
const NFTA_TRACE_TRANSPORT_HEADER: u16 = 9;
const NFTA_TRACE_IIF: u16 = 10;
const NFTA_TRACE_OIF: u16 = 12;
const NFTA_TRACE_MARK: u16 = 14;
const NFTA_TRACE_NFPROTO: u16 = 15;
const NFTA_TRACE_POLICY: u16 = 16;
// enum nft_verdict_attributes
const NFTA_VERDICT_CODE: u16 = 1;
const NFTA_VERDICT_CHAIN: u16 = 2;

/// enum nft_trace_types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TraceKind {
    /// The chain's policy decided (NFT_TRACETYPE_POLICY).
    Policy,
    /// The packet left a non-base chain at its end (NFT_TRACETYPE_RETURN).
    Return,
    /// A rule matched (NFT_TRACETYPE_RULE).
    Rule,
    Other(u32),
}

impl TraceKind {
    fn from_u32(v: u32) -> TraceKind {
        match v {
            1 => TraceKind::Policy,
            2 => TraceKind::Return,
            3 => TraceKind::Rule,
            o => TraceKind::Other(o),
        }
    }
}

/// One trace event: a packet with nftrace set went through a rule or a chain's end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceEvent {
    /// NFTA_TRACE_ID: the same for every event of one packet in one pass.
    pub id: u32,
    /// NFTA_TRACE_NFPROTO if present, else the nfgenmsg family (NFPROTO_IPV4 2, IPV6 10, INET 1…).
    /// It is the packet's protocol: 2 for an IPv4 packet even in an `inet` table.
    pub nfproto: u8,
    /// The family of the table (the nfgenmsg family: 1 inet, 2 ip, 10 ip6, 7 bridge…),
    /// needed to tell `ip filter` from `inet filter`.
    pub family: u8,
    pub table: String,
    pub chain: String,
    pub kind: TraceKind,
    /// NFTA_TRACE_RULE_HANDLE.
    pub handle: Option<u64>,
    /// NF_DROP 0, NF_ACCEPT 1, NFT_CONTINUE -1, NFT_BREAK -2, NFT_JUMP -3, NFT_GOTO -4, NFT_RETURN -5.
    pub verdict: Option<i32>,
    /// The chain of a jump or goto.
    pub jump_to: Option<String>,
    /// NFTA_TRACE_POLICY: the policy that decided the packet's fate.
    pub policy: Option<u32>,
    pub network_header: Option<Vec<u8>>,
    pub transport_header: Option<Vec<u8>>,
    pub iif: Option<u32>,
    pub oif: Option<u32>,
    pub mark: Option<u32>,
}

impl Default for TraceEvent {
    fn default() -> Self {
        Self {
            id: 0,
            nfproto: 0,
            family: 0,
            table: String::new(),
            chain: String::new(),
            kind: TraceKind::Other(0),
            handle: None,
            verdict: None,
            jump_to: None,
            policy: None,
            network_header: None,
            transport_header: None,
            iif: None,
            oif: None,
            mark: None,
        }
    }
}

/// The trace events in a buffer of one or more netlink messages. Messages that are not
/// nf_tables trace events, and malformed ones, are skipped.
pub fn parse(msg: &[u8]) -> Vec<TraceEvent> {
    messages(msg)
        .filter(|m| m.ty == nft_type(NFT_MSG_TRACE))
        .filter_map(|m| parse_one(m.payload))
        .collect()
}

/// One NFT_MSG_TRACE payload: nfgenmsg then attributes.
fn parse_one(payload: &[u8]) -> Option<TraceEvent> {
    let family = *payload.first()?;
    let body = payload.get(NFGENMSG_LEN..)?;
    let mut id = None;
    let mut kind = None;
    let mut nfproto = None;
    let mut ev = TraceEvent {
        id: 0,
        nfproto: family,
        family,
        ..TraceEvent::default()
    };
    let (mut table, mut chain) = (None, None);
    for (ty, v) in attrs(body) {
        match ty {
            NFTA_TRACE_TABLE => table = Some(string(v)),
            NFTA_TRACE_CHAIN => chain = Some(string(v)),
            NFTA_TRACE_RULE_HANDLE => ev.handle = Some(be64(v)?),
            NFTA_TRACE_TYPE => kind = Some(TraceKind::from_u32(be32(v)?)),
            NFTA_TRACE_VERDICT => parse_verdict(v, &mut ev)?,
            NFTA_TRACE_ID => id = Some(be32(v)?),
            NFTA_TRACE_NETWORK_HEADER => ev.network_header = Some(v.to_vec()),
            NFTA_TRACE_TRANSPORT_HEADER => ev.transport_header = Some(v.to_vec()),
            NFTA_TRACE_IIF => ev.iif = Some(be32(v)?),
            NFTA_TRACE_OIF => ev.oif = Some(be32(v)?),
            NFTA_TRACE_MARK => ev.mark = Some(be32(v)?),
            NFTA_TRACE_NFPROTO => nfproto = Some(be32(v)?),
            NFTA_TRACE_POLICY => ev.policy = Some(be32(v)?),
            _ => {} // LL header, interface types, padding, conntrack info, newer attributes
        }
    }
    ev.id = id?;
    ev.kind = kind?;
    ev.table = table?;
    ev.chain = chain?;
    if let Some(p) = nfproto {
        ev.nfproto = u8::try_from(p).ok()?;
    }
    Some(ev)
}

/// NFTA_TRACE_VERDICT: nested NFTA_VERDICT_CODE (be32) and NFTA_VERDICT_CHAIN.
fn parse_verdict(nest: &[u8], ev: &mut TraceEvent) -> Option<()> {
    for (ty, v) in attrs(nest) {
        match ty {
            NFTA_VERDICT_CODE => ev.verdict = Some(be32(v)? as i32),
            NFTA_VERDICT_CHAIN => ev.jump_to = Some(string(v)),
            _ => {}
        }
    }
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A trace message as the kernel builds it.
    fn trace_msg(seq: u32, family: u8, f: impl FnOnce(&mut MsgBuf)) -> Vec<u8> {
        let mut m = MsgBuf::default();
        m.begin_msg(nft_type(NFT_MSG_TRACE), 0, seq, family, 0);
        f(&mut m);
        m.end_msg();
        m.buf
    }

    fn rule_drop(m: &mut MsgBuf) {
        m.attr_be32(NFTA_TRACE_NFPROTO, 2);
        m.attr_be32(NFTA_TRACE_TYPE, 3);
        m.attr_be32(NFTA_TRACE_ID, 0xdead_beef);
        m.attr_str(NFTA_TRACE_CHAIN, "INPUT");
        m.attr_str(NFTA_TRACE_TABLE, "filter");
        m.attr(17, &[]); // NFTA_TRACE_PAD
        m.attr(NFTA_TRACE_RULE_HANDLE, &4u64.to_be_bytes());
        m.nest_start(NFTA_TRACE_VERDICT);
        m.attr_be32(NFTA_VERDICT_CODE, 0);
        m.nest_end();
        m.attr(NFTA_TRACE_NETWORK_HEADER, &[0x45, 0, 0, 28]);
        m.attr(NFTA_TRACE_TRANSPORT_HEADER, &[0x30, 0x39, 0x14, 0xe9]);
        m.attr_be32(NFTA_TRACE_IIF, 7);
        m.attr(NFTA_TRACE_IIFTYPE_FOR_TEST, &1u16.to_be_bytes());
        m.attr_be32(NFTA_TRACE_MARK, 0x10);
    }
    const NFTA_TRACE_IIFTYPE_FOR_TEST: u16 = 11;

    #[test]
    fn parses_a_rule_event() {
        let evs = parse(&trace_msg(0, 2, rule_drop));
        assert_eq!(
            evs,
            vec![TraceEvent {
                id: 0xdead_beef,
                nfproto: 2,
                family: 2,
                table: "filter".into(),
                chain: "INPUT".into(),
                kind: TraceKind::Rule,
                handle: Some(4),
                verdict: Some(0),
                jump_to: None,
                policy: None,
                network_header: Some(vec![0x45, 0, 0, 28]),
                transport_header: Some(vec![0x30, 0x39, 0x14, 0xe9]),
                iif: Some(7),
                oif: None,
                mark: Some(0x10),
            }]
        );
    }

    #[test]
    fn parses_jump_policy_and_family_fallback() {
        let mut buf = trace_msg(1, 10, |m| {
            m.attr_be32(NFTA_TRACE_TYPE, 3);
            m.attr_be32(NFTA_TRACE_ID, 1);
            m.attr_str(NFTA_TRACE_CHAIN, "FORWARD");
            m.attr_str(NFTA_TRACE_TABLE, "filter");
            m.nest_start(NFTA_TRACE_VERDICT);
            m.attr_be32(NFTA_VERDICT_CODE, (-3i32) as u32);
            m.attr_str(NFTA_VERDICT_CHAIN, "DOCKER-USER");
            m.nest_end();
        });
        buf.extend(trace_msg(2, 1, |m| {
            m.attr_be32(NFTA_TRACE_TYPE, 1);
            m.attr_be32(NFTA_TRACE_ID, 1);
            m.attr_str(NFTA_TRACE_CHAIN, "FORWARD");
            m.attr_str(NFTA_TRACE_TABLE, "filter");
            m.attr_be32(NFTA_TRACE_POLICY, 0);
            m.attr_be32(NFTA_TRACE_OIF, 3);
        }));
        let evs = parse(&buf);
        assert_eq!(evs.len(), 2);
        assert_eq!((evs[0].nfproto, evs[0].family), (10, 10));
        assert_eq!(evs[0].verdict, Some(-3));
        assert_eq!(evs[0].jump_to.as_deref(), Some("DOCKER-USER"));
        assert_eq!(evs[1].kind, TraceKind::Policy);
        assert_eq!((evs[1].nfproto, evs[1].family), (1, 1));
        assert_eq!((evs[1].policy, evs[1].oif), (Some(0), Some(3)));
    }

    #[test]
    fn skips_other_messages_and_malformed_ones() {
        let good = trace_msg(3, 2, rule_drop);
        let mut buf = Vec::new();
        // An NLMSG_ERROR and an NFT_MSG_NEWTABLE event before it.
        for ty in [NLMSG_ERROR, nft_type(NFT_MSG_NEWTABLE)] {
            let mut m = MsgBuf::default();
            m.begin_msg(ty, 0, 0, 1, 0);
            m.attr_str(1, "x");
            m.end_msg();
            buf.extend(m.buf);
        }
        // A trace without an id, and one whose handle is 3 bytes long.
        buf.extend(trace_msg(4, 2, |m| {
            m.attr_be32(NFTA_TRACE_TYPE, 3);
            m.attr_str(NFTA_TRACE_CHAIN, "c");
            m.attr_str(NFTA_TRACE_TABLE, "t");
        }));
        buf.extend(trace_msg(5, 2, |m| {
            rule_drop(m);
            m.attr(NFTA_TRACE_RULE_HANDLE, &[1, 2, 3]);
        }));
        buf.extend(&good);
        assert_eq!(parse(&buf).len(), 1);
    }

    #[test]
    fn truncated_and_garbage_input_never_panics() {
        let good = trace_msg(3, 2, rule_drop);
        for n in 0..good.len() {
            let evs = parse(&good[..n]);
            assert!(evs.is_empty(), "prefix of {n} bytes gave events");
        }
        // Lie about the message length, then about an attribute length.
        let mut bad = good.clone();
        bad[0..4].copy_from_slice(&1000u32.to_ne_bytes());
        assert!(parse(&bad).is_empty());
        let mut bad = good.clone();
        bad[20..22].copy_from_slice(&0xfff0u16.to_ne_bytes());
        let _ = parse(&bad);
        // Pseudo-random bytes, and every single-byte corruption of a good message.
        let mut x: u32 = 0x1234_5678;
        let noise: Vec<u8> = (0..4096)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x as u8
            })
            .collect();
        let _ = parse(&noise);
        for i in 0..good.len() {
            for b in [0u8, 0x01, 0x7f, 0xff] {
                let mut c = good.clone();
                c[i] = b;
                let _ = parse(&c);
            }
        }
    }
}
