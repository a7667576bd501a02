//! Where the netfilter observers sit. A BPF netfilter program runs at one (hook, priority);
//! flowtrace attaches one observer per slot below at every IPv4 hook, so the slots bracket the
//! iptables/nftables tables (which run at fixed priorities): what changed or vanished between
//! two adjacent slots was done by the table between them.

/// Observer priorities, in the order a packet meets them at one hook.
pub const SLOT_PRIORITIES: [i32; 8] = [-301, -299, -199, -149, -99, 1, 51, 101];

/// The slot after every table, where the exit of `nf_hook_slow` is observed too.
pub const LAST_SLOT: u8 = SLOT_PRIORITIES.len() as u8 - 1;

/// Where slot `slot` may link, best first. The kernel refuses a second BPF netfilter link at a
/// hook and priority already taken (EBUSY), so another flowtrace running beside this one takes
/// the next free one; every candidate stays between the same two tables (the windows are at
/// least 50 wide), so the slot still brackets what it brackets.
pub fn priority_candidates(slot: usize) -> impl Iterator<Item = i32> {
    let base = SLOT_PRIORITIES.get(slot).copied();
    // The entry slot runs before raw: it moves down; the others move up from the table before.
    let step = if slot == 0 { -1 } else { 1 };
    (0..PRIORITY_SPREAD).filter_map(move |k| base.map(|b| b + step * k))
}

/// How many priorities each slot may try.
pub const PRIORITY_SPREAD: i32 = 16;

/// The tables' priorities (`enum nf_ip_hook_priorities`).
pub const PRI_RAW: i32 = -300;
pub const PRI_CONNTRACK: i32 = -200;
pub const PRI_MANGLE: i32 = -150;
/// nat's DNAT side, at PREROUTING and OUTPUT.
pub const PRI_NAT_DST: i32 = -100;
pub const PRI_FILTER: i32 = 0;
pub const PRI_SECURITY: i32 = 50;
/// nat's SNAT side, at INPUT and POSTROUTING.
pub const PRI_NAT_SRC: i32 = 100;

/// What runs between slot `i` and slot `i + 1`, with its priority.
pub const BETWEEN: [(&str, i32); 7] = [
    ("raw", PRI_RAW),
    ("conntrack", PRI_CONNTRACK),
    ("mangle", PRI_MANGLE),
    ("nat", PRI_NAT_DST),
    ("filter", PRI_FILTER),
    ("security", PRI_SECURITY),
    ("nat", PRI_NAT_SRC),
];

/// The tables iptables knows, in the order they are shown (iptables-nft creates them as `ip`
/// family nftables tables).
pub const TABLES: [&str; 5] = ["raw", "mangle", "nat", "filter", "security"];

/// Priority of an iptables table at a hook. The nat table runs at -100 only at
/// PREROUTING/OUTPUT (DNAT) and at +100 only at INPUT/POSTROUTING (SNAT).
pub fn table_priority(table: &str, hook: u8) -> Option<i32> {
    Some(match table {
        "raw" => PRI_RAW,
        "mangle" => PRI_MANGLE,
        "nat" if hook == HOOK_PREROUTING || hook == HOOK_OUTPUT => PRI_NAT_DST,
        "nat" => PRI_NAT_SRC,
        "filter" => PRI_FILTER,
        "security" => PRI_SECURITY,
        _ => return None,
    })
}

/// Where a table is shown among the others (`TABLES`' order; other tables after them).
pub fn table_rank(table: &str) -> u8 {
    TABLES
        .iter()
        .position(|t| *t == table)
        .map_or(TABLES.len() as u8, |i| i as u8)
}

