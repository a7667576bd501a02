//! The kernel's scope maps (`SCOPE_POINTS`, `SCOPE_ADDRS`, `SCOPE_PORTS`): written from a
//! [`Scope`] at start-up, then changed entry by entry as the targets change.

use aya::{
    maps::{HashMap, MapData},
    Ebpf,
};
use tracer_common::scope::{port_key, ScopeAddr};

use crate::{
    error::{Error, Result},
    target::scope::{scope_addr, Scope, ScopeChanges},
};

pub struct ScopeMaps {
    points: HashMap<MapData, u32, u32>,
    addrs: HashMap<MapData, ScopeAddr, u32>,
    ports: HashMap<MapData, u32, u32>,
    /// What the maps hold now.
    current: Scope,
}

fn take<K: aya::Pod, V: aya::Pod>(ebpf: &mut Ebpf, name: &str) -> Result<HashMap<MapData, K, V>> {
    let map = ebpf
        .take_map(name)
        .ok_or_else(|| Error::Load(format!("map {name} missing from the eBPF object")))?;
    HashMap::try_from(map).map_err(|e| Error::Load(format!("map {name}: {e}")))
}

impl ScopeMaps {
    pub fn take(ebpf: &mut Ebpf) -> Result<Self> {
        Ok(Self {
            points: take(ebpf, "SCOPE_POINTS")?,
            addrs: take(ebpf, "SCOPE_ADDRS")?,
            ports: take(ebpf, "SCOPE_PORTS")?,
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
        for (proto, port) in &ch.add_ports {
            self.ports
                .insert(port_key(*proto, *port), 1, 0)
                .map_err(full)?;
        }
        // A removal of an entry that is already gone (an interface deleted) is not an error.
        for ifindex in &ch.del_points {
            let _ = self.points.remove(ifindex);
        }
        for a in &ch.del_addrs {
            let _ = self.addrs.remove(&scope_addr(a));
        }
        for (proto, port) in &ch.del_ports {
            let _ = self.ports.remove(&port_key(*proto, *port));
        }
        self.current = new;
        Ok(ch)
    }
}
