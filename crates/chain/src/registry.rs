//! Reading `NodeRegistry`: which node an institution has registered.

use alloy::primitives::Address;
use alloy::providers::DynProvider;

use crate::bindings::NodeRegistry;
use crate::ChainError;

/// The node an institution registered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegisteredNode {
    /// Its PeerId bytes (multihash).
    pub peer_id: Vec<u8>,
    /// The fingerprint of the institution's v6 OpenPGP certificate (its signing and
    /// key-receiving identity).
    pub certificate: [u8; 32],
}

/// The PeerId bytes (multihash) of the node `institution` registered, if it is an
/// approved institution with an active node; `None` otherwise.
pub async fn registered_peer_id(
    provider: &DynProvider,
    registry: Address,
    institution: Address,
) -> Result<Option<Vec<u8>>, ChainError> {
    Ok(registered_node(provider, registry, institution)
        .await?
        .map(|node| node.peer_id))
}

/// The node `institution` registered (PeerId and certificate fingerprint), if it is
/// an approved institution with an active node; `None` otherwise.
pub async fn registered_node(
    provider: &DynProvider,
    registry: Address,
    institution: Address,
) -> Result<Option<RegisteredNode>, ChainError> {
    let registry = NodeRegistry::new(registry, provider.clone());
    if !registry
        .isRegistered(institution)
        .call()
        .await
        .map_err(ChainError::rpc)?
    {
        return Ok(None);
    }
    let node = registry
        .nodeOf(institution)
        .call()
        .await
        .map_err(ChainError::rpc)?;
    Ok(Some(RegisteredNode {
        peer_id: node.peerId.to_vec(),
        certificate: node.certFingerprint.0,
    }))
}

/// What `NodeRegistry` holds for one account: whether the admins approved it as an
/// institution, the node it registered (if it ever did), and the certificate it
/// receives data keys with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountRegistration {
    /// `isApproved`.
    pub approved: bool,
    /// `nodeOf`, when the account ever registered a node (also when no longer active).
    pub node: Option<NodeEntry>,
    /// `keyOf`, when not zero.
    pub key: Option<[u8; 32]>,
}

/// A node as `NodeRegistry.nodeOf` stores it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeEntry {
    /// PeerId bytes (multihash).
    pub peer_id: Vec<u8>,
    /// Fingerprint of the institution's v6 certificate.
    pub certificate: [u8; 32],
    /// Display name.
    pub name: String,
    /// Block timestamp of the (last) registration, Unix seconds.
    pub registered_at: u64,
    /// Whether it counts (an admin's `revokeInstitution` deactivates it).
    pub active: bool,
}

impl AccountRegistration {
    /// `isRegistered`: approved, with an active node.
    pub fn is_registered(&self) -> bool {
        self.approved && self.node.as_ref().is_some_and(|n| n.active)
    }

    /// Whether the account is registered with exactly this node: PeerId, certificate
    /// fingerprint and name.
    pub fn lists(&self, peer_id: &[u8], certificate: &[u8; 32], name: &str) -> bool {
        self.is_registered()
            && self.node.as_ref().is_some_and(|n| {
                n.peer_id == peer_id && &n.certificate == certificate && n.name == name
            })
    }
}

/// Reads what `NodeRegistry` at `registry` holds for `account` (three calls).
pub async fn registration(
    provider: &DynProvider,
    registry: Address,
    account: Address,
) -> Result<AccountRegistration, ChainError> {
    let registry = NodeRegistry::new(registry, provider.clone());
    let approved = registry
        .isApproved(account)
        .call()
        .await
        .map_err(ChainError::rpc)?;
    let node = registry
        .nodeOf(account)
        .call()
        .await
        .map_err(ChainError::rpc)?;
    let key = registry
        .keyOf(account)
        .call()
        .await
        .map_err(ChainError::rpc)?;
    // Never registered: the contract answers an all-zero node.
    let node = (!node.peerId.is_empty() || node.registeredAt != 0).then(|| NodeEntry {
        peer_id: node.peerId.to_vec(),
        certificate: node.certFingerprint.0,
        name: node.name,
        registered_at: node.registeredAt,
        active: node.active,
    });
    Ok(AccountRegistration {
        approved,
        node,
        key: (!key.is_zero()).then_some(key.0),
    })
}

/// The longest name `NodeRegistry` accepts, in bytes (`MAX_NAME_LENGTH`).
pub const MAX_NAME_BYTES: usize = 128;

/// `name` as the node registers it: cut to [`MAX_NAME_BYTES`] at a character
/// boundary, and never empty (the contract refuses both).
pub fn registry_name(name: &str) -> String {
    let name = name.trim();
    let mut end = name.len().min(MAX_NAME_BYTES);
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    match &name[..end] {
        "" => "medmesh institution".to_string(),
        cut => cut.to_string(),
    }
}

/// Blocks one `eth_getLogs` call covers while looking for a registration.
const REGISTRATION_LOG_RANGE: u64 = 10_000;

/// The node registered for the institution whose certificate fingerprint is
/// `certificate` (a record's public owner): the account whose latest `NodeRegistered`
/// names that fingerprint, if that account is still approved and `nodeOf` still lists
/// an active node with it. Returns the account and the node's PeerId bytes. Scans the
/// registry's events from `from_block` (registrations are few: one per institution).
pub async fn node_of_certificate(
    provider: &DynProvider,
    registry: Address,
    from_block: u64,
    certificate: &[u8; 32],
) -> Result<Option<(Address, Vec<u8>)>, ChainError> {
    use alloy::providers::Provider;
    use alloy::sol_types::SolEvent;
    let latest = provider.get_block_number().await.map_err(ChainError::rpc)?;
    let mut account = None;
    let mut next = from_block;
    while next <= latest {
        let to = latest.min(next.saturating_add(REGISTRATION_LOG_RANGE - 1));
        let filter = alloy::rpc::types::Filter::new()
            .address(registry)
            .event_signature(NodeRegistry::NodeRegistered::SIGNATURE_HASH)
            .from_block(next)
            .to_block(to);
        for log in provider.get_logs(&filter).await.map_err(ChainError::rpc)? {
            if let Ok(event) = log.log_decode::<NodeRegistry::NodeRegistered>() {
                if event.inner.data.certFingerprint.0 == *certificate {
                    account = Some(event.inner.data.institution);
                }
            }
        }
        next = to.saturating_add(1);
    }
    let Some(account) = account else {
        return Ok(None);
    };
    let now = registration(provider, registry, account).await?;
    Ok(now
        .node
        .filter(|n| now.approved && n.active && n.certificate == *certificate)
        .map(|n| (account, n.peer_id)))
}
