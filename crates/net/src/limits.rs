//! What one peer, or all of them together, may make this node do: concurrent requests
//! of a kind ([`Slots`]), bytes served per second ([`ServeRate`]), and memory held by
//! frames still arriving ([`FrameBudget`]). Every table here is bounded however many
//! peer ids a stranger makes up.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use libp2p::PeerId;
use medmesh_core::bounded::BoundedMap;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::admission::{IpKey, SharedSlotBook};
use crate::NetConfig;

/// Everything that bounds what peers may make this node serve, built once from the
/// `[net]` settings and shared by bitswap and the fast path.
pub(crate) struct ServeLimits {
    /// Bytes per second per peer.
    pub(crate) rate: ServeRate,
    /// Fast-path requests in progress.
    pub(crate) fast_path: Arc<Slots>,
    /// Fast-path requests in progress per remote address: fresh peer ids from one
    /// address share one part of the total.
    pub(crate) fast_path_by_address: Arc<Slots<IpKey>>,
    /// Inbound bitswap streams open.
    pub(crate) bitswap_streams: Arc<Slots>,
    /// Memory of inbound frames in flight.
    pub(crate) frames: FrameBudget,
    /// How long a frame may take to arrive once begun.
    pub(crate) frame_timeout: Duration,
    /// Connections: peers served are active, the last an unknown one would lose.
    pub(crate) slots: Arc<SharedSlotBook>,
}

impl ServeLimits {
    pub(crate) fn new(config: &NetConfig, slots: Arc<SharedSlotBook>) -> Arc<Self> {
        Arc::new(Self {
            slots,
            rate: ServeRate::new(
                config.serve_bytes_per_peer_per_sec,
                config.serve_bytes_per_peer_per_sec / 4,
            ),
            fast_path: Slots::new(
                "fast-path requests",
                config.max_fast_path_requests_per_peer,
                config.max_fast_path_requests,
            ),
            fast_path_by_address: Slots::keyed(
                "fast-path requests",
                "your address",
                config.max_fast_path_requests_per_ip,
                config.max_fast_path_requests,
            ),
            bitswap_streams: Slots::new(
                "bitswap streams",
                config.max_bitswap_streams_per_peer,
                config.max_bitswap_streams,
            ),
            frames: FrameBudget::new(config.frame_budget_bytes),
            frame_timeout: config.frame_timeout(),
        })
    }

    /// Forgets what was tracked for `peer` (it disconnected).
    pub(crate) fn forget(&self, peer: &PeerId) {
        self.rate.forget(peer);
    }
}

/// Requests of one kind being served (replication requests, fast-path requests,
/// inbound bitswap streams), bounded per peer and in total.
/// Keyed by peer by default; by address ([`IpKey`]) for a per-address share.
pub(crate) struct Slots<K = PeerId> {
    what: &'static str,
    /// Who one key is, in refusals: "your node", "your address".
    whose: &'static str,
    per_peer: usize,
    total: usize,
    busy: Mutex<Busy<K>>,
    freed: tokio::sync::Notify,
}

struct Busy<K> {
    total: usize,
    per_peer: HashMap<K, usize>,
    /// Requests waiting for a place, per key (see [`Slots::take_within`]).
    waiting: HashMap<K, usize>,
}

impl<K> Default for Busy<K> {
    fn default() -> Self {
        Self {
            total: 0,
            per_peer: HashMap::new(),
            waiting: HashMap::new(),
        }
    }
}

/// Requests one peer may have waiting for a place, per place it may hold.
const WAITING_PER_PLACE: usize = 4;

/// One request in progress; gives its place back when dropped, however the request
/// ends (served, failed, timed out, stream gone, task aborted).
pub(crate) struct Slot<K: Key = PeerId> {
    slots: Arc<Slots<K>>,
    peer: K,
}

/// What [`Slots`] may be keyed by.
pub(crate) trait Key: std::hash::Hash + Eq + Copy + Send + Sync + 'static {}
impl<K: std::hash::Hash + Eq + Copy + Send + Sync + 'static> Key for K {}

