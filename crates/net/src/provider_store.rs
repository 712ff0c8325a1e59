//! The DHT's record store: regular records in a kad [`MemoryStore`], provider records
//! in two parts, so that nothing other peers send can stop this node announcing its own.
//!
//! `MemoryStore` keeps every provider record, this node's and other peers', in one
//! table of at most `max_provided_keys` keys (1 024 by default) and refuses a new key
//! once it is full. An ADD_PROVIDER flood fills it; so does, with no attacker at all, a
//! node holding more than about 1 024 records. After that `start_providing` fails and
//! new records are never announced. Here:
//!
//! - this node's own provider records are kept apart, limited only by
//!   [`ProviderStoreConfig::max_provided_keys`] (10 million by default: one per record
//!   held);
//! - other peers' provider records are limited in total, per key and per provider.
//!   They expire (kad stamps them 48 h after arrival, renewed at each republish) and
//!   expired ones are swept as new ones arrive. Past a limit an ADD_PROVIDER fails with
//!   [`store::Error::MaxProvidedKeys`], which kad logs and drops. Other peers' records
//!   never evict or block this node's own.
//!
//! [`RecordStore::providers`] answers with both: this node first (if it provides the
//! key), then other peers in the order they came.

use std::borrow::Cow;
use std::collections::{hash_map, BTreeMap, HashMap};
use std::iter;
use std::time::Instant;

use libp2p::kad::store::{self, MemoryStore, RecordStore};
use libp2p::kad::{ProviderRecord, Record, RecordKey, K_VALUE};
use libp2p::PeerId;

/// Addresses kept with another peer's provider record (kad accepts as many as fit in a
/// 16 KiB message; a few are enough to reach a peer, and identify brings the rest).
pub(crate) const MAX_ADDRESSES: usize = 8;
/// Longest address kept with another peer's provider record, in bytes (binary form; an
/// `/ip6/…/udp/…/quic-v1` address is about 25, a relayed one about 80).
pub(crate) const MAX_ADDRESS_BYTES: usize = 128;
/// Expired records of other peers dropped per ADD_PROVIDER at most, so one call never
/// holds the swarm task long; the rest go at the following calls.
const SWEEP: usize = 256;

/// Limits of a [`ProviderStore`].
#[derive(Debug, Clone)]
pub(crate) struct ProviderStoreConfig {
    /// Keys this node itself provides.
    pub(crate) max_provided_keys: usize,
    /// Other peers' provider records in all (so also the keys they cover).
    pub(crate) max_peer_records: usize,
    /// Other peers' provider records for one key; more are ignored, the first ones
    /// kept (as `MemoryStore` does, against Sybils crowding out honest providers).
    pub(crate) max_providers_per_key: usize,
    /// Provider records of one other peer (kad checks that an ADD_PROVIDER names its
    /// sender as the provider, so this is what one peer may take of
    /// `max_peer_records`).
    pub(crate) max_records_per_provider: usize,
}

impl Default for ProviderStoreConfig {
    fn default() -> Self {
        Self {
            max_provided_keys: 10_000_000,
            max_peer_records: 65_536,
            max_providers_per_key: K_VALUE.get(),
            max_records_per_provider: 8_192,
        }
    }
}

/// A kad [`RecordStore`] whose provider records cannot be crowded out by other peers.
pub(crate) struct ProviderStore {
    local: PeerId,
    config: ProviderStoreConfig,
    /// Regular (value) records: unchanged kad behaviour.
    records: MemoryStore,
    /// This node's provider records.
    own: HashMap<RecordKey, ProviderRecord>,
    /// Other peers' provider records.
    others: Others,
}

impl ProviderStore {
    /// A store for the node `local`, regular records in a default `MemoryStore`.
    pub(crate) fn new(local: PeerId, config: ProviderStoreConfig) -> Self {
        Self::with_records(local, config, MemoryStore::new(local))
    }

    /// A store for the node `local` keeping regular records in `records`.
    pub(crate) fn with_records(
        local: PeerId,
        config: ProviderStoreConfig,
        records: MemoryStore,
    ) -> Self {
        Self {
            local,
            config,
            records,
            own: HashMap::new(),
            others: Others::default(),
        }
    }

    /// Keys this node provides.
    #[cfg(test)]
    pub(crate) fn provided_len(&self) -> usize {
        self.own.len()
    }

