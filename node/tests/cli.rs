//! The `medmesh` binary end to end: init, put, get, ls, rm, gc, check, audit, keys,
//! the error paths a user can hit, and crash safety under SIGKILL.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use medmesh_testkit::{files_under, free_port, noise, shared_data};

const PASSPHRASE: &str = "cli test passphrase";

struct Node {
    dir: tempfile::TempDir,
}

impl Node {
    fn init() -> Self {
        let node = Node {
            dir: tempfile::tempdir().unwrap(),
        };
        let out = node.run(&["init", "--institution", "Test Hospital"]);
        assert_ok(&out);
        node
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("node")
    }

    fn cmd(&self) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_medmesh"));
        cmd.arg("--data-dir")
            .arg(self.data_dir())
            .env("MEDMESH_PASSPHRASE", PASSPHRASE)
            .env_remove("MEDMESH_PASSPHRASE_FILE")
            .env_remove("RUST_LOG")
            // Nodes of parallel tests would compete for the embedded broker's port;
            // the MQTT tests (tests/mqtt.rs) start theirs on ports of their own.
            .env("MEDMESH_NO_MQTT", "true")
            .stdin(Stdio::null());
        cmd
    }

    /// `medmesh put -` with stdin, stdout and stderr piped.
    fn spawn_put_from_stdin(&self) -> std::process::Child {
        self.cmd()
            .args(["put", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }

    /// Starts `medmesh node ARGS` and waits until it says it runs; returns the process
    /// and the lines it printed until then. Panics with its stderr if it exits first.
    // The child is the caller's to wait for (it is returned running).
    #[allow(clippy::zombie_processes)]
    fn start_node(&self, args: &[&str]) -> (std::process::Child, Vec<String>) {
        let mut child = self
            .cmd()
            .arg("node")
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
        let mut lines = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("node did not start within 60 s");
            }
            let mut line = String::new();
            if std::io::BufRead::read_line(&mut stdout, &mut line).unwrap() == 0 {
                let mut err = String::new();
                std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
                let status = child.wait().unwrap();
                panic!("node exited ({status}): {err}");
            }
            let started = line.contains("stop with Ctrl-C");
            lines.push(line);
            if started {
                return (child, lines);
            }
        }
    }

    fn run(&self, args: &[&str]) -> Output {
        self.cmd().args(args).output().unwrap()
    }

    fn put(&self, file: &Path, extra: &[&str]) -> String {
        let mut args = vec!["put", file.to_str().unwrap()];
        args.extend_from_slice(extra);
        let out = self.run(&args);
        assert_ok(&out);
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    }

    fn get(&self, id: &str) -> Vec<u8> {
        let out = self.run(&["get", id, "-o", "-"]);
        assert_ok(&out);
        out.stdout
    }

    fn file(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let p = self.dir.path().join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    }
}

fn assert_ok(out: &Output) {
    assert!(
        out.status.success(),
        "command failed: {}\nstdout: {}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
}

/// Asserts failure with a message containing `needle`; returns stderr.
fn assert_fails(out: &Output, needle: &str) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !out.status.success(),
        "expected failure, got success; stdout: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(stderr.contains(needle), "stderr lacks {needle:?}: {stderr}");
    assert!(!stderr.contains("panicked"), "panic: {stderr}");
    stderr
}

