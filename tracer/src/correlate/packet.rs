//! Joining the observations of one packet into ordered hops.
//!
//! The kernel's `sk_buff` address is the packet's identity while it lives: the same address
//! is seen at the container's veth, the bridge and the uplink. Addresses are reused as soon as
//! an skb is freed, so an observation continues a pending packet only if it is plausible:
//! close in time, at a point the packet has not passed yet, not at an entry point (a packet
//! leaving a container, or arriving from outside, is always a new packet), and with headers
//! of the same flow (NAT may rewrite one side, not the protocol).

use std::net::IpAddr;

use rustc_hash::FxHashMap;

use tracer_common::Direction;

use super::nat::{self, NatRewrite};
use crate::{
    events::{
        decode::{EndObservation, NfObservation, Observation, TcObservation},
        packet::Headers,
    },
    model::Shared,
    target::topology::Role,
};

/// What the correlator knows about an attached interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PointInfo {
    /// Shared with every hop the model shows at it.
    pub name: Shared,
    pub role: Role,
    /// For a container's host veth: the container's name.
    pub container: Option<Shared>,
    /// A veth: its egress hands the packet to another namespace on this host.
    pub veth: bool,
}

/// By ifindex (the kernel's numbers, not the network's: a fast hash is safe here).
pub type Points = FxHashMap<u32, PointInfo>;

/// One packet at one observation point.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hop {
    pub ts_ns: u64,
    pub ifindex: u32,
    pub direction: Direction,
    pub len: u32,
    pub headers: Option<Headers>,
    /// Captured bytes (for recording).
    pub bytes: Vec<u8>,
    /// An address rewrite that happened between the previous hop and this one.
    pub nat: Vec<NatRewrite>,
}

/// Which way a packet goes relative to the traced container.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Way {
    /// Sent by the container (seen on ingress of its host veth).
    FromContainer,
    /// Delivered to the container (seen on egress of its host veth).
    ToContainer,
}

/// Whose packet this is, which way it goes, and its headers as the container sees them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Owner {
    pub container: String,
    pub way: Way,
    pub view: Option<Headers>,
}

/// A packet's whole observed path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Packet {
    pub skb: u64,
    /// Interface hops (tc), in time order.
    pub hops: Vec<Hop>,
    /// What the netfilter observers saw, in arrival order.
    pub nf: Vec<NfObservation>,
    /// How its life ended, when the kernel said so.
    pub end: Option<EndObservation>,
    /// Set by [`Packet::resolve_owner`] once the packet is complete.
    pub owner: Option<Owner>,
}

impl Packet {
    /// Time of the first observation of any kind (a packet that came in by an interface
    /// flowtrace is not attached to starts at netfilter).
    /// When it was last seen (its end, its last hop or netfilter observation).
    pub fn seen_until(&self) -> u64 {
        let hops = self.hops.iter().map(|h| h.ts_ns);
        let nf = self.nf.iter().map(|n| n.ts_ns);
        let end = self.end.iter().map(|e| e.ts_ns);
        hops.chain(nf).chain(end).max().unwrap_or(0)
    }

    pub fn first_ts(&self) -> u64 {
        let tc = self.hops.first().map(|h| h.ts_ns);
        let nf = self.nf.first().map(|n| n.ts_ns);
        match (tc, nf) {
            (Some(a), Some(b)) => a.min(b),
            (a, b) => a.or(b).unwrap_or(0),
        }
    }

    /// Time of the latest observation of any kind.
    fn last_ts(&self) -> u64 {
        let tc = self.hops.last().map_or(0, |h| h.ts_ns);
        let nf = self.nf.last().map_or(0, |n| n.ts_ns);
        tc.max(nf)
    }

    /// Room for a forwarded packet's usual path (three tc hops, seven netfilter slots) from
    /// the start: growing the lists one hop at a time was a reallocation per hop.
    const HOPS: usize = 4;
    const NF: usize = 8;

    fn new(skb: u64, hop: Hop) -> Self {
        let mut hops = Vec::with_capacity(Self::HOPS);
        hops.push(hop);
        Self {
            skb,
            hops,
            nf: Vec::with_capacity(Self::NF),
            end: None,
            owner: None,
        }
    }

