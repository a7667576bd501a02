//! The translation against libpcap itself: every expression of the corpus, compiled by
//! libpcap, translated, and run (by [`super::interp`]) on every frame of the corpus must give
//! `pcap_offline_filter`'s verdict.

#[cfg(test)]
use super::{interp, libpcap::Program, CompiledFilter, Plan, Source};

pub const EXPRESSIONS: &[&str] = &[
    "",
    "tcp port 8080",
    "tcp port 8080 and host 198.51.100.2",
    "host 172.18.0.2",
    "src host 172.18.0.2",
    "dst host 198.51.100.2",
    "net 172.18.0.0/16",
    "src net 10.0.0.0/8 or dst net 198.51.100.0/24",
    "port 53",
    "udp dst port 53",
    "src port 40000",
    "portrange 8000-8100",
    "tcp portrange 1-1024",
    "tcp",
    "udp",
    "icmp",
    "icmp6",
    "ip",
    "ip6",
    "arp",
    "ip proto 47",
    "ip6 and tcp",
    "ip6 host 2001:db8::1",
    "ip6 net 2001:db8::/32 and udp",
    "tcp[tcpflags] & tcp-syn != 0",
    "tcp[tcpflags] & (tcp-syn|tcp-ack) == tcp-syn",
    "tcp[tcpflags] & tcp-rst != 0",
    "icmp[icmptype] == icmp-echo",
    "vlan",
    "vlan 100",
    "vlan and udp",
    "vlan 100 and host 10.1.2.3",
    "not tcp",
    "not (icmp or arp)",
    "tcp or udp",
    "host 172.18.0.2 and not port 22",
    "(tcp and port 8080) or (udp and port 53)",
    "ip[2:2] > 100",
    "ip[6:2] & 0x1fff != 0",
    "ip[0] & 0xf != 5",
    "tcp[12] >> 4 > 5",
    "len > 200",
    "less 80",
    "greater 60",
    "ether host 02:42:ac:12:00:02",
    "ether broadcast",
    "ether proto 0x0806",
    "udp[8:2] == 0x1234",
    "ip[2:2] / ip[9] > 1",
    "ip[2:2] % 7 == 3",
    "ip[2:2] ^ 0xff > 0",
    "ip[0] << ip[9] != 0",
    "ip[2:2] >> ip[9] == 0",
    "ip[2:2] * 3 - 1 > 200",
    "-ip[8] & 0xff == 0xc0",
    "tcp[40] == 1",
    "ip multicast",
    "ip6 multicast",
];

fn eth(dst: [u8; 6], ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = dst.to_vec();
    f.extend_from_slice(&[0x02, 0x42, 0xac, 0x12, 0x00, 0x02]);
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

fn ipv4(proto: u8, src: [u8; 4], dst: [u8; 4], frag: u16, payload: &[u8]) -> Vec<u8> {
    let total = (20 + payload.len()) as u16;
    let mut p = vec![0x45, 0];
    p.extend_from_slice(&total.to_be_bytes());
    p.extend_from_slice(&[0x12, 0x34]);
    p.extend_from_slice(&frag.to_be_bytes());
    p.extend_from_slice(&[64, proto, 0, 0]);
    p.extend_from_slice(&src);
    p.extend_from_slice(&dst);
    p.extend_from_slice(payload);
    p
}

fn ipv6(next: u8, src: [u16; 8], dst: [u16; 8], payload: &[u8]) -> Vec<u8> {
    let mut p = vec![0x60, 0, 0, 0];
    p.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    p.extend_from_slice(&[next, 64]);
    for w in src.iter().chain(dst.iter()) {
        p.extend_from_slice(&w.to_be_bytes());
    }
    p.extend_from_slice(payload);
    p
}

fn tcp(sport: u16, dport: u16, flags: u8, options: usize) -> Vec<u8> {
    let mut p = sport.to_be_bytes().to_vec();
    p.extend_from_slice(&dport.to_be_bytes());
    p.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0]);
    p.push((((20 + options) / 4) as u8) << 4);
    p.extend_from_slice(&[flags, 0xff, 0xff, 0, 0, 0, 0]);
    p.extend(std::iter::repeat_n(1u8, options));
    p
}

