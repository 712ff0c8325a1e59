//! Gossip is checked before it is passed on.
//!
//! With `validate_messages` set, gossipsub holds each message it receives until the node
//! gives its verdict (`Behaviour::report_message_validation_result`):
//!
//! - Accept: forwarded to the mesh and delivered here ([`crate::NetEvent::Gossip`]);
//! - Reject: dropped, and the P₄ penalty goes to the peer that sent it (and to any peer
//!   that sends the same message again). Used when the content is wrong;
//! - Ignore: dropped with no penalty. Used when only the sending rate is wrong.
//!
//! [`validate`] judges the content per topic: a size cap, the schema, and for presence
//! that the peer named is the message's author (signed, in strict mode), so nobody
//! can announce presence for a victim's PeerId. [`RateLimiter`] bounds the messages
//! taken from each peer that forwards them. [`peer_score`] sets scoring so that a peer
//! whose messages get rejected is graylisted (its RPCs are dropped unread).
//!
//! Rate-limited messages are ignored, not rejected. A Reject marks the message id
//! invalid in gossipsub's delivery records, so every honest peer that later forwards
//! the same (well-formed) message is penalised too. An honest relay that sends a burst
//! of other peers' messages would also be graylisted. A peer flooding well-formed
//! messages gets nothing through beyond its rate, and nothing forwards its surplus.

use std::collections::HashSet;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::{Duration, Instant};

use libp2p::gossipsub::{
    self, score_parameter_decay, IdentTopic, MessageAcceptance, PeerScoreParams,
    PeerScoreThresholds, TopicScoreParams,
};
use libp2p::{identity, Multiaddr, PeerId};
use medmesh_core::bounded::BoundedMap;
use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::Deserialize;

use crate::{DATASETS_TOPIC, PRESENCE_TOPIC};

/// Largest presence payload, in bytes.
pub(crate) const PRESENCE_MAX_BYTES: usize = 8 * 1024;
/// Largest dataset announcement, in bytes.
pub(crate) const DATASETS_MAX_BYTES: usize = 16 * 1024;
/// Most addresses in a presence message.
pub(crate) const MAX_PRESENCE_ADDRESSES: usize = 64;
/// Longest address in a presence message, in characters.
pub(crate) const MAX_ADDRESS_CHARS: usize = 256;
/// What gossipsub adds around a payload (author, sequence number, topic, key,
/// signature) when it checks a message's size per topic.
const ENVELOPE_BYTES: usize = 1024;
/// Peers whose rate is tracked at once; older entries are forgotten (a peer forgotten
/// starts again with a full bucket, which costs at most one burst).
const RATE_PEERS: usize = 4096;

/// Why a message is not accepted, and what gossipsub is told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Refusal {
    /// Reject (content at fault: the sender is penalised) or Ignore.
    pub(crate) acceptance: MessageAcceptance,
    /// What is wrong, for the log.
    pub(crate) reason: &'static str,
}

impl Refusal {
    fn reject(reason: &'static str) -> Self {
        Self {
            acceptance: MessageAcceptance::Reject,
            reason,
        }
    }

    fn ignore(reason: &'static str) -> Self {
        Self {
            acceptance: MessageAcceptance::Ignore,
            reason,
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.reason)
    }
}

/// The verdict on a message on `topic` by `source` (its author, as gossipsub verified
/// it; the peer that forwarded it does not matter for its content): `Ok` to accept,
/// else what to tell gossipsub and why. Pure: no state, no clock.
pub(crate) fn validate(topic: &str, source: Option<&PeerId>, data: &[u8]) -> Result<(), Refusal> {
    let limit = match topic {
        PRESENCE_TOPIC => PRESENCE_MAX_BYTES,
        DATASETS_TOPIC => DATASETS_MAX_BYTES,
        // Gossipsub only hands over topics this node subscribed to; another one is not
        // the sender's fault.
        _ => return Err(Refusal::ignore("a topic this node does not follow")),
    };
    // Strict mode drops unsigned messages before they get here; without an author
    // nothing can be checked.
    let Some(source) = source else {
        return Err(Refusal::reject("no author"));
    };
    if data.len() > limit {
        return Err(Refusal::reject("payload too large for its topic"));
    }
    match topic {
        PRESENCE_TOPIC => check_presence(source, data),
        _ => check_dataset(source, data),
    }
}

