//! Explaining a completed packet: its netfilter steps, and for a dropped packet where and why
//! it died (reason name from BTF, function from kallsyms, hook/table from the observers, rule
//! from the ruleset's counters).

use std::collections::HashMap;

use tracer_common::netfilter::hook_name;

use super::{
    decisions::Decisions,
    packet::{Packet, Points},
    traversal::ip_key,
    verdict::{self, Decided, NfStep, Verdict},
};
use crate::{
    events::decode::EndKind,
    target::{
        rule_match::{fits, Fit, Seen},
        ruleset::Ruleset,
        ruleset_reads::{Inline, Reads},
    },
};

/// The rule named for a drop, how, and what else it could have been.
#[derive(Default)]
struct Attribution {
    rule: Option<String>,
    source: Option<String>,
    /// Set when another table at the hook is the one whose counters moved.
    table: Option<String>,
    candidates: Vec<String>,
}

/// Where and why a packet died.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DropInfo {
    /// `enum skb_drop_reason` name without its prefix, e.g. `NETFILTER_DROP`.
    pub reason: String,
    /// The kernel function that freed it, e.g. `nf_hook_slow`.
    pub location: Option<String>,
    pub hook: Option<&'static str>,
    pub table: Option<String>,
    /// The rule, as `iptables -S` prints it.
    pub rule: Option<String>,
    /// How the rule was found.
    pub rule_source: Option<String>,
    /// When the counters cannot tell which of several rules it was: all of them (and `rule`
    /// is None).
    pub candidates: Vec<String>,
    /// The last point that saw the packet alive.
    pub last_hop: Option<String>,
    /// Not a network drop: what freed it after delivery (`tcp`: its socket's state machine
    /// consumed a pure ACK or FIN, `tcp_rcv_state_process` with NOT_SPECIFIED; `socket`: a
    /// socket queue purged at close, QUEUE_PURGE, after a veth delivered the packet into
    /// another namespace on this host). Shown, never counted.
    pub freed_by: Option<&'static str>,
    /// Where the drop happened when not on the host, e.g. `netns of ens_monitor_cron`.
    pub place: Option<String>,
}

/// A packet with everything known about it.
#[derive(Clone, Debug)]
pub struct Explained {
    pub packet: Packet,
    pub steps: Vec<NfStep>,
    pub drop: Option<DropInfo>,
}

/// What explaining needs from the host: reason names, symbols, the ruleset.
pub struct Explainer {
    pub reasons: HashMap<u32, String>,
    pub symbol: Box<dyn Fn(u64) -> Option<String> + Send>,
    /// Namespace inode → a name for it (a traced container's).
    pub netns_names: HashMap<u32, String>,
    pub host_netns: u32,
    /// The ruleset as last read (None: no iptables), when that reading started, and where
    /// the next readings come from (off the event loop).
    ruleset: Option<Ruleset>,
    pub read_ns: u64,
    pub reads: Box<dyn Reads>,
    /// When the reading that the oldest waiting drop needs was asked for.
    asked: Option<std::time::Instant>,
    /// Counted drops not yet claimed by a packet (see `rule_for`).
    unclaimed: Vec<Unclaimed>,
    /// What nftrace said of each table's work, when it runs.
    pub decisions: Option<Decisions>,
    /// `ruleset`'s tables at each hook (computed once per reading, not per packet).
    hook_tables: Vec<Vec<(String, i32)>>,
    /// Which netfilter slots observe at each hook, a bit per slot (all until told).
    pub linked: [u8; 5],
}

impl Explainer {
    /// An explainer that knows nothing of the host (for tests and `--iface` without tools).
    pub fn empty() -> Self {
        Self {
            reasons: HashMap::new(),
            symbol: Box::new(|_| None),
            netns_names: HashMap::new(),
            host_netns: 0,
            ruleset: None,
            read_ns: 0,
            reads: Box::new(Inline::new(|| None)),
            asked: None,
            unclaimed: Vec::new(),
            decisions: None,
            hook_tables: Vec::new(),
            linked: [0xff; 5],
        }
    }

    /// A new reading of the ruleset, with its tables at each hook.
    pub fn set_ruleset(&mut self, now: Ruleset) {
        self.hook_tables = (0..tracer_common::netfilter::HOOK_NAMES.len() as u8)
            .map(|h| now.tables_at(h))
            .collect();
        self.ruleset = Some(now);
    }

