//! The counting side of the dashboard: turns feed items into per-hop, per-hook, per-flow and
//! per-drop counters. Pure: time comes in as an argument, nothing here does I/O. It keeps
//! counting while the view is paused.

use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

use crate::model::{Drop, FlowLine, Hop, Nat, Packet};
pub use tracer_common::netfilter::short_hook_name as short_hook;
use tracer_common::netfilter::{hook_of_name, table_rank, HOOK_NAMES};

use super::stats::{
    ChainHop, DropKey, DropStat, Flow, FlowKey, HookStat, HopStat, Rate, TimelinePacket,
};
use super::HopCount;

/// At most this many flows are kept; the least recently seen is evicted.
pub const MAX_FLOWS: usize = 10_000;
/// At most this many drop groups (reason, hook, table, rule) are kept.
pub const MAX_DROPS: usize = 200;
/// Recent packets kept per flow for its timeline.
pub const TIMELINE_LEN: usize = 20;

#[derive(Clone, Debug, Default)]
pub struct Data {
    pub hops: Vec<HopStat>,
    pub hooks: BTreeMap<(u8, String), HookStat>,
    /// Drops outside netfilter, by the interface of the packet's last hop.
    pub iface_drops: HashMap<String, u64>,
    pub flows: HashMap<FlowKey, Flow>,
    lru: BTreeMap<u64, FlowKey>,
    pub drops: HashMap<DropKey, DropStat>,
    pub seq: u64,
    pub packets: u64,
    pub packets_base: u64,
    pub packet_rate: Rate,
    pub lost: u64,
    pub lost_base: u64,
    pub not_shown: u64,
    pub kernel_evicted: u64,
    pub ring_fill: Option<f32>,
    pub recording: Option<(String, u64)>,
}

/// Where a hook is shown among the others (in the kernel's order; other names after them).
pub fn hook_rank(hook: &str) -> u8 {
    hook_of_name(hook).unwrap_or(HOOK_NAMES.len() as u8)
}

/// The flow's NAT as the flows table shows it.
fn nat_view(n: &Nat, local: &str) -> String {
    if *n.from == *local {
        format!("as {}", n.to)
    } else if *n.to == *local {
        format!("as {}", n.from)
    } else {
        format!("{} → {}", n.from, n.to)
    }
}

impl Data {
    pub fn counters(&mut self, counts: Vec<HopCount>, now: Instant) {
        for c in counts {
            let i = match self
                .hops
                .iter()
                .position(|h| h.iface == c.iface && h.direction == c.direction)
            {
                Some(i) => i,
                None => {
                    self.hops.push(HopStat {
                        iface: c.iface.clone(),
                        role: c.role.clone(),
                        direction: c.direction.to_owned(),
                        ..Default::default()
                    });
                    self.hops.len() - 1
                }
            };
            let h = &mut self.hops[i];
            if !c.role.is_empty() {
                h.role = c.role;
            }
            h.raw = Some((c.packets, c.bytes, c.lost));
            h.rate.update(now, c.packets, c.bytes);
        }
    }

    /// Called on every tick: rates of what is counted from events.
    pub fn tick(&mut self, now: Instant) {
        self.packet_rate.update(now, self.packets, 0);
        for h in self.hooks.values_mut() {
            for w in 0..2 {
                h.rate[w].update(now, h.packets[w], h.bytes[w]);
            }
        }
    }

    /// "c": the view's baselines move to now; the kernel maps are untouched.
    pub fn clear(&mut self) {
        for h in &mut self.hops {
            if let Some(raw) = h.raw {
                h.base = raw;
            }
        }
        self.hooks.clear();
        self.iface_drops.clear();
        self.flows.clear();
        self.lru.clear();
        self.drops.clear();
        self.packets_base = self.packets;
        self.lost_base = self.lost;
    }

