//! From what the netfilter observers saw to what each table did. The observers sit at
//! priorities bracketing the tables (tracer_common::netfilter): a table the packet got past
//! accepted it; the table between the last slot that saw a packet and the next one dropped it,
//! when the kernel then reports a drop; headers that differ across a table were rewritten by it.

use std::borrow::Cow;

use tracer_common::netfilter::{table_after, SLOT_PRIORITIES};

use super::{
    nat::{self, NatRewrite},
    packet::Packet,
};
use crate::events::{decode::EndKind, packet::Headers};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Accept,
    Drop,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Accept => "accept",
            Self::Drop => "drop",
        }
    }
}

/// One table's work on a packet at one hook.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NfStep {
    pub ts_ns: u64,
    pub hook: u8,
    pub table: String,
    pub verdict: Verdict,
    pub nat: Vec<NatRewrite>,
    /// The packet's headers after this table (as the next slot saw them).
    pub headers: Option<Headers>,
    /// The captured bytes (from the IP header) at that slot.
    pub bytes: Vec<u8>,
    /// What nftrace said the table did (None: no nftrace, or no walk joined).
    pub decided: Option<Decided>,
}

/// The rule (or policy) that gave a table's verdict, and the chains walked, from nftrace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decided {
    /// The rule's text, shared with the rule texts' copy (`RuleTexts::shared_rule`).
    pub rule: Option<std::sync::Arc<str>>,
    pub policy: Option<&'static str>,
    pub chain_path: Vec<String>,
}

fn slot_after(priority: i32) -> usize {
    SLOT_PRIORITIES.partition_point(|p| *p < priority)
}

/// What the observers at one hook saw: the first sighting at each slot (time, headers, bytes).
/// An array, not a map: a packet has a few sightings a hook, and this runs for every packet.
type Seen<'a> = (u64, Option<Headers>, &'a [u8]);
type Slots<'a> = [Option<Seen<'a>>; SLOT_PRIORITIES.len()];

/// The last slot before `b` that saw the packet.
fn seen_before<'a>(seen: &Slots<'a>, b: usize) -> Option<Seen<'a>> {
    seen[..b.min(seen.len())].iter().rev().find_map(|x| *x)
}

/// The first slot from `b` on that saw the packet, with its index.
fn seen_from<'a>(seen: &Slots<'a>, b: usize) -> Option<(usize, Seen<'a>)> {
    (b..seen.len()).find_map(|i| seen[i].map(|x| (i, x)))
}

/// Where no ruleset says which tables a hook has: the tables between the slots where the
/// headers changed or the packet stopped.
fn tables_from_slots(seen: &Slots<'_>) -> Vec<(String, i32)> {
    (0..SLOT_PRIORITIES.len() - 1)
        .filter(|&a| match (seen[a], seen[a + 1]) {
            (Some((_, hx, _)), Some((_, hy, _))) => hx != hy,
            (Some(_), None) => seen_from(seen, a + 1).is_none(),
            _ => false,
        })
        .filter_map(|a| {
            table_after(a as u8).map(|t| {
                (
                    t.to_owned(),
                    (SLOT_PRIORITIES[a] + SLOT_PRIORITIES[a + 1]) / 2,
                )
            })
        })
        .collect()
}

