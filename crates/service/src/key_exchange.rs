//! Key release between nodes: answering peers' key calls over libp2p with the same
//! releaser, audit and events as HTTP, and forwarding a grantee's request to the
//! record owner's node when the record is not this node's.
//!
//! A researcher talks to its own node; institutions reach each other over libp2p only.
//! So `POST /v1/access/challenge` and `POST /v1/records/{id}/key` on any node, given
//! the owner's node (`owner`, a PeerId), ask that node (`/medmesh/key/1.0.0`), whose
//! answer (the key wrapped for the grantee, or its one refusal) comes back unchanged:
//! the forwarding node never sees the data key. Without `owner` the node answers itself.
//! A node answering a peer's call never forwards it on.

use std::sync::{Arc, Weak};

use futures::future::BoxFuture;
use futures::FutureExt;
use medmesh_chain::{Access, KeyRequest};
use medmesh_core::{KeyWrap, KeyWrapAlgorithm, RecordId};
use medmesh_crypto::UnlockedDecryptor;
use medmesh_net::{KeyAnswer, KeyCall, KeyHandler, PeerId};
use medmesh_store::AuditAction;

use crate::access::release_code;
use crate::error::ServiceError;
use crate::records::OpenedRecord;
use crate::services::NodeServices;

/// A grantee's own keys: the certificate it published on chain (armored) and its
/// unlocked secret key, which unwraps what owners release to it.
pub struct GranteeKeys {
    /// The certificate, ASCII-armored.
    pub certificate: Vec<u8>,
    /// Its secret decryption key.
    pub decryptor: UnlockedDecryptor,
}

/// A released key, from this node or the owner's.
#[derive(Debug, Clone)]
pub struct ReleasedKey {
    /// The data key, wrapped for the grantee's certificate.
    pub key_wrap: KeyWrap,
    /// `grant` or `emergency`.
    pub access: String,
    /// The grant or emergency id.
    pub access_id: String,
    /// The owner's node, when the request was forwarded to it.
    pub released_by: Option<PeerId>,
}

impl NodeServices {
    /// Answers peers' key calls over libp2p (challenges and key requests, audited
    /// under `peer:<PeerId>`). Call once the services are shared; does nothing without
    /// a network. Returns whether it was set now.
    pub fn serve_keys_to_peers(self: &Arc<Self>) -> bool {
        match self.network() {
            Some(network) => network.serve_keys(Arc::new(PeerKeyCalls(Arc::downgrade(self)))),
            None => false,
        }
    }

    /// Where a key request about `record` is answered: `None` for this node, else the
    /// owner's node: `owner` when the caller names it, otherwise the node registered on
    /// chain for the institution the record's manifest names as owner. The manifest is
    /// a public block, and which CIDs a node holds is public in the DHT, so the choice
    /// tells a caller nothing the network does not; a record whose manifest is not here,
    /// and this institution's own, are answered here (with the one refusal, see
    /// `ReleaseError::NotAllowed`).
    async fn key_owner(
        &self,
        record: Option<RecordId>,
        owner: Option<PeerId>,
    ) -> Result<Option<PeerId>, ServiceError> {
        let me = self.network().map(|n| n.peer_id());
        if let Some(peer) = owner {
            return Ok((Some(peer) != me).then_some(peer));
        }
        let Some(record) = record else {
            return Ok(None);
        };
        let Some(institution) = self.manifest_owner(record).await else {
            return Ok(None);
        };
        let own = self.keys.as_ref().map(|k| k.certificate.id());
        if own.as_ref() == Some(&institution) {
            return Ok(None);
        }
        let not_found = || ServiceError::OwnerNotFound {
            record: record.to_string(),
            institution: institution.to_string(),
        };
        let chain = self.chain().map_err(|_| not_found())?;
        let fingerprint: [u8; 32] = hex::decode(institution.as_str())
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or_else(not_found)?;
        let found = medmesh_chain::registry::node_of_certificate(
            chain.releaser.provider(),
            chain.deployment.node_registry,
            chain.deployment.from_block,
            &fingerprint,
        )
        .await?;
        let peer = found
            .and_then(|(_, bytes)| PeerId::from_bytes(&bytes).ok())
            .ok_or_else(not_found)?;
        Ok((Some(peer) != me).then_some(peer))
    }

