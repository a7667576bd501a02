//! A packet's JSON line, written by hand: the bytes serde_json writes for `LineRef::Packet`
//! (a test holds them equal), without running every key and every one of flowtrace's own
//! names through serde_json's escaping. A shown packet has some 85 strings, most of them
//! keys and names that never need escaping; this was the largest single cost of `--json`.
//! A drop, which is rare, still goes through serde.

use std::{
    borrow::Cow,
    io::{self, Write},
};

use crate::{Hop, Nat, NfHop, Packet, Shared, TcHop, Text};

/// `"s"`, escaped as serde_json escapes (only `"`, `\` and C0 controls need it).
fn string<W: Write>(w: &mut W, s: &str) -> io::Result<()> {
    if plain(s.as_bytes()) {
        w.write_all(b"\"")?;
        w.write_all(s.as_bytes())?;
        w.write_all(b"\"")
    } else {
        serde_json::to_writer(&mut *w, s).map_err(io::Error::from)
    }
}

/// Does `s` need no escaping (no byte below 0x20, no `"`, no `\`)? Tested eight bytes at a
/// time (`word`): the byte-by-byte test was a tenth of `--json`'s time per packet (perf,
/// bench-user).
#[inline(always)]
fn plain(s: &[u8]) -> bool {
    use crate::word::{any_word, below_bits, is_bits};
    // One test of the three at once: no branch per word.
    let escaped = |v: u64| below_bits(v, 0x20) | is_bits(v, b'"') | is_bits(v, b'\\') != 0;
    !any_word(s, b' ', escaped)
}

/// A text of flowtrace's own vocabulary (`Text::Borrowed`: a literal or a table in this
/// program, never text read from elsewhere, which deserialises as `Owned`) needs no escaping,
/// so it skips the test; a copied one is tested as any string. Half of a packet's strings are
/// the vocabulary's (a hop's direction, hook, table, verdict).
fn text<W: Write>(w: &mut W, t: &Text) -> io::Result<()> {
    match t {
        Cow::Borrowed(s) => {
            debug_assert!(plain(s.as_bytes()), "{s:?} needs escaping");
            w.write_all(b"\"")?;
            w.write_all(s.as_bytes())?;
            w.write_all(b"\"")
        }
        Cow::Owned(s) => string(w, s),
    }
}

fn opt_text<W: Write>(w: &mut W, t: &Option<Text>) -> io::Result<()> {
    match t {
        Some(t) => text(w, t),
        None => w.write_all(b"null"),
    }
}

fn opt<W: Write, S: AsRef<str>>(w: &mut W, s: &Option<S>) -> io::Result<()> {
    match s {
        Some(s) => string(w, s.as_ref()),
        None => w.write_all(b"null"),
    }
}

/// `,"src":…,"dst":…`, as both kinds of hop have them.
fn src_dst<W: Write>(w: &mut W, src: &Option<Shared>, dst: &Option<Shared>) -> io::Result<()> {
    w.write_all(b",\"src\":")?;
    opt(w, src)?;
    w.write_all(b",\"dst\":")?;
    opt(w, dst)
}

/// `,"nat":{…}` where a rewrite showed, nothing otherwise.
fn nat<W: Write>(w: &mut W, nat: Option<&Nat>) -> io::Result<()> {
    match nat {
        Some(nat) => {
            w.write_all(b",\"nat\":{\"kind\":")?;
            text(w, &nat.kind)?;
            w.write_all(b",\"from\":")?;
            string(w, &nat.from)?;
            w.write_all(b",\"to\":")?;
            string(w, &nat.to)?;
            w.write_all(b"}")
        }
        None => Ok(()),
    }
}

fn num<W: Write>(w: &mut W, n: impl itoa::Integer) -> io::Result<()> {
    w.write_all(itoa::Buffer::new().format(n).as_bytes())
}

fn serde<W: Write>(w: &mut W, v: &impl serde::Serialize) -> io::Result<()> {
    serde_json::to_writer(&mut *w, v).map_err(io::Error::from)
}

/// `LineRef::Packet(p)` as serde_json writes it.
pub(crate) fn packet<W: Write>(w: &mut W, p: &Packet) -> io::Result<()> {
    object(w, p, true)
}

/// The packet without its hops: `Packet`'s fields in its order but `hops`, as serde_json
/// writes them (`head.rs`'s test holds it to serde's bytes).
pub(crate) fn head<W: Write>(w: &mut W, p: &Packet) -> io::Result<()> {
    object(w, p, false)
}

