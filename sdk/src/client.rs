//! The typed client: one method per endpoint.

use std::path::Path;

use alloy_signer::Signer;
use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use medmesh_api_types::{
    AlertView, AuditPage, AuditVerification, BudgetRequest, BudgetView, ChainInfo,
    ChallengeResponse, CheckResult, ConsentLinkRequest, ConsentLinkResponse, CountRequest,
    CountResponse, CreatedToken, DatasetPreview, DatasetPreviewRequest, DeviceInfo, DeviceRequest,
    DialRequest, Dialed, FetchReport, FetchRequest, GcResult, GrantEntry, Health, KeyRequestBody,
    KeyResponse, NetworkStatus, NonceResponse, Problem, ReadingView, RecordEntry, RecordInfo,
    RecordPage, RelayResponse, Removed, ReplicationRequest, ReplicationStatus, SessionResponse,
    SignInRequest, SignedGrant, SignedRevocation, TelemetryStatus, TokenRequest, TokenView,
    Transfer, WhoAmI,
};
use reqwest::{Method, RequestBuilder, Response};
use serde::de::DeserializeOwned;
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::{wallet, Error};

/// A connection to one node, optionally with a bearer token.
#[derive(Clone, Debug)]
pub struct Client {
    base: String,
    http: reqwest::Client,
    token: Option<String>,
}

/// Options of an upload.
#[derive(Clone, Debug, Default)]
pub struct UploadOptions {
    /// Media type; the node guesses it (FHIR, HL7 v2, DICOM) when `None`.
    pub content_type: Option<String>,
    /// Patient reference the record is about.
    pub patient: Option<String>,
}

/// Record search filters (all optional).
#[derive(Clone, Debug, Default)]
pub struct SearchQuery {
    /// Patient reference.
    pub patient: Option<String>,
    /// Media type.
    pub content_type: Option<String>,
    /// Created at or after (RFC 3339).
    pub since: Option<String>,
    /// Created before (RFC 3339).
    pub until: Option<String>,
    /// Page size (1–1000).
    pub limit: Option<usize>,
}

impl SearchQuery {
    fn pairs(&self) -> Vec<(&'static str, String)> {
        let mut q = Vec::new();
        let mut push = |k, v: &Option<String>| {
            if let Some(v) = v {
                q.push((k, v.clone()));
            }
        };
        push("patient", &self.patient);
        push("type", &self.content_type);
        push("since", &self.since);
        push("until", &self.until);
        if let Some(l) = self.limit {
            q.push(("limit", l.to_string()));
        }
        q
    }
}

impl Client {
    /// A client of the node at `base_url` (e.g. `http://127.0.0.1:8420`).
    pub fn new(base_url: &str) -> Result<Self, Error> {
        let base = base_url.trim_end_matches('/').to_string();
        if !(base.starts_with("http://") || base.starts_with("https://")) || base.len() < 8 {
            return Err(Error::InvalidUrl(base_url.to_string()));
        }
        Ok(Self {
            base,
            http: reqwest::Client::new(),
            token: None,
        })
    }

    /// The same client with a bearer token (operator `mm_…` or session `mms_…`).
    pub fn with_token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// The node's base URL.
    pub fn base_url(&self) -> &str {
        &self.base
    }

    fn request(&self, method: Method, path: &str) -> RequestBuilder {
        let req = self.http.request(method, format!("{}{path}", self.base));
        match &self.token {
            Some(t) => req.bearer_auth(t),
            None => req,
        }
    }

    async fn send(req: RequestBuilder) -> Result<Response, Error> {
        let resp = req.send().await?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        let problem = serde_json::from_str::<Problem>(&text).unwrap_or_else(|_| Problem {
            kind: "about:blank".into(),
            title: status.canonical_reason().unwrap_or("Error").into(),
            status: status.as_u16(),
            detail: text,
        });
        Err(Error::Api { problem })
    }

    async fn json<T: DeserializeOwned>(req: RequestBuilder) -> Result<T, Error> {
        Ok(Self::send(req).await?.json().await?)
    }

    /// `GET /health`.
    pub async fn health(&self) -> Result<Health, Error> {
        Self::json(self.request(Method::GET, "/health")).await
    }

    /// `GET /openapi.json`, as text.
    pub async fn openapi(&self) -> Result<String, Error> {
        Ok(Self::send(self.request(Method::GET, "/openapi.json"))
            .await?
            .text()
            .await?)
    }