    fn from_nf(obs: NfObservation) -> Self {
        Self {
            skb: obs.skb,
            hops: Vec::with_capacity(Self::HOPS),
            nf: {
                let mut nf = Vec::with_capacity(Self::NF);
                nf.push(obs);
                nf
            },
            end: None,
            owner: None,
        }
    }

    /// Decides whose packet this is: the container at whose veth it was seen; else (it never
    /// reached a traced veth: dropped on the way in, or on the way out of another network) the
    /// container whose address it was sent to at its last observation that says so (after
    /// DNAT), else the one whose address it came from. `addr_owner` names the container of a
    /// traced address.
    pub fn resolve_owner<'a>(
        &self,
        points: &Points,
        addr_owner: impl Fn(&IpAddr) -> Option<&'a str>,
    ) -> Option<Owner> {
        if let Some((h, c)) = self.container_hop(points) {
            return Some(Owner {
                container: c.to_owned(),
                way: match h.direction {
                    Direction::Ingress => Way::FromContainer,
                    Direction::Egress => Way::ToContainer,
                },
                view: h.headers,
            });
        }
        let mut seen: Vec<(u64, Headers)> = self
            .hops
            .iter()
            .filter_map(|h| h.headers.map(|x| (h.ts_ns, x)))
            .chain(
                self.nf
                    .iter()
                    .filter_map(|n| n.headers.map(|x| (n.ts_ns, x))),
            )
            .collect();
        seen.sort_by_key(|(ts, _)| *ts);
        let to = seen.iter().rev().find_map(|(_, h)| {
            addr_owner(&h.dst).map(|c| Owner {
                container: c.to_owned(),
                way: Way::ToContainer,
                view: Some(*h),
            })
        });
        to.or_else(|| {
            seen.iter().find_map(|(_, h)| {
                addr_owner(&h.src).map(|c| Owner {
                    container: c.to_owned(),
                    way: Way::FromContainer,
                    view: Some(*h),
                })
            })
        })
    }

    /// The first hop at a traced container's veth, with that container's name.
    pub fn container_hop<'a>(&'a self, points: &'a Points) -> Option<(&'a Hop, &'a str)> {
        self.hops.iter().find_map(|h| {
            let p = points.get(&h.ifindex)?;
            (p.role == Role::Veth)
                .then_some(())
                .and(p.container.as_deref())
                .map(|c| (h, c))
        })
    }

    /// The container it belongs to ([`Packet::resolve_owner`]), else the one at whose veth
    /// it was seen.
    pub fn container<'a>(&'a self, points: &'a Points) -> Option<&'a str> {
        match &self.owner {
            Some(o) => Some(&o.container),
            None => self.container_hop(points).map(|(_, c)| c),
        }
    }

    /// Way relative to the container: its owner's, else from the direction at its veth.
    pub fn way(&self, points: &Points) -> Option<Way> {
        if let Some(o) = &self.owner {
            return Some(o.way);
        }
        self.container_hop(points).map(|(h, _)| match h.direction {
            Direction::Ingress => Way::FromContainer,
            Direction::Egress => Way::ToContainer,
        })
    }

    /// The headers as the container sees them (its owner's view, or at its veth), else the
    /// first parsed ones.
    pub fn view(&self, points: &Points) -> Option<Headers> {
        self.owner
            .as_ref()
            .and_then(|o| o.view)
            .or_else(|| self.container_hop(points).and_then(|(h, _)| h.headers))
            .or_else(|| self.hops.iter().find_map(|h| h.headers))
            .or_else(|| self.nf.iter().find_map(|n| n.headers))
    }

    /// Frame length at the first hop (for a packet only netfilter saw, its IP length).
    pub fn frame_len(&self) -> u32 {
        match self.hops.first() {
            Some(h) => h.len,
            None => self.nf.first().map_or(0, |n| n.len),
        }
    }
}