impl Slots<PeerId> {
    /// At most `per_peer` `what` from one peer and `total` from all at once.
    pub(crate) fn new(what: &'static str, per_peer: usize, total: usize) -> Arc<Self> {
        Slots::keyed(what, "your node", per_peer, total)
    }
}

impl<K: Key> Slots<K> {
    /// At most `per_key` `what` for one key (`whose`, in refusals) and `total` in all.
    pub(crate) fn keyed(
        what: &'static str,
        whose: &'static str,
        per_peer: usize,
        total: usize,
    ) -> Arc<Self> {
        Arc::new(Self {
            what,
            whose,
            per_peer,
            total,
            busy: Mutex::new(Busy::default()),
            freed: tokio::sync::Notify::new(),
        })
    }

    /// A place for one more request from `peer`, waiting up to `wait` for one to free
    /// (an honest node fetching several records at once queues rather than fails); a
    /// peer may have at most 4 requests per place waiting, beyond which it is refused
    /// at once, so waiting stays bounded too.
    pub(crate) async fn take_within(
        self: &Arc<Self>,
        peer: K,
        wait: Duration,
    ) -> Result<Slot<K>, String> {
        let deadline = tokio::time::Instant::now() + wait;
        let mut refusal = match self.try_take(peer) {
            Ok(slot) => return Ok(slot),
            Err(refusal) => refusal,
        };
        {
            let mut busy = crate::lock(&self.busy);
            let waiting = busy.waiting.entry(peer).or_insert(0);
            if *waiting >= self.per_peer * WAITING_PER_PLACE {
                return Err(refusal);
            }
            *waiting += 1;
        }
        let _waiting = Waiting { slots: self, peer };
        loop {
            let freed = self.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            match self.try_take(peer) {
                Ok(slot) => return Ok(slot),
                Err(again) => refusal = again,
            }
            if tokio::time::timeout_at(deadline, freed).await.is_err() {
                return Err(refusal);
            }
        }
    }

    /// A place for one more request from `peer`, or the refusal to send it.
    pub(crate) fn try_take(self: &Arc<Self>, peer: K) -> Result<Slot<K>, String> {
        let mut busy = crate::lock(&self.busy);
        let from_peer = busy.per_peer.get(&peer).copied().unwrap_or(0);
        if from_peer >= self.per_peer || busy.total >= self.total {
            return Err(format!(
                "too many {} in progress: {from_peer} from {} (limit {}), {} in total \
                 (limit {}); retry later",
                self.what, self.whose, self.per_peer, busy.total, self.total
            ));
        }
        // The map holds only peers with a request in progress (the slot removes its
        // peer at zero), so it is bounded by `total`.
        *busy.per_peer.entry(peer).or_insert(0) += 1;
        busy.total += 1;
        Ok(Slot {
            slots: self.clone(),
            peer,
        })
    }

    /// Requests in progress from all peers.
    pub(crate) fn total_in_progress(&self) -> usize {
        crate::lock(&self.busy).total
    }

    /// Requests in progress: from `peer`, and in total.
    #[cfg(test)]
    pub(crate) fn in_progress(&self, peer: &K) -> (usize, usize) {
        let busy = crate::lock(&self.busy);
        (busy.per_peer.get(peer).copied().unwrap_or(0), busy.total)
    }
}

impl<K: Key> Drop for Slot<K> {
    fn drop(&mut self) {
        let mut busy = crate::lock(&self.slots.busy);
        busy.total = busy.total.saturating_sub(1);
        if let Some(n) = busy.per_peer.get_mut(&self.peer) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                busy.per_peer.remove(&self.peer);
            }
        }
        drop(busy);
        self.slots.freed.notify_waiters();
    }
}

/// A request counted among its peer's waiting ones until dropped.
struct Waiting<'a, K: Key> {
    slots: &'a Slots<K>,
    peer: K,
}

impl<K: Key> Drop for Waiting<'_, K> {
    fn drop(&mut self) {
        let mut busy = crate::lock(&self.slots.busy);
        if let Some(n) = busy.waiting.get_mut(&self.peer) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                busy.waiting.remove(&self.peer);
            }
        }
    }
}