#[test]
fn put_get_ls_info_rm_round_trip() {
    let node = Node::init();
    let hl7 = shared_data("hl7v2/oru.hl7");
    let id = node.put(&hl7, &["--patient", "MRN-77"]);
    assert!(id.starts_with("bafyrei"), "{id}");
    assert_eq!(node.get(&id), std::fs::read(&hl7).unwrap());

    let out_file = node.dir.path().join("out.hl7");
    assert_ok(&node.run(&["get", &id, "-o", out_file.to_str().unwrap()]));
    assert_eq!(
        std::fs::read(&out_file).unwrap(),
        std::fs::read(&hl7).unwrap()
    );
    assert_fails(
        &node.run(&["get", &id, "-o", out_file.to_str().unwrap()]),
        "--force",
    );
    assert_ok(&node.run(&["get", &id, "-o", out_file.to_str().unwrap(), "--force"]));

    let ls = String::from_utf8(node.run(&["ls", "--patient", "MRN-77"]).stdout).unwrap();
    assert!(
        ls.contains(&id) && ls.contains("application/hl7-v2"),
        "{ls}"
    );
    let ls = String::from_utf8(node.run(&["ls", "--patient", "MRN-78"]).stdout).unwrap();
    assert!(ls.is_empty(), "{ls}");
    let json = node.run(&["ls", "--json"]);
    let line: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(line["id"], id.as_str());
    assert_eq!(line["meta"]["patient"], "MRN-77");

    let info = String::from_utf8(node.run(&["info", &id]).stdout).unwrap();
    assert!(
        info.contains("application/hl7-v2") && info.contains("MRN-77"),
        "{info}"
    );

    assert_ok(&node.run(&["rm", &id]));
    assert_fails(&node.run(&["get", &id, "-o", "-"]), "no record");
    assert_fails(&node.run(&["rm", &id]), "no record");
    assert_ok(&node.run(&["check"]));
}

#[test]
fn explicit_type_and_dicom_sniffing() {
    let node = Node::init();
    let dcm = shared_data("dicom/MR_small.dcm");
    let id = node.put(&dcm, &[]);
    let info = String::from_utf8(node.run(&["info", &id, "--json"]).stdout).unwrap();
    let v: serde_json::Value = serde_json::from_str(&info).unwrap();
    assert_eq!(v["meta"]["content_type"], "application/dicom");
    let id = node.put(&dcm, &["--type", "application/x-custom"]);
    let v: serde_json::Value =
        serde_json::from_slice(&node.run(&["info", &id, "--json"]).stdout).unwrap();
    assert_eq!(v["meta"]["content_type"], "application/x-custom");
}

#[test]
fn user_errors_are_clear_and_change_nothing() {
    let node = Node::init();
    let good = node.file("good.txt", b"good");
    let id = node.put(&good, &[]);

    assert_fails(
        &node.run(&["put", "/definitely/missing.json"]),
        "cannot open /definitely/missing.json",
    );
    assert_fails(
        &node.run(&["put", node.dir.path().to_str().unwrap()]),
        "is a directory",
    );
    assert_fails(
        &node.run(&["put", good.to_str().unwrap(), "--type", "nonsense"]),
        "not a content type",
    );
    assert_fails(
        &node.run(&["put", good.to_str().unwrap(), "--patient", ""]),
        "patient reference",
    );
    assert_fails(
        &node.run(&["get", "not-a-cid", "-o", "-"]),
        "not a record id",
    );
    let chunk_cid = "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku";
    assert_fails(&node.run(&["get", chunk_cid, "-o", "-"]), "not a record id");
    let unknown = "bafyreidsvr2dooaaqhs7pkoape6s7sj5di6lxfpvgbu7kb2zj5cphq53ba";
    assert_fails(&node.run(&["get", unknown, "-o", "-"]), "no record");
    assert_fails(&node.run(&["rm", &id, unknown]), "no record");
    assert_fails(&node.run(&["ls", "--since", "yesterday"]), "RFC 3339");
    assert_fails(&node.run(&["init"]), "already holds a medmesh node");

    let wrong = node
        .cmd()
        .env("MEDMESH_PASSPHRASE", "not the passphrase")
        .args(["get", &id, "-o", "-"])
        .output()
        .unwrap();
    assert_fails(&wrong, "wrong passphrase");
    assert!(wrong.stdout.is_empty());
    let wrong = node
        .cmd()
        .env("MEDMESH_PASSPHRASE", "not the passphrase")
        .args(["put", good.to_str().unwrap()])
        .output()
        .unwrap();
    assert_fails(&wrong, "wrong passphrase");
    let none = node
        .cmd()
        .env_remove("MEDMESH_PASSPHRASE")
        .args(["get", &id, "-o", "-"])
        .output()
        .unwrap();
    assert_fails(&none, "MEDMESH_PASSPHRASE");
    let pass_file = node.file("pass.txt", format!("{PASSPHRASE}\n").as_bytes());
    let from_file = node
        .cmd()
        .env_remove("MEDMESH_PASSPHRASE")
        .args([
            "--passphrase-file",
            pass_file.to_str().unwrap(),
            "get",
            &id,
            "-o",
            "-",
        ])
        .output()
        .unwrap();
    assert_ok(&from_file);
    assert_eq!(from_file.stdout, b"good");

    assert_fails(
        &Node {
            dir: tempfile::tempdir().unwrap(),
        }
        .run(&["ls"]),
        "medmesh init",
    );

    // Still exactly the one record, intact, and a clean audit log.
    let ls = String::from_utf8(node.run(&["ls"]).stdout).unwrap();
    assert_eq!(ls.lines().count(), 1, "{ls}");
    assert_eq!(node.get(&id), b"good");
    assert_ok(&node.run(&["audit", "verify"]));
}

