//! From what the netfilter observers saw to what each table did. The observers sit at
//! priorities bracketing the tables (tracer_common::netfilter): a table the packet got past
//! accepted it; the table between the last slot that saw a packet and the next one dropped it,
//! when the kernel then reports a drop; headers that differ across a table were rewritten by it.

use std::borrow::Cow;

use tracer_common::netfilter::{
    exit_seen_at_postrouting, slot_after, table_after, HOOK_POSTROUTING, LAST_SLOT,
    SLOT_PRIORITIES, TABLES,
};

use super::{
    nat::{self, NatRewrite},
    packet::Packet,
};
use crate::{
    events::{decode::EndKind, packet::Headers},
    model::Text,
};

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

/// A netfilter table's name: iptables' own borrowed, any other (an nftables table's) copied.
/// A packet has a step for each table it passed, and a copy of each name was an allocation.
pub fn table_text(t: &str) -> Text {
    match TABLES.iter().find(|k| **k == t) {
        Some(k) => Text::Borrowed(k),
        None => Text::Owned(t.to_owned()),
    }
}

/// One table's work on a packet at one hook.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NfStep {
    pub ts_ns: u64,
    pub hook: u8,
    /// iptables' own names borrowed (`table_text`), any other copied.
    pub table: Text,
    pub verdict: Verdict,
    pub nat: Vec<NatRewrite>,
    /// The packet's headers after this table (as the next slot saw them).
    pub headers: Option<Headers>,
    /// The observation (in the packet's `nf`) whose captured bytes, from the IP header, are
    /// the packet at that slot: see [`Self::bytes`].
    pub nf: usize,
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

impl NfStep {
    /// The packet's captured bytes at this step, from the IP header.
    pub fn bytes<'a>(&self, p: &'a Packet) -> &'a [u8] {
        p.nf.get(self.nf).map_or(&[], |n| &n.bytes)
    }
}

/// What the observers at one hook saw: the first sighting at each slot, as the index of the
/// packet's observation. An array of indexes, not a map or copies: a packet has a few
/// sightings a hook, and this runs for every packet.
type Seen = usize;
type Slots = [Option<Seen>; SLOT_PRIORITIES.len()];

/// The last slot before `b` that saw the packet.
fn seen_before(seen: &Slots, b: usize) -> Option<Seen> {
    seen[..b.min(seen.len())].iter().rev().find_map(|x| *x)
}

/// The first slot from `b` on that saw the packet, with its index.
fn seen_from(seen: &Slots, b: usize) -> Option<(usize, Seen)> {
    (b..seen.len()).find_map(|i| seen[i].map(|x| (i, x)))
}

/// How far the packet got at `hook`, as the last slot it passed there. A hook's later slots
/// report a packet only where a table changed it, so this is known from what came after: it
/// passed every slot of a hook it left (it reached a later hook, or ended with no note of this
/// hook that says otherwise, or ended unseen: a free on a path without either tracepoint, a
/// lost record); a free the CPU noted at this hook passed the slot noted (a drop by a table
/// there). A netfilter drop the CPU did not note (a rare nesting of packets pushed the note
/// out) passed only what reported.
fn passed_until(p: &Packet, hook: u8, last: bool, netfilter_drop: bool) -> Option<usize> {
    let all = usize::from(LAST_SLOT);
    if !last {
        return Some(all);
    }
    match p.end.as_ref().map(|e| e.passed) {
        Some(Some((h, slot))) if h == hook => Some(usize::from(slot)),
        Some(_) => (!netfilter_drop).then_some(all),
        None => Some(all),
    }
}

/// Gives each slot up to `until` that has an observer (`linked`, a bit per slot) and did not
/// report the packet the view of the last one before it that did: the packet passed it
/// unchanged. Slots with no observer stay empty, so that tables between two observers share
/// one window (hook-level observers have only a hook's entry and exit).
fn fill(seen: &mut Slots, until: usize, linked: u8) {
    let mut last = None;
    for (slot, s) in seen.iter_mut().enumerate().take(until + 1) {
        match s {
            Some(v) => last = Some(*v),
            None if linked & (1 << slot) != 0 => *s = last,
            None => {}
        }
    }
}

/// The slots linked at `hook` (a bit per slot; all of them for a hook beyond the five).
fn linked_at(linked: &[u8; 5], hook: u8) -> u8 {
    linked.get(usize::from(hook)).copied().unwrap_or(0xff)
}

/// Fills each hook's unreported slots up to where the packet got (`passed_until`).
fn fill_passed(p: &Packet, hooks: &mut [(u8, u64, Slots)], linked: &[u8; 5], nf_drop: bool) {
    let last_hook = hooks.iter().max_by_key(|h| h.1).map(|h| h.0);
    for (hook, _, seen) in hooks.iter_mut() {
        let last = Some(*hook) == last_hook;
        if let Some(until) = passed_until(p, *hook, last, nf_drop) {
            let mask = linked_at(linked, *hook);
            fill(seen, until, mask);
        }
    }
}

