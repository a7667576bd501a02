//! flowtrace's output contract: one typed model of what it shows (packet, flow, lost,
//! counters, container and summary lines). flowtrace builds it; every presenter (text, JSON
//! lines, pcapng comments, the dashboard) and every reader (`flowtrace read`, the e2e tests,
//! the VM matrix) consumes it. Its JSON form is the contract in the README: field names are
//! fixed, fields may be added, and `v` says which version of the contract a line follows.
//!
//! A crate of its own, with no kernel or Docker dependencies, so that `xtask` (which must
//! build before the eBPF toolchain is installed) reads the same types as the tests.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};

mod head;
mod json;
mod visit;
pub mod word;

/// A text the model often takes from a fixed vocabulary (a direction, a hook, a verdict):
/// borrowed then, so that building a packet's hops does not allocate each of them.
pub type Text = Cow<'static, str>;

/// A text many lines repeat (an endpoint, an interface's name): up to 24 bytes kept inline
/// (every IPv4 endpoint, every interface name), so that each hop that shows it costs a copy
/// of three words instead of an allocation. `Arc<str>` was tried: its atomic count, taken and
/// released for each of a packet's twenty such texts, was the largest single cost left.
pub type Shared = compact_str::CompactString;

/// The contract's version, in every line's `v`.
pub const VERSION: u32 = 1;

fn version() -> u32 {
    VERSION
}

/// One JSON line, by its `type`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(tag = "type", rename_all = "lowercase")]
// A packet line is most lines: boxing it would add an allocation to nearly every read.
#[allow(clippy::large_enum_variant)]
pub enum Line {
    Packet(Packet),
    Flow(FlowLine),
    Lost(Lost),
    Counters(CountersLine),
    Container(ContainerNote),
    Observation(Observation),
    Summary(SummaryLine),
}

/// A rewrite on a hop, as `{"kind", "from", "to"}`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Nat {
    /// `snat`, `dnat`, `masquerade`…
    pub kind: Text,
    pub from: Shared,
    pub to: Shared,
}

impl Nat {
    /// "SNAT a → b".
    pub fn text(&self) -> String {
        format!("{} {} → {}", self.kind.to_uppercase(), self.from, self.to)
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
            Hop::Tc(h) => h.nat.as_deref(),
            Hop::Nf(h) => h.nat.as_deref(),
        }
    }
}

/// Every key is always present (null when unknown) except `nat`, present only where a
/// rewrite showed.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct TcHop {
    pub at_ns: u64,
    pub iface: Shared,
    pub role: Option<Text>,
    /// `ingress` or `egress`.
    pub dir: Text,
    pub src: Option<Shared>,
    pub dst: Option<Shared>,
    pub len: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nat: Option<Box<Nat>>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct NfHop {
    pub at_ns: u64,
    pub hook: Text,
    pub table: Text,
    /// `accept`, `drop`, `stolen`, `queue`…
    pub verdict: Text,
    pub src: Option<Shared>,
    pub dst: Option<Shared>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nat: Option<Box<Nat>>,
    /// The rule that gave the table's verdict (`iptables -S` text for iptables rules, nft
    /// syntax for native ones); null when the chain's policy decided (`policy` then says
    /// which) or when nothing could tell (no nftrace, or conntrack decided: only a
    /// connection's first packet walks the nat table).
    #[serde(default)]
    pub rule: Option<String>,
    /// `accept` or `drop`: the built-in chain's policy, when it decided.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<Text>,
    /// The chains the packet walked in this table, in order, from the hook's built-in chain
    /// through each jump (`FORWARD`, `DOCKER-USER`, `FORWARD`, …): a return shows as the
    /// caller again.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub chain_path: Vec<String>,
    /// How `rule`/`policy` were found: `nftrace`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule_source: Option<Text>,
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
    /// When the counters left more than one rule that fits the packet: all of them (`rule`
    /// is then null).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rule_candidates: Vec<String>,
    pub last_hop: Option<String>,
    pub place: Option<String>,
    /// `tcp` or `socket` when its socket freed it after delivery (not a network drop: not
    /// counted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub freed_by: Option<String>,
}

