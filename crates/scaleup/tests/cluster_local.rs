//! The load-balancer cluster on one machine (local mode, the default site): a
//! SIGKILL of the active node and a graceful stop, each under a bounded stream of
//! requests (`scaleup drill`), and heartbeats that are forged or replayed.

mod common;

use std::time::Duration;

use common::*;
use nix::sys::signal::Signal;

fn drill(base: u16, state: &std::path::Path, node: &str, graceful: bool) -> String {
    let mut cmd = scaleup();
    cmd.args(["drill", "kill", node, "--duration", "2s", "--base-port"])
        .arg(base.to_string())
        .arg("--state-dir")
        .arg(state);
    if graceful {
        cmd.arg("--graceful");
    }
    let out = cmd.output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    eprintln!("{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "drill failed");
    text
}

fn failed_count(report: &str) -> usize {
    let line = report
        .lines()
        .find(|l| l.contains(" failed"))
        .expect("a requests line");
    line.split(", ")
        .nth(1)
        .unwrap()
        .split(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

async fn wait_role(admin: u16, role: &str) {
    wait_status(
        &format!("http://127.0.0.1:{admin}/status"),
        200,
        Duration::from_secs(60),
    )
    .await;
    for _ in 0..300 {
        if cluster_of(admin).await["role"] == role {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the node with admin port {admin} never became {role}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_floating_address_survives_sigkill_and_graceful_stops() {
    let base = free_base(DEFAULT_SITE_PORTS);
    let state = tempfile::tempdir().unwrap();
    let mut up = start_up(base, state.path());
    let (lb1_admin, lb2_admin) = (base + 11, base + 12);
    wait_role(lb1_admin, "active").await;
    wait_role(lb2_admin, "passive").await;

    // SIGKILL of the active node: lb2 takes over because lb1's heartbeat link closed.
    let report = drill(base, state.path(), "lb1", false);
    assert!(report.contains("taken over by: lb2"), "{report}");
    assert!(report.contains("its process is gone"), "{report}");
    wait_status(
        &format!("http://127.0.0.1:{base}/healthz"),
        200,
        Duration::from_secs(2),
    )
    .await;

    // The supervisor restarts lb1; it joins as passive (preempt is off).
    wait_role(lb1_admin, "passive").await;
    assert_eq!(cluster_of(lb2_admin).await["role"], "active");

    // A graceful stop hands the address over without a single failed request.
    let report = drill(base, state.path(), "lb2", true);
    assert!(
        report.contains("taken over by: lb1 (lb2 is leaving)"),
        "{report}"
    );
    assert_eq!(failed_count(&report), 0, "{report}");

    up.signal(Signal::SIGINT);
    assert_eq!(up.wait_exit(Duration::from_secs(30)), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_and_replayed_heartbeats_are_ignored_and_counted() {
    let base = free_base(DEFAULT_SITE_PORTS);
    let state = tempfile::tempdir().unwrap();
    let site_path = write_default_site(base, state.path());
    let site = site::load(&site_path).unwrap();
    let secret = site.cluster.unwrap().secret.unwrap().resolve().unwrap();
    let lb1 = run_node("lb1", &site_path);
    let lb1_admin = base + 11;
    // No web server runs: lb1 is unhealthy, but answers /status.
    wait_status(
        &format!("http://127.0.0.1:{lb1_admin}/status"),
        200,
        Duration::from_secs(60),
    )
    .await;
    wait_role(lb1_admin, "active").await;

    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let target = ("127.0.0.1", base + 21);
    let beat = |state, boot, seq, priority| cluster::wire::Beat {
        name: "lb2".into(),
        state,
        priority,
        healthy: priority > 1,
        boot,
        seq,
        config: Some(cluster::wire::config_hash(b"a forger's site file")),
    };
    // Garbage, a beat signed with the wrong secret, and an authentic beat from an
    // old boot (a replay): each would make lb1 step down if believed.
    socket.send_to(b"not a heartbeat", target).unwrap();
    let forged = beat(cluster::State::Active, u64::MAX - 1, 1, 255).encode(b"wrong secret");
    socket.send_to(&forged, target).unwrap();
    // One authentic beat first (a weak, unhealthy passive peer: it changes nothing),
    // so that the replays below are older than something seen.
    let fresh = beat(cluster::State::Passive, 10, 5, 1).encode(&secret);
    socket.send_to(&fresh, target).unwrap();
    let replay = beat(cluster::State::Active, 10, 5, 255).encode(&secret);
    socket.send_to(&replay, target).unwrap();
    let older = beat(cluster::State::Active, 9, 99, 255).encode(&secret);
    socket.send_to(&older, target).unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;

    let status = cluster_of(lb1_admin).await;
    let rejected = &status["heartbeats"]["rejected"];
    assert_eq!(rejected["malformed"], 1, "{status}");
    assert_eq!(rejected["forged"], 1, "{status}");
    assert_eq!(rejected["replayed"], 2, "{status}");
    assert_eq!(
        status["role"], "active",
        "nothing forged or replayed moved the address: {status}"
    );
    let metrics = metrics_of(lb1_admin).await;
    assert!(
        metrics.contains(
            "scaleup_cluster_heartbeats_rejected_total{node=\"lb1\",reason=\"replayed\"} 2"
        ),
        "{metrics}"
    );
    drop(lb1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hook_mode_runs_the_users_commands_on_each_transition() {
    let base = free_base(DEFAULT_SITE_PORTS);
    let state = tempfile::tempdir().unwrap();
    let log = state.path().join("hooks.log");
    let text = site::default_site(base, &state.path().to_string_lossy(), "test-secret").replace(
        &format!("mode = \"local\"\naddress = \"127.0.0.1:{base}\""),
        &format!(
            "mode = \"hook\"\non_active = \"echo active $SCALEUP_ROLE >> {0}\"\non_passive = \"echo passive $SCALEUP_ROLE >> {0}\"",
            log.display()
        ),
    );
    assert!(text.contains("mode = \"hook\""));
    let site_path = state.path().join("site.toml");
    std::fs::write(&site_path, text).unwrap();

    // Alone, lb2 becomes active; when lb1 (higher priority, preempt off) joins it
    // stays; when lb2 stops cleanly, lb1 takes over.
    let _app = run_node("app1", &site_path);
    let _web = run_node("web1", &site_path);
    wait_status(
        &format!("http://127.0.0.1:{}/healthz", base + 13),
        200,
        Duration::from_secs(60),
    )
    .await;
    let mut lb2 = run_node("lb2", &site_path);
    wait_role(base + 12, "active").await;
    let lb1 = run_node("lb1", &site_path);
    wait_role(base + 11, "passive").await;
    lb2.signal(Signal::SIGTERM);
    wait_role(base + 11, "active").await;
    assert_eq!(
        lb2.wait_exit(Duration::from_secs(15)),
        Some(0),
        "a clean stop exits 0"
    );
    let mut lines = String::new();
    for _ in 0..100 {
        lines = std::fs::read_to_string(&log).unwrap_or_default();
        if lines.lines().count() >= 5 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Each node runs on_passive at start (clearing an address left over), lb2 then
    // on_active; on its clean stop lb1 runs on_active and lb2 on_passive.
    let count = |needle: &str| lines.lines().filter(|l| *l == needle).count();
    assert_eq!(count("active active"), 2, "{lines}");
    assert_eq!(count("passive passive"), 3, "{lines}");
    drop(lb1);
}
