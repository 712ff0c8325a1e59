//! Device telemetry end to end: simulated devices publish signed SenML packs through
//! Mosquitto into a `medmesh node` process (encrypted storage), and the same messages
//! through Mosquitto alone (the ceiling), in one run.
//!
//! ```sh
//! cargo bench -p medmesh --bench telemetry -- [--seconds 60] [--devices 100] [--per-message 20]
//! ```
//!
//! `--seconds` × 60 000 readings (`--rate`) are signed first, then published by every
//! device as fast as the broker takes them (QoS 1, 100 in flight per device).
//!
//! Reports: readings per second accepted by the node (stored durably, loss counted),
//! publish-to-alert latency (p50/p99) of readings that trip a threshold rule, the node
//! process's CPU time per reading, and Mosquitto's own rate for the same messages with a
//! plain subscriber instead of the node. Needs Debian's `mosquitto`.

#![allow(clippy::print_stdout)]

use std::collections::HashMap;
use std::io::BufRead;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use medmesh_core::device_message::{encode_envelope, signed_bytes};
use medmesh_crypto::{DeviceAlgorithm, DeviceSigner};
use medmesh_testkit::free_port;
use medmesh_testkit::mqtt::Mosquitto;
use rumqttc::v5::mqttbytes::v5::Packet;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, MqttOptions};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

const PASSPHRASE: &str = "benchmark passphrase";
const KINDS: [(&str, &str, f64); 5] = [
    ("heart-rate", "/min", 72.0),
    ("spo2", "%", 97.0),
    ("respiration-rate", "/min", 15.0),
    ("systolic-bp", "mm[Hg]", 120.0),
    ("temperature", "Cel", 37.0),
];
/// Every this many messages, a device's pack carries a heart rate that trips the
/// benchmark's rule (the next pack clears it).
const SPIKE_EVERY: usize = 50;

struct Args {
    seconds: u64,
    devices: usize,
    per_message: usize,
    rate: u64,
}

fn args() -> Args {
    let mut a = Args {
        seconds: 60,
        devices: 100,
        per_message: 20,
        rate: 60_000,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut num = || it.next().and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        match flag.as_str() {
            "--seconds" => a.seconds = num().max(1),
            "--devices" => a.devices = num().clamp(1, 1000) as usize,
            "--per-message" => a.per_message = num().clamp(1, 500) as usize,
            "--rate" => a.rate = num().max(1),
            // cargo bench passes --bench
            _ => {}
        }
    }
    a
}

/// A message to publish: its device, bytes, and the time of its spike reading.
#[derive(Clone)]
struct Message {
    device: usize,
    payload: Vec<u8>,
    spike: Option<String>,
}

