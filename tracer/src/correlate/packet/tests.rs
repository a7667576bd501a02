use super::*;
use crate::events::packet::{parse_ethernet, tests::tcp_syn_v4};

pub const VETH: u32 = 21;
pub const BRIDGE: u32 = 10;
pub const UPLINK: u32 = 30;
pub const PEER_VETH: u32 = 23;

pub fn points() -> Points {
    let p = |name: &str, role, container: Option<&str>| PointInfo {
        name: name.into(),
        role,
        container: container.map(Into::into),
        veth: role == Role::Veth,
    };
    Points::from_iter([
        (VETH, p("veth9780200", Role::Veth, Some("ens_monitor_cron"))),
        (BRIDGE, p("br-d9231d44a1ab", Role::Bridge, None)),
        (UPLINK, p("ftlab-up", Role::Uplink, None)),
        (
            PEER_VETH,
            p("vethpeer", Role::Veth, Some("ens_monitor_peer")),
        ),
    ])
}

/// A SYN from the container, optionally with the source rewritten (as after MASQUERADE).
pub fn frame(src: [u8; 4], sport: u16) -> Vec<u8> {
    let mut f = tcp_syn_v4();
    f[26..30].copy_from_slice(&src);
    f[34..36].copy_from_slice(&sport.to_be_bytes());
    f
}

pub fn obs(skb: u64, ts: u64, ifindex: u32, dir: Direction, f: &[u8]) -> Observation {
    Observation::Tc(TcObservation {
        ts_ns: ts,
        skb,
        cpu: 0,
        ifindex,
        direction: dir,
        len: f.len() as u32,
        mark: 0,
        headers: parse_ethernet(f),
        bytes: f.to_vec(),
    })
}

/// One observation per (ts, ifindex, dir, source address) for skb 1, joined and completed.
pub fn packet_of(hops: &[(u64, u32, Direction, [u8; 4])]) -> Packet {
    let mut c = Correlator::new(points(), 1_000_000);
    let mut done = Vec::new();
    for (ts, ifindex, dir, src) in hops {
        c.push(obs(1, *ts, *ifindex, *dir, &frame(*src, 41234)), &mut done);
    }
    c.drain(&mut done);
    done.remove(0)
}

/// A SYN from the container, MASQUERADEd between its veth (t=1000) and the uplink (t=47900).
pub fn masqueraded_syn() -> Packet {
    packet_of(&[
        (1_000, VETH, Direction::Ingress, [172, 18, 0, 2]),
        (47_900, UPLINK, Direction::Egress, [198, 51, 100, 1]),
    ])
}

const CONTAINER: [u8; 4] = [172, 18, 0, 2];
const UPLINK_IP: [u8; 4] = [198, 51, 100, 1];

#[test]
fn joins_veth_bridge_uplink_with_snat() {
    let mut c = Correlator::new(points(), 1_000_000);
    let mut done = Vec::new();
    let inner = frame(CONTAINER, 41234);
    let outer = frame(UPLINK_IP, 41234);
    c.push(obs(0xa, 100, VETH, Direction::Ingress, &inner), &mut done);
    c.push(obs(0xa, 130, BRIDGE, Direction::Ingress, &inner), &mut done);
    c.push(obs(0xa, 150, UPLINK, Direction::Egress, &outer), &mut done);
    assert!(done.is_empty());
    c.expire(2_000_000, &mut done);
    assert_eq!(done.len(), 1);
    let p = &done[0];
    let order: Vec<u32> = p.hops.iter().map(|h| h.ifindex).collect();
    assert_eq!(order, vec![VETH, BRIDGE, UPLINK]);
    assert_eq!(p.way(c.points()), Some(Way::FromContainer));
    assert_eq!(p.hops[2].nat.len(), 1);
    assert_eq!(
        crate::model::Texts::default().nat(&p.hops[2].nat[0]).text(),
        "SNAT 172.18.0.2:41234 → 198.51.100.1:41234"
    );
    assert_eq!(
        p.view(c.points()).map(|h| h.source().to_string()),
        Some("172.18.0.2:41234".into())
    );
}

#[test]
fn a_reused_skb_address_starts_a_new_packet_at_an_entry_point() {
    let mut c = Correlator::new(points(), 1_000_000);
    let mut done = Vec::new();
    let f = frame(CONTAINER, 41234);
    c.push(obs(0xa, 100, VETH, Direction::Ingress, &f), &mut done);
    c.push(obs(0xa, 130, BRIDGE, Direction::Ingress, &f), &mut done);
    // Same address, a new packet leaving the container.
    c.push(obs(0xa, 500, VETH, Direction::Ingress, &f), &mut done);
    assert_eq!(done.len(), 1);
    assert_eq!(done[0].hops.len(), 2);
    // Same address, a packet arriving from outside.
    c.push(obs(0xa, 600, UPLINK, Direction::Ingress, &f), &mut done);
    assert_eq!(done.len(), 2);
    assert_eq!(done[1].hops.len(), 1);
}