fn udp(sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut p = sport.to_be_bytes().to_vec();
    p.extend_from_slice(&dport.to_be_bytes());
    p.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    p.extend_from_slice(&[0, 0]);
    p.extend_from_slice(payload);
    p
}

fn vlan(id: u16, inner: u16, payload: &[u8]) -> Vec<u8> {
    let mut p = id.to_be_bytes().to_vec();
    p.extend_from_slice(&inner.to_be_bytes());
    p.extend_from_slice(payload);
    p
}

const MAC: [u8; 6] = [0x02, 0x42, 0x0a, 0x00, 0x00, 0x01];
const BCAST: [u8; 6] = [0xff; 6];
const CONTAINER: [u8; 4] = [172, 18, 0, 2];
const INTERNET: [u8; 4] = [198, 51, 100, 2];
const UPLINK: [u8; 4] = [198, 51, 100, 1];
const V6A: [u16; 8] = [0x2001, 0xdb8, 0, 0, 0, 0, 0, 1];
const V6B: [u16; 8] = [0xfd00, 0, 0, 0, 0, 0, 0, 2];

/// Frames as tc sees them on a Docker host, and some that stress the corner cases.
/// IPv4 frames in Ethernet (TCP, UDP, ICMP, GRE, fragments), as a container sends and
/// receives them.
fn ip_frames(syn: &[u8]) -> Vec<(&'static str, Vec<u8>)> {
    [tcp_frames(syn), other_ipv4_frames()].concat()
}

/// TCP over IPv4: a SYN, its SYN-ACK, masqueraded, a RST, options.
fn tcp_frames(syn: &[u8]) -> Vec<(&'static str, Vec<u8>)> {
    vec![
        (
            "tcp syn to 8080",
            eth(MAC, 0x0800, &ipv4(6, CONTAINER, INTERNET, 0x4000, syn)),
        ),
        (
            "tcp syn-ack from 8080",
            eth(
                MAC,
                0x0800,
                &ipv4(6, INTERNET, CONTAINER, 0x4000, &tcp(8080, 40000, 0x12, 0)),
            ),
        ),
        (
            "masqueraded syn",
            eth(
                MAC,
                0x0800,
                &ipv4(6, UPLINK, INTERNET, 0x4000, &tcp(51000, 8080, 0x02, 12)),
            ),
        ),
        (
            "tcp rst port 22",
            eth(
                MAC,
                0x0800,
                &ipv4(6, CONTAINER, INTERNET, 0, &tcp(22, 1234, 0x14, 0)),
            ),
        ),
        (
            "tcp with 40 option bytes",
            eth(
                MAC,
                0x0800,
                &ipv4(6, CONTAINER, INTERNET, 0, &tcp(40000, 443, 0x18, 40)),
            ),
        ),
    ]
}

