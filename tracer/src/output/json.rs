//! JSON lines, per the contract in the README: field names are fixed, new fields may be added.

use serde::Serialize;
use serde_json::{json, Value};
use tracer_common::netfilter::hook_name;

use super::Summary;
use super::{merged, Step};
use crate::{
    correlate::{
        explain::Explained,
        flow::{FlowKey, FlowStats},
        nat::NatRewrite,
        packet::{Points, Way},
    },
    events::{clock::WallClock, packet::tcp_flags_str},
};

/// A rewrite on a hop, as `{"kind", "from", "to"}`.
#[derive(Serialize)]
pub struct NatJson {
    kind: &'static str,
    from: String,
    to: String,
}

impl From<&NatRewrite> for NatJson {
    fn from(n: &NatRewrite) -> Self {
        NatJson {
            kind: n.kind.as_str(),
            from: n.from.to_string(),
            to: n.to.to_string(),
        }
    }
}

/// One hop of a packet: a tc observation or a netfilter table's work. Every key is always
/// present (null when unknown) except `nat`, present only where a rewrite showed.
#[derive(Serialize)]
#[serde(untagged)]
pub enum HopJson {
    Tc {
        at_ns: u64,
        point: &'static str,
        iface: String,
        role: Option<String>,
        dir: &'static str,
        src: Option<String>,
        dst: Option<String>,
        len: u32,
        #[serde(skip_serializing_if = "Option::is_none")]
        nat: Option<NatJson>,
    },
    Nf {
        at_ns: u64,
        point: &'static str,
        hook: &'static str,
        table: String,
        verdict: &'static str,
        src: Option<String>,
        dst: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        nat: Option<NatJson>,
    },
}

#[derive(Serialize)]
pub struct DropJson {
    at_ns: u64,
    reason: String,
    location: Option<String>,
    hook: Option<&'static str>,
    table: Option<String>,
    rule: Option<String>,
    rule_source: Option<String>,
    last_hop: Option<String>,
    place: Option<String>,
}

/// A traced packet as the JSON contract has it: serialised straight to the output by `--json`
/// (no intermediate tree), or turned into a `Value` for the text view, the recorder and the
/// dashboard.
#[derive(Serialize)]
pub struct PacketJson {
    #[serde(rename = "type")]
    kind: &'static str,
    time: String,
    container: Option<String>,
    way: Option<&'static str>,
    proto: Option<String>,
    src: Option<String>,
    dst: Option<String>,
    len: u32,
    tcp_flags: Option<String>,
    summary: Option<String>,
    skb: String,
    hops: Vec<HopJson>,
    drop: Option<DropJson>,
}

impl PacketJson {
    pub fn to_value(&self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null)
    }
}

pub fn packet_model(e: &Explained, points: &Points, clock: &WallClock) -> PacketJson {
    let p = &e.packet;
    let view = p.view(points);
    let t0 = p.first_ts();
    let hops = merged(e)
        .into_iter()
        .map(|step| match step {
            Step::Tc(h, nat) => HopJson::Tc {
                at_ns: h.ts_ns - t0,
                point: "tc",
                iface: points
                    .get(&h.ifindex)
                    .map_or_else(|| format!("if{}", h.ifindex), |p| p.name.clone()),
                role: points.get(&h.ifindex).map(|p| p.role.to_string()),
                dir: h.direction.as_str(),
                src: h.headers.map(|x| x.source().to_string()),
                dst: h.headers.map(|x| x.destination().to_string()),
                len: h.len,
                nat: nat.first().map(NatJson::from),
            },
            Step::Nf(n) => HopJson::Nf {
                at_ns: n.ts_ns.saturating_sub(t0),
                point: "netfilter",
                hook: hook_name(n.hook),
                table: n.table.clone(),
                verdict: n.verdict.as_str(),
                src: n.headers.map(|x| x.source().to_string()),
                dst: n.headers.map(|x| x.destination().to_string()),
                nat: n.nat.first().map(NatJson::from),
            },
        })
        .collect();
    let drop = e.drop.as_ref().map(|d| DropJson {
        at_ns: p.end.as_ref().map_or(0, |x| x.ts_ns.saturating_sub(t0)),
        reason: d.reason.clone(),
        location: d.location.clone(),
        hook: d.hook,
        table: d.table.clone(),
        rule: d.rule.clone(),
        rule_source: d.rule_source.clone(),
        last_hop: d.last_hop.clone(),
        place: d.place.clone(),
    });
    PacketJson {
        kind: "packet",
        time: clock.rfc3339(t0),
        container: p.container(points).map(str::to_owned),
        way: p.way(points).map(|w| match w {
            Way::FromContainer => "out",
            Way::ToContainer => "in",
        }),
        proto: view.map(|h| h.proto.name()),
        src: view.map(|h| h.source().to_string()),
        dst: view.map(|h| h.destination().to_string()),
        len: p.frame_len(),
        tcp_flags: view.and_then(|h| h.tcp_flags()).map(tcp_flags_str),
        summary: view.map(|h| h.summary()),
        skb: format!("{:#x}", p.skb),
        hops,
        drop,
    }
}

pub fn packet(e: &Explained, points: &Points, clock: &WallClock) -> Value {
    packet_model(e, points, clock).to_value()
}

pub fn flow(k: &FlowKey, s: &FlowStats, clock: &WallClock) -> Value {
    json!({
        "type": "flow",
        "time": clock.rfc3339(s.first_ns),
        "last": clock.rfc3339(s.last_ns),
        "container": k.container,
        "proto": k.proto.name(),
        "local": k.local_str(),
        "remote": k.remote_str(),
        "translated": s.translated.map(|t| t.to_string()),
        "out": {"packets": s.out_packets, "bytes": s.out_bytes},
        "in": {"packets": s.in_packets, "bytes": s.in_bytes},
        "drops": s.drops,
        "path_out": s.path_out,
        "path_in": s.path_in,
        "closed": s.closed(),
    })
}

pub fn summary(s: &Summary) -> Value {
    let hops: Vec<Value> = s
        .hops
        .iter()
        .map(|h| {
            json!({"iface": h.iface, "dir": h.direction, "packets": h.packets, "bytes": h.bytes, "lost": h.lost})
        })
        .collect();
    json!({
        "type": "summary",
        "packets": s.packets,
        "flows": s.flows,
        "drops": s.drops,
        "lost": s.lost,
        "hops": hops,
        "discarded": {
            "untraced": s.discarded.untraced,
            "filtered": s.discarded.filtered,
            "malformed": s.discarded.malformed,
            "forced": s.discarded.forced,
            "evicted": s.discarded.evicted,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::correlate::{
        explain::Explainer,
        packet::tests::{masqueraded_syn, points},
    };

    #[test]
    fn packet_json_follows_the_contract() {
        let e = Explainer::empty().explain(masqueraded_syn(), &points());
        let v = packet(&e, &points(), &WallClock::with_offset(0));
        assert_eq!(v["type"], "packet");
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
        assert_eq!(hops[1]["at_ns"], 46_900);
        assert_eq!(hops[1]["src"], "198.51.100.1:41234");
        assert_eq!(hops[1]["nat"]["kind"], "snat");
        assert_eq!(hops[1]["nat"]["from"], "172.18.0.2:41234");
        assert_eq!(hops[1]["nat"]["to"], "198.51.100.1:41234");
    }
}
