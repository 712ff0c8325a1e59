//! A `medmesh node` process with a `[[webhooks]]` endpoint: a record stored is POSTed,
//! signed; a node killed (SIGKILL) while the receiver has the request but has not
//! answered sends the same message, with the same `webhook-id`, after it restarts, and
//! then no more.

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::OpenOptionsExt;
use std::sync::mpsc;
use std::time::Duration;

use common::Proc;
use medmesh_service::webhooks::{verify, WebhookSecret};

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// One request the receiver got.
#[derive(Debug)]
struct Request {
    id: String,
    timestamp: String,
    signature: String,
    body: Vec<u8>,
}

/// Reads one HTTP/1.1 request with a `Content-Length` body.
fn read_request(stream: &TcpStream) -> Option<Request> {
    let mut reader = BufReader::new(stream.try_clone().ok()?);
    let mut line = String::new();
    if reader.read_line(&mut line).ok()? == 0 {
        return None;
    }
    let mut headers = HashMap::new();
    loop {
        line.clear();
        reader.read_line(&mut line).ok()?;
        let header = line.trim_end();
        if header.is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            headers.insert(name.trim().to_ascii_lowercase(), value.trim().to_string());
        }
    }
    let len: usize = headers.get("content-length")?.parse().ok()?;
    let mut body = vec![0; len];
    reader.read_exact(&mut body).ok()?;
    let header = |name: &str| headers.get(name).cloned().unwrap_or_default();
    Some(Request {
        id: header("webhook-id"),
        timestamp: header("webhook-timestamp"),
        signature: header("webhook-signature"),
        body,
    })
}

/// A receiver on a free local port that holds the first request without answering (the
/// node is mid-delivery) and answers 200 to the next ones. Every request goes to the
/// channel.
fn receiver() -> (u16, mpsc::Receiver<Request>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let Some(request) = read_request(&stream) else {
                continue;
            };
            if tx.send(request).is_err() {
                return;
            }
            if held.is_empty() {
                held.push(stream);
                continue;
            }
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
        }
    });
    (port, rx)
}

fn next(rx: &mpsc::Receiver<Request>, within: Duration, node: &Proc, what: &str) -> Request {
    rx.recv_timeout(within).unwrap_or_else(|_| {
        panic!(
            "no {what} within {within:?}; node log:\n{}",
            node.log_text()
        )
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_mid_delivery_redelivers_with_the_same_id() {
    let base = tempfile::tempdir().unwrap();
    let (port, requests) = receiver();
    let mut node = Proc::start_configured(base.path(), "hooked", |dir| {
        let mut secret = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(dir.join("ops.secret"))
            .unwrap();
        writeln!(secret, "{SECRET}").unwrap();
        let mut config = std::fs::OpenOptions::new()
            .append(true)
            .open(dir.join("medmesh.toml"))
            .unwrap();
        write!(
            config,
            "\n[[webhooks]]\nname = \"ops\"\nurl = \"http://127.0.0.1:{port}/hook\"\n\
             secret_file = \"ops.secret\"\nkinds = [\"record_stored\"]\n"
        )
        .unwrap();
    });

    let record = node
        .client()
        .upload(b"a record to be notified".to_vec(), Default::default())
        .await
        .unwrap();
    let first = next(&requests, Duration::from_secs(20), &node, "first delivery");

    // The receiver holds the request unanswered: the node is mid-delivery. SIGKILL.
    node.kill();
    node.run(&[]);
    let again = next(&requests, Duration::from_secs(30), &node, "redelivery");
    assert_eq!(again.id, first.id, "the same webhook-id after the restart");
    assert_eq!(again.body, first.body, "and the same body");
    assert!(first.id.starts_with("msg_"), "{}", first.id);

    let secret = WebhookSecret::parse(SECRET).unwrap();
    for r in [&first, &again] {
        let timestamp: i64 = r.timestamp.parse().expect("unix seconds");
        assert!(
            verify(&secret, &r.id, timestamp, &r.body, &r.signature),
            "bad signature: {r:?}"
        );
    }
    let body: serde_json::Value = serde_json::from_slice(&again.body).unwrap();
    assert_eq!(body["type"], "record_stored");
    assert_eq!(body["data"]["record"], record.id.to_string());

    // Answered 200 this time: delivered, so nothing more comes.
    assert!(
        requests.recv_timeout(Duration::from_secs(2)).is_err(),
        "a delivered message was sent again"
    );
    node.kill();
    let store = medmesh_store::Store::open(&node.dir.join("store")).unwrap();
    assert_eq!(store.outbox_len().unwrap(), 0, "the outbox is empty");
}
