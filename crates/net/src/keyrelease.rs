//! The key-release protocol, `/medmesh/key/1.0.0`: how a grantee's node asks a record
//! owner's node for a challenge, then for the record's data key, over libp2p (the same
//! request as `POST /v1/access/challenge` and `POST /v1/records/{id}/key`).
//!
//! One request per stream: a JSON [`KeyCall`] frame, answered by one JSON
//! [`KeyAnswer`] frame. The network only carries them: what is released, and to whom,
//! is decided by the [`KeyHandler`] the service sets (`Network::serve_keys`), which
//! runs the same releaser and audit as HTTP. Requests are bounded per peer and in total,
//! and a peer that stays silent is dropped after the idle timeout.

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::StreamExt;
use libp2p::{PeerId, StreamProtocol};
use serde::{Deserialize, Serialize};

use crate::limits::Slots;
use crate::wire::{open_stream, read_json, within_idle, write_json};
use crate::{NetError, Network};

/// The protocol id.
pub const PROTOCOL: StreamProtocol = StreamProtocol::new("/medmesh/key/1.0.0");

/// Key requests one peer may have in flight.
const PER_PEER: usize = 4;
/// Key requests from all peers together.
const TOTAL: usize = 64;
/// How long the owner may take to answer (a release syncs the consent cache and
/// unwraps a post-quantum key).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(60);
/// Key calls answered per second from all peers together (bursts of twice that). It
/// bounds the challenges peers can make this node issue: at this rate, the challenges of
/// five minutes (their lifetime) fit in the releaser's table, so no flood of fresh peer
/// ids can push an honest grantee's challenge out before it is used.
const CALLS_PER_SEC: f64 = 100.0;

/// What a grantee's node asks the owner's node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum KeyCall {
    /// A fresh single-use challenge for the grantee to sign.
    Challenge,
    /// The key of `record`, wrapped for the grantee's certificate.
    Release {
        /// The record id.
        record: String,
        /// The grantee's address (`0x…`).
        grantee: String,
        /// DUO purpose term number.
        purpose: u32,
        /// The grantee's certificate, ASCII-armored.
        certificate: String,
        /// A challenge this owner issued.
        challenge: String,
        /// The grantee's EIP-191 signature of the key-request message, hex.
        signature: String,
    },
}

/// The owner node's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum KeyAnswer {
    /// A challenge.
    Challenge {
        /// The challenge.
        challenge: String,
    },
    /// The key, wrapped for the grantee.
    Released {
        /// The OpenPGP message wrapping the data key, hex.
        key_wrap: String,
        /// Fingerprint of the certificate it is wrapped for.
        recipient: String,
        /// `grant` or `emergency`.
        access: String,
        /// The grant or emergency id.
        access_id: String,
    },
    /// Refused, with a stable code and the message the owner gives callers.
    Refused {
        /// A stable code (`not-allowed`, `bad-challenge`, `not-grantee`, …).
        code: String,
        /// What the owner says.
        message: String,
    },
}

/// Answers key calls from peers (the service implements it: the network carries the
/// calls, the service decides).
pub trait KeyHandler: Send + Sync + 'static {
    /// The answer to `call` from `peer`.
    fn answer(&self, peer: PeerId, call: KeyCall) -> BoxFuture<'static, KeyAnswer>;
}

pub(crate) fn serve(network: &Network) -> Result<(), NetError> {
    let mut incoming = network.accept(PROTOCOL)?;
    let network = network.clone();
    let slots = Slots::new("key requests", PER_PEER, TOTAL);
    let rate = Arc::new(CallRate::new(CALLS_PER_SEC));
    tokio::spawn(async move {
        while let Some((peer, mut stream)) = incoming.next().await {
            let (network, slots, rate) = (network.clone(), slots.clone(), rate.clone());
            tokio::spawn(async move {
                let answer = match slots.try_take(peer) {
                    Ok(_slot) if rate.take() => network.answer_key_call(peer, &mut stream).await,
                    Ok(_slot) => refused(
                        "busy",
                        format!("more than {CALLS_PER_SEC} key calls a second; retry shortly"),
                    ),
                    Err(full) => refused("busy", full),
                };
                if let Some(answer) = answer {
                    let _ = write_json(&mut stream, &answer).await;
                }
                let _ = futures::AsyncWriteExt::close(&mut stream).await;
            });
        }
    });
    Ok(())
}

