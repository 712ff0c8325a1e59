//! A map with a bounded number of entries and no scans: entries live in two
//! generations; when the current one is full it becomes the previous one and the old
//! previous one is dropped whole. An entry untouched for a whole generation is
//! forgotten; one touched (read or written) moves to the current generation.
//!
//! For tables that strangers can grow (sign-in nonces, sessions, challenges, rate
//! buckets): their memory is bounded, and no request pays for a scan of all of them.

use std::collections::HashMap;
use std::hash::Hash;

/// A map holding at most `2 × generation` entries.
#[derive(Debug)]
pub struct BoundedMap<K, V> {
    generation: usize,
    current: HashMap<K, V>,
    previous: HashMap<K, V>,
}

impl<K: Hash + Eq, V> BoundedMap<K, V> {
    /// An empty map whose generations hold `generation` entries each (at least 1).
    pub fn new(generation: usize) -> Self {
        Self {
            generation: generation.max(1),
            current: HashMap::new(),
            previous: HashMap::new(),
        }
    }

    /// Inserts or replaces `key`'s value.
    pub fn insert(&mut self, key: K, value: V) {
        self.previous.remove(&key);
        if self.current.len() >= self.generation && !self.current.contains_key(&key) {
            self.previous = std::mem::take(&mut self.current);
        }
        self.current.insert(key, value);
    }

    /// Removes and returns `key`'s value.
    pub fn remove(&mut self, key: &K) -> Option<V> {
        self.current
            .remove(key)
            .or_else(|| self.previous.remove(key))
    }

    /// `key`'s value, moved to the current generation (it was just used).
    pub fn get_mut(&mut self, key: &K) -> Option<&mut V>
    where
        K: Clone,
    {
        if !self.current.contains_key(key) {
            let value = self.previous.remove(key)?;
            self.insert(key.clone(), value);
        }
        self.current.get_mut(key)
    }

    /// Entries held, both generations.
    pub fn len(&self) -> usize {
        self.current.len() + self.previous.len()
    }

    /// Whether it holds nothing.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stays_bounded_and_keeps_what_is_used() {
        let mut map = BoundedMap::new(100);
        map.insert("kept".to_string(), 0);
        for i in 0..1000 {
            map.insert(format!("flood-{i}"), i);
            if i % 50 == 0 {
                assert!(map.get_mut(&"kept".to_string()).is_some(), "lost at {i}");
            }
            assert!(map.len() <= 200);
        }
        assert_eq!(map.remove(&"kept".to_string()), Some(0));
        assert_eq!(map.remove(&"kept".to_string()), None);
        assert_eq!(
            map.remove(&"flood-0".to_string()),
            None,
            "old entries are forgotten"
        );
        assert_eq!(map.remove(&"flood-999".to_string()), Some(999));
    }
}
