use super::*;
use crate::correlate::{
    explain::Explainer,
    packet::tests::{masqueraded_syn, points},
};

fn syn() -> Packet {
    let e = Explainer::empty().explain(masqueraded_syn(), &points());
    packet(
        &e,
        &points(),
        &WallClock::with_offset(0),
        &mut Texts::default(),
    )
}

#[test]
fn packet_json_follows_the_contract() {
    let v: serde_json::Value = serde_json::from_str(&syn().to_json()).expect("json");
    assert_eq!(v["type"], "packet");
    assert_eq!(v["v"], VERSION);
    assert_eq!(v["container"], "ens_monitor_cron");
    assert_eq!(v["proto"], "tcp");
    assert_eq!(v["src"], "172.18.0.2:41234");
    assert_eq!(v["dst"], "198.51.100.2:8080");
    assert_eq!(v["tcp_flags"], "S");
    assert_eq!(v["len"], 54);
    assert!(v["drop"].is_null());
    let hops = v["hops"].as_array().expect("hops");
    assert_eq!(hops[0]["at_ns"], 0);
    assert_eq!(hops[0]["iface"], "veth9780200");
    assert_eq!(hops[0]["point"], "tc");
    assert_eq!(hops[0]["role"], "veth");
    assert_eq!(hops[1]["at_ns"], 46_900);
    assert_eq!(hops[1]["src"], "198.51.100.1:41234");
    assert_eq!(hops[1]["nat"]["kind"], "snat");
    assert_eq!(hops[1]["nat"]["from"], "172.18.0.2:41234");
    assert_eq!(hops[1]["nat"]["to"], "198.51.100.1:41234");
}

/// The golden lines: what `--json` prints for these, byte for byte. A change to the contract
/// shows here first (set FLOWTRACE_BLESS=1 to rewrite the file, and say so in the README).
const GOLDEN: &str = include_str!("golden.jsonl");

fn golden_lines() -> Vec<String> {
    let summary = Summary {
        packets: 1,
        flows: 1,
        drops: 0,
        lost: 2,
        lost_by: [1, 0, 1],
        hops: vec![HopTotals {
            iface: "veth9780200".into(),
            direction: "ingress",
            packets: 3,
            bytes: 222,
            lost: 0,
        }],
        discarded: Discarded {
            untraced: 4,
            ..Default::default()
        },
        kernel_evicted: crate::probe::tables::Evicted {
            tracked: 6,
            flows: 1,
        },
    };
    let e = Explainer::empty().explain(masqueraded_syn(), &points());
    let mut flows = crate::correlate::flow::FlowTable::new(4);
    let key = flows.record(&e.packet, &points(), false).expect("a flow");
    let stats = flows.get(&key).expect("stats");
    vec![
        syn().to_json(),
        crate::tui::fixtures::dropped().to_json(),
        flow(&key, stats, &WallClock::with_offset(0)).to_json(),
        Lost::of(2).to_json(),
        CountersLine {
            v: VERSION,
            time: "2026-11-24T15:07:35.000000Z".into(),
            hops: summary.hops.iter().map(hop_line).collect(),
        }
        .to_json(),
        ContainerNote {
            v: VERSION,
            container: "ens_monitor_cron".into(),
            note: "container ens_monitor_cron stopped; waiting for it to start again".into(),
        }
        .to_json(),
        crate::output::raw::line(
            &crate::output::raw::tests::obs(),
            &Default::default(),
            &WallClock::with_offset(0),
        )
        .to_json(),
        super::summary(&summary).to_json(),
    ]
}

#[test]
fn the_json_lines_are_the_golden_ones() {
    let lines = golden_lines();
    if std::env::var_os("FLOWTRACE_BLESS").is_some() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/src/model/golden.jsonl");
        std::fs::write(path, lines.join("\n") + "\n").expect("bless");
        return;
    }
    let golden: Vec<&str> = GOLDEN.lines().collect();
    assert_eq!(lines.len(), golden.len());
    for (l, g) in lines.iter().zip(golden) {
        assert_eq!(l, g);
    }
}

