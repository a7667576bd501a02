use super::*;
use crate::{
    correlate::packet::tests::frame,
    events::{
        decode::{EndObservation, NfObservation},
        packet::parse_ethernet,
    },
};

/// Every slot has an observer (as without a readable ruleset).
const ALL: [u8; 5] = [0xff; 5];
/// Hook-level observers: a hook's entry and its exit.
const HOOK_LEVEL: [u8; 5] = [0x81; 5];

/// A netfilter observation of frame `f` (its IP packet) at `hook`'s `slot`.
pub fn nf(ts: u64, hook: u8, slot: u8, f: &[u8]) -> NfObservation {
    NfObservation {
        ts_ns: ts,
        skb: 1,
        hook,
        pf: 2,
        slot,
        in_ifindex: 0,
        out_ifindex: 0,
        len: 60,
        mark: 0,
        headers: parse_ethernet(f),
        bytes: f.get(14..).unwrap_or(&[]).to_vec(),
    }
}

/// A SYN from the container, and the same SYN after MASQUERADE.
fn masqueraded() -> (Vec<u8>, Vec<u8>) {
    (
        frame([172, 18, 0, 2], 41234),
        frame([198, 51, 100, 1], 41234),
    )
}

fn docker_tables(hook: u8) -> Vec<(String, i32)> {
    match hook {
        0 => vec![("nat".into(), -100)],
        2 => vec![("filter".into(), 0)],
        4 => vec![("nat".into(), 100)],
        _ => vec![],
    }
}

fn packet(nf: Vec<NfObservation>, end: Option<EndKind>) -> Packet {
    Packet {
        skb: 1,
        owner: None,
        hops: Vec::new(),
        nf,
        end: end.map(|kind| EndObservation {
            ts_ns: 999,
            skb: 1,
            kind,
            location: 0,
            ifindex: 0,
            netns: 0,
            passed: None,
        }),
    }
}

#[test]
fn forwarded_and_masqueraded() {
    let (inner, outer) = masqueraded();
    let mut obs = Vec::new();
    for (i, slot) in (0..8).enumerate() {
        obs.push(nf(10 + i as u64, 0, slot, &inner));
        obs.push(nf(100 + i as u64, 2, slot, &inner));
        let f = if slot == 7 { &outer } else { &inner };
        obs.push(nf(200 + i as u64, 4, slot, f));
    }
    let s = steps(
        &packet(obs, Some(EndKind::Consume)),
        &docker_tables,
        &ALL,
        false,
    );
    let names: Vec<(u8, &str, Verdict)> =
        s.iter().map(|x| (x.hook, &*x.table, x.verdict)).collect();
    assert_eq!(
        names,
        vec![
            (0, "nat", Verdict::Accept),
            (2, "filter", Verdict::Accept),
            (4, "nat", Verdict::Accept)
        ]
    );
    assert!(s[0].nat.is_empty() && s[1].nat.is_empty());
    assert_eq!(
        crate::model::Texts::default().nat(&s[2].nat[0]).text(),
        "SNAT 172.18.0.2:41234 → 198.51.100.1:41234"
    );
    assert_eq!(s[2].ts_ns, 207, "at the slot after the nat table");
}

#[test]
fn dropped_in_filter_forward() {
    let f = frame([172, 18, 0, 2], 41234);
    let mut obs: Vec<NfObservation> = (0..8).map(|s| nf(10 + u64::from(s), 0, s, &f)).collect();
    // FORWARD: seen up to slot 4 (before filter), never after.
    obs.extend((0..5).map(|s| nf(100 + u64::from(s), 2, s, &f)));
    let s = steps(
        &packet(obs.clone(), Some(EndKind::Drop { reason: 12 })),
        &docker_tables,
        &ALL,
        true,
    );
    let last = s.last().expect("steps");
    assert_eq!(
        (last.hook, &*last.table, last.verdict),
        (2, "filter", Verdict::Drop)
    );
    assert_eq!(last.ts_ns, 999);
    // Without a drop from the kernel, no verdict is invented.
    let s = steps(&packet(obs, None), &docker_tables, &ALL, true);
    assert!(s.iter().all(|x| x.verdict == Verdict::Accept));
}