    /// `POST /v1/records`: uploads a body (bytes, or a stream for large records).
    pub async fn upload(
        &self,
        body: impl Into<reqwest::Body>,
        options: UploadOptions,
    ) -> Result<RecordEntry, Error> {
        let mut req = self.request(Method::POST, "/v1/records").body(body);
        if let Some(p) = &options.patient {
            req = req.query(&[("patient", p)]);
        }
        if let Some(ct) = &options.content_type {
            req = req.header(reqwest::header::CONTENT_TYPE, ct);
        }
        Self::json(req).await
    }

    /// Uploads a file, streaming it (memory use does not grow with its size).
    pub async fn upload_file(
        &self,
        path: &Path,
        options: UploadOptions,
    ) -> Result<RecordEntry, Error> {
        let file = tokio::fs::File::open(path)
            .await
            .map_err(|source| Error::Io {
                context: format!("cannot open {}", path.display()),
                source,
            })?;
        let stream = futures_util::stream::unfold(file, |mut file| async move {
            let mut buf = vec![0u8; 256 << 10];
            match file.read(&mut buf).await {
                Ok(0) => None,
                Ok(n) => {
                    buf.truncate(n);
                    Some((Ok::<_, std::io::Error>(Bytes::from(buf)), file))
                }
                Err(e) => Some((Err(e), file)),
            }
        });
        self.upload(reqwest::Body::wrap_stream(stream), options)
            .await
    }

    /// `GET /v1/records/{id}/content` as a stream of verified plaintext pieces, with
    /// the announced length. Check the total against it (or use [`Client::download_to`]).
    pub async fn download_stream(
        &self,
        id: &str,
    ) -> Result<(u64, impl Stream<Item = Result<Bytes, Error>>), Error> {
        let resp =
            Self::send(self.request(Method::GET, &format!("/v1/records/{id}/content"))).await?;
        let length = resp.content_length().unwrap_or(0);
        Ok((length, resp.bytes_stream().map(|r| r.map_err(Error::from))))
    }

    /// Downloads a record into `out`; fails with [`Error::Truncated`] if the node cut
    /// the transfer (e.g. a chunk failed verification). Returns the size.
    pub async fn download_to(
        &self,
        id: &str,
        out: &mut (impl AsyncWrite + Unpin),
    ) -> Result<u64, Error> {
        let (expected, stream) = self.download_stream(id).await?;
        let mut stream = std::pin::pin!(stream);
        let mut got = 0u64;
        while let Some(piece) = stream.next().await {
            let piece = match piece {
                Ok(p) => p,
                Err(_) => return Err(Error::Truncated { expected, got }),
            };
            got += piece.len() as u64;
            out.write_all(&piece).await.map_err(|source| Error::Io {
                context: "writing the download".into(),
                source,
            })?;
        }
        out.flush().await.map_err(|source| Error::Io {
            context: "writing the download".into(),
            source,
        })?;
        if got != expected {
            return Err(Error::Truncated { expected, got });
        }
        Ok(got)
    }

    /// Downloads a record into memory (for small records).
    pub async fn download(&self, id: &str) -> Result<Vec<u8>, Error> {
        let mut out = Vec::new();
        self.download_to(id, &mut out).await?;
        Ok(out)
    }

    /// `GET /v1/records/{id}`.
    pub async fn record(&self, id: &str) -> Result<RecordInfo, Error> {
        Self::json(self.request(Method::GET, &format!("/v1/records/{id}"))).await
    }

    /// `GET /v1/records`: one page.
    pub async fn search(&self, query: &SearchQuery) -> Result<RecordPage, Error> {
        Self::json(
            self.request(Method::GET, "/v1/records")
                .query(&query.pairs()),
        )
        .await
    }

    /// Every record matching `query`, following the pages.
    pub async fn search_all(&self, query: &SearchQuery) -> Result<Vec<RecordEntry>, Error> {
        let mut query = query.clone();
        let mut all = Vec::new();
        loop {
            let page = self.search(&query).await?;
            all.extend(page.records);
            match page.next_since {
                Some(next) => query.since = Some(next),
                None => return Ok(all),
            }
        }
    }

    /// `DELETE /v1/records/{id}`.
    pub async fn delete(&self, id: &str) -> Result<Removed, Error> {
        Self::json(self.request(Method::DELETE, &format!("/v1/records/{id}"))).await
    }

