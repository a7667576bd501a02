//! Test fixtures that follow the JSON contract: a forwarded SYN with SNAT, its SYN-ACK with
//! DNAT, and a SYN dropped at FORWARD/filter by a DOCKER-USER rule; and kernel counters.

use serde_json::{json, Value};

use super::{Feed, HopCount};
use crate::model::Packet;

/// A packet of the contract from its JSON (the fixtures also check that it parses).
fn packet(v: Value) -> Packet {
    serde_json::from_value(v).expect("a fixture follows the contract")
}

pub const RULE: &str = "-A DOCKER-USER -d 198.51.100.2/32 -p tcp -m tcp --dport 8081 -j DROP";

pub fn tc(at: u64, iface: &str, role: &str, dir: &str, src: &str, dst: &str) -> Value {
    json!({"at_ns": at, "point": "tc", "iface": iface, "role": role, "dir": dir, "src": src, "dst": dst, "len": 74})
}

pub fn nf(at: u64, hook: &str, table: &str, verdict: &str, src: &str, dst: &str) -> Value {
    json!({"at_ns": at, "point": "netfilter", "hook": hook, "table": table, "verdict": verdict, "src": src, "dst": dst})
}

/// A forwarded SYN, MASQUERADEd at POSTROUTING/nat.
pub fn syn() -> Packet {
    let (c, r, h) = (
        "172.18.0.2:41234",
        "198.51.100.2:8080",
        "198.51.100.1:41234",
    );
    let mut post = nf(73300, "POSTROUTING", "nat", "accept", h, r);
    post["nat"] = json!({"kind": "snat", "from": c, "to": h});
    packet(
        json!({"skb": "0xffff8880", "time": "2026-11-24T15:07:34.120511Z", "container": "ens_monitor_cron", "way": "out",
        "proto": "tcp", "src": c, "dst": r, "len": 74, "tcp_flags": "S", "summary": "TCP [S]",
        "hops": [tc(0, "veth9780200", "veth", "ingress", c, r), nf(40800, "PREROUTING", "nat", "accept", c, r),
            tc(48400, "br-d9231d44a1ab", "bridge", "ingress", c, r), nf(62900, "FORWARD", "filter", "accept", c, r),
            post, tc(75100, "ftlab-up", "uplink", "egress", h, r)],
        "drop": null}),
    )
}

/// Its SYN-ACK, de-NATed at PREROUTING/nat.
pub fn syn_ack() -> Packet {
    let (c, r, h) = (
        "172.18.0.2:41234",
        "198.51.100.2:8080",
        "198.51.100.1:41234",
    );
    let mut pre = nf(4000, "PREROUTING", "nat", "accept", r, c);
    pre["nat"] = json!({"kind": "dnat", "from": h, "to": c});
    packet(
        json!({"skb": "0xffff8880", "time": "2026-11-24T15:07:34.120611Z", "container": "ens_monitor_cron", "way": "in",
        "proto": "tcp", "src": r, "dst": c, "len": 74, "tcp_flags": "S.", "summary": "TCP [S.]",
        "hops": [tc(0, "ftlab-up", "uplink", "ingress", r, h), pre, nf(12700, "FORWARD", "filter", "accept", r, c),
            nf(18100, "POSTROUTING", "nat", "accept", r, c), tc(19400, "br-d9231d44a1ab", "bridge", "egress", r, c),
            tc(22200, "veth9780200", "veth", "egress", r, c)],
        "drop": null}),
    )
}

/// A SYN dropped by the DOCKER-USER rule at FORWARD/filter.
pub fn dropped() -> Packet {
    let (c, r) = ("172.18.0.2:52011", "198.51.100.2:8081");
    // As nftrace names them: the nat table's policy, and the rule reached through two jumps.
    let mut pre = nf(43000, "PREROUTING", "nat", "accept", c, r);
    pre["policy"] = json!("accept");
    pre["chain_path"] = json!(["PREROUTING", "DOCKER", "PREROUTING"]);
    pre["rule_source"] = json!("nftrace");
    let mut fwd = nf(67100, "FORWARD", "filter", "drop", c, r);
    fwd["rule"] = json!(RULE);
    fwd["chain_path"] = json!(["FORWARD", "DOCKER-USER"]);
    fwd["rule_source"] = json!("nftrace");
    packet(
        json!({"skb": "0xffff8880", "time": "2026-11-24T15:07:36.002113Z", "container": "ens_monitor_cron", "way": "out",
        "proto": "tcp", "src": c, "dst": r, "len": 74, "tcp_flags": "S", "summary": "TCP [S]",
        "hops": [tc(0, "veth9780200", "veth", "ingress", c, r), pre,
            tc(52000, "br-d9231d44a1ab", "bridge", "ingress", c, r), fwd],
        "drop": {"reason": "NETFILTER_DROP", "location": "nf_hook_slow", "hook": "FORWARD", "table": "filter",
            "rule": RULE, "rule_source": "nftrace", "last_hop": "br-d9231d44a1ab tc ingress",
            "place": null, "at_ns": 67200}}),
    )
}

pub fn hc(iface: &str, role: &str, direction: &'static str, packets: u64, bytes: u64) -> HopCount {
    HopCount {
        iface: iface.into(),
        role: role.into(),
        direction,
        packets,
        bytes,
        lost: 0,
    }
}

pub fn counters(scale: u64) -> Feed {
    Feed::Counters(vec![
        hc("veth9780200", "veth", "ingress", 3 * scale, 222 * scale),
        hc("veth9780200", "veth", "egress", scale, 74 * scale),
        hc(
            "br-d9231d44a1ab",
            "bridge",
            "ingress",
            2 * scale,
            148 * scale,
        ),
        hc("br-d9231d44a1ab", "bridge", "egress", scale, 74 * scale),
        hc("ftlab-up", "uplink", "egress", scale, 74 * scale),
        hc("ftlab-up", "uplink", "ingress", scale, 74 * scale),
    ])
}
