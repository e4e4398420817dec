//! Majority sets over replica ids.

use crate::types::ReplicaId;

/// Largest cluster the bitset supports.
pub const MAX_REPLICAS: u32 = 64;

/// The smallest number of replicas that forms a majority of `replicas`.
pub fn majority(replicas: u32) -> u32 {
    replicas / 2 + 1
}

/// A set of replicas that answered, checked against a majority.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Quorum {
    members: u64,
}

impl Quorum {
    /// A set holding just `id`.
    pub fn of(id: ReplicaId) -> Quorum {
        let mut q = Quorum::default();
        q.insert(id);
        q
    }

    /// Adds `id`; returns false if it was already there.
    pub fn insert(&mut self, id: ReplicaId) -> bool {
        assert!(id < MAX_REPLICAS, "replica id {id} out of range");
        let bit = 1u64 << id;
        let fresh = self.members & bit == 0;
        self.members |= bit;
        fresh
    }

    /// True if `id` is in the set.
    pub fn contains(&self, id: ReplicaId) -> bool {
        id < MAX_REPLICAS && self.members & (1u64 << id) != 0
    }

    /// Number of members.
    pub fn len(&self) -> u32 {
        self.members.count_ones()
    }

    /// True if nobody is in the set.
    pub fn is_empty(&self) -> bool {
        self.members == 0
    }

    /// The members as a bitmask (bit `id` set for each member).
    pub fn bits(&self) -> u64 {
        self.members
    }

    /// True once the set is a majority of `replicas`.
    pub fn is_majority(&self, replicas: u32) -> bool {
        self.len() >= majority(replicas)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn majority_of_five_is_three() {
        let mut q = Quorum::of(0);
        q.insert(3);
        assert!(!q.is_majority(5));
        assert!(!q.insert(3), "duplicate insert must not count twice");
        assert!(!q.is_majority(5));
        q.insert(4);
        assert!(q.is_majority(5));
        assert_eq!(majority(3), 2);
        assert_eq!(majority(1), 1);
    }
}