#[test]
fn without_a_ruleset_changes_are_named_by_slot_position() {
    let (inner, outer) = masqueraded();
    let obs: Vec<NfObservation> = (0..8)
        .map(|s| nf(u64::from(s), 4, s, if s == 7 { &outer } else { &inner }))
        .collect();
    let s = steps(&packet(obs, None), &|_| Vec::new(), &ALL, true);
    assert_eq!(s.len(), 1);
    assert_eq!((&*s[0].table, s[0].nat.len()), ("nat", 1));
}

#[test]
fn only_the_slots_around_the_tables_are_enough() {
    // What `slots_for` links at these hooks: PREROUTING 0,2,4; FORWARD 0,5; POSTROUTING 0,7.
    let (inner, outer) = masqueraded();
    let mut obs = Vec::new();
    for (ts, hook, slot) in [
        (1, 0, 0),
        (2, 0, 2),
        (3, 0, 4),
        (4, 2, 0),
        (5, 2, 5),
        (6, 4, 0),
    ] {
        obs.push(nf(ts, hook, slot, &inner));
    }
    obs.push(nf(7, 4, 7, &outer));
    let s = steps(
        &packet(obs.clone(), Some(EndKind::Consume)),
        &docker_tables,
        &ALL,
        true,
    );
    let names = verdicts(&s);
    assert_eq!(
        names,
        vec![
            (0, "nat", Verdict::Accept, 0),
            (2, "filter", Verdict::Accept, 0),
            (4, "nat", Verdict::Accept, 1)
        ]
    );
    // Dropped in FORWARD: seen at its entry slot, never after filter.
    let dropped: Vec<NfObservation> = obs.into_iter().filter(|n| n.ts_ns <= 4).collect();
    let s = steps(
        &packet(dropped, Some(EndKind::Drop { reason: 12 })),
        &docker_tables,
        &ALL,
        true,
    );
    assert_eq!(last_step(&s), (2, "filter", Verdict::Drop));
}

#[test]
fn hook_level_observers_give_every_table_its_verdict_and_the_nat_table_its_rewrite() {
    // nf_hook_slow: slot 0 at a hook's entry, slot 7 once every table accepted.
    let (inner, outer) = masqueraded();
    let obs = vec![
        nf(1, 2, 0, &inner),
        nf(2, 2, 7, &inner),
        nf(3, 4, 0, &inner),
        nf(4, 4, 7, &outer),
    ];
    let tables = |hook: u8| match hook {
        2 => vec![("mangle".to_owned(), -150), ("filter".to_owned(), 0)],
        4 => vec![("mangle".to_owned(), -150), ("nat".to_owned(), 100)],
        _ => vec![],
    };
    let s = steps(
        &packet(obs, Some(EndKind::Consume)),
        &tables,
        &HOOK_LEVEL,
        false,
    );
    let got = verdicts(&s);
    assert_eq!(
        got,
        vec![
            (2, "mangle", Verdict::Accept, 0),
            (2, "filter", Verdict::Accept, 0),
            (4, "mangle", Verdict::Accept, 0),
            (4, "nat", Verdict::Accept, 1),
        ],
        "one window per hook; the SNAT goes to nat, not to mangle"
    );
}

/// A packet reported as the kernel now reports it: a hook's later slots only where it changed.
fn noted(nf: Vec<NfObservation>, end: Option<(EndKind, Option<(u8, u8)>)>) -> Packet {
    let mut p = packet(nf, None);
    p.end = end.map(|(kind, passed)| EndObservation {
        ts_ns: 999,
        skb: 1,
        kind,
        location: 0,
        ifindex: 0,
        netns: 0,
        passed,
    });
    p
}

