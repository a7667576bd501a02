//! The kernel's LRU tables (`TRACKED`, `FLOWS`) and what the programs did to them: the kernel
//! evicts their least recently used entries to make room without saying so, and this tells how
//! many it evicted, as put in − taken out − still there.

use aya::{
    maps::{HashMap, MapData, PerCpuArray},
    Ebpf,
};
use tracer_common::{flow::FlowKey, TableOp};

use crate::error::Result;

/// Entries the kernel evicted from its tables to make room.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Evicted {
    /// Packets it stopped following: if still alive, their later hops were not reported.
    pub tracked: u64,
    /// NAT'd flows it forgot: their later replies are in scope only by address or port.
    pub flows: u64,
}

pub struct Tables {
    ops: PerCpuArray<MapData, u64>,
    tracked: HashMap<MapData, u64, tracer_common::flow::Tracked>,
    flows: HashMap<MapData, FlowKey, FlowKey>,
}

impl Tables {
    /// After the netfilter programs were loaded (they relocate against every map).
    pub fn take(ebpf: &mut Ebpf) -> Result<Self> {
        Ok(Self {
            ops: super::take_map(ebpf, "TABLE_OPS")?,
            tracked: super::take_map(ebpf, "TRACKED")?,
            flows: super::take_map(ebpf, "FLOWS")?,
        })
    }

    fn op(&self, op: TableOp) -> u64 {
        self.ops
            .get(&(op as u32), 0)
            .map_or(0, |values| values.iter().sum())
    }

    /// Reads every table's entries: syscalls per entry, so call it at the end and now and
    /// then, never per event. A `TRACKED` entry whose packet ended stays until the LRU reuses
    /// it (`end_tracked` in the kernel side); it was counted out, so only live ones count as
    /// still there.
    pub fn evicted(&self) -> Evicted {
        let live_tracked = self
            .tracked
            .iter()
            .filter(|e| e.as_ref().is_ok_and(|(_, t)| t.live()))
            .count() as u64;
        let live_flows = self.flows.keys().filter(|k| k.is_ok()).count() as u64;
        evicted(
            [
                self.op(TableOp::TrackedIn),
                self.op(TableOp::TrackedOut),
                self.op(TableOp::FlowsIn),
            ],
            live_tracked,
            live_flows,
        )
    }
}

/// From the programs' counts (`TableOp` order) and the entries still there. Counts and entries
/// are read one after the other while the programs run, so a difference that comes out
/// negative is a race, not a negative eviction.
fn evicted(ops: [u64; 3], live_tracked: u64, live_flows: u64) -> Evicted {
    let [tracked_in, tracked_out, flows_in] = ops;
    Evicted {
        tracked: tracked_in
            .saturating_sub(tracked_out)
            .saturating_sub(live_tracked),
        flows: flows_in.saturating_sub(live_flows),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evictions_are_what_went_in_and_neither_came_out_nor_stayed() {
        assert_eq!(evicted([10, 4, 9], 6, 9), Evicted::default());
        assert_eq!(
            evicted([100, 10, 50], 8, 8),
            Evicted {
                tracked: 82,
                flows: 42
            }
        );
        // Read while the programs ran: never below zero.
        assert_eq!(evicted([5, 5, 0], 1, 1), Evicted::default());
    }
}