/// UDP, ICMP, GRE, a later fragment and multicast over IPv4.
fn other_ipv4_frames() -> Vec<(&'static str, Vec<u8>)> {
    let big = vec![0x5au8; 300];
    vec![
        (
            "udp dns",
            eth(
                MAC,
                0x0800,
                &ipv4(
                    17,
                    CONTAINER,
                    [10, 1, 2, 3],
                    0,
                    &udp(40000, 53, &[0x12, 0x34, 1, 0]),
                ),
            ),
        ),
        (
            "udp 300 bytes",
            eth(
                MAC,
                0x0800,
                &ipv4(17, INTERNET, CONTAINER, 0, &udp(5000, 8050, &big)),
            ),
        ),
        (
            "icmp echo",
            eth(
                MAC,
                0x0800,
                &ipv4(1, CONTAINER, INTERNET, 0, &[8, 0, 0, 0, 0, 1, 0, 1]),
            ),
        ),
        (
            "icmp echo reply",
            eth(
                MAC,
                0x0800,
                &ipv4(1, INTERNET, CONTAINER, 0, &[0, 0, 0, 0, 0, 1, 0, 1]),
            ),
        ),
        (
            "gre",
            eth(
                MAC,
                0x0800,
                &ipv4(47, [10, 0, 0, 1], [10, 0, 0, 2], 0, &[0; 8]),
            ),
        ),
        (
            "ipv4 later fragment",
            eth(
                MAC,
                0x0800,
                &ipv4(17, CONTAINER, INTERNET, 0x00b9, &[0; 40]),
            ),
        ),
        (
            "ipv4 multicast",
            eth(
                [0x01, 0, 0x5e, 0, 0, 0xfb],
                0x0800,
                &ipv4(
                    17,
                    CONTAINER,
                    [224, 0, 0, 251],
                    0,
                    &udp(5353, 5353, &[0; 12]),
                ),
            ),
        ),
    ]
}

/// IPv6 frames in Ethernet, extension headers and multicast included.
fn ipv6_frames() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        (
            "ipv6 tcp",
            eth(MAC, 0x86dd, &ipv6(6, V6A, V6B, &tcp(40000, 8080, 0x02, 0))),
        ),
        (
            "ipv6 udp",
            eth(
                MAC,
                0x86dd,
                &ipv6(17, V6B, V6A, &udp(53, 40000, &[0x12, 0x34])),
            ),
        ),
        (
            "icmpv6 echo",
            eth(
                MAC,
                0x86dd,
                &ipv6(58, V6A, V6B, &[128, 0, 0, 0, 0, 1, 0, 1]),
            ),
        ),
        (
            "ipv6 hop-by-hop then tcp",
            eth(
                MAC,
                0x86dd,
                &ipv6(
                    0,
                    V6A,
                    V6B,
                    &[&[6u8, 0, 1, 4, 0, 0, 0, 0][..], &tcp(1, 2, 0x10, 0)].concat(),
                ),
            ),
        ),
        (
            "ipv6 multicast",
            eth(
                [0x33, 0x33, 0, 0, 0, 1],
                0x86dd,
                &ipv6(58, V6A, [0xff02, 0, 0, 0, 0, 0, 0, 1], &[134, 0, 0, 0]),
            ),
        ),
    ]
}

/// VLAN tags, ARP, and frames too short to hold an IP header.
fn other_frames(syn: &[u8]) -> Vec<(&'static str, Vec<u8>)> {
    vec![
        (
            "vlan 100 udp",
            eth(
                MAC,
                0x8100,
                &vlan(
                    100,
                    0x0800,
                    &ipv4(
                        17,
                        [10, 1, 2, 3],
                        CONTAINER,
                        0,
                        &udp(53, 40000, &[0x12, 0x34]),
                    ),
                ),
            ),
        ),
        (
            "vlan 200 tcp",
            eth(
                MAC,
                0x8100,
                &vlan(200, 0x0800, &ipv4(6, CONTAINER, INTERNET, 0, syn)),
            ),
        ),
        (
            "arp request",
            eth(
                BCAST,
                0x0806,
                &[
                    0, 1, 8, 0, 6, 4, 0, 1, 2, 0x42, 0xac, 0x12, 0, 2, 172, 18, 0, 2, 0, 0, 0, 0,
                    0, 0, 172, 18, 0, 1,
                ],
            ),
        ),
        ("empty", Vec::new()),
        ("ethernet only", eth(MAC, 0x0800, &[])),
    ]
}