impl Drop {
    /// Whether it counts as a drop (TCP's own frees do not).
    pub fn counts(&self) -> bool {
        self.freed_by.is_none()
    }

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
    pub container: Option<Shared>,
    /// `out` (from the container) or `in` (to it).
    pub way: Option<Text>,
    pub proto: Option<Text>,
    pub src: Option<Shared>,
    pub dst: Option<Shared>,
    pub len: u32,
    pub tcp_flags: Option<String>,
    pub summary: Option<String>,
    /// `0xffff…`: inline (`Shared`), as it always fits.
    pub skb: Shared,
    /// A recording keeps each hop in its own block, and the packet without them.
    #[serde(default)]
    pub hops: Vec<Hop>,
    pub drop: Option<Drop>,
}

impl Packet {
    /// The tc hops, in order.
    pub fn tc_hops(&self) -> impl Iterator<Item = &TcHop> {
        self.hops.iter().filter_map(|h| match h {
            Hop::Tc(t) => Some(t),
            Hop::Nf(_) => None,
        })
    }

    /// The netfilter hops, in order.
    pub fn nf_hops(&self) -> impl Iterator<Item = &NfHop> {
        self.hops.iter().filter_map(|h| match h {
            Hop::Nf(n) => Some(n),
            Hop::Tc(_) => None,
        })
    }

    /// The first tc hop at `iface` in `dir` (`ingress`/`egress`).
    pub fn tc_hop(&self, iface: &str, dir: &str) -> Option<&TcHop> {
        self.tc_hops().find(|h| &*h.iface == iface && h.dir == dir)
    }

    /// The first netfilter hop of `table` at `hook` (`PREROUTING`…).
    pub fn nf_hop(&self, hook: &str, table: &str) -> Option<&NfHop> {
        self.nf_hops().find(|h| h.hook == hook && h.table == table)
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
    /// ICMP's echo identifier, which tells apart pings between the same two addresses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<u16>,
    pub translated: Option<String>,
    pub out: Count,
    #[serde(rename = "in")]
    pub inbound: Count,
    pub drops: u64,
    pub path_out: Vec<String>,
    pub path_in: Vec<String>,
    pub closed: bool,
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
    /// `lost` by the kind of kernel record that did not fit in the ring buffer.
    #[serde(default)]
    pub lost_by: LostBy,
    pub hops: Vec<HopLine>,
    #[serde(default)]
    pub discarded: DiscardedLine,
    /// Entries the kernel evicted from its tables to make room (it does not say so itself).
    #[serde(default)]
    pub kernel_evicted: KernelEvicted,
}

/// Kernel table entries evicted to make room: packets no longer followed (a packet still alive
/// then loses its later hops) and NAT'd flows forgotten (their later replies are in scope only
/// by address or port).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelEvicted {
    pub tracked: u64,
    pub flows: u64,
}

/// Kernel records lost, by kind: a tc hop, a netfilter observation, a packet's end (its drop
/// or free).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LostBy {
    pub tc: u64,
    pub netfilter: u64,
    pub end: u64,
}