/// A forwarded, masqueraded packet's steps: PREROUTING's nat, FORWARD's filter, and
/// POSTROUTING's nat with its SNAT.
const FORWARDED: [(u8, &str, Verdict, usize); 3] = [
    (0, "nat", Verdict::Accept, 0),
    (2, "filter", Verdict::Accept, 0),
    (4, "nat", Verdict::Accept, 1),
];

/// The last step's hook, table and verdict.
fn last_step(s: &[NfStep]) -> (u8, &str, Verdict) {
    let last = s.last().expect("steps");
    (last.hook, &*last.table, last.verdict)
}

fn verdicts(s: &[NfStep]) -> Vec<(u8, &str, Verdict, usize)> {
    s.iter()
        .map(|x| (x.hook, &*x.table, x.verdict, x.nat.len()))
        .collect()
}

#[test]
fn slots_that_saw_no_change_take_the_last_reports_view() {
    // PREROUTING, FORWARD and POSTROUTING each report their entry; only POSTROUTING's slot
    // after nat reports again, where MASQUERADE changed the source.
    let (inner, outer) = masqueraded();
    let obs = vec![
        nf(1, 0, 0, &inner),
        nf(4, 2, 0, &inner),
        nf(6, 4, 0, &inner),
        nf(7, 4, 7, &outer),
    ];
    let p = noted(obs, Some((EndKind::Consume, None)));
    let s = steps(&p, &docker_tables, &ALL, false);
    assert_eq!(verdicts(&s), FORWARDED);
    assert_eq!(s[1].ts_ns, 4, "an unreported slot's time is its view's");
    assert_eq!(s[1].bytes(&p), &inner[14..], "and so are its bytes");
    assert_eq!(s[2].bytes(&p), &outer[14..], "and a reported one's its own");
}

#[test]
fn a_drop_the_cpu_noted_is_in_the_table_after_the_last_slot_passed() {
    let f = frame([172, 18, 0, 2], 41234);
    let obs = vec![nf(1, 0, 0, &f), nf(4, 2, 0, &f)];
    let drop = EndKind::Drop { reason: 12 };
    // Noted at FORWARD's entry: filter dropped it.
    let s = steps(
        &noted(obs.clone(), Some((drop, Some((2, 0))))),
        &docker_tables,
        &ALL,
        true,
    );
    assert_eq!(
        verdicts(&s),
        vec![
            (0, "nat", Verdict::Accept, 0),
            (2, "filter", Verdict::Drop, 0)
        ]
    );
    // Noted past filter: dropped after netfilter, by no table.
    let s = steps(
        &noted(obs.clone(), Some((drop, Some((2, 5))))),
        &docker_tables,
        &ALL,
        false,
    );
    assert!(s.iter().all(|x| x.verdict == Verdict::Accept), "{s:?}");
    assert_eq!(s.len(), 2);
    // A note of another hook (stale) says nothing of this one.
    let s = steps(
        &noted(obs, Some((drop, Some((0, 4))))),
        &docker_tables,
        &ALL,
        true,
    );
    assert_eq!(s.last().map(|x| x.verdict), Some(Verdict::Drop));
}

#[test]
fn an_unnoted_drop_blames_a_table_only_when_netfilter_dropped_it() {
    let f = frame([172, 18, 0, 2], 41234);
    let obs = vec![nf(1, 0, 0, &f), nf(4, 2, 0, &f)];
    let drop = Some((EndKind::Drop { reason: 3 }, None));
    // Freed elsewhere (another CPU, another reason): it left FORWARD.
    let s = steps(&noted(obs.clone(), drop), &docker_tables, &ALL, false);
    assert!(s.iter().all(|x| x.verdict == Verdict::Accept), "{s:?}");
    assert_eq!(s.len(), 2);
    // NETFILTER_DROP with the note pushed out: the reports alone say where.
    let s = steps(&noted(obs, drop), &docker_tables, &ALL, true);
    assert_eq!(
        s.last().map(|x| (x.hook, x.verdict)),
        Some((2, Verdict::Drop))
    );
}

