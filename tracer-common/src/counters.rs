//! Per-hop counters kept in a per-CPU hash map: exact even when the ring buffer overflows.

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
    fn key_has_no_uninitialised_padding() {
        assert_eq!(core::mem::size_of::<PointKey>(), 8);
        let k = PointKey::new(7, 1);
        assert_eq!(k._pad, [0; 3]);
    }
}