    /// The institution a record's manifest names as owner, if the manifest is stored
    /// here (a grantee's node fetches a record before asking for its key). Not fetched
    /// for the asking: a key request must not make the node fetch and keep blocks.
    async fn manifest_owner(&self, record: RecordId) -> Option<medmesh_core::InstitutionId> {
        let store = self.store.clone();
        crate::error::blocking("manifest lookup", move || {
            Ok(store
                .blocks()
                .has(record.cid())
                .then(|| store.blocks().get(record.cid()))
                .transpose()?)
        })
        .await
        .ok()
        .flatten()
        .and_then(|bytes| medmesh_core::Manifest::decode(&bytes).ok())
        .map(|manifest| manifest.body.owner)
    }

    /// A challenge to sign for a key request about `record`: this node's, or that of
    /// the owner's node (`owner`, or found as [`request_key`](Self::request_key) finds
    /// it), asked over libp2p.
    pub async fn challenge_for(
        &self,
        record: Option<RecordId>,
        owner: Option<PeerId>,
    ) -> Result<String, ServiceError> {
        match self.key_owner(record, owner).await? {
            None => self.challenge(),
            Some(peer) => match self.call_owner(peer, &KeyCall::Challenge).await? {
                KeyAnswer::Challenge { challenge } => Ok(challenge),
                other => Err(unexpected(peer, other)),
            },
        }
    }

    /// Releases a record's key to a grantee: here for this institution's records, else
    /// by the owner's node (`owner`, or the node registered on chain for the record's
    /// owner), asked over libp2p, whose answer comes back unchanged. `caller` is who
    /// asked, as audited (here, and by the owner as this node's `peer:…`).
    pub async fn request_key(
        &self,
        request: KeyRequest,
        caller: &str,
        owner: Option<PeerId>,
    ) -> Result<ReleasedKey, ServiceError> {
        let Some(peer) = self.key_owner(Some(request.record), owner).await? else {
            let released = self.release_key(request, caller).await?;
            let (access, access_id) = access_of(&released.access);
            return Ok(ReleasedKey {
                key_wrap: released.key_wrap,
                access: access.into(),
                access_id,
                released_by: None,
            });
        };
        let certificate = String::from_utf8(request.certificate).map_err(|_| {
            ServiceError::InvalidInput(
                "the certificate must be ASCII-armored to be forwarded to the owner's node".into(),
            )
        })?;
        let call = KeyCall::Release {
            record: request.record.to_string(),
            grantee: request.grantee.to_string(),
            purpose: request.purpose,
            certificate,
            challenge: request.challenge,
            signature: request.signature,
        };
        tracing::info!(record = %request.record, owner = %peer, caller, "key request forwarded to the owner's node");
        let answer = self.call_owner(peer, &call).await;
        // The owner audits the request under this node; who asked here is audited here.
        let outcome = match &answer {
            Ok(KeyAnswer::Released { access, .. }) => format!("released ({access})"),
            Ok(_) => "unexpected answer".to_string(),
            Err(ServiceError::OwnerRefused { code, .. }) => format!("refused ({code})"),
            Err(_) => "owner unreachable".to_string(),
        };
        self.audit(
            AuditAction::KeyRequestForwarded,
            caller,
            &request.record.to_string(),
            vec![
                ("owner", peer.to_string()),
                ("grantee", request.grantee.to_string()),
                ("purpose", format!("DUO:{:07}", request.purpose)),
                ("outcome", outcome),
            ],
        )
        .await;
        match answer? {
            KeyAnswer::Released {
                key_wrap,
                recipient,
                access,
                access_id,
            } => Ok(ReleasedKey {
                key_wrap: KeyWrap {
                    recipient: medmesh_core::InstitutionId::new(&recipient).map_err(|_| {
                        unexpected_text(peer, "a recipient that is not a fingerprint")
                    })?,
                    algorithm: KeyWrapAlgorithm::OpenPgpMlKem768X25519,
                    message: hex::decode(&key_wrap)
                        .map_err(|_| unexpected_text(peer, "a key wrap that is not hex"))?,
                },
                access,
                access_id,
                released_by: Some(peer),
            }),
            other => Err(unexpected(peer, other)),
        }
    }