#[test]
fn weak_passphrase_and_secrets_stay_out_of_output() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_medmesh"))
        .args(["--data-dir", dir.path().join("n").to_str().unwrap(), "init"])
        .env("MEDMESH_PASSPHRASE", "short")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_fails(&out, "at least 8 characters");
    assert!(
        !dir.path().join("n/keys").exists(),
        "failed init left keys behind"
    );

    let node = Node::init();
    let id = node.put(&node.file("a.txt", b"abc"), &[]);
    let out = node
        .cmd()
        .args(["-vv", "get", &id, "-o", "-"])
        .output()
        .unwrap();
    assert_ok(&out);
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(!all.contains(PASSPHRASE), "passphrase leaked into output");
}

#[test]
fn corrupt_block_is_reported_by_get_and_check() {
    let node = Node::init();
    let data = noise(3 << 20, 9);
    let id = node.put(&node.file("big.bin", &data), &[]);
    // Corrupt one chunk file on disk.
    // A full 1 MiB chunk block (raw-codec CIDs start with bafkrei).
    let victim = files_under(&node.data_dir().join("store/blocks"))
        .into_iter()
        .find(|p| {
            let name = p.file_name().unwrap().to_str().unwrap();
            name.starts_with("bafkrei") && std::fs::metadata(p).unwrap().len() == 1 << 20
        })
        .expect("a full chunk block");
    let mut bytes = std::fs::read(&victim).unwrap();
    bytes[12345] ^= 0x80;
    std::fs::write(&victim, bytes).unwrap();

    let out_path = node.dir.path().join("restored.bin");
    assert_fails(
        &node.run(&["get", &id, "-o", out_path.to_str().unwrap()]),
        "corrupt",
    );
    assert!(
        !out_path.exists(),
        "a partial plaintext file was left behind"
    );
    assert!(!node
        .dir
        .path()
        .join(".restored.bin.medmesh-partial")
        .exists());
    assert_fails(&node.run(&["check"]), "problem");
}

