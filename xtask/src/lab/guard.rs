//! Network safety: the guard rules that keep lab traffic from ever following the default route
//! out of the machine, the user-style drop rule, and the pre-send safety check.

use super::state::State;
use super::{
    GUARD_COMMENT, INET_IP, INET_NS_IF, INET_SUBNET, ISOLATED_BRIDGE, ISOLATED_SUBNET, NETNS,
    UPLINK, UPLINK_IP,
};
use crate::cmd::cmd;
use anyhow::{bail, Context, Result};
use serde::Deserialize;
use std::net::Ipv4Addr;

/// Chains that carry a guard: DOCKER-USER (forwarded traffic, e.g. from containers) and
/// OUTPUT (traffic the host itself sends).
const GUARD_CHAINS: [&str; 2] = ["DOCKER-USER", "OUTPUT"];

/// Each lab range and the only interface it may leave by.
const GUARDED: [(&str, &str); 2] = [(INET_SUBNET, UPLINK), (ISOLATED_SUBNET, ISOLATED_BRIDGE)];

fn guard_spec(subnet: &str, iface: &str) -> Vec<String> {
    [
        "-d",
        subnet,
        "!",
        "-o",
        iface,
        "-m",
        "comment",
        "--comment",
        GUARD_COMMENT,
        "-j",
        "DROP",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

fn iptables() -> crate::cmd::Cmd {
    cmd("iptables", ["-w", "5"])
}

fn chain_exists(chain: &str) -> bool {
    iptables().args(["-S", chain]).ok().unwrap_or(false)
}

fn rule_present(chain: &str, spec: &[String]) -> bool {
    iptables()
        .args(["-C", chain])
        .args(spec)
        .ok()
        .unwrap_or(false)
}

pub fn guards_present() -> bool {
    GUARD_CHAINS.iter().all(|c| {
        GUARDED
            .iter()
            .all(|(net, dev)| rule_present(c, &guard_spec(net, dev)))
    })
}

/// Insert both guards at the top of their chains (if not there already).
pub fn install_guards() -> Result<()> {
    if !chain_exists("DOCKER-USER") {
        bail!("iptables chain DOCKER-USER does not exist: is dockerd running? (cargo xtask setup)");
    }
    for chain in GUARD_CHAINS {
        for (net, dev) in GUARDED {
            if !rule_present(chain, &guard_spec(net, dev)) {
                iptables()
                    .args(["-I", chain, "1"])
                    .args(guard_spec(net, dev))
                    .run()
                    .with_context(|| format!("installing the lab guard in {chain}"))?;
            }
        }
    }
    if !guards_present() {
        bail!("guard rules are not in place after installing them");
    }
    Ok(())
}

/// `iptables -S CHAIN` lines, or none if the chain does not exist.
fn chain_rules(chain: &str) -> Vec<String> {
    iptables()
        .args(["-S", chain])
        .read()
        .map(|s| s.lines().map(str::to_string).collect())
        .unwrap_or_default()
}

/// Delete one rule given in `iptables -S` form (`-A CHAIN ...`).
fn delete_rule_line(line: &str) -> Result<()> {
    let mut words = line.split_whitespace();
    if words.next() != Some("-A") {
        bail!("not a rule line: {line}");
    }
    iptables().arg("-D").args(words).run()
}

/// Remove every rule carrying the guard comment from the guarded chains; returns how many.
pub fn remove_guards() -> Result<usize> {
    let needle = format!("--comment {GUARD_COMMENT}");
    let mut removed = 0;
    for chain in GUARD_CHAINS {
        for line in chain_rules(chain) {
            if line.contains(&needle) {
                delete_rule_line(&line)?;
                removed += 1;
            }
        }
    }
    Ok(removed)
}

/// The drop rule as `iptables -S` prints it; deliberately without a comment, so it looks like
/// a rule a user wrote.
pub fn drop_rule_line(port: u16) -> String {
    format!("-A DOCKER-USER -d {INET_IP}/32 -p tcp -m tcp --dport {port} -j DROP")
}

/// Insert the drop rule right after the DOCKER-USER guards; returns its `iptables -S` line.
pub fn install_drop_rule(port: u16) -> Result<String> {
    let line = drop_rule_line(port);
    if chain_rules("DOCKER-USER").contains(&line) {
        bail!("DOCKER-USER already holds `{line}` (left over, or a user's own rule)");
    }
    let spec: Vec<&str> = line.split_whitespace().skip(2).collect();
    iptables()
        .args(["-I", "DOCKER-USER", &(GUARDED.len() + 1).to_string()])
        .args(&spec)
        .run()
        .context("installing the drop rule")?;
    if !chain_rules("DOCKER-USER").contains(&line) {
        bail!("drop rule not found as `{line}` in `iptables -S DOCKER-USER` after inserting it");
    }
    Ok(line)
}

/// Remove the recorded drop rule, or (without a record) any rule with the lab's known spec
/// for the lab's drop ports.
pub fn remove_drop_rule(recorded: Option<&str>, known_ports: &[u16]) -> Result<usize> {
    let mut wanted: Vec<String> = known_ports.iter().map(|p| drop_rule_line(*p)).collect();
    if let Some(r) = recorded {
        wanted.push(r.to_string());
    }
    let mut removed = 0;
    for line in chain_rules("DOCKER-USER") {
        if wanted.contains(&line) {
            delete_rule_line(&line)?;
            removed += 1;
        }
    }
    Ok(removed)
}

pub fn drop_rule_present(line: &str) -> bool {
    chain_rules("DOCKER-USER").iter().any(|l| l == line)
}

#[derive(Deserialize)]
struct Route {
    dev: Option<String>,
}

fn route_dev(netns: Option<&str>, dst: Ipv4Addr) -> Result<String> {
    let mut c = cmd("ip", Vec::<&str>::new());
    if let Some(ns) = netns {
        c = c.args(["-n", ns]);
    }
    let out = c.args(["-j", "route", "get"]).arg(dst.to_string()).read()?;
    let routes: Vec<Route> =
        serde_json::from_str(&out).with_context(|| format!("parsing `ip -j route get {dst}`"))?;
    routes
        .into_iter()
        .next()
        .and_then(|r| r.dev)
        .with_context(|| format!("`ip route get {dst}` names no device"))
}

/// Whether `dst` is inside `cidr` (`a.b.c.d/len`; false if `cidr` does not parse).
fn in_subnet(dst: Ipv4Addr, cidr: &str) -> bool {
    let Some((net, len)) = cidr.split_once('/') else {
        return false;
    };
    let (Ok(net), Ok(len)) = (net.parse::<Ipv4Addr>(), len.parse::<u32>()) else {
        return false;
    };
    let mask = u32::MAX.checked_shl(32 - len.min(32)).unwrap_or(0);
    u32::from(dst) & mask == u32::from(net) & mask
}

fn in_lab_subnet(dst: Ipv4Addr) -> bool {
    in_subnet(dst, INET_SUBNET)
}

/// Where a send originates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin<'a> {
    /// A lab container (its name).
    Container(&'a str),
    /// The lab's internet namespace.
    Inet,
}

/// Refuse to send unless the destination is provably inside the lab: the namespace exists,
/// the guards are in place, and the route to `dst` leaves by the lab's own interface (or, for
/// container-to-container, by the lab's bridge to a lab container's address).
pub fn safety_check(state: &State, origin: Origin, dst: Ipv4Addr) -> Result<()> {
    if !super::inet::netns_exists() {
        bail!("safety: network namespace {NETNS} does not exist; refusing to send");
    }
    if !super::docker::link_exists(UPLINK) {
        bail!("safety: lab uplink {UPLINK} does not exist; refusing to send");
    }
    if !guards_present() {
        bail!("safety: guard rules ({GUARD_COMMENT}) are missing; refusing to send");
    }
    let lab_containers: Vec<&str> = [Some(state.container_ip.as_str()), state.peer_ip.as_deref()]
        .into_iter()
        .flatten()
        .collect();
    match origin {
        Origin::Container(_) => {
            if in_lab_subnet(dst) {
                if dst.to_string() == UPLINK_IP {
                    bail!("safety: {dst} is the host's own lab address, not a lab destination");
                }
                let dev = route_dev(None, dst)?;
                if dev != UPLINK {
                    bail!("safety: route to {dst} leaves by {dev}, not {UPLINK}; refusing to send");
                }
            } else if in_subnet(dst, ISOLATED_SUBNET) {
                // The isolated network's containers: only by its own bridge, which the
                // guards pin that range to.
                let dev = route_dev(None, dst)?;
                if dev != ISOLATED_BRIDGE {
                    bail!("safety: route to {dst} leaves by {dev}, not {ISOLATED_BRIDGE}");
                }
            } else if lab_containers.contains(&dst.to_string().as_str()) {
                let bridge = state
                    .bridge
                    .as_deref()
                    .context("safety: the lab's bridge is not recorded")?;
                let dev = route_dev(None, dst)?;
                if dev != bridge {
                    bail!("safety: route to {dst} leaves by {dev}, not the lab bridge {bridge}");
                }
            } else {
                bail!(
                    "safety: {dst} is neither in {INET_SUBNET} or {ISOLATED_SUBNET} nor a lab container ({}); refusing to send",
                    lab_containers.join(", ")
                );
            }
        }
        Origin::Inet => {
            if !in_lab_subnet(dst) || dst.to_string() == INET_IP {
                bail!("safety: from {NETNS} only other {INET_SUBNET} addresses may be reached, not {dst}");
            }
            let dev = route_dev(Some(NETNS), dst)?;
            if dev != INET_NS_IF {
                bail!("safety: in {NETNS} the route to {dst} leaves by {dev}, not {INET_NS_IF}");
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subnets_hold_only_their_own_addresses() {
        let a = |s: &str| s.parse::<Ipv4Addr>().expect("addr");
        assert!(in_subnet(a("198.51.100.2"), INET_SUBNET));
        assert!(!in_subnet(a("198.51.101.2"), INET_SUBNET));
        assert!(in_subnet(a("172.29.0.9"), ISOLATED_SUBNET));
        assert!(!in_subnet(a("172.29.1.9"), ISOLATED_SUBNET));
        assert!(!in_subnet(a("8.8.8.8"), "0.0.0.0/x"));
        assert!(in_subnet(a("8.8.8.8"), "0.0.0.0/0"));
    }
}
