use super::*;
use crate::{
    correlate::{
        decisions::Decision,
        packet::tests::{frame, points},
        verdict::tests::nf,
    },
    events::decode::EndObservation,
};

const RULE: &str = "-A DOCKER-USER -d 198.51.100.2/32 -p tcp -m tcp --dport 8080 -j DROP";
const BEFORE: &str = "*filter\n:FORWARD DROP [0:0]\n[0:0] -A FORWARD -j DOCKER-USER\n[0:0] -A DOCKER-USER -d 198.51.100.2/32 -p tcp -m tcp --dport 8080 -j DROP\nCOMMIT\n";

/// A FORWARD packet seen at `slots` (one observation each) and then dropped at `location`.
fn dropped_in_forward(slots: &[u8], location: u64) -> Packet {
    let f = frame([172, 18, 0, 2], 41234);
    let nf = slots
        .iter()
        .map(|&slot| nf(10 + u64::from(slot), 2, slot, &f))
        .collect();
    Packet {
        skb: 1,
        owner: None,
        hops: Vec::new(),
        nf,
        end: Some(EndObservation {
            ts_ns: 20,
            skb: 1,
            kind: EndKind::Drop { reason: 12 },
            location,
            ifindex: 0,
            netns: 0,
            // The freeing CPU noted where in FORWARD it was.
            passed: slots.last().map(|&slot| (2, slot)),
        }),
    }
}

/// An explainer whose ruleset is `save` now, and `save` with every rule's counter moved
/// from [0:0] to [1:60] when read again.
fn with_counters_moving(save: &'static str) -> Explainer {
    let mut ex = Explainer::empty();
    ex.set_ruleset(Ruleset::parse(save, "iptables-save"));
    ex.reads = Box::new(Inline::new(move || {
        Some(Ruleset::parse(
            &save.replace("[0:0] -A", "[1:60] -A"),
            "iptables-save",
        ))
    }));
    ex
}

#[test]
fn a_netfilter_drop_names_reason_hook_table_and_rule() {
    let packet = dropped_in_forward(&[0, 1, 2, 3, 4], 0xabc);
    let mut ex = with_counters_moving(BEFORE);
    ex.reasons
        .insert(12, "SKB_DROP_REASON_NETFILTER_DROP".into());
    ex.symbol = Box::new(|a| (a == 0xabc).then(|| "nf_hook_slow".to_owned()));
    let e = ex.explain(packet, &points());
    let d = e.drop.expect("dropped");
    assert_eq!(d.reason, "NETFILTER_DROP");
    assert_eq!(d.location.as_deref(), Some("nf_hook_slow"));
    assert_eq!(d.hook, Some("FORWARD"));
    assert_eq!(d.table.as_deref(), Some("filter"));
    assert_eq!(d.rule.as_deref(), Some(RULE));
    assert_eq!(d.rule_source.as_deref(), Some("iptables-save -c counters"));
}

/// A noisy firewall: while the container's packet is dropped in DOCKER-USER, the
/// internet's knocks are dropped in INPUT and another DOCKER-USER rule drops other
/// traffic. Only the rule that fits the packet and can meet it at FORWARD is named.
#[test]
fn of_the_rules_whose_counters_moved_only_one_that_fits_is_named() {
    const BUSY: &str = "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD DROP [0:0]\n\
        [0:0] -A INPUT -i ftlab-up -p tcp -m tcp --dport 7999 -j DROP\n\
        [0:0] -A FORWARD -j DOCKER-USER\n\
        [0:0] -A DOCKER-USER -p udp -m udp --dport 5353 -j DROP\n\
        [0:0] -A DOCKER-USER -d 198.51.100.2/32 -p tcp -m tcp --dport 8080 -j DROP\n\
        COMMIT\n";
    let mut ex = with_counters_moving(BUSY);
    let d = ex
        .explain(dropped_in_forward(&[0, 1, 2, 3, 4], 0), &points())
        .drop
        .expect("dropped");
    assert_eq!(d.rule.as_deref(), Some(RULE));
    assert!(d.candidates.is_empty());
}

/// Two drops by one rule, the counters read once for both (the first packet's read saw
/// the second's drop too): each packet claims one, none is left unnamed.
#[test]
fn a_read_that_saw_two_drops_names_both_packets() {
    let mut ex = Explainer::empty();
    ex.set_ruleset(Ruleset::parse(BEFORE, "iptables-save"));
    ex.reads = Box::new(Inline::new(|| {
        Some(Ruleset::parse(
            &BEFORE.replace("[0:0] -A", "[2:120] -A"),
            "iptables-save",
        ))
    }));
    for n in 1..=2 {
        let d = ex
            .explain(dropped_in_forward(&[0, 1, 2, 3, 4], 0), &points())
            .drop
            .expect("dropped");
        assert_eq!(d.rule.as_deref(), Some(RULE), "packet {n}");
    }
    let d = ex
        .explain(dropped_in_forward(&[0, 1, 2, 3, 4], 0), &points())
        .drop
        .expect("dropped");
    assert_eq!(d.rule, None, "a third drop the counters never showed");
}