/// The netfilter steps of a packet, in time order. `tables_at(hook)` lists the tables registered
/// at a hook with their priorities (from the ruleset); where it lists none, tables are named
/// by the slot positions where headers changed or the packet stopped.
pub fn steps<T: AsRef<[(String, i32)]>>(p: &Packet, tables_at: &dyn Fn(u8) -> T) -> Vec<NfStep> {
    // (hook, its first sighting's time, what each slot saw first), by hook.
    let mut hooks: Vec<(u8, u64, Slots<'_>)> = Vec::with_capacity(3);
    for n in &p.nf {
        let Some(slot) = Some(usize::from(n.slot)).filter(|s| *s < SLOT_PRIORITIES.len()) else {
            continue; // the kernel's observers have no such slot
        };
        let at = match hooks.iter().position(|h| h.0 == n.hook) {
            Some(at) => at,
            None => {
                hooks.push((n.hook, n.ts_ns, [None; SLOT_PRIORITIES.len()]));
                hooks.len() - 1
            }
        };
        hooks[at].2[slot].get_or_insert((n.ts_ns, n.headers, &n.bytes));
    }
    hooks.sort_by_key(|h| h.0);
    let dropped = matches!(p.end.as_ref().map(|e| e.kind), Some(EndKind::Drop { .. }));
    let last_hook = hooks.iter().max_by_key(|h| h.1).map(|h| h.0);
    let mut out = Vec::new();
    for (hook, _, seen) in &hooks {
        let (hook, seen) = (*hook, seen);
        let given = tables_at(hook);
        let tables: Cow<'_, [(String, i32)]> = match given.as_ref() {
            [] => Cow::Owned(tables_from_slots(seen)),
            listed => Cow::Borrowed(listed),
        };
        // Tables whose first observation after them is the same slot share one window: with
        // hook-level observers (nf_hook_slow) that is every table of the hook. The window's
        // rewrite goes to its nat table if it has one, else to its first table.
        let mut i = 0;
        while i < tables.len() {
            let b = slot_after(tables[i].1);
            if b == 0 || b >= SLOT_PRIORITIES.len() {
                i += 1;
                continue;
            }
            let before = seen_before(seen, b);
            match seen_from(seen, b) {
                Some((a_slot, (ts, after, bytes))) => {
                    let width = tables[i..]
                        .iter()
                        .take_while(|(_, p)| (b..=a_slot).contains(&slot_after(*p)))
                        .count()
                        .max(1);
                    let window = &tables[i..i + width];
                    let rewrites = match (before.and_then(|v| v.1), after) {
                        (Some(x), Some(y)) => nat::rewrites(&x, &y),
                        _ => Vec::new(),
                    };
                    let nat_at = window.iter().position(|(t, _)| t == "nat").unwrap_or(0);
                    for (k, (table, _)) in window.iter().enumerate() {
                        out.push(NfStep {
                            ts_ns: ts,
                            hook,
                            table: table.clone(),
                            verdict: Verdict::Accept,
                            nat: if k == nat_at {
                                rewrites.clone()
                            } else {
                                Vec::new()
                            },
                            headers: after,
                            bytes: bytes.to_vec(),
                            decided: None,
                        });
                    }
                    i += width;
                }
                None => {
                    if let (Some((ts, h, bytes)), true, true) =
                        (before, dropped, Some(hook) == last_hook)
                    {
                        out.push(NfStep {
                            ts_ns: p.end.as_ref().map_or(ts, |e| e.ts_ns.max(ts)),
                            hook,
                            table: tables[i].0.clone(),
                            verdict: Verdict::Drop,
                            nat: Vec::new(),
                            headers: h,
                            bytes: bytes.to_vec(),
                            decided: None,
                        });
                    }
                    break;
                }
            }
        }
    }
    out.sort_by_key(|s| s.ts_ns);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        correlate::packet::tests::frame,
        events::{
            decode::{EndObservation, NfObservation},
            packet::parse_ethernet,
        },
    };

    fn nf(ts: u64, hook: u8, slot: u8, f: &[u8]) -> NfObservation {
        NfObservation {
            ts_ns: ts,
            skb: 1,
            hook,
            pf: 2,
            slot,
            in_ifindex: 0,
            out_ifindex: 0,
            len: 60,
            mark: 0,
            headers: parse_ethernet(f),
            bytes: f.get(14..).unwrap_or(&[]).to_vec(),
        }
    }

    fn docker_tables(hook: u8) -> Vec<(String, i32)> {
        match hook {
            0 => vec![("nat".into(), -100)],
            2 => vec![("filter".into(), 0)],
            4 => vec![("nat".into(), 100)],
            _ => vec![],
        }
    }

    fn packet(nf: Vec<NfObservation>, end: Option<EndKind>) -> Packet {
        Packet {
            skb: 1,
            owner: None,
            hops: Vec::new(),
            nf,
            end: end.map(|kind| EndObservation {
                ts_ns: 999,
                skb: 1,
                kind,
                location: 0,
                ifindex: 0,
                netns: 0,
            }),
        }
    }

    #[test]
    fn forwarded_and_masqueraded() {
        let inner = frame([172, 18, 0, 2], 41234);
        let outer = frame([198, 51, 100, 1], 41234);
        let mut obs = Vec::new();
        for (i, slot) in (0..8).enumerate() {
            obs.push(nf(10 + i as u64, 0, slot, &inner));
            obs.push(nf(100 + i as u64, 2, slot, &inner));
            let f = if slot == 7 { &outer } else { &inner };
            obs.push(nf(200 + i as u64, 4, slot, f));
        }
        let s = steps(&packet(obs, Some(EndKind::Consume)), &docker_tables);
        let names: Vec<(u8, &str, Verdict)> = s
            .iter()
            .map(|x| (x.hook, x.table.as_str(), x.verdict))
            .collect();
        assert_eq!(
            names,
            vec![
                (0, "nat", Verdict::Accept),
                (2, "filter", Verdict::Accept),
                (4, "nat", Verdict::Accept)
            ]
        );
        assert!(s[0].nat.is_empty() && s[1].nat.is_empty());
        assert_eq!(
            crate::model::nat(&s[2].nat[0]).text(),
            "SNAT 172.18.0.2:41234 → 198.51.100.1:41234"
        );
        assert_eq!(s[2].ts_ns, 207, "at the slot after the nat table");
    }

    #[test]
    fn dropped_in_filter_forward() {
        let f = frame([172, 18, 0, 2], 41234);
        let mut obs: Vec<NfObservation> = (0..8).map(|s| nf(10 + u64::from(s), 0, s, &f)).collect();
        // FORWARD: seen up to slot 4 (before filter), never after.
        obs.extend((0..5).map(|s| nf(100 + u64::from(s), 2, s, &f)));
        let s = steps(
            &packet(obs.clone(), Some(EndKind::Drop { reason: 12 })),
            &docker_tables,
        );
        let last = s.last().expect("steps");
        assert_eq!(
            (last.hook, last.table.as_str(), last.verdict),
            (2, "filter", Verdict::Drop)
        );
        assert_eq!(last.ts_ns, 999);
        // Without a drop from the kernel, no verdict is invented.
        let s = steps(&packet(obs, None), &docker_tables);
        assert!(s.iter().all(|x| x.verdict == Verdict::Accept));
    }

    #[test]
    fn without_a_ruleset_changes_are_named_by_slot_position() {
        let inner = frame([172, 18, 0, 2], 41234);
        let outer = frame([198, 51, 100, 1], 41234);
        let obs: Vec<NfObservation> = (0..8)
            .map(|s| nf(u64::from(s), 4, s, if s == 7 { &outer } else { &inner }))
            .collect();
        let s = steps(&packet(obs, None), &|_| Vec::new());
        assert_eq!(s.len(), 1);
        assert_eq!((s[0].table.as_str(), s[0].nat.len()), ("nat", 1));
    }

    #[test]
    fn only_the_slots_around_the_tables_are_enough() {
        // What `slots_for` links on a Docker host: PREROUTING 0,2,4; FORWARD 0,5; POSTROUTING 0,7.
        let inner = frame([172, 18, 0, 2], 41234);
        let outer = frame([198, 51, 100, 1], 41234);
        let mut obs = Vec::new();
        for (ts, hook, slot) in [
            (1, 0, 0),
            (2, 0, 2),
            (3, 0, 4),
            (4, 2, 0),
            (5, 2, 5),
            (6, 4, 0),
        ] {
            obs.push(nf(ts, hook, slot, &inner));
        }
        obs.push(nf(7, 4, 7, &outer));
        let s = steps(&packet(obs.clone(), Some(EndKind::Consume)), &docker_tables);
        let names: Vec<(u8, &str, Verdict, usize)> = s
            .iter()
            .map(|x| (x.hook, x.table.as_str(), x.verdict, x.nat.len()))
            .collect();
        assert_eq!(
            names,
            vec![
                (0, "nat", Verdict::Accept, 0),
                (2, "filter", Verdict::Accept, 0),
                (4, "nat", Verdict::Accept, 1)
            ]
        );
        // Dropped in FORWARD: seen at its entry slot, never after filter.
        let dropped: Vec<NfObservation> = obs.into_iter().filter(|n| n.ts_ns <= 4).collect();
        let s = steps(
            &packet(dropped, Some(EndKind::Drop { reason: 12 })),
            &docker_tables,
        );
        let last = s.last().expect("steps");
        assert_eq!(
            (last.hook, last.table.as_str(), last.verdict),
            (2, "filter", Verdict::Drop)
        );
    }

    #[test]
    fn hook_level_observers_give_every_table_its_verdict_and_the_nat_table_its_rewrite() {
        // nf_hook_slow: slot 0 at a hook's entry, slot 7 once every table accepted.
        let inner = frame([172, 18, 0, 2], 41234);
        let outer = frame([198, 51, 100, 1], 41234);
        let obs = vec![
            nf(1, 2, 0, &inner),
            nf(2, 2, 7, &inner),
            nf(3, 4, 0, &inner),
            nf(4, 4, 7, &outer),
        ];
        let tables = |hook: u8| match hook {
            2 => vec![("mangle".to_owned(), -150), ("filter".to_owned(), 0)],
            4 => vec![("mangle".to_owned(), -150), ("nat".to_owned(), 100)],
            _ => vec![],
        };
        let s = steps(&packet(obs, Some(EndKind::Consume)), &tables);
        let got: Vec<(u8, &str, Verdict, usize)> = s
            .iter()
            .map(|x| (x.hook, x.table.as_str(), x.verdict, x.nat.len()))
            .collect();
        assert_eq!(
            got,
            vec![
                (2, "mangle", Verdict::Accept, 0),
                (2, "filter", Verdict::Accept, 0),
                (4, "mangle", Verdict::Accept, 0),
                (4, "nat", Verdict::Accept, 1),
            ],
            "one window per hook; the SNAT goes to nat, not to mangle"
        );
    }
}