    /// Makes sure a tc hop seen in a packet has a row, even before counters arrive.
    fn ensure_hop(&mut self, iface: &str, role: &str, dir: &str) {
        if !self
            .hops
            .iter()
            .any(|h| h.iface == iface && h.direction == dir)
        {
            self.hops.push(HopStat {
                iface: iface.to_owned(),
                role: role.to_owned(),
                direction: dir.to_owned(),
                ..Default::default()
            });
        }
    }

    pub fn packet(&mut self, p: &Packet) {
        self.seq += 1;
        self.packets += 1;
        let seq = self.seq;
        let way = p.way.as_deref().unwrap_or("out");
        let w = usize::from(way == "in");
        let len = u64::from(p.len);
        let time = clock_of(&p.time);
        let (src, dst) = (
            p.src.as_deref().unwrap_or("?"),
            p.dst.as_deref().unwrap_or("?"),
        );
        let (local, remote) = if w == 1 { (dst, src) } else { (src, dst) };
        let key = FlowKey {
            container: p.container.as_deref().unwrap_or("?").to_owned(),
            proto: p.proto.as_deref().unwrap_or("?").to_owned(),
            local: local.to_owned(),
            remote: remote.to_owned(),
        };

        let mut hops = Vec::new();
        let mut notes = Vec::new();
        let mut nat = None;
        let mut seen_hooks: Vec<(u8, String)> = Vec::new();
        for h in &p.hops {
            let (name, at) = match h {
                Hop::Nf(n) => {
                    let (hook, table) = (&*n.hook, &*n.table);
                    let k = (hook_rank(hook), hook.to_owned());
                    let st = self.hooks.entry(k.clone()).or_insert_with(|| HookStat {
                        hook: hook.to_owned(),
                        ..Default::default()
                    });
                    if !st.tables.iter().any(|t| t == table) {
                        st.tables.push(table.to_owned());
                        st.tables.sort_by_key(|t| (table_rank(t), t.clone()));
                    }
                    if !seen_hooks.contains(&k) {
                        st.packets[w] += 1;
                        st.bytes[w] += len;
                        seen_hooks.push(k);
                    }
                    notes.extend(passed_by(n));
                    (
                        format!("{}/{table}", short_hook(hook)),
                        format!("{hook}/{table}"),
                    )
                }
                Hop::Tc(t) => {
                    let role = t.role.as_deref().unwrap_or("iface");
                    self.ensure_hop(&t.iface, role, &t.dir);
                    let name = match role {
                        "veth" => "veth".to_owned(),
                        "bridge" => "bridge".to_owned(),
                        _ => t.iface.to_string(),
                    };
                    (name, format!("{} tc {}", t.iface, t.dir))
                }
            };
            if let Some(n) = h.nat() {
                notes.push(format!("{} at {at}", n.text()));
                nat = Some(nat_view(n, local));
            }
            hops.push(ChainHop {
                name,
                at_ns: h.at_ns(),
            });
        }

        // TCP's own frees are not drops: not in the drops panel or counts.
        let drop = p.drop.as_ref().filter(|d| d.counts());
        if let Some(d) = drop {
            self.record_drop(d, &time, seq, &mut notes);
        }

        // The flow's counts come from the core's flow table (`flows`); a packet brings its
        // timeline and how NAT shows it.
        self.touch_flow(&key, seq);
        let f = self.flows.entry(key).or_default();
        f.last_seq = seq;
        if nat.is_some() {
            f.nat = nat;
        }
        if f.recent.len() >= TIMELINE_LEN {
            f.recent.pop_front();
        }
        f.recent.push_back(TimelinePacket {
            time,
            way: way.to_owned(),
            flags: p.tcp_flags.clone().unwrap_or_default(),
            len,
            hops,
            notes,
            dropped: drop.is_some(),
        });
        self.evict_flows();
    }