    fn reason_name(&self, reason: u32) -> String {
        self.reasons
            .get(&reason)
            .map(|n| n.trim_start_matches("SKB_DROP_REASON_").to_owned())
            .unwrap_or_else(|| format!("reason {reason}"))
    }

    pub fn explain(&mut self, packet: Packet, points: &Points) -> Explained {
        let netfilter_drop = packet.end.as_ref().is_some_and(|e| {
            matches!(e.kind, EndKind::Drop { reason } if self.reason_name(reason) == "NETFILTER_DROP")
        });
        let mut steps = {
            let tables = &self.hook_tables;
            let at = |hook: u8| tables.get(usize::from(hook)).map_or(&[][..], Vec::as_slice);
            verdict::steps(&packet, &at, &self.linked, netfilter_drop)
        };
        if let Some(ds) = self.decisions.as_mut() {
            join_decisions(ds, &packet, &mut steps);
        }
        let drop = match packet.end.as_ref().map(|e| (e, e.kind)) {
            // Freed in a namespace that is neither the host's nor a traced container's: the
            // packet had left the traced path (e.g. delivered to the far end of a veth).
            Some((end, EndKind::Drop { .. })) if self.off_path(end.netns) => None,
            Some((end, EndKind::Drop { reason })) => {
                let found = match steps.iter_mut().find(|s| s.verdict == Verdict::Drop) {
                    Some(s) if s.decided.is_some() => traced(s),
                    Some(s) => {
                        let seen = seen_at(&packet, s, points);
                        let a = self.rule_for(&s.table, s.hook, &seen, end.ts_ns);
                        // Observers that cannot tell the hook's tables apart (nf_hook_slow)
                        // blame its first table; the counters name the one that dropped.
                        if let Some(t) = a.table.clone() {
                            s.table = verdict::table_text(&t);
                        }
                        a
                    }
                    None => Attribution::default(),
                };
                let nf_drop = steps.iter().find(|s| s.verdict == Verdict::Drop);
                let last_hop = packet.hops.last().map(|h| {
                    let name = points
                        .get(&h.ifindex)
                        .map_or_else(|| format!("if{}", h.ifindex), |p| p.name.to_string());
                    format!("{name} tc {}", h.direction.as_str())
                });
                let place = (end.netns != 0 && end.netns != self.host_netns).then(|| {
                    self.netns_names
                        .get(&end.netns)
                        .map_or_else(|| format!("netns {}", end.netns), |c| format!("inside {c}"))
                });
                let (reason, location) = (self.reason_name(reason), (self.symbol)(end.location));
                Some(DropInfo {
                    freed_by: freed_by(&reason, location.as_deref(), delivered(&packet, points)),
                    reason,
                    location,
                    hook: nf_drop.map(|s| hook_name(s.hook)),
                    table: nf_drop.map(|s| s.table.to_string()),
                    rule: found.rule,
                    rule_source: found.source,
                    candidates: found.candidates,
                    last_hop,
                    place,
                })
            }
            _ => None,
        };
        Explained {
            packet,
            steps,
            drop,
        }
    }

    /// Takes in the readings that arrived: each one's counter movements since the one before
    /// join the pool of unclaimed drops.
    fn absorb(&mut self) {
        while let Some(snap) = self.reads.poll() {
            self.read_ns = self.read_ns.max(snap.started_ns);
            self.asked = None;
            let Some(now) = snap.ruleset else { continue };
            let read_at = std::time::Instant::now();
            if let Some(before) = self.ruleset.as_ref() {
                for t in now.tables.keys() {
                    for (text, source, n) in now.moved(before, t) {
                        self.unclaimed.push(Unclaimed {
                            table: t.clone(),
                            text,
                            source,
                            count: n,
                            read_at,
                        });
                    }
                }
            }
            self.set_ruleset(now);
        }
    }

    /// The CLOCK_MONOTONIC time up to which nftrace's decisions have all arrived (0: none,
    /// or no nftrace).
    pub fn traced_until(&self) -> u64 {
        self.decisions.as_ref().map_or(0, |d| d.resolved_until())
    }

    /// A packet waits until [`Self::traced_until`] reaches `t`: the trace reader is asked to
    /// read that far.
    pub fn want_traced(&self, t: u64) {
        if let Some(d) = &self.decisions {
            d.want(t);
        }
    }