/// Assembles observations into packets.
pub struct Correlator {
    points: Points,
    /// By skb address: a fast hash (the addresses are the kernel's, not an attacker's keys).
    pending: FxHashMap<u64, Packet>,
    /// A packet with no new observation for this long is complete.
    idle_ns: u64,
    /// At most this many packets in flight; past it the oldest are completed early.
    max_pending: usize,
    /// Packets completed early because of `max_pending`.
    pub forced: u64,
}

/// A packet last seen on its way out of the host's view is complete after this long
/// without a new observation (`Correlator::idle_for`); others after the correlator's idle.
pub const EXIT_IDLE_NS: u64 = 10_000_000;

/// In-flight packets kept at most, as many as the kernel tracks (a packet crosses the host in
/// microseconds; this only bites under a flood, where completing the oldest early costs at
/// most a split path).
pub const MAX_PENDING: usize = tracer_common::flow::MAX_TRACKED as usize;

impl Correlator {
    pub fn new(points: Points, idle_ns: u64) -> Self {
        Self::with_limit(points, idle_ns, MAX_PENDING)
    }

    pub fn with_limit(points: Points, idle_ns: u64, max_pending: usize) -> Self {
        Self {
            points,
            pending: FxHashMap::default(),
            idle_ns,
            max_pending: max_pending.max(1),
            forced: 0,
        }
    }

    /// Completes the oldest tenth of the in-flight packets when the table is full.
    fn make_room(&mut self, done: &mut Vec<Packet>) {
        if self.pending.len() < self.max_pending {
            return;
        }
        let mut ages: Vec<(u64, u64)> = self
            .pending
            .iter()
            .map(|(k, p)| (p.last_ts(), *k))
            .collect();
        ages.sort_unstable();
        for (_, k) in ages.into_iter().take((self.max_pending / 10).max(1)) {
            if let Some(p) = self.pending.remove(&k) {
                self.forced += 1;
                done.push(finish(p));
            }
        }
    }

    /// A new observation point (a restarted container's new veth).
    pub fn add_point(&mut self, ifindex: u32, info: PointInfo) {
        self.points.insert(ifindex, info);
    }

    pub fn points(&self) -> &Points {
        &self.points
    }

    /// Start time of the oldest packet still being assembled: completed packets that started
    /// after it must wait, so that output stays in time order.
    pub fn oldest_pending(&self) -> Option<u64> {
        self.pending.values().map(Packet::first_ts).min()
    }

    /// Adds any observation; packets it proves complete are appended to `done`.
    pub fn push(&mut self, obs: Observation, done: &mut Vec<Packet>) {
        match obs {
            Observation::Tc(t) => self.push_tc(t, done),
            Observation::Nf(n) => self.push_nf(n, done),
            Observation::End(e) => self.push_end(e, done),
        }
    }

    /// A netfilter observation joins the pending packet of its skb; one with none starts a
    /// packet (it came in by an interface flowtrace is not attached to, or the host sent it).
    fn push_nf(&mut self, obs: NfObservation, done: &mut Vec<Packet>) {
        let idle = self.idle_ns;
        if let Some(p) = self.pending.get_mut(&obs.skb) {
            if obs.ts_ns.saturating_sub(p.last_ts()) <= idle {
                p.nf.push(obs);
                return;
            }
        }
        if let Some(old) = self.pending.remove(&obs.skb) {
            done.push(finish(old));
        }
        self.make_room(done);
        self.pending.insert(obs.skb, Packet::from_nf(obs));
    }

    /// The kernel freed (or dropped) the skb: its packet is complete.
    fn push_end(&mut self, obs: EndObservation, done: &mut Vec<Packet>) {
        if let Some(mut p) = self.pending.remove(&obs.skb) {
            p.end = Some(obs);
            done.push(finish(p));
        }
    }

    /// Adds a tc observation; packets it proves complete are appended to `done`.
    fn push_tc(&mut self, obs: TcObservation, done: &mut Vec<Packet>) {
        let hop = Hop {
            ts_ns: obs.ts_ns,
            ifindex: obs.ifindex,
            direction: obs.direction,
            len: obs.len,
            headers: obs.headers,
            bytes: obs.bytes,
            nat: Vec::new(),
        };
        let continues = self
            .pending
            .get(&obs.skb)
            .is_some_and(|p| self.continues(p, &hop));
        if continues {
            if let Some(p) = self.pending.get_mut(&obs.skb) {
                p.hops.push(hop);
            }
            return;
        }
        if let Some(old) = self.pending.remove(&obs.skb) {
            done.push(finish(old));
        }
        self.make_room(done);
        self.pending.insert(obs.skb, Packet::new(obs.skb, hop));
    }

