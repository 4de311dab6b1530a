//! Redis Cluster: a pipeline must stay within one hash slot, so a batch is split by slot.

use std::collections::HashMap;

pub use redis::cluster_routing::Slot;

/// The cluster slot of `key`: the redis crate's own CRC16 of its hash tag, or of the whole key.
pub fn slot(key: &str) -> Slot {
    Slot::for_key(key)
}

/// Splits `items` into groups whose keys share a slot, keeping their order within a group;
/// groups come in the order their first item appears.
pub fn group_by_slot<T>(items: Vec<T>, key: impl Fn(&T) -> &str) -> Vec<Vec<T>> {
    let mut index: HashMap<Slot, usize> = HashMap::new();
    let mut groups: Vec<Vec<T>> = Vec::new();
    for item in items {
        let at = *index.entry(slot(key(&item))).or_insert_with(|| {
            groups.push(Vec::new());
            groups.len() - 1
        });
        groups[at].push(item);
    }
    groups
}

#[cfg(test)]
mod tests {
    use super::*;

    fn number(n: u16) -> Slot {
        Slot::new(n).unwrap()
    }

    #[test]
    fn slots_match_the_redis_cluster_spec() {
        // Reference values from the Redis Cluster specification.
        assert_eq!(slot("123456789"), number(12739));
        assert_eq!(slot("foo"), number(12182));
        assert_eq!(slot("{user1000}.following"), slot("{user1000}.followers"));
        assert_eq!(slot("outbox:{orders}"), slot("{orders}"));
        assert_eq!(slot("outbox:{orders}"), slot("orders"));
        assert_eq!(slot("a{}b"), number(13694), "an empty tag is no tag: the whole key counts");
    }

    #[test]
    fn a_batch_splits_into_one_group_per_slot_keeping_order() {
        let keys = vec!["{b}1", "{a}1", "{b}2", "{a}2", "{a}3"];
        let groups = group_by_slot(keys, |k| k);
        assert_eq!(groups, vec![vec!["{b}1", "{b}2"], vec!["{a}1", "{a}2", "{a}3"]]);
    }
}