    /// Other peers' provider records held.
    #[cfg(test)]
    pub(crate) fn peer_records_len(&self) -> usize {
        self.others.len
    }

    fn add_provider_at(&mut self, mut record: ProviderRecord, now: Instant) -> store::Result<()> {
        if record.provider == self.local {
            let held = self.own.len();
            return match self.own.entry(record.key.clone()) {
                hash_map::Entry::Occupied(mut e) => {
                    e.insert(record);
                    Ok(())
                }
                hash_map::Entry::Vacant(e) => {
                    if held >= self.config.max_provided_keys {
                        return Err(store::Error::MaxProvidedKeys);
                    }
                    e.insert(record);
                    Ok(())
                }
            };
        }
        self.others.expire(now, SWEEP);
        if record.is_expired(now) {
            return Ok(());
        }
        record
            .addresses
            .retain(|a| !a.is_empty() && a.len() <= MAX_ADDRESS_BYTES);
        record.addresses.truncate(MAX_ADDRESSES);
        self.others.add(record, &self.config)
    }
}

impl RecordStore for ProviderStore {
    type RecordsIter<'a> = <MemoryStore as RecordStore>::RecordsIter<'a>;

    type ProvidedIter<'a> = iter::Map<
        hash_map::Values<'a, RecordKey, ProviderRecord>,
        fn(&'a ProviderRecord) -> Cow<'a, ProviderRecord>,
    >;

    fn get(&self, k: &RecordKey) -> Option<Cow<'_, Record>> {
        self.records.get(k)
    }

    fn put(&mut self, r: Record) -> store::Result<()> {
        self.records.put(r)
    }

    fn remove(&mut self, k: &RecordKey) {
        self.records.remove(k)
    }

    fn records(&self) -> Self::RecordsIter<'_> {
        self.records.records()
    }

    fn add_provider(&mut self, record: ProviderRecord) -> store::Result<()> {
        self.add_provider_at(record, Instant::now())
    }

    fn providers(&self, key: &RecordKey) -> Vec<ProviderRecord> {
        let own = self.own.get(key).cloned();
        let others = self.others.by_key.get(key).into_iter().flatten();
        own.into_iter()
            .chain(others.map(|s| s.record.clone()))
            .collect()
    }

    fn provided(&self) -> Self::ProvidedIter<'_> {
        self.own.values().map(Cow::Borrowed)
    }

    fn remove_provider(&mut self, k: &RecordKey, p: &PeerId) {
        if *p == self.local {
            self.own.remove(k);
        } else {
            self.others.remove(k, p);
        }
    }
}

/// When a record expires, and a sequence number making the slot unique.
type Slot = (Instant, u64);

/// Other peers' provider records.
#[derive(Default)]
struct Others {
    by_key: HashMap<RecordKey, Vec<Stored>>,
    /// Records in `by_key`.
    len: usize,
    /// Records in `by_key` per provider (a provider at zero is removed).
    per_provider: HashMap<PeerId, usize>,
    /// Every stored record that has an expiry, soonest first.
    expiry: BTreeMap<Slot, (RecordKey, PeerId)>,
    next_slot: u64,
}

struct Stored {
    record: ProviderRecord,
    slot: Option<Slot>,
}

impl Others {
    fn add(&mut self, record: ProviderRecord, config: &ProviderStoreConfig) -> store::Result<()> {
        let held_for_key = match self.by_key.get_mut(&record.key) {
            Some(list) => {
                if let Some(stored) = list
                    .iter_mut()
                    .find(|s| s.record.provider == record.provider)
                {
                    // A renewal: same place in the list, new expiry.
                    if let Some(old) = stored.slot.take() {
                        self.expiry.remove(&old);
                    }
                    stored.slot = schedule(&mut self.expiry, &mut self.next_slot, &record);
                    stored.record = record;
                    return Ok(());
                }
                list.len()
            }
            None => 0,
        };
        if held_for_key >= config.max_providers_per_key {
            // As `MemoryStore`: the providers already known for the key stay.
            return Ok(());
        }
        let of_provider = self
            .per_provider
            .get(&record.provider)
            .copied()
            .unwrap_or(0);
        if self.len >= config.max_peer_records || of_provider >= config.max_records_per_provider {
            return Err(store::Error::MaxProvidedKeys);
        }
        *self.per_provider.entry(record.provider).or_insert(0) += 1;
        self.len += 1;
        let slot = schedule(&mut self.expiry, &mut self.next_slot, &record);
        self.by_key
            .entry(record.key.clone())
            .or_default()
            .push(Stored { record, slot });
        Ok(())
    }