    /// `GET /v1/keys/institution`: the armored certificate.
    pub async fn institution_certificate(&self) -> Result<String, Error> {
        Ok(
            Self::send(self.request(Method::GET, "/v1/keys/institution"))
                .await?
                .text()
                .await?,
        )
    }

    /// `GET /v1/audit`.
    pub async fn audit(&self, from: u64, limit: usize) -> Result<AuditPage, Error> {
        Self::json(
            self.request(Method::GET, "/v1/audit")
                .query(&[("from", from), ("limit", limit as u64)]),
        )
        .await
    }

    /// `GET /v1/audit/verify`.
    pub async fn audit_verify(&self) -> Result<AuditVerification, Error> {
        Self::json(self.request(Method::GET, "/v1/audit/verify")).await
    }

    /// `GET /v1/auth/whoami`.
    pub async fn whoami(&self) -> Result<WhoAmI, Error> {
        Self::json(self.request(Method::GET, "/v1/auth/whoami")).await
    }

    /// `POST /v1/auth/nonce`.
    pub async fn nonce(&self) -> Result<NonceResponse, Error> {
        Self::json(self.request(Method::POST, "/v1/auth/nonce")).await
    }

    /// `POST /v1/auth/siwe` with an already signed message.
    pub async fn sign_in_with(
        &self,
        message: &str,
        signature: &str,
    ) -> Result<SessionResponse, Error> {
        let body = SignInRequest {
            message: message.to_string(),
            signature: signature.to_string(),
        };
        Self::json(self.request(Method::POST, "/v1/auth/siwe").json(&body)).await
    }

    /// Signs in with a wallet: fetches a nonce, builds and signs the SIWE message, and
    /// returns a client holding the session token.
    pub async fn sign_in(
        &self,
        signer: &(impl Signer + Sync),
    ) -> Result<(Client, SessionResponse), Error> {
        let nonce = self.nonce().await?;
        let message = wallet::siwe_message(
            &nonce.domain,
            &self.base,
            signer.address(),
            nonce.chain_id,
            &nonce.nonce,
            time::Duration::hours(1),
        );
        let signature = wallet::sign_siwe(signer, &message).await?;
        let session = self.sign_in_with(&message.to_string(), &signature).await?;
        Ok((self.clone().with_token(session.token.clone()), session))
    }

    /// `POST /v1/admin/tokens`.
    pub async fn create_token(&self, name: &str, scope: &str) -> Result<CreatedToken, Error> {
        let body = TokenRequest {
            name: name.into(),
            scope: scope.into(),
        };
        Self::json(self.request(Method::POST, "/v1/admin/tokens").json(&body)).await
    }

    /// `GET /v1/admin/tokens`.
    pub async fn list_tokens(&self) -> Result<Vec<TokenView>, Error> {
        Self::json(self.request(Method::GET, "/v1/admin/tokens")).await
    }

    /// `DELETE /v1/admin/tokens/{id}`.
    pub async fn revoke_token(&self, id: &str) -> Result<(), Error> {
        Self::send(self.request(Method::DELETE, &format!("/v1/admin/tokens/{id}"))).await?;
        Ok(())
    }

    /// `POST /v1/datasets/preview`: anonymizes a table (CSV, or this institution's
    /// records) under a policy, storing nothing: the report and a sample.
    pub async fn preview_dataset(
        &self,
        request: &DatasetPreviewRequest,
    ) -> Result<DatasetPreview, Error> {
        Self::json(
            self.request(Method::POST, "/v1/datasets/preview")
                .json(request),
        )
        .await
    }

    /// `PUT /v1/datasets/{id}/budget`: sets a dataset's privacy budget, once (admin).
    pub async fn set_dataset_budget(
        &self,
        dataset: &str,
        budget: &BudgetRequest,
    ) -> Result<BudgetView, Error> {
        Self::json(
            self.request(Method::PUT, &format!("/v1/datasets/{dataset}/budget"))
                .json(budget),
        )
        .await
    }

    /// `GET /v1/datasets/{id}/budget`.
    pub async fn dataset_budget(&self, dataset: &str) -> Result<BudgetView, Error> {
        Self::json(self.request(Method::GET, &format!("/v1/datasets/{dataset}/budget"))).await
    }

