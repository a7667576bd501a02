//! Per-hop counters, per CPU: exact even when the ring buffer overflows. A point's counters
//! are found by array indexing (`HOP_SLOTS`, then `HOP_COUNTS`): a hash lookup at every tc
//! run was a third of what `--counters` costs a packet. A point whose way is taken by another
//! interface, or past the slots, is counted in the per-CPU hash map instead.

/// Records that did not fit in the ring buffer, by kind: the index into the per-CPU `LOST`
/// array (every kind is counted; tc's are also counted at their hop).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LostKind {
    Tc = 0,
    Netfilter = 1,
    Drop = 2,
}

/// Entries of the per-hop counter map: two per attached point (1024 points; a detached
/// point's entries are freed, so restarts do not use them up).
pub const MAX_HOP_COUNTERS: u32 = 2048;

/// Entries of `HOP_SLOTS`, the ways an interface is found by: way `ifindex % HOP_WAYS` holds
/// [`slot_tag`] of the interface that has it.
pub const HOP_WAYS: u32 = 4096;

/// Interfaces counted through the arrays at most; slot 0 is never handed out (a tag of 0 is
/// an empty way).
pub const HOP_SLOTS_MAX: u32 = 1023;

/// Entries of `HOP_COUNTS`: one per slot and direction.
pub const HOP_COUNTS_LEN: u32 = (HOP_SLOTS_MAX + 1) * 2;

/// What way `ifindex % HOP_WAYS` holds for an interface counted in slot `slot`.
pub const fn slot_tag(ifindex: u32, slot: u32) -> u64 {
    ((ifindex as u64) << 32) | slot as u64
}

/// The `HOP_COUNTS` index of `ifindex`'s counter in `direction` (0 or 1), from the tag its
/// way holds; `None` when the way is empty or another interface's.
#[inline(always)]
pub const fn counter_index(tag: u64, ifindex: u32, direction: u8) -> Option<u32> {
    let slot = tag as u32;
    if (tag >> 32) as u32 != ifindex || slot == 0 || slot > HOP_SLOTS_MAX {
        return None;
    }
    Some(slot * 2 + (direction & 1) as u32)
}

/// Entries of the `LOST` array.
pub const LOST_KINDS: u32 = 3;

/// What the programs did to their LRU tables, by kind: the index into the per-CPU `TABLE_OPS`
/// array. With the entries still there, these tell how many the kernel evicted to make room
/// (which it does not report): put in − taken out − still there.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TableOp {
    /// A packet taken into `TRACKED`.
    TrackedIn = 0,
    /// A packet taken out of `TRACKED` (its end, or its address reused).
    TrackedOut = 1,
    /// A flow put in `FLOWS` (only the kernel's LRU ever takes one out).
    FlowsIn = 2,
}

/// Entries of the `TABLE_OPS` array.
pub const TABLE_OPS: u32 = 3;

/// Key of an observation point in the counter map: an interface and a direction.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PointKey {
    pub ifindex: u32,
    /// A [`crate::Direction`] value.
    pub direction: u8,
    pub _pad: [u8; 3],
}

impl PointKey {
    pub const fn new(ifindex: u32, direction: u8) -> Self {
        Self {
            ifindex,
            direction,
            _pad: [0; 3],
        }
    }
}

/// Packets and bytes seen at one point, on one CPU. User space sums the CPUs.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HopCounter {
    pub packets: u64,
    pub bytes: u64,
    /// Ring-buffer reservations that failed at this point (events lost, packets still counted).
    pub lost: u64,
}

impl HopCounter {
    /// Adds another CPU's counter to this one.
    pub fn add(&mut self, other: &HopCounter) {
        self.packets += other.packets;
        self.bytes += other.bytes;
        self.lost += other.lost;
    }
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain-old-data, repr(C), every bit pattern valid.
    unsafe impl aya::Pod for super::PointKey {}
    unsafe impl aya::Pod for super::HopCounter {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_across_cpus() {
        let mut total = HopCounter::default();
        total.add(&HopCounter {
            packets: 2,
            bytes: 148,
            lost: 0,
        });
        total.add(&HopCounter {
            packets: 1,
            bytes: 60,
            lost: 1,
        });
        assert_eq!(
            total,
            HopCounter {
                packets: 3,
                bytes: 208,
                lost: 1
            }
        );
    }

    #[test]
    fn a_counter_is_found_by_its_own_tag_only() {
        let tag = slot_tag(2364, 5);
        assert_eq!(counter_index(tag, 2364, 0), Some(10));
        assert_eq!(counter_index(tag, 2364, 1), Some(11));
        // The same way, another interface: not this slot.
        assert_eq!(counter_index(tag, 2364 + HOP_WAYS, 0), None);
        assert_eq!(counter_index(0, 0, 0), None, "an empty way");
        assert_eq!(counter_index(slot_tag(7, HOP_SLOTS_MAX + 1), 7, 0), None);
        let last = counter_index(slot_tag(7, HOP_SLOTS_MAX), 7, 1);
        assert_eq!(last, Some(HOP_COUNTS_LEN - 1));
    }

    #[test]
    fn key_has_no_uninitialised_padding() {
        assert_eq!(core::mem::size_of::<PointKey>(), 8);
        let k = PointKey::new(7, 1);
        assert_eq!(k._pad, [0; 3]);
    }
}
