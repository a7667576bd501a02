//! Which packets belong to the targets, as the kernel's scope maps hold it
//! (`tracer_common::scope`): the interfaces where everything is in scope, the traced
//! addresses (each with its container, which user space also needs to name the packets that
//! never reach a veth), and the published host ports. Computed from the topology, and again
//! whenever a container restarts or changes networks; the difference is what the maps get.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use tracer_common::scope::{
    addr_bit, point_bit, port_bit, word_and_mask, ScopeAddr, ADDR_BITMAP_WORDS, POINT_ALL,
    POINT_BITMAP_WORDS, POINT_TRACED, PORT_BITMAP_WORDS,
};

use super::topology::{AttachPoint, ContainerPath, Role};

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Scope {
    /// ifindex → `POINT_*` flags.
    pub points: BTreeMap<u32, u32>,
    /// Traced address → the container (or namespace) it belongs to.
    pub addrs: BTreeMap<IpAddr, String>,
    /// (protocol, host port) → the container it is published for.
    pub ports: BTreeMap<(u8, u16), String>,
}

/// What to change in the kernel's maps to go from one scope to another.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ScopeChanges {
    pub set_points: Vec<(u32, u32)>,
    pub del_points: Vec<u32>,
    pub add_addrs: Vec<IpAddr>,
    pub del_addrs: Vec<IpAddr>,
    pub add_ports: Vec<(u8, u16)>,
    pub del_ports: Vec<(u8, u16)>,
}

impl ScopeChanges {
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

impl Scope {
    /// The scope of these targets, attached at these points. With no container or namespace
    /// to trace (`--iface` alone), everything at the named interfaces is in scope.
    pub fn of(containers: &[ContainerPath], points: &[AttachPoint]) -> Self {
        let mut s = Self::default();
        let bare = containers.is_empty();
        for p in points {
            let flags = match p.role {
                Role::Veth if p.container.is_some() => POINT_TRACED,
                Role::Named if bare => POINT_ALL,
                _ => 0,
            };
            if flags != 0 {
                s.points.insert(p.ifindex, flags);
            }
        }
        for c in containers {
            for a in &c.addrs {
                s.addrs.entry(*a).or_insert_with(|| c.info.name.clone());
            }
            for p in &c.info.published {
                s.ports
                    .entry((p.proto, p.host_port))
                    .or_insert_with(|| c.info.name.clone());
            }
        }
        s
    }

    /// Host ports the ruleset DNATs to a traced address (`-p tcp … --dport 18080 -j DNAT
    /// --to-destination 172.18.0.2:8080`): the published ports of targets that Docker does
    /// not describe (`--netns`), or that a user mapped by hand.
    pub fn add_dnat_ports(&mut self, dnat: &[DnatRule]) {
        for r in dnat {
            if let Some(owner) = self.addrs.get(&r.to).cloned() {
                self.ports.entry((r.proto, r.dport)).or_insert(owner);
            }
        }
    }

    /// The container an address belongs to.
    pub fn owner(&self, addr: &IpAddr) -> Option<&str> {
        self.addrs.get(addr).map(String::as_str)
    }

    /// What the maps need to become `new`.
    pub fn changes_to(&self, new: &Scope) -> ScopeChanges {
        ScopeChanges {
            set_points: new
                .points
                .iter()
                .filter(|(i, f)| self.points.get(i) != Some(f))
                .map(|(i, f)| (*i, *f))
                .collect(),
            del_points: removed(self.points.keys(), &new.points),
            add_addrs: removed(new.addrs.keys(), &self.addrs),
            del_addrs: removed(self.addrs.keys(), &new.addrs),
            add_ports: removed(new.ports.keys(), &self.ports),
            del_ports: removed(self.ports.keys(), &new.ports),
        }
    }

    /// The start-up line.
    pub fn describe(&self) -> String {
        let addrs: BTreeSet<String> = self.addrs.keys().map(IpAddr::to_string).collect();
        let ports: Vec<String> = self
            .ports
            .keys()
            .map(|(proto, port)| format!("{port}/{}", proto_name(*proto)))
            .collect();
        let mut line = format!(
            "scope (decided in the kernel): packets at {} traced interface(s), to or from {}",
            self.points.len(),
            if addrs.is_empty() {
                "no address".to_owned()
            } else {
                addrs.into_iter().collect::<Vec<_>>().join(", ")
            }
        );
        if !ports.is_empty() {
            line.push_str(&format!(", to published port(s) {}", ports.join(", ")));
        }
        line.push_str(", and the replies NAT maps to them");
        line
    }
}

/// A DNAT rule's match and target, as far as scope needs them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DnatRule {
    pub proto: u8,
    pub dport: u16,
    pub to: IpAddr,
}

