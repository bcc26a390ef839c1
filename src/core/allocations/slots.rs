//! The allocations, named by `AllocationId`: a slab slot plus a generation. Slots are reused,
//! generations never, so a name the driver still holds for a gone allocation (a socket
//! completion that arrives late, a datagram read from a socket not yet closed) finds nothing
//! instead of the next allocation in that slot.

use slab::Slab;

use super::allocation::Allocation;
use crate::core::ids::AllocationId;

#[derive(Default)]
pub(crate) struct AllocationTable {
    /// Each allocation with the generation it was named with.
    slots: Slab<(u64, Allocation)>,
    next_generation: u64,
}

impl AllocationTable {
    pub(crate) fn insert(&mut self, allocation: Allocation) -> AllocationId {
        let generation = self.next_generation;
        // A u64 counting allocations cannot wrap in the life of a process.
        self.next_generation += 1;
        let slot = self.slots.insert((generation, allocation));
        AllocationId { slot, generation }
    }

    pub(crate) fn get(&self, id: AllocationId) -> Option<&Allocation> {
        match self.slots.get(id.slot) {
            Some((generation, allocation)) if *generation == id.generation => Some(allocation),
            _ => None,
        }
    }

    pub(crate) fn get_mut(&mut self, id: AllocationId) -> Option<&mut Allocation> {
        match self.slots.get_mut(id.slot) {
            Some((generation, allocation)) if *generation == id.generation => Some(allocation),
            _ => None,
        }
    }

    pub(crate) fn remove(&mut self, id: AllocationId) -> Option<Allocation> {
        self.get(id)?;
        self.slots
            .try_remove(id.slot)
            .map(|(_, allocation)| allocation)
    }

    pub(crate) fn len(&self) -> usize {
        self.slots.len()
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = (AllocationId, &Allocation)> {
        self.slots.iter().map(|(slot, (generation, allocation))| {
            let id = AllocationId {
                slot,
                generation: *generation,
            };
            (id, allocation)
        })
    }
}
