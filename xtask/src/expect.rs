//! What flowtrace's output must show on a Docker-shaped host, as functions over the typed
//! model: the privileged e2e tests (`tracer/tests`) and the VM matrix call the same ones.
//! Each returns a sentence saying what is wrong, with the packet, so that a test can
//! `unwrap_or_else(|e| panic!(…))` and the VM checker can `bail!`.

use tracer_model::{Line, Packet, SummaryLine};

/// The names and addresses of a host's path: the traced container's veth, its bridge, the
/// uplink and the uplink's address (what MASQUERADE rewrites to).
#[derive(Clone, Debug)]
pub struct HostPath {
    pub veth: String,
    pub bridge: String,
    pub uplink: String,
    pub uplink_ip: String,
}

/// `(iface, dir)` of each tc hop, in order.
pub fn hops(p: &Packet) -> Vec<(String, String)> {
    p.tc_hops()
        .map(|h| (h.iface.to_string(), h.dir.to_string()))
        .collect()
}

/// `(hook, table, verdict)` of each netfilter hop, in order.
pub fn nf_hops(p: &Packet) -> Vec<(String, String, String)> {
    p.nf_hops()
        .map(|h| {
            (
                h.hook.to_string(),
                h.table.to_string(),
                h.verdict.to_string(),
            )
        })
        .collect()
}

/// The packet lines.
pub fn packets(lines: &[Line]) -> Vec<&Packet> {
    lines.iter().filter_map(Line::packet).collect()
}

/// The summary line (the last line of a run).
pub fn summary(lines: &[Line]) -> Option<&SummaryLine> {
    lines.iter().find_map(Line::summary)
}

/// The packets a summary counted at `iface`/`dir` (the kernel's per-hop counter).
pub fn hop_packets(s: &SummaryLine, iface: &str, dir: &str) -> Option<u64> {
    s.hops
        .iter()
        .find(|h| h.iface == iface && h.dir == dir)
        .map(|h| h.packets)
}

fn json(p: &Packet) -> String {
    Line::Packet(p.clone()).to_json()
}

fn pair(a: &str, b: &str) -> (String, String) {
    (a.to_owned(), b.to_owned())
}

impl HostPath {
    /// Container → internet: veth ingress, bridge ingress, uplink egress.
    pub fn out(&self) -> Vec<(String, String)> {
        vec![
            pair(&self.veth, "ingress"),
            pair(&self.bridge, "ingress"),
            pair(&self.uplink, "egress"),
        ]
    }

    /// Internet → container: uplink ingress, bridge egress, veth egress.
    pub fn inward(&self) -> Vec<(String, String)> {
        vec![
            pair(&self.uplink, "ingress"),
            pair(&self.bridge, "egress"),
            pair(&self.veth, "egress"),
        ]
    }

    /// A packet from the container to the internet: veth, bridge, uplink in that order, in
    /// time order, MASQUERADE'd to the uplink's address at POSTROUTING/nat.
    pub fn masqueraded_out(&self, p: &Packet) -> Result<(), String> {
        if hops(p) != self.out() {
            return Err(format!("the path out is {:?}: {}", hops(p), json(p)));
        }
        let at: Vec<u64> = p.hops.iter().map(|h| h.at_ns()).collect();
        if !at.windows(2).all(|w| w[0] <= w[1]) {
            return Err(format!("hops not in time order {at:?}: {}", json(p)));
        }
        let up = p.tc_hop(&self.uplink, "egress");
        let masqueraded = up
            .and_then(|h| h.src.as_deref())
            .is_some_and(|s| s.starts_with(&format!("{}:", self.uplink_ip)));
        if !masqueraded {
            return Err(format!("not MASQUERADE'd at the uplink: {}", json(p)));
        }
        match p.nf_hop("POSTROUTING", "nat").and_then(|h| h.nat.as_ref()) {
            Some(n) if n.kind == "snat" => Ok(()),
            _ => Err(format!("no SNAT at POSTROUTING/nat: {}", json(p))),
        }
    }

    /// A reply from the internet to a MASQUERADE'd connection: it arrives at the uplink for
    /// the uplink's address, is de-NATed at PREROUTING/nat, and goes out by the bridge and
    /// the veth for the container's `local` address.
    pub fn denatted_reply(&self, p: &Packet, local: &str) -> Result<(), String> {
        if hops(p) != self.inward() {
            return Err(format!("the path in is {:?}: {}", hops(p), json(p)));
        }
        let arrives = p
            .tc_hop(&self.uplink, "ingress")
            .and_then(|h| h.dst.as_deref())
            .is_some_and(|d| d.starts_with(&format!("{}:", self.uplink_ip)));
        if !arrives {
            return Err(format!(
                "the reply does not arrive for the uplink's address: {}",
                json(p)
            ));
        }
        let at_bridge = p
            .tc_hop(&self.bridge, "egress")
            .and_then(|h| h.dst.as_deref());
        if at_bridge != Some(local) {
            return Err(format!("not de-NATed before the bridge: {}", json(p)));
        }
        match p.nf_hop("PREROUTING", "nat").and_then(|h| h.nat.as_ref()) {
            Some(n) if n.kind == "dnat" => Ok(()),
            _ => Err(format!(
                "the reply is not de-NATed at PREROUTING/nat: {}",
                json(p)
            )),
        }
    }

    /// A connection from the internet to a published port: DNAT `from` → `to` at
    /// PREROUTING/nat, accepted at FORWARD/filter, out by the bridge and the veth.
    pub fn published_in(&self, p: &Packet, from: &str, to: &str) -> Result<(), String> {
        match p.nf_hop("PREROUTING", "nat").and_then(|h| h.nat.as_ref()) {
            Some(n) if n.kind == "dnat" && *n.from == *from && *n.to == *to => {}
            _ => {
                return Err(format!(
                    "no DNAT {from} → {to} at PREROUTING/nat: {}",
                    json(p)
                ))
            }
        }
        match p.nf_hop("FORWARD", "filter") {
            Some(h) if h.verdict == "accept" => {}
            _ => return Err(format!("FORWARD/filter does not accept it: {}", json(p))),
        }
        if hops(p) != self.inward() {
            return Err(format!("the path in is {:?}: {}", hops(p), json(p)));
        }
        Ok(())
    }
}

/// A drop by a netfilter rule: `NETFILTER_DROP` at `hook`/`table`, naming `rule` as
/// `iptables -S` prints it.
pub fn dropped_by_rule(p: &Packet, hook: &str, table: &str, rule: &str) -> Result<(), String> {
    let Some(d) = &p.drop else {
        return Err(format!("not dropped: {}", json(p)));
    };
    let got = (
        d.reason.as_str(),
        d.hook.as_deref(),
        d.table.as_deref(),
        d.rule.as_deref(),
    );
    if got != ("NETFILTER_DROP", Some(hook), Some(table), Some(rule)) {
        return Err(format!(
            "dropped as {got:?}, not by `{rule}` at {hook}/{table}: {}",
            json(p)
        ));
    }
    Ok(())
}