/// A token bucket of calls: `per_sec` a second, bursts of twice that.
struct CallRate {
    per_sec: f64,
    state: std::sync::Mutex<(f64, std::time::Instant)>,
}

impl CallRate {
    fn new(per_sec: f64) -> Self {
        Self {
            per_sec,
            state: std::sync::Mutex::new((2.0 * per_sec, std::time::Instant::now())),
        }
    }

    /// Takes one call's token; `false` when none is left.
    fn take(&self) -> bool {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let (tokens, last) = &mut *state;
        let now = std::time::Instant::now();
        *tokens = (*tokens + now.duration_since(*last).as_secs_f64() * self.per_sec)
            .min(2.0 * self.per_sec);
        *last = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

fn refused(code: &str, message: impl Into<String>) -> Option<KeyAnswer> {
    Some(KeyAnswer::Refused {
        code: code.into(),
        message: message.into(),
    })
}

impl Network {
    /// Sets what answers peers' key calls. Until it is set, calls are refused as
    /// unavailable. Set once; a later call keeps the first and returns `false`.
    pub fn serve_keys(&self, handler: Arc<dyn KeyHandler>) -> bool {
        self.inner.key_handler.set(handler).is_ok()
    }

    /// Reads one call and answers it (`None`: the peer sent nothing readable and
    /// hung up, nothing to answer).
    async fn answer_key_call(
        &self,
        peer: PeerId,
        stream: &mut libp2p::Stream,
    ) -> Option<KeyAnswer> {
        let call = match within_idle(read_json::<_, KeyCall>(stream)).await {
            Ok(call) => call,
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return None,
            Err(e) => return refused("bad-request", format!("unreadable key call: {e}")),
        };
        let Some(handler) = self.inner.key_handler.get() else {
            return refused(
                "unavailable",
                "this node releases no keys (it runs without a chain)",
            );
        };
        match tokio::time::timeout(ANSWER_TIMEOUT, handler.answer(peer, call)).await {
            Ok(answer) => Some(answer),
            Err(_) => refused(
                "timeout",
                format!("no answer within {} s", ANSWER_TIMEOUT.as_secs()),
            ),
        }
    }

    /// Sends `call` to `peer` (dialing it if needed through what the node knows of
    /// it) and returns its answer.
    pub async fn call_keys(&self, peer: PeerId, call: &KeyCall) -> Result<KeyAnswer, NetError> {
        let failed = |reason: &str, source: std::io::Error| NetError::Peer {
            peer,
            reason: reason.to_string(),
            source: Some(source),
        };
        let mut stream = open_stream(&mut self.inner.control.clone(), peer, PROTOCOL)
            .await
            .map_err(|e| NetError::Peer {
                peer,
                reason: format!("cannot open a key-release stream: {e}"),
                source: None,
            })?;
        write_json(&mut stream, call)
            .await
            .map_err(|e| failed("sending the key call", e))?;
        tokio::time::timeout(ANSWER_TIMEOUT, read_json::<_, KeyAnswer>(&mut stream))
            .await
            .map_err(|_| NetError::Peer {
                peer,
                reason: format!(
                    "no answer to the key call within {} s",
                    ANSWER_TIMEOUT.as_secs()
                ),
                source: None,
            })?
            .map_err(|e| failed("reading the answer to the key call", e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_call_rate_allows_a_burst_then_refuses_until_it_refills() {
        let rate = CallRate::new(10.0);
        let allowed = (0..100).filter(|_| rate.take()).count();
        assert_eq!(allowed, 20, "a burst of twice the rate");
        std::thread::sleep(Duration::from_millis(250));
        let refilled = (0..100).filter(|_| rate.take()).count();
        assert!(
            (2..=4).contains(&refilled),
            "{refilled} after a quarter second"
        );
    }
}