    fn remove(&mut self, key: &RecordKey, provider: &PeerId) {
        let hash_map::Entry::Occupied(mut e) = self.by_key.entry(key.clone()) else {
            return;
        };
        if let Some(i) = e.get().iter().position(|s| s.record.provider == *provider) {
            let stored = e.get_mut().remove(i);
            if let Some(slot) = stored.slot {
                self.expiry.remove(&slot);
            }
            self.len -= 1;
            if let hash_map::Entry::Occupied(mut n) = self.per_provider.entry(*provider) {
                *n.get_mut() -= 1;
                if *n.get() == 0 {
                    n.remove();
                }
            }
        }
        if e.get().is_empty() {
            e.remove();
        }
    }

    /// Drops up to `most` records expired at `now`.
    fn expire(&mut self, now: Instant, most: usize) {
        for _ in 0..most {
            let Some(entry) = self.expiry.first_entry() else {
                return;
            };
            // `ProviderRecord::is_expired`: expired once `now >= expires`.
            if entry.key().0 > now {
                return;
            }
            let (key, provider) = entry.remove();
            self.remove(&key, &provider);
        }
    }
}

/// Enters `record`'s expiry, if it has one, in `expiry`.
fn schedule(
    expiry: &mut BTreeMap<Slot, (RecordKey, PeerId)>,
    next: &mut u64,
    record: &ProviderRecord,
) -> Option<Slot> {
    let at = record.expires?;
    let slot = (at, *next);
    *next += 1;
    expiry.insert(slot, (record.key.clone(), record.provider));
    Some(slot)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use libp2p::Multiaddr;

    use super::*;

    fn peer(n: u32) -> PeerId {
        let mut seed = [7u8; 32];
        seed[..4].copy_from_slice(&n.to_be_bytes());
        libp2p::identity::Keypair::ed25519_from_bytes(seed)
            .expect("a 32-byte seed")
            .public()
            .to_peer_id()
    }

    fn key(space: &str, n: u32) -> RecordKey {
        RecordKey::new(&format!("{space}-{n}"))
    }

    /// A record as kad makes it for an ADD_PROVIDER from `provider`: 48 h to live.
    fn received(key: RecordKey, provider: PeerId) -> ProviderRecord {
        ProviderRecord {
            key,
            provider,
            expires: Some(Instant::now() + Duration::from_secs(48 * 3600)),
            addresses: vec!["/ip4/10.0.0.1/tcp/4001".parse().expect("an address")],
        }
    }

    /// A record as kad makes it in `start_providing`: no addresses, no expiry.
    fn own(key: RecordKey, local: PeerId) -> ProviderRecord {
        ProviderRecord::new(key, local, Vec::new())
    }

    fn small() -> ProviderStoreConfig {
        // Other peers' limits as small as `MemoryStore`'s defaults.
        ProviderStoreConfig {
            max_peer_records: 1024,
            max_records_per_provider: 1024,
            ..ProviderStoreConfig::default()
        }
    }

    #[test]
    fn memory_store_refuses_new_own_keys_past_1024() {
        // The defect this store fixes.
        let local = peer(0);
        let mut store = MemoryStore::new(local);
        for i in 0..1024 {
            store.add_provider(own(key("own", i), local)).expect("room");
        }
        assert!(matches!(
            store.add_provider(own(key("own", 1024), local)),
            Err(store::Error::MaxProvidedKeys)
        ));
    }

    #[test]
    fn provides_more_than_1024_own_keys() {
        let local = peer(0);
        let mut store = ProviderStore::new(local, ProviderStoreConfig::default());
        for i in 0..1100 {
            store
                .add_provider(own(key("own", i), local))
                .expect("own keys are limited only by max_provided_keys");
        }
        assert_eq!(store.provided_len(), 1100);
        assert_eq!(store.provided().count(), 1100);
        assert!(store.provided().all(|r| r.provider == local));
        // Providing again is an update, not a new key.
        store
            .add_provider(own(key("own", 0), local))
            .expect("update");
        assert_eq!(store.provided_len(), 1100);
    }

    #[test]
    fn own_keys_are_bounded_by_their_own_limit() {
        let local = peer(0);
        let config = ProviderStoreConfig {
            max_provided_keys: 3,
            ..ProviderStoreConfig::default()
        };
        let mut store = ProviderStore::new(local, config);
        for i in 0..3 {
            store.add_provider(own(key("own", i), local)).expect("room");
        }
        assert!(matches!(
            store.add_provider(own(key("own", 3), local)),
            Err(store::Error::MaxProvidedKeys)
        ));
        // Other peers' records are counted elsewhere.
        store
            .add_provider(received(key("theirs", 0), peer(1)))
            .expect("other peers' table has room");
    }

    #[test]
    fn a_flood_of_other_peers_records_does_not_stop_own_providing() {
        let local = peer(0);
        let mut store = ProviderStore::new(local, small());
        for i in 0..1100 {
            store.add_provider(own(key("own", i), local)).expect("own");
        }
        // 5 000 records for distinct keys from 50 peers: the first 1 024 fit, the rest
        // fail with the store's error.
        let flooders: Vec<PeerId> = (1..=50).map(peer).collect();
        let mut refused = 0;
        for i in 0..5000u32 {
            let from = flooders[(i % 50) as usize];
            match store.add_provider(received(key("flood", i), from)) {
                Ok(()) => {}
                Err(store::Error::MaxProvidedKeys) => refused += 1,
                Err(e) => panic!("unexpected error {e}"),
            }
        }
        assert_eq!(refused, 5000 - 1024);
        assert_eq!(store.peer_records_len(), 1024);
        // Our own records are all there, and a new one is accepted.
        assert_eq!(store.provided_len(), 1100);
        store
            .add_provider(own(key("own", 5000), local))
            .expect("a new own key after the flood");
        assert_eq!(store.provided_len(), 1101);
        let providers = store.providers(&key("own", 5000));
        assert_eq!(providers.len(), 1);
        assert_eq!(providers[0].provider, local);
        // Nor can flooders take a key this node provides away from it.
        for p in &flooders {
            let _ = store.add_provider(received(key("own", 5000), *p));
        }
        assert_eq!(store.providers(&key("own", 5000))[0].provider, local);
    }

    #[test]
    fn one_peer_takes_at_most_its_share() {
        let local = peer(0);
        let config = ProviderStoreConfig {
            max_peer_records: 100,
            max_records_per_provider: 10,
            ..ProviderStoreConfig::default()
        };
        let mut store = ProviderStore::new(local, config);
        let (flooder, honest) = (peer(1), peer(2));
        for i in 0..10 {
            store
                .add_provider(received(key("f", i), flooder))
                .expect("share");
        }
        assert!(matches!(
            store.add_provider(received(key("f", 10), flooder)),
            Err(store::Error::MaxProvidedKeys)
        ));
        // Renewing a record it holds is still fine.
        store
            .add_provider(received(key("f", 0), flooder))
            .expect("renewal");
        store
            .add_provider(received(key("h", 0), honest))
            .expect("another peer has room");
        assert_eq!(store.peer_records_len(), 11);
    }

    #[test]
    fn providers_lists_own_and_others_and_remove_works_for_both() {
        let local = peer(0);
        let mut store = ProviderStore::new(local, ProviderStoreConfig::default());
        let k = key("shared", 0);
        let (a, b) = (peer(1), peer(2));
        store.add_provider(received(k.clone(), a)).expect("a");
        store.add_provider(own(k.clone(), local)).expect("own");
        store.add_provider(received(k.clone(), b)).expect("b");
        let who: Vec<PeerId> = store.providers(&k).iter().map(|r| r.provider).collect();
        assert_eq!(who, vec![local, a, b], "own first, then others in order");

        store.remove_provider(&k, &a);
        let who: Vec<PeerId> = store.providers(&k).iter().map(|r| r.provider).collect();
        assert_eq!(who, vec![local, b]);
        assert_eq!(store.peer_records_len(), 1);

        store.remove_provider(&k, &local);
        let who: Vec<PeerId> = store.providers(&k).iter().map(|r| r.provider).collect();
        assert_eq!(who, vec![b]);
        assert_eq!(store.provided().count(), 0);

        store.remove_provider(&k, &b);
        assert!(store.providers(&k).is_empty());
        assert_eq!(store.peer_records_len(), 0);
        assert!(store.others.by_key.is_empty());
        assert!(store.others.per_provider.is_empty());
        assert!(store.others.expiry.is_empty());
        // Removing what is not there is a no-op.
        store.remove_provider(&k, &b);
        store.remove_provider(&k, &local);
    }

    #[test]
    fn providers_per_key_are_bounded_first_come_kept() {
        let local = peer(0);
        let config = ProviderStoreConfig {
            max_providers_per_key: 3,
            ..ProviderStoreConfig::default()
        };
        let mut store = ProviderStore::new(local, config);
        let k = key("k", 0);
        for n in 1..=5 {
            store
                .add_provider(received(k.clone(), peer(n)))
                .expect("ok");
        }
        store.add_provider(own(k.clone(), local)).expect("own");
        let who: Vec<PeerId> = store.providers(&k).iter().map(|r| r.provider).collect();
        assert_eq!(who, vec![local, peer(1), peer(2), peer(3)]);
    }

    #[test]
    fn expired_records_make_room_again() {
        let local = peer(0);
        let config = ProviderStoreConfig {
            max_peer_records: 2,
            ..ProviderStoreConfig::default()
        };
        let mut store = ProviderStore::new(local, config);
        let now = Instant::now();
        let soon = |k: RecordKey, p: PeerId, secs: u64| ProviderRecord {
            expires: Some(now + Duration::from_secs(secs)),
            ..received(k, p)
        };
        store
            .add_provider_at(soon(key("a", 0), peer(1), 10), now)
            .expect("room");
        store
            .add_provider_at(soon(key("a", 1), peer(1), 20), now)
            .expect("room");
        assert!(store
            .add_provider_at(soon(key("a", 2), peer(2), 30), now)
            .is_err());
        // The first one is renewed: it lives to 40 s.
        store
            .add_provider_at(soon(key("a", 0), peer(1), 40), now)
            .expect("renewal");
        // At 25 s only the second has expired.
        store
            .add_provider_at(
                soon(key("a", 2), peer(2), 60),
                now + Duration::from_secs(25),
            )
            .expect("room made by the expired record");
        let held: Vec<RecordKey> = [key("a", 0), key("a", 1), key("a", 2)]
            .into_iter()
            .filter(|k| !store.providers(k).is_empty())
            .collect();
        assert_eq!(held, vec![key("a", 0), key("a", 2)]);
        assert_eq!(store.peer_records_len(), 2);
        assert_eq!(store.others.expiry.len(), 2);
        // An already expired record is not stored.
        store
            .add_provider_at(soon(key("a", 3), peer(3), 1), now + Duration::from_secs(30))
            .expect("ignored");
        assert!(store.providers(&key("a", 3)).is_empty());
    }

    #[test]
    fn other_peers_addresses_are_trimmed() {
        let local = peer(0);
        let mut store = ProviderStore::new(local, ProviderStoreConfig::default());
        let mut record = received(key("k", 0), peer(1));
        let long: Multiaddr = format!("/dns4/{}/tcp/1", "a".repeat(200))
            .parse()
            .expect("an address");
        record.addresses = std::iter::once(long)
            .chain((0..20).map(|i| format!("/ip4/10.0.0.{i}/tcp/4001").parse().unwrap()))
            .collect();
        store.add_provider(record).expect("stored");
        let stored = store.providers(&key("k", 0));
        assert_eq!(stored[0].addresses.len(), MAX_ADDRESSES);
        assert!(stored[0]
            .addresses
            .iter()
            .all(|a| a.len() <= MAX_ADDRESS_BYTES));
    }

    #[test]
    fn regular_records_go_to_the_memory_store() {
        let local = peer(0);
        let mut store = ProviderStore::new(local, ProviderStoreConfig::default());
        let record = Record::new(key("r", 0), b"value".to_vec());
        store.put(record.clone()).expect("put");
        assert_eq!(store.get(&key("r", 0)).as_deref(), Some(&record));
        assert_eq!(store.records().count(), 1);
        store.remove(&key("r", 0));
        assert!(store.get(&key("r", 0)).is_none());
        // Provider records are not regular records.
        store.add_provider(own(key("p", 0), local)).expect("own");
        assert_eq!(store.records().count(), 0);
    }
}
