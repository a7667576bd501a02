//! Packets into flows: one flow per connection as the container sees it (before SNAT on the
//! way out, after de-NAT on the way back), with counts each way, the NAT it went through,
//! and the path. The table is bounded: the least recently seen flows are evicted first.

use std::{
    fmt,
    hash::{BuildHasher, Hash, Hasher},
    net::IpAddr,
    sync::Arc,
};

use super::packet::{Packet, Points, Way};
use super::{NetMap, NetSet};
use crate::events::packet::{Endpoint, Headers, Proto, L4};

/// A connection from the container's point of view. For ICMP echo the "port" of the local
/// side is the echo identifier.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FlowKey {
    /// Shared by all of a container's flows ([`Names`]).
    pub container: Arc<str>,
    pub proto: Proto,
    pub local: IpAddr,
    pub local_port: u16,
    pub remote: IpAddr,
    pub remote_port: u16,
}

impl FlowKey {
    pub fn new(container: Arc<str>, view: &Headers, way: Way) -> Self {
        let (local, remote) = match way {
            Way::FromContainer => (view.source(), view.destination()),
            Way::ToContainer => (view.destination(), view.source()),
        };
        let (local_port, remote_port) = match view.l4 {
            L4::Icmp { id, .. } => (id, 0),
            _ => (local.port.unwrap_or(0), remote.port.unwrap_or(0)),
        };
        Self {
            container,
            proto: view.proto,
            local: local.ip,
            local_port,
            remote: remote.ip,
            remote_port,
        }
    }

    fn endpoint(&self, ip: IpAddr, port: u16) -> String {
        match self.proto {
            Proto::Tcp | Proto::Udp => Endpoint {
                ip,
                port: Some(port),
            }
            .to_string(),
            _ => ip.to_string(),
        }
    }

    pub fn local_str(&self) -> String {
        self.endpoint(self.local, self.local_port)
    }

    pub fn remote_str(&self) -> String {
        self.endpoint(self.remote, self.remote_port)
    }
}

impl fmt::Display for FlowKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} ↔ {}",
            self.proto.name().to_uppercase(),
            self.local_str(),
            self.remote_str()
        )?;
        if matches!(self.proto, Proto::Icmp | Proto::Icmpv6) {
            write!(f, " id {}", self.local_port)?;
        }
        Ok(())
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FlowStats {
    pub first_ns: u64,
    pub last_ns: u64,
    pub out_packets: u64,
    pub out_bytes: u64,
    pub in_packets: u64,
    pub in_bytes: u64,
    pub drops: u64,
    /// The container's side as the outside sees it, when NAT changed it.
    pub translated: Option<Endpoint>,
    /// Interfaces on the way out, in order (names).
    pub path_out: Path,
    pub path_in: Path,
    pub tcp_flags_out: u8,
    pub tcp_flags_in: u8,
}

impl FlowStats {
    /// A TCP connection is over once a RST is seen, or a FIN each way.
    pub fn closed(&self) -> bool {
        let rst = (self.tcp_flags_out | self.tcp_flags_in) & 0x04 != 0;
        let fins = self.tcp_flags_out & 0x01 != 0 && self.tcp_flags_in & 0x01 != 0;
        rst || fins
    }
}

/// The interfaces a flow's packets passed, in order; shared by every flow that took the same
/// path ([`Names`]).
pub type Path = Arc<[Arc<str>]>;

/// One copy of each container name and each path for the whole table: a flow holds pointers
/// to them, not strings of its own (65,536 flows × 7 strings was most of `--json`'s memory).
#[derive(Default)]
struct Names {
    names: NetSet<Arc<str>>,
    /// By the hash of their names (compared in full on a hit).
    paths: NetMap<u64, Vec<Path>>,
    hasher: foldhash::fast::RandomState,
}

impl Names {
    /// Entries at which the ones no flow holds any more are dropped.
    const PRUNE_AT: usize = 4_096;

    fn name(&mut self, s: &str) -> Arc<str> {
        if let Some(n) = self.names.get(s) {
            return n.clone();
        }
        if self.names.len() >= Self::PRUNE_AT {
            self.names.retain(|n| Arc::strong_count(n) > 1);
        }
        let n: Arc<str> = Arc::from(s);
        self.names.insert(n.clone());
        n
    }

