use super::*;

/// (message type, top-level attributes) of every message of a finished batch.
type Decoded = Vec<(u16, Vec<(u16, Vec<u8>)>)>;

fn decode(bytes: &[u8]) -> Decoded {
    messages(bytes)
        .map(|m| {
            let attrs = attrs(&m.payload[NFGENMSG_LEN..])
                .map(|(t, v)| (t, v.to_vec()))
                .collect();
            (m.ty, attrs)
        })
        .collect()
}

/// The expression names of a NEWRULE's NFTA_RULE_EXPRESSIONS.
fn expr_names(rule_attrs: &[(u16, Vec<u8>)]) -> Vec<String> {
    let (_, list) = rule_attrs
        .iter()
        .find(|(t, _)| *t == NFTA_RULE_EXPRESSIONS)
        .unwrap();
    attrs(list)
        .map(|(_, elem)| string(attrs(elem).next().unwrap().1))
        .collect()
}

#[test]
fn ruleset_batch_has_every_object_once() {
    let mut b = Batch::new(100);
    b.ruleset("flowtrace_1");
    // Scopes too large to be compared key by key: each match is one lookup.
    b.targets("flowtrace_1", &large(), false);
    let (bytes, pending, next) = b.finish();
    let msgs = decode(&bytes);
    let count = |ty: u16| msgs.iter().filter(|(t, _)| *t == nft_type(ty)).count();
    assert_eq!(msgs.first().unwrap().0, NFNL_MSG_BATCH_BEGIN);
    assert_eq!(msgs.last().unwrap().0, NFNL_MSG_BATCH_END);
    assert_eq!(count(NFT_MSG_NEWTABLE), 1);
    assert_eq!(count(NFT_MSG_NEWSET), 3);
    // pre, prenat, out and their IPv6 chains.
    assert_eq!(count(NFT_MSG_NEWCHAIN), 6);
    // pre6 2, pre 3 + goto, prenat6 2, prenat 2 + goto, out6 4, out 4 + goto.
    assert_eq!(count(NFT_MSG_NEWRULE), 2 + 4 + 2 + 3 + 4 + 5);
    assert_eq!(pending.len(), msgs.len() - 2);
    assert_eq!(next, 100 + msgs.len() as u32);
    // Every message asks for an ack and has its own sequence number.
    let mut seqs: Vec<u32> = messages(&bytes).map(|m| m.seq).collect();
    seqs.dedup();
    assert_eq!(seqs.len(), msgs.len());
}

/// More than `INLINE_MAX` keys in every set.
fn large() -> Targets {
    let n = INLINE_MAX as u8 + 1;
    let v4: Vec<Ipv4Addr> = (0..n).map(|i| Ipv4Addr::new(172, 18, 0, i)).collect();
    let v6: Vec<Ipv6Addr> = (0..n)
        .map(|i| Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, i.into()))
        .collect();
    let ports: Vec<(u8, u16)> = (0..n).map(|i| (6, 8000 + u16::from(i))).collect();
    Targets::new(&v4, &v6, &ports)
}

/// The expression names of each rule of `chain`.
fn in_chain<'r>(rules: &'r [(String, Vec<String>)], chain: &str) -> Vec<&'r Vec<String>> {
    rules
        .iter()
        .filter(|(c, _)| c == chain)
        .map(|(_, e)| e)
        .collect()
}

/// Each NEWRULE of a batch: its chain and its expressions' names.
fn rules_of(bytes: &[u8]) -> Vec<(String, Vec<String>)> {
    decode(bytes)
        .into_iter()
        .filter(|(t, _)| *t == nft_type(NFT_MSG_NEWRULE))
        .map(|(_, a)| {
            let chain = a.iter().find(|(t, _)| *t == NFTA_RULE_CHAIN).unwrap();
            (string(&chain.1), expr_names(&a))
        })
        .collect()
}