    fn continues(&self, p: &Packet, hop: &Hop) -> bool {
        if hop.ts_ns.saturating_sub(p.last_ts()) > self.idle_ns {
            return false;
        }
        let role = self.points.get(&hop.ifindex).map(|p| p.role);
        let entry = hop.direction == Direction::Ingress
            && matches!(role, Some(Role::Veth | Role::Port | Role::Uplink));
        if entry {
            return false;
        }
        if p.hops
            .iter()
            .any(|h| h.ifindex == hop.ifindex && h.direction == hop.direction)
        {
            return false;
        }
        let before = p
            .hops
            .iter()
            .rev()
            .find_map(|h| h.headers)
            .or_else(|| p.nf.iter().rev().find_map(|n| n.headers));
        match (before, hop.headers) {
            (Some(a), Some(b)) => same_packet(&a, &b),
            _ => true,
        }
    }

    /// Completes packets idle since before `now_ns - idle` (`EXIT_IDLE_NS` for a packet
    /// last seen on its way out).
    pub fn expire(&mut self, now_ns: u64, done: &mut Vec<Packet>) {
        let expired: Vec<u64> = self
            .pending
            .iter()
            .filter(|(_, p)| now_ns.saturating_sub(p.last_ts()) > self.idle_for(p))
            .map(|(k, _)| *k)
            .collect();
        let mut out: Vec<Packet> = expired
            .into_iter()
            .filter_map(|k| self.pending.remove(&k))
            .map(finish)
            .collect();
        out.sort_by_key(Packet::first_ts);
        done.extend(out);
    }

    /// How long `p` may wait for its next observation: what can follow its way out of the
    /// host's view (egress at a container's veth, a bridge port or the uplink) is a drop in
    /// the namespace it entered or its free, within microseconds of the egress.
    fn idle_for(&self, p: &Packet) -> u64 {
        let Some(h) = p.hops.last() else {
            return self.idle_ns;
        };
        let out = h.direction == Direction::Egress
            && p.nf.last().is_none_or(|n| n.ts_ns <= h.ts_ns)
            && matches!(
                self.points.get(&h.ifindex).map(|x| x.role),
                Some(Role::Veth | Role::Port | Role::Uplink)
            );
        if out {
            self.idle_ns.min(EXIT_IDLE_NS)
        } else {
            self.idle_ns
        }
    }

    /// Completes everything (at exit).
    pub fn drain(&mut self, done: &mut Vec<Packet>) {
        let mut out: Vec<Packet> = self.pending.drain().map(|(_, p)| finish(p)).collect();
        out.sort_by_key(Packet::first_ts);
        done.extend(out);
    }
}

/// Could `b` be `a` after NAT? Same protocol, and at most the source or the destination
/// rewritten (or both, when the IPv4 identification proves it is the same datagram).
fn same_packet(a: &Headers, b: &Headers) -> bool {
    if a.proto != b.proto {
        return false;
    }
    let same_id = a.ip_id != 0 && a.ip_id == b.ip_id;
    a.source() == b.source() || a.destination() == b.destination() || same_id
}

fn finish(mut p: Packet) -> Packet {
    p.hops.sort_by_key(|h| h.ts_ns);
    annotate(&mut p.hops);
    p
}

/// Compares each hop's headers with the previous hop that had headers and records the
/// rewrites on the hop where they first show.
fn annotate(hops: &mut [Hop]) {
    let mut before = None;
    for hop in hops.iter_mut() {
        let Some(now) = hop.headers else {
            continue;
        };
        if let Some(prev) = before {
            hop.nat = nat::rewrites(&prev, &now);
        }
        before = Some(now);
    }
}

#[cfg(test)]
pub mod tests;
