//! A packet's JSON line, written by hand: the bytes serde_json writes for `LineRef::Packet`
//! (a test holds them equal), without running every key and every one of flowtrace's own
//! names through serde_json's escaping. A shown packet has some 85 strings, most of them
//! keys and names that never need escaping; this was the largest single cost of `--json`.
//! A drop, which is rare, still goes through serde.

use std::{borrow::Cow, io};

use crate::{Hop, Nat, NfHop, Packet, Shared, TcHop, Text};

/// Appends `b`. Most of what a line writes is short and of a length known only at run time (a
/// name, an address, a number): up to 32 bytes it is copied as two overlapping words of half
/// its size or more, a fixed-size copy the compiler makes a pair of moves, not a call to
/// `memcpy` (perf, bench-user: those calls were a twentieth of `--json`'s time per packet).
/// Always `Ok`: the writers keep `io::Result` for serde_json's fallback.
#[inline(always)]
fn put(w: &mut Vec<u8>, b: &[u8]) -> io::Result<()> {
    /// Appends `b`, `M ≤ b.len() ≤ 2M`: its first and its last `M` bytes, overlapping.
    #[inline(always)]
    fn halves<const M: usize>(w: &mut Vec<u8>, b: &[u8]) {
        let n = b.len();
        debug_assert!((M..=2 * M).contains(&n));
        w.reserve(2 * M);
        // SAFETY: `reserve` made room for 2M ≥ n more bytes past the length; both copies are
        // of M bytes from within `b` (M ≤ n) to within those n, and then all n are written.
        unsafe {
            let dst = w.as_mut_ptr().add(w.len());
            std::ptr::copy_nonoverlapping(b.as_ptr(), dst, M);
            std::ptr::copy_nonoverlapping(b.as_ptr().add(n - M), dst.add(n - M), M);
            w.set_len(w.len() + n);
        }
    }
    match b.len() {
        0 => {}
        1 => w.push(b[0]),
        2..=3 => halves::<2>(w, b),
        4..=7 => halves::<4>(w, b),
        8..=15 => halves::<8>(w, b),
        16..=32 => halves::<16>(w, b),
        _ => w.extend_from_slice(b),
    }
    Ok(())
}

/// `"s"` for a string known to need no escaping.
#[inline(always)]
fn quoted(w: &mut Vec<u8>, s: &str) -> io::Result<()> {
    put(w, b"\"")?;
    put(w, s.as_bytes())?;
    put(w, b"\"")
}

