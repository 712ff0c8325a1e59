//! medmesh's local HTTP API (axum): records, keys, audit log, wallet sign-in,
//! administration, health and metrics, described by an OpenAPI 3.1 document served at
//! `/openapi.json` with an interactive page at `/docs`.
//!
//! A transport only: each handler extracts its input, calls one method of
//! [`medmesh_service::NodeServices`] and maps the answer; the request and response
//! bodies are `medmesh-api-types`, shared with the SDK.
//!
//! Every `/v1` request is authenticated (operator API token or wallet session) and
//! authorised; denials are audited without one disk write each. Errors are RFC 9457
//! problem+json. Uploads and downloads stream: a record never sits whole in memory.
//! Each client address and each authenticated caller gets a token bucket (429 with
//! `Retry-After` beyond it); requests that do not stream a record have a time limit;
//! connections are bounded in number and closed when idle or too slow. The node's
//! events stream as Server-Sent Events (`GET /v1/events`) to operators and, filtered,
//! to patients.

mod auth;
mod error;
mod metrics;
mod openapi;
mod ratelimit;
mod routes;
mod state;

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, DefaultBodyLimit, MatchedPath, Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put, MethodRouter};
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tower::ServiceExt;

pub use auth::Principal;
pub use error::{ApiError, Problem};
pub use medmesh_api_types::*;
pub use openapi::document_json;
pub use state::{ApiConfig, AppState};

use routes::{access, audit, datasets, events, grants, records, system, telemetry};

/// The whole API as an axum router.
pub fn router(state: AppState) -> Router {
    let bounded = |r: MethodRouter<AppState>| {
        r.layer(middleware::from_fn_with_state(state.clone(), time_limit))
    };
    Router::new()
        .route("/health", bounded(get(system::health)))
        .route("/metrics", bounded(get(system::metrics)))
        .route("/openapi.json", bounded(get(system::openapi)))
        .route("/docs", bounded(get(system::docs)))
        .route(
            "/v1/records",
            post(records::upload).merge(bounded(get(records::search))),
        )
        .route(
            "/v1/records/{id}",
            // Changes are not cut by the time limit: an answer must say what happened.
            bounded(get(records::info)).merge(delete(records::remove)),
        )
        .route("/v1/records/{id}/content", get(records::download))
        // A fetch can move gigabytes: no 30 s limit.
        .route("/v1/records/{id}/fetch", post(routes::network::fetch))
        .route(
            "/v1/records/{id}/replication",
            get(routes::network::replication).put(routes::network::replicate),
        )
        .route("/v1/network", bounded(get(routes::network::status)))
        .route("/v1/network/dial", bounded(post(routes::network::dial)))
        .route("/v1/records/{id}/consent-link", put(access::link))
        .route("/v1/records/{id}/key", bounded(post(access::request_key)))
        .route("/v1/access/challenge", bounded(post(access::challenge)))
        .route("/v1/chain", bounded(get(grants::chain_info)))
        .route(
            "/v1/grants",
            // A relay waits for its transaction (with deadlines of its own).
            bounded(get(grants::list)).merge(post(grants::relay_grant)),
        )
        .route("/v1/grants/revoke", post(grants::relay_revoke))
        .route(
            "/v1/keys/institution",
            bounded(get(system::institution_key)),
        )
        .route("/v1/audit", bounded(get(audit::page)))
        .route("/v1/audit/verify", bounded(get(audit::verify)))
        // Server-Sent Events last as long as the client stays: no request time limit
        // (their number is bounded instead, `max_event_streams`).
        .route("/v1/events", get(events::stream))
        .route("/v1/auth/nonce", bounded(post(routes::auth::nonce)))
        .route("/v1/auth/siwe", bounded(post(routes::auth::siwe)))
        .route("/v1/auth/whoami", bounded(get(routes::auth::whoami)))
        .route("/v1/admin/gc", post(system::gc))
        // A check reads every block: no request time limit.
        .route("/v1/admin/check", post(system::check))
        .route(
            "/v1/admin/tokens",
            bounded(get(system::list_tokens)).merge(post(system::create_token)),
        )
        .route("/v1/admin/tokens/{id}", delete(system::revoke_token))
        .route(
            "/v1/devices",
            bounded(get(telemetry::list)).merge(post(telemetry::register)),
        )
        .route("/v1/devices/{id}", delete(telemetry::revoke))
        .route("/v1/readings", bounded(get(telemetry::readings)))
        .route("/v1/alerts", bounded(get(telemetry::alerts)))
        .route("/v1/alerts/{id}/ack", post(telemetry::acknowledge))
        .route("/v1/telemetry", bounded(get(telemetry::status)))
        // A search over a large lattice takes its time: no request time limit.
        .route("/v1/datasets/preview", post(datasets::preview))
        .route(
            "/v1/datasets/{id}/budget",
            bounded(get(datasets::budget)).merge(put(datasets::set_budget)),
        )
        .route("/v1/datasets/{id}/counts", post(datasets::count))
        .fallback(|| async {
            ApiError::not_found("no such endpoint; the API is described at /openapi.json and /docs")
        })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                axum::http::StatusCode::METHOD_NOT_ALLOWED,
                "method-not-allowed",
                "this endpoint does not take that method; see /openapi.json",
            )
        })
        .layer(DefaultBodyLimit::max(state.config().max_json_bytes))
        .layer(middleware::from_fn_with_state(state.clone(), rate_limit))
        .layer(middleware::from_fn_with_state(state.clone(), observe))
        .with_state(state)
}

