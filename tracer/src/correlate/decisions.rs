//! What nftables said each table did to each traced packet (nftrace), ready to join to the
//! packets the observers saw. A thread of its own turns trace events into decisions: it
//! groups them into walks (`traversal`), names each walk's hook and deciding rule from the
//! ruleset's text, and re-reads the ruleset (rate-limited) when a walk names a chain or rule
//! it does not know. The event loop never waits for it: the pipeline takes what has arrived.

use std::{
    collections::VecDeque,
    sync::{
        atomic::{AtomicU64, Ordering},
        mpsc::{Receiver, Sender},
        Arc,
    },
    time::{Duration, Instant},
};

use tracer_common::flow::FlowKey;

use super::traversal::{verdict_name, Assembler, Traversal};
use super::NetMap;
use crate::{
    nftrace::{Batch, Wants},
    target::rule_text::RuleTexts,
};

/// One table's work on one packet at one hook, as nftables traced it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    pub hook: u8,
    pub table: String,
    /// `accept`, `drop`, …
    pub verdict: &'static str,
    /// The deciding rule's text (None: the policy decided, or the rule is unknown).
    pub rule: Option<Arc<str>>,
    /// The built-in chain's policy, when it decided.
    pub policy: Option<&'static str>,
    pub chain_path: Vec<String>,
    pub key: FlowKey,
    pub fingerprint: u64,
}

/// The least time between two reads of the ruleset for unknown chains or rules.
const REREAD_EVERY: Duration = Duration::from_secs(1);

/// Where `resolve` sends its decisions, and says how far they go.
pub struct Resolved {
    pub tx: Sender<Decision>,
    /// The latest `Batch::drained_at` whose events' decisions were all sent (see
    /// `Decisions::resolved_until`).
    pub until: Arc<AtomicU64>,
}

impl Resolved {
    /// A sender and its `Decisions`.
    pub fn channel() -> (Resolved, Decisions) {
        let (tx, rx) = std::sync::mpsc::channel();
        let until = Arc::new(AtomicU64::new(0));
        let ds = Decisions::new(rx, Arc::clone(&until));
        (Resolved { tx, until }, ds)
    }
}

/// Turns trace events into decisions until either channel closes. `own_table` is
/// flowtrace's marking table, whose walks are not the host's.
pub fn resolve(
    events: Receiver<Batch>,
    out: Resolved,
    own_table: String,
    mut texts: RuleTexts,
    read: impl Fn() -> RuleTexts,
) {
    let mut asm = Assembler::default();
    let mut last_read = Instant::now();
    for batch in events {
        // The rulesets are read from here: with this thread's lowered capabilities.
        crate::probe::privilege::apply_pending();
        for e in batch.events {
            if e.table == own_table {
                continue;
            }
            let Some(t) = asm.push(e) else { continue };
            let mut d = decide(&t, &texts);
            if d.is_none() || unknown_rule(&t, &texts) {
                if last_read.elapsed() >= REREAD_EVERY {
                    texts = read();
                    last_read = Instant::now();
                }
                d = decide(&t, &texts);
            }
            if let Some(d) = d {
                if out.tx.send(d).is_err() {
                    return;
                }
            }
        }
        if let Some(t) = batch.drained_at {
            // After the sends: whoever reads this time finds their decisions in the channel.
            out.until.store(t, Ordering::Release);
        }
    }
}

fn family_name(f: u8) -> &'static str {
    match f {
        1 => "inet",
        2 => "ip",
        10 => "ip6",
        3 => "arp",
        5 => "netdev",
        7 => "bridge",
        _ => "unknown",
    }
}

fn unknown_rule(t: &Traversal, texts: &RuleTexts) -> bool {
    t.rule
        .as_ref()
        .is_some_and(|(c, h)| texts.rule(family_name(t.family), &t.table, c, *h).is_none())
}

/// A walk's decision, if its base chain is known (for its hook).
pub fn decide(t: &Traversal, texts: &RuleTexts) -> Option<Decision> {
    let family = family_name(t.family);
    let base = texts.base_chain(family, &t.table, &t.base_chain)?;
    let verdict = verdict_name(t.verdict);
    Some(Decision {
        hook: base.hook,
        table: t.table.clone(),
        verdict,
        rule: t
            .rule
            .as_ref()
            .and_then(|(c, h)| texts.shared_rule(family, &t.table, c, *h))
            .cloned(),
        policy: t.by_policy.then_some(verdict),
        chain_path: t.chain_path.clone(),
        key: t.key,
        fingerprint: t.fingerprint,
    })
}

