//! `GET /v1/events`: the node's event bus as Server-Sent Events. Who sees what, kind
//! filtering, numbering and lag notices are the service layer's
//! ([`medmesh_service::NodeServices::subscribe_events`]); this maps a caller to an
//! audience and deliveries to SSE frames.

use std::collections::BTreeSet;
use std::time::Duration;

use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::stream::unfold;
use medmesh_service::{Audience, Delivery};
use medmesh_store::TokenScope;
use serde::Deserialize;
use utoipa::IntoParams;

use super::ApiQuery;
use crate::auth::Principal;
use crate::error::{ApiError, Problem};
use crate::state::{AppState, WALLET_STREAMS};

/// A comment line this often keeps proxies and clients from closing a quiet stream, and
/// finds clients that went away.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// The SSE event name of a lag notice (not a node event kind).
const LAGGED: &str = "lagged";

/// Which events to stream.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct EventParams {
    /// Only events of these kinds, comma-separated (`record_stored,key_released`);
    /// every kind when absent. An unknown kind is a 400 that lists the kinds.
    pub kind: Option<String>,
}

/// Stream the node's events (Server-Sent Events).
///
/// Each SSE event has `event:` = the kind (`record_stored`, `key_released`…), `id:` =
/// its number in this stream, and `data:` = the event as JSON (with its `type`). An
/// operator token (scope `read`) sees every event; a wallet session sees only key
/// releases and refusals for records linked to its address, and break-glass accesses
/// opened on it and their closing. A client that reads too slowly gets an event
/// `lagged` with data `{"missed": N}` and the stream continues. A comment line comes
/// every 15 s when nothing else does.
#[utoipa::path(
    get,
    path = "/v1/events",
    tag = "events",
    params(EventParams),
    responses(
        (status = 200, description = "An endless stream of events", body = String, content_type = "text/event-stream"),
        (status = 400, description = "Unknown event kind (the detail lists the kinds)", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Not authenticated", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not allowed", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "This wallet holds as many event streams as it may", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Too many event streams open on this node; retry later", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn stream(
    State(state): State<AppState>,
    principal: Principal,
    ApiQuery(params): ApiQuery<EventParams>,
) -> Result<Response, ApiError> {
    let audience = match &principal {
        Principal::Operator { .. } => {
            // The scope that reads the audit log: the stream tells as much.
            principal
                .require(&state, TokenScope::Read, "/v1/events")
                .await?;
            Audience::Operator
        }
        Principal::Wallet { address } => Audience::Patient(*address),
    };
    let kinds = params.kind.as_deref().map(|list| {
        list.split(',')
            .map(str::trim)
            .filter(|k| !k.is_empty())
            .map(str::to_string)
            .collect::<BTreeSet<_>>()
    });
    let subscription = state.services().subscribe_events(audience, kinds)?;
    let full = || {
        ApiError::unavailable(
            "too-many-streams",
            format!(
                "this node already serves {} event streams, its limit; close one or retry later",
                state.config().max_event_streams
            ),
        )
    };
    // Wallets (anyone can sign in) get half the streams, and a few each.
    let wallet = match &principal {
        Principal::Wallet { address } => Some(WalletStream::open(&state, *address)?),
        Principal::Operator { .. } => None,
    };
    let Ok(permit) = state.inner.event_streams.clone().try_acquire_owned() else {
        return Err(full());
    };
    let permit = (permit, wallet);
    let closing = state.inner.closing.subscribe();
    // The permit travels with the stream: it is released when the client goes away
    // (the body is dropped) or the stream ends.
    let events = unfold(
        (subscription, closing, permit),
        |(mut subscription, mut closing, permit)| async move {
            // At shutdown the stream ends, so the server's graceful shutdown does not
            // wait its whole grace period for a client that never hangs up. (The value
            // is dropped here: a `watch::Ref` must not live across an await.)
            let shutdown = async {
                let _ = closing.wait_for(|now| *now).await;
            };
            let delivery = tokio::select! {
                () = shutdown => None,
                delivery = subscription.next() => delivery,
            };
            Some((frame(delivery?), (subscription, closing, permit)))
        },
    );
    Ok(Sse::new(events)
        .keep_alive(KeepAlive::new().interval(KEEP_ALIVE))
        .into_response())
}

/// A wallet's hold on one of the wallets' event streams; released when dropped.
struct WalletStream {
    _permit: tokio::sync::OwnedSemaphorePermit,
    address: alloy::primitives::Address,
    open: std::sync::Arc<
        std::sync::Mutex<std::collections::HashMap<alloy::primitives::Address, usize>>,
    >,
}

impl WalletStream {
    fn open(state: &AppState, address: alloy::primitives::Address) -> Result<Self, ApiError> {
        let open = state.inner.streams_per_wallet.clone();
        let mut counts = open.lock().unwrap_or_else(|e| e.into_inner());
        // This wallet's own limit first: it is the one the caller can act on.
        if counts.get(&address).copied().unwrap_or(0) >= WALLET_STREAMS {
            return Err(ApiError::new(
                axum::http::StatusCode::TOO_MANY_REQUESTS,
                "too-many-streams",
                format!("a wallet may hold {WALLET_STREAMS} event streams at once; close one"),
            ));
        }
        let Ok(permit) = state.inner.wallet_streams.clone().try_acquire_owned() else {
            return Err(ApiError::unavailable(
                "too-many-streams",
                "wallet sessions hold every event stream they may; retry later",
            ));
        };
        *counts.entry(address).or_default() += 1;
        drop(counts);
        Ok(Self {
            _permit: permit,
            address,
            open,
        })
    }
}

impl Drop for WalletStream {
    fn drop(&mut self) {
        let mut counts = self.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = counts.get_mut(&self.address) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&self.address);
            }
        }
    }
}

/// One delivery as an SSE event.
fn frame(delivery: Delivery) -> Result<Event, axum::Error> {
    match delivery {
        Delivery::Event { seq, event } => Event::default()
            .event(event.kind())
            .id(seq.to_string())
            .json_data(&event),
        Delivery::Lagged { seq, missed } => Event::default()
            .event(LAGGED)
            .id(seq.to_string())
            .json_data(serde_json::json!({ "missed": missed })),
    }
}