/// How long in-flight requests get to finish at shutdown.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Serves the API on `listener` until `shutdown` completes.
///
/// At most `max_connections` connections are served at once (more wait in the
/// kernel's backlog, so a flood of idle sockets cannot exhaust file descriptors), and a
/// connection that does not deliver a complete request header within
/// `header_timeout` — idle, or trickling bytes — is closed.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let config = state.config().clone();
    let app = router(state.clone());
    let slots = Arc::new(Semaphore::new(config.max_connections.max(1)));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            permit = slots.clone().acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => break,
            },
            () = &mut shutdown => break,
        };
        let (stream, remote) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accepting an API connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let app = app.clone();
        let service =
            hyper::service::service_fn(move |mut request: Request<hyper::body::Incoming>| {
                request.extensions_mut().insert(ConnectInfo(remote));
                app.clone().oneshot(request.map(axum::body::Body::new))
            });
        let mut http = hyper::server::conn::http1::Builder::new();
        http.timer(TokioTimer::new())
            .header_read_timeout(config.header_timeout)
            .keep_alive(true);
        let connection = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(%remote, error = %e, "API connection ended with an error");
            }
            drop(permit);
        });
    }
    drop(listener);
    // Event streams never finish by themselves: end them, so they do not hold the
    // graceful shutdown for its whole grace period.
    state.inner.closing.send_replace(true);
    if tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("some API requests were still running at shutdown");
    }
    state.services().denials().flush().await;
    Ok(())
}

/// Counts every answered request by route and status.
async fn observe(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let method = request.method().to_string();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |p| p.as_str().to_string());
    let start = Instant::now();
    let response = next.run(request).await;
    state
        .inner
        .metrics
        .observe(&method, &route, response.status().as_u16(), start.elapsed());
    response
}

/// One token bucket per client address, before anything else is looked at (the
/// authenticated caller's own bucket is checked when it is authenticated).
async fn rate_limit(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let key = auth::client_key_of(request.extensions());
    match state.inner.address_limiter.check(&key) {
        Ok(()) => next.run(request).await,
        Err(retry_after) => ApiError::rate_limited(retry_after).into_response(),
    }
}

/// Time limit for requests that do not stream a record.
async fn time_limit(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let limit = state.config().request_timeout;
    match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        Err(_) => ApiError::new(
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            "timeout",
            format!(
                "the request took longer than {} s; try again",
                limit.as_secs()
            ),
        )
        .into_response(),
    }
}