/// Peers whose serving rate is tracked at once; older entries are forgotten (a peer
/// forgotten starts again with a full bucket, which costs at most one burst).
const RATE_PEERS: usize = 4096;

/// Bytes served to each peer per second (a token bucket per peer, shared by bitswap
/// and the fast path): a peer asking faster is slowed down, not refused, so an honest
/// fetch still completes while no peer can take the node's disk and uplink alone.
pub(crate) struct ServeRate {
    bytes_per_sec: f64,
    burst: f64,
    buckets: Mutex<BoundedMap<PeerId, Bucket>>,
}

#[derive(Clone, Copy)]
struct Bucket {
    tokens: f64,
    updated: Instant,
}

impl ServeRate {
    /// `bytes_per_sec` sustained per peer, with bursts of `burst` bytes.
    pub(crate) fn new(bytes_per_sec: u64, burst: u64) -> Self {
        Self {
            bytes_per_sec: bytes_per_sec.max(1) as f64,
            burst: burst.max(1) as f64,
            buckets: Mutex::new(BoundedMap::new(RATE_PEERS)),
        }
    }

    /// Takes `bytes` from `peer`'s bucket, waiting until they are there.
    pub(crate) async fn take(&self, peer: PeerId, bytes: usize) {
        let wait = self.reserve(peer, bytes as f64, Instant::now());
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }

    /// Takes `bytes` now (the bucket may go negative) and returns how long the caller
    /// must wait for the bucket to be back at zero.
    fn reserve(&self, peer: PeerId, bytes: f64, now: Instant) -> Duration {
        let mut buckets = crate::lock(&self.buckets);
        let bucket = match buckets.get_mut(&peer) {
            Some(b) => b,
            None => {
                buckets.insert(
                    peer,
                    Bucket {
                        tokens: self.burst,
                        updated: now,
                    },
                );
                buckets.get_mut(&peer).expect("just inserted")
            }
        };
        let elapsed = now.saturating_duration_since(bucket.updated).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * self.bytes_per_sec).min(self.burst);
        bucket.updated = now;
        bucket.tokens -= bytes;
        if bucket.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-bucket.tokens / self.bytes_per_sec)
        }
    }

    /// Forgets `peer` (it disconnected).
    pub(crate) fn forget(&self, peer: &PeerId) {
        crate::lock(&self.buckets).remove(peer);
    }
}

/// Replica bytes each peer made this node take on in the current day, and the bounds
/// a new replica must fit: per request, per peer per day, and free disk.
pub(crate) struct ReplicaBudget {
    max_request: u64,
    per_peer_per_day: u64,
    min_free: u64,
    taken: Mutex<BoundedMap<PeerId, (Instant, u64)>>,
}

/// The window of [`ReplicaBudget`]'s per-peer count.
const DAY: Duration = Duration::from_secs(24 * 3600);

impl ReplicaBudget {
    pub(crate) fn new(config: &NetConfig) -> Self {
        Self {
            max_request: config.max_replica_bytes,
            per_peer_per_day: config.max_replica_bytes_per_peer_per_day,
            min_free: config.min_free_disk_bytes,
            taken: Mutex::new(BoundedMap::new(RATE_PEERS)),
        }
    }