#[test]
fn two_rules_that_both_fit_are_ambiguous_not_guessed() {
    const TWO_FIT: &str = "*filter\n:FORWARD DROP [0:0]\n\
        [0:0] -A FORWARD -j DOCKER-USER\n\
        [0:0] -A DOCKER-USER -s 172.18.0.0/16 -j DROP\n\
        [0:0] -A DOCKER-USER -d 198.51.100.2/32 -p tcp -m tcp --dport 8080 -j DROP\n\
        COMMIT\n";
    let mut ex = with_counters_moving(TWO_FIT);
    let d = ex
        .explain(dropped_in_forward(&[0, 1, 2, 3, 4], 0), &points())
        .drop
        .expect("dropped");
    assert_eq!(d.rule, None);
    assert_eq!(d.candidates.len(), 2, "{d:?}");
    assert!(
        d.rule_source
            .as_deref()
            .is_some_and(|s| s.contains("ambiguous")),
        "{d:?}"
    );
}

#[test]
fn drops_off_the_traced_path_are_not_drops() {
    let mut ex = Explainer::empty();
    ex.host_netns = 100;
    ex.netns_names.insert(200, "ens_monitor_cron".into());
    let dropped_in = |netns| Packet {
        skb: 1,
        owner: None,
        hops: Vec::new(),
        nf: Vec::new(),
        end: Some(EndObservation {
            ts_ns: 1,
            skb: 1,
            kind: EndKind::Drop { reason: 2 },
            location: 0,
            ifindex: 0,
            netns,
            passed: None,
        }),
    };
    assert!(
        ex.explain(dropped_in(100), &points()).drop.is_some(),
        "on the host"
    );
    let inside = ex
        .explain(dropped_in(200), &points())
        .drop
        .expect("in a traced container");
    assert_eq!(inside.place.as_deref(), Some("inside ens_monitor_cron"));
    assert!(
        ex.explain(dropped_in(300), &points()).drop.is_none(),
        "somewhere else"
    );
}

/// A pure ACK that TCP consumed and freed: shown with its raw reason, never a drop.
#[test]
fn tcps_own_frees_are_told_apart_from_drops() {
    let freed_at = |location: u64, reason: u32| Packet {
        skb: 1,
        owner: None,
        hops: Vec::new(),
        nf: Vec::new(),
        end: Some(EndObservation {
            ts_ns: 1,
            skb: 1,
            kind: EndKind::Drop { reason },
            location,
            ifindex: 0,
            netns: 0,
            passed: None,
        }),
    };
    let mut ex = Explainer::empty();
    ex.reasons.insert(2, "SKB_DROP_REASON_NOT_SPECIFIED".into());
    ex.reasons.insert(3, "SKB_DROP_REASON_NO_SOCKET".into());
    ex.symbol = Box::new(|a| {
        Some(match a {
            1 => "tcp_rcv_state_process".to_owned(),
            _ => "tcp_v4_rcv".to_owned(),
        })
    });
    let d = ex.explain(freed_at(1, 2), &points()).drop.expect("shown");
    assert!(d.freed_by == Some("tcp") && !d.counts());
    assert_eq!(d.reason, "NOT_SPECIFIED", "the raw reason is kept");
    for (loc, reason) in [(2, 2), (1, 3)] {
        let d = ex
            .explain(freed_at(loc, reason), &points())
            .drop
            .expect("a drop");
        assert!(d.counts(), "{d:?}");
    }
    // A socket queue purged at close, after delivery into the container: its socket's.
    ex.reasons.insert(4, "SKB_DROP_REASON_QUEUE_PURGE".into());
    let left_by = |ifindex| {
        let mut p = freed_at(2, 4);
        p.hops.push(crate::correlate::packet::Hop {
            ts_ns: 0,
            ifindex,
            direction: tracer_common::Direction::Egress,
            len: 60,
            headers: None,
            bytes: Vec::new(),
            nat: Vec::new(),
        });
        p
    };
    use crate::correlate::packet::tests::{UPLINK, VETH};
    let d = ex.explain(left_by(VETH), &points()).drop.expect("shown");
    assert_eq!(d.freed_by, Some("socket"));
    let purged_on_the_way = ex.explain(freed_at(2, 4), &points()).drop.expect("a drop");
    assert!(purged_on_the_way.counts(), "not delivered: a loss");
    // Out by a physical uplink, a purge is a qdisc's loss; by an uplink that is a veth (the
    // lab's, into its internet namespace), the socket over there purged it.
    let wire = ex.explain(left_by(UPLINK), &points()).drop.expect("a drop");
    assert!(wire.counts(), "handed to the wire: a loss");
    let mut veth_uplink = points();
    veth_uplink.get_mut(&UPLINK).expect("uplink").veth = true;
    let d = ex
        .explain(left_by(UPLINK), &veth_uplink)
        .drop
        .expect("shown");
    assert_eq!(d.freed_by, Some("socket"), "the far namespace's socket");
}