#[test]
fn audit_verify_names_an_entry_edited_on_disk() {
    use redb::ReadableTable;
    let node = Node::init();
    let f = node.file("a.txt", b"audit me");
    let id = node.put(&f, &[]);
    node.get(&id);
    node.put(&f, &[]);
    assert_ok(&node.run(&["audit", "verify"]));

    let db = redb::Database::open(node.data_dir().join("store/index.redb")).unwrap();
    let table: redb::TableDefinition<u64, &[u8]> = redb::TableDefinition::new("audit");
    let txn = db.begin_write().unwrap();
    {
        let mut t = txn.open_table(table).unwrap();
        let mut entry: serde_json::Value =
            serde_json::from_slice(t.get(1).unwrap().unwrap().value()).unwrap();
        entry["subject"] = "bafyreisomethingelse".into();
        t.insert(1, serde_json::to_vec(&entry).unwrap().as_slice())
            .unwrap();
    }
    txn.commit().unwrap();
    drop(db);

    let stderr = assert_fails(&node.run(&["audit", "verify"]), "entry 1");
    assert!(stderr.contains("edited"), "{stderr}");
    assert_fails(&node.run(&["check"]), "entry 1");
}

#[test]
fn keys_export_is_the_public_certificate() {
    let node = Node::init();
    let out = node.run(&["keys", "export"]);
    assert_ok(&out);
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.starts_with("-----BEGIN PGP PUBLIC KEY BLOCK-----"),
        "{text}"
    );
    assert!(!text.contains("PRIVATE"));
    let show = String::from_utf8(node.run(&["keys", "show"]).stdout).unwrap();
    assert!(
        show.contains("12D3KooW") && show.contains("Test Hospital"),
        "{show}"
    );
    // `init` makes the whole data dir private at once (not only the secret keys), so
    // the node's first start has nothing to repair.
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    let files = files_under(&node.data_dir());
    for f in [
        "keys/institution.pgp",
        "keys/node.key",
        "keys/institution.cert.asc",
    ] {
        assert!(files.contains(&node.data_dir().join(f)), "{f} exists");
    }
    for path in files {
        assert_eq!(mode(&path), 0o600, "{}", path.display());
    }
    for dir in ["", "keys", "store"] {
        let dir = node.data_dir().join(dir);
        assert_eq!(mode(&dir), 0o700, "{}", dir.display());
    }
}

/// SIGKILL during a large `put` (fed slowly through stdin so the kill lands mid-write):
/// every acknowledged record stays intact, the store checks clean, the audit log
/// verifies, and `gc` removes what the killed put left.
#[test]
fn sigkill_during_put_keeps_acknowledged_records() {
    let node = Node::init();
    let first = noise(5 << 20, 11);
    let second = std::fs::read(shared_data("fhir/synthea-bundle-a.json")).unwrap();
    let id1 = node.put(&node.file("first.bin", &first), &[]);
    let id2 = node.put(&node.file("second.json", &second), &["--patient", "MRN-5"]);
    let blocks_dir = node.data_dir().join("store/blocks");
    let count_files = || files_under(&blocks_dir).len();

    for round in 0..3u64 {
        let before = count_files();
        let mut child = node.spawn_put_from_stdin();
        let mut stdin = child.stdin.take().unwrap();
        // Feed 8 MiB + some, wait until blocks reach the disk, then kill.
        stdin
            .write_all(&noise((8 << 20) + round as usize * 12345, 100 + round))
            .unwrap();
        stdin.flush().unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        while count_files() < before + 4 {
            assert!(Instant::now() < deadline, "the put wrote no blocks");
            std::thread::sleep(Duration::from_millis(5));
        }
        child.kill().unwrap(); // SIGKILL
        let status = child.wait().unwrap();
        assert!(!status.success());
        drop(stdin);

        let check = node.run(&["check"]);
        assert_ok(&check);
        let stdout = String::from_utf8_lossy(&check.stdout);
        assert!(
            stdout.contains("checked 2 records"),
            "round {round}: {stdout}"
        );
        assert_eq!(node.get(&id1), first, "round {round}");
        assert_eq!(node.get(&id2), second, "round {round}");
        assert_ok(&node.run(&["audit", "verify"]));
        let ls = String::from_utf8(node.run(&["ls"]).stdout).unwrap();
        assert_eq!(ls.lines().count(), 2, "round {round}: {ls}");
    }
    let gc = node.run(&["gc"]);
    assert_ok(&gc);
    let gc_out = String::from_utf8_lossy(&gc.stdout);
    assert!(!gc_out.starts_with("removed 0 unreferenced"), "{gc_out}");
    let check = String::from_utf8(node.run(&["check"]).stdout).unwrap();
    assert!(check.contains("0 unreferenced"), "{check}");
    assert_eq!(node.get(&id1), first);
}