/// Decisions that arrived and wait for their packet, found by (hook, fingerprint): a busy
/// host has thousands waiting, and every netfilter hop of every shown packet looks one up.
pub struct Decisions {
    rx: Receiver<Decision>,
    until: Arc<AtomicU64>,
    by_key: NetMap<(u8, u64), Vec<(Instant, Decision)>>,
    /// Arrival order, to forget what waited too long.
    order: VecDeque<(Instant, (u8, u64))>,
    /// Fingerprints of the drops waiting, with how many.
    drops: NetMap<u64, u32>,
    /// Where to say that a packet waits for the trace reader (None: no reader to wake).
    wants: Option<Arc<Wants>>,
}

/// How long a decision waits for its packet (a packet is explained well within this).
const KEPT_FOR: Duration = Duration::from_secs(5);
/// Decisions kept at most.
const MAX_HELD: usize = 65_536;

impl Decisions {
    pub fn new(rx: Receiver<Decision>, until: Arc<AtomicU64>) -> Self {
        Self {
            rx,
            until,
            by_key: NetMap::default(),
            order: VecDeque::new(),
            drops: NetMap::default(),
            wants: None,
        }
    }

    /// The trace reader to wake when a packet waits for it.
    pub fn wake_through(&mut self, wants: Arc<Wants>) {
        self.wants = Some(wants);
    }

    /// A packet waits until `resolved_until` reaches `t`: the reader is told (it reads on its
    /// own only while told so, see `nftrace::Wants`).
    pub fn want(&self, t: u64) {
        if let Some(w) = &self.wants {
            w.want(t);
        }
    }

    /// The CLOCK_MONOTONIC time (ns) up to which every trace event the kernel queued has
    /// become a decision sent here (0: none yet). A packet that left netfilter before it
    /// needs to wait no longer: its decisions arrived, or there were none (not marked).
    pub fn resolved_until(&self) -> u64 {
        self.until.load(Ordering::Acquire)
    }

    /// Takes in what arrived, forgets what waited too long.
    fn refresh(&mut self) {
        let now = Instant::now();
        while let Ok(d) = self.rx.try_recv() {
            if self.order.len() >= MAX_HELD {
                self.forget_oldest();
            }
            let key = (d.hook, d.fingerprint);
            if d.verdict == "drop" {
                *self.drops.entry(d.fingerprint).or_default() += 1;
            }
            self.order.push_back((now, key));
            self.by_key.entry(key).or_default().push((now, d));
        }
        while self
            .order
            .front()
            .is_some_and(|(at, _)| now.duration_since(*at) > KEPT_FOR)
        {
            self.forget_oldest();
        }
    }

    /// Forgets the oldest decision, if it is still waiting.
    fn forget_oldest(&mut self) {
        let Some((at, key)) = self.order.pop_front() else {
            return;
        };
        let Some(list) = self.by_key.get_mut(&key) else {
            return;
        };
        let gone = list
            .iter()
            .position(|(t, _)| *t == at)
            .map(|i| list.remove(i).1);
        if list.is_empty() {
            self.by_key.remove(&key);
        }
        if let Some(d) = gone {
            self.uncount(&d);
        }
    }

    fn uncount(&mut self, d: &Decision) {
        if d.verdict != "drop" {
            return;
        }
        if let Some(n) = self.drops.get_mut(&d.fingerprint) {
            *n -= 1;
            if *n == 0 {
                self.drops.remove(&d.fingerprint);
            }
        }
    }

    /// The oldest decision at `hook` for this fingerprint and protocol that `pick` accepts,
    /// taken so that no other packet claims it.
    fn take_where(
        &mut self,
        hook: u8,
        fingerprint: u64,
        proto: u8,
        pick: impl Fn(&Decision) -> bool,
    ) -> Option<Decision> {
        self.refresh();
        let key = (hook, fingerprint);
        let list = self.by_key.get_mut(&key)?;
        let i = list
            .iter()
            .position(|(_, d)| d.key.proto == proto && pick(d))?;
        let (_, d) = list.remove(i);
        if list.is_empty() {
            self.by_key.remove(&key);
        }
        self.uncount(&d);
        Some(d)
    }

    /// The decision of `table` at `hook` on the packet with this fingerprint and protocol
    /// (which NAT leaves alone).
    pub fn take(&mut self, hook: u8, table: &str, fingerprint: u64, proto: u8) -> Option<Decision> {
        self.take_where(hook, fingerprint, proto, |d| d.table == table)
    }

