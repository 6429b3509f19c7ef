//! The load-balancer cluster across hosts: network namespaces made by this test
//! (client, lb1, lb2, web on one bridge, private addresses that exist only inside
//! them). The floating IP moves to lb2 when lb1 dies and the client follows it
//! thanks to our gratuitous ARP; it moves back when lb1 returns (preempt on); after
//! a partition heals exactly one node keeps it.
//!
//! Needs root and iproute2 (installed by scripts/install-test-deps). Outside CI the
//! test says so and passes when it cannot run; under CI=true it fails instead.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use nix::sys::signal::Signal;

const NET: &str = "10.201.0";
const VIP: &str = "10.201.0.100";

/// Namespaces and links made for one test run, removed on drop.
struct Hosts {
    prefix: String,
    names: Vec<String>,
}

fn ip(args: &[&str]) -> String {
    let out = Command::new("ip")
        .args(args)
        .output()
        .expect("ip (iproute2) runs");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

impl Hosts {
    /// `hosts` (name, last address byte) on one bridge.
    fn new(hosts: &[(&str, u8)]) -> Hosts {
        let prefix = format!("su{}", std::process::id() % 100_000);
        let mut me = Hosts {
            prefix: prefix.clone(),
            names: Vec::new(),
        };
        let sw = me.ns("sw");
        ip(&["netns", "add", &sw]);
        me.names.push(sw.clone());
        ip(&["-n", &sw, "link", "add", "br0", "type", "bridge"]);
        ip(&["-n", &sw, "link", "set", "br0", "up"]);
        for (i, (host, byte)) in hosts.iter().enumerate() {
            let ns = me.ns(host);
            ip(&["netns", "add", &ns]);
            me.names.push(ns.clone());
            let (a, b) = (format!("{prefix}{i}a"), format!("{prefix}{i}b"));
            ip(&["link", "add", &a, "type", "veth", "peer", "name", &b]);
            ip(&["link", "set", &a, "netns", &ns]);
            ip(&["link", "set", &b, "netns", &sw]);
            ip(&["-n", &ns, "link", "set", &a, "name", "eth0"]);
            ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{NET}.{byte}/24"),
                "dev",
                "eth0",
            ]);
            ip(&["-n", &ns, "link", "set", "eth0", "up"]);
            ip(&["-n", &ns, "link", "set", "lo", "up"]);
            ip(&["-n", &sw, "link", "set", &b, "master", "br0"]);
            ip(&["-n", &sw, "link", "set", &b, "up"]);
        }
        me
    }

    fn ns(&self, host: &str) -> String {
        format!("{}-{host}", self.prefix)
    }

    /// Runs a node of `site` inside `host`.
    fn run(&self, host: &str, node: &str, site: &Path) -> Proc {
        let mut cmd = Command::new("ip");
        cmd.args([
            "netns",
            "exec",
            &self.ns(host),
            env!("CARGO_BIN_EXE_scaleup"),
            "run",
            node,
            "--site",
        ])
        .arg(site);
        Proc::spawn(node, cmd)
    }

    /// Whether `host` holds the floating IP on eth0.
    fn holds_vip(&self, host: &str) -> bool {
        ip(&["-n", &self.ns(host), "-4", "addr", "show", "dev", "eth0"])
            .contains(&format!("inet {VIP}/"))
    }

    fn mac(&self, host: &str) -> String {
        let text = ip(&["-n", &self.ns(host), "link", "show", "eth0"]);
        text.split_whitespace()
            .skip_while(|w| *w != "link/ether")
            .nth(1)
            .expect("eth0 has a MAC")
            .to_string()
    }

    /// The MAC the client's ARP cache has for the floating IP.
    fn client_sees(&self) -> String {
        ip(&["-n", &self.ns("client"), "neigh", "show", VIP])
    }

    /// One request from the client to the floating IP.
    fn client_get(&self) -> bool {
        Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.ns("client"),
                "curl",
                "-s",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "-m",
                "1",
            ])
            .arg(format!("http://{VIP}/healthz"))
            .output()
            .map(|o| o.stdout == b"200")
            .unwrap_or(false)
    }

    /// Cuts (or heals) lb2's cable: lb1 and the client keep talking, lb2 is alone.
    fn partition(&self, cut: bool) {
        ip(&[
            "-n",
            &self.ns("lb2"),
            "link",
            "set",
            "eth0",
            if cut { "down" } else { "up" },
        ]);
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        for ns in &self.names {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

fn wait_until(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !check() {
        assert!(start.elapsed() < timeout, "{what}: not within {timeout:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
    start.elapsed()
}

fn can_run() -> bool {
    let root = nix::unistd::Uid::effective().is_root();
    let tools = ["ip", "curl"]
        .iter()
        .all(|t| Command::new(t).arg("-V").output().is_ok());
    if root && tools {
        return true;
    }
    let why = format!("needs root, iproute2 and curl (root: {root}, tools: {tools}); run scripts/install-test-deps");
    assert!(std::env::var("CI").as_deref() != Ok("true"), "{why}");
    eprintln!("SKIPPED outside CI: {why}");
    false
}

#[test]
fn floating_ip_moves_with_gratuitous_arp_and_a_healed_partition_keeps_one_owner() {
    if !can_run() {
        return;
    }
    let hosts = Hosts::new(&[("client", 10), ("lb1", 11), ("lb2", 12), ("web", 13)]);
    let state = tempfile::tempdir().unwrap();
    let site = state.path().join("site.toml");
    std::fs::write(
        &site,
        format!(
            r#"
[site]
name = "www.foobar.com"
state_dir = "{dir}"

[cluster]
mode = "linux"
interface = "eth0"
address = "{VIP}/24:80"
secret_env = "SCALEUP_TEST_SECRET"
interval = "100ms"
preempt = true

[[lb]]
name = "lb1"
listen = "{NET}.11:8080"
admin = "127.0.0.1:9011"
heartbeat = "{NET}.11:7000"
priority = 150

[[lb]]
name = "lb2"
listen = "{NET}.12:8080"
admin = "127.0.0.1:9012"
heartbeat = "{NET}.12:7000"
priority = 100

[[web]]
name = "web1"
listen = "{NET}.13:80"
admin = "127.0.0.1:9013"

[[app]]
name = "app1"
listen = "127.0.0.1:8004"
admin = "127.0.0.1:9014"
"#,
            dir = state.path().display()
        ),
    )
    .unwrap();
    std::env::set_var("SCALEUP_TEST_SECRET", "a shared secret");

    let _app = hosts.run("web", "app1", &site);
    let _web = hosts.run("web", "web1", &site);
    let lb1 = hosts.run("lb1", "lb1", &site);
    wait_until("lb1 takes the floating IP", Duration::from_secs(30), || {
        hosts.holds_vip("lb1")
    });
    // Served (lb1 has seen web1 up) before lb2 joins: a load balancer whose web
    // servers are all down hands the address to a healthy peer, and web1 starts at the
    // same time as lb1.
    wait_until(
        "the client reaches the site",
        Duration::from_secs(30),
        || hosts.client_get(),
    );
    let _lb2 = hosts.run("lb2", "lb2", &site);
    std::thread::sleep(Duration::from_millis(500));
    assert!(!hosts.holds_vip("lb2"), "lb2 stays passive");
    assert!(
        hosts.client_sees().contains(&hosts.mac("lb1")),
        "{}",
        hosts.client_sees()
    );

    // lb1 dies: lb2 takes the IP and announces it; the client follows.
    lb1.signal(Signal::SIGKILL);
    drop(lb1);
    let took = wait_until("lb2 takes the floating IP", Duration::from_secs(5), || {
        hosts.holds_vip("lb2")
    });
    wait_until("the client reaches lb2", Duration::from_secs(5), || {
        hosts.client_get()
    });
    assert!(
        hosts.client_sees().contains(&hosts.mac("lb2")),
        "the client's ARP entry points at lb2 after our announcement: {}",
        hosts.client_sees()
    );
    eprintln!("lb2 held the IP {took:?} after SIGKILL of lb1");

    // lb1 returns; with preempt on it takes the address back, lb2 releases it.
    let _lb1 = hosts.run("lb1", "lb1", &site);
    wait_until("lb1 takes the IP back", Duration::from_secs(10), || {
        hosts.holds_vip("lb1") && !hosts.holds_vip("lb2")
    });
    wait_until("the client reaches lb1", Duration::from_secs(5), || {
        hosts.client_get() && hosts.client_sees().contains(&hosts.mac("lb1"))
    });

    // Partition: both stop hearing each other and both take the IP.
    hosts.partition(true);
    wait_until(
        "both active during the partition",
        Duration::from_secs(5),
        || hosts.holds_vip("lb1") && hosts.holds_vip("lb2"),
    );
    // Healed: within about one interval exactly one keeps it, and the client reaches it.
    hosts.partition(false);
    let settled = wait_until("one owner after the heal", Duration::from_secs(2), || {
        hosts.holds_vip("lb1") && !hosts.holds_vip("lb2")
    });
    eprintln!("the split settled {settled:?} after the heal");
    wait_until(
        "the client reaches lb1 after the heal",
        Duration::from_secs(5),
        || hosts.client_get() && hosts.client_sees().contains(&hosts.mac("lb1")),
    );
}