/// What gossipsub is told for a verdict.
pub(crate) fn acceptance(verdict: &Result<(), Refusal>) -> MessageAcceptance {
    match verdict {
        Ok(()) => MessageAcceptance::Accept,
        Err(refusal) => refusal.acceptance,
    }
}

/// Whether this node may publish `data` on `topic`: what its peers would reject is
/// refused here, so that publishing it does not lower this node's own score.
/// Topics this node does not follow are not checked.
pub(crate) fn publishable(topic: &str, local: &PeerId, data: &[u8]) -> Result<(), Refusal> {
    match validate(topic, Some(local), data) {
        Err(refusal) if refusal.acceptance == MessageAcceptance::Reject => Err(refusal),
        _ => Ok(()),
    }
}

/// A presence message: `{"peer_id": "12D3KooW…", "addresses": ["/ip4/…", …]}`. Other
/// fields are allowed (a later version may add some); the two fields must appear once.
#[derive(Deserialize)]
struct Presence {
    peer_id: String,
    addresses: Vec<String>,
}

fn check_presence(source: &PeerId, data: &[u8]) -> Result<(), Refusal> {
    let presence: Presence = serde_json::from_slice(data)
        .map_err(|_| Refusal::reject("presence is not {peer_id, addresses} JSON"))?;
    let named: PeerId = presence
        .peer_id
        .parse()
        .map_err(|_| Refusal::reject("presence names an invalid peer id"))?;
    if named != *source {
        return Err(Refusal::reject(
            "presence names a peer other than its author",
        ));
    }
    if presence.addresses.len() > MAX_PRESENCE_ADDRESSES {
        return Err(Refusal::reject("presence lists too many addresses"));
    }
    // Addresses are checked for shape only: one with a protocol this version does not
    // know must not get a newer node penalised.
    let well_formed = |a: &String| a.starts_with('/') && a.len() <= MAX_ADDRESS_CHARS;
    if !presence.addresses.iter().all(well_formed) {
        return Err(Refusal::reject("presence lists a malformed address"));
    }
    Ok(())
}

/// A dataset announcement: nothing fixes its fields yet, so any JSON object whose top
/// level names each key once. A `peer_id` field, if there is one, must be the author.
fn check_dataset(source: &PeerId, data: &[u8]) -> Result<(), Refusal> {
    let UniqueObject(object) = serde_json::from_slice(data)
        .map_err(|_| Refusal::reject("dataset announcement is not a JSON object"))?;
    match object.get("peer_id") {
        None => Ok(()),
        Some(serde_json::Value::String(s)) if s.parse::<PeerId>().ok() == Some(*source) => Ok(()),
        Some(_) => Err(Refusal::reject(
            "dataset announcement names a peer other than its author",
        )),
    }
}

/// A JSON object whose top-level keys are distinct. `serde_json::Map` keeps the last
/// of two equal keys; another parser might keep the first and read something else.
struct UniqueObject(serde_json::Map<String, serde_json::Value>);

impl<'de> Deserialize<'de> for UniqueObject {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Unique;
        impl<'de> Visitor<'de> for Unique {
            type Value = UniqueObject;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<UniqueObject, A::Error> {
                let mut object = serde_json::Map::new();
                while let Some((key, value)) = map.next_entry::<String, serde_json::Value>()? {
                    if object.contains_key(&key) {
                        return Err(de::Error::custom(format!("duplicate key `{key}`")));
                    }
                    object.insert(key, value);
                }
                Ok(UniqueObject(object))
            }
        }
        deserializer.deserialize_map(Unique)
    }
}

/// This node's presence message: its listen addresses, as many as fit the limits that
/// peers check (the last ones are left out when there are too many).
pub(crate) fn presence_message(local: &PeerId, addresses: &[Multiaddr]) -> Vec<u8> {
    let mut addresses: Vec<String> = addresses
        .iter()
        .map(|a| a.to_string())
        .filter(|a| a.len() <= MAX_ADDRESS_CHARS)
        .take(MAX_PRESENCE_ADDRESSES)
        .collect();
    loop {
        let message = serde_json::json!({
            "peer_id": local.to_string(),
            "addresses": addresses,
        })
        .to_string()
        .into_bytes();
        if message.len() <= PRESENCE_MAX_BYTES || addresses.pop().is_none() {
            return message;
        }
    }
}