    /// Whether `p` can be explained now: a netfilter drop that nftrace did not trace waits
    /// for a reading of the counters that started after it (asked for here, made off the
    /// event loop), or for [`READING_WAIT`] at most.
    pub fn ready_for(&mut self, p: &Packet) -> bool {
        let Some(end) = p.end.as_ref() else {
            return true;
        };
        let EndKind::Drop { reason } = end.kind else {
            return true;
        };
        if self.reason_name(reason) != "NETFILTER_DROP" || self.ruleset.is_none() {
            return true;
        }
        if let Some(ds) = self.decisions.as_mut() {
            let fps: Vec<u64> =
                p.nf.iter()
                    .filter_map(|n| ip_key(&n.bytes).map(|(_, fp)| fp))
                    .collect();
            if ds.has_drop(&fps) {
                return true;
            }
        }
        self.absorb();
        if self.read_ns >= end.ts_ns {
            return true;
        }
        match self.asked {
            None => {
                self.reads.request();
                self.asked = Some(std::time::Instant::now());
                self.absorb();
                self.read_ns >= end.ts_ns
            }
            Some(at) => at.elapsed() > READING_WAIT,
        }
    }

    fn off_path(&self, netns: u32) -> bool {
        netns != 0
            && self.host_netns != 0
            && netns != self.host_netns
            && !self.netns_names.contains_key(&netns)
    }

    /// The rule that dropped a packet at `table`/`hook`, from counters. Each read adds the
    /// rules' movements to a pool of unclaimed drops (a busy host's other drops move counters
    /// too, and a read for one packet may see another's); a packet claims one from a rule that
    /// can meet it at this hook and whose matches fit it, in `table`, else in another table at
    /// the same hook (then that table is returned too). More than one such rule is said to be
    /// ambiguous, never guessed.
    fn rule_for(&mut self, table: &str, hook: u8, seen: &Seen, dropped_ns: u64) -> Attribution {
        if self.read_ns < dropped_ns {
            // Not asked for by the pipeline (see `ready_for`): a reading on the spot where
            // readings are inline, else whatever has arrived.
            self.reads.request();
        }
        self.absorb();
        let Some(now) = self.ruleset.take() else {
            return Attribution::default();
        };
        let read_at = std::time::Instant::now();
        self.unclaimed
            .retain(|u| u.count > 0 && read_at.duration_since(u.read_at) < UNCLAIMED_FOR);
        let candidates = |t: &str| -> Vec<usize> {
            let mut idx: Vec<usize> = (0..self.unclaimed.len())
                .filter(|&i| {
                    let u = &self.unclaimed[i];
                    u.table == t && now.can_meet(t, hook, &u.text) && fits(&u.text, seen) != Fit::No
                })
                .collect();
            // One per rule (a rule may have moved at several reads): its oldest.
            let mut seen_texts = Vec::new();
            idx.retain(|&i| {
                let t = &self.unclaimed[i].text;
                let new = !seen_texts.contains(t);
                seen_texts.push(t.clone());
                new
            });
            idx
        };
        let (found, moved_table) = {
            let here = candidates(table);
            if here.is_empty() {
                now.tables_at(hook)
                    .into_iter()
                    .filter(|(t, _)| t != table)
                    .map(|(t, _)| (candidates(&t), t))
                    .find(|(c, _)| !c.is_empty())
                    .map_or((Vec::new(), None), |(c, t)| (c, Some(t)))
            } else {
                (here, None)
            }
        };
        self.set_ruleset(now);
        let counters = |source: &str| match source {
            "nft list ruleset" => "nft list ruleset counters".to_owned(),
            s => format!("{s} -c counters"),
        };
        match found.as_slice() {
            [] => Attribution::default(),
            [one] => {
                let u = &mut self.unclaimed[*one];
                u.count -= 1;
                Attribution {
                    rule: Some(u.text.clone()),
                    source: Some(counters(u.source)),
                    table: moved_table,
                    candidates: Vec::new(),
                }
            }
            [first, ..] => Attribution {
                rule: None,
                source: Some(format!(
                    "{}: ambiguous, {} rules that fit the packet moved",
                    counters(self.unclaimed[*first].source),
                    found.len()
                )),
                table: moved_table,
                candidates: found
                    .iter()
                    .map(|&i| self.unclaimed[i].text.clone())
                    .collect(),
            },
        }
    }
}