#[test]
fn store_in_use_is_reported() {
    let node = Node::init();
    let mut child = node.spawn_put_from_stdin();
    // After the first bytes the put opens the store and holds it while it waits for more.
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(&[7u8; 10_000]).unwrap();
    stdin.flush().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = node.run(&["ls"]);
        if !out.status.success() {
            assert_fails(&out, "in use by another medmesh process");
            break;
        }
        if let Ok(Some(status)) = child.try_wait() {
            let mut err = String::new();
            std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
            panic!("put exited early ({status}): {err}");
        }
        assert!(Instant::now() < deadline, "ls never saw the store locked");
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(stdin);
    assert!(child.wait().unwrap().success());
}

/// Streaming: a 512 MiB record goes through `put` with a peak resident set far below the
/// record size (the pipeline holds a few chunk buffers, whatever the input size).
#[test]
fn put_memory_stays_bounded_for_large_records() {
    let node = Node::init();
    let mut child = node.spawn_put_from_stdin();
    let mut stdin = child.stdin.take().unwrap();
    for i in 0..512u64 {
        stdin.write_all(&noise(1 << 20, 1000 + i)).unwrap();
    }
    stdin.flush().unwrap();
    // Still running (waiting for end of input): read its peak resident set.
    let status = std::fs::read_to_string(format!("/proc/{}/status", child.id())).unwrap();
    let peak_kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmHWM in /proc/PID/status");
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    assert_ok(&out);
    assert!(
        peak_kib < 96 * 1024,
        "peak RSS {peak_kib} KiB for a 512 MiB record"
    );
    let id = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let info: serde_json::Value =
        serde_json::from_slice(&node.run(&["info", &id, "--json"]).stdout).unwrap();
    assert_eq!(info["meta"]["size"], 512u64 << 20);
}

