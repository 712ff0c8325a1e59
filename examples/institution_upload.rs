//! An institution uploads a record through the HTTP API and reads it back.
//!
//! ```sh
//! medmesh node                      # prints the first admin token on first run
//! MEDMESH_TOKEN=mm_… cargo run -p medmesh-examples --example institution_upload -- \
//!     ../shared/data/fhir/synthea-bundle-a.json MRN-0042
//! ```
//! `MEDMESH_URL` defaults to `http://127.0.0.1:8420`; the token needs the `write` scope.

#![allow(missing_docs, clippy::print_stdout)]

use anyhow::{bail, Context, Result};
use medmesh_sdk::{Client, SearchQuery, UploadOptions};

#[tokio::main]
async fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let Some(file) = args.next() else {
        bail!("usage: institution_upload FILE [PATIENT_REF]");
    };
    let patient = args.next();
    let url = std::env::var("MEDMESH_URL").unwrap_or_else(|_| "http://127.0.0.1:8420".into());
    let token = std::env::var("MEDMESH_TOKEN")
        .context("set MEDMESH_TOKEN to an operator token with the write scope")?;
    let node = Client::new(&url)?.with_token(token);

    let created = node
        .upload_file(
            file.as_ref(),
            UploadOptions {
                patient: patient.clone(),
                ..Default::default()
            },
        )
        .await?;
    println!(
        "stored {} ({}, {} bytes)",
        created.id, created.meta.content_type, created.meta.size
    );

    let back = node.download(&created.id.to_string()).await?;
    anyhow::ensure!(
        back == std::fs::read(&file)?,
        "downloaded bytes differ from {file}"
    );
    println!("read back: identical");

    if let Some(patient) = patient {
        let records = node
            .search_all(&SearchQuery {
                patient: Some(patient.clone()),
                ..Default::default()
            })
            .await?;
        println!("{} record(s) about {patient}:", records.len());
        for r in records {
            println!("  {}  {}  {} bytes", r.id, r.meta.content_type, r.meta.size);
        }
    }
    Ok(())
}
