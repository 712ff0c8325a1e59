//! The OpenAPI 3.1 document, generated from the handlers' annotations.

use std::sync::OnceLock;

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::routes::{
    access, audit, auth, datasets, events, grants, network, records, system, telemetry,
};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "medmesh node API",
        description = "Local HTTP API of a medmesh node: encrypted medical records, keys, audit log, events, wallet sign-in. Errors are RFC 9457 problem+json.",
        license(name = "Apache-2.0")
    ),
    paths(
        system::health,
        system::metrics,
        records::upload,
        records::search,
        records::info,
        records::download,
        records::remove,
        access::link,
        access::challenge,
        access::request_key,
        grants::chain_info,
        grants::list,
        grants::relay_grant,
        grants::relay_revoke,
        system::institution_key,
        audit::page,
        audit::verify,
        events::stream,
        auth::nonce,
        auth::siwe,
        auth::whoami,
        system::gc,
        system::check,
        system::create_token,
        system::list_tokens,
        system::revoke_token,
        network::status,
        network::dial,
        network::fetch,
        network::replication,
        network::replicate,
        telemetry::register,
        telemetry::list,
        telemetry::revoke,
        telemetry::readings,
        telemetry::alerts,
        telemetry::acknowledge,
        telemetry::status,
        datasets::preview,
        datasets::set_budget,
        datasets::budget,
        datasets::count,
    ),
    modifiers(&BearerAuth),
    tags(
        (name = "records", description = "Encrypted records: upload, search, download, delete"),
        (name = "grants", description = "Consent grants seen on chain; relaying signed grants and revocations"),
        (name = "access", description = "Consent links and key release under on-chain grants"),
        (name = "keys", description = "The institution's post-quantum certificate"),
        (name = "audit", description = "The hash-chained audit log"),
        (name = "events", description = "The node's events as Server-Sent Events"),
        (name = "auth", description = "Sign-In with Ethereum (EIP-4361) and identity"),
        (name = "admin", description = "Operator administration (admin tokens)"),
        (name = "network", description = "Peers, fetching records from them, replicas"),
        (name = "system", description = "Health and metrics"),
        (name = "devices", description = "Medical devices, their readings (MQTT telemetry) and clinical alerts"),
        (name = "datasets", description = "Research datasets: anonymization previews (Safe Harbor, optimal k-anonymity / l-diversity / t-closeness) and differentially private counts within a budget"),
    )
)]
struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "An operator API token (`mm_…`, from `medmesh token create`) or a wallet session (`mms_…`, from POST /v1/auth/siwe)",
                    ))
                    .build(),
            ),
        );
    }
}

/// The OpenAPI document as JSON (built once).
pub fn document_json() -> &'static str {
    static DOC: OnceLock<String> = OnceLock::new();
    DOC.get_or_init(|| {
        let mut doc = ApiDoc::openapi();
        doc.info.version = env!("CARGO_PKG_VERSION").to_string();
        doc.to_pretty_json()
            .expect("the OpenAPI document serializes")
    })
}