#[test]
fn unrelated_headers_do_not_join() {
    let mut c = Correlator::new(points(), 1_000_000);
    let mut done = Vec::new();
    let a = frame(CONTAINER, 41234);
    let mut b = frame([172, 18, 0, 9], 5000);
    b[18..20].copy_from_slice(&0x4444u16.to_be_bytes()); // other IP id
    b[30..34].copy_from_slice(&[198, 51, 100, 7]);
    c.push(obs(0xa, 100, VETH, Direction::Ingress, &a), &mut done);
    c.push(obs(0xa, 120, UPLINK, Direction::Egress, &b), &mut done);
    assert_eq!(done.len(), 1, "the first packet is complete");
    c.drain(&mut done);
    assert_eq!(done.len(), 2);
}

#[test]
fn a_long_gap_splits_packets() {
    let mut c = Correlator::new(points(), 1_000);
    let mut done = Vec::new();
    let f = frame(CONTAINER, 41234);
    c.push(obs(0xa, 100, VETH, Direction::Ingress, &f), &mut done);
    c.push(obs(0xa, 5_000, BRIDGE, Direction::Ingress, &f), &mut done);
    assert_eq!(done.len(), 1);
}

#[test]
fn reply_path_is_to_container() {
    let mut c = Correlator::new(points(), 1_000_000);
    let mut done = Vec::new();
    // 198.51.100.2:8080 → 198.51.100.1:41234, de-NATed to 172.18.0.2:41234.
    let mut outer = tcp_syn_v4();
    outer[26..30].copy_from_slice(&[198, 51, 100, 2]);
    outer[30..34].copy_from_slice(&UPLINK_IP);
    outer[34..36].copy_from_slice(&8080u16.to_be_bytes());
    outer[36..38].copy_from_slice(&41234u16.to_be_bytes());
    let mut inner = outer.clone();
    inner[30..34].copy_from_slice(&CONTAINER);
    c.push(obs(0xb, 100, UPLINK, Direction::Ingress, &outer), &mut done);
    c.push(obs(0xb, 140, BRIDGE, Direction::Egress, &inner), &mut done);
    c.push(obs(0xb, 150, VETH, Direction::Egress, &inner), &mut done);
    c.drain(&mut done);
    let p = &done[0];
    assert_eq!(p.hops.len(), 3);
    assert_eq!(p.way(c.points()), Some(Way::ToContainer));
    assert_eq!(
        crate::model::Texts::default().nat(&p.hops[1].nat[0]).text(),
        "DNAT 198.51.100.1:41234 → 172.18.0.2:41234"
    );
    let (_, name) = p.container_hop(c.points()).expect("traced");
    assert_eq!(name, "ens_monitor_cron");
}

#[test]
fn the_in_flight_table_is_bounded() {
    let mut c = Correlator::with_limit(points(), 1_000_000_000, 100);
    let mut done = Vec::new();
    let f = frame(CONTAINER, 41234);
    for skb in 0..1_000u64 {
        c.push(obs(skb, skb, VETH, Direction::Ingress, &f), &mut done);
    }
    assert!(c.pending.len() <= 100);
    assert_eq!(done.len() as u64, c.forced);
    assert!(c.forced >= 900);
    // The oldest went first.
    assert_eq!(done[0].skb, 0);
}

#[test]
fn packets_that_never_touch_a_traced_veth_have_no_container() {
    let mut c = Correlator::new(points(), 1_000_000);
    let mut done = Vec::new();
    let f = frame([172, 18, 0, 3], 41234);
    c.push(obs(0xc, 100, BRIDGE, Direction::Ingress, &f), &mut done);
    c.push(obs(0xc, 120, UPLINK, Direction::Egress, &f), &mut done);
    c.drain(&mut done);
    assert!(done[0].container_hop(c.points()).is_none());
}

#[test]
fn a_packet_on_its_way_out_completes_sooner_than_one_still_in_the_host() {
    let mut c = Correlator::new(points(), 100_000_000);
    let mut done = Vec::new();
    let inner = frame(CONTAINER, 41234);
    let outer = frame(UPLINK_IP, 41234);
    // Out by the uplink at t=1 ms; another packet last seen at the bridge at t=1 ms; a third
    // out by the uplink and then met at a netfilter hook (not on its way out).
    c.push(
        obs(0xa, 500_000, VETH, Direction::Ingress, &inner),
        &mut done,
    );
    c.push(
        obs(0xa, 1_000_000, UPLINK, Direction::Egress, &outer),
        &mut done,
    );
    c.push(
        obs(0xb, 1_000_000, BRIDGE, Direction::Ingress, &inner),
        &mut done,
    );
    c.push(
        obs(0xc, 500_000, UPLINK, Direction::Egress, &outer),
        &mut done,
    );
    let mut nf = crate::correlate::verdict::tests::nf(1_000_000, 3, 0, &outer);
    nf.skb = 0xc;
    c.push(Observation::Nf(nf), &mut done);
    c.expire(1_000_000 + EXIT_IDLE_NS, &mut done);
    assert!(
        done.is_empty(),
        "not idle for longer than the exit's idle yet"
    );
    c.expire(1_000_001 + EXIT_IDLE_NS, &mut done);
    let skbs: Vec<u64> = done.iter().map(|p| p.skb).collect();
    assert_eq!(skbs, vec![0xa], "only the packet on its way out");
    c.expire(100_000_001 + 1_000_000, &mut done);
    assert_eq!(done.len(), 3, "the others after the correlator's idle");
}