    /// The core's flows that changed: their counts replace the row's.
    pub fn flows(&mut self, lines: &[FlowLine]) {
        for l in lines {
            self.seq += 1;
            let key = FlowKey {
                container: l.container.clone(),
                proto: l.proto.clone(),
                local: l.local.clone(),
                remote: l.remote.clone(),
            };
            self.touch_flow(&key, self.seq);
            let f = self.flows.entry(key).or_default();
            f.packets = [l.out.packets, l.inbound.packets];
            f.bytes = [l.out.bytes, l.inbound.bytes];
            f.drops = l.drops;
            f.last_seq = self.seq;
            f.last_time = clock_of(&l.last);
        }
        self.evict_flows();
    }

    fn record_drop(&mut self, d: &Drop, time: &str, seq: u64, notes: &mut Vec<String>) {
        let reason = d.reason.clone();
        let (hook, table, rule) = (d.hook.clone(), d.table.clone(), d.rule.clone());
        let location = d.location.as_ref().map(|l| match &d.place {
            Some(p) => format!("{l} ({p})"),
            None => l.clone(),
        });
        match &hook {
            Some(hk) => {
                if let Some(st) = self.hooks.get_mut(&(hook_rank(hk), hk.clone())) {
                    st.drops += 1;
                }
            }
            None => {
                if let Some(i) = d.last_hop_iface() {
                    *self.iface_drops.entry(i.to_owned()).or_default() += 1;
                }
            }
        }
        let at = match (&hook, &table) {
            (Some(h), Some(t)) => format!("at {h}/{t}"),
            (Some(h), None) => format!("at {h}"),
            _ => location
                .as_deref()
                .map(|l| format!("in {l}"))
                .unwrap_or_default(),
        };
        notes.push(format!("✗ {reason} {at}"));
        if let Some(r) = &rule {
            notes.push(format!("  rule: {r}"));
        }
        let key = (reason.clone(), hook.clone(), table.clone(), rule.clone());
        let st = self.drops.entry(key).or_insert_with(|| DropStat {
            reason,
            hook,
            table,
            rule,
            ..Default::default()
        });
        st.count += 1;
        st.last_time = time.to_owned();
        st.last_seq = seq;
        st.location = location;
        if self.drops.len() > MAX_DROPS {
            if let Some(k) = self
                .drops
                .iter()
                .min_by_key(|(_, d)| d.last_seq)
                .map(|(k, _)| k.clone())
            {
                self.drops.remove(&k);
            }
        }
    }

    fn touch_flow(&mut self, key: &FlowKey, seq: u64) {
        if let Some(f) = self.flows.get(key) {
            self.lru.remove(&f.last_seq);
        }
        self.lru.insert(seq, key.clone());
    }

    fn evict_flows(&mut self) {
        while self.flows.len() > MAX_FLOWS {
            let Some((_, k)) = self.lru.pop_first() else {
                break;
            };
            self.flows.remove(&k);
        }
    }
}

/// "2026-11-24T15:07:34.120511Z" → "15:07:34.120".
pub fn clock_of(t: &str) -> String {
    let after = t.split_once('T').map_or(t, |(_, r)| r);
    let trimmed = after.trim_end_matches('Z');
    let mut cut = trimmed
        .find('.')
        .map_or(trimmed.len(), |i| (i + 4).min(trimmed.len()));
    // A recording's text is anyone's: never cut inside a character.
    while !trimmed.is_char_boundary(cut) {
        cut -= 1;
    }
    trimmed[..cut].to_owned()
}

/// The rule (or policy) that let a packet pass a table, as nftrace named it (a drop's rule has
/// its own note).
fn passed_by(n: &crate::model::NfHop) -> Option<String> {
    if n.verdict == "drop" {
        return None;
    }
    let at = format!("{}/{}", n.hook, n.table);
    match (&n.rule, &n.policy) {
        (Some(r), _) => Some(format!("{at}: {r}")),
        (None, Some(p)) => Some(format!("{at}: policy {p}")),
        _ => None,
    }
}
