//! Redis Cluster: a pipeline must stay within one hash slot, so a batch is split by slot.

use std::collections::BTreeMap;

const CRC16: crc::Crc<u16> = crc::Crc::<u16>::new(&crc::CRC_16_XMODEM);

/// The cluster slot of `key` (CRC16 of its hash tag, or of the whole key), 0..16384.
pub fn slot(key: &str) -> u16 {
    let bytes = key.as_bytes();
    let tagged = key.find('{').and_then(|open| {
        let rest = &key[open + 1..];
        rest.find('}').filter(|&close| close > 0).map(|close| &bytes[open + 1..open + 1 + close])
    });
    CRC16.checksum(tagged.unwrap_or(bytes)) % 16384
}

/// Splits `items` into groups whose keys share a slot, keeping their order within a group.
pub fn group_by_slot<T>(items: Vec<T>, key: impl Fn(&T) -> &str) -> Vec<Vec<T>> {
    let mut groups: BTreeMap<u16, Vec<T>> = BTreeMap::new();
    for item in items {
        groups.entry(slot(key(&item))).or_default().push(item);
    }
    groups.into_values().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_match_the_redis_cluster_spec() {
        // Reference values from the Redis Cluster specification.
        assert_eq!(slot("123456789"), 12739);
        assert_eq!(slot("foo"), 12182);
        assert_eq!(slot("{user1000}.following"), slot("{user1000}.followers"));
        assert_eq!(slot("outbox:{orders}"), slot("{orders}"));
        assert_eq!(slot("a{}b"), CRC16.checksum(b"a{}b") % 16384, "an empty tag is no tag");
    }

    #[test]
    fn a_batch_splits_into_one_group_per_slot_keeping_order() {
        let keys = vec!["{a}1", "{b}1", "{a}2", "{b}2", "{a}3"];
        let groups = group_by_slot(keys, |k| k);
        assert_eq!(groups.len(), 2);
        let a = groups.iter().find(|g| g[0].starts_with("{a}")).unwrap();
        assert_eq!(a, &vec!["{a}1", "{a}2", "{a}3"]);
    }
}
