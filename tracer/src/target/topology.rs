//! Where a container's packets go on the host: its interfaces inside its namespace, the
//! host-side veth peers, the bridges they are enslaved to, and the uplinks that the host's
//! routing tables send traffic out of.

use std::{collections::BTreeMap, fmt};

use netlink_packet_route::AddressFamily;

use super::{
    docker::ContainerInfo,
    netlink::{self, Link, Route},
    netns::Netns,
};
use crate::error::{Error, Result};

/// The role an interface plays on a traced path.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// Host end of a traced container's veth pair.
    Veth,
    /// A bridge that a traced container's veth is enslaved to.
    Bridge,
    /// Another port of such a bridge (another container's veth): for the L2 path between
    /// containers. Its own traffic is not shown unless it touches a traced veth.
    Port,
    /// An interface the host routes traffic out of.
    Uplink,
    /// An interface named with `--iface`.
    Named,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Veth => "veth",
            Self::Bridge => "bridge",
            Self::Port => "bridge port",
            Self::Uplink => "uplink",
            Self::Named => "iface",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An interface of the host namespace to attach tc programs to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AttachPoint {
    pub ifindex: u32,
    pub name: String,
    pub role: Role,
    /// The traced container this interface belongs to (veth only).
    pub container: Option<String>,
    /// A veth, of any role: what leaves by it enters another namespace on this host, where
    /// a socket may still hold it (the lab's internet is one, reached by its uplink).
    pub veth: bool,
}

/// One interface of a container and where it lands on the host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerLink {
    pub inside: Link,
    pub host_veth: Link,
    pub bridge: Option<Link>,
}

#[derive(Clone, Debug)]
pub struct ContainerPath {
    pub info: ContainerInfo,
    pub netns: Netns,
    pub links: Vec<ContainerLink>,
    /// The addresses of its interfaces, read inside its namespace (with Docker's, for a
    /// container): what its packets carry.
    pub addrs: Vec<std::net::IpAddr>,
}

/// Everything discovered about the targets, in the host namespace.
#[derive(Clone, Debug, Default)]
pub struct Topology {
    pub containers: Vec<ContainerPath>,
    /// Other ports of the traced containers' bridges.
    pub ports: Vec<Link>,
    pub uplinks: Vec<Link>,
    pub named: Vec<Link>,
}

/// Reads the host's links and routes once.
pub struct HostView {
    pub links: Vec<Link>,
    pub routes: Vec<Route>,
}

impl HostView {
    /// Interfaces enslaved to `bridge` other than those in `except`.
    pub fn bridge_ports(&self, bridge: u32, except: &[u32]) -> Vec<Link> {
        self.links
            .iter()
            .filter(|l| l.master == Some(bridge) && !except.contains(&l.index))
            .cloned()
            .collect()
    }

    pub fn read() -> Result<Self> {
        let mut routes = netlink::routes(AddressFamily::Inet)?;
        routes.extend(netlink::routes(AddressFamily::Inet6)?);
        Ok(Self {
            links: netlink::links()?,
            routes,
        })
    }

    pub fn by_index(&self, index: u32) -> Option<&Link> {
        self.links.iter().find(|l| l.index == index)
    }

    pub fn by_name(&self, name: &str) -> Option<&Link> {
        self.links.iter().find(|l| l.name == name)
    }

    /// Interfaces the main routing table sends traffic out of, other than loopback and the
    /// container side (bridges, and veths enslaved to a bridge), plus whatever carries a
    /// default route. A veth without a master is a routed link, so it can be an uplink.
    pub fn uplinks(&self) -> Vec<Link> {
        let mut out: BTreeMap<u32, Link> = BTreeMap::new();
        for r in self.routes.iter().filter(|r| r.table == 254) {
            let Some(link) = r.oif.and_then(|i| self.by_index(i)) else {
                continue;
            };
            let container_side =
                link.kind == "bridge" || (link.kind == "veth" && link.master.is_some());
            if link.name == "lo" || (container_side && !r.is_default()) {
                continue;
            }
            out.insert(link.index, link.clone());
        }
        out.into_values().collect()
    }
}