/// A line of the model to write, borrowed: the same JSON as `Line`.
#[derive(Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
enum LineRef<'a> {
    Packet(&'a Packet),
    Flow(&'a FlowLine),
    Lost(&'a Lost),
    Counters(&'a CountersLine),
    Container(&'a ContainerNote),
    Observation(&'a Observation),
    Summary(&'a SummaryLine),
}

fn json(line: LineRef<'_>) -> String {
    // These types hold only strings, numbers and vectors of them: serialising cannot fail.
    serde_json::to_string(&line).unwrap_or_default()
}

impl Packet {
    /// The packet's JSON line.
    pub fn to_json(&self) -> String {
        let mut v = Vec::with_capacity(2048);
        // Writing to a Vec cannot fail, and what is written is UTF-8.
        let _ = self.write_json(&mut v);
        String::from_utf8(v).unwrap_or_default()
    }

    /// Writes the packet's JSON line (without its newline) straight to `w`.
    pub fn write_json(&self, w: &mut Vec<u8>) -> std::io::Result<()> {
        json::packet(w, self)
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

/// `--counters`: the kernel's per-hop counters at `time`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct CountersLine {
    #[serde(default = "version")]
    pub v: u32,
    pub time: String,
    pub hops: Vec<HopLine>,
}

impl CountersLine {
    pub fn to_json(&self) -> String {
        json(LineRef::Counters(self))
    }
}

/// A traced container stopped, started again or changed (its note is the text line).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct ContainerNote {
    #[serde(default = "version")]
    pub v: u32,
    pub container: String,
    pub note: String,
}

impl ContainerNote {
    pub fn to_json(&self) -> String {
        json(LineRef::Container(self))
    }
}

impl Line {
    /// Parses one JSON line of the contract.
    pub fn parse(s: &str) -> Result<Line, serde_json::Error> {
        serde_json::from_str(s)
    }

    /// The line's JSON, as flowtrace writes it.
    pub fn to_json(&self) -> String {
        json(match self {
            Line::Packet(p) => LineRef::Packet(p),
            Line::Flow(f) => LineRef::Flow(f),
            Line::Lost(l) => LineRef::Lost(l),
            Line::Counters(c) => LineRef::Counters(c),
            Line::Container(c) => LineRef::Container(c),
            Line::Observation(o) => LineRef::Observation(o),
            Line::Summary(s) => LineRef::Summary(s),
        })
    }

    pub fn packet(&self) -> Option<&Packet> {
        match self {
            Line::Packet(p) => Some(p),
            _ => None,
        }
    }

    pub fn flow(&self) -> Option<&FlowLine> {
        match self {
            Line::Flow(f) => Some(f),
            _ => None,
        }
    }

    pub fn summary(&self) -> Option<&SummaryLine> {
        match self {
            Line::Summary(s) => Some(s),
            _ => None,
        }
    }
}

/// `--raw`: one kernel observation as it arrived, not joined into a packet, by its `point`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Observation {
    pub time: String,
    pub ts_ns: u64,
    pub skb: String,
    #[serde(flatten)]
    pub at: ObservedAt,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(tag = "point", rename_all = "lowercase")]
pub enum ObservedAt {
    /// At a tc hook: the frame's headers there.
    Tc {
        iface: String,
        ifindex: u32,
        dir: String,
        len: u32,
        proto: Option<String>,
        src: Option<String>,
        dst: Option<String>,
        tcp_flags: Option<String>,
    },
    /// A netfilter observer's slot at a hook.
    Netfilter {
        hook: String,
        slot: u8,
        len: u32,
        src: Option<String>,
        dst: Option<String>,
    },
    /// The packet's end (`Freed`, `Dropped`…) at `location`.
    End {
        end: String,
        location: String,
        ifindex: u32,
    },
}

impl Observation {
    pub fn to_json(&self) -> String {
        json(LineRef::Observation(self))
    }

    /// The interface and direction of a tc observation.
    pub fn tc(&self) -> Option<(&str, &str)> {
        match &self.at {
            ObservedAt::Tc { iface, dir, .. } => Some((iface, dir)),
            _ => None,
        }
    }

    /// Source and destination, where the observation parsed them.
    pub fn addresses(&self) -> (Option<&str>, Option<&str>) {
        match &self.at {
            ObservedAt::Tc { src, dst, .. } | ObservedAt::Netfilter { src, dst, .. } => {
                (src.as_deref(), dst.as_deref())
            }
            ObservedAt::End { .. } => (None, None),
        }
    }
}