/// Messages taken from each peer that forwards them (gossipsub's
/// `propagation_source`): a token bucket per peer, `per_sec` sustained with bursts of
/// `burst`, in a bounded table.
pub(crate) struct RateLimiter {
    per_sec: f64,
    burst: f64,
    buckets: BoundedMap<PeerId, Bucket>,
}

#[derive(Clone, Copy)]
struct Bucket {
    tokens: f64,
    updated: Instant,
}

impl RateLimiter {
    /// `per_sec` messages a second sustained per peer, bursts of `burst`.
    pub(crate) fn new(per_sec: u32, burst: u32) -> Self {
        Self {
            per_sec: f64::from(per_sec.max(1)),
            burst: f64::from(burst.max(1)),
            buckets: BoundedMap::new(RATE_PEERS),
        }
    }

    /// Takes one message from `peer`'s bucket; false when it is empty (the message is
    /// over the rate and takes nothing).
    pub(crate) fn allow(&mut self, peer: PeerId, now: Instant) -> bool {
        let bucket = match self.buckets.get_mut(&peer) {
            Some(b) => b,
            None => {
                self.buckets.insert(
                    peer,
                    Bucket {
                        tokens: self.burst,
                        updated: now,
                    },
                );
                self.buckets.get_mut(&peer).expect("just inserted")
            }
        };
        let elapsed = now.saturating_duration_since(bucket.updated).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * self.per_sec).min(self.burst);
        bucket.updated = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// The verdict on each gossip message received: content first (a malformed message is
/// rejected whatever the rate), then the forwarding peer's rate (ignored beyond it).
pub(crate) struct GossipGuard {
    rate: RateLimiter,
}

impl GossipGuard {
    /// `per_sec` messages a second sustained from each forwarding peer, bursts of `burst`.
    pub(crate) fn new(per_sec: u32, burst: u32) -> Self {
        Self {
            rate: RateLimiter::new(per_sec, burst),
        }
    }

    /// The verdict on `message`, forwarded by `propagation_source`.
    pub(crate) fn judge(
        &mut self,
        propagation_source: PeerId,
        message: &gossipsub::Message,
        now: Instant,
    ) -> Result<(), Refusal> {
        validate(
            message.topic.as_str(),
            message.source.as_ref(),
            &message.data,
        )?;
        if !self.rate.allow(propagation_source, now) {
            return Err(Refusal::ignore("the forwarding peer is over its rate"));
        }
        Ok(())
    }
}

/// Gossipsub's settings: strict signatures, messages held for [`GossipGuard`]'s
/// verdict, and a size cap per topic (a larger message is dropped, and its sender
/// penalised, before its signature is even checked).
pub(crate) fn config() -> Result<gossipsub::Config, gossipsub::ConfigBuilderError> {
    gossipsub::ConfigBuilder::default()
        .validation_mode(gossipsub::ValidationMode::Strict)
        .validate_messages()
        .max_transmit_size_for_topic(
            PRESENCE_MAX_BYTES + ENVELOPE_BYTES,
            IdentTopic::new(PRESENCE_TOPIC).hash(),
        )
        .max_transmit_size_for_topic(
            DATASETS_MAX_BYTES + ENVELOPE_BYTES,
            IdentTopic::new(DATASETS_TOPIC).hash(),
        )
        .build()
}

/// Peer scoring under which rejected messages get their sender graylisted.
///
/// A peer's positive score is at most 20 (`topic_score_cap`): up to 6 for a time in
/// the mesh, up to 10 for first deliveries, per topic. Each rejected message adds 1 to
/// the peer's counter in its topic, and the penalty is `-10 × counter²`. The counter
/// falls to a tenth in an hour.
///
/// | rejected | score at most | effect |
/// |---|---|---|
/// | 1 | 10 | none |
/// | 2 | -20 | no gossip to or from it (< -10) |
/// | 3 | -70 | not published to (< -50) |
/// | 4 | -140 | graylisted (< -80): its RPCs are dropped unread |
///
/// Four rejected messages keep a peer graylisted for about 6 minutes, ten for about
/// 30. Mesh-delivery penalties (P₃, P₃b) are off: presence comes every 30 s per node
/// and dataset announcements are rare, so an honest mesh peer would fall short of
/// any delivery quota. Loopback is exempt from the same-IP penalty (P₆), so that
/// tests and several nodes on one machine are not penalised.
pub(crate) fn peer_score() -> (PeerScoreParams, PeerScoreThresholds) {
    let topic = TopicScoreParams {
        topic_weight: 1.0,
        time_in_mesh_weight: 0.01,
        time_in_mesh_quantum: Duration::from_secs(1),
        time_in_mesh_cap: 600.0,
        first_message_deliveries_weight: 1.0,
        first_message_deliveries_decay: score_parameter_decay(Duration::from_secs(600)),
        first_message_deliveries_cap: 10.0,
        mesh_message_deliveries_weight: 0.0,
        mesh_failure_penalty_weight: 0.0,
        invalid_message_deliveries_weight: -10.0,
        invalid_message_deliveries_decay: score_parameter_decay(Duration::from_secs(3600)),
        ..TopicScoreParams::default()
    };
    let mut params = PeerScoreParams {
        topic_score_cap: 20.0,
        ip_colocation_factor_whitelist: HashSet::from([
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(Ipv6Addr::LOCALHOST),
        ]),
        ..PeerScoreParams::default()
    };
    for name in [PRESENCE_TOPIC, DATASETS_TOPIC] {
        params
            .topics
            .insert(IdentTopic::new(name).hash(), topic.clone());
    }
    let thresholds = PeerScoreThresholds {
        gossip_threshold: -10.0,
        publish_threshold: -50.0,
        graylist_threshold: -80.0,
        // Peer exchange is off; only a peer this good would be trusted for it.
        accept_px_threshold: 100.0,
        opportunistic_graft_threshold: 3.0,
    };
    (params, thresholds)
}

/// The gossipsub behaviour with [`config`] and [`peer_score`].
pub(crate) fn behaviour(
    key: &identity::Keypair,
) -> Result<gossipsub::Behaviour, Box<dyn std::error::Error + Send + Sync>> {
    let mut behaviour: gossipsub::Behaviour = gossipsub::Behaviour::new(
        gossipsub::MessageAuthenticity::Signed(key.clone()),
        config()?,
    )?;
    let (params, thresholds) = peer_score();
    behaviour.with_peer_score(params, thresholds)?;
    Ok(behaviour)
}

#[cfg(test)]
mod tests {
    use super::*;

