//! What is drawn: a snapshot of the counted data, built on each frame (or once, when the view
//! is paused). Pure.

use super::model::Data;
use super::stats::FlowKey;

/// Counters of one direction of a path row.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Cnt {
    pub packets: u64,
    pub bytes: u64,
    pub pps: f64,
    pub bps: f64,
}

/// One row of the path diagram.
#[derive(Clone, Debug, Default)]
pub struct PathRow {
    pub name: String,
    /// "veth", "bridge", "uplink", … or the hook's tables ("nat", "raw mangle nat").
    pub kind: String,
    pub netfilter: bool,
    pub out: Option<Cnt>,
    pub inn: Option<Cnt>,
    pub drops: u64,
    pub lost: u64,
}

#[derive(Clone, Debug)]
pub struct FlowRow {
    pub key: FlowKey,
    /// What the filter matches against.
    pub line: String,
    pub packets: [u64; 2],
    pub bytes: [u64; 2],
    pub drops: u64,
    pub last_seq: u64,
    pub last_time: String,
    pub nat: Option<String>,
}

impl FlowRow {
    pub fn total_packets(&self) -> u64 {
        self.packets[0] + self.packets[1]
    }
    pub fn total_bytes(&self) -> u64 {
        self.bytes[0] + self.bytes[1]
    }
}

#[derive(Clone, Debug)]
pub struct DropRow {
    pub reason: String,
    /// "FORWARD/filter", or the kernel location for drops outside netfilter.
    pub at: String,
    pub rule: Option<String>,
    pub count: u64,
    pub last_time: String,
    pub last_seq: u64,
}

/// What is drawn: a snapshot of `Data`.
#[derive(Clone, Debug, Default)]
pub struct View {
    pub path: Vec<PathRow>,
    pub flows: Vec<FlowRow>,
    pub drops: Vec<DropRow>,
    pub packets: u64,
    pub events_per_s: f64,
    pub lost: u64,
    /// Received and not shown, so far (the summary's `discarded`).
    pub not_shown: u64,
    /// Evicted from the kernel's tables, so far (the summary's `kernel_evicted`).
    pub kernel_evicted: u64,
    pub ring_fill: Option<f32>,
    pub recording: Option<(String, u64)>,
}

fn role_rank(role: &str) -> u8 {
    match role {
        "veth" => 0,
        "bridge" => 1,
        "uplink" => 3,
        "iface" => 4,
        _ => 5,
    }
}

/// Which tc direction carries the container's outgoing traffic at an interface of this role.
fn out_dir(role: &str) -> &'static str {
    match role {
        "veth" | "bridge" => "ingress",
        _ => "egress",
    }
}

impl View {
    pub fn build(d: &Data) -> View {
        // tc rows: one per interface, both directions, in role order then first-seen order.
        let mut tc: Vec<(u8, usize, PathRow)> = Vec::new();
        for (i, h) in d.hops.iter().enumerate() {
            let pos = match tc.iter().position(|(_, _, r)| r.name == h.iface) {
                Some(p) => p,
                None => {
                    let drops = d.iface_drops.get(&h.iface).copied().unwrap_or(0);
                    let row = PathRow {
                        name: h.iface.clone(),
                        kind: h.role.clone(),
                        drops,
                        ..Default::default()
                    };
                    tc.push((role_rank(&h.role), i, row));
                    tc.len() - 1
                }
            };
            let row = &mut tc[pos].2;
            let cnt = h.counts().map(|(packets, bytes, lost)| {
                row.lost += lost;
                Cnt {
                    packets,
                    bytes,
                    pps: h.rate.pps,
                    bps: h.rate.bps,
                }
            });
            if h.direction == out_dir(&h.role) {
                row.out = cnt;
            } else {
                row.inn = cnt;
            }
        }
        tc.sort_by_key(|(rank, i, _)| (*rank, *i));
        let mut path = Vec::new();
        let mut nf_done = false;
        for (rank, _, row) in tc {
            if rank >= 2 && !nf_done {
                path.extend(hook_rows(d));
                nf_done = true;
            }
            path.push(row);
        }
        if !nf_done {
            path.extend(hook_rows(d));
        }

        let mut flows: Vec<FlowRow> = d
            .flows
            .iter()
            .map(|(k, f)| FlowRow {
                key: k.clone(),
                line: format!(
                    "{} {} ⇄ {} {} {}",
                    k.proto,
                    k.local,
                    k.remote,
                    k.container,
                    f.nat.as_deref().unwrap_or("")
                ),
                packets: f.packets,
                bytes: f.bytes,
                drops: f.drops,
                last_seq: f.last_seq,
                last_time: f.last_time.clone(),
                nat: f.nat.clone(),
            })
            .collect();
        flows.sort_by_key(|f| std::cmp::Reverse(f.last_seq));
        let mut drops: Vec<DropRow> = d
            .drops
            .values()
            .map(|x| DropRow {
                reason: x.reason.clone(),
                at: match (&x.hook, &x.table) {
                    (Some(h), Some(t)) => format!("{h}/{t}"),
                    (Some(h), None) => h.clone(),
                    _ => x.location.clone().unwrap_or_default(),
                },
                rule: x.rule.clone(),
                count: x.count,
                last_time: x.last_time.clone(),
                last_seq: x.last_seq,
            })
            .collect();
        drops.sort_by_key(|x| std::cmp::Reverse(x.last_seq));
        View {
            path,
            flows,
            drops,
            packets: d.packets - d.packets_base,
            events_per_s: d.packet_rate.pps,
            lost: d.lost.saturating_sub(d.lost_base),
            not_shown: d.not_shown,
            kernel_evicted: d.kernel_evicted,
            ring_fill: d.ring_fill,
            recording: d.recording.clone(),
        }
    }
}

fn hook_rows(d: &Data) -> impl Iterator<Item = PathRow> + '_ {
    d.hooks.values().map(|h| {
        let cnt = |w: usize| Cnt {
            packets: h.packets[w],
            bytes: h.bytes[w],
            pps: h.rate[w].pps,
            bps: h.rate[w].bps,
        };
        PathRow {
            name: h.hook.clone(),
            kind: h.tables.join(" "),
            netfilter: true,
            out: Some(cnt(0)),
            inn: Some(cnt(1)),
            drops: h.drops,
            lost: 0,
        }
    })
}