/// IPv4 netfilter hooks (`enum nf_inet_hooks`), in the order a forwarded packet meets them
/// (INPUT and OUTPUT aside).
pub const HOOK_NAMES: [&str; 5] = ["PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"];
/// Their short names, in the same order.
pub const HOOK_SHORT_NAMES: [&str; 5] = ["PRE", "IN", "FWD", "OUT", "POST"];
pub const HOOK_PREROUTING: u8 = 0;
pub const HOOK_FORWARD: u8 = 2;
pub const HOOK_OUTPUT: u8 = 3;
pub const HOOK_POSTROUTING: u8 = 4;

/// The hook a built-in chain of that name runs at.
pub fn hook_of_name(name: &str) -> Option<u8> {
    HOOK_NAMES.iter().position(|h| *h == name).map(|i| i as u8)
}

/// The short name of a hook (`PRE`, `FWD`…), or the name itself if it is not one.
pub fn short_hook_name(name: &str) -> &str {
    hook_of_name(name)
        .and_then(|h| HOOK_SHORT_NAMES.get(usize::from(h)).copied())
        .unwrap_or(name)
}

/// `NFPROTO_IPV4`.
pub const NFPROTO_IPV4: u8 = 2;

pub fn hook_name(hook: u8) -> &'static str {
    HOOK_NAMES.get(usize::from(hook)).copied().unwrap_or("?")
}

/// The table that ran between `slot` and `slot + 1` at `hook`. The nat table runs at -100
/// only at PREROUTING/OUTPUT (DNAT) and at +100 only at INPUT/POSTROUTING (SNAT).
pub fn table_after(slot: u8) -> Option<&'static str> {
    BETWEEN.get(usize::from(slot)).map(|(name, _)| *name)
}

/// Which slots to link at one hook, as a bit mask over [`SLOT_PRIORITIES`]: the first one (the
/// packet entered the hook) and the one right after each table that runs there. A table past
/// the last slot has no slot after it. nf_conntrack (at -200 at PREROUTING and OUTPUT) gets
/// none: it changes no header, and a drop of its own would be put on the table after it all
/// the same. Linking only these keeps every table bracketed while a forwarded packet runs
/// about 6 observers instead of 24 ([`slots_at`] takes one more away).
pub fn slots_for(table_priorities: &[i32]) -> u8 {
    let mut mask = 1u8;
    for prio in table_priorities {
        let slot = slot_after(*prio);
        if slot < SLOT_PRIORITIES.len() {
            mask |= 1 << slot;
        }
    }
    mask
}

/// The first slot after a table at `priority` (`SLOT_PRIORITIES.len()` past the last).
pub fn slot_after(priority: i32) -> usize {
    SLOT_PRIORITIES.partition_point(|p| *p < priority)
}

/// Which slots to link at `hook`: [`slots_for`]'s, less the slot after the last table at a
/// hook whose exit POSTROUTING's entry slot sees ([`exit_seen_at_postrouting`]). A forwarded
/// packet then runs one observer fewer (5 on a Docker host); a table there that drops it is
/// still told by the note of the last slot it passed, and one that lets it through by
/// POSTROUTING's entry.
pub fn slots_at(hook: u8, table_priorities: &[i32]) -> u8 {
    let mask = slots_for(table_priorities);
    if !exit_seen_at_postrouting(hook) {
        return mask;
    }
    match table_priorities.iter().max().map(|p| slot_after(*p)) {
        Some(last) if last > 0 && last < SLOT_PRIORITIES.len() => mask & !(1 << last),
        _ => mask,
    }
}