pub fn frames() -> Vec<(&'static str, Vec<u8>)> {
    let syn = tcp(40000, 8080, 0x02, 0);
    let mut frames = ip_frames(&syn);
    frames.extend(ipv6_frames());
    frames.extend(other_frames(&syn));
    // IPv4 with 4 option bytes (IHL 6), and protocol 0 (a division by ip[9] divides by 0).
    let mut opts = ipv4(17, CONTAINER, INTERNET, 0, &udp(40000, 53, &[0x12, 0x34]));
    opts[0] = 0x46;
    opts.splice(20..20, [1, 1, 1, 0]);
    frames.push(("ipv4 with options", eth(MAC, 0x0800, &opts)));
    frames.push((
        "ipv4 protocol 0",
        eth(MAC, 0x0800, &ipv4(0, CONTAINER, INTERNET, 0, &[0; 8])),
    ));
    // The same SYN cut short at every length: loads past the end must fail as in libpcap.
    let full = eth(MAC, 0x0800, &ipv4(6, CONTAINER, INTERNET, 0, &syn));
    for cut in [13, 20, 23, 30, 34, 36, 38, 47, 48] {
        frames.push(("truncated syn", full[..cut].to_vec()));
    }
    frames
}

/// Real frames, captured with `tcpdump -i va -s 256 -w` between two throwaway namespaces
/// joined by a veth (203.0.113.0/24, fd00:f7::/64; no link to the host): ARP, ICMP echo, a TCP
/// echo with its handshake and teardown, UDP, IPv6 neighbour discovery, MLD (hop-by-hop
/// header), router solicitations, ICMPv6 echo and a refused IPv6 TCP connection.
const LAB_CAPTURE: &[u8] = include_bytes!("captured.pcap");

/// The frames of a classic pcap file (little-endian, microseconds).
pub fn pcap_frames(file: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut at = 24;
    while let Some(h) = file.get(at..at + 16) {
        let caplen = u32::from_le_bytes([h[8], h[9], h[10], h[11]]) as usize;
        let Some(frame) = file.get(at + 16..at + 16 + caplen) else {
            break;
        };
        out.push(frame.to_vec());
        at += 16 + caplen;
    }
    out
}

/// The synthetic frames and the captured ones.
pub fn all_frames() -> Vec<(&'static str, Vec<u8>)> {
    let mut all = frames();
    all.extend(
        pcap_frames(LAB_CAPTURE)
            .into_iter()
            .map(|f| ("captured", f)),
    );
    all
}

#[cfg(test)]
#[test]
fn the_capture_has_every_kind_of_frame() {
    let frames = pcap_frames(LAB_CAPTURE);
    assert!(frames.len() >= 20, "{} frames", frames.len());
    for expr in ["tcp", "udp", "icmp", "arp", "ip6"] {
        let p = Program::compile(expr).expect("compiles");
        assert!(
            frames.iter().any(|f| p.matches(f)),
            "no `{expr}` frame captured"
        );
    }
}

#[cfg(test)]
#[test]
fn translated_filters_agree_with_libpcap_on_every_frame() {
    let frames = all_frames();
    let mut checked = 0;
    let mut matched = 0;
    for expr in EXPRESSIONS {
        let reference = Program::compile(expr).unwrap_or_else(|e| panic!("{expr}: {e}"));
        let filter = CompiledFilter::new(expr).unwrap_or_else(|e| panic!("{expr}: {e}"));
        let prog = filter.ebpf(Plan::test(Source::Packet)).expect("translates");
        let on_view = filter
            .ebpf(Plan::test(Source::View { map_fd: 4 }))
            .expect("translates");
        for (name, frame) in &frames {
            let want = reference.matches(frame);
            let got = interp::run(&prog, frame);
            let expected = if want {
                interp::Outcome::Match
            } else {
                interp::Outcome::Miss
            };
            assert_eq!(got, expected, "`{expr}` on {name} ({} bytes)", frame.len());
            // On the view: as tcpdump with a snap length of VIEW_LEN.
            let cut = &frame[..frame.len().min(tracer_common::flow::VIEW_LEN)];
            let want_view = reference.matches_captured(cut, frame.len() as u32);
            let got_view = interp::run(&on_view, frame) == interp::Outcome::Match;
            assert_eq!(got_view, want_view, "`{expr}` on the view of {name}");
            checked += 1;
            matched += usize::from(want);
        }
    }
    // The corpus is only useful if it has both verdicts in quantity.
    assert!(
        matched > 200 && checked - matched > 200,
        "{matched} of {checked} matched"
    );
}

