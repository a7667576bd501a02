//! Where the lab's MASQUERADE put a connection, read from flowtrace's own NAT steps.
//!
//! MASQUERADE keeps the container's source port unless conntrack already holds the
//! translated tuple (an earlier test's connection from the other container, or one in
//! TIME_WAIT, to the same server): then it picks another port. A test that assumed the
//! port failed in CI for that reason alone, so the tests take the outside address from the
//! rewrite and check that it is on the uplink's address.

use tracer_model::Nat;

use super::{nf_hop, show, tc_hop, Lab, Packet};

/// [`masqueraded_to`], checked against the source `p` has as it leaves by the uplink.
pub fn leaves_masqueraded(lab: &Lab, p: &Packet, local: &str) -> String {
    let outside = masqueraded_to(lab, p, local);
    assert_eq!(
        tc_hop(p, &lab.uplink(), "egress").src.as_deref(),
        Some(outside.as_str()),
        "it leaves by the uplink with the source the SNAT step names: {}",
        show(p)
    );
    outside
}

/// The source the SNAT at POSTROUTING/nat wrote on `p`, a packet from `local`.
pub fn masqueraded_to(lab: &Lab, p: &Packet, local: &str) -> String {
    let nat = nat_at(p, "POSTROUTING", "snat");
    assert_eq!(&*nat.from, local, "the SNAT's source before: {}", show(p));
    on_the_uplink(lab, &nat.to, p);
    nat.to.to_string()
}

/// The destination the de-NAT at PREROUTING/nat took off `p`, a reply to `local`.
pub fn de_natted_from(lab: &Lab, p: &Packet, local: &str) -> String {
    let nat = nat_at(p, "PREROUTING", "dnat");
    assert_eq!(
        &*nat.to,
        local,
        "the de-NAT's destination after: {}",
        show(p)
    );
    on_the_uplink(lab, &nat.from, p);
    nat.from.to_string()
}

/// Whether `addr` (`ip:port`) is on the uplink's address.
pub fn is_on_the_uplink(lab: &Lab, addr: &str) -> bool {
    addr.strip_prefix(&format!("{}:", lab.uplink_ip()))
        .is_some_and(|port| port.parse::<u16>().is_ok_and(|p| p != 0))
}

/// The rewrite of `kind` at `hook`/nat on `p`; panics with the packet if there is none.
fn nat_at<'a>(p: &'a Packet, hook: &str, kind: &str) -> &'a Nat {
    let nat = nf_hop(p, hook, "nat")
        .nat
        .as_ref()
        .unwrap_or_else(|| panic!("no {kind} at {hook}/nat: {}", show(p)));
    assert_eq!(&*nat.kind, kind, "{}", show(p));
    nat
}

fn on_the_uplink(lab: &Lab, addr: &str, p: &Packet) {
    assert!(
        is_on_the_uplink(lab, addr),
        "{addr} is not on the uplink's address {}: {}",
        lab.uplink_ip(),
        show(p)
    );
}