/// The packet's fields and its drop; a whole packet line (`line`) is tagged and has its hops.
fn object<W: Write>(w: &mut W, p: &Packet, line: bool) -> io::Result<()> {
    w.write_all(if line { b"{\"type\":\"packet\"," } else { b"{" })?;
    head_fields(w, p)?;
    if line {
        w.write_all(b",\"hops\":")?;
        list(w, &p.hops, hop)?;
    }
    w.write_all(b",\"drop\":")?;
    serde(w, &p.drop)?;
    w.write_all(b"}")
}

/// `[a,b,…]`, each item written by `each`.
fn list<W: Write, T>(
    w: &mut W,
    items: &[T],
    each: impl Fn(&mut W, &T) -> io::Result<()>,
) -> io::Result<()> {
    w.write_all(b"[")?;
    for (i, x) in items.iter().enumerate() {
        if i > 0 {
            w.write_all(b",")?;
        }
        each(w, x)?;
    }
    w.write_all(b"]")
}

/// A hop as serde_json writes `Hop` (tagged by `point`).
pub(crate) fn hop<W: Write>(w: &mut W, h: &Hop) -> io::Result<()> {
    match h {
        Hop::Tc(t) => tc(w, t),
        Hop::Nf(n) => nf(w, n),
    }
}

/// `"v":…` to `"skb":…`: the fields a packet's line and its head share, before the hops.
fn head_fields<W: Write>(w: &mut W, p: &Packet) -> io::Result<()> {
    w.write_all(b"\"v\":")?;
    num(w, p.v)?;
    w.write_all(b",\"time\":")?;
    string(w, &p.time)?;
    w.write_all(b",\"container\":")?;
    opt(w, &p.container)?;
    w.write_all(b",\"way\":")?;
    opt_text(w, &p.way)?;
    w.write_all(b",\"proto\":")?;
    opt_text(w, &p.proto)?;
    src_dst(w, &p.src, &p.dst)?;
    w.write_all(b",\"len\":")?;
    num(w, p.len)?;
    w.write_all(b",\"tcp_flags\":")?;
    opt(w, &p.tcp_flags)?;
    w.write_all(b",\"summary\":")?;
    opt(w, &p.summary)?;
    w.write_all(b",\"skb\":")?;
    string(w, &p.skb)
}

fn tc<W: Write>(w: &mut W, t: &TcHop) -> io::Result<()> {
    w.write_all(b"{\"point\":\"tc\",\"at_ns\":")?;
    num(w, t.at_ns)?;
    w.write_all(b",\"iface\":")?;
    string(w, &t.iface)?;
    w.write_all(b",\"role\":")?;
    opt_text(w, &t.role)?;
    w.write_all(b",\"dir\":")?;
    text(w, &t.dir)?;
    src_dst(w, &t.src, &t.dst)?;
    w.write_all(b",\"len\":")?;
    num(w, t.len)?;
    nat(w, t.nat.as_deref())?;
    w.write_all(b"}")
}