/// FORWARD's and OUTPUT's exit where no observer of theirs sees it (`slots_at` links none
/// after their last table): POSTROUTING's entry, which sees the packet as they let it through,
/// taken as their last slot's sighting. Without a later sighting there, a packet that did not
/// end by a netfilter drop passed them as their last slot to see it left it (a lost record).
fn exits_at_postrouting(hooks: &mut [(u8, u64, Slots)], linked: &[u8; 5], nf_drop: bool) {
    let last = usize::from(LAST_SLOT);
    let post = hooks
        .iter()
        .find(|h| h.0 == HOOK_POSTROUTING)
        .and_then(|h| Some((h.1, h.2[0]?)));
    for (hook, ts, seen) in hooks.iter_mut() {
        let mask = linked_at(linked, *hook);
        if !exit_seen_at_postrouting(*hook) || mask & (1 << last) != 0 || seen[last].is_some() {
            continue;
        }
        seen[last] = match post {
            Some((at, entry)) if at >= *ts => Some(entry),
            _ if !nf_drop => seen.iter().rev().find_map(|x| *x),
            _ => None,
        };
    }
}

/// Where no ruleset says which tables a hook has: the tables between the slots where the
/// headers changed or the packet stopped.
fn tables_from_slots(p: &Packet, seen: &Slots) -> Vec<(String, i32)> {
    let headers = |i: usize| p.nf.get(i).and_then(|n| n.headers);
    (0..SLOT_PRIORITIES.len() - 1)
        .filter(|&a| match (seen[a], seen[a + 1]) {
            (Some(x), Some(y)) => headers(x) != headers(y),
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

/// (hook, its first sighting's time, what each slot saw first), by hook.
fn sightings(p: &Packet) -> Vec<(u8, u64, Slots)> {
    let mut hooks: Vec<(u8, u64, Slots)> = Vec::with_capacity(3);
    for (i, n) in p.nf.iter().enumerate() {
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
        hooks[at].2[slot].get_or_insert(i);
    }
    hooks.sort_by_key(|h| h.0);
    hooks
}

/// The netfilter steps of a packet, in time order. `tables_at(hook)` lists the tables registered
/// at a hook with their priorities (from the ruleset); where it lists none, tables are named
/// by the slot positions where headers changed or the packet stopped. `linked`: which slots
/// observe at each hook (a bit per slot); `netfilter_drop`: its drop's reason was
/// NETFILTER_DROP.
pub fn steps<T: AsRef<[(String, i32)]>>(
    p: &Packet,
    tables_at: &dyn Fn(u8) -> T,
    linked: &[u8; 5],
    netfilter_drop: bool,
) -> Vec<NfStep> {
    let mut hooks = sightings(p);
    let dropped = matches!(p.end.as_ref().map(|e| e.kind), Some(EndKind::Drop { .. }));
    let last_hook = hooks.iter().max_by_key(|h| h.1).map(|h| h.0);
    fill_passed(p, &mut hooks, linked, netfilter_drop);
    exits_at_postrouting(&mut hooks, linked, netfilter_drop);
    // A forwarded packet passes some eight tables.
    let mut out = Vec::with_capacity(8);
    for (hook, _, seen) in &hooks {
        let (hook, seen) = (*hook, seen);
        let given = tables_at(hook);
        let tables: Cow<'_, [(String, i32)]> = match given.as_ref() {
            [] => Cow::Owned(tables_from_slots(p, seen)),
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
            match seen_from(seen, b).and_then(|(a, i)| Some((a, i, p.nf.get(i)?))) {
                Some((a_slot, nf, after)) => {
                    let (ts, after) = (after.ts_ns, after.headers);
                    let width = tables[i..]
                        .iter()
                        .take_while(|(_, p)| (b..=a_slot).contains(&slot_after(*p)))
                        .count()
                        .max(1);
                    let window = &tables[i..i + width];
                    let mut rewrites = match (before.and_then(|i| p.nf.get(i)?.headers), after) {
                        (Some(x), Some(y)) => nat::rewrites(&x, &y),
                        _ => Vec::new(),
                    };
                    let nat_at = window.iter().position(|(t, _)| t == "nat").unwrap_or(0);
                    for (k, (table, _)) in window.iter().enumerate() {
                        out.push(NfStep {
                            ts_ns: ts,
                            hook,
                            table: table_text(table),
                            verdict: Verdict::Accept,
                            nat: if k == nat_at {
                                std::mem::take(&mut rewrites)
                            } else {
                                Vec::new()
                            },
                            headers: after,
                            nf,
                            decided: None,
                        });
                    }
                    i += width;
                }
                None => {
                    let seen_last = before.and_then(|i| Some((p.nf.get(i)?, i)));
                    if let (Some((n, nf)), true, true) =
                        (seen_last, dropped, Some(hook) == last_hook)
                    {
                        let (ts, h) = (n.ts_ns, n.headers);
                        out.push(NfStep {
                            ts_ns: p.end.as_ref().map_or(ts, |e| e.ts_ns.max(ts)),
                            hook,
                            table: table_text(&tables[i].0),
                            verdict: Verdict::Drop,
                            nat: Vec::new(),
                            headers: h,
                            nf,
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
pub(crate) mod tests;
