//! This CPU's notes of the packets it has just seen (`JUDGED_OUT`, one entry per CPU): the
//! one judged out of scope, and the one a tc observer took in. They spare the packet's next
//! observers on this CPU the scope's rules.

use crate::headers::ETH_HLEN;

/// `JUDGED_OUT`, per CPU: the sk_buff last judged out of scope with the full rules (at a tc
/// ingress, or at PREROUTING/OUTPUT's entry), and its length then. Its next observers on its
/// way through this CPU skip it with this comparison, except at a traced point (where
/// everything is in scope). Cleared when a packet at that address is taken in or freed.
///
/// And the sk_buff a tc observer last took in on this CPU (`taken`, `taken_len`): at its next
/// ingress (a traced container's packet at the bridge, after its veth) the scope's rules are
/// not run again before its `TRACKED` lookup. Cleared when a packet at that address is freed
/// on this CPU; a stale note (freed on another CPU) costs nothing but order: the packet then
/// misses `TRACKED` and is judged as any other.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Judged {
    pub skb: u64,
    pub len: u32,
    /// 1: in scope, but the filter expression did not match it at a traced veth's ingress.
    /// The netfilter observers skip it like the others; the tc observers do not (the filter
    /// runs again at the later hops, where NAT may have made it match).
    pub by_filter: u32,
    pub taken: u64,
    pub taken_len: u32,
    pub _pad: u32,
}

impl Judged {
    /// Is a tc observer's packet at this address (already compared) the one judged out, by its
    /// length? The same length; or at an egress, judged at PREROUTING or OUTPUT from its IP
    /// header, that and an Ethernet header (`ETH_HLEN`): the host's own packets and those from
    /// an interface flowtrace is not attached to (another Docker network's bridge) are judged
    /// there, and compared by length alone were judged again, with a TRACKED lookup, at the
    /// uplink's egress. Not at an ingress: one after a netfilter hook has crossed from another
    /// namespace, whose hooks observers at `nf_hook_slow` see too, and is judged in this one.
    /// The length guards against another packet at a freed one's address.
    #[inline(always)]
    pub const fn same_length(&self, len: u32, egress: bool) -> bool {
        len == self.len || (egress && len == self.len.wrapping_add(ETH_HLEN))
    }

    /// What this CPU's notes say of a tc observer's packet (`skb`, `len`) at an ingress or an
    /// egress: judged out (`Noted::Out`, unless the point is a traced one, which the caller
    /// checks), taken in here at an earlier hop with this length and now at an ingress
    /// (`Noted::Taken`), or nothing.
    #[inline(always)]
    pub const fn of(&self, skb: u64, len: u32, egress: bool) -> Noted {
        if skb == self.skb && self.by_filter == 0 && self.same_length(len, egress) {
            Noted::Out
        } else if !egress && skb == self.taken && len == self.taken_len {
            Noted::Taken
        } else {
            Noted::Nothing
        }
    }
}

/// What `Judged::of` finds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Noted {
    Nothing,
    Out,
    Taken,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A packet judged out at a netfilter hook (its IP length) is still known at a tc egress
    /// with an Ethernet header in front, and at any tc hop with its own length; another length
    /// at the same address is another packet, and so is that one at an ingress (from another
    /// namespace).
    #[test]
    fn judged_lengths() {
        let j = Judged {
            skb: 1,
            len: 84,
            ..Judged::default()
        };
        for egress in [false, true] {
            assert!(
                j.same_length(84, egress),
                "judged at a tc hop, seen at the next"
            );
            for other in [0, 83, 85, 97, 99, 84 + 18, 70] {
                assert!(!j.same_length(other, egress), "{other}");
            }
        }
        assert!(
            j.same_length(98, true),
            "judged from the IP header, seen with Ethernet's"
        );
        assert!(
            !j.same_length(98, false),
            "at an ingress: judged in this namespace"
        );
    }

    /// The two notes: judged out (not by the filter) wins; taken in counts only at an
    /// ingress, with the same length; anything else is nothing.
    #[test]
    fn what_the_notes_say() {
        let j = Judged {
            skb: 1,
            len: 84,
            by_filter: 0,
            taken: 2,
            taken_len: 98,
            _pad: 0,
        };
        assert_eq!(j.of(1, 84, false), Noted::Out);
        assert_eq!(j.of(1, 98, true), Noted::Out);
        let filtered = Judged { by_filter: 1, ..j };
        assert_eq!(filtered.of(1, 84, false), Noted::Nothing);
        assert_eq!(j.of(2, 98, false), Noted::Taken, "its next ingress");
        assert_eq!(j.of(2, 98, true), Noted::Nothing, "an egress looks it up");
        assert_eq!(j.of(2, 97, false), Noted::Nothing, "another packet there");
        assert_eq!(j.of(3, 98, false), Noted::Nothing);
    }
}