fn nf<W: Write>(w: &mut W, n: &NfHop) -> io::Result<()> {
    w.write_all(b"{\"point\":\"netfilter\",\"at_ns\":")?;
    num(w, n.at_ns)?;
    w.write_all(b",\"hook\":")?;
    text(w, &n.hook)?;
    w.write_all(b",\"table\":")?;
    text(w, &n.table)?;
    w.write_all(b",\"verdict\":")?;
    text(w, &n.verdict)?;
    src_dst(w, &n.src, &n.dst)?;
    nat(w, n.nat.as_deref())?;
    w.write_all(b",\"rule\":")?;
    opt(w, &n.rule)?;
    if let Some(policy) = &n.policy {
        w.write_all(b",\"policy\":")?;
        text(w, policy)?;
    }
    if !n.chain_path.is_empty() {
        w.write_all(b",\"chain_path\":")?;
        list(w, &n.chain_path, |w, c| string(w, c))?;
    }
    if let Some(source) = &n.rule_source {
        w.write_all(b",\"rule_source\":")?;
        text(w, source)?;
    }
    w.write_all(b"}")
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::{Drop, LineRef};

    /// The word-wide test says what the byte-wise one says: every byte value at every place
    /// of a word and of the tail, among plain bytes (and the values next to the limits).
    #[test]
    fn the_word_test_is_the_byte_test() {
        let byte_test = |s: &[u8]| s.iter().all(|&b| b >= 0x20 && b != b'"' && b != b'\\');
        for len in [1, 2, 5, 7, 8, 9, 12, 15, 16, 19] {
            for at in 0..len {
                for b in 0..=255u8 {
                    for fill in [b'a', 0x20, 0x21, 0x7f, 0x80, 0xff, b'"' + 1, b'\\' - 1] {
                        let mut s = vec![fill; len];
                        s[at] = b;
                        assert_eq!(plain(&s), byte_test(&s), "{s:?}");
                    }
                }
            }
        }
        assert!(plain(b""));
    }

    fn serde_line(p: &Packet) -> String {
        serde_json::to_string(&LineRef::Packet(p)).unwrap()
    }

    fn hand(p: &Packet) -> String {
        let mut v = Vec::new();
        packet(&mut v, p).unwrap();
        String::from_utf8(v).unwrap()
    }

    fn tc_hop(nat: bool, odd: &str) -> Hop {
        Hop::Tc(TcHop {
            at_ns: 0,
            iface: format!("veth{odd}").into(),
            role: nat.then(|| "bridge".into()),
            dir: "ingress".into(),
            src: Some("172.18.0.2:40000".into()),
            dst: (!nat).then(|| format!("198.51.100.2:{odd}").into()),
            len: 60,
            nat: nat.then(|| {
                Box::new(Nat {
                    kind: "snat".into(),
                    from: "172.18.0.2:1".into(),
                    to: format!("10.0.0.1:{odd}").into(),
                })
            }),
        })
    }

    fn nf_hop(full: bool, odd: &str) -> Hop {
        Hop::Nf(NfHop {
            at_ns: u64::MAX,
            hook: "FORWARD".into(),
            table: odd.to_owned().into(),
            verdict: "accept".into(),
            src: None,
            dst: Some(odd.into()),
            nat: full.then(|| {
                Box::new(Nat {
                    kind: "dnat".into(),
                    from: odd.into(),
                    to: "b".into(),
                })
            }),
            rule: full.then(|| format!("-A DOCKER-USER -m comment --comment \"{odd}\" -j DROP")),
            policy: full.then(|| "drop".into()),
            chain_path: if full {
                vec!["FORWARD".into(), odd.into()]
            } else {
                Vec::new()
            },
            rule_source: full.then(|| "nftrace".into()),
        })
    }

    /// Packets with every optional field present and absent, and strings that need escaping
    /// (quotes, backslashes, controls, DEL, non-ASCII).
    pub(crate) fn odd_packets() -> Vec<Packet> {
        let odd = [
            "plain",
            "q\"uote",
            "back\\slash",
            "nl\n\ttab\u{1}",
            "del\u{7f}",
            "µ→ü",
            "",
        ];
        let mut all = Vec::new();
        for (i, o) in odd.iter().enumerate() {
            for full in [false, true] {
                all.push(Packet {
                    v: 1,
                    time: format!("2026-12-05T00:00:00.{i:06}Z"),
                    container: full.then(|| format!("c{o}").into()),
                    way: full.then(|| "out".into()),
                    proto: Some((*o).to_owned().into()),
                    src: None,
                    dst: full.then(|| (*o).into()),
                    len: u32::MAX,
                    tcp_flags: full.then(|| "S".into()),
                    summary: Some(format!("UDP {o}")),
                    skb: format!("0xffff{i}").into(),
                    hops: if full {
                        vec![
                            tc_hop(true, o),
                            nf_hop(true, o),
                            tc_hop(false, o),
                            nf_hop(false, o),
                        ]
                    } else {
                        Vec::new()
                    },
                    drop: full.then(|| Drop {
                        at_ns: 3,
                        reason: format!("NETFILTER_DROP{o}"),
                        location: None,
                        hook: Some("FORWARD".into()),
                        table: Some("filter".into()),
                        rule: Some((*o).into()),
                        rule_source: None,
                        rule_candidates: vec![(*o).into()],
                        last_hop: None,
                        place: None,
                        freed_by: None,
                    }),
                });
            }
        }
        all
    }

    /// The hand-written line is serde_json's bytes for every one of those packets.
    #[test]
    fn the_hand_written_line_is_serdes() {
        for p in odd_packets() {
            assert_eq!(hand(&p), serde_line(&p), "{p:?}");
        }
    }
}