    /// Takes `bytes` for a replica asked by `peer`, with `free` bytes of disk left
    /// (when known), or says which bound it would break.
    pub(crate) fn take(
        &self,
        peer: PeerId,
        bytes: u64,
        free: Option<u64>,
        now: Instant,
    ) -> Result<(), String> {
        if bytes > self.max_request {
            return Err(format!(
                "the record is {bytes} bytes; this node holds replicas of at most {} \
                 (max_replica_bytes)",
                self.max_request
            ));
        }
        if let Some(free) = free {
            if free.saturating_sub(bytes) < self.min_free {
                // The free space itself is not told: it is nobody else's business.
                return Err(format!(
                    "this node has no room for {bytes} more bytes of replicas \
                     (it keeps min_free_disk_bytes free)"
                ));
            }
        }
        let mut taken = crate::lock(&self.taken);
        let (since, used) = match taken.get_mut(&peer) {
            Some(entry) if now.saturating_duration_since(entry.0) < DAY => *entry,
            _ => (now, 0),
        };
        if used.saturating_add(bytes) > self.per_peer_per_day {
            return Err(format!(
                "your node asked for {used} bytes of replicas today; {} a day at most \
                 (max_replica_bytes_per_peer_per_day)",
                self.per_peer_per_day
            ));
        }
        taken.insert(peer, (since, used + bytes));
        Ok(())
    }
}

/// Memory held by inbound frames still being read, for all peers together: a large
/// frame takes its size from the budget before its body is read, so peers that
/// announce big frames and send them slowly (or never finish) cannot hold more than
/// the budget between them.
#[derive(Clone)]
pub(crate) struct FrameBudget {
    kib: Arc<Semaphore>,
    total_kib: u32,
    wait: Duration,
}

/// How long a frame waits for room in the budget before its stream is dropped.
const BUDGET_WAIT: Duration = Duration::from_secs(5);

impl FrameBudget {
    /// A budget of `bytes`.
    pub(crate) fn new(bytes: usize) -> Self {
        let total_kib = u32::try_from(bytes / 1024).unwrap_or(u32::MAX).max(1);
        Self {
            kib: Arc::new(Semaphore::new(total_kib as usize)),
            total_kib,
            wait: BUDGET_WAIT,
        }
    }

    /// Room for a frame of `len` bytes, held until the permit is dropped; `None` when
    /// the budget stays full for a while.
    pub(crate) async fn reserve(&self, len: usize) -> Option<OwnedSemaphorePermit> {
        let kib = u32::try_from(len.div_ceil(1024))
            .unwrap_or(u32::MAX)
            .clamp(1, self.total_kib);
        tokio::time::timeout(self.wait, self.kib.clone().acquire_many_owned(kib))
            .await
            .ok()?
            .ok()
    }

    /// KiB free now.
    pub(crate) fn available_kib(&self) -> usize {
        self.kib.available_permits()
    }