/// A small scope is written into the rules, a key a rule: a neighbour's packet then
/// meets comparisons, not set lookups. An empty set has no rule; a large one, a lookup.
#[test]
fn small_scopes_are_compared_key_by_key() {
    let t = Targets::new(&[Ipv4Addr::new(172, 18, 0, 2)], &[], &[(6, 80), (17, 53)]);
    let mut b = Batch::new(1);
    b.targets("t", &t, false);
    let (bytes, _, _) = b.finish();
    let rules = rules_of(&bytes);
    let pre = in_chain(&rules, "pre");
    // saddr, daddr, two ports, the goto.
    assert_eq!(pre.len(), 5, "{pre:?}");
    let tail = ["immediate", "meta", "immediate"];
    assert_eq!(
        *pre[0],
        [&["meta", "cmp", "payload", "cmp"][..], &tail].concat()
    );
    assert_eq!(*pre[2], [&["meta", "payload", "cmp"][..], &tail].concat());
    assert!(rules.iter().all(|(_, e)| !e.contains(&"lookup".to_owned())));
    // No IPv6 target: its chains are empty, their gotos remain.
    assert!(!rules.iter().any(|(c, _)| c.ends_with('6')), "{rules:?}");
    assert_eq!(
        rules
            .iter()
            .filter(|(_, e)| e.last().is_some_and(|x| x == "immediate") && e.len() == 3)
            .count(),
        3
    );
    // The comparisons hold the keys as the sets would.
    let data: Vec<Vec<u8>> = decode(&bytes)
        .into_iter()
        .filter(|(t, _)| *t == nft_type(NFT_MSG_NEWRULE))
        .map(|(_, a)| {
            a.iter()
                .find(|(t, _)| *t == NFTA_RULE_EXPRESSIONS)
                .unwrap()
                .1
                .clone()
        })
        .collect();
    let has = |needle: &[u8]| {
        data.iter()
            .any(|d| d.windows(needle.len()).any(|w| w == needle))
    };
    assert!(has(&[172, 18, 0, 2]));
    assert!(has(&port_key(17, 53)));
    // One key more than INLINE_MAX: one lookup instead.
    let mut b = Batch::new(1);
    b.targets("t", &large(), false);
    let (bytes, _, _) = b.finish();
    let rules = rules_of(&bytes);
    let pre = in_chain(&rules, "pre");
    assert_eq!(pre.len(), 4, "{pre:?}");
    assert!(pre[..3].iter().all(|e| e.contains(&"lookup".to_owned())));
}

#[test]
fn rules_are_the_expressions_nft_generates() {
    let mut b = Batch::new(1);
    b.rule(
        "t",
        "pre",
        Match::Addr {
            v6: false,
            dst: true,
        },
    );
    b.rule("t", "pre", Match::Ports);
    b.rule(
        "t",
        "prenat",
        Match::Ct {
            v6: true,
            reply: true,
            dst: false,
        },
    );
    let (bytes, _, _) = b.finish();
    let msgs = decode(&bytes);
    let names: Vec<Vec<String>> = msgs[1..4].iter().map(|(_, a)| expr_names(a)).collect();
    let tail = ["immediate", "meta", "immediate"];
    let head: [&str; 0] = [];
    assert_eq!(
        names[0],
        [&head[..], &["meta", "cmp", "payload", "lookup"][..], &tail].concat()
    );
    assert_eq!(
        names[1],
        [&head[..], &["meta", "payload", "lookup"][..], &tail].concat()
    );
    // Gated: `ct direction original ct status dnat` before the lookup.
    let gate = ["ct", "cmp", "ct", "bitwise", "cmp"];
    assert_eq!(
        names[2],
        [&head[..], &gate, &["ct", "lookup"][..], &tail].concat()
    );
    // With a limit, it comes last before the mark.
    let mut b = Batch::new(1);
    b.limit = 1000;
    b.rule("t", "pre", Match::Ports);
    let (bytes, _, _) = b.finish();
    let names = expr_names(&decode(&bytes)[1].1);
    assert_eq!(
        names,
        [
            &head[..],
            &["meta", "payload", "lookup", "limit"][..],
            &tail
        ]
        .concat()
    );
}