#[test]
fn every_line_reads_back_as_it_was_written() {
    for l in GOLDEN.lines() {
        let line = Line::parse(l).expect("a golden line parses");
        assert_eq!(line.to_json(), l);
    }
    // Lines of an older flowtrace (no "v") are version 1.
    let old = r#"{"type":"lost","count":3}"#;
    assert_eq!(
        Line::parse(old).ok(),
        Some(Line::Lost(Lost { v: 1, count: 3 }))
    );
    assert!(Line::parse(r#"{"type":"packet"}"#).is_err());
}

#[test]
fn the_readme_documents_every_field() {
    let readme = include_str!("../../../README.md");
    let contract = readme
        .split_once("### The JSON contract")
        .and_then(|(_, r)| r.split("\n## ").next())
        .expect("the README has a JSON contract section");
    let mut keys = std::collections::BTreeSet::new();
    fn walk(v: &serde_json::Value, keys: &mut std::collections::BTreeSet<String>) {
        match v {
            serde_json::Value::Object(o) => {
                for (k, x) in o {
                    keys.insert(k.clone());
                    walk(x, keys);
                }
            }
            serde_json::Value::Array(a) => a.iter().for_each(|x| walk(x, keys)),
            _ => {}
        }
    }
    for l in GOLDEN.lines() {
        walk(&serde_json::from_str(l).expect("json"), &mut keys);
    }
    // The prose, not the example: every other ``` block is code.
    let prose: String = contract.split("```").step_by(2).collect();
    for k in keys {
        assert!(
            prose.contains(&format!("`{k}`")) || prose.contains(&format!("\"{k}\"")),
            "the README's JSON contract does not document `{k}`"
        );
    }
}

/// The shared texts are each endpoint's own: IPv4 and IPv6, with and without a port (0 is a
/// port), an IPv4 address and its IPv6-mapped form, past the cache's size (emptied) and
/// asked again; and a hop's two ends, the same as the last pair asked for, the pair before it,
/// or neither.
#[test]
fn shared_texts_are_each_endpoints_own() {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

    use crate::events::packet::{Proto, L4};
    let v4 = Ipv4Addr::new(172, 18, 0, 2);
    let mut all = Vec::new();
    for ip in [
        IpAddr::V4(v4),
        IpAddr::V6(v4.to_ipv6_mapped()),
        IpAddr::V6(Ipv6Addr::LOCALHOST),
        IpAddr::V4(Ipv4Addr::new(0, 0, 0, 1)),
    ] {
        for port in [None, Some(0), Some(1), Some(65535)] {
            all.push(Endpoint { ip, port });
        }
    }
    let many = (0..Texts::MAX as u32 + 10).map(|i| Endpoint {
        ip: IpAddr::V4(Ipv4Addr::from(i)),
        port: Some(i as u16),
    });
    all.extend(many);
    let mut texts = Texts::default();
    for _ in 0..2 {
        for e in &all {
            assert_eq!(*texts.text(*e), e.text(), "{e:?}");
        }
        assert!(texts.endpoints.len() <= Texts::MAX);
    }
    let udp = |s: Endpoint, d: Endpoint| Headers {
        src: s.ip,
        dst: d.ip,
        proto: Proto::Udp,
        ttl: 64,
        ip_id: 0,
        l4: L4::Udp {
            sport: s.port.unwrap_or(0),
            dport: d.port.unwrap_or(0),
        },
    };
    let (a, b, c) = (all[1 + 16], all[2 + 16], all[3 + 16]);
    // The same pair again, a new one, and the one before the last (the two pairs of a NAT'd
    // packet, in turn).
    for (s, d) in [
        (a, b),
        (a, b),
        (b, a),
        (a, c),
        (a, c),
        (a, b),
        (a, c),
        (a, b),
        (c, b),
        (a, b),
    ] {
        let (st, dt) = texts.of(Some(&udp(s, d)));
        assert_eq!(
            (st.as_deref(), dt.as_deref()),
            (Some(s.text().as_str()), Some(d.text().as_str()))
        );
    }
    assert_eq!(texts.of(None), (None, None));
}
