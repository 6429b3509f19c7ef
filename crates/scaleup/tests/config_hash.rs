//! Both load balancers should run the same site file: each puts the hash of its file
//! in its heartbeats, and `/status`, `/metrics`, the logs and `scaleup status` say when
//! the two differ. Here lb1 and lb2 run files that differ in one harmless setting,
//! then the same file. And a peer of the release before the hash (heartbeat version
//! 1) is answered in its own version, so a rolling upgrade never has both active.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use sha2::{Digest, Sha256};

/// The first 16 hex digits of the file's SHA-256, computed here independently of the
/// binary.
fn hash_of(path: &Path) -> String {
    let digest = Sha256::digest(std::fs::read(path).unwrap());
    digest[..8].iter().map(|b| format!("{b:02x}")).collect()
}

/// Waits until the node behind `admin` has heard its peer's hash `want`.
async fn wait_peer_hash(admin: u16, want: &str) -> serde_json::Value {
    wait_status(
        &format!("http://127.0.0.1:{admin}/status"),
        200,
        Duration::from_secs(15),
    )
    .await;
    let start = Instant::now();
    loop {
        let cluster = cluster_of(admin).await;
        if cluster["peer"]["config_hash"] == want {
            return cluster;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the peer's hash never became {want}: {cluster}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `scaleup status --site FILE`'s standard output (it fails: no web or app server runs).
fn status(site: &Path) -> String {
    let out = scaleup()
        .args(["status", "--site"])
        .arg(site)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    eprintln!("{text}{}", String::from_utf8_lossy(&out.stderr));
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn different_site_files_on_the_load_balancers_are_reported_and_the_same_one_is_not() {
    let base = free_base(DEFAULT_SITE_PORTS);
    let dir = tempfile::tempdir().unwrap();
    let text = site::default_site(base, &dir.path().to_string_lossy(), "test-secret");
    assert!(text.contains("retries = 1\n"));
    let a = dir.path().join("a.toml");
    let b = dir.path().join("b.toml");
    std::fs::write(&a, &text).unwrap();
    std::fs::write(&b, text.replace("retries = 1\n", "retries = 2\n")).unwrap();
    let (hash_a, hash_b) = (hash_of(&a), hash_of(&b));
    assert_ne!(hash_a, hash_b);
    let (lb1_admin, lb2_admin) = (base + 11, base + 12);

    // Different files.
    let lb1 = run_node("lb1", &a);
    let mut lb2 = run_node("lb2", &b);
    let on_lb1 = wait_peer_hash(lb1_admin, &hash_b).await;
    assert_eq!(on_lb1["config_hash"], hash_a, "{on_lb1}");
    assert_eq!(on_lb1["config_mismatch"], true, "{on_lb1}");
    let on_lb2 = wait_peer_hash(lb2_admin, &hash_a).await;
    assert_eq!(on_lb2["config_hash"], hash_b, "{on_lb2}");
    assert_eq!(on_lb2["config_mismatch"], true, "{on_lb2}");
    let m = metrics_of(lb1_admin).await;
    assert!(
        m.contains("scaleup_cluster_config_mismatch{node=\"lb1\"} 1"),
        "{m}"
    );
    assert!(
        m.contains(&format!(
            "scaleup_cluster_config_info{{node=\"lb1\",hash=\"{hash_a}\",peer=\"lb2\",peer_hash=\"{hash_b}\"}} 1"
        )),
        "{m}"
    );
    lb1.wait_for_line(
        "lb2 runs another site file than lb1",
        Duration::from_secs(5),
    );
    let report = status(&a);
    assert!(
        report.contains(&format!(
            "warning: lb1 and lb2 run different site files ({hash_a} vs {hash_b}): run the same file on both"
        )),
        "{report}"
    );
    // lb2 does not run the file `status` read: said too.
    assert!(
        report.contains(&format!("is not the file running on lb2 {hash_b}")),
        "{report}"
    );

    // A datagram of a wire version this release does not know (a newer one) is
    // counted and logged, not read, and changes nothing.
    let mut newer = b"SUHB".to_vec();
    newer.extend_from_slice(&[3, 1, 255, 1]);
    newer.extend_from_slice(&[0xff; 40]);
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    socket.send_to(&newer, ("127.0.0.1", base + 21)).unwrap();
    lb1.wait_for_line(
        "heartbeat(s) of wire version 3 (this node reads versions 1 and 2)",
        Duration::from_secs(5),
    );
    let on_lb1 = cluster_of(lb1_admin).await;
    assert_eq!(on_lb1["heartbeats"]["rejected"]["version"], 1, "{on_lb1}");
    assert_eq!(on_lb1["peer"]["config_hash"], hash_b, "{on_lb1}");

    // The same file: lb2 restarted with a.toml.
    lb2.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(lb2.wait_exit(Duration::from_secs(15)), Some(0));
    let _lb2 = run_node("lb2", &a);
    let on_lb1 = wait_peer_hash(lb1_admin, &hash_a).await;
    assert_eq!(on_lb1["config_mismatch"], false, "{on_lb1}");
    lb1.wait_for_line(
        "lb2 runs the same site file as lb1 again",
        Duration::from_secs(5),
    );
    let m = metrics_of(lb1_admin).await;
    assert!(
        m.contains("scaleup_cluster_config_mismatch{node=\"lb1\"} 0"),
        "{m}"
    );
    wait_peer_hash(lb2_admin, &hash_a).await;
    let report = status(&a);
    assert!(report.contains("lb1 "), "the table is there: {report}");
    assert!(!report.contains("warning:"), "{report}");
}

/// Receives lb1's next heartbeat on `socket` (lb2's heartbeat address).
fn next_beat(socket: &std::net::UdpSocket) -> cluster::wire::Beat {
    let mut buf = [0u8; cluster::wire::MAX_BEAT];
    loop {
        let (n, _) = socket.recv_from(&mut buf).expect("a heartbeat from lb1");
        if let Ok(beat) = cluster::wire::Beat::decode(&buf[..n], b"test-secret") {
            return beat;
        }
    }
}

/// Waits (a few seconds at most) for a beat from lb1 that `pred` accepts.
fn beat_where(
    socket: &std::net::UdpSocket,
    pred: impl Fn(&cluster::wire::Beat) -> bool,
) -> cluster::wire::Beat {
    let start = Instant::now();
    loop {
        let beat = next_beat(socket);
        if pred(&beat) {
            return beat;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "no such beat from lb1; last: {beat:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_of_the_previous_release_is_answered_in_its_wire_version() {
    let base = free_base(DEFAULT_SITE_PORTS);
    let dir = tempfile::tempdir().unwrap();
    let site = write_default_site(base, dir.path());
    let hash = hash_of(&site);
    // This test is lb2, of the release before the hash: it listens where lb2 would.
    let lb2 = std::net::UdpSocket::bind(("127.0.0.1", base + 22)).unwrap();
    lb2.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let lb1 = run_node("lb1", &site);
    let lb1_admin = base + 11;

    // Before lb1 hears from it: version 2, with the file's hash.
    let first = next_beat(&lb2);
    assert_eq!(
        first.config.map(|h| cluster::wire::hex(&h)),
        Some(hash.clone())
    );

    // The old lb2 beats in version 1 (no hash); lb1 answers in version 1.
    let mut seq = 0;
    let mut send = |config: Option<[u8; 8]>| {
        seq += 1;
        let beat = cluster::wire::Beat {
            name: "lb2".into(),
            state: cluster::State::Passive,
            priority: 100,
            healthy: true,
            boot: 1,
            seq,
            config,
        };
        lb2.send_to(&beat.encode(b"test-secret"), ("127.0.0.1", base + 21))
            .unwrap();
    };
    send(None);
    beat_where(&lb2, |b| b.config.is_none());
    lb1.wait_for_line(
        "lb2 sends heartbeats of wire version 1 (an older scaleup release)",
        Duration::from_secs(5),
    );
    let cluster = cluster_of(lb1_admin).await;
    assert_eq!(cluster["peer"]["wire_version"], 1, "{cluster}");
    assert_eq!(
        cluster["peer"]["config_hash"],
        serde_json::Value::Null,
        "{cluster}"
    );
    assert_eq!(cluster["config_mismatch"], false, "{cluster}");
    assert_eq!(cluster["peer"]["state"], "passive", "{cluster}");

    // Upgraded, lb2 speaks version 2 with another file: lb1 follows, and says so.
    let other = cluster::wire::config_hash(b"another site file");
    send(Some(other));
    beat_where(&lb2, |b| b.config.is_some());
    lb1.wait_for_line(
        "lb2 speaks heartbeat version 2 again",
        Duration::from_secs(5),
    );
    let cluster = cluster_of(lb1_admin).await;
    assert_eq!(cluster["peer"]["wire_version"], 2, "{cluster}");
    assert_eq!(cluster["config_mismatch"], true, "{cluster}");
}