    fn path<'a>(&mut self, hops: impl Iterator<Item = &'a str> + Clone) -> Path {
        let mut h = self.hasher.build_hasher();
        hops.clone().for_each(|s| s.hash(&mut h));
        let hash = h.finish();
        if let Some(p) = self
            .paths
            .get(&hash)
            .and_then(|v| v.iter().find(|p| p.iter().map(|s| &**s).eq(hops.clone())))
        {
            return p.clone();
        }
        if self.paths.len() >= Self::PRUNE_AT {
            self.paths.retain(|_, v| {
                v.retain(|p| Arc::strong_count(p) > 1);
                !v.is_empty()
            });
        }
        let p: Path = hops.map(|s| self.name(s)).collect();
        self.paths.entry(hash).or_default().push(p.clone());
        p
    }
}

pub struct FlowTable {
    /// Grows as flows come (a few flows stay in a small table, in cache). Once `max` is
    /// reached it is made room for `2 * max` in one step (see [`FlowTable::evict`]). A flow's
    /// counts are boxed, so that a slot is 64 bytes.
    flows: NetMap<FlowKey, Box<FlowStats>>,
    max: usize,
    /// The table has room for `2 * max` flows.
    roomy: bool,
    pub evicted: u64,
    /// Distinct flows ever recorded.
    seen: u64,
    /// Flows recorded since the last [`FlowTable::take_changed`], once something takes them
    /// ([`FlowTable::keep_changes`]: the dashboard); only flows still in the table.
    changed: Option<NetSet<FlowKey>>,
    names: Names,
}

/// What the flow table is told of one packet: from the core's packet live
/// ([`FlowTable::record`]), or from the model's when reading a recording ([`Sample::of`]), so
/// that both count flows the same way.
#[derive(Clone, Debug)]
pub struct Sample {
    pub key: FlowKey,
    pub way: Way,
    pub ts_ns: u64,
    pub len: u32,
    pub dropped: bool,
    pub tcp_flags: u8,
    /// The interfaces it passed, in order.
    pub path: Path,
    /// The container's side as it left the host, when NAT rewrote it.
    pub translated: Option<Endpoint>,
}

impl FlowTable {
    /// A table of at most `max` flows. It grows as flows come, so a few flows stay in a
    /// small table (in cache); see `flows` for what a full one weighs.
    pub fn new(max: usize) -> Self {
        let max = max.max(1);
        Self {
            flows: NetMap::default(),
            max,
            roomy: false,
            evicted: 0,
            seen: 0,
            changed: None,
            names: Names::default(),
        }
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.flows.len()
    }

    #[cfg(test)]
    pub fn get(&self, key: &FlowKey) -> Option<&FlowStats> {
        self.flows.get(key).map(|s| &**s)
    }

    #[cfg(test)]
    pub fn capacity(&self) -> usize {
        self.flows.capacity()
    }

    /// Bytes of one of the table's slots.
    #[cfg(test)]
    pub fn slot_bytes(&self) -> usize {
        fn slot<K, V>(_: &NetMap<K, V>) -> usize {
            std::mem::size_of::<(K, V)>()
        }
        slot(&self.flows)
    }

    /// Accounts a traced packet to its flow; returns the flow's key.
    pub fn record(&mut self, p: &Packet, points: &Points, dropped: bool) -> Option<FlowKey> {
        let container = p.container(points)?;
        let way = p.way(points)?;
        let view = p.view(points)?;
        let translated = match way {
            // The source as it left the host, if something rewrote it.
            Way::FromContainer => p
                .hops
                .iter()
                .rev()
                .find_map(|h| h.headers)
                .map(|last| last.source())
                .filter(|s| *s != view.source()),
            Way::ToContainer => None,
        };
        let container = self.names.name(container);
        let path = self.names.path(
            p.hops
                .iter()
                .filter_map(|h| points.get(&h.ifindex).map(|pt| &*pt.name)),
        );
        Some(self.add(Sample {
            key: FlowKey::new(container, &view, way),
            way,
            ts_ns: p.first_ts(),
            len: p.frame_len(),
            dropped,
            tcp_flags: view.tcp_flags().unwrap_or(0),
            path,
            translated,
        }))
    }