#[cfg(test)]
#[test]
fn every_expression_of_the_corpus_discriminates() {
    let frames = frames();
    for expr in EXPRESSIONS.iter().filter(|e| !e.is_empty()) {
        let p = Program::compile(expr).expect("compiles");
        let hits = frames.iter().filter(|(_, f)| p.matches(f)).count();
        assert!(
            hits > 0 && hits < frames.len(),
            "`{expr}` matches {hits} of {} frames",
            frames.len()
        );
    }
}

#[cfg(test)]
#[test]
fn syntax_errors_are_libpcaps_sentences() {
    // Exactly what tcpdump prints after "tcpdump: ".
    for (expr, says) in [
        ("tcp prot 80", "can't parse filter expression: syntax error"),
        ("port 99999", "illegal port number 99999 > 65535"),
        ("host 300.1.1.1", "invalid IPv4 address '300.1.1.1'"),
        ("not ip and ip", "expression rejects all packets"),
    ] {
        let Err(e) = CompiledFilter::new(expr) else {
            panic!("`{expr}` compiled");
        };
        assert_eq!(e.to_string(), says, "`{expr}`");
    }
}

/// The verifier refuses a program with an instruction no path reaches.
#[cfg(test)]
fn unreachable(prog: &[super::Insn]) -> Option<usize> {
    let mut seen = vec![false; prog.len()];
    let mut todo = vec![0usize];
    while let Some(pc) = todo.pop() {
        if pc >= prog.len() || seen[pc] {
            continue;
        }
        seen[pc] = true;
        let i = prog[pc];
        let (class, op) = (i.code & 0x07, i.code & 0xf0);
        let next = pc + if i.code == 0x18 { 2 } else { 1 };
        if i.code == 0x18 {
            seen[pc + 1] = true;
        }
        let target = (pc as i64 + 1 + i64::from(i.off)) as usize;
        match (class, op) {
            (0x05, 0x00) => todo.push(target),
            (0x05, 0x90) => {}
            (0x05 | 0x06, 0x80) => todo.push(next),
            (0x05 | 0x06, _) => todo.extend([target, next]),
            _ => todo.push(next),
        }
    }
    seen.iter().position(|s| !s)
}

#[cfg(test)]
#[test]
fn no_translation_has_an_unreachable_instruction() {
    let extremes = ["", "ether[0] == 1 or ether[0] != 1", "ether[0] == 1"];
    for expr in EXPRESSIONS.iter().chain(extremes.iter()) {
        let f = CompiledFilter::new(expr).expect("compiles");
        for source in [Source::Packet, Source::View { map_fd: 4 }] {
            let prog = f.ebpf(Plan::test(source)).expect("translates");
            assert_eq!(unreachable(&prog), None, "`{expr}` ({source:?}): {prog:?}");
        }
    }
}

#[cfg(test)]
#[test]
fn protochain_loops_are_refused_with_a_reason() {
    // libpcap compiles `protochain` to a loop (a backward jump): Linux never runs those in the
    // kernel (tcpdump filters them in user space); the verifier could not bound it either.
    for expr in ["ip6 protochain 6", "ip protochain 17"] {
        let Err(e) = CompiledFilter::new(expr) else {
            panic!("`{expr}` translated");
        };
        assert!(e.to_string().contains("backward jump"), "{e}");
    }
}