/// The DNAT rules of the nat table (iptables rule text, `iptables -S` style): those with one
/// protocol, one destination port and one destination address. Others (port ranges,
/// `--dports`, address ranges) are left out: their packets are still in scope once DNAT has
/// rewritten them, from the next hook on.
pub fn dnat_rules(ruleset: &super::ruleset::Ruleset) -> Vec<DnatRule> {
    let Some(nat) = ruleset.tables.get("nat") else {
        return Vec::new();
    };
    nat.entries
        .iter()
        .filter_map(|e| dnat_rule(&e.text))
        .collect()
}

fn dnat_rule(text: &str) -> Option<DnatRule> {
    let words: Vec<&str> = text.split_whitespace().collect();
    let after = |flag: &str| {
        words
            .iter()
            .position(|w| *w == flag)
            .and_then(|i| words.get(i + 1).copied())
    };
    if after("-j") != Some("DNAT") {
        return None;
    }
    let proto = match after("-p")? {
        "tcp" => 6,
        "udp" => 17,
        "sctp" => 132,
        _ => return None,
    };
    let dport = after("--dport")?.parse().ok()?;
    let to = after("--to-destination")?;
    // `172.18.0.2:8080`, `172.18.0.2`, `[fd00::2]:80`
    let ip = match to.strip_prefix('[') {
        Some(rest) => rest.split(']').next()?,
        None => to.split(':').next()?,
    };
    Some(DnatRule {
        proto,
        dport,
        to: ip.parse().ok()?,
    })
}

fn removed<'a, K: Ord + Copy + 'a, V>(
    keys: impl Iterator<Item = &'a K>,
    from: &BTreeMap<K, V>,
) -> Vec<K> {
    keys.filter(|k| !from.contains_key(k)).copied().collect()
}

fn proto_name(proto: u8) -> &'static str {
    match proto {
        6 => "tcp",
        17 => "udp",
        132 => "sctp",
        _ => "?",
    }
}

/// The kernel's key for an address.
impl Scope {
    /// `SCOPE_ADDR_BITS`: the traced addresses' bits.
    pub fn addr_bitmap(&self) -> Vec<u64> {
        bitmap(
            ADDR_BITMAP_WORDS,
            self.addrs.keys().map(|a| addr_bit(&scope_addr(a))),
        )
    }

    /// `SCOPE_POINT_BITS`: the bits of the points (those the bitmap covers).
    pub fn point_bitmap(&self) -> Vec<u64> {
        bitmap(
            POINT_BITMAP_WORDS,
            self.points.keys().filter_map(|i| point_bit(*i)),
        )
    }

    /// `SCOPE_PORT_BITS`: the published ports' bits.
    pub fn port_bitmap(&self) -> Vec<u64> {
        bitmap(
            PORT_BITMAP_WORDS,
            self.ports
                .keys()
                .filter_map(|(proto, port)| port_bit(*proto, *port)),
        )
    }
}

/// A bitmap of `words` 64-bit words with these bits set.
fn bitmap(words: u32, bits: impl Iterator<Item = u32>) -> Vec<u64> {
    let mut out = vec![0u64; words as usize];
    for bit in bits {
        let (w, mask) = word_and_mask(bit);
        if let Some(x) = out.get_mut(w as usize) {
            *x |= mask;
        }
    }
    out
}