/// Every goto names a chain created before it, which has no hook; every base chain ends
/// with the goto to its IPv6 chain, and IPv6 rules are only there.
#[test]
fn ipv6_rules_sit_behind_one_goto() {
    let all = chains();
    let mut created: Vec<&str> = Vec::new();
    for c in &all {
        for r in &c.rules {
            match r {
                Rule::V6(target) => {
                    assert!(created.contains(target), "{target} before {}", c.name);
                    let t = all.iter().find(|x| x.name == *target).unwrap();
                    assert_eq!(t.hook, None);
                    assert_eq!(c.rules.last(), Some(r), "the goto comes last");
                }
                Rule::Mark(Match::Addr { v6, .. } | Match::Ct { v6, .. }) => {
                    assert_eq!(*v6, c.hook.is_none(), "{}: {r:?}", c.name)
                }
                Rule::Mark(Match::Ports) => assert!(c.hook.is_some()),
            }
        }
        created.push(c.name);
        if c.hook.is_some() {
            assert!(matches!(c.rules.last(), Some(Rule::V6(_))), "{}", c.name);
        }
    }
    // The goto as nft would encode it; a regular chain has no hook, policy or type.
    let mut b = Batch::new(1);
    b.chain("t", "pre6", None);
    b.goto_v6("t", "pre", "pre6");
    let (bytes, _, _) = b.finish();
    let msgs = decode(&bytes);
    let chain: Vec<u16> = msgs[1].1.iter().map(|(t, _)| *t).collect();
    assert_eq!(chain, [NFTA_CHAIN_TABLE, NFTA_CHAIN_NAME]);
    assert_eq!(expr_names(&msgs[2].1), ["meta", "cmp", "immediate"]);
}

#[test]
fn targets_flush_then_fill_in_chunks() {
    let v4: Vec<Ipv4Addr> = (0..100u8).map(|i| Ipv4Addr::new(198, 51, 100, i)).collect();
    let mut dup = v4.clone();
    dup.extend(&v4);
    let t = Targets::new(&dup, &[], &[(17, 5353), (6, 80), (17, 5353)]);
    assert_eq!(t.v4.len(), 100);
    assert_eq!(t.ports, vec![(6, 80), (17, 5353)]);
    let mut b = Batch::new(1);
    b.targets("t", &t, true);
    let (bytes, _, _) = b.finish();
    let (del, add) = (nft_type(NFT_MSG_DELSETELEM), nft_type(NFT_MSG_NEWSETELEM));
    let all: Vec<u16> = decode(&bytes).iter().map(|(t, _)| *t).collect();
    // Then every chain is flushed before its rules are written again.
    let chains: Vec<String> = decode(&bytes)
        .into_iter()
        .filter(|(t, _)| *t == nft_type(NFT_MSG_DELRULE))
        .map(|(_, a)| string(&a.iter().find(|(t, _)| *t == NFTA_RULE_CHAIN).unwrap().1))
        .collect();
    assert_eq!(chains, ["pre6", "pre", "prenat6", "prenat", "out6", "out"]);
    let first_rule = all.iter().position(|t| *t == nft_type(NFT_MSG_NEWRULE));
    let first_flush = all.iter().position(|t| *t == nft_type(NFT_MSG_DELRULE));
    assert!(first_flush < first_rule);
    let types: Vec<u16> = all
        .into_iter()
        .filter(|t| [del, add, NFNL_MSG_BATCH_BEGIN, NFNL_MSG_BATCH_END].contains(t))
        .collect();
    // a4: flush + 2 chunks; a6: flush only; p: flush + 1.
    let want = [
        NFNL_MSG_BATCH_BEGIN,
        del,
        add,
        add,
        del,
        del,
        add,
        NFNL_MSG_BATCH_END,
    ];
    assert_eq!(types, want);
    // A flush names the set and lists no elements.
    let msgs = decode(&bytes);
    let flush: Vec<u16> = msgs[1].1.iter().map(|(t, _)| *t).collect();
    assert_eq!(flush, [NFTA_SET_ELEM_LIST_TABLE, NFTA_SET_ELEM_LIST_SET]);
}

#[test]
fn port_keys_pad_each_field_to_four_bytes() {
    assert_eq!(port_key(17, 5353), [17, 0, 0, 0, 0x14, 0xe9, 0, 0]);
    assert_eq!(SET_P.1, 781);
}
