//! Penalties for peers that misbehave: a peer that sends a block whose bytes do not hash
//! to its CID is banned from our transfers for a while, and the block is fetched
//! elsewhere.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use libp2p::PeerId;

/// How long a peer that sent a corrupt block is shunned.
pub const BAN: Duration = Duration::from_secs(3600);

/// Penalties per peer.
pub struct PeerScores {
    peers: Mutex<HashMap<PeerId, Penalty>>,
    /// Bumped at every ban, so transfers in flight with that peer stop at once.
    bans: tokio::sync::watch::Sender<u64>,
}

impl Default for PeerScores {
    fn default() -> Self {
        Self {
            peers: Mutex::default(),
            bans: tokio::sync::watch::Sender::new(0),
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Penalty {
    corrupt_blocks: u32,
    banned_until: Instant,
}

impl PeerScores {
    /// Records that `peer` sent a corrupt block and bans it for an hour.
    pub fn corrupt_block(&self, peer: PeerId) {
        let mut peers = crate::lock(&self.peers);
        let penalty = peers.entry(peer).or_insert(Penalty {
            corrupt_blocks: 0,
            banned_until: Instant::now(),
        });
        penalty.corrupt_blocks += 1;
        penalty.banned_until = Instant::now() + BAN;
        self.bans.send_modify(|n| *n += 1);
        tracing::warn!(%peer, corrupt_blocks = penalty.corrupt_blocks, "peer sent a corrupt block: banned for an hour");
    }

    /// Whether `peer` is currently banned.
    pub fn is_banned(&self, peer: &PeerId) -> bool {
        let peers = crate::lock(&self.peers);
        peers
            .get(peer)
            .is_some_and(|p| p.banned_until > Instant::now())
    }

    /// Resolves once `peer` is banned (never, if it stays in good standing).
    pub async fn until_banned(&self, peer: PeerId) {
        let mut bans = self.bans.subscribe();
        while !self.is_banned(&peer) {
            if bans.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }

    /// Corrupt blocks `peer` has sent.
    pub fn corrupt_blocks(&self, peer: &PeerId) -> u32 {
        let peers = crate::lock(&self.peers);
        peers.get(peer).map_or(0, |p| p.corrupt_blocks)
    }
}
