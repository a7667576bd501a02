//! Where the netfilter observers sit. A BPF netfilter program runs at one (hook, priority);
//! flowtrace attaches one observer per slot below at every IPv4 hook, so the slots bracket the
//! iptables/nftables tables (which run at fixed priorities): what changed or vanished between
//! two adjacent slots was done by the table between them.

/// Observer priorities, in the order a packet meets them at one hook.
pub const SLOT_PRIORITIES: [i32; 8] = [-301, -299, -199, -149, -99, 1, 51, 101];

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

/// What runs between slot `i` and slot `i + 1`, with its priority.
pub const BETWEEN: [(&str, i32); 7] = [
    ("raw", -300),
    ("conntrack", -200),
    ("mangle", -150),
    ("nat", -100),
    ("filter", 0),
    ("security", 50),
    ("nat", 100),
];

/// IPv4 netfilter hooks (`enum nf_inet_hooks`).
pub const HOOK_NAMES: [&str; 5] = ["PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"];
pub const HOOK_PREROUTING: u8 = 0;
pub const HOOK_OUTPUT: u8 = 3;

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

/// Where nf_conntrack runs its first function (`NF_IP_PRI_CONNTRACK`) at PREROUTING and OUTPUT.
pub const CONNTRACK_PRIORITY: i32 = -200;

/// Which slots to link at one hook, as a bit mask over [`SLOT_PRIORITIES`]: the first one (the
/// packet entered the hook), the one right after conntrack where it runs, and the one right
/// after each table that runs there. A table past the last slot has no slot after it.
/// Linking only these keeps every table bracketed while a forwarded packet runs about 7
/// observers instead of 24.
pub fn slots_for(table_priorities: &[i32], conntrack: bool) -> u8 {
    let after = |prio: i32| SLOT_PRIORITIES.partition_point(|p| *p < prio);
    let mut mask = 1u8;
    let conntrack = conntrack.then_some(CONNTRACK_PRIORITY);
    for prio in table_priorities.iter().copied().chain(conntrack) {
        let slot = after(prio);
        if slot < SLOT_PRIORITIES.len() {
            mask |= 1 << slot;
        }
    }
    mask
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
    }

    #[test]
    fn slots_for_a_docker_host() {
        // PREROUTING: conntrack, then nat at -100.
        assert_eq!(slots_for(&[-100], true), 0b0001_0101);
        // FORWARD: filter only.
        assert_eq!(slots_for(&[0], false), 0b0010_0001);
        // POSTROUTING: nat at +100.
        assert_eq!(slots_for(&[100], false), 0b1000_0001);
        // Nothing there: only the entry slot.
        assert_eq!(slots_for(&[], false), 1);
        // Every iptables table: every slot.
        assert_eq!(slots_for(&[-300, -150, -100, 0, 50, 100], true), 0xff);
        // Tables before the first slot or after the last: nothing more to link.
        assert_eq!(slots_for(&[-400, 500], false), 1);
    }
}