    /// Bytes free now.
    pub(crate) fn available_bytes(&self) -> usize {
        self.available_kib() * 1024
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn peer(n: u8) -> PeerId {
        libp2p::identity::Keypair::ed25519_from_bytes([n; 32])
            .expect("a 32-byte seed")
            .public()
            .to_peer_id()
    }

    #[test]
    fn slots_bound_each_peer_and_the_total_and_free_on_drop() {
        let slots = Slots::new("replication requests", 1, 2);
        let (a, b, c) = (peer(1), peer(2), peer(3));
        let first = slots.try_take(a).expect("a's first request");
        let refused = slots
            .try_take(a)
            .err()
            .expect("a's second request is refused");
        assert_eq!(
            refused,
            "too many replication requests in progress: 1 from your node (limit 1), \
             1 in total (limit 2); retry later"
        );
        let second = slots.try_take(b).expect("b's first request");
        let refused = slots.try_take(c).err().expect("the total is reached");
        assert!(
            refused.contains("0 from your node (limit 1), 2 in total (limit 2)"),
            "{refused}"
        );
        drop(first);
        assert_eq!(slots.in_progress(&a), (0, 1));
        let again = slots.try_take(a).expect("a's place is free again");
        drop((again, second));
        assert_eq!(slots.in_progress(&b), (0, 0));
        assert!(crate::lock(&slots.busy).per_peer.is_empty());
    }

    #[tokio::test]
    async fn requests_wait_for_a_place_within_bounds() {
        let slots = Slots::new("fast-path requests", 1, 4);
        let a = peer(1);
        let held = slots.try_take(a).unwrap();
        // One waits and gets the place when it frees.
        let waiter = {
            let slots = slots.clone();
            tokio::spawn(async move { slots.take_within(a, Duration::from_secs(5)).await })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        drop(held);
        let got = waiter.await.unwrap().expect("the freed place");
        // Four may wait per place; a fifth is refused at once.
        let waiters: Vec<_> = (0..4)
            .map(|_| {
                let slots = slots.clone();
                tokio::spawn(async move { slots.take_within(a, Duration::from_secs(5)).await })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(50)).await;
        let started = Instant::now();
        assert!(slots.take_within(a, Duration::from_secs(5)).await.is_err());
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "refused at once"
        );
        drop(got);
        let mut served = 0;
        for w in waiters {
            if let Ok(Ok(slot)) = tokio::time::timeout(Duration::from_secs(6), w).await {
                served += 1;
                drop(slot);
            }
        }
        assert_eq!(served, 4, "each waiter got the place in turn");
        assert!(crate::lock(&slots.busy).waiting.is_empty());
    }

    #[test]
    fn the_serving_rate_allows_a_burst_then_the_sustained_rate_per_peer() {
        let rate = ServeRate::new(1000, 4000);
        let (a, b) = (peer(1), peer(2));
        let start = Instant::now();
        assert_eq!(rate.reserve(a, 4000.0, start), Duration::ZERO, "the burst");
        // 500 bytes beyond the burst: half a second at 1000 B/s.
        assert_eq!(rate.reserve(a, 500.0, start), Duration::from_millis(500));
        // Another peer has its own bucket.
        assert_eq!(rate.reserve(b, 4000.0, start), Duration::ZERO);
        // After 2 s, a has 2000 − 500 = 1500 bytes back.
        let later = start + Duration::from_secs(2);
        assert_eq!(rate.reserve(a, 1500.0, later), Duration::ZERO);
        assert!(rate.reserve(a, 1.0, later) > Duration::ZERO);
        rate.forget(&a);
        assert_eq!(rate.reserve(a, 4000.0, later), Duration::ZERO, "forgotten");
    }

    #[test]
    fn replicas_are_bounded_per_request_per_peer_per_day_and_by_free_disk() {
        let budget = ReplicaBudget::new(&NetConfig {
            max_replica_bytes: 100,
            max_replica_bytes_per_peer_per_day: 250,
            min_free_disk_bytes: 1000,
            ..NetConfig::default()
        });
        let (a, b) = (peer(1), peer(2));
        let now = Instant::now();
        let too_big = budget.take(a, 101, None, now).unwrap_err();
        assert!(too_big.contains("max_replica_bytes"), "{too_big}");
        let no_room = budget.take(a, 50, Some(1040), now).unwrap_err();
        assert!(no_room.contains("min_free_disk_bytes"), "{no_room}");
        assert!(
            !no_room.contains("1040"),
            "the free space is not told: {no_room}"
        );
        budget.take(a, 100, Some(10_000), now).unwrap();
        budget.take(a, 100, None, now).unwrap();
        let quota = budget.take(a, 100, None, now).unwrap_err();
        assert!(quota.contains("asked for 200 bytes"), "{quota}");
        budget
            .take(b, 100, None, now)
            .expect("another peer has its own quota");
        budget
            .take(a, 100, None, now + DAY)
            .expect("a new day, a new quota");
    }

    #[tokio::test]
    async fn the_frame_budget_bounds_memory_held_by_frames_in_flight() {
        let mut budget = FrameBudget::new(8 * 1024);
        budget.wait = Duration::from_millis(50);
        let big = budget.reserve(6 * 1024).await.expect("room for 6 KiB");
        assert_eq!(budget.available_kib(), 2);
        let small = budget.reserve(100).await.expect("1 KiB still fits");
        assert!(
            budget.reserve(4 * 1024).await.is_none(),
            "4 KiB do not fit while 7 are held"
        );
        drop((big, small));
        assert_eq!(budget.available_kib(), 8);
        // A frame larger than the whole budget takes all of it, rather than never.
        let all = budget
            .reserve(1 << 20)
            .await
            .expect("clamped to the budget");
        assert_eq!(budget.available_kib(), 0);
        drop(all);
    }
}
