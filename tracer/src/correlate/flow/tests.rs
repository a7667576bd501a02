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
    let names = |p: &Path| p.iter().map(|n| n.to_string()).collect::<Vec<_>>();
    assert_eq!(
        names(&s.path_out),
        ["veth9780200", "br-d9231d44a1ab", "ftlab-up"]
    );
    assert_eq!(
        names(&s.path_in),
        ["ftlab-up", "br-d9231d44a1ab", "veth9780200"]
    );
    assert_eq!(s.tcp_flags_in, 0x12);
}

#[test]
fn table_is_bounded() {
    let (packets, points) = out_and_back();
    let mut t = FlowTable::new(10);
    for port in 0..50u16 {
        t.record(&with_port(&packets[0], port), &points, false);
    }
    assert!(t.len() <= 10);
    assert!(t.evicted >= 40);
    // The least recently seen went: the newest is still there.
    let newest = t.record(&with_port(&packets[0], 49), &points, false);
    assert_eq!(t.get(&newest.expect("key")).map(|s| s.out_packets), Some(2));
}

/// `p` with its source port set to `port` and its times moved by `port` ns.
fn with_port(p: &Packet, port: u16) -> Packet {
    let mut p = p.clone();
    for h in &mut p.hops {
        if let Some(hd) = &mut h.headers {
            if let L4::Tcp { sport, .. } = &mut hd.l4 {
                *sport = port;
            }
        }
        h.ts_ns += u64::from(port);
    }
    p
}

/// Flows hold one shared copy of their container's name and of their path, and the
/// changed flows are kept only once something takes them, and only while in the table.
#[test]
fn flows_share_their_strings_and_keep_no_changes_nobody_takes() {
    let (packets, points) = out_and_back();
    let mut t = FlowTable::new(10);
    let keys: Vec<FlowKey> = (0..50u16)
        .filter_map(|port| t.record(&with_port(&packets[0], port), &points, false))
        .collect();
    assert!(t.changed.is_none(), "nothing took the changes: none kept");
    let (a, b) = (&keys[48], &keys[49]);
    assert!(Arc::ptr_eq(&a.container, &b.container));
    let pa = t.get(a).expect("a").path_out.clone();
    let pb = t.get(b).expect("b").path_out.clone();
    assert!(Arc::ptr_eq(&pa, &pb), "one path for both");
    assert!(Arc::ptr_eq(&pa[0], &t.names.name("veth9780200")));
    assert_eq!((t.names.names.len(), t.names.paths.len()), (4, 1));
    assert!(t.take_changed().is_empty());
    t.keep_changes();
    for port in 50..80u16 {
        t.record(&with_port(&packets[0], port), &points, false);
    }
    let changed = t.take_changed().len();
    assert!(
        changed <= t.len() && changed > 0,
        "{changed} of {}",
        t.len()
    );
    let n = t.len();
    assert_eq!(t.take_finished(u64::MAX, 0).len(), n);
    assert_eq!(t.changed.as_ref().map(super::super::NetSet::len), Some(0));
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

/// A recording's packets (the model) go to the same flows, with the same counts and NAT,
/// as the live packets they were written from.
#[test]
fn the_models_packets_count_as_the_live_ones() {
    let (packets, points) = out_and_back();
    let (mut live, mut read) = (FlowTable::new(10), FlowTable::new(10));
    for p in &packets {
        live.record(p, &points, false);
        let e = crate::correlate::explain::Explainer::empty().explain(p.clone(), &points);
        let clock = crate::events::clock::WallClock::wall();
        let m = crate::model::packet(&e, &points, &clock, &mut Default::default());
        let mut sample = Sample::of(&m).expect("a sample");
        sample.ts_ns = p.first_ts();
        read.add(sample);
    }
    assert_eq!(live.all(), read.all());
    assert_eq!((live.seen(), read.seen()), (1, 1));
    assert_eq!(tcp_flags_of("FP."), 0x19);
    assert_eq!(tcp_flags_of("none"), 0);
    assert_eq!(
        endpoint("[fd00::2]:80").map(|e| e.to_string()),
        Some("[fd00::2]:80".into())
    );
    assert_eq!(endpoint("10.0.0.1").and_then(|e| e.port), None);
}

/// A table grows as flows come; when it first fills it is given room for twice its flows
/// (so that it never runs full of tombstones), and under churn it never holds more: it is
/// rebuilt in place. The one rebuild beside the old table is that one, of 64-byte slots
/// (168 inline made the `--json` soak's peak: 16 MiB more for a moment).
#[test]
fn a_full_table_churns_in_the_memory_it_has() {
    let (packets, points) = out_and_back();
    let mut t = FlowTable::new(1000);
    assert!(t.slot_bytes() <= 64, "{}", t.slot_bytes());
    for port in 0..20_000u16 {
        t.record(&with_port(&packets[0], port), &points, false);
        if port == 1000 {
            // The first eviction made the room.
            assert!(t.capacity() >= 2000, "{}", t.capacity());
        }
        // 4,096 slots: the smallest table with half of it free for 1,000 flows.
        assert!(t.capacity() <= 3584, "after {port} flows: {}", t.capacity());
    }
    assert!(t.evicted > 18_000, "{}", t.evicted);
}