pub fn scope_addr(a: &IpAddr) -> ScopeAddr {
    match a {
        IpAddr::V4(v4) => ScopeAddr::v4(v4.octets()),
        IpAddr::V6(v6) => ScopeAddr::v6(v6.octets()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::target::{
        docker::{ContainerInfo, Published},
        netlink::Link,
        netns::Netns,
        topology::ContainerLink,
    };

    fn link(index: u32, name: &str) -> Link {
        Link {
            index,
            name: name.into(),
            kind: "veth".into(),
            peer_index: None,
            master: None,
            up: true,
        }
    }

    fn container(name: &str, veth: u32, addrs: &[&str], published: &[(u8, u16)]) -> ContainerPath {
        ContainerPath {
            info: ContainerInfo {
                id: format!("{name}-id"),
                name: name.into(),
                image: String::new(),
                pid: 1,
                endpoints: Vec::new(),
                published: published
                    .iter()
                    .map(|(proto, host_port)| Published {
                        proto: *proto,
                        host_port: *host_port,
                        container_port: 80,
                    })
                    .collect(),
            },
            netns: Netns {
                path: "/proc/1/ns/net".into(),
                inode: 1,
            },
            links: vec![ContainerLink {
                inside: link(2, "eth0"),
                host_veth: link(veth, "vethx"),
                bridge: None,
            }],
            addrs: addrs.iter().map(|a| a.parse().expect("ip")).collect(),
        }
    }

    fn point(ifindex: u32, role: Role, container: Option<&str>) -> AttachPoint {
        AttachPoint {
            ifindex,
            name: format!("if{ifindex}"),
            role,
            container: container.map(Into::into),
            veth: role == Role::Veth,
        }
    }

    fn lab_points() -> Vec<AttachPoint> {
        vec![
            point(21, Role::Veth, Some("cron")),
            point(10, Role::Bridge, None),
            point(23, Role::Port, None),
            point(30, Role::Uplink, None),
        ]
    }

    #[test]
    fn only_the_traced_veths_take_everything_and_addresses_name_their_container() {
        let c = container("cron", 21, &["172.18.0.2", "fd00::2"], &[(6, 18080)]);
        let s = Scope::of(&[c], &lab_points());
        assert_eq!(s.points, BTreeMap::from([(21, POINT_TRACED)]));
        assert_eq!(s.owner(&"172.18.0.2".parse().expect("ip")), Some("cron"));
        assert_eq!(s.owner(&"fd00::2".parse().expect("ip")), Some("cron"));
        assert_eq!(
            s.owner(&"172.18.0.3".parse().expect("ip")),
            None,
            "the neighbour"
        );
        assert_eq!(
            s.ports.keys().copied().collect::<Vec<_>>(),
            vec![(6, 18080)]
        );
        assert!(
            s.describe().contains("172.18.0.2, fd00::2"),
            "{}",
            s.describe()
        );
        assert!(s.describe().contains("18080/tcp"), "{}", s.describe());
    }

    #[test]
    fn named_interfaces_take_everything_only_without_containers() {
        let named = vec![point(2, Role::Named, None)];
        assert_eq!(
            Scope::of(&[], &named).points,
            BTreeMap::from([(2, POINT_ALL)])
        );
        let c = container("cron", 21, &["172.18.0.2"], &[]);
        let mut both = lab_points();
        both.extend(named);
        assert_eq!(Scope::of(&[c], &both).points.get(&2), None);
    }

    #[test]
    fn a_restart_with_a_new_address_and_port_moves_exactly_those_entries() {
        let before = Scope::of(
            &[
                container("cron", 21, &["172.18.0.2"], &[(6, 18080)]),
                container("peer", 23, &["172.18.0.3"], &[]),
            ],
            &lab_points(),
        );
        let mut points = lab_points();
        points[0].ifindex = 41; // a new veth
        points.push(point(23, Role::Veth, Some("peer")));
        let after = Scope::of(
            &[
                container("cron", 41, &["172.18.0.5"], &[(6, 18081), (17, 5353)]),
                container("peer", 23, &["172.18.0.3"], &[]),
            ],
            &points,
        );
        let ch = before.changes_to(&after);
        assert_eq!(ch.set_points, vec![(23, POINT_TRACED), (41, POINT_TRACED)]);
        assert_eq!(ch.del_points, vec![21]);
        assert_eq!(
            ch.add_addrs,
            vec!["172.18.0.5".parse::<IpAddr>().expect("ip")]
        );
        assert_eq!(
            ch.del_addrs,
            vec!["172.18.0.2".parse::<IpAddr>().expect("ip")]
        );
        assert_eq!(ch.add_ports, vec![(6, 18081), (17, 5353)]);
        assert_eq!(ch.del_ports, vec![(6, 18080)]);
        // Applied, nothing is left to change; the same scope again changes nothing.
        assert!(after.changes_to(&after).is_empty());
        assert_eq!(Scope::default().changes_to(&before).add_addrs.len(), 2);
    }

    #[test]
    fn the_bitmaps_hold_exactly_the_scopes_addresses_and_ports() {
        let c = container("cron", 21, &["172.18.0.2", "fd00::2"], &[(6, 18080)]);
        let s = Scope::of(&[c], &lab_points());
        let bit = |words: &[u64], b: u32| {
            let (w, m) = word_and_mask(b);
            words[w as usize] & m != 0
        };
        let addrs = s.addr_bitmap();
        assert_eq!(addrs.len(), ADDR_BITMAP_WORDS as usize);
        for a in ["172.18.0.2", "fd00::2"] {
            let a: IpAddr = a.parse().expect("ip");
            assert!(bit(&addrs, addr_bit(&scope_addr(&a))), "{a}");
        }
        let set: u32 = addrs.iter().map(|w| w.count_ones()).sum();
        assert_eq!(set, 2);
        let ports = s.port_bitmap();
        assert!(bit(&ports, port_bit(6, 18080).expect("tcp")));
        assert!(!bit(&ports, port_bit(17, 18080).expect("udp")));
        assert_eq!(ports.iter().map(|w| w.count_ones()).sum::<u32>(), 1);
        assert!(Scope::default().addr_bitmap().iter().all(|w| *w == 0));
        // The traced veth (ifindex 21) alone; the bridge, port and uplink are not points.
        let points = s.point_bitmap();
        assert_eq!(points.len(), POINT_BITMAP_WORDS as usize);
        assert!(bit(&points, 21));
        assert_eq!(points.iter().map(|w| w.count_ones()).sum::<u32>(), 1);
    }

    #[test]
    fn a_point_beyond_the_bitmap_stays_in_the_hash_alone() {
        let far = container("cron", 70_000, &["172.18.0.2"], &[]);
        let s = Scope::of(&[far], &[point(70_000, Role::Veth, Some("cron"))]);
        assert_eq!(s.points, BTreeMap::from([(70_000, POINT_TRACED)]));
        assert!(s.point_bitmap().iter().all(|w| *w == 0));
    }

    #[test]
    fn a_network_disconnect_removes_only_that_address() {
        let two = container("cron", 21, &["172.18.0.2", "172.29.0.9"], &[]);
        let one = container("cron", 21, &["172.18.0.2"], &[]);
        let ch = Scope::of(&[two], &lab_points()).changes_to(&Scope::of(&[one], &lab_points()));
        assert_eq!(
            ch.del_addrs,
            vec!["172.29.0.9".parse::<IpAddr>().expect("ip")]
        );
        assert!(ch.add_addrs.is_empty() && ch.set_points.is_empty() && ch.del_points.is_empty());
    }

    #[test]
    fn dnat_rules_to_a_traced_address_are_its_published_ports() {
        let rs = crate::target::ruleset::Ruleset::parse(
            "*nat\n:PREROUTING ACCEPT [0:0]\n:DOCKER - [0:0]\n\
             [0:0] -A DOCKER ! -i br-x -p tcp -m tcp --dport 18080 -j DNAT --to-destination 172.18.0.2:8080\n\
             [0:0] -A DOCKER ! -i br-x -p udp -m udp --dport 5353 -j DNAT --to-destination 172.18.0.9:53\n\
             [0:0] -A DOCKER -p tcp -m tcp --dport 7000:7010 -j DNAT --to-destination 172.18.0.2\n\
             [0:0] -A DOCKER -p tcp -m tcp --dport 9000 -j DNAT --to-destination [fd00::2]:90\n\
             [0:0] -A POSTROUTING -s 172.18.0.0/16 -j MASQUERADE\nCOMMIT\n",
            "iptables-save",
        );
        let rules = dnat_rules(&rs);
        assert_eq!(rules.len(), 3, "{rules:?}");
        assert_eq!(rules[2].to, "fd00::2".parse::<IpAddr>().expect("ip"));
        let mut s = Scope::of(
            &[container("cron", 21, &["172.18.0.2"], &[])],
            &lab_points(),
        );
        s.add_dnat_ports(&rules);
        assert_eq!(
            s.ports.keys().copied().collect::<Vec<_>>(),
            vec![(6, 18080)]
        );
        assert_eq!(s.ports.get(&(6, 18080)).map(String::as_str), Some("cron"));
    }

    #[test]
    fn kernel_keys_keep_the_family() {
        let v4 = scope_addr(&"172.18.0.2".parse().expect("ip"));
        assert_eq!(v4, ScopeAddr::v4([172, 18, 0, 2]));
        let v6 = scope_addr(&"fd00::2".parse().expect("ip"));
        assert_eq!(v6.family, tracer_common::scope::AF_INET6);
    }
}