/// Finds a container's interfaces inside its namespace and their host-side peers.
pub fn container_path(info: ContainerInfo, host: &HostView) -> Result<ContainerPath> {
    let netns = Netns::of_pid(info.pid)?;
    netns_path(info, netns, host)
}

/// A network namespace that is not a Docker container (`--netns /run/netns/X` or
/// `/proc/PID/ns/net`), traced like one: named after its path.
pub fn bare_netns_path(path: &std::path::Path, host: &HostView) -> Result<ContainerPath> {
    let netns = Netns::open(path)?;
    let name = match path.file_name().and_then(|n| n.to_str()) {
        Some("net") => path
            .parent()
            .and_then(|p| p.parent())
            .and_then(|p| p.file_name())
            .and_then(|n| n.to_str())
            .map_or_else(|| path.display().to_string(), |pid| format!("pid {pid}")),
        Some(n) => n.to_owned(),
        None => path.display().to_string(),
    };
    let info = ContainerInfo {
        id: String::new(),
        name,
        image: String::new(),
        pid: 0,
        endpoints: Vec::new(),
        published: Vec::new(),
    };
    netns_path(info, netns, host)
}

fn netns_path(info: ContainerInfo, netns: Netns, host: &HostView) -> Result<ContainerPath> {
    let (inside, inside_addrs) = netns.run(|| Ok((netlink::links()?, netlink::addresses()?)))?;
    let mut links = Vec::new();
    for link in inside.into_iter().filter(|l| l.kind == "veth") {
        let Some(peer) = link.peer_index.and_then(|i| host.by_index(i)) else {
            continue;
        };
        if peer.kind != "veth" {
            continue;
        }
        let bridge = peer.master.and_then(|m| host.by_index(m)).cloned();
        links.push(ContainerLink {
            inside: link,
            host_veth: peer.clone(),
            bridge,
        });
    }
    if links.is_empty() {
        return Err(Error::NoContainerInterfaces(info.name));
    }
    let mut addrs: Vec<std::net::IpAddr> = inside_addrs
        .iter()
        .filter(|a| links.iter().any(|l| l.inside.index == a.ifindex))
        .map(|a| a.addr)
        .chain(info.endpoints.iter().filter_map(|e| e.ip))
        .collect();
    addrs.sort();
    addrs.dedup();
    Ok(ContainerPath {
        info,
        netns,
        links,
        addrs,
    })
}

impl Topology {
    /// The interfaces to attach to, each once, in path order: veths, bridges, uplinks.
    pub fn attach_points(&self) -> Vec<AttachPoint> {
        let mut points: Vec<AttachPoint> = Vec::new();
        let mut push = |link: &Link, role: Role, container: Option<&str>| {
            if !points.iter().any(|p| p.ifindex == link.index) {
                points.push(AttachPoint {
                    ifindex: link.index,
                    name: link.name.clone(),
                    role,
                    container: container.map(str::to_owned),
                    veth: link.kind == "veth",
                });
            }
        };
        for link in &self.named {
            push(link, Role::Named, None);
        }
        for c in &self.containers {
            for l in &c.links {
                push(&l.host_veth, Role::Veth, Some(&c.info.name));
            }
        }
        for c in &self.containers {
            for l in &c.links {
                if let Some(b) = &l.bridge {
                    push(b, Role::Bridge, None);
                }
            }
        }
        for p in &self.ports {
            push(p, Role::Port, None);
        }
        for u in &self.uplinks {
            push(u, Role::Uplink, None);
        }
        points
    }