/// One HTTP/1.1 request over a plain socket; returns (status, body).
fn http(port: u16, method: &str, path: &str, token: Option<&str>) -> (u16, String) {
    use std::io::Read;
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(stream, "{method} {path} HTTP/1.1\r\nHost: localhost\r\n{auth}Content-Length: 0\r\nConnection: close\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let status = response.split_whitespace().nth(1).unwrap().parse().unwrap();
    let body = response
        .split("\r\n\r\n")
        .nth(1)
        .unwrap_or_default()
        .to_string();
    (status, body)
}

/// `medmesh node` on its embedded defaults: creates the node, starts the embedded dev
/// chain, writes the first admin token to a private file, serves the API with key release enabled; stops on
/// SIGTERM. Refuses a public address without --allow-public.
#[test]
fn node_runs_on_embedded_defaults() {
    let node = Node {
        dir: tempfile::tempdir().unwrap(),
    };
    let refused = node.run(&["node", "--listen", "0.0.0.0:0"]);
    assert_fails(&refused, "not a loopback address");

    let (api, chain) = (free_port(), free_port());
    let (mut child, lines) = node.start_node(&[
        "--listen",
        &format!("127.0.0.1:{api}"),
        "--dev-chain-listen",
        &format!("127.0.0.1:{chain}"),
        "--p2p-listen",
        "/ip4/127.0.0.1/tcp/0",
    ]);
    // The secret goes to a private file, never to standard output (or the log).
    assert!(
        !lines.iter().any(|l| l.contains("mm_")),
        "a token secret was printed: {lines:?}"
    );
    let token_file = node.data_dir().join("admin.token");
    assert!(
        lines
            .iter()
            .any(|l| l.contains(&token_file.display().to_string())),
        "the output names the token file: {lines:?}"
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&token_file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let token = std::fs::read_to_string(&token_file)
        .unwrap()
        .trim()
        .to_string();
    assert!(token.starts_with("mm_"), "{token}");
    assert_eq!(http(api, "GET", "/health", None).0, 200);
    let (status, body) = http(api, "POST", "/v1/access/challenge", Some(&token));
    assert_eq!(
        status, 200,
        "key release is on with the embedded chain: {body}"
    );
    assert!(node.data_dir().join("chain/devchain.json").exists());

    // SIGTERM: a clean stop.
    std::process::Command::new("kill")
        .arg(child.id().to_string())
        .status()
        .unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "node exit status {status}");
}

#[test]
fn chain_key_files_must_be_private() {
    use std::os::unix::fs::PermissionsExt;
    let node = Node {
        dir: tempfile::tempdir().unwrap(),
    };
    let key = node.file(
        "deployer.key",
        b"0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80\n",
    );
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let args = [
        "chain",
        "deploy",
        "--chain-rpc",
        "http://127.0.0.1:9",
        "--key-file",
        key.to_str().unwrap(),
        "-o",
    ];
    let out_file = node.dir.path().join("deployment.json");
    let out = node.cmd().args(args).arg(&out_file).output().unwrap();
    assert_fails(&out, "chmod 600");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    // Private now; the (unreachable) chain is the next thing to complain about.
    let out = node.cmd().args(args).arg(&out_file).output().unwrap();
    let stderr = assert_fails(&out, "chain call failed");
    assert!(!stderr.contains("chmod"), "{stderr}");
    assert!(!out_file.exists());
}

/// `medmesh get ID -o - | head -c 1` and `medmesh ls | head -n 1`: the reader closes
/// the pipe early, which is its choice, so the command ends quietly with success.
#[test]
fn a_closed_pipe_ends_get_and_ls_quietly() {
    let node = Node::init();
    let big = node.file("big.bin", &noise(8 << 20, 21));
    let id = node.put(&big, &[]);
    node.put(&node.file("small.txt", b"small record"), &[]);
    for args in [vec!["get", id.as_str(), "-o", "-"], vec!["ls"]] {
        let mut child = node
            .cmd()
            .args(&args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // Close our end before the command writes, as a `head` that is already done
        // does: every write it makes meets a closed pipe.
        drop(child.stdout.take());
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{args:?}: {} {stderr}", out.status);
        assert!(stderr.is_empty(), "{args:?} printed: {stderr}");
    }
}

/// The data dir is private: `medmesh node` narrows modes an older version or a restored
/// backup left open, names what it changed, and everything it creates is private.
#[test]
fn node_makes_its_data_dir_private() {
    use std::os::unix::fs::PermissionsExt;
    let node = Node::init();
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    let chmod =
        |p: &Path, m: u32| std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap();
    node.put(&node.file("r.txt", b"a record"), &[]);
    let data = node.data_dir();
    let index = data.join("store/index.redb");
    chmod(&data, 0o755);
    chmod(&index, 0o644);
    chmod(&data.join("store"), 0o755);

    let api = free_port();
    let (child, _) = node.start_node(&[
        "--listen",
        &format!("127.0.0.1:{api}"),
        "--no-chain",
        "--no-network",
    ]);
    std::process::Command::new("kill")
        .arg(child.id().to_string())
        .status()
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    for path in [&data, &index] {
        assert!(
            stderr.contains(&format!(
                "warning: {} was readable by other users",
                path.display()
            )),
            "{stderr}"
        );
    }
    for path in files_under(&data) {
        assert_eq!(mode(&path), 0o600, "{}", path.display());
    }
    for dir in [
        data.clone(),
        data.join("store"),
        data.join("store/blocks"),
        data.join("keys"),
    ] {
        assert_eq!(mode(&dir), 0o700, "{}", dir.display());
    }
}
