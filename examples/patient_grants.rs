//! A patient grants a researcher access to one of their records, from their wallet,
//! without paying gas; the researcher gets the record's key; the patient revokes and the
//! researcher is refused. Runs against `medmesh node` on its embedded dev chain, whose
//! dev accounts stand in for the patient's and researcher's wallets.
//!
//! ```sh
//! medmesh node                                   # prints the first admin token
//! MEDMESH_TOKEN=mm_… cargo run -p medmesh-examples --example patient_grants
//! ```
//! `MEDMESH_URL` defaults to `http://127.0.0.1:8420`, `MEDMESH_CHAIN_URL` (the dev
//! chain's JSON-RPC) to `http://127.0.0.1:8545`.

#![allow(missing_docs, clippy::print_stdout)]

use alloy::network::EthereumWallet;
use alloy::providers::ProviderBuilder;
use anyhow::{Context, Result};
use medmesh_chain::bindings::{ConsentRegistry, NodeRegistry};
use medmesh_chain::devchain::dev_signers;
use medmesh_crypto::{Passphrase, SecretKeys};
use medmesh_sdk::{wallet, Client, UploadOptions};

#[tokio::main]
async fn main() -> Result<()> {
    let url = std::env::var("MEDMESH_URL").unwrap_or_else(|_| "http://127.0.0.1:8420".into());
    let chain_url =
        std::env::var("MEDMESH_CHAIN_URL").unwrap_or_else(|_| "http://127.0.0.1:8545".into());
    let token = std::env::var("MEDMESH_TOKEN")
        .context("set MEDMESH_TOKEN to an operator token with the write scope")?;
    let accounts = dev_signers();
    let (patient, researcher) = (accounts[2].clone(), accounts[3].clone());

    // The institution stores a (synthetic) record and links it to the patient's wallet.
    let institution = Client::new(&url)?.with_token(token);
    let record = institution
        .upload(
            b"HbA1c 6.1 % (synthetic lab result)".to_vec(),
            UploadOptions {
                content_type: Some("text/plain".into()),
                ..Default::default()
            },
        )
        .await?;
    let id = record.id.to_string();
    let link = institution
        .link_patient(&id, &patient.address().to_string())
        .await?;
    println!(
        "record {id} linked to patient {}; consent scope {}",
        patient.address(),
        link.scope
    );

    // The patient signs a grant in their wallet and has the node relay it.
    let (patient_session, _) = Client::new(&url)?.sign_in(&patient).await?;
    let info = patient_session.chain_info().await?;
    // The patient's next EIP-712 nonce, read from the contract.
    let chain = ProviderBuilder::new().connect_http(chain_url.parse()?);
    let nonce: u64 = ConsentRegistry::new(info.consent_registry.parse()?, &chain)
        .nonces(patient.address())
        .call()
        .await?
        .try_into()?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    let consent = wallet::Consent {
        patient: patient.address(),
        grantee: researcher.address(),
        kind: 0,
        scope: link.scope.parse()?,
        purpose: 42,
        nonce,
        deadline: now + 600,
    };
    let signed = wallet::sign_grant(&patient, &info, &consent, now + 3600).await?;
    let relayed = patient_session.relay_grant(&signed).await?;
    println!(
        "grant {} relayed in block {}",
        relayed.grant_id, relayed.block
    );

    // The researcher publishes the certificate it receives keys with, then asks.
    let researcher_keys = SecretKeys::generate(
        "Example Researcher",
        &Passphrase::new("example passphrase".into())?,
    )?;
    let certificate = researcher_keys.certificate()?;
    let researcher_chain = ProviderBuilder::new()
        .wallet(EthereumWallet::from(researcher.clone()))
        .connect_http(chain_url.parse()?);
    NodeRegistry::new(info.node_registry.parse()?, &researcher_chain)
        .publishKey(format!("0x{}", certificate.id()).parse()?)
        .send()
        .await?
        .get_receipt()
        .await?;
    let armored = String::from_utf8(certificate.to_armored()?)?;
    let researcher_client =
        Client::new(&url)?.with_token(std::env::var("MEDMESH_TOKEN").unwrap_or_default());
    let key = researcher_client
        .request_key(&id, 42, &armored, &researcher)
        .await?;
    println!(
        "key released under {} {} (wrapped for {})",
        key.access, key.access_id, key.recipient
    );

    // The patient revokes; the researcher is refused.
    let revocation = wallet::sign_revocation(
        &patient,
        &info,
        &wallet::Consent {
            nonce: consent.nonce + 1,
            ..consent
        },
    )
    .await?;
    patient_session.relay_revoke(&revocation).await?;
    match researcher_client
        .request_key(&id, 42, &armored, &researcher)
        .await
    {
        Ok(_) => anyhow::bail!("the key was released after the revocation"),
        Err(e) => println!("after revocation: {e}"),
    }
    Ok(())
}
