//! Per-hop counters: registering the points to count and reading the per-CPU sums.

use std::collections::BTreeMap;

use aya::{
    maps::{MapData, PerCpuHashMap, PerCpuValues},
    Ebpf,
};
use tracer_common::{HopCounter, PointKey};

use crate::error::{Error, Result};

pub struct Counters {
    map: PerCpuHashMap<MapData, PointKey, HopCounter>,
    cpus: usize,
}

impl Counters {
    pub fn take(ebpf: &mut Ebpf) -> Result<Self> {
        let map = ebpf
            .take_map("HOP_COUNTERS")
            .ok_or_else(|| Error::Load("map HOP_COUNTERS missing from the eBPF object".into()))?;
        let map = PerCpuHashMap::try_from(map).map_err(|e| Error::Load(e.to_string()))?;
        let cpus = aya::util::nr_cpus().map_err(|(what, e)| Error::io(what, e))?;
        Ok(Self { map, cpus })
    }

    /// Starts counting at a point (the programs only increment keys that exist).
    pub fn register(&mut self, key: PointKey) -> Result<()> {
        let zeros = PerCpuValues::try_from(vec![HopCounter::default(); self.cpus])
            .map_err(|e| Error::io("per-CPU counter values", e))?;
        self.map
            .insert(key, zeros, 0)
            .map_err(|e| Error::Load(format!("cannot register counter: {e}")))
    }

    /// The counters of every registered point, summed over CPUs.
    pub fn read(&self) -> BTreeMap<PointKey, HopCounter> {
        let mut out = BTreeMap::new();
        for (key, values) in self.map.iter().flatten() {
            let mut total = HopCounter::default();
            for v in values.iter() {
                total.add(v);
            }
            out.insert(key, total);
        }
        out
    }
}