/// Gives each step the decision nftrace traced for its table on this packet (joined by the
/// fingerprint NAT leaves alone). A drop that the observers put in one table and nftrace in
/// another of the same hook (hook-level observers cannot tell tables apart, and a drop the
/// CPU did not note is put after the last slot that reported) moves there. A drop step takes
/// only nftrace's drop: a table's accept is never given to it (without a traced drop, the
/// counters name the rule).
fn join_decisions(ds: &mut Decisions, p: &Packet, steps: &mut [NfStep]) {
    for s in steps.iter_mut() {
        let Some((key, fp)) = ip_key(s.bytes(p)) else {
            continue;
        };
        let d = match s.verdict {
            Verdict::Drop => ds.take_drop(s.hook, fp, key.proto),
            Verdict::Accept => ds.take(s.hook, &s.table, fp, key.proto),
        };
        if let Some(d) = d {
            if s.verdict == Verdict::Drop && d.verdict == "drop" {
                s.table = verdict::table_text(&d.table);
            }
            s.decided = Some(Decided {
                rule: d.rule,
                policy: d.policy,
                chain_path: d.chain_path,
            });
        }
    }
}

/// A drop's rule as nftrace named it (a policy as `-P CHAIN DROP`, as iptables -S prints it).
fn traced(s: &NfStep) -> Attribution {
    let Some(d) = s.decided.as_ref() else {
        return Attribution::default();
    };
    let rule = d.rule.as_deref().map(str::to_owned).or_else(|| {
        d.policy
            .filter(|p| *p == "drop")
            .and(d.chain_path.first())
            .map(|c| format!("-P {c} DROP"))
    });
    Attribution {
        source: rule.as_ref().map(|_| "nftrace".to_owned()),
        rule,
        table: None,
        candidates: Vec::new(),
    }
}

/// How long a drop waits for a reading of the counters before it is shown without one.
const READING_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// How long a rule's counted drops wait to be claimed by the packets flowtrace explains
/// (a packet is explained well within a second of its drop).
const UNCLAIMED_FOR: std::time::Duration = std::time::Duration::from_secs(3);

/// Drops a rule's counters showed that no explained packet has claimed yet.
struct Unclaimed {
    table: String,
    text: String,
    source: &'static str,
    count: u64,
    read_at: std::time::Instant,
}

/// The evidence that a socket, not the network, freed a packet: TCP's state machine frees the
/// segments it consumed (pure ACKs, FINs) with no reason given; a socket's queue is purged at
/// close with the packets it still held.
fn freed_by(reason: &str, location: Option<&str>, delivered: bool) -> Option<&'static str> {
    match reason {
        "NOT_SPECIFIED" if location.is_some_and(|l| l.starts_with("tcp_rcv_state_process")) => {
            Some("tcp")
        }
        "QUEUE_PURGE" if delivered => Some("socket"),
        _ => None,
    }
}

/// Did the packet last leave by a veth's egress, into another namespace on this host? A
/// traced container's veth, a neighbour's, or an uplink that is a veth (as the lab's is):
/// a socket over there may still hold it. Leaving by a physical uplink hands it to the wire,
/// so a purge after that (a qdisc reset) stays a loss.
fn delivered(p: &Packet, points: &Points) -> bool {
    p.hops.last().is_some_and(|h| {
        h.direction == tracer_common::Direction::Egress
            && points.get(&h.ifindex).is_some_and(|x| x.veth)
    })
}

impl DropInfo {
    /// Whether it counts as a drop (in the summary, the flows and the dashboard).
    pub fn counts(&self) -> bool {
        self.freed_by.is_none()
    }
}

/// The packet as the rules at its drop saw it: its headers before the dropping table, and
/// the interfaces netfilter gave for that hook (named if flowtrace attached to them).
fn seen_at(p: &Packet, s: &NfStep, points: &Points) -> Seen {
    let h = s.headers;
    let ifs = p.nf.iter().find(|n| n.hook == s.hook);
    let name = |i: u32| points.get(&i).map(|x| x.name.to_string());
    Seen {
        src: h.map(|h| h.src),
        dst: h.map(|h| h.dst),
        proto: h.map(|h| h.proto.number()),
        sport: h.and_then(|h| h.ports()).map(|(s, _)| s),
        dport: h.and_then(|h| h.ports()).map(|(_, d)| d),
        iif: ifs.and_then(|n| name(n.in_ifindex)),
        oif: ifs.and_then(|n| name(n.out_ifindex)),
    }
}

#[cfg(test)]
mod tests;