/// Every device's messages, signed (Falcon-512) before anything is timed. Reading times
/// rise within each device, so the alert rules see them in order.
fn build(a: &Args, signers: &[DeviceSigner]) -> Vec<Vec<Message>> {
    let total_readings = a.rate * a.seconds;
    let per_device = (total_readings as usize / a.per_message).div_ceil(a.devices);
    let base = OffsetDateTime::now_utc() - time::Duration::minutes(30);
    let base_ms = (base.unix_timestamp_nanos() / 1_000_000) as i64;
    let chunks: Vec<(usize, &DeviceSigner)> = signers.iter().enumerate().collect();
    std::thread::scope(|scope| {
        let handles: Vec<_> = chunks
            .chunks(chunks.len().div_ceil(2))
            .map(|part| {
                scope.spawn(move || {
                    part.iter()
                        .map(|(d, signer)| {
                            let id = format!("dev-{d}");
                            (0..per_device)
                                .map(|m| {
                                    let spike = m % SPIKE_EVERY == SPIKE_EVERY - 1;
                                    let mut spike_time = None;
                                    let records: Vec<String> = (0..a.per_message)
                                        .map(|j| {
                                            let ms = base_ms + ((m * a.per_message + j) as i64) * 2;
                                            let (name, unit, normal) = KINDS[j % KINDS.len()];
                                            let value = if spike && j == 0 {
                                                let t = OffsetDateTime::from_unix_timestamp_nanos(
                                                    i128::from(ms) * 1_000_000,
                                                )
                                                .unwrap();
                                                spike_time = Some(t.format(&Rfc3339).unwrap());
                                                260.0
                                            } else {
                                                normal
                                            };
                                            format!(
                                                r#"{{"n":"{name}","u":"{unit}","v":{value},"t":{}.{:03}}}"#,
                                                ms / 1000,
                                                ms % 1000
                                            )
                                        })
                                        .collect();
                                    let body = format!("[{}]", records.join(","));
                                    let counter = m as u64 + 1;
                                    let sig = signer.sign(&signed_bytes(
                                        &id,
                                        counter,
                                        None,
                                        false,
                                        body.as_bytes(),
                                    ));
                                    Message {
                                        device: *d,
                                        payload: encode_envelope(counter, &body, &sig, None, false)
                                            .into_bytes(),
                                        spike: spike_time,
                                    }
                                })
                                .collect::<Vec<_>>()
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    })
}

/// Publishes every device's messages on its own client (QoS 1, up to 100 in flight
/// each) as fast as the broker takes them; returns PUBACKs received and, per spike,
/// when it was published.
async fn publish(
    port: u16,
    topic_prefix: &str,
    messages: Vec<Vec<Message>>,
    sent_at: Arc<Mutex<HashMap<(usize, String), Instant>>>,
    pace: Option<Duration>,
) -> u64 {
    let acked = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for device_messages in messages {
        let Some(first) = device_messages.first() else {
            continue;
        };
        let d = first.device;
        let mut options =
            MqttOptions::new(format!("bench-dev-{d}-{}", free_port()), "127.0.0.1", port);
        options
            .set_outgoing_inflight_upper_limit(100)
            .set_max_packet_size(Some(512 * 1024));
        let (client, mut eventloop) = AsyncClient::new(options, 100);
        let want = device_messages.len() as u64;
        let counted = acked.clone();
        let poller = tokio::spawn(async move {
            let mut mine = 0;
            while mine < want {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::PubAck(_))) => {
                        mine += 1;
                        counted.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(_) => {}
                    Err(e) => panic!("publisher connection: {e}"),
                }
            }
        });
        let topic = format!("{topic_prefix}/dev-{d}/obs");
        let sent_at = sent_at.clone();
        tasks.push(tokio::spawn(async move {
            // Paced: one message per device every `pace`, the devices spread over it.
            let mut tick = pace.map(|every| {
                let offset = every.mul_f64(d as f64 / 100.0 % 1.0);
                let mut t = tokio::time::interval_at(tokio::time::Instant::now() + offset, every);
                t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
                t
            });
            for m in device_messages {
                if let Some(t) = tick.as_mut() {
                    t.tick().await;
                }
                if let Some(t) = m.spike {
                    sent_at.lock().unwrap().insert((d, t), Instant::now());
                }
                client
                    .publish(&topic, QoS::AtLeastOnce, false, m.payload)
                    .await
                    .unwrap();
            }
            poller.await.unwrap();
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    acked.load(Ordering::Relaxed)
}

/// A plain subscriber (auto-acknowledging) counting what arrives: the ceiling.
async fn subscriber(port: u16, filter: &str) -> (Arc<AtomicU64>, Arc<Mutex<Option<Instant>>>) {
    let mut options = MqttOptions::new(format!("bench-sub-{}", free_port()), "127.0.0.1", port);
    options.set_max_packet_size(Some(512 * 1024));
    let (client, mut eventloop) = AsyncClient::new(options, 100);
    client.subscribe(filter, QoS::AtLeastOnce).await.unwrap();
    let count = Arc::new(AtomicU64::new(0));
    let last = Arc::new(Mutex::new(None));
    let (c, l) = (count.clone(), last.clone());
    let (ready_tx, ready) = tokio::sync::oneshot::channel();
    let mut ready_tx = Some(ready_tx);
    tokio::spawn(async move {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    if let Some(tx) = ready_tx.take() {
                        let _ = tx.send(());
                    }
                }
                Ok(Event::Incoming(Packet::Publish(_))) => {
                    c.fetch_add(1, Ordering::Relaxed);
                    *l.lock().unwrap() = Some(Instant::now());
                }
                Ok(_) => {}
                Err(_) => return,
            }
        }
    });
    let _ = ready.await;
    (count, last)
}

fn medmesh(dir: &std::path::Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_medmesh"));
    cmd.arg("--data-dir")
        .arg(dir)
        .env("MEDMESH_PASSPHRASE", PASSPHRASE)
        .env("RUST_LOG", "error")
        .stdin(Stdio::null());
    cmd
}

/// utime + stime of a process, seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = fields.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0)
        + fields.get(12).and_then(|v| v.parse().ok()).unwrap_or(0.0);
    ticks / 100.0
}

async fn telemetry(http: &reqwest::Client, api: u16, token: &str) -> serde_json::Value {
    http.get(format!("http://127.0.0.1:{api}/v1/telemetry"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let a = args();
    println!(
        "telemetry bench: {} devices, {} readings per message, {} readings/s offered for {} s",
        a.devices, a.per_message, a.rate, a.seconds
    );
    let signers: Vec<DeviceSigner> = (0..a.devices)
        .map(|_| DeviceSigner::generate(DeviceAlgorithm::Falcon512).unwrap())
        .collect();
    let started = Instant::now();
    let messages = build(&a, &signers);
    let total_messages: usize = messages.iter().map(Vec::len).sum();
    let total_readings = (total_messages * a.per_message) as u64;
    println!(
        "signed {total_messages} messages ({total_readings} readings, Falcon-512) in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    // 1. The ceiling: Mosquitto with a plain subscriber.
    let broker = Mosquitto::start();
    let (count, last) = subscriber(broker.port, "ceiling/devices/+/obs").await;
    let ceiling_messages = messages.clone();
    let t0 = Instant::now();
    let acked = publish(
        broker.port,
        "ceiling/devices",
        ceiling_messages,
        Arc::default(),
        None,
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(120);
    while count.load(Ordering::Relaxed) < acked && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let end = last.lock().unwrap().unwrap_or_else(Instant::now);
    let ceiling_secs = (end - t0).as_secs_f64();
    let ceiling = count.load(Ordering::Relaxed) as f64 * a.per_message as f64 / ceiling_secs;
    println!(
        "mosquitto alone: {} of {acked} messages delivered in {ceiling_secs:.2} s: {ceiling:.0} readings/s",
        count.load(Ordering::Relaxed)
    );
    drop(broker);

    // 2. The node at full speed (everything published at once: the backlog it drains),
    //    then 3. paced at the offered rate (sustained, and the alert latency).
    let full = run_node(&a, &signers, messages.clone(), None).await;
    let every = Duration::from_secs_f64(a.per_message as f64 * a.devices as f64 / a.rate as f64);
    let paced = run_node(&a, &signers, messages, Some(every)).await;
    println!();
    println!("| run | readings/s | loss | publish→alert p50 | p99 | node CPU per reading |");
    println!("|---|---|---|---|---|---|");
    println!("| Mosquitto alone, as fast as it takes them | {ceiling:.0} | – | – | – | – |");
    for (name, r) in [
        ("node, as fast as it takes them", &full),
        ("node, paced at the offered rate", &paced),
    ] {
        println!(
            "| {name} | {:.0} | {} | {:.1} ms | {:.1} ms | {:.1} µs |",
            r.rate, r.loss, r.p50, r.p99, r.cpu_per_reading_us
        );
    }
    println!(
        "ratio node (full speed) / Mosquitto alone: {:.3}",
        full.rate / ceiling
    );
}

/// What one node run measured.
struct NodeRun {
    rate: f64,
    loss: u64,
    p50: f64,
    p99: f64,
    cpu_per_reading_us: f64,
}

/// A fresh `medmesh node` process reading from a fresh Mosquitto; `messages` published
/// to it (paced one per device every `pace`, or all at once).
async fn run_node(
    a: &Args,
    signers: &[DeviceSigner],
    messages: Vec<Vec<Message>>,
    pace: Option<Duration>,
) -> NodeRun {
    // 2. The node: a `medmesh node` process reading from a fresh Mosquitto.
    let broker = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("node");
    let out = medmesh(&data)
        .args(["init", "--institution", "Bench"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let config = data.join("medmesh.toml");
    let text = std::fs::read_to_string(&config).unwrap().replace(
        "# broker = \"mqtts://broker.example.org:8883\"",
        &format!("broker = \"{}\"", broker.url()),
    );
    std::fs::write(&config, text).unwrap();
    std::fs::write(
        data.join("alert-rules.toml"),
        "escalate_after = 0\n[[rule]]\nid = \"hr-spike\"\nkind = \"heart-rate\"\nabove = 250.0\n\
         for_secs = 0\nclear_at = 200.0\nseverity = \"urgent\"\n[news2]\nenabled = true\n",
    )
    .unwrap();
    let api = free_port();
    let mut node: Child = medmesh(&data)
        .args(["node", "--no-chain", "--no-network", "--listen"])
        .arg(format!("127.0.0.1:{api}"))
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut stdout = std::io::BufReader::new(node.stdout.take().unwrap());
    loop {
        let mut line = String::new();
        assert!(stdout.read_line(&mut line).unwrap() > 0, "node exited");
        if line.contains("stop with Ctrl-C") {
            break;
        }
    }
    std::thread::spawn(move || for _ in stdout.lines() {});
    let token = std::fs::read_to_string(data.join("admin.token"))
        .unwrap()
        .trim()
        .to_string();
    let http = reqwest::Client::new();
    for (d, signer) in signers.iter().enumerate() {
        let answer = http
            .post(format!("http://127.0.0.1:{api}/v1/devices"))
            .bearer_auth(&token)
            .json(&serde_json::json!({
                "id": format!("dev-{d}"),
                "patient": format!("BENCH-PATIENT-{d}"),
                "type": "bedside-monitor",
                "algorithm": "falcon-512",
                "public_key": hex::encode(signer.public_key().as_bytes()),
            }))
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 201);
    }
    // Wait until the bridge is connected and subscribed.
    loop {
        if telemetry(&http, api, &token).await["connected"] == true {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Alerts, timed from publish to arrival on the alert topic.
    let sent_at: Arc<Mutex<HashMap<(usize, String), Instant>>> = Arc::default();
    let latencies: Arc<Mutex<Vec<f64>>> = Arc::default();
    {
        let mut options = MqttOptions::new("bench-alerts", "127.0.0.1", broker.port);
        options.set_max_packet_size(Some(512 * 1024));
        let (client, mut eventloop) = AsyncClient::new(options, 100);
        client
            .subscribe("medmesh/bench/devices/+/alerts", QoS::AtLeastOnce)
            .await
            .unwrap();
        let (sent_at, latencies) = (sent_at.clone(), latencies.clone());
        tokio::spawn(async move {
            loop {
                let Ok(event) = eventloop.poll().await else {
                    return;
                };
                let Event::Incoming(Packet::Publish(p)) = event else {
                    continue;
                };
                let now = Instant::now();
                let alert: serde_json::Value =
                    serde_json::from_slice(&p.payload).unwrap_or_default();
                if alert["change"] != "raised" || alert["rule"] != "hr-spike" {
                    continue;
                }
                let device: usize = alert["device"]
                    .as_str()
                    .and_then(|d| d.strip_prefix("dev-"))
                    .and_then(|d| d.parse().ok())
                    .unwrap_or(usize::MAX);
                let measured = alert["measured"].as_str().unwrap_or_default().to_string();
                if let Some(at) = sent_at.lock().unwrap().get(&(device, measured)) {
                    latencies
                        .lock()
                        .unwrap()
                        .push((now - *at).as_secs_f64() * 1000.0);
                }
            }
        });
    }

    let cpu_before = cpu_seconds(node.id());
    let t0 = Instant::now();
    let acked = publish(
        broker.port,
        "medmesh/bench/devices",
        messages,
        sent_at.clone(),
        pace,
    )
    .await;
    let published_secs = t0.elapsed().as_secs_f64();
    let expected = acked * a.per_message as u64;
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut stored = 0;
    let mut peak_queue = 0u64;
    while Instant::now() < deadline {
        let t = telemetry(&http, api, &token).await;
        stored = t["readings_stored"].as_u64().unwrap_or(0);
        peak_queue = peak_queue.max(t["queue_depth"].as_u64().unwrap_or(0));
        if stored >= expected {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let node_secs = t0.elapsed().as_secs_f64();
    let cpu = cpu_seconds(node.id()) - cpu_before;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let status = telemetry(&http, api, &token).await;
    let _ = node.kill();
    let _ = node.wait();

    let rate = stored as f64 / node_secs;
    let mut lat = latencies.lock().unwrap().clone();
    lat.sort_by(|x, y| x.total_cmp(y));
    let spikes = sent_at.lock().unwrap().len();
    println!(
        "node ({}): {stored} of {expected} readings stored in {node_secs:.2} s (publishing took {published_secs:.2} s): {rate:.0} readings/s, loss {}",
        if pace.is_some() { "paced" } else { "full speed" },
        expected.saturating_sub(stored)
    );
    println!(
        "alerts: {} of {spikes} spikes timed, publish to alert p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        lat.len(),
        percentile(&lat, 0.5),
        percentile(&lat, 0.99),
        lat.last().copied().unwrap_or(f64::NAN)
    );
    println!(
        "node CPU: {cpu:.1} s for {stored} readings: {:.1} µs per reading; peak queue depth {peak_queue}; refused {}",
        cpu * 1e6 / stored.max(1) as f64,
        status["rejected"]
    );
    NodeRun {
        rate,
        loss: expected.saturating_sub(stored),
        p50: percentile(&lat, 0.5),
        p99: percentile(&lat, 0.99),
        cpu_per_reading_us: cpu * 1e6 / stored.max(1) as f64,
    }
}