/// `"s"`, escaped as serde_json escapes (only `"`, `\` and C0 controls need it).
fn string(w: &mut Vec<u8>, s: &str) -> io::Result<()> {
    if plain(s.as_bytes()) {
        quoted(w, s)
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
fn text(w: &mut Vec<u8>, t: &Text) -> io::Result<()> {
    match t {
        Cow::Borrowed(s) => {
            debug_assert!(plain(s.as_bytes()), "{s:?} needs escaping");
            quoted(w, s)
        }
        Cow::Owned(s) => string(w, s),
    }
}

fn opt_text(w: &mut Vec<u8>, t: &Option<Text>) -> io::Result<()> {
    match t {
        Some(t) => text(w, t),
        None => put(w, b"null"),
    }
}

fn opt<S: AsRef<str>>(w: &mut Vec<u8>, s: &Option<S>) -> io::Result<()> {
    match s {
        Some(s) => string(w, s.as_ref()),
        None => put(w, b"null"),
    }
}

/// `,"src":…,"dst":…`, as both kinds of hop have them.
fn src_dst(w: &mut Vec<u8>, src: &Option<Shared>, dst: &Option<Shared>) -> io::Result<()> {
    put(w, b",\"src\":")?;
    opt(w, src)?;
    put(w, b",\"dst\":")?;
    opt(w, dst)
}

/// `,"nat":{…}` where a rewrite showed, nothing otherwise.
fn nat(w: &mut Vec<u8>, nat: Option<&Nat>) -> io::Result<()> {
    match nat {
        Some(nat) => {
            put(w, b",\"nat\":{\"kind\":")?;
            text(w, &nat.kind)?;
            put(w, b",\"from\":")?;
            string(w, &nat.from)?;
            put(w, b",\"to\":")?;
            string(w, &nat.to)?;
            put(w, b"}")
        }
        None => Ok(()),
    }
}

fn num(w: &mut Vec<u8>, n: impl itoa::Integer) -> io::Result<()> {
    put(w, itoa::Buffer::new().format(n).as_bytes())
}

fn serde(w: &mut Vec<u8>, v: &impl serde::Serialize) -> io::Result<()> {
    serde_json::to_writer(&mut *w, v).map_err(io::Error::from)
}

/// `LineRef::Packet(p)` as serde_json writes it.
pub(crate) fn packet(w: &mut Vec<u8>, p: &Packet) -> io::Result<()> {
    object(w, p, true)
}

/// The packet without its hops: `Packet`'s fields in its order but `hops`, as serde_json
/// writes them (`head.rs`'s test holds it to serde's bytes).
pub(crate) fn head(w: &mut Vec<u8>, p: &Packet) -> io::Result<()> {
    object(w, p, false)
}

/// The packet's fields and its drop; a whole packet line (`line`) is tagged and has its hops.
fn object(w: &mut Vec<u8>, p: &Packet, line: bool) -> io::Result<()> {
    put(w, if line { b"{\"type\":\"packet\"," } else { b"{" })?;
    head_fields(w, p)?;
    if line {
        put(w, b",\"hops\":")?;
        list(w, &p.hops, hop)?;
    }
    put(w, b",\"drop\":")?;
    serde(w, &p.drop)?;
    put(w, b"}")
}

/// `[a,b,…]`, each item written by `each`.
fn list<T>(
    w: &mut Vec<u8>,
    items: &[T],
    each: impl Fn(&mut Vec<u8>, &T) -> io::Result<()>,
) -> io::Result<()> {
    put(w, b"[")?;
    for (i, x) in items.iter().enumerate() {
        if i > 0 {
            put(w, b",")?;
        }
        each(w, x)?;
    }
    put(w, b"]")
}

/// A hop as serde_json writes `Hop` (tagged by `point`).
pub(crate) fn hop(w: &mut Vec<u8>, h: &Hop) -> io::Result<()> {
    match h {
        Hop::Tc(t) => tc(w, t),
        Hop::Nf(n) => nf(w, n),
    }
}

/// `"v":…` to `"skb":…`: the fields a packet's line and its head share, before the hops.
fn head_fields(w: &mut Vec<u8>, p: &Packet) -> io::Result<()> {
    put(w, b"\"v\":")?;
    num(w, p.v)?;
    put(w, b",\"time\":")?;
    string(w, &p.time)?;
    put(w, b",\"container\":")?;
    opt(w, &p.container)?;
    put(w, b",\"way\":")?;
    opt_text(w, &p.way)?;
    put(w, b",\"proto\":")?;
    opt_text(w, &p.proto)?;
    src_dst(w, &p.src, &p.dst)?;
    put(w, b",\"len\":")?;
    num(w, p.len)?;
    put(w, b",\"tcp_flags\":")?;
    opt(w, &p.tcp_flags)?;
    put(w, b",\"summary\":")?;
    opt(w, &p.summary)?;
    put(w, b",\"skb\":")?;
    string(w, &p.skb)
}

fn tc(w: &mut Vec<u8>, t: &TcHop) -> io::Result<()> {
    put(w, b"{\"point\":\"tc\",\"at_ns\":")?;
    num(w, t.at_ns)?;
    put(w, b",\"iface\":")?;
    string(w, &t.iface)?;
    put(w, b",\"role\":")?;
    opt_text(w, &t.role)?;
    put(w, b",\"dir\":")?;
    text(w, &t.dir)?;
    src_dst(w, &t.src, &t.dst)?;
    put(w, b",\"len\":")?;
    num(w, t.len)?;
    nat(w, t.nat.as_deref())?;
    put(w, b"}")
}

fn nf(w: &mut Vec<u8>, n: &NfHop) -> io::Result<()> {
    put(w, b"{\"point\":\"netfilter\",\"at_ns\":")?;
    num(w, n.at_ns)?;
    put(w, b",\"hook\":")?;
    text(w, &n.hook)?;
    put(w, b",\"table\":")?;
    text(w, &n.table)?;
    put(w, b",\"verdict\":")?;
    text(w, &n.verdict)?;
    src_dst(w, &n.src, &n.dst)?;
    nat(w, n.nat.as_deref())?;
    put(w, b",\"rule\":")?;
    opt(w, &n.rule)?;
    if let Some(policy) = &n.policy {
        put(w, b",\"policy\":")?;
        text(w, policy)?;
    }
    if !n.chain_path.is_empty() {
        put(w, b",\"chain_path\":")?;
        list(w, &n.chain_path, |w, c| string(w, c))?;
    }
    if let Some(source) = &n.rule_source {
        put(w, b",\"rule_source\":")?;
        text(w, source)?;
    }
    put(w, b"}")
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::{Drop, LineRef};

    /// `put` appends what `extend_from_slice` does, at every length around its cases' limits,
    /// after a line already written and with no room to spare (each copy must fit).
    #[test]
    fn put_appends_every_length() {
        let src: Vec<u8> = (1..=70).collect();
        for before in [0, 1, 7, 31] {
            for n in 0..=src.len() {
                let mut w = vec![0xaa; before];
                w.shrink_to_fit();
                let mut want = w.clone();
                put(&mut w, &src[..n]).unwrap();
                want.extend_from_slice(&src[..n]);
                assert_eq!(w, want, "{n} bytes after {before}");
            }
        }
    }

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
