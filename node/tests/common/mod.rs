//! `medmesh node` processes for the tests in this directory: each with a data dir of
//! its own, its API and peer-to-peer ports, and its first admin token.
#![allow(dead_code)] // each test binary uses part of it

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use medmesh_sdk::Client;
use medmesh_testkit::{files_under, free_port};

pub const PASSPHRASE: &str = "network test passphrase";

/// A `medmesh node` process with its data dir; killed when dropped.
pub struct Proc {
    pub dir: PathBuf,
    pub api: u16,
    pub p2p: u16,
    pub token: String,
    pub peer_id: String,
    pub child: Option<Child>,
    /// Where the node's log goes (at debug level), when the test reads it.
    pub log: Option<PathBuf>,
    /// How it reaches a chain (`--chain-rpc …`); empty: `--no-chain`.
    pub chain_args: Vec<String>,
    /// Whether it runs the MQTT bridge (as `[mqtt]` of its medmesh.toml says); else
    /// `--no-mqtt`, so nodes started side by side do not compete for the embedded
    /// broker's port.
    pub mqtt: bool,
}

pub fn medmesh(dir: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_medmesh"));
    cmd.arg("--data-dir")
        .arg(dir)
        .env("MEDMESH_PASSPHRASE", PASSPHRASE)
        .env_remove("MEDMESH_PASSPHRASE_FILE")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null());
    cmd
}

/// `medmesh init` of a node named `name` under `base`; its data dir.
pub fn init(base: &Path, name: &str) -> PathBuf {
    let dir = base.join(name);
    let out = medmesh(&dir)
        .args(["init", "--institution", "Test Hospital"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    dir
}

impl Proc {
    /// A node on fresh free ports for the data dir `dir`, not started yet.
    fn stopped(dir: PathBuf, log: Option<PathBuf>, chain_args: Vec<String>, mqtt: bool) -> Self {
        Proc {
            dir,
            api: free_port(),
            p2p: free_port(),
            token: String::new(),
            peer_id: String::new(),
            child: None,
            log,
            chain_args,
            mqtt,
        }
    }

    /// A new node (keys of its own) in `base/name`, dialing `peers` at start.
    pub fn start(base: &Path, name: &str, peers: &[&Proc]) -> Self {
        Self::start_inner(base, name, peers, false, Vec::new())
    }

    /// [`Proc::start`] on a chain: `chain_args` are the `--chain-…` flags.
    pub fn start_on_chain(
        base: &Path,
        name: &str,
        peers: &[&Proc],
        chain_args: Vec<String>,
    ) -> Self {
        Self::start_inner(base, name, peers, false, chain_args)
    }

    /// [`Proc::start`], logging at debug level to `base/name.log` (see [`Proc::log`]).
    pub fn start_logged(base: &Path, name: &str, peers: &[&Proc]) -> Self {
        Self::start_inner(base, name, peers, true, Vec::new())
    }

    fn start_inner(
        base: &Path,
        name: &str,
        peers: &[&Proc],
        logged: bool,
        chain_args: Vec<String>,
    ) -> Self {
        let dir = init(base, name);
        let log = logged.then(|| base.join(format!("{name}.log")));
        let mut node = Proc::stopped(dir, log, chain_args, false);
        let peers: Vec<String> = peers.iter().map(|p| p.addr()).collect();
        node.run(&peers);
        node
    }

    pub fn addr(&self) -> String {
        format!("/ip4/127.0.0.1/tcp/{}/p2p/{}", self.p2p, self.peer_id)
    }

    /// Starts (or restarts) the process and waits until it serves.
    pub fn run(&mut self, peers: &[String]) {
        let mut cmd = medmesh(&self.dir);
        cmd.arg("node");
        if self.chain_args.is_empty() {
            cmd.arg("--no-chain");
        } else {
            cmd.args(&self.chain_args);
        }
        cmd.args([
            "--listen",
            &format!("127.0.0.1:{}", self.api),
            "--p2p-listen",
            &format!("/ip4/127.0.0.1/tcp/{}", self.p2p),
        ]);
        for p in peers {
            cmd.args(["--peer", p]);
        }
        if !self.mqtt {
            cmd.arg("--no-mqtt");
        }
        let stderr = match &self.log {
            Some(path) => {
                cmd.env(
                    "RUST_LOG",
                    "info,medmesh=debug,medmesh_store=debug,medmesh_service=debug,\
                     medmesh_api=debug,medmesh_net=debug,medmesh_chain=debug",
                );
                let file = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .unwrap();
                Stdio::from(file)
            }
            None => Stdio::inherit(),
        };
        let mut child = cmd.stdout(Stdio::piped()).stderr(stderr).spawn().unwrap();
        let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            assert!(Instant::now() < deadline, "node did not start");
            let mut line = String::new();
            assert!(
                stdout.read_line(&mut line).unwrap() > 0,
                "node exited during start"
            );
            assert!(
                !line.contains("mm_"),
                "a token secret on standard output: {line}"
            );
            if let Some(id) = line.trim().strip_prefix("node peer id: ") {
                self.peer_id = id.to_string();
            }
            if line.contains("stop with Ctrl-C") {
                break;
            }
        }
        self.token = std::fs::read_to_string(self.dir.join("admin.token"))
            .expect("the first start writes the admin token file")
            .trim()
            .to_string();
        // Keep draining stdout so the node never blocks on a full pipe.
        std::thread::spawn(move || for _ in stdout.lines() {});
        self.child = Some(child);
    }

    pub fn client(&self) -> Client {
        Client::new(&format!("http://127.0.0.1:{}", self.api))
            .unwrap()
            .with_token(self.token.clone())
    }

    /// The node's log so far (empty unless started with [`Proc::start_logged`]).
    pub fn log_text(&self) -> String {
        self.log
            .as_ref()
            .and_then(|p| std::fs::read_to_string(p).ok())
            .unwrap_or_default()
    }

    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Complete block files (a write in flight is a temp file, not a block yet).
    pub fn block_files(&self) -> usize {
        files_under(&self.dir.join("store/blocks"))
            .iter()
            .filter(|p| p.extension().is_some_and(|e| e == "data"))
            .count()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

impl Proc {
    /// A new node without chain or peers, logged like [`Proc::start_logged`], started
    /// after `configure` edited its fresh data dir (e.g. appended a `[[webhooks]]` table
    /// to `medmesh.toml` and wrote the secret file it names).
    pub fn start_configured(base: &Path, name: &str, configure: impl FnOnce(&Path)) -> Self {
        let dir = init(base, name);
        configure(&dir);
        let log = Some(base.join(format!("{name}.log")));
        let mut node = Proc::stopped(dir, log, Vec::new(), false);
        node.run(&[]);
        node
    }

    /// A new node without chain or peers, logged, whose MQTT bridge reads from the
    /// broker at `broker` (`mqtt://…`) and batches readings into records every second
    /// (so kills also land in the middle of batches).
    pub fn start_with_mqtt(base: &Path, name: &str, broker: &str) -> Self {
        let dir = init(base, name);
        let config = dir.join("medmesh.toml");
        let text = std::fs::read_to_string(&config).unwrap();
        let text = text
            .replace(
                "# broker = \"mqtts://broker.example.org:8883\"",
                &format!("broker = \"{broker}\""),
            )
            .replace("batch_window_secs = 60", "batch_window_secs = 1");
        std::fs::write(&config, text).unwrap();
        let log = Some(base.join(format!("{name}.log")));
        let mut node = Proc::stopped(dir, log, Vec::new(), true);
        node.run(&[]);
        node
    }
}
