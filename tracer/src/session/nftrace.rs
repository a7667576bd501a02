//! nftrace for a session: the marking table (owned by flowtrace's netlink socket, so the
//! kernel removes it when flowtrace ends, even on SIGKILL), the trace listener, and the
//! thread that turns trace events into decisions for the explainer. The table follows the
//! scope; if something removes it while flowtrace runs, it is added back and a note says so.

use std::{
    net::IpAddr,
    time::{Duration, Instant},
};

use super::setup::Startup;
use crate::{
    correlate::decisions::{self, Decisions, Resolved},
    nftrace::{Marker, Monitor},
    target::{rule_text::RuleTexts, scope::Scope},
};

pub(super) struct Nftrace {
    marker: Marker,
    last_check: Instant,
    /// Trace messages the kernel could not deliver (the socket's buffer was full).
    overruns: std::sync::Arc<std::sync::atomic::AtomicU64>,
    overruns_said: u64,
}

/// How often the table's presence is checked.
const CHECK_EVERY: Duration = Duration::from_secs(1);

/// How long a packet that met netfilter waits for its trace at most (see
/// `Pipeline::hold_ns`): it waits less once the trace reader says it read every event queued
/// after the packet left netfilter, which on an idle or a busy host is within tens of ms.
pub(super) const HOLD_NS: u64 = 250_000_000;

/// The scope's addresses and published ports, as the marking table's sets take them.
fn targets(
    scope: &Scope,
) -> (
    Vec<std::net::Ipv4Addr>,
    Vec<std::net::Ipv6Addr>,
    Vec<(u8, u16)>,
) {
    let (mut v4, mut v6) = (Vec::new(), Vec::new());
    for a in scope.addrs.keys() {
        match a {
            IpAddr::V4(a) => v4.push(*a),
            IpAddr::V6(a) => v6.push(*a),
        }
    }
    (v4, v6, scope.ports.keys().copied().collect())
}

/// Starts nftrace: the listener first (so no walk is missed), then the table. None, with a
/// start-up line saying why, where the kernel or the ruleset cannot.
pub(super) fn start(scope: &Scope, rate: u32, notes: &mut Startup) -> Option<(Nftrace, Decisions)> {
    let monitor = match Monitor::new() {
        Ok(m) => m,
        Err(e) => {
            notes.say(format!(
                "nftrace: not used ({e}); rules are named from counters, for drops only"
            ));
            return None;
        }
    };
    let table = format!("flowtrace_{}", std::process::id());
    let mut marker = match Marker::new(&table, rate) {
        Ok(m) => m,
        Err(e) => {
            notes.say(format!(
                "nftrace: not used ({e}); rules are named from counters, for drops only"
            ));
            return None;
        }
    };
    let (v4, v6, ports) = targets(scope);
    if let Err(e) = marker.set_targets(&v4, &v6, &ports) {
        notes.say(format!(
            "nftrace: not used ({e}); rules are named from counters"
        ));
        return None;
    }
    let overruns = monitor.overruns();
    let (etx, erx) = std::sync::mpsc::channel();
    let (resolved, mut decisions) = Resolved::channel();
    decisions.wake_through(monitor.wants());
    if let Err(e) = monitor.spawn(etx) {
        notes.say(format!("nftrace: not used ({e})"));
        return None;
    }
    let own = table.clone();
    // The rules' texts as they are now, before the first packet: the first walks are named
    // at once, not after a reading.
    let texts = RuleTexts::read();
    let resolver = std::thread::Builder::new()
        .name("nftrace-rules".into())
        .spawn(move || decisions::resolve(erx, resolved, own, texts, RuleTexts::read));
    if let Err(e) = resolver {
        notes.say(format!("nftrace: not used (no thread: {e})"));
        return None;
    }
    let limit = match rate {
        0 => "every one".to_owned(),
        n => format!("at most {n}/s by each marking rule"),
    };
    notes.say(format!(
        "nftrace: added nftables table inet {table}: it only marks the traced packets for \
         tracing ({limit}; meta nftrace set 1, then accept, which ends only its own chain) and goes away with flowtrace \
         (--no-nftrace: without it)"
    ));
    Some((
        Nftrace {
            marker,
            last_check: Instant::now(),
            overruns,
            overruns_said: 0,
        },
        decisions,
    ))
}

impl Nftrace {
    /// The scope changed: mark what it holds now.
    pub(super) fn follow(&mut self, scope: &Scope) -> Option<String> {
        let (v4, v6, ports) = targets(scope);
        self.marker
            .set_targets(&v4, &v6, &ports)
            .err()
            .map(|e| format!("nftrace: cannot update the marking table: {e}"))
    }

    /// Once a second: the table is still there, or it is added back (a note says so).
    pub(super) fn check(&mut self) -> Option<String> {
        if self.last_check.elapsed() < CHECK_EVERY {
            return None;
        }
        self.last_check = Instant::now();
        let lost = self.overruns.load(std::sync::atomic::Ordering::Relaxed);
        if lost > self.overruns_said {
            self.overruns_said = lost;
            return Some(format!(
                "nftrace: the kernel could not deliver some trace messages ({lost} overruns so \
                 far): some netfilter hops lack their rule"
            ));
        }
        match self.marker.present() {
            Ok(true) => None,
            Ok(false) => Some(match self.marker.restore() {
                Ok(()) => format!(
                    "nftrace: the table inet {} was removed (a firewall reload or `nft flush \
                     ruleset`?); added it back",
                    self.marker.table()
                ),
                Err(e) => format!(
                    "nftrace: the table inet {} was removed and cannot be added back: {e}",
                    self.marker.table()
                ),
            }),
            Err(_) => None,
        }
    }
}