    /// `POST /v1/datasets/{id}/counts`: a differentially private count, charged to the
    /// dataset's budget.
    pub async fn dataset_count(
        &self,
        dataset: &str,
        query: &CountRequest,
    ) -> Result<CountResponse, Error> {
        Self::json(
            self.request(Method::POST, &format!("/v1/datasets/{dataset}/counts"))
                .json(query),
        )
        .await
    }

    /// `POST /v1/devices`: registers a medical device (admin token).
    pub async fn register_device(&self, device: &DeviceRequest) -> Result<DeviceInfo, Error> {
        Self::json(self.request(Method::POST, "/v1/devices").json(device)).await
    }

    /// `GET /v1/devices`.
    pub async fn devices(&self) -> Result<Vec<DeviceInfo>, Error> {
        Self::json(self.request(Method::GET, "/v1/devices")).await
    }

    /// `DELETE /v1/devices/{id}`: revokes a device.
    pub async fn revoke_device(&self, id: &str) -> Result<DeviceInfo, Error> {
        Self::json(self.request(Method::DELETE, &format!("/v1/devices/{id}"))).await
    }

    /// `GET /v1/readings`: a patient's readings measured in `[from, to)` (RFC 3339).
    pub async fn readings(
        &self,
        patient: &str,
        from: &str,
        to: &str,
    ) -> Result<Vec<ReadingView>, Error> {
        Self::json(self.request(Method::GET, "/v1/readings").query(&[
            ("patient", patient),
            ("from", from),
            ("to", to),
        ]))
        .await
    }

    /// `GET /v1/alerts`: the alerts open now.
    pub async fn alerts(&self) -> Result<Vec<AlertView>, Error> {
        Self::json(self.request(Method::GET, "/v1/alerts")).await
    }

    /// `POST /v1/alerts/{id}/ack`.
    pub async fn acknowledge_alert(&self, id: &str) -> Result<AlertView, Error> {
        Self::json(self.request(Method::POST, &format!("/v1/alerts/{id}/ack"))).await
    }

    /// `GET /v1/telemetry`: the MQTT bridge's link and counters.
    pub async fn telemetry(&self) -> Result<TelemetryStatus, Error> {
        Self::json(self.request(Method::GET, "/v1/telemetry")).await
    }

    /// `PUT /v1/records/{id}/consent-link`: links a record to the patient wallet that
    /// consents for it; the answer holds the scope the patient signs grants for.
    pub async fn link_patient(
        &self,
        id: &str,
        patient: &str,
    ) -> Result<ConsentLinkResponse, Error> {
        let body = ConsentLinkRequest {
            patient: patient.to_string(),
        };
        Self::json(
            self.request(Method::PUT, &format!("/v1/records/{id}/consent-link"))
                .json(&body),
        )
        .await
    }

    /// Asks for a record's data key as `grantee` (the signer), for a DUO `purpose`, to
    /// be wrapped for `certificate` (armored, as published on chain): fetches a
    /// challenge, signs the key request and sends it. This node answers for its own
    /// records and forwards to the owner's node (found on chain) otherwise.
    pub async fn request_key(
        &self,
        id: &str,
        purpose: u32,
        certificate: &str,
        grantee: &(impl Signer + Sync),
    ) -> Result<KeyResponse, Error> {
        self.request_key_from(id, purpose, certificate, grantee, None)
            .await
    }

    /// [`Client::request_key`] through this node, naming the record owner's node
    /// (`owner`, a PeerId) that the node asks over libp2p for the challenge and the key,
    /// which comes back wrapped for `certificate`. With `owner` `None` the node finds
    /// the owner's node on chain itself (or answers for its own records).
    pub async fn request_key_from(
        &self,
        id: &str,
        purpose: u32,
        certificate: &str,
        grantee: &(impl Signer + Sync),
        owner: Option<&str>,
    ) -> Result<KeyResponse, Error> {
        let mut query = vec![("record", id)];
        query.extend(owner.map(|o| ("owner", o)));
        let challenge: ChallengeResponse = Self::json(
            self.request(Method::POST, "/v1/access/challenge")
                .query(&query),
        )
        .await?;
        let record: medmesh_core::RecordId = id
            .parse()
            .map_err(|e: medmesh_core::CoreError| Error::Wallet(e.to_string()))?;
        let message = medmesh_consent::key_request_message(
            &record,
            grantee.address(),
            purpose,
            &challenge.challenge,
        );
        let signature = grantee
            .sign_message(message.as_bytes())
            .await
            .map_err(|e| Error::Wallet(e.to_string()))?;
        let body = KeyRequestBody {
            grantee: grantee.address().to_string(),
            purpose,
            certificate: certificate.to_string(),
            challenge: challenge.challenge,
            signature: wallet::signature_hex(&signature),
            owner: owner.map(str::to_string),
        };
        Self::json(
            self.request(Method::POST, &format!("/v1/records/{id}/key"))
                .json(&body),
        )
        .await
    }

