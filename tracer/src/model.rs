//! The one typed model of what flowtrace shows: packet, flow, lost and summary lines. The core
//! builds it (`Packet::of`, `FlowLine::of`, `SummaryLine::of`); every presenter (text, JSON
//! lines, pcapng comments, the dashboard) and every reader (`flowtrace read`, the tests)
//! consumes it. Its JSON form is the contract in the README: field names are fixed, fields may
//! be added, and `v` says which version of the contract a line follows.

use serde::{Deserialize, Serialize};
use tracer_common::netfilter::hook_name;

use crate::{
    correlate::{
        explain::Explained,
        flow::{FlowKey, FlowStats},
        nat::NatRewrite,
        packet::{Points, Way},
    },
    events::{clock::WallClock, packet::tcp_flags_str},
    output::{merged, Discarded, Step, Summary},
    probe::counters::HopTotals,
};

/// The contract's version, in every line's `v`.
pub const VERSION: u32 = 1;

fn version() -> u32 {
    VERSION
}

/// One JSON line, by its `type`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Line {
    Packet(Packet),
    Flow(FlowLine),
    Lost(Lost),
    Summary(SummaryLine),
}

/// A rewrite on a hop, as `{"kind", "from", "to"}`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Nat {
    /// `snat`, `dnat`, `masquerade`…
    pub kind: String,
    pub from: String,
    pub to: String,
}

impl Nat {
    /// "SNAT a → b".
    pub fn text(&self) -> String {
        format!("{} {} → {}", self.kind.to_uppercase(), self.from, self.to)
    }
}

impl From<&NatRewrite> for Nat {
    fn from(n: &NatRewrite) -> Self {
        Nat {
            kind: n.kind.as_str().to_owned(),
            from: n.from.to_string(),
            to: n.to.to_string(),
        }
    }
}

/// One hop of a packet, by its `point`: a tc observation or a netfilter table's work.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(tag = "point")]
pub enum Hop {
    #[serde(rename = "tc")]
    Tc(TcHop),
    #[serde(rename = "netfilter")]
    Nf(NfHop),
}

impl Hop {
    pub fn at_ns(&self) -> u64 {
        match self {
            Hop::Tc(h) => h.at_ns,
            Hop::Nf(h) => h.at_ns,
        }
    }

    pub fn nat(&self) -> Option<&Nat> {
        match self {
            Hop::Tc(h) => h.nat.as_ref(),
            Hop::Nf(h) => h.nat.as_ref(),
        }
    }
}

/// Every key is always present (null when unknown) except `nat`, present only where a
/// rewrite showed.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct TcHop {
    pub at_ns: u64,
    pub iface: String,
    pub role: Option<String>,
    /// `ingress` or `egress`.
    pub dir: String,
    pub src: Option<String>,
    pub dst: Option<String>,
    pub len: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nat: Option<Nat>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct NfHop {
    pub at_ns: u64,
    pub hook: String,
    pub table: String,
    /// `accept`, `drop`, `stolen`, `queue`…
    pub verdict: String,
    pub src: Option<String>,
    pub dst: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nat: Option<Nat>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Drop {
    pub at_ns: u64,
    pub reason: String,
    pub location: Option<String>,
    pub hook: Option<String>,
    pub table: Option<String>,
    pub rule: Option<String>,
    pub rule_source: Option<String>,
    pub last_hop: Option<String>,
    pub place: Option<String>,
}

impl Drop {
    /// The interface of `last_hop` ("br-x tc ingress" → "br-x").
    pub fn last_hop_iface(&self) -> Option<&str> {
        self.last_hop
            .as_deref()
            .and_then(|h| h.split_whitespace().next())
    }
}

/// A traced packet.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Packet {
    #[serde(default = "version")]
    pub v: u32,
    pub time: String,
    pub container: Option<String>,
    /// `out` (from the container) or `in` (to it).
    pub way: Option<String>,
    pub proto: Option<String>,
    pub src: Option<String>,
    pub dst: Option<String>,
    pub len: u32,
    pub tcp_flags: Option<String>,
    pub summary: Option<String>,
    pub skb: String,
    /// A recording keeps each hop in its own block, and the packet without them.
    #[serde(default)]
    pub hops: Vec<Hop>,
    pub drop: Option<Drop>,
}