    /// Accounts one packet, as a [`Sample`], to its flow; returns the flow's key. A known
    /// flow (nearly every packet) is looked up once and its key not copied: the test for a
    /// new one and the entry after it were two hashes of the key, its container's name
    /// included, and a copy of it (callgrind, bench-user).
    pub fn add(&mut self, x: Sample) -> FlowKey {
        match self.flows.get_mut(&x.key) {
            Some(s) => Self::account(s, &x),
            None => {
                if self.flows.len() >= self.max {
                    self.evict();
                }
                self.seen += 1;
                let mut s = Box::<FlowStats>::default();
                Self::account(&mut s, &x);
                self.flows.insert(x.key.clone(), s);
            }
        }
        if let Some(changed) = &mut self.changed {
            changed.insert(x.key.clone());
        }
        x.key
    }

    /// One packet into its flow's counts.
    fn account(s: &mut FlowStats, x: &Sample) {
        if s.first_ns == 0 {
            s.first_ns = x.ts_ns;
        }
        s.last_ns = s.last_ns.max(x.ts_ns);
        s.drops += u64::from(x.dropped);
        match x.way {
            Way::FromContainer => {
                s.out_packets += 1;
                s.out_bytes += u64::from(x.len);
                s.tcp_flags_out |= x.tcp_flags;
                if s.path_out.len() < x.path.len() {
                    s.path_out = x.path.clone();
                }
                if x.translated.is_some() {
                    s.translated = x.translated;
                }
            }
            Way::ToContainer => {
                s.in_packets += 1;
                s.in_bytes += u64::from(x.len);
                s.tcp_flags_in |= x.tcp_flags;
                if s.path_in.len() < x.path.len() {
                    s.path_in = x.path.clone();
                }
            }
        }
    }

    /// Flows told apart so far, including those since evicted or taken.
    pub fn seen(&self) -> u64 {
        self.seen
    }

    /// From now on, keep which flows changed, for [`FlowTable::take_changed`].
    pub fn keep_changes(&mut self) {
        self.changed.get_or_insert_with(NetSet::default);
    }

    /// The flows that changed since the last call (for the dashboard), oldest first. None
    /// unless [`FlowTable::keep_changes`] was called.
    pub fn take_changed(&mut self) -> Vec<(&FlowKey, &FlowStats)> {
        let changed = self
            .changed
            .as_mut()
            .map(std::mem::take)
            .unwrap_or_default();
        let mut v: Vec<_> = self
            .flows
            .iter()
            .filter(|(k, _)| changed.contains(*k))
            .map(|(k, s)| (k, &**s))
            .collect();
        v.sort_by_key(|(_, s)| s.first_ns);
        v
    }

    /// Removes the tenth of the table that was seen least recently (a little more when
    /// several were last seen in the same nanosecond).
    ///
    /// The first time, the table is then given room for twice `max`. Why: in a full hash
    /// table, removals leave tombstones, which lookups step over until the table is rebuilt;
    /// it is rebuilt in place when at most half of it is in use, else as a table twice the
    /// size. At 57,344 flows in a table made for 57,344, the soak's new flows cost 28 µs
    /// each in lookups through tombstones until that doubling came (CPU 0.65 s every 10 s
    /// instead of 0.37), and with the counts inline the doubling was its peak (16 MiB more
    /// for a moment, a 22 MiB table kept). Now the one rebuild beside the old table is this
    /// one, of 64-byte slots (8 MiB, the counts 6 MiB more), and each later one is in place.
    fn evict(&mut self) {
        let mut ages: Vec<u64> = self.flows.values().map(|s| s.last_ns).collect();
        let n = (self.max / 10).max(1).min(ages.len());
        if n == 0 {
            return;
        }
        let (_, cutoff, _) = ages.select_nth_unstable(n - 1);
        let cutoff = *cutoff;
        let before = self.flows.len();
        let changed = &mut self.changed;
        self.flows.retain(|k, s| {
            let keep = s.last_ns > cutoff;
            if !keep {
                if let Some(c) = changed.as_mut() {
                    c.remove(k);
                }
            }
            keep
        });
        self.evicted += (before - self.flows.len()) as u64;
        if !self.roomy {
            self.roomy = true;
            let room = self.max.saturating_mul(2) - self.flows.len();
            self.flows.reserve(room);
        }
    }