    /// Gets record `id` of another institution as a grantee: a challenge from `owner`
    /// (the owner's node), the key request signed by `wallet` for `purpose`, the key
    /// released by the owner wrapped for `grantee.certificate`, unwrapped by
    /// `grantee.decryptor`, and the record opened with it (fetched first if missing).
    /// Returns who released the key and the record, streaming.
    pub async fn open_as_grantee(
        &self,
        id: RecordId,
        owner: PeerId,
        purpose: u32,
        wallet: &(impl alloy::signers::Signer + Sync),
        grantee: GranteeKeys,
        actor: &str,
    ) -> Result<(ReleasedKey, OpenedRecord), ServiceError> {
        let challenge = self.challenge_for(Some(id), Some(owner)).await?;
        let message = KeyRequest::message(&id, wallet.address(), purpose, &challenge);
        let signature = wallet
            .sign_message(message.as_bytes())
            .await
            .map_err(|e| ServiceError::InvalidInput(format!("the wallet cannot sign: {e}")))?;
        let request = KeyRequest {
            record: id,
            grantee: wallet.address(),
            purpose,
            certificate: grantee.certificate,
            challenge,
            signature: format!("0x{}", hex::encode(signature.as_bytes())),
        };
        let released = self.request_key(request, actor, Some(owner)).await?;
        let record = self
            .open_released(id, released.key_wrap.clone(), grantee.decryptor, actor)
            .await?;
        Ok((released, record))
    }

    /// Sends `call` to the owner's node; a refusal becomes [`ServiceError::OwnerRefused`].
    async fn call_owner(&self, peer: PeerId, call: &KeyCall) -> Result<KeyAnswer, ServiceError> {
        let network = self.require_network()?;
        let answer = network.call_keys(peer, call).await.map_err(|source| {
            ServiceError::OwnerUnreachable {
                owner: peer.to_string(),
                source: Box::new(source),
            }
        })?;
        match answer {
            KeyAnswer::Refused { code, message } => Err(ServiceError::OwnerRefused {
                owner: peer.to_string(),
                code,
                message,
            }),
            answer => Ok(answer),
        }
    }
}

fn access_of(access: &Access) -> (&'static str, String) {
    match access {
        Access::Granted { grant_id, .. } => ("grant", grant_id.to_string()),
        Access::Emergency { emergency_id, .. } => ("emergency", emergency_id.to_string()),
    }
}

fn unexpected(peer: PeerId, answer: KeyAnswer) -> ServiceError {
    // The kind of answer only: a misplaced `released` carries a key wrap.
    let kind = match answer {
        KeyAnswer::Challenge { .. } => "a challenge",
        KeyAnswer::Released { .. } => "a released key",
        KeyAnswer::Refused { .. } => "a refusal",
    };
    unexpected_text(peer, &format!("{kind} where it should not"))
}

fn unexpected_text(peer: PeerId, what: &str) -> ServiceError {
    ServiceError::OwnerRefused {
        owner: peer.to_string(),
        code: "bad-answer".into(),
        message: format!("the owner's node answered with {what}"),
    }
}

/// The service's side of `/medmesh/key/1.0.0`. Weak: the network (inside the
/// services) holds it, and must not keep the services alive.
struct PeerKeyCalls(Weak<NodeServices>);

impl KeyHandler for PeerKeyCalls {
    fn answer(&self, peer: PeerId, call: KeyCall) -> BoxFuture<'static, KeyAnswer> {
        let services = self.0.clone();
        async move {
            let Some(services) = services.upgrade() else {
                return refusal("unavailable", "the node is stopping".into());
            };
            let caller = format!("peer:{peer}");
            match call {
                KeyCall::Challenge => match services.challenge() {
                    Ok(challenge) => KeyAnswer::Challenge { challenge },
                    Err(e) => refusal("unavailable", e.to_string()),
                },
                KeyCall::Release {
                    record,
                    grantee,
                    purpose,
                    certificate,
                    challenge,
                    signature,
                } => {
                    let (Ok(record), Ok(grantee)) = (record.parse(), grantee.parse()) else {
                        return refusal(
                            "bad-request",
                            "the record is not a record id, or the grantee not an address".into(),
                        );
                    };
                    let request = KeyRequest {
                        record,
                        grantee,
                        purpose,
                        certificate: certificate.into_bytes(),
                        challenge,
                        signature,
                    };
                    // Never forwarded on: a record that is not this node's is refused as
                    // the releaser refuses one it does not have (held replicas have no
                    // consent link).
                    match services.release_key(request, &caller).await {
                        Ok(released) => {
                            let (access, access_id) = access_of(&released.access);
                            KeyAnswer::Released {
                                key_wrap: hex::encode(&released.key_wrap.message),
                                recipient: released.key_wrap.recipient.to_string(),
                                access: access.into(),
                                access_id,
                            }
                        }
                        // Already what a caller may be told (see `release_key`).
                        Err(ServiceError::Release(e)) => refusal(release_code(&e), e.to_string()),
                        Err(e) => refusal("unavailable", e.to_string()),
                    }
                }
            }
        }
        .boxed()
    }
}

fn refusal(code: &str, message: String) -> KeyAnswer {
    KeyAnswer::Refused {
        code: code.into(),
        message,
    }
}