impl Packet {
    pub fn of(e: &Explained, points: &Points, clock: &WallClock) -> Packet {
        let p = &e.packet;
        let view = p.view(points);
        let t0 = p.first_ts();
        let hops = merged(e)
            .into_iter()
            .map(|step| match step {
                Step::Tc(h, nat) => Hop::Tc(TcHop {
                    at_ns: h.ts_ns - t0,
                    iface: points
                        .get(&h.ifindex)
                        .map_or_else(|| format!("if{}", h.ifindex), |p| p.name.clone()),
                    role: points.get(&h.ifindex).map(|p| p.role.to_string()),
                    dir: h.direction.as_str().to_owned(),
                    src: h.headers.map(|x| x.source().to_string()),
                    dst: h.headers.map(|x| x.destination().to_string()),
                    len: h.len,
                    nat: nat.first().map(Nat::from),
                }),
                Step::Nf(n) => Hop::Nf(NfHop {
                    at_ns: n.ts_ns.saturating_sub(t0),
                    hook: hook_name(n.hook).to_owned(),
                    table: n.table.clone(),
                    verdict: n.verdict.as_str().to_owned(),
                    src: n.headers.map(|x| x.source().to_string()),
                    dst: n.headers.map(|x| x.destination().to_string()),
                    nat: n.nat.first().map(Nat::from),
                }),
            })
            .collect();
        let drop = e.drop.as_ref().map(|d| Drop {
            at_ns: p.end.as_ref().map_or(0, |x| x.ts_ns.saturating_sub(t0)),
            reason: d.reason.clone(),
            location: d.location.clone(),
            hook: d.hook.map(str::to_owned),
            table: d.table.clone(),
            rule: d.rule.clone(),
            rule_source: d.rule_source.clone(),
            last_hop: d.last_hop.clone(),
            place: d.place.clone(),
        });
        Packet {
            v: VERSION,
            time: clock.rfc3339(t0),
            container: p.container(points).map(str::to_owned),
            way: p.way(points).map(|w| {
                match w {
                    Way::FromContainer => "out",
                    Way::ToContainer => "in",
                }
                .to_owned()
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

    /// The tc hops, in order.
    pub fn tc_hops(&self) -> impl Iterator<Item = &TcHop> {
        self.hops.iter().filter_map(|h| match h {
            Hop::Tc(t) => Some(t),
            Hop::Nf(_) => None,
        })
    }
}

/// Packets and bytes one way.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Count {
    pub packets: u64,
    pub bytes: u64,
}

/// A flow's totals (`--flows`, and at exit).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct FlowLine {
    #[serde(default = "version")]
    pub v: u32,
    pub time: String,
    pub last: String,
    pub container: String,
    pub proto: String,
    pub local: String,
    pub remote: String,
    pub translated: Option<String>,
    pub out: Count,
    #[serde(rename = "in")]
    pub inbound: Count,
    pub drops: u64,
    pub path_out: Vec<String>,
    pub path_in: Vec<String>,
    pub closed: bool,
}

impl FlowLine {
    pub fn of(k: &FlowKey, s: &FlowStats, clock: &WallClock) -> FlowLine {
        FlowLine {
            v: VERSION,
            time: clock.rfc3339(s.first_ns),
            last: clock.rfc3339(s.last_ns),
            container: k.container.clone(),
            proto: k.proto.name(),
            local: k.local_str(),
            remote: k.remote_str(),
            translated: s.translated.map(|t| t.to_string()),
            out: Count {
                packets: s.out_packets,
                bytes: s.out_bytes,
            },
            inbound: Count {
                packets: s.in_packets,
                bytes: s.in_bytes,
            },
            drops: s.drops,
            path_out: s.path_out.clone(),
            path_in: s.path_in.clone(),
            closed: s.closed(),
        }
    }
}

/// Observations lost in the ring buffer.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lost {
    #[serde(default = "version")]
    pub v: u32,
    pub count: u64,
}

impl Lost {
    pub fn of(count: u64) -> Lost {
        Lost { v: VERSION, count }
    }
}

/// A hop's kernel counters, in the summary and `--counters`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct HopLine {
    pub iface: String,
    pub dir: String,
    pub packets: u64,
    pub bytes: u64,
    pub lost: u64,
}

/// What user space received and did not show, by why (see `output::Discarded`).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DiscardedLine {
    pub untraced: u64,
    pub filtered: u64,
    pub malformed: u64,
    pub forced: u64,
    pub evicted: u64,
}

/// The final line.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct SummaryLine {
    #[serde(default = "version")]
    pub v: u32,
    pub packets: u64,
    pub flows: u64,
    pub drops: u64,
    pub lost: u64,
    pub hops: Vec<HopLine>,
    #[serde(default)]
    pub discarded: DiscardedLine,
}

impl HopLine {
    pub fn of(h: &HopTotals) -> HopLine {
        HopLine {
            iface: h.iface.clone(),
            dir: h.direction.to_owned(),
            packets: h.packets,
            bytes: h.bytes,
            lost: h.lost,
        }
    }
}

impl SummaryLine {
    pub fn of(s: &Summary) -> SummaryLine {
        let Discarded {
            untraced,
            filtered,
            malformed,
            forced,
            evicted,
        } = s.discarded;
        SummaryLine {
            v: VERSION,
            packets: s.packets,
            flows: s.flows,
            drops: s.drops,
            lost: s.lost,
            hops: s.hops.iter().map(HopLine::of).collect(),
            discarded: DiscardedLine {
                untraced,
                filtered,
                malformed,
                forced,
                evicted,
            },
        }
    }
}

/// A line of the model to write, borrowed: the same JSON as `Line`.
#[derive(Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
enum LineRef<'a> {
    Packet(&'a Packet),
    Flow(&'a FlowLine),
    Lost(&'a Lost),
    Summary(&'a SummaryLine),
}

fn json(line: LineRef<'_>) -> String {
    // These types hold only strings, numbers and vectors of them: serialising cannot fail.
    serde_json::to_string(&line).unwrap_or_default()
}

impl Packet {
    /// The packet's JSON line.
    pub fn to_json(&self) -> String {
        json(LineRef::Packet(self))
    }

    /// Writes the packet's JSON line (without its newline) straight to `w`.
    pub fn write_json(&self, w: impl std::io::Write) -> std::io::Result<()> {
        serde_json::to_writer(w, &LineRef::Packet(self)).map_err(std::io::Error::from)
    }
}

impl FlowLine {
    pub fn to_json(&self) -> String {
        json(LineRef::Flow(self))
    }
}

impl Lost {
    pub fn to_json(&self) -> String {
        json(LineRef::Lost(self))
    }
}

impl SummaryLine {
    pub fn to_json(&self) -> String {
        json(LineRef::Summary(self))
    }
}

impl Line {
    /// Parses one JSON line of the contract.
    pub fn parse(s: &str) -> Result<Line, serde_json::Error> {
        serde_json::from_str(s)
    }
}

#[cfg(test)]
mod tests;