    /// Whether a drop of a packet with one of these fingerprints has arrived.
    pub fn has_drop(&mut self, fingerprints: &[u64]) -> bool {
        self.refresh();
        fingerprints.iter().any(|f| self.drops.contains_key(f))
    }

    /// A drop at `hook` by any table, for the packet with this fingerprint.
    pub fn take_drop(&mut self, hook: u8, fingerprint: u64, proto: u8) -> Option<Decision> {
        self.take_where(hook, fingerprint, proto, |d| d.verdict == "drop")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nftrace::{TraceEvent, TraceKind};

    const NFT: &str = "table ip filter { # handle 2
\tchain DOCKER-USER { # handle 7
\t\tip daddr 198.51.100.2 meta l4proto udp udp dport 5353 counter packets 3 bytes 180 drop # handle 23
\t}
\tchain FORWARD { # handle 3
\t\ttype filter hook forward priority filter; policy drop;
\t\tcounter packets 0 bytes 0 jump DOCKER-USER # handle 8
\t}
}
";

    fn ev(chain: &str, kind: TraceKind, verdict: Option<i32>, handle: u64) -> TraceEvent {
        TraceEvent {
            id: 1,
            family: 2,
            nfproto: 2,
            table: "filter".into(),
            chain: chain.into(),
            kind,
            handle: Some(handle),
            verdict,
            ..TraceEvent::default()
        }
    }

    /// The decisions `resolve` makes of these batches, with the rules' texts from `texts`
    /// (flowtrace's own table: `flowtrace_1`).
    fn resolved(batches: Vec<Vec<TraceEvent>>, texts: impl Fn() -> RuleTexts) -> Decisions {
        let (etx, erx) = std::sync::mpsc::channel();
        let (out, ds) = Resolved::channel();
        for (i, events) in batches.into_iter().enumerate() {
            let drained_at = Some(1000 * (i as u64 + 1));
            etx.send(Batch { events, drained_at }).expect("send");
        }
        drop(etx);
        resolve(erx, out, "flowtrace_1".into(), texts(), texts);
        ds
    }

    fn walk() -> Vec<TraceEvent> {
        let mut ip = vec![0x45, 0, 0, 33, 0x12, 0x34, 0x40, 0, 64, 17, 0, 0];
        ip.extend_from_slice(&[172, 18, 0, 2, 198, 51, 100, 2]);
        let mut first = ev("FORWARD", TraceKind::Rule, Some(-3), 8);
        first.jump_to = Some("DOCKER-USER".into());
        first.network_header = Some(ip);
        first.transport_header = Some(vec![0x9c, 0x40, 0x14, 0xe9, 0, 13, 0, 0]);
        vec![first, ev("DOCKER-USER", TraceKind::Rule, Some(0), 23)]
    }

    #[test]
    fn a_walk_becomes_a_decision_with_the_rule_text_and_is_taken_once() {
        let mut ds = resolved(vec![walk()], || RuleTexts::build(NFT, &[]));
        assert_eq!(
            ds.resolved_until(),
            1000,
            "the batch's time, after its decisions"
        );
        let (_, fp) = super::super::traversal::headers_key(
            walk()[0].network_header.as_deref().expect("ip"),
            walk()[0].transport_header.as_deref(),
        )
        .expect("key");
        assert!(ds.take(2, "nat", fp, 17).is_none(), "another table");
        let d = ds.take(2, "filter", fp, 17).expect("the decision");
        assert_eq!(d.verdict, "drop");
        assert_eq!(
            d.rule.as_deref(),
            Some("add rule ip filter DOCKER-USER ip daddr 198.51.100.2 meta l4proto udp udp dport 5353 counter drop")
        );
        assert_eq!(d.chain_path, ["FORWARD", "DOCKER-USER"]);
        assert!(ds.take(2, "filter", fp, 17).is_none(), "taken once");
    }

    #[test]
    fn walks_in_flowtraces_own_table_and_unknown_chains_are_left_out() {
        let mut own = walk();
        for e in &mut own {
            e.table = "flowtrace_1".into();
        }
        // A ruleset that lacks the base chain: the walk has no hook, so no decision.
        let ds = resolved(vec![own, walk()], RuleTexts::default);
        assert!(ds.rx.try_recv().is_err());
        assert_eq!(ds.resolved_until(), 2000);
    }
}
