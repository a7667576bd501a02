//! The kernel's scope maps (`SCOPE_POINTS`, `SCOPE_ADDRS` and the bitmaps in front of them,
//! `SCOPE_POINT_BITS`, `SCOPE_ADDR_BITS` and `SCOPE_PORT_BITS`): written from a [`Scope`] at
//! start-up, then changed entry by entry (word by word) as the targets change.

use aya::{
    maps::{Array, HashMap, MapData},
    Ebpf,
};
use tracer_common::scope::ScopeAddr;

use crate::{
    error::{Error, Result},
    target::scope::{scope_addr, Scope, ScopeChanges},
};

pub struct ScopeMaps {
    points: HashMap<MapData, u32, u32>,
    addrs: HashMap<MapData, ScopeAddr, u32>,
    addr_bits: Array<MapData, u64>,
    port_bits: Array<MapData, u64>,
    point_bits: Array<MapData, u64>,
    /// What the maps hold now.
    current: Scope,
}

/// Writes the words of `new` that differ from `old`.
fn write_bits(
    map: &mut Array<MapData, u64>,
    old: &[u64],
    new: &[u64],
) -> std::result::Result<(), aya::maps::MapError> {
    for (i, (o, n)) in old.iter().zip(new).enumerate() {
        if o != n {
            map.set(i as u32, n, 0)?;
        }
    }
    Ok(())
}

impl ScopeMaps {
    pub fn take(ebpf: &mut Ebpf) -> Result<Self> {
        Ok(Self {
            points: super::take_map(ebpf, "SCOPE_POINTS")?,
            addrs: super::take_map(ebpf, "SCOPE_ADDRS")?,
            addr_bits: super::take_map(ebpf, "SCOPE_ADDR_BITS")?,
            port_bits: super::take_map(ebpf, "SCOPE_PORT_BITS")?,
            point_bits: super::take_map(ebpf, "SCOPE_POINT_BITS")?,
            current: Scope::default(),
        })
    }

    pub fn current(&self) -> &Scope {
        &self.current
    }

    /// Makes the maps hold `new`; returns what changed. Additions go in before removals, so
    /// a container that keeps an address never drops out of scope on the way.
    pub fn set(&mut self, new: Scope) -> Result<ScopeChanges> {
        let ch = self.current.changes_to(&new);
        let full = |e: aya::maps::MapError| {
            Error::Load(format!(
                "cannot update the kernel's scope ({e}); too many traced addresses or ports?"
            ))
        };
        for (ifindex, flags) in &ch.set_points {
            self.points.insert(ifindex, flags, 0).map_err(full)?;
        }
        for a in &ch.add_addrs {
            self.addrs.insert(scope_addr(a), 1, 0).map_err(full)?;
        }
        // The bitmaps are written whole (the words that changed): a bit shared by a kept and
        // a removed address stays set.
        let cur = &self.current;
        write_bits(&mut self.addr_bits, &cur.addr_bitmap(), &new.addr_bitmap()).map_err(full)?;
        write_bits(&mut self.port_bits, &cur.port_bitmap(), &new.port_bitmap()).map_err(full)?;
        // A point's bit is set after its entry and cleared before its removal (`write_bits`
        // writes whole words: a removed point's word is rewritten with its neighbours' bits).
        write_bits(
            &mut self.point_bits,
            &cur.point_bitmap(),
            &new.point_bitmap(),
        )
        .map_err(full)?;
        // A removal of an entry that is already gone (an interface deleted) is not an error.
        for ifindex in &ch.del_points {
            let _ = self.points.remove(ifindex);
        }
        for a in &ch.del_addrs {
            let _ = self.addrs.remove(&scope_addr(a));
        }
        self.current = new;
        Ok(ch)
    }
}