    use MessageAcceptance::{Accept, Ignore, Reject};

    fn verdict(topic: &str, source: Option<&PeerId>, data: &[u8]) -> MessageAcceptance {
        acceptance(&validate(topic, source, data))
    }

    fn peer(n: u8) -> PeerId {
        identity::Keypair::ed25519_from_bytes([n; 32])
            .expect("a 32-byte seed")
            .public()
            .to_peer_id()
    }

    fn presence(named: &PeerId) -> Vec<u8> {
        serde_json::json!({
            "peer_id": named.to_string(),
            "addresses": ["/ip4/10.0.0.1/tcp/4001", "/ip4/10.0.0.1/udp/4001/quic-v1"],
        })
        .to_string()
        .into_bytes()
    }

    fn message(topic: &str, source: Option<PeerId>, data: Vec<u8>) -> gossipsub::Message {
        gossipsub::Message {
            source,
            data,
            sequence_number: Some(1),
            topic: IdentTopic::new(topic).hash(),
        }
    }

    #[test]
    fn presence_is_accepted_from_the_peer_it_names() {
        let a = peer(1);
        assert_eq!(verdict(PRESENCE_TOPIC, Some(&a), &presence(&a)), Accept);
        // A later version may add fields.
        let more = serde_json::json!({
            "peer_id": a.to_string(), "addresses": [], "agent": "medmesh/2",
        });
        assert_eq!(
            verdict(PRESENCE_TOPIC, Some(&a), more.to_string().as_bytes()),
            Accept
        );
    }

