//! Packets into flows: one flow per connection as the container sees it (before SNAT on the
//! way out, after de-NAT on the way back), with counts each way, the NAT it went through,
//! and the path. The table is bounded: the least recently seen flows are evicted first.

use std::{collections::HashMap, fmt, net::IpAddr};

use super::packet::{Packet, Points, Way};
use crate::events::packet::{Endpoint, Headers, Proto, L4};

/// A connection from the container's point of view. For ICMP echo the "port" of the local
/// side is the echo identifier.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FlowKey {
    pub container: String,
    pub proto: Proto,
    pub local: IpAddr,
    pub local_port: u16,
    pub remote: IpAddr,
    pub remote_port: u16,
}

impl FlowKey {
    pub fn new(container: &str, view: &Headers, way: Way) -> Self {
        let (local, remote) = match way {
            Way::FromContainer => (view.source(), view.destination()),
            Way::ToContainer => (view.destination(), view.source()),
        };
        let (local_port, remote_port) = match view.l4 {
            L4::Icmp { id, .. } => (id, 0),
            _ => (local.port.unwrap_or(0), remote.port.unwrap_or(0)),
        };
        Self {
            container: container.to_owned(),
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
    pub path_out: Vec<String>,
    pub path_in: Vec<String>,
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

pub struct FlowTable {
    flows: HashMap<FlowKey, FlowStats>,
    max: usize,
    pub evicted: u64,
}

impl FlowTable {
    pub fn new(max: usize) -> Self {
        Self {
            flows: HashMap::new(),
            max: max.max(1),
            evicted: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.flows.len()
    }

    #[cfg(test)]
    pub fn get(&self, key: &FlowKey) -> Option<&FlowStats> {
        self.flows.get(key)
    }

    /// Accounts a traced packet to its flow; returns the flow's key.
    pub fn record(&mut self, p: &Packet, points: &Points, dropped: bool) -> Option<FlowKey> {
        let container = p.container(points)?;
        let way = p.way(points)?;
        let view = p.view(points)?;
        let key = FlowKey::new(container, &view, way);
        if !self.flows.contains_key(&key) && self.flows.len() >= self.max {
            self.evict();
        }
        let s = self.flows.entry(key.clone()).or_default();
        let ts = p.first_ts();
        if s.first_ns == 0 {
            s.first_ns = ts;
        }
        s.last_ns = s.last_ns.max(ts);
        s.drops += u64::from(dropped);
        let names: Vec<String> = p
            .hops
            .iter()
            .filter_map(|h| points.get(&h.ifindex).map(|pt| pt.name.clone()))
            .collect();
        let flags = view.tcp_flags().unwrap_or(0);
        match way {
            Way::FromContainer => {
                s.out_packets += 1;
                s.out_bytes += u64::from(p.frame_len());
                s.tcp_flags_out |= flags;
                if s.path_out.len() < names.len() {
                    s.path_out = names;
                }
                // The source as it left the host, if something rewrote it.
                if let Some(last) = p.hops.iter().rev().find_map(|h| h.headers) {
                    if last.source() != view.source() {
                        s.translated = Some(last.source());
                    }
                }
            }
            Way::ToContainer => {
                s.in_packets += 1;
                s.in_bytes += u64::from(p.frame_len());
                s.tcp_flags_in |= flags;
                if s.path_in.len() < names.len() {
                    s.path_in = names;
                }
            }
        }
        Some(key)
    }

    /// Removes the tenth of the table that was seen least recently.
    fn evict(&mut self) {
        let mut ages: Vec<(u64, FlowKey)> = self
            .flows
            .iter()
            .map(|(k, s)| (s.last_ns, k.clone()))
            .collect();
        ages.sort();
        let n = (self.max / 10).max(1);
        for (_, k) in ages.into_iter().take(n) {
            self.flows.remove(&k);
            self.evicted += 1;
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
        let mut out: Vec<(FlowKey, FlowStats)> = keys
            .into_iter()
            .filter_map(|k| self.flows.remove_entry(&k))
            .collect();
        out.sort_by_key(|(_, s)| s.first_ns);
        out
    }

    /// Every flow, oldest first.
    pub fn all(&self) -> Vec<(&FlowKey, &FlowStats)> {
        let mut v: Vec<_> = self.flows.iter().collect();
        v.sort_by_key(|(_, s)| s.first_ns);
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::correlate::packet::{tests::*, Correlator};
    use tracer_common::Direction;

    fn out_and_back() -> (Vec<Packet>, Points) {
        let mut c = Correlator::new(points(), 1_000_000);
        let mut done = Vec::new();
        let inner = frame([172, 18, 0, 2], 41234);
        let outer = frame([198, 51, 100, 1], 41234);
        c.push(obs(1, 100, VETH, Direction::Ingress, &inner), &mut done);
        c.push(obs(1, 110, BRIDGE, Direction::Ingress, &inner), &mut done);
        c.push(obs(1, 120, UPLINK, Direction::Egress, &outer), &mut done);
        // The reply: swap the ends, SYN-ACK.
        let swap = |f: &[u8]| {
            let mut r = f.to_vec();
            let (src, dst) = (f[26..30].to_vec(), f[30..34].to_vec());
            r[26..30].copy_from_slice(&dst);
            r[30..34].copy_from_slice(&src);
            let (sp, dp) = (f[34..36].to_vec(), f[36..38].to_vec());
            r[34..36].copy_from_slice(&dp);
            r[36..38].copy_from_slice(&sp);
            r[47] = 0x12;
            r
        };
        c.push(
            obs(2, 300, UPLINK, Direction::Ingress, &swap(&outer)),
            &mut done,
        );
        c.push(
            obs(2, 320, BRIDGE, Direction::Egress, &swap(&inner)),
            &mut done,
        );
        c.push(
            obs(2, 330, VETH, Direction::Egress, &swap(&inner)),
            &mut done,
        );
        c.drain(&mut done);
        (done, c.points().clone())
    }

    #[test]
    fn request_and_reply_are_one_flow_with_its_nat() {
        let (packets, points) = out_and_back();
        let mut t = FlowTable::new(100);
        let k1 = t.record(&packets[0], &points, false).expect("traced");
        let k2 = t.record(&packets[1], &points, false).expect("traced");
        assert_eq!(k1, k2);
        assert_eq!(t.len(), 1);
        assert_eq!(k1.to_string(), "TCP 172.18.0.2:41234 ↔ 198.51.100.2:8080");
        let s = t.get(&k1).expect("flow");
        assert_eq!((s.out_packets, s.in_packets), (1, 1));
        assert_eq!(
            s.translated.map(|e| e.to_string()),
            Some("198.51.100.1:41234".into())
        );
        assert_eq!(
            s.path_out,
            vec!["veth9780200", "br-d9231d44a1ab", "ftlab-up"]
        );
        assert_eq!(
            s.path_in,
            vec!["ftlab-up", "br-d9231d44a1ab", "veth9780200"]
        );
        assert_eq!(s.tcp_flags_in, 0x12);
    }

    #[test]
    fn table_is_bounded() {
        let (packets, points) = out_and_back();
        let mut t = FlowTable::new(10);
        for port in 0..50u16 {
            let mut p = packets[0].clone();
            for h in &mut p.hops {
                if let Some(hd) = &mut h.headers {
                    if let L4::Tcp { sport, .. } = &mut hd.l4 {
                        *sport = port;
                    }
                }
                h.ts_ns += u64::from(port);
            }
            t.record(&p, &points, false);
        }
        assert!(t.len() <= 10);
        assert!(t.evicted >= 40);
    }

    #[test]
    fn finished_flows_are_taken_once() {
        let (packets, points) = out_and_back();
        let mut t = FlowTable::new(10);
        t.record(&packets[0], &points, false);
        assert!(t.take_finished(1_000, 10_000).is_empty());
        assert_eq!(t.take_finished(1_000_000, 10_000).len(), 1);
        assert_eq!(t.len(), 0);
    }
}