/// FORWARD and OUTPUT hand a packet their last table let through straight to POSTROUTING
/// (`ip_forward_finish` and `ip_local_out` → `dst_output` → `ip_output`), which nothing
/// between changes: POSTROUTING's entry slot sees it as they left it.
pub fn exit_seen_at_postrouting(hook: u8) -> bool {
    hook == HOOK_FORWARD || hook == HOOK_OUTPUT
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_priority_candidate_stays_between_the_same_tables() {
        for slot in 0..SLOT_PRIORITIES.len() {
            let all: Vec<i32> = priority_candidates(slot).collect();
            assert_eq!(all.len(), PRIORITY_SPREAD as usize);
            assert_eq!(
                all[0], SLOT_PRIORITIES[slot],
                "the slot's own priority first"
            );
            let lower = if slot == 0 { -400 } else { BETWEEN[slot - 1].1 };
            let upper = BETWEEN.get(slot).map_or(i32::MAX, |b| b.1);
            assert!(
                all.iter().all(|p| *p > lower && *p < upper),
                "slot {slot}: {all:?} leaves ({lower}, {upper})"
            );
        }
    }

    #[test]
    fn slots_bracket_every_table() {
        for (i, (_, prio)) in BETWEEN.iter().enumerate() {
            assert!(
                SLOT_PRIORITIES[i] < *prio && *prio < SLOT_PRIORITIES[i + 1],
                "{i}"
            );
        }
        assert!(SLOT_PRIORITIES.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn names() {
        assert_eq!(hook_name(2), "FORWARD");
        assert_eq!(hook_name(9), "?");
        assert_eq!(table_after(4), Some("filter"));
        assert_eq!(table_after(6), Some("nat"));
        assert_eq!(table_after(7), None);
        assert_eq!(hook_of_name("FORWARD"), Some(2));
        assert_eq!(hook_of_name("DOCKER-USER"), None);
        assert_eq!(short_hook_name("POSTROUTING"), "POST");
        assert_eq!(short_hook_name("ingress"), "ingress");
        assert!(table_rank("raw") < table_rank("nat") && table_rank("nat") < table_rank("filter"));
        assert_eq!(table_rank("my-nft-table"), 5);
        assert_eq!(table_priority("nat", HOOK_PREROUTING), Some(-100));
        assert_eq!(table_priority("nat", 4), Some(100));
        assert_eq!(table_priority("DOCKER", 2), None);
        assert_eq!(LAST_SLOT, 7);
    }

    #[test]
    fn slots_for_a_docker_host() {
        // PREROUTING: nat at -100 (conntrack, at -200, gets no slot).
        assert_eq!(slots_for(&[-100]), 0b0001_0001);
        // FORWARD: filter only.
        assert_eq!(slots_for(&[0]), 0b0010_0001);
        // POSTROUTING: nat at +100.
        assert_eq!(slots_for(&[100]), 0b1000_0001);
        // Nothing there: only the entry slot.
        assert_eq!(slots_for(&[]), 1);
        // Every iptables table: every slot but conntrack's.
        assert_eq!(slots_for(&[-300, -150, -100, 0, 50, 100]), 0b1111_1011);
        // Tables before the first slot or after the last: nothing more to link.
        assert_eq!(slots_for(&[-400, 500]), 1);
    }

    #[test]
    fn postrouting_s_entry_is_the_exit_of_forward_and_output() {
        // FORWARD's filter: its exit is POSTROUTING's entry; the entry slot alone.
        assert_eq!(slots_at(HOOK_FORWARD, &[0]), 1);
        // With mangle before it, the slot after mangle stays.
        assert_eq!(slots_at(HOOK_FORWARD, &[-150, 0]), 0b0000_1001);
        // OUTPUT: nat, filter; the slot after filter goes.
        assert_eq!(slots_at(HOOK_OUTPUT, &[-100, 0]), 0b0001_0001);
        // Nothing there, or nothing with a slot after it: the entry slot stays.
        assert_eq!(slots_at(HOOK_OUTPUT, &[]), 1);
        assert_eq!(slots_at(HOOK_OUTPUT, &[-400]), 1);
        // A table past the last slot has none to take away.
        assert_eq!(slots_at(HOOK_FORWARD, &[0, 500]), 0b0010_0001);
        // The other hooks keep slots_for's.
        for hook in [HOOK_PREROUTING, 1, HOOK_POSTROUTING] {
            assert_eq!(slots_at(hook, &[-100, 0, 100]), slots_for(&[-100, 0, 100]));
        }
    }
}