    /// `GET /v1/chain`: chain id and contract addresses (for EIP-712 domains).
    pub async fn chain_info(&self) -> Result<ChainInfo, Error> {
        Self::json(self.request(Method::GET, "/v1/chain")).await
    }

    /// `GET /v1/grants`, filtered by patient and/or grantee address.
    pub async fn grants(
        &self,
        patient: Option<&str>,
        grantee: Option<&str>,
    ) -> Result<Vec<GrantEntry>, Error> {
        let mut query = Vec::new();
        if let Some(p) = patient {
            query.push(("patient", p));
        }
        if let Some(g) = grantee {
            query.push(("grantee", g));
        }
        Self::json(self.request(Method::GET, "/v1/grants").query(&query)).await
    }

    /// `POST /v1/grants`: relays a grant the patient signed ([`crate::wallet::sign_grant`]).
    pub async fn relay_grant(&self, grant: &SignedGrant) -> Result<RelayResponse, Error> {
        Self::json(self.request(Method::POST, "/v1/grants").json(grant)).await
    }

    /// `POST /v1/grants/revoke`: relays a signed revocation.
    pub async fn relay_revoke(
        &self,
        revocation: &SignedRevocation,
    ) -> Result<RelayResponse, Error> {
        Self::json(
            self.request(Method::POST, "/v1/grants/revoke")
                .json(revocation),
        )
        .await
    }

    /// `POST /v1/admin/check`: the store's consistency check.
    pub async fn check(&self) -> Result<CheckResult, Error> {
        Self::json(self.request(Method::POST, "/v1/admin/check")).await
    }

    /// `GET /v1/network`: this node's PeerId, addresses and peers.
    pub async fn network(&self) -> Result<NetworkStatus, Error> {
        Self::json(self.request(Method::GET, "/v1/network")).await
    }

    /// `POST /v1/network/dial` (admin).
    pub async fn dial(&self, address: &str) -> Result<Dialed, Error> {
        let body = DialRequest {
            address: address.to_string(),
        };
        Self::json(self.request(Method::POST, "/v1/network/dial").json(&body)).await
    }

    /// `POST /v1/records/{id}/fetch`: fetch a record from peers into the node.
    pub async fn fetch_record(
        &self,
        id: &str,
        providers: &[String],
        transfer: Transfer,
    ) -> Result<FetchReport, Error> {
        let body = FetchRequest {
            providers: providers.to_vec(),
            transfer,
            batch: None,
        };
        self.fetch_record_with(id, &body).await
    }

    /// `POST /v1/records/{id}/fetch` with every option.
    pub async fn fetch_record_with(
        &self,
        id: &str,
        body: &FetchRequest,
    ) -> Result<FetchReport, Error> {
        Self::json(
            self.request(Method::POST, &format!("/v1/records/{id}/fetch"))
                .json(body),
        )
        .await
    }

    /// `GET /v1/records/{id}/replication`.
    pub async fn replication(&self, id: &str) -> Result<ReplicationStatus, Error> {
        Self::json(self.request(Method::GET, &format!("/v1/records/{id}/replication"))).await
    }

    /// `PUT /v1/records/{id}/replication`: keep `copies` replicas among `candidates`.
    pub async fn replicate(
        &self,
        id: &str,
        copies: u32,
        candidates: &[String],
    ) -> Result<ReplicationStatus, Error> {
        let body = ReplicationRequest {
            copies,
            candidates: candidates.to_vec(),
        };
        Self::json(
            self.request(Method::PUT, &format!("/v1/records/{id}/replication"))
                .json(&body),
        )
        .await
    }

    /// `POST /v1/admin/gc`.
    pub async fn gc(&self) -> Result<GcResult, Error> {
        Self::json(self.request(Method::POST, "/v1/admin/gc")).await
    }
}
