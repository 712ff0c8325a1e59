//! A researcher signs in to a node with an Ethereum wallet (Sign-In with Ethereum), sees
//! the grants that name it, and learns that records come through key release under
//! those grants, not through the operators' record search (the refusal is printed).
//!
//! ```sh
//! cargo run -p medmesh-examples --example researcher_sign_in
//! ```
//! `MEDMESH_URL` defaults to `http://127.0.0.1:8420`; `WALLET_KEY` (hex private key)
//! defaults to a fresh random wallet.

#![allow(missing_docs, clippy::print_stdout)]

use alloy_signer_local::PrivateKeySigner;
use anyhow::Result;
use medmesh_sdk::{Client, SearchQuery};

#[tokio::main]
async fn main() -> Result<()> {
    let url = std::env::var("MEDMESH_URL").unwrap_or_else(|_| "http://127.0.0.1:8420".into());
    let wallet: PrivateKeySigner = match std::env::var("WALLET_KEY") {
        Ok(hex) => hex.parse()?,
        Err(_) => PrivateKeySigner::random(),
    };
    let node = Client::new(&url)?;
    let (session, info) = node.sign_in(&wallet).await?;
    println!("signed in as {} until {}", info.address, info.expires_at);
    let me = session.whoami().await?;
    println!("the node sees: {} {}", me.kind, me.id);
    match session.grants(None, None).await {
        Ok(grants) => println!("{} grant(s) name this wallet", grants.len()),
        Err(e) => println!("grants unavailable: {e}"),
    }
    match session.search(&SearchQuery::default()).await {
        Ok(page) => println!("{} record(s) visible", page.records.len()),
        Err(e) => println!("record search refused: {e}"),
    }
    Ok(())
}
