//! Explaining a completed packet: its netfilter steps, and for a dropped packet where and why
//! it died (reason name from BTF, function from kallsyms, hook/table from the observers, rule
//! from the ruleset's counters).

use std::collections::HashMap;

use tracer_common::netfilter::hook_name;

use super::{
    packet::{Packet, Points},
    verdict::{self, NfStep, Verdict},
};
use crate::{
    events::decode::EndKind,
    target::{
        rule_match::{fits, Fit, Seen},
        ruleset::Ruleset,
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
    /// socket queue purged at close, QUEUE_PURGE, after the packet was delivered into the
    /// container). Shown, never counted.
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
    /// The ruleset as last read, and how to read it again (None: no iptables).
    pub ruleset: Option<Ruleset>,
    pub reread: Box<dyn Fn() -> Option<Ruleset> + Send>,
    /// Counted drops not yet claimed by a packet (see `rule_for`).
    unclaimed: Vec<Unclaimed>,
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
            reread: Box::new(|| None),
            unclaimed: Vec::new(),
        }
    }

    fn reason_name(&self, reason: u32) -> String {
        self.reasons
            .get(&reason)
            .map(|n| n.trim_start_matches("SKB_DROP_REASON_").to_owned())
            .unwrap_or_else(|| format!("reason {reason}"))
    }

    pub fn explain(&mut self, packet: Packet, points: &Points) -> Explained {
        let mut steps = {
            let rs = self.ruleset.as_ref();
            verdict::steps(&packet, &|hook| {
                rs.map(|r| r.tables_at(hook)).unwrap_or_default()
            })
        };
        let drop = match packet.end.as_ref().map(|e| (e, e.kind)) {
            // Freed in a namespace that is neither the host's nor a traced container's: the
            // packet had left the traced path (e.g. delivered to the far end of a veth).
            Some((end, EndKind::Drop { .. })) if self.off_path(end.netns) => None,
            Some((end, EndKind::Drop { reason })) => {
                let found = match steps.iter_mut().find(|s| s.verdict == Verdict::Drop) {
                    Some(s) => {
                        let seen = seen_at(&packet, s, points);
                        let a = self.rule_for(&s.table, s.hook, &seen);
                        // Observers that cannot tell the hook's tables apart (nf_hook_slow)
                        // blame its first table; the counters name the one that dropped.
                        if let Some(t) = a.table.clone() {
                            s.table = t;
                        }
                        a
                    }
                    None => Attribution::default(),
                };
                let nf_drop = steps.iter().find(|s| s.verdict == Verdict::Drop);
                let last_hop = packet.hops.last().map(|h| {
                    let name = points
                        .get(&h.ifindex)
                        .map_or_else(|| format!("if{}", h.ifindex), |p| p.name.clone());
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
                    table: nf_drop.map(|s| s.table.clone()),
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
    fn rule_for(&mut self, table: &str, hook: u8, seen: &Seen) -> Attribution {
        let Some(now) = (self.reread)() else {
            return Attribution::default();
        };
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
        self.ruleset = Some(now);
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

/// Did the packet last leave by a veth's egress, into its container?
fn delivered(p: &Packet, points: &Points) -> bool {
    p.hops.last().is_some_and(|h| {
        h.direction == tracer_common::Direction::Egress
            && points
                .get(&h.ifindex)
                .is_some_and(|x| x.role == crate::target::topology::Role::Veth)
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
    let name = |i: u32| points.get(&i).map(|x| x.name.clone());
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
mod tests {
    use super::*;
    use crate::{
        correlate::packet::tests::{frame, points},
        events::{
            decode::{EndObservation, NfObservation},
            packet::parse_ethernet,
        },
    };

    const RULE: &str = "-A DOCKER-USER -d 198.51.100.2/32 -p tcp -m tcp --dport 8080 -j DROP";
    const BEFORE: &str = "*filter\n:FORWARD DROP [0:0]\n[0:0] -A FORWARD -j DOCKER-USER\n[0:0] -A DOCKER-USER -d 198.51.100.2/32 -p tcp -m tcp --dport 8080 -j DROP\nCOMMIT\n";

    /// A FORWARD packet seen at `slots` (one observation each) and then dropped at `location`.
    fn dropped_in_forward(slots: &[u8], location: u64) -> Packet {
        let f = frame([172, 18, 0, 2], 41234);
        let nf = slots
            .iter()
            .map(|&slot| NfObservation {
                ts_ns: 10 + u64::from(slot),
                skb: 1,
                hook: 2,
                pf: 2,
                slot,
                in_ifindex: 0,
                out_ifindex: 0,
                len: 60,
                mark: 0,
                headers: parse_ethernet(&f),
                bytes: f[14..].to_vec(),
            })
            .collect();
        Packet {
            skb: 1,
            owner: None,
            hops: Vec::new(),
            nf,
            end: Some(EndObservation {
                ts_ns: 20,
                skb: 1,
                kind: EndKind::Drop { reason: 12 },
                location,
                ifindex: 0,
                netns: 0,
            }),
        }
    }

    /// An explainer whose ruleset is `save` now, and `save` with every rule's counter moved
    /// from [0:0] to [1:60] when read again.
    fn with_counters_moving(save: &'static str) -> Explainer {
        let mut ex = Explainer::empty();
        ex.ruleset = Some(Ruleset::parse(save, "iptables-save"));
        ex.reread = Box::new(move || {
            Some(Ruleset::parse(
                &save.replace("[0:0] -A", "[1:60] -A"),
                "iptables-save",
            ))
        });
        ex
    }

    #[test]
    fn a_netfilter_drop_names_reason_hook_table_and_rule() {
        let packet = dropped_in_forward(&[0, 1, 2, 3, 4], 0xabc);
        let mut ex = with_counters_moving(BEFORE);
        ex.reasons
            .insert(12, "SKB_DROP_REASON_NETFILTER_DROP".into());
        ex.symbol = Box::new(|a| (a == 0xabc).then(|| "nf_hook_slow".to_owned()));
        let e = ex.explain(packet, &points());
        let d = e.drop.expect("dropped");
        assert_eq!(d.reason, "NETFILTER_DROP");
        assert_eq!(d.location.as_deref(), Some("nf_hook_slow"));
        assert_eq!(d.hook, Some("FORWARD"));
        assert_eq!(d.table.as_deref(), Some("filter"));
        assert_eq!(d.rule.as_deref(), Some(RULE));
        assert_eq!(d.rule_source.as_deref(), Some("iptables-save -c counters"));
    }

    /// A noisy firewall: while the container's packet is dropped in DOCKER-USER, the
    /// internet's knocks are dropped in INPUT and another DOCKER-USER rule drops other
    /// traffic. Only the rule that fits the packet and can meet it at FORWARD is named.
    #[test]
    fn of_the_rules_whose_counters_moved_only_one_that_fits_is_named() {
        const BUSY: &str = "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD DROP [0:0]\n\
            [0:0] -A INPUT -i ftlab-up -p tcp -m tcp --dport 7999 -j DROP\n\
            [0:0] -A FORWARD -j DOCKER-USER\n\
            [0:0] -A DOCKER-USER -p udp -m udp --dport 5353 -j DROP\n\
            [0:0] -A DOCKER-USER -d 198.51.100.2/32 -p tcp -m tcp --dport 8080 -j DROP\n\
            COMMIT\n";
        let mut ex = with_counters_moving(BUSY);
        let d = ex
            .explain(dropped_in_forward(&[0, 1, 2, 3, 4], 0), &points())
            .drop
            .expect("dropped");
        assert_eq!(d.rule.as_deref(), Some(RULE));
        assert!(d.candidates.is_empty());
    }

    /// Two drops by one rule, the counters read once for both (the first packet's read saw
    /// the second's drop too): each packet claims one, none is left unnamed.
    #[test]
    fn a_read_that_saw_two_drops_names_both_packets() {
        let mut ex = Explainer::empty();
        ex.ruleset = Some(Ruleset::parse(BEFORE, "iptables-save"));
        ex.reread = Box::new(|| {
            Some(Ruleset::parse(
                &BEFORE.replace("[0:0] -A", "[2:120] -A"),
                "iptables-save",
            ))
        });
        for n in 1..=2 {
            let d = ex
                .explain(dropped_in_forward(&[0, 1, 2, 3, 4], 0), &points())
                .drop
                .expect("dropped");
            assert_eq!(d.rule.as_deref(), Some(RULE), "packet {n}");
        }
        let d = ex
            .explain(dropped_in_forward(&[0, 1, 2, 3, 4], 0), &points())
            .drop
            .expect("dropped");
        assert_eq!(d.rule, None, "a third drop the counters never showed");
    }

    #[test]
    fn two_rules_that_both_fit_are_ambiguous_not_guessed() {
        const TWO_FIT: &str = "*filter\n:FORWARD DROP [0:0]\n\
            [0:0] -A FORWARD -j DOCKER-USER\n\
            [0:0] -A DOCKER-USER -s 172.18.0.0/16 -j DROP\n\
            [0:0] -A DOCKER-USER -d 198.51.100.2/32 -p tcp -m tcp --dport 8080 -j DROP\n\
            COMMIT\n";
        let mut ex = with_counters_moving(TWO_FIT);
        let d = ex
            .explain(dropped_in_forward(&[0, 1, 2, 3, 4], 0), &points())
            .drop
            .expect("dropped");
        assert_eq!(d.rule, None);
        assert_eq!(d.candidates.len(), 2, "{d:?}");
        assert!(
            d.rule_source
                .as_deref()
                .is_some_and(|s| s.contains("ambiguous")),
            "{d:?}"
        );
    }

    #[test]
    fn drops_off_the_traced_path_are_not_drops() {
        let mut ex = Explainer::empty();
        ex.host_netns = 100;
        ex.netns_names.insert(200, "ens_monitor_cron".into());
        let dropped_in = |netns| Packet {
            skb: 1,
            owner: None,
            hops: Vec::new(),
            nf: Vec::new(),
            end: Some(EndObservation {
                ts_ns: 1,
                skb: 1,
                kind: EndKind::Drop { reason: 2 },
                location: 0,
                ifindex: 0,
                netns,
            }),
        };
        assert!(
            ex.explain(dropped_in(100), &points()).drop.is_some(),
            "on the host"
        );
        let inside = ex
            .explain(dropped_in(200), &points())
            .drop
            .expect("in a traced container");
        assert_eq!(inside.place.as_deref(), Some("inside ens_monitor_cron"));
        assert!(
            ex.explain(dropped_in(300), &points()).drop.is_none(),
            "somewhere else"
        );
    }

    /// A pure ACK that TCP consumed and freed: shown with its raw reason, never a drop.
    #[test]
    fn tcps_own_frees_are_told_apart_from_drops() {
        let freed_at = |location: u64, reason: u32| Packet {
            skb: 1,
            owner: None,
            hops: Vec::new(),
            nf: Vec::new(),
            end: Some(EndObservation {
                ts_ns: 1,
                skb: 1,
                kind: EndKind::Drop { reason },
                location,
                ifindex: 0,
                netns: 0,
            }),
        };
        let mut ex = Explainer::empty();
        ex.reasons.insert(2, "SKB_DROP_REASON_NOT_SPECIFIED".into());
        ex.reasons.insert(3, "SKB_DROP_REASON_NO_SOCKET".into());
        ex.symbol = Box::new(|a| {
            Some(match a {
                1 => "tcp_rcv_state_process".to_owned(),
                _ => "tcp_v4_rcv".to_owned(),
            })
        });
        let d = ex.explain(freed_at(1, 2), &points()).drop.expect("shown");
        assert!(d.freed_by == Some("tcp") && !d.counts());
        assert_eq!(d.reason, "NOT_SPECIFIED", "the raw reason is kept");
        for (loc, reason) in [(2, 2), (1, 3)] {
            let d = ex
                .explain(freed_at(loc, reason), &points())
                .drop
                .expect("a drop");
            assert!(d.counts(), "{d:?}");
        }
        // A socket queue purged at close, after delivery into the container: its socket's.
        ex.reasons.insert(4, "SKB_DROP_REASON_QUEUE_PURGE".into());
        let mut delivered = freed_at(2, 4);
        delivered.hops.push(crate::correlate::packet::Hop {
            ts_ns: 0,
            ifindex: crate::correlate::packet::tests::VETH,
            direction: tracer_common::Direction::Egress,
            len: 60,
            headers: None,
            bytes: Vec::new(),
            nat: Vec::new(),
        });
        let d = ex.explain(delivered, &points()).drop.expect("shown");
        assert_eq!(d.freed_by, Some("socket"));
        let purged_on_the_way = ex.explain(freed_at(2, 4), &points()).drop.expect("a drop");
        assert!(purged_on_the_way.counts(), "not delivered: a loss");
    }

    #[test]
    fn a_packet_that_was_not_dropped_has_no_drop() {
        let mut ex = Explainer::empty();
        let packet = Packet {
            skb: 1,
            owner: None,
            hops: Vec::new(),
            nf: Vec::new(),
            end: None,
        };
        assert!(ex.explain(packet, &points()).drop.is_none());
    }

    #[test]
    fn hook_level_observers_let_the_counters_name_the_table() {
        // nf_hook_slow sees FORWARD's entry (slot 0) and nothing after: mangle runs first,
        // so the steps blame it; the filter rule's counter moved, so filter it is.
        const TWO: &str =
            "*mangle\n:FORWARD ACCEPT [0:0]\nCOMMIT\n*filter\n:FORWARD ACCEPT [0:0]\n\
                           [0:0] -A FORWARD -p tcp -m tcp --dport 8080 -j DROP\nCOMMIT\n";
        let packet = dropped_in_forward(&[0], 0);
        let mut ex = with_counters_moving(TWO);
        let e = ex.explain(packet, &points());
        let d = e.drop.expect("dropped");
        assert_eq!(
            (d.hook, d.table.as_deref()),
            (Some("FORWARD"), Some("filter"))
        );
        assert_eq!(
            d.rule.as_deref(),
            Some("-A FORWARD -p tcp -m tcp --dport 8080 -j DROP")
        );
        let drop_step = e
            .steps
            .iter()
            .find(|s| s.verdict == Verdict::Drop)
            .expect("step");
        assert_eq!(drop_step.table, "filter", "the hop says the same");
    }
}
