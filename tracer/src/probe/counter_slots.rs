//! Which interface counts through which slot and way (`tracer_common::counters`): user
//! space's bookkeeping for `HOP_SLOTS`, kept apart from the maps so that it is tested without
//! a kernel.

use std::collections::HashMap;

use tracer_common::{
    counters::{counter_index, slot_tag, HOP_SLOTS_MAX, HOP_WAYS},
    PointKey,
};

/// A slot given to an interface: what to write into the maps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Taken {
    pub way: u32,
    pub tag: u64,
    /// `HOP_COUNTS` indices of its two directions' counters, to zero first.
    pub counters: [u32; 2],
}

/// A slot whose interface's last point was released: its way to empty, and the slot to hand
/// back ([`SlotBook::free`]) once it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Released {
    pub way: u32,
    pub slot: u32,
}

pub struct SlotBook {
    /// Interface → its slot and the directions registered there (bit 0 ingress, 1 egress).
    slotted: HashMap<u32, (u32, u8)>,
    /// Interfaces counted in the hash map, with their directions there. Both directions of an
    /// interface are counted in one place: the kernel's way leads both to the slot.
    hashed: HashMap<u32, u8>,
    free: Vec<u32>,
}

impl Default for SlotBook {
    fn default() -> Self {
        Self {
            slotted: HashMap::new(),
            hashed: HashMap::new(),
            // Handed out lowest first.
            free: (1..=HOP_SLOTS_MAX).rev().collect(),
        }
    }
}

/// A point's direction, as a bit of its interface's registered directions.
fn bit(key: &PointKey) -> u8 {
    1 << (key.direction & 1)
}

impl SlotBook {
    /// Registers `key` by slot if its interface has one or can take one: `Some(index)` of its
    /// counter, with `Some(Taken)` when the slot is new. `None`: count it in the hash map.
    pub fn register(&mut self, key: PointKey) -> Option<(u32, Option<Taken>)> {
        let bit = bit(&key);
        let taken = match self.slotted.get_mut(&key.ifindex) {
            Some((_, dirs)) => {
                *dirs |= bit;
                None
            }
            None => match self.take(key.ifindex, bit) {
                Some(t) => Some(t),
                None => {
                    *self.hashed.entry(key.ifindex).or_default() |= bit;
                    return None;
                }
            },
        };
        Some((self.index(&key)?, taken))
    }

    /// A slot for an interface with none, if it has no point in the hash map, its way is
    /// free and a slot is left.
    fn take(&mut self, ifindex: u32, bit: u8) -> Option<Taken> {
        let way = ifindex % HOP_WAYS;
        let way_taken = self.slotted.keys().any(|i| i % HOP_WAYS == way);
        if way_taken || self.hashed.contains_key(&ifindex) {
            return None;
        }
        let slot = *self.free.last()?;
        let tag = slot_tag(ifindex, slot);
        let at = |d| counter_index(tag, ifindex, d);
        let counters = [at(0)?, at(1)?];
        self.free.pop();
        self.slotted.insert(ifindex, (slot, bit));
        Some(Taken { way, tag, counters })
    }

    /// The `HOP_COUNTS` index of a point registered by slot.
    pub fn index(&self, key: &PointKey) -> Option<u32> {
        let (slot, dirs) = self.slotted.get(&key.ifindex)?;
        if dirs & bit(key) == 0 {
            return None;
        }
        counter_index(slot_tag(key.ifindex, *slot), key.ifindex, key.direction)
    }

    /// Ends a point. `Some` when it was its slot's last: the way is to be emptied, then the
    /// slot handed back with [`SlotBook::free`] (kept out of use if the way stays set).
    pub fn release(&mut self, key: &PointKey) -> Option<Released> {
        let bit = bit(key);
        if let Some(dirs) = self.hashed.get_mut(&key.ifindex) {
            *dirs &= !bit;
            if *dirs == 0 {
                self.hashed.remove(&key.ifindex);
            }
            return None;
        }
        let (slot, dirs) = self.slotted.get_mut(&key.ifindex)?;
        if *dirs & bit == 0 {
            return None;
        }
        *dirs &= !bit;
        if *dirs != 0 {
            return None;
        }
        let slot = *slot;
        self.slotted.remove(&key.ifindex);
        Some(Released {
            way: key.ifindex % HOP_WAYS,
            slot,
        })
    }

    /// A released slot, its way emptied: it can be handed out again.
    pub fn free(&mut self, r: Released) {
        self.free.push(r.slot);
    }

