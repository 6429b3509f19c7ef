//! Hosts for the multi-host tests: network namespaces made by the test, one bridge,
//! private addresses that exist only inside them, removed when dropped. Needs root and
//! iproute2 (installed by scripts/install-test-deps): outside CI a test says so and
//! passes when it cannot run; under CI=true it fails instead.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use super::Proc;

pub const NET: &str = "10.201.0";
pub const VIP: &str = "10.201.0.100";

/// Namespaces and links made for one test run, removed on drop.
pub struct Hosts {
    prefix: String,
    names: Vec<String>,
}

pub fn ip(args: &[&str]) -> String {
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
    pub fn new(hosts: &[(&str, u8)]) -> Hosts {
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

    pub fn ns(&self, host: &str) -> String {
        format!("{}-{host}", self.prefix)
    }

    /// Runs a node of `site` inside `host`.
    pub fn run(&self, host: &str, node: &str, site: &Path) -> Proc {
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
    pub fn holds_vip(&self, host: &str) -> bool {
        ip(&["-n", &self.ns(host), "-4", "addr", "show", "dev", "eth0"])
            .contains(&format!("inet {VIP}/"))
    }

    pub fn mac(&self, host: &str) -> String {
        let text = ip(&["-n", &self.ns(host), "link", "show", "eth0"]);
        text.split_whitespace()
            .skip_while(|w| *w != "link/ether")
            .nth(1)
            .expect("eth0 has a MAC")
            .to_string()
    }

    /// The MAC the client's ARP cache has for the floating IP.
    pub fn client_sees(&self) -> String {
        ip(&["-n", &self.ns("client"), "neigh", "show", VIP])
    }

    /// One request from the client to the floating IP.
    pub fn client_get(&self) -> bool {
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
    pub fn partition(&self, cut: bool) {
        self.cable("lb2", !cut);
    }

    /// Plugs `host`'s cable in (`true`) or pulls it out (its link goes down: nothing
    /// reaches it, nothing it sends leaves, as when a server loses power or its switch).
    pub fn cable(&self, host: &str, plugged: bool) {
        ip(&[
            "-n",
            &self.ns(host),
            "link",
            "set",
            "eth0",
            if plugged { "up" } else { "down" },
        ]);
    }

    /// `program` run inside `host`.
    pub fn command(&self, host: &str, program: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.ns(host), program]);
        cmd
    }

    /// One HTTP request from the client host: its status and body. `args` are curl's.
    pub fn client_http(&self, args: &[&str]) -> (u16, String) {
        let out = self
            .command("client", "curl")
            .args(["-s", "-m", "10", "-w", "\n%{http_code}"])
            .args(args)
            .output()
            .expect("curl runs");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, status) = text.rsplit_once('\n').unwrap_or(("", "0"));
        (status.trim().parse().unwrap_or(0), body.to_string())
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        for ns in &self.names {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

pub fn wait_until(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !check() {
        assert!(start.elapsed() < timeout, "{what}: not within {timeout:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
    start.elapsed()
}

pub fn can_run() -> bool {
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

/// The `[site]`, `[cluster]` (linux mode, the floating IP on eth0) and the two
/// `[[lb]]` sections of a site on these hosts: lb1 at `NET.11`, lb2 at `NET.12`, each
/// with its admin listener on its own loopback (9011, 9012); the rest is the caller's.
pub fn cluster_site(state_dir: &Path, preempt: bool) -> String {
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
preempt = {preempt}

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
"#,
        dir = state_dir.display()
    )
}