    #[test]
    fn forged_presence_is_rejected() {
        let (attacker, victim) = (peer(1), peer(2));
        let refusal = validate(PRESENCE_TOPIC, Some(&attacker), &presence(&victim))
            .expect_err("a presence naming another peer");
        assert_eq!(refusal.acceptance, Reject);
        assert!(
            refusal.reason.contains("other than its author"),
            "{refusal}"
        );
        // Nor can the field be given twice, one for each reader.
        let twice = format!(r#"{{"peer_id":"{victim}","peer_id":"{attacker}","addresses":[]}}"#);
        assert_eq!(
            verdict(PRESENCE_TOPIC, Some(&attacker), twice.as_bytes()),
            Reject
        );
        // Unsigned: nothing to compare with.
        assert_eq!(verdict(PRESENCE_TOPIC, None, &presence(&victim)), Reject);
    }

    #[test]
    fn malformed_presence_is_rejected() {
        let a = peer(1);
        let random: Vec<u8> = (0..200u32).map(|i| (i * 37 + 11) as u8).collect();
        let cases: Vec<Vec<u8>> = vec![
            random,
            Vec::new(),
            b"null".to_vec(),
            br#"{"peer_id": 3, "addresses": []}"#.to_vec(),
            br#"{"peer_id": "not a peer id", "addresses": []}"#.to_vec(),
            format!(r#"{{"peer_id": "{a}"}}"#).into_bytes(),
            format!(r#"{{"peer_id": "{a}", "addresses": ["tcp/4001"]}}"#).into_bytes(),
            format!(r#"{{"peer_id": "{a}", "addresses": [], "x": 1}} trailing"#).into_bytes(),
            serde_json::json!({
                "peer_id": a.to_string(),
                "addresses": vec!["/ip4/10.0.0.1/tcp/1"; MAX_PRESENCE_ADDRESSES + 1],
            })
            .to_string()
            .into_bytes(),
            serde_json::json!({
                "peer_id": a.to_string(),
                "addresses": [format!("/dns4/{}/tcp/1", "a".repeat(MAX_ADDRESS_CHARS))],
            })
            .to_string()
            .into_bytes(),
            serde_json::json!({
                "peer_id": a.to_string(), "addresses": [], "pad": "x".repeat(PRESENCE_MAX_BYTES),
            })
            .to_string()
            .into_bytes(),
        ];
        for (i, data) in cases.iter().enumerate() {
            assert_eq!(verdict(PRESENCE_TOPIC, Some(&a), data), Reject, "case {i}");
        }
    }

    #[test]
    fn dataset_announcements_are_json_objects_under_the_cap() {
        let (a, b) = (peer(1), peer(2));
        let ok = br#"{"dataset": "bafy-example", "records": 12}"#;
        assert_eq!(verdict(DATASETS_TOPIC, Some(&a), ok), Accept);
        let own = format!(r#"{{"peer_id": "{a}", "dataset": "x"}}"#);
        assert_eq!(verdict(DATASETS_TOPIC, Some(&a), own.as_bytes()), Accept);
        let forged = format!(r#"{{"peer_id": "{b}", "dataset": "x"}}"#);
        assert_eq!(verdict(DATASETS_TOPIC, Some(&a), forged.as_bytes()), Reject);
        let twice = r#"{"dataset": "x", "dataset": "y"}"#;
        assert_eq!(verdict(DATASETS_TOPIC, Some(&a), twice.as_bytes()), Reject);
        let bad: [&[u8]; 6] = [
            b"dataset bafy-example",
            b"[1, 2]",
            b"\"text\"",
            b"",
            b"\xff\xfe\x00{",
            br#"{"peer_id": 12}"#,
        ];
        for bad in bad {
            assert_eq!(verdict(DATASETS_TOPIC, Some(&a), bad), Reject, "{bad:?}");
        }
        let big = serde_json::json!({ "pad": "x".repeat(DATASETS_MAX_BYTES) }).to_string();
        assert_eq!(verdict(DATASETS_TOPIC, Some(&a), big.as_bytes()), Reject);
        assert_eq!(verdict(DATASETS_TOPIC, None, ok), Reject);
    }

    #[test]
    fn other_topics_are_ignored_not_penalised() {
        let a = peer(1);
        assert_eq!(verdict("someone/else/1", Some(&a), b"anything"), Ignore);
        // This node may still publish there; on its own topics only what peers accept.
        assert!(publishable("someone/else/1", &a, b"anything").is_ok());
        assert!(publishable(DATASETS_TOPIC, &a, b"dataset bafy-example").is_err());
        assert!(publishable(DATASETS_TOPIC, &a, br#"{"dataset": "bafy"}"#).is_ok());
    }

    #[test]
    fn own_presence_message_always_validates() {
        let a = peer(1);
        let few: Vec<Multiaddr> = vec!["/ip4/127.0.0.1/tcp/4001".parse().unwrap()];
        assert_eq!(
            verdict(PRESENCE_TOPIC, Some(&a), &presence_message(&a, &few)),
            Accept
        );
        // A host with very many interfaces: the list is cut to fit.
        let many: Vec<Multiaddr> = (0..200u32)
            .map(|i| {
                format!("/ip6/fe80::{i:x}:1234:5678:9abc/udp/4001/quic-v1")
                    .parse()
                    .unwrap()
            })
            .collect();
        let data = presence_message(&a, &many);
        assert!(data.len() <= PRESENCE_MAX_BYTES);
        assert_eq!(verdict(PRESENCE_TOPIC, Some(&a), &data), Accept);
        let parsed: serde_json::Value = serde_json::from_slice(&data).unwrap();
        assert!(!parsed["addresses"].as_array().unwrap().is_empty());
    }

    #[test]
    fn rate_limiter_allows_bursts_then_the_sustained_rate() {
        let mut rate = RateLimiter::new(20, 100);
        let (a, b) = (peer(1), peer(2));
        let t0 = Instant::now();
        let allowed = (0..150).filter(|_| rate.allow(a, t0)).count();
        assert_eq!(allowed, 100, "the burst");
        assert!(!rate.allow(a, t0));
        // Another peer has its own bucket.
        assert!(rate.allow(b, t0));
        // One second later: 20 more.
        let t1 = t0 + Duration::from_secs(1);
        let allowed = (0..50).filter(|_| rate.allow(a, t1)).count();
        assert_eq!(allowed, 20);
        // 20/s sustained passes: one every 50 ms for 10 s.
        let mut t = t1;
        for i in 0..200 {
            t += Duration::from_millis(50);
            assert!(rate.allow(a, t), "message {i} at 20/s");
        }
        // 40/s does not: about half are refused.
        let mut refused = 0;
        for _ in 0..400 {
            t += Duration::from_millis(25);
            if !rate.allow(a, t) {
                refused += 1;
            }
        }
        assert!((190..=210).contains(&refused), "{refused} refused at 40/s");
        // Idle for long: the bucket is full again, never more than the burst.
        let later = t + Duration::from_secs(3600);
        assert_eq!((0..150).filter(|_| rate.allow(a, later)).count(), 100);
    }

    #[test]
    fn rate_limiter_stays_bounded() {
        let mut rate = RateLimiter::new(20, 100);
        let now = Instant::now();
        for i in 0..10_000u32 {
            let mut seed = [0u8; 32];
            seed[..4].copy_from_slice(&i.to_be_bytes());
            let p = identity::Keypair::ed25519_from_bytes(seed)
                .unwrap()
                .public()
                .to_peer_id();
            rate.allow(p, now);
        }
        assert!(rate.buckets.len() <= 2 * RATE_PEERS);
    }

    #[test]
    fn guard_rejects_bad_content_and_ignores_excess_rate() {
        let mut guard = GossipGuard::new(20, 100);
        let (relay, author, victim) = (peer(1), peer(2), peer(3));
        let now = Instant::now();
        let good = message(PRESENCE_TOPIC, Some(author), presence(&author));
        for _ in 0..100 {
            guard.judge(relay, &good, now).expect("within the burst");
        }
        let over = guard.judge(relay, &good, now).expect_err("over the rate");
        assert_eq!(over.acceptance, Ignore);
        // Bad content is rejected even past the rate (so its sender is penalised).
        let forged = message(PRESENCE_TOPIC, Some(author), presence(&victim));
        assert_eq!(
            guard.judge(relay, &forged, now).unwrap_err().acceptance,
            Reject
        );
        // The rate is per forwarding peer.
        guard.judge(author, &good, now).expect("another forwarder");
    }

    #[test]
    fn score_settings_are_valid_and_graylist_after_four_rejections() {
        let (params, thresholds) = peer_score();
        params.validate().expect("score parameters");
        thresholds.validate().expect("thresholds");
        let topic = &params.topics[&IdentTopic::new(PRESENCE_TOPIC).hash()];
        let worst = |rejected: f64| {
            params.topic_score_cap
                + rejected * rejected * topic.invalid_message_deliveries_weight * topic.topic_weight
        };
        assert!(worst(1.0) > thresholds.gossip_threshold);
        assert!(worst(4.0) < thresholds.graylist_threshold);
        config().expect("gossipsub config");
        let key = identity::Keypair::ed25519_from_bytes([9; 32]).unwrap();
        behaviour(&key).expect("gossipsub behaviour");
    }
}
