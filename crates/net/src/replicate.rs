//! Replication: the owner of a record asks chosen peers to hold a copy; each admitted
//! peer fetches the record (from the owner and any other provider) and answers once it
//! is stored. A repair pass re-asks the peers that should hold copies and, when one is
//! gone or has lost its copy, asks the next candidate instead.

use std::time::Duration;

use futures::StreamExt;
use libp2p::{PeerId, StreamProtocol};
use medmesh_core::RecordId;
use medmesh_store::{Replication, Store};
use serde::{Deserialize, Serialize};

use crate::fetch::{FetchOptions, FetchReport};
use crate::wire::{read_json, write_json};
use crate::{NetError, Network};

/// The replication protocol id.
pub const PROTOCOL: StreamProtocol = StreamProtocol::new("/medmesh/replicate/1.0.0");

/// How long a peer may take to fetch a record it is asked to hold.
const REPLICA_TIMEOUT: Duration = Duration::from_secs(3600);

#[derive(Debug, Serialize, Deserialize)]
struct Request {
    root: String,
    #[serde(default)]
    institution: Option<String>,
}

type Reply = crate::wire::Reply<FetchReport>;

/// The outcome of asking one peer to hold a replica.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ReplicaOutcome {
    /// The peer asked.
    pub peer: String,
    /// Whether it now holds the record.
    pub ok: bool,
    /// Why not, if not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Blocks it had to fetch (0 when it already held them all).
    pub blocks_fetched: u64,
}

pub(crate) fn serve(network: &Network) -> Result<(), NetError> {
    let mut incoming = network
        .inner
        .control
        .clone()
        .accept(PROTOCOL)
        .map_err(|e| NetError::Config(format!("{PROTOCOL}: {e}")))?;
    let network = network.clone();
    tokio::spawn(async move {
        while let Some((peer, mut stream)) = incoming.next().await {
            let network = network.clone();
            tokio::spawn(async move {
                let reply =
                    match crate::wire::within_idle(read_json::<_, Request>(&mut stream)).await {
                        Ok(request) => network.hold_replica(peer, request).await,
                        Err(e) => Reply::refused(format!("unreadable request: {e}")),
                    };
                let _ = write_json(&mut stream, &reply).await;
            });
        }
    });
    Ok(())
}

impl Network {
    async fn hold_replica(&self, peer: PeerId, request: Request) -> Reply {
        if let Err(reason) = self
            .inner
            .policy
            .may_replicate(peer, request.institution.as_deref())
            .await
        {
            tracing::warn!(%peer, reason, "replication request refused");
            return Reply::refused(format!("not authorized: {reason}"));
        }
        let root: RecordId = match request.root.parse() {
            Ok(root) => root,
            Err(e) => return Reply::refused(format!("`{}` is not a record id: {e}", request.root)),
        };
        let options = FetchOptions {
            providers: vec![peer],
            ..FetchOptions::default()
        };
        match self
            .fetch_record(root, options, std::sync::Arc::new(|_| {}))
            .await
        {
            Ok(report) => {
                tracing::info!(%peer, record = %root, fetched = report.blocks_fetched, "holding a replica");
                Reply::ok(Some(report))
            }
            Err(e) => Reply::refused(e.to_string()),
        }
    }

    /// Asks `peer` to hold a copy of `root` (which it fetches from us or any provider).
    pub async fn request_replica(&self, peer: PeerId, root: &RecordId) -> ReplicaOutcome {
        let outcome = async {
            let mut control = self.inner.control.clone();
            let mut stream = crate::wire::open_stream(&mut control, peer, PROTOCOL)
                .await
                .map_err(|e| e.to_string())?;
            let request = Request {
                root: root.to_string(),
                institution: self.inner.institution.clone(),
            };
            write_json(&mut stream, &request)
                .await
                .map_err(|e| e.to_string())?;
            let reply: Reply = tokio::time::timeout(REPLICA_TIMEOUT, read_json(&mut stream))
                .await
                .map_err(|_| "no answer within an hour".to_string())?
                .map_err(|e| format!("no answer: {e}"))?;
            Ok::<_, String>(reply)
        }
        .await;
        match outcome {
            Ok(Reply {
                ok: true,
                result: report,
                ..
            }) => ReplicaOutcome {
                peer: peer.to_string(),
                ok: true,
                error: None,
                blocks_fetched: report.map_or(0, |r| r.blocks_fetched),
            },
            Ok(Reply { error, .. }) => ReplicaOutcome {
                peer: peer.to_string(),
                ok: false,
                error: Some(error.unwrap_or_else(|| "refused without a reason".into())),
                blocks_fetched: 0,
            },
            Err(error) => ReplicaOutcome {
                peer: peer.to_string(),
                ok: false,
                error: Some(error),
                blocks_fetched: 0,
            },
        }
    }

    /// Brings record `id` to `replication.copies` holders: the current holders are
    /// asked first, then the other candidates in order. Saves the new holders and
    /// returns every answer.
    pub async fn replicate(
        &self,
        store: &Store,
        id: &RecordId,
        replication: &Replication,
    ) -> Result<Vec<ReplicaOutcome>, NetError> {
        let mut order: Vec<&String> = replication.holders.iter().collect();
        for c in &replication.candidates {
            if !order.contains(&c) {
                order.push(c);
            }
        }
        let mut outcomes = Vec::new();
        let mut holders = Vec::new();
        for candidate in order {
            if holders.len() >= replication.copies as usize {
                break;
            }
            let outcome = match candidate.parse::<PeerId>() {
                Ok(peer) => self.request_replica(peer, id).await,
                Err(e) => ReplicaOutcome {
                    peer: candidate.clone(),
                    ok: false,
                    error: Some(format!("not a peer id: {e}")),
                    blocks_fetched: 0,
                },
            };
            if outcome.ok {
                holders.push(candidate.clone());
            } else {
                tracing::warn!(record = %id, peer = %candidate, error = ?outcome.error, "replica not placed");
            }
            outcomes.push(outcome);
        }
        if holders.len() < replication.copies as usize {
            tracing::warn!(record = %id, have = holders.len(), want = replication.copies, "fewer replicas than asked");
        }
        if holders != replication.holders {
            let updated = Replication {
                holders,
                ..replication.clone()
            };
            store
                .set_replication(id, &updated)
                .map_err(|e| NetError::Store(e.to_string()))?;
        }
        Ok(outcomes)
    }

    /// One repair pass over every record with replication settings.
    pub async fn repair(&self, store: &Store) -> Result<usize, NetError> {
        let records = store
            .replications()
            .map_err(|e| NetError::Store(e.to_string()))?;
        let mut short = 0;
        for (id, replication) in records {
            let outcomes = self.replicate(store, &id, &replication).await?;
            if outcomes.iter().filter(|o| o.ok).count() < replication.copies as usize {
                short += 1;
            }
        }
        Ok(short)
    }

    /// Runs [`Network::repair`] every `repair_interval` until the network stops.
    pub fn spawn_repair(&self, store: std::sync::Arc<Store>) {
        let network = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(network.inner.config.repair_interval());
            tick.tick().await;
            loop {
                tick.tick().await;
                match network.repair(&store).await {
                    Ok(0) => {}
                    Ok(short) => {
                        tracing::warn!(records = short, "records below their replica count")
                    }
                    Err(NetError::Stopped) => return,
                    Err(e) => tracing::warn!(error = %e, "repair pass failed"),
                }
            }
        });
    }
}