#[test]
fn a_packet_with_no_end_seen_passed_its_last_hook() {
    // Freed where neither tracepoint fires (a fast path's free), or its free's record lost:
    // it went on past FORWARD.
    let f = frame([172, 18, 0, 2], 41234);
    let obs = vec![nf(1, 0, 0, &f), nf(4, 2, 0, &f)];
    let s = steps(&noted(obs, None), &docker_tables, &ALL, false);
    assert_eq!(
        verdicts(&s),
        vec![
            (0, "nat", Verdict::Accept, 0),
            (2, "filter", Verdict::Accept, 0)
        ]
    );
}

#[test]
fn hook_level_observers_fill_only_their_exit_and_keep_a_dnat_at_pre() {
    // nf_hook_slow: PREROUTING's entry saw the published address, its exit the container's
    // (nat's DNAT at -100, whose next slot, 4, has no observer at hook level).
    let outer = frame([198, 51, 100, 9], 41234);
    let mut inner = outer.clone();
    inner[30..34].copy_from_slice(&[172, 18, 0, 2]);
    let obs = vec![nf(1, 0, 0, &outer), nf(2, 0, 7, &inner)];
    let tables = |hook: u8| match hook {
        0 => vec![("mangle".to_owned(), -150), ("nat".to_owned(), -100)],
        _ => vec![],
    };
    let p = noted(obs, Some((EndKind::Consume, None)));
    let s = steps(&p, &tables, &HOOK_LEVEL, false);
    assert_eq!(
        verdicts(&s),
        vec![
            (0, "mangle", Verdict::Accept, 0),
            (0, "nat", Verdict::Accept, 1)
        ],
        "one window for the hook; the DNAT goes to nat"
    );
    // Were every slot filled from the entry, each table would see no change at all.
    let s = steps(&p, &tables, &ALL, false);
    assert!(s.iter().all(|x| x.nat.is_empty()), "{s:?}");
}

/// What `slots_at` links on a Docker host: PREROUTING 0,4; INPUT 0,5,7; FORWARD 0;
/// OUTPUT 0,4; POSTROUTING 0,7.
const DOCKER_PLAN: [u8; 5] = [
    0b0001_0001,
    0b1010_0001,
    0b0000_0001,
    0b0001_0001,
    0b1000_0001,
];

#[test]
fn postrouting_s_entry_is_forward_s_exit() {
    let (inner, outer) = masqueraded();
    let mut obs: Vec<NfObservation> = [(1, 0, 0), (3, 0, 4), (4, 2, 0), (6, 4, 0)]
        .into_iter()
        .map(|(ts, hook, slot)| nf(ts, hook, slot, &inner))
        .collect();
    obs.push(nf(7, 4, 7, &outer));
    let docker = |obs: Vec<NfObservation>, end: EndKind| {
        let nf_drop = matches!(end, EndKind::Drop { .. });
        steps(
            &packet(obs, Some(end)),
            &docker_tables,
            &DOCKER_PLAN,
            nf_drop,
        )
    };
    let s = docker(obs.clone(), EndKind::Consume);
    assert_eq!(verdicts(&s), FORWARDED);
    assert_eq!(
        (s[1].ts_ns, s[1].nf),
        (6, 3),
        "FORWARD's filter let through what POSTROUTING's entry saw"
    );
    // Dropped by FORWARD's filter: seen at its entry, then a netfilter drop.
    let at_forward: Vec<NfObservation> = obs.into_iter().filter(|n| n.ts_ns <= 4).collect();
    let s = docker(at_forward.clone(), EndKind::Drop { reason: 12 });
    assert_eq!(last_step(&s), (2, "filter", Verdict::Drop));
    // POSTROUTING's records lost, the packet freed normally: FORWARD let it through as it
    // came in; nothing is made a drop.
    let s = docker(at_forward, EndKind::Consume);
    assert_eq!(
        verdicts(&s),
        vec![
            (0, "nat", Verdict::Accept, 0),
            (2, "filter", Verdict::Accept, 0)
        ]
    );
}
