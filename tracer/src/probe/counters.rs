//! Per-hop counters: registering the points to count and reading the per-CPU sums.

use std::collections::BTreeMap;

use aya::{
    maps::{Array, MapData, PerCpuArray, PerCpuHashMap, PerCpuValues},
    Ebpf,
};
use tracer_common::{Direction, HopCounter, PointKey};

use super::counter_slots::SlotBook;

use crate::error::{Error, Result};

/// One point's counters, summed over CPUs, with its interface name.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HopTotals {
    pub iface: String,
    pub direction: &'static str,
    pub packets: u64,
    pub bytes: u64,
    pub lost: u64,
}

pub struct Counters {
    map: PerCpuHashMap<MapData, PointKey, HopCounter>,
    /// The ways to the points counted by array (`tracer_common::counters`)…
    ways: Array<MapData, u64>,
    /// …their counters…
    slots: PerCpuArray<MapData, HopCounter>,
    /// …and which interface has which.
    book: SlotBook,
    ring_fill: Option<PerCpuArray<MapData, u64>>,
    /// Records lost by kind (`tracer_common::LostKind`), per CPU.
    lost: Option<PerCpuArray<MapData, u64>>,
    /// What detached points counted before their entries were freed (still in the totals).
    retired: BTreeMap<PointKey, HopCounter>,
    cpus: usize,
    /// Size of the `EVENTS` ring buffer (`--buffer-size`).
    ring_bytes: u32,
}

impl Counters {
    pub fn take(ebpf: &mut Ebpf, ring_bytes: u32) -> Result<Self> {
        let map = super::take_map(ebpf, "HOP_COUNTERS")?;
        let ways = super::take_map(ebpf, "HOP_SLOTS")?;
        let slots = super::take_map(ebpf, "HOP_COUNTS")?;
        let cpus = aya::util::nr_cpus().map_err(|(what, e)| Error::io(what, e))?;
        let ring_fill = ebpf
            .take_map("RING_FILL")
            .and_then(|m| PerCpuArray::try_from(m).ok());
        let lost = ebpf
            .take_map("LOST")
            .and_then(|m| PerCpuArray::try_from(m).ok());
        Ok(Self {
            map,
            ways,
            slots,
            book: SlotBook::default(),
            ring_fill,
            lost,
            retired: BTreeMap::new(),
            cpus,
            ring_bytes: ring_bytes.max(1),
        })
    }

    /// Starts counting at a point: by array where its interface has a slot or can take one,
    /// else in the hash map (the programs only increment keys that exist).
    pub fn register(&mut self, key: PointKey) -> Result<()> {
        let zeros = self.zeros()?;
        let refused = |e: aya::maps::MapError| Error::Load(format!("cannot register counter: {e}"));
        let Some((index, taken)) = self.book.register(key) else {
            let inserted = self.map.insert(key, zeros, 0).map_err(refused);
            if inserted.is_err() {
                // Not counted: the book must not say it is.
                self.book.release(&key);
            }
            return inserted;
        };
        let written = match taken {
            // Both counters zeroed before the way leads to them.
            Some(t) => t
                .counters
                .into_iter()
                .try_for_each(|i| self.slots.set(i, self.zeros()?, 0).map_err(refused))
                .and_then(|()| self.ways.set(t.way, t.tag, 0).map_err(refused)),
            None => self.slots.set(index, zeros, 0).map_err(refused),
        };
        if written.is_err() {
            // Not counted: the book must not say it is (its way was not written).
            if let Some(r) = self.book.release(&key) {
                self.book.free(r);
            }
        }
        written
    }

    fn zeros(&self) -> Result<PerCpuValues<HopCounter>> {
        PerCpuValues::try_from(vec![HopCounter::default(); self.cpus])
            .map_err(|e| Error::io("per-CPU counter values", e))
    }

    /// Stops counting at a detached point and frees its entry or slot (so that restarts
    /// never use them up); what it counted stays in the totals.
    pub fn unregister(&mut self, key: PointKey) {
        let slotted = self.book.index(&key);
        let values = match slotted {
            Some(i) => self.slots.get(&i, 0).ok(),
            None => self.map.get(&key, 0).ok(),
        };
        if let Some(values) = values {
            let kept = self.retired.entry(key).or_default();
            for v in values.iter() {
                kept.add(v);
            }
        }
        if slotted.is_none() {
            let _ = self.map.remove(&key);
        }
        // A slot whose way stays set (the write failed) is never handed out again: the stale
        // way leads only this interface's ifindex to it.
        if let Some(r) = self.book.release(&key) {
            if self.ways.set(r.way, 0, 0).is_ok() {
                self.book.free(r);
            }
        }
    }

    /// How full the ring buffer was at the last write, in percent (the fullest CPU's view).
    pub fn ring_fill(&self) -> Option<f32> {
        let values = self.ring_fill.as_ref()?.get(&0, 0).ok()?;
        let bytes = values.iter().copied().max()?;
        Some((bytes as f64 * 100.0 / f64::from(self.ring_bytes)) as f32)
    }

    /// Kernel records lost so far, by kind (tc, netfilter, a packet's end), summed over CPUs.
    pub fn lost_by_kind(&self) -> [u64; 3] {
        let mut out = [0; 3];
        if let Some(m) = self.lost.as_ref() {
            for (i, slot) in out.iter_mut().enumerate() {
                if let Ok(values) = m.get(&(i as u32), 0) {
                    *slot = values.iter().sum();
                }
            }
        }
        out
    }

    /// Every kernel record lost so far (the tc hops' own counts where the kinds are missing).
    pub fn lost_total(&self) -> u64 {
        match self.lost {
            Some(_) => self.lost_by_kind().iter().sum(),
            None => self.read().values().map(|c| c.lost).sum(),
        }
    }

    /// The counters of every registered point, summed over CPUs.
    pub fn read(&self) -> BTreeMap<PointKey, HopCounter> {
        let mut out = self.retired.clone();
        let slotted =
            (self.book.points()).filter_map(|(k, i)| Some((k, self.slots.get(&i, 0).ok()?)));
        for (key, values) in self.map.iter().flatten().chain(slotted) {
            let total = out.entry(key).or_default();
            for v in values.iter() {
                total.add(v);
            }
        }
        out
    }

    /// Named totals, in attach order of `names` (ifindex → name).
    pub fn totals(&self, names: &[(u32, String)]) -> Vec<HopTotals> {
        let read = self.read();
        let mut out = Vec::new();
        for (ifindex, name) in names {
            for d in [Direction::Ingress, Direction::Egress] {
                let c = read
                    .get(&PointKey::new(*ifindex, d as u8))
                    .copied()
                    .unwrap_or_default();
                out.push(HopTotals {
                    iface: name.clone(),
                    direction: d.as_str(),
                    packets: c.packets,
                    bytes: c.bytes,
                    lost: c.lost,
                });
            }
        }
        out
    }
}
