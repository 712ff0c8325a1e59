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

use crate::NetConfig;

/// Everything that bounds what peers may make this node serve, built once from the
/// `[net]` settings and shared by bitswap and the fast path.
pub(crate) struct ServeLimits {
    /// Bytes per second per peer.
    pub(crate) rate: ServeRate,
    /// Fast-path requests in progress.
    pub(crate) fast_path: Arc<Slots>,
    /// Inbound bitswap streams open.
    pub(crate) bitswap_streams: Arc<Slots>,
    /// Memory of inbound frames in flight.
    pub(crate) frames: FrameBudget,
    /// How long a frame may take to arrive once begun.
    pub(crate) frame_timeout: Duration,
}

impl ServeLimits {
    pub(crate) fn new(config: &NetConfig) -> Arc<Self> {
        Arc::new(Self {
            rate: ServeRate::new(
                config.serve_bytes_per_peer_per_sec,
                config.serve_bytes_per_peer_per_sec / 4,
            ),
            fast_path: Slots::new(
                "fast-path requests",
                config.max_fast_path_requests_per_peer,
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
pub(crate) struct Slots {
    what: &'static str,
    per_peer: usize,
    total: usize,
    busy: Mutex<Busy>,
}

#[derive(Default)]
struct Busy {
    total: usize,
    per_peer: HashMap<PeerId, usize>,
}

/// One request in progress; gives its place back when dropped, however the request
/// ends (served, failed, timed out, stream gone, task aborted).
pub(crate) struct Slot {
    slots: Arc<Slots>,
    peer: PeerId,
}

impl Slots {
    /// At most `per_peer` `what` from one peer and `total` from all at once.
    pub(crate) fn new(what: &'static str, per_peer: usize, total: usize) -> Arc<Self> {
        Arc::new(Self {
            what,
            per_peer,
            total,
            busy: Mutex::new(Busy::default()),
        })
    }

    /// A place for one more request from `peer`, or the refusal to send it.
    pub(crate) fn try_take(self: &Arc<Self>, peer: PeerId) -> Result<Slot, String> {
        let mut busy = crate::lock(&self.busy);
        let from_peer = busy.per_peer.get(&peer).copied().unwrap_or(0);
        if from_peer >= self.per_peer || busy.total >= self.total {
            return Err(format!(
                "too many {} in progress: {from_peer} from your node (limit {}), {} in total \
                 (limit {}); retry later",
                self.what, self.per_peer, busy.total, self.total
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
    pub(crate) fn in_progress(&self, peer: &PeerId) -> (usize, usize) {
        let busy = crate::lock(&self.busy);
        (busy.per_peer.get(peer).copied().unwrap_or(0), busy.total)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut busy = crate::lock(&self.slots.busy);
        busy.total = busy.total.saturating_sub(1);
        if let Some(n) = busy.per_peer.get_mut(&self.peer) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                busy.per_peer.remove(&self.peer);
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