    /// The start-up lines: what was found, drawn like the seed's hand-made diagram.
    pub fn describe(&self) -> Vec<String> {
        let mut out = Vec::new();
        for c in &self.containers {
            let i = &c.info;
            if i.id.is_empty() {
                out.push(format!(
                    "netns {} ({}, inode {})",
                    i.name,
                    c.netns.path.display(),
                    c.netns.inode
                ));
            } else {
                out.push(format!(
                    "container {} ({}, image {}, pid {}, netns {})",
                    i.name,
                    i.short_id(),
                    i.image,
                    i.pid,
                    c.netns.inode
                ));
            }
            for l in &c.links {
                let ep = i.endpoints.iter().find(|e| {
                    l.bridge
                        .as_ref()
                        .is_some_and(|b| e.network_id.starts_with(b.name.trim_start_matches("br-")))
                });
                let addr = ep
                    .map(|e| match e.ip {
                        Some(ip) => format!(" {ip}/{} on {}", e.prefix_len, e.network),
                        None => format!(" on {}", e.network),
                    })
                    .unwrap_or_default();
                out.push(format!(
                    "  {}@if{}{addr}  ⇄  {} (host, ifindex {})  →  bridge {}",
                    l.inside.name,
                    l.host_veth.index,
                    l.host_veth.name,
                    l.host_veth.index,
                    l.bridge.as_ref().map_or("(none)", |b| b.name.as_str()),
                ));
            }
        }
        if !self.ports.is_empty() {
            let names: Vec<&str> = self.ports.iter().map(|u| u.name.as_str()).collect();
            out.push(format!(
                "other bridge ports (for container-to-container paths): {}",
                names.join(", ")
            ));
        }
        if !self.uplinks.is_empty() {
            let names: Vec<&str> = self.uplinks.iter().map(|u| u.name.as_str()).collect();
            out.push(format!(
                "uplinks (from the routing table): {}",
                names.join(", ")
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{IpAddr, Ipv4Addr};

    fn link(index: u32, name: &str, kind: &str, master: Option<u32>) -> Link {
        Link {
            index,
            name: name.into(),
            kind: kind.into(),
            peer_index: None,
            master,
            up: true,
        }
    }

    fn route(prefix_len: u8, oif: u32) -> Route {
        Route {
            destination: (prefix_len > 0).then_some(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 0))),
            prefix_len,
            oif: Some(oif),
            gateway: None,
            table: 254,
        }
    }

    fn seed_host() -> HostView {
        HostView {
            links: vec![
                link(1, "lo", "", None),
                link(2, "eth0", "", None),
                link(3, "docker0", "bridge", None),
                link(10, "br-d9231d44a1ab", "bridge", None),
                link(21, "veth9780200", "veth", Some(10)),
                link(30, "ftlab-up", "veth", None),
            ],
            routes: vec![
                route(0, 2),
                route(25, 2),
                route(16, 3),
                route(16, 10),
                route(24, 30),
            ],
        }
    }

    #[test]
    fn uplinks_come_from_routes_not_from_names() {
        let host = seed_host();
        let names: Vec<String> = host.uplinks().into_iter().map(|l| l.name).collect();
        // Bridges only carry their own subnets (container side); the unenslaved veth with a
        // /24 is a routed link, like the lab's "internet".
        assert_eq!(names, vec!["eth0", "ftlab-up"]);
        // Which of them leads into another namespace on this host: the veth, not eth0.
        let topo = Topology {
            uplinks: host.uplinks(),
            ..Topology::default()
        };
        let veths: Vec<(String, bool)> = topo
            .attach_points()
            .into_iter()
            .map(|p| (p.name, p.veth))
            .collect();
        assert_eq!(
            veths,
            vec![("eth0".into(), false), ("ftlab-up".into(), true)]
        );
    }

    #[test]
    fn a_default_route_over_a_bridge_makes_it_an_uplink() {
        let mut host = seed_host();
        host.routes.retain(|r| r.oif != Some(30));
        host.routes.push(route(0, 3));
        let names: Vec<String> = host.uplinks().into_iter().map(|l| l.name).collect();
        assert_eq!(names, vec!["eth0", "docker0"]);
    }
}