    /// Removes and returns flows that closed, or saw nothing for `idle_ns`.
    pub fn take_finished(&mut self, now_ns: u64, idle_ns: u64) -> Vec<(FlowKey, FlowStats)> {
        let keys: Vec<FlowKey> = self
            .flows
            .iter()
            .filter(|(_, s)| s.closed() || now_ns.saturating_sub(s.last_ns) > idle_ns)
            .map(|(k, _)| k.clone())
            .collect();
        if let Some(c) = &mut self.changed {
            keys.iter().for_each(|k| {
                c.remove(k);
            });
        }
        let mut out: Vec<(FlowKey, FlowStats)> = keys
            .into_iter()
            .filter_map(|k| self.flows.remove_entry(&k))
            .map(|(k, s)| (k, *s))
            .collect();
        out.sort_by_key(|(_, s)| s.first_ns);
        out
    }

    /// Every flow, oldest first.
    pub fn all(&self) -> Vec<(&FlowKey, &FlowStats)> {
        let mut v: Vec<_> = self.flows.iter().map(|(k, s)| (k, &**s)).collect();
        v.sort_by_key(|(_, s)| s.first_ns);
        v
    }
}

impl Sample {
    /// A packet of the model (a recording's), as the flow table takes it. None if it names no
    /// container, way or addresses.
    pub fn of(p: &crate::model::Packet) -> Option<Sample> {
        let way = match p.way.as_deref()? {
            "out" => Way::FromContainer,
            "in" => Way::ToContainer,
            _ => return None,
        };
        let proto = Proto::from_name(p.proto.as_deref()?);
        let (src, dst) = (endpoint(p.src.as_deref()?)?, endpoint(p.dst.as_deref()?)?);
        let (local, remote) = match way {
            Way::FromContainer => (src, dst),
            Way::ToContainer => (dst, src),
        };
        let path: Path = p.tc_hops().map(|h| Arc::from(&*h.iface)).collect();
        let translated = match way {
            Way::FromContainer => p
                .tc_hops()
                .filter_map(|h| h.src.as_deref().and_then(endpoint))
                .last()
                .filter(|e| *e != src),
            Way::ToContainer => None,
        };
        Some(Sample {
            key: FlowKey {
                container: Arc::from(p.container.as_deref()?),
                proto,
                local: local.ip,
                local_port: local.port.unwrap_or(0),
                remote: remote.ip,
                remote_port: remote.port.unwrap_or(0),
            },
            way,
            ts_ns: 0,
            len: p.len,
            dropped: p.drop.as_ref().is_some_and(|d| d.counts()),
            tcp_flags: p.tcp_flags.as_deref().map_or(0, tcp_flags_of),
            path,
            translated,
        })
    }
}

/// "172.18.0.2:41234", "[fd00::2]:80" or a bare address, as the model writes them.
fn endpoint(s: &str) -> Option<Endpoint> {
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(Endpoint { ip, port: None });
    }
    let a: std::net::SocketAddr = s.parse().ok()?;
    Some(Endpoint {
        ip: a.ip(),
        port: Some(a.port()),
    })
}

/// The bits of "S.", "FP." … (`tcp_flags_str`'s letters).
fn tcp_flags_of(s: &str) -> u8 {
    s.chars()
        .map(|c| match c {
            'F' => 0x01,
            'S' => 0x02,
            'R' => 0x04,
            'P' => 0x08,
            '.' => 0x10,
            'U' => 0x20,
            'E' => 0x40,
            'W' => 0x80,
            _ => 0,
        })
        .fold(0, |a, b| a | b)
}

#[cfg(test)]
mod tests;