#[test]
fn a_packet_that_was_not_dropped_has_no_drop() {
    let mut ex = Explainer::empty();
    let packet = Packet {
        skb: 1,
        owner: None,
        hops: Vec::new(),
        nf: Vec::new(),
        end: None,
    };
    assert!(ex.explain(packet, &points()).drop.is_none());
}

#[test]
fn hook_level_observers_let_the_counters_name_the_table() {
    // nf_hook_slow sees FORWARD's entry (slot 0) and nothing after: mangle runs first,
    // so the steps blame it; the filter rule's counter moved, so filter it is.
    const TWO: &str = "*mangle\n:FORWARD ACCEPT [0:0]\nCOMMIT\n*filter\n:FORWARD ACCEPT [0:0]\n\
                       [0:0] -A FORWARD -p tcp -m tcp --dport 8080 -j DROP\nCOMMIT\n";
    let packet = dropped_in_forward(&[0], 0);
    let mut ex = with_counters_moving(TWO);
    let e = ex.explain(packet, &points());
    let d = e.drop.expect("dropped");
    assert_eq!(
        (d.hook, d.table.as_deref()),
        (Some("FORWARD"), Some("filter"))
    );
    assert_eq!(
        d.rule.as_deref(),
        Some("-A FORWARD -p tcp -m tcp --dport 8080 -j DROP")
    );
    let drop_step = e
        .steps
        .iter()
        .find(|s| s.verdict == Verdict::Drop)
        .expect("step");
    assert_eq!(drop_step.table, "filter", "the hop says the same");
}

#[test]
fn nftrace_s_drop_is_joined_before_the_accept_of_the_table_the_steps_blamed() {
    // The steps blame mangle (all the observers said is that FORWARD's entry saw it); nftrace
    // traced mangle's policy accepting it and filter's rule dropping it.
    const TWO: &str = "*mangle\n:FORWARD ACCEPT [0:0]\nCOMMIT\n*filter\n:FORWARD ACCEPT [0:0]\n\
                       [0:0] -A FORWARD -p tcp -m tcp --dport 8080 -j DROP\nCOMMIT\n";
    let packet = dropped_in_forward(&[0], 0);
    let (key, fingerprint) = ip_key(&packet.nf[0].bytes).expect("an IP packet");
    let (tx, rx) = std::sync::mpsc::channel();
    let decision = |table: &str, verdict, rule: Option<&str>| Decision {
        hook: 2,
        table: table.into(),
        verdict,
        rule: rule.map(Into::into),
        policy: rule.is_none().then_some(verdict),
        chain_path: vec!["FORWARD".into()],
        key,
        fingerprint,
    };
    tx.send(decision("mangle", "accept", None)).expect("sent");
    let rule = "-A FORWARD -p tcp -m tcp --dport 8080 -j DROP";
    tx.send(decision("filter", "drop", Some(rule)))
        .expect("sent");
    let mut ex = Explainer::empty();
    ex.set_ruleset(Ruleset::parse(TWO, "iptables-save"));
    ex.decisions = Some(crate::correlate::decisions::Decisions::new(
        rx,
        Default::default(),
    ));
    let d = ex.explain(packet.clone(), &points()).drop.expect("dropped");
    assert_eq!(
        (
            d.table.as_deref(),
            d.rule.as_deref(),
            d.rule_source.as_deref()
        ),
        (Some("filter"), Some(rule), Some("nftrace"))
    );
    // Only mangle's accept traced (filter's walk not marked): the drop is not given it, and
    // the counters name filter's rule.
    let (tx, rx) = std::sync::mpsc::channel();
    tx.send(decision("mangle", "accept", None)).expect("sent");
    let mut ex = with_counters_moving(TWO);
    ex.decisions = Some(crate::correlate::decisions::Decisions::new(
        rx,
        Default::default(),
    ));
    let d = ex.explain(packet, &points()).drop.expect("dropped");
    assert_eq!(
        (d.table.as_deref(), d.rule.as_deref()),
        (Some("filter"), Some(rule))
    );
    assert_ne!(d.rule_source.as_deref(), Some("nftrace"), "{d:?}");
}