    /// Every point registered by slot, with its counter's index.
    pub fn points(&self) -> impl Iterator<Item = (PointKey, u32)> + '_ {
        self.slotted.keys().flat_map(move |i| {
            [0, 1].into_iter().filter_map(move |d| {
                let k = PointKey::new(*i, d);
                Some((k, self.index(&k)?))
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Releases `key`, which must be its slot's last point, and hands the slot back.
    fn release_last(b: &mut SlotBook, key: PointKey) -> Released {
        let r = b.release(&key).expect("its slot's last point");
        b.free(r);
        r
    }

    #[test]
    fn an_interface_takes_a_slot_and_its_directions_share_it() {
        let mut b = SlotBook::default();
        let (i, t) = b.register(PointKey::new(2364, 0)).expect("a slot");
        let t = t.expect("a new slot");
        assert_eq!((i, t.way, t.tag), (2, 2364, slot_tag(2364, 1)));
        assert_eq!(t.counters, [2, 3]);
        assert_eq!(b.register(PointKey::new(2364, 1)), Some((3, None)));
        let mut all: Vec<_> = b.points().collect();
        all.sort();
        let want = [(PointKey::new(2364, 0), 2), (PointKey::new(2364, 1), 3)];
        assert_eq!(all, want);
    }

    #[test]
    fn a_taken_way_sends_the_other_interface_to_the_hash_map() {
        let mut b = SlotBook::default();
        assert!(b.register(PointKey::new(7, 0)).is_some());
        assert_eq!(b.register(PointKey::new(7 + HOP_WAYS, 0)), None);
        let none = b.release(&PointKey::new(7 + HOP_WAYS, 0));
        assert_eq!(none, None, "not slotted");
        // Once the way is free, it is the other interface's.
        assert_eq!(release_last(&mut b, PointKey::new(7, 0)).way, 7);
        assert!(b.register(PointKey::new(7 + HOP_WAYS, 0)).is_some());
    }

    /// An interface with a point in the hash map keeps its other direction there too, even
    /// once its way is free: the kernel's way would lead both directions to a slot.
    #[test]
    fn both_directions_of_an_interface_are_counted_in_one_place() {
        let mut b = SlotBook::default();
        let other = 7 + HOP_WAYS;
        b.register(PointKey::new(7, 0));
        assert_eq!(b.register(PointKey::new(other, 0)), None);
        release_last(&mut b, PointKey::new(7, 0));
        let egress = b.register(PointKey::new(other, 1));
        assert_eq!(egress, None, "beside its ingress");
        assert_eq!(b.release(&PointKey::new(other, 0)), None);
        assert_eq!(b.release(&PointKey::new(other, 1)), None);
        // All of it released: the interface may take a slot now.
        assert!(b.register(PointKey::new(other, 1)).is_some());
    }

    #[test]
    fn the_last_direction_frees_the_slot_and_way_for_reuse() {
        let mut b = SlotBook::default();
        b.register(PointKey::new(9, 0));
        b.register(PointKey::new(9, 1));
        let first = b.release(&PointKey::new(9, 0));
        assert_eq!(first, None, "egress still counted");
        assert_eq!(b.index(&PointKey::new(9, 0)), None);
        assert_eq!(b.release(&PointKey::new(9, 0)), None, "released once");
        let r = b.release(&PointKey::new(9, 1)).expect("its last point");
        assert_eq!(r, Released { way: 9, slot: 1 });
        assert_eq!(b.points().count(), 0);
        let (_, t) = b.register(PointKey::new(10, 1)).expect("a slot");
        assert_eq!(
            t.map(|t| t.tag),
            Some(slot_tag(10, 2)),
            "slot 1 not freed yet"
        );
        b.free(r);
        let (_, t) = b.register(PointKey::new(11, 1)).expect("a slot");
        assert_eq!(t.map(|t| t.tag), Some(slot_tag(11, 1)), "slot 1 reused");
    }

    #[test]
    fn past_the_last_slot_points_go_to_the_hash_map() {
        let mut b = SlotBook::default();
        for i in 0..HOP_SLOTS_MAX {
            assert!(b.register(PointKey::new(i, 0)).is_some(), "{i}");
        }
        assert_eq!(b.register(PointKey::new(HOP_SLOTS_MAX, 0)), None);
        assert!(
            b.register(PointKey::new(0, 1)).is_some(),
            "a slotted one's other side"
        );
    }
}
