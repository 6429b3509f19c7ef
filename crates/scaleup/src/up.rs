//! `scaleup up`: every node of a site on this machine, each in its own process, as
//! they would be on their own servers.
//!
//! Nodes start in dependency order (application servers, then web servers, then
//! load balancers), each once the previous tier answers its health check. A node
//! that dies is restarted after a short back-off. Ctrl-C (or SIGTERM) stops the
//! nodes in reverse order with SIGTERM, so load balancers drain first, and waits for
//! each to exit. Nodes also stop on their own if this supervisor disappears (they
//! watch their standard input), so none is ever left behind.
//!
//! With `admin_token_env` in `[site]`, every node gets the admin token in that
//! variable: the supervisor's own value when it has one, else a random token made
//! here, written 0600 into the state directory (`admin.token`) for `scaleup drain`
//! and `ready`, and removed when the site stops.
//!
//! Each node's standard output and error are shown on the terminal, prefixed with
//! its name, and appended to `STATE/logs/NODE.log`, where `scaleup trace` looks
//! for a request's lines next to the access logs.
//!
//! A node upgraded with `scaleup upgrade` starts its own successor, which takes its
//! sockets over; when the old process exits, the successor becomes this supervisor's
//! child (it is the subreaper of every node it starts) and is followed from then on:
//! restarted if it dies, stopped with the rest. The pid file the successor writes
//! (`STATE/run/NODE.pid`) says which process it is.
//!
//! With `managed = true` in `[database]`, a local MariaDB primary and its replicas
//! (`db::managed`) start before every node, with their data under the state directory,
//! and stop after every node has stopped.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use site::{Node, Role, Site};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::SiteArgs;

/// How long a node may take to answer its health check after starting.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a node may take to stop after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(15);

pub fn up(args: &SiteArgs) -> anyhow::Result<()> {
    let (path, site) = crate::load_site(args, true)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    runtime.block_on(supervise(&path, &site))
}

/// Nodes in start order: what a tier depends on starts first.
fn start_order(site: &Site) -> Vec<(Role, Node)> {
    let mut nodes: Vec<(Role, Node)> = site.nodes().map(|(r, n)| (r, n.clone())).collect();
    nodes.sort_by_key(|(role, _)| match role {
        Role::App => 0,
        Role::Web => 1,
        Role::Lb => 2,
    });
    nodes
}

async fn supervise(path: &Path, site: &Site) -> anyhow::Result<()> {
    let exe = std::env::current_exe()?;
    let order = start_order(site);
    println!(
        "scaleup: starting {} ({} nodes) from {}",
        site.name,
        order.len(),
        path.display()
    );
    // Before any node writes into it: it will hold the database, keys and logs.
    crate::private_dir(&site.state_dir, false)?;
    // A node's successor (an upgrade) outlives the node's first process: it becomes
    // this process's child then, not init's, so it can be followed and stopped.
    nix::sys::prctl::set_child_subreaper(true)
        .map_err(|e| anyhow::anyhow!("cannot become the nodes' subreaper: {e}"))?;
    // Made here, before any node starts, so nodes that end TLS share one certificate.
    if site.has_https() {
        crate::configs::cert_files(site)?;
    }
    let mut signals = Signals::new()?;
    let token = admin_token(site)?;
    let managed = start_managed_database(site).await?;
    let launch = Launch {
        exe,
        site: path.to_path_buf(),
        env: token.clone(),
        state_dir: site.state_dir.clone(),
    };
    let result = run_nodes(site, order, &launch, &mut signals).await;
    if token.is_some() {
        let _ = std::fs::remove_file(crate::admin::token_path(site));
    }
    if let Some(managed) = managed {
        println!("  stopping the managed MariaDB servers");
        managed.stop().await;
        println!("  stopped  MariaDB");
    }
    result
}

/// The admin token the nodes get, as (variable, value), written where the command
/// line finds it; `None` when the site names no `admin_token_env`.
fn admin_token(site: &Site) -> anyhow::Result<Option<(String, String)>> {
    let Some(var) = &site.admin_token_env else {
        return Ok(None);
    };
    let token = match site.admin_token() {
        Ok(Some(token)) => token,
        // 256 random bits, as hex: fits a header, and nothing to escape anywhere.
        _ => (0..32)
            .map(|_| format!("{:02x}", rand::random::<u8>()))
            .collect(),
    };
    crate::write_private(&crate::admin::token_path(site), &format!("{token}\n"))?;
    Ok(Some((var.clone(), token)))
}

/// How a node is started: the binary, the site file, and the admin token's variable.
#[derive(Clone)]
struct Launch {
    exe: std::path::PathBuf,
    site: std::path::PathBuf,
    env: Option<(String, String)>,
    /// Where `logs/NODE.log` goes.
    state_dir: std::path::PathBuf,
}

/// Starts the site's MariaDB servers when `[database]` says `managed = true`.
async fn start_managed_database(site: &Site) -> anyhow::Result<Option<db::managed::Managed>> {
    let site::Database::Mysql(m) = &site.database else {
        return Ok(None);
    };
    if !m.managed {
        return Ok(None);
    }
    let spec = crate::configs::managed_spec(site)?.expect("a managed [database]");
    let started = Instant::now();
    println!(
        "  starting MariaDB primary on {} and {} replica(s) (data in {})",
        spec.primary.address(),
        spec.replicas.len(),
        spec.dir.display()
    );
    let managed = db::managed::Managed::start(&spec)
        .await
        .map_err(|e| anyhow::anyhow!("the managed database did not start: {e}"))?;
    // The site's durability choice for a write no replica acknowledges.
    managed
        .set_on_no_replica_ack(crate::configs::replica_ack(m.on_no_replica_ack))
        .await
        .map_err(|e| anyhow::anyhow!("the managed database did not take on_no_replica_ack: {e}"))?;
    println!(
        "  ready    MariaDB (replication running) in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(Some(managed))
}

/// Starts the nodes in order, waits for Ctrl-C, and stops them.
async fn run_nodes(
    site: &Site,
    order: Vec<(Role, Node)>,
    launch: &Launch,
    signals: &mut Signals,
) -> anyhow::Result<()> {
    let mut tasks = Vec::new();
    for (role, node) in order {
        println!(
            "  starting {:<6} {:<4} on {} (admin {})",
            node.name,
            role.as_str(),
            node.listen,
            node.admin
        );
        let started = Instant::now();
        let mut running = spawn_node(launch, &node.name)?;
        let ready = tokio::select! {
            ready = wait_ready(&node, Some(running.process.id())) => ready,
            status = running.process.wait() => Err(anyhow::anyhow!("it exited ({status})")),
            _ = signals.recv() => Err(anyhow::anyhow!("interrupted")),
        };
        let (trigger, stop) = net::shutdown::channel();
        let task = tokio::spawn(keep_running(launch.clone(), node.clone(), running, stop));
        tasks.push((node.name.clone(), trigger, task));
        if let Err(e) = ready {
            stop_all(tasks).await;
            anyhow::bail!(
                "{} did not start: {e:#}; its log lines above say why",
                node.name
            );
        }
        println!(
            "  ready    {:<6} in {:.1} s",
            node.name,
            started.elapsed().as_secs_f64()
        );
    }
    match &site.cluster {
        Some(cluster) => {
            let by_rank = |l: &&site::LbNode| (l.priority, std::cmp::Reverse(l.node.name.clone()));
            let first = site
                .lbs
                .iter()
                .max_by_key(by_rank)
                .map_or("?", |l| l.node.name.as_str());
            let second = site
                .lbs
                .iter()
                .min_by_key(by_rank)
                .map_or("?", |l| l.node.name.as_str());
            let plain = format!("http://{}/", cluster.floating.describe());
            match &cluster.floating {
                site::Floating::Local {
                    tls_address: Some(tls),
                    ..
                } => {
                    println!(
                        "\n{} is up: open https://localhost:{}/",
                        site.name,
                        tls.port()
                    );
                    println!("  {plain} {}", plain_http_words(site));
                }
                _ => println!("\n{} is up: open {plain}", site.name),
            }
            println!(
                "  (the load balancers' floating address: {first} holds it, {second} stands by)"
            );
        }
        None => {
            println!(
                "
{} is up. Open one of the load balancers (the site's DNS lists both):",
                site.name
            );
            for lb in &site.lbs {
                if let Some(tls) = lb.tls_listen {
                    println!("  https://localhost:{}/   ({})", tls.port(), lb.node.name);
                }
            }
            for lb in &site.lbs {
                let words = if lb.tls_listen.is_some() {
                    plain_http_words(site)
                } else {
                    ""
                };
                let line = format!("  http://{}/   ({}) {words}", lb.node.listen, lb.node.name);
                println!("{}", line.trim_end());
            }
        }
    }
    if site.has_https() && site.tls.files.is_none() {
        let cert = crate::configs::cert_path(site);
        println!(
            "The HTTPS certificate is self-signed ({cert}). To trust it:\n  \
             curl: --cacert {cert}\n  \
             this machine: cp {cert} /usr/local/share/ca-certificates/{name}.crt && update-ca-certificates\n  \
             a browser: import {cert} as an authority, or accept the warning once",
            cert = cert.display(),
            name = site.name,
        );
    }
    for lb in &site.lbs {
        println!(
            "  dashboard: http://{}/dashboard   ({})",
            lb.node.admin, lb.node.name
        );
    }
    for lb in &site.lbs {
        println!(
            "  stats: http://{}/stats   ({})",
            lb.node.admin, lb.node.name
        );
    }
    println!("Ctrl-C stops every node.\n");

    signals.recv().await;
    println!("\nscaleup: stopping");
    stop_all(tasks).await;
    println!("scaleup: every node stopped");
    Ok(())
}

/// What the plain-HTTP address does on a site with HTTPS, for the printed URLs.
fn plain_http_words(site: &Site) -> &'static str {
    if site.balancer.https_redirect {
        "(plain HTTP: redirects to HTTPS)"
    } else {
        "(plain HTTP, not redirected: https_redirect = false)"
    }
}

/// Stops the nodes one by one in reverse start order (load balancers first, so no
/// client is sent to a tier that is already gone), waiting for each to exit.
async fn stop_all(tasks: Vec<(String, net::shutdown::Trigger, tokio::task::JoinHandle<()>)>) {
    for (name, trigger, task) in tasks.into_iter().rev() {
        trigger.fire();
        if task.await.is_err() {
            eprintln!("scaleup: the supervisor of {name} panicked");
        }
    }
}

/// A node's process, and the write end of its standard input: the node runs while
/// this end is open (its successor after an upgrade inherits the other end). It is
/// kept apart from the `Child` because `Child::wait` closes the child's stdin.
struct Running {
    process: Process,
    _lifeline: tokio::process::ChildStdin,
}

/// The process of a node: started here, or a successor adopted after an upgrade.
enum Process {
    Spawned {
        child: Child,
        pid: u32,
    },
    Adopted {
        pid: u32,
        /// Its exit status, from a blocking `waitpid` on a thread of its own (tokio's
        /// process driver knows only the children it started).
        exited: tokio::task::JoinHandle<Exit>,
    },
}

/// How a node's process ended.
struct Exit {
    success: bool,
    /// In words, for the terminal.
    status: String,
}

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.status)
    }
}

impl Process {
    fn id(&self) -> u32 {
        match self {
            Process::Spawned { pid, .. } => *pid,
            Process::Adopted { pid, .. } => *pid,
        }
    }

    /// Waits for the process to exit.
    async fn wait(&mut self) -> Exit {
        match self {
            Process::Spawned { child, .. } => match child.wait().await {
                Ok(status) => Exit {
                    success: status.success(),
                    status: status.to_string(),
                },
                Err(e) => Exit {
                    success: false,
                    status: e.to_string(),
                },
            },
            Process::Adopted { exited, .. } => exited.await.unwrap_or_else(|e| Exit {
                success: false,
                status: e.to_string(),
            }),
        }
    }

    /// The successor of this node's process, now this supervisor's child: the pid in
    /// the node's pid file, when it is another process than `self` and ours to wait for.
    fn successor(&self, launch: &Launch, name: &str) -> Option<Process> {
        let file = net::handover::pid_path(&launch.state_dir, name);
        let pid: u32 = std::fs::read_to_string(file).ok()?.trim().parse().ok()?;
        if pid == self.id() || parent_of(pid)? != std::process::id() || !runs_node(pid, name) {
            return None;
        }
        let exited = tokio::task::spawn_blocking(move || {
            use nix::sys::wait::WaitStatus;
            match nix::sys::wait::waitpid(Pid::from_raw(pid as i32), None) {
                Ok(WaitStatus::Exited(_, code)) => Exit {
                    success: code == 0,
                    status: format!("exit status: {code}"),
                },
                Ok(WaitStatus::Signaled(_, signal, _)) => Exit {
                    success: false,
                    status: format!("signal: {signal}"),
                },
                Ok(other) => Exit {
                    success: false,
                    status: format!("{other:?}"),
                },
                Err(e) => Exit {
                    success: false,
                    status: e.to_string(),
                },
            }
        });
        Some(Process::Adopted { pid, exited })
    }
}

/// Whether process `pid` is a `scaleup run NAME` (a pid file left by a process long
/// gone may name a pid the system gave to another process since).
fn runs_node(pid: u32, name: &str) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|cmdline| {
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        args.windows(2)
            .any(|w| w[0] == b"run" && w[1] == name.as_bytes())
    })
}

/// The parent pid of process `pid`, from `/proc` (`None` once it is gone).
fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // After the command's closing parenthesis: state, then the parent's pid.
    let (_, rest) = stat.rsplit_once(") ")?;
    rest.split(' ').nth(1)?.parse().ok()
}

fn spawn_node(launch: &Launch, name: &str) -> anyhow::Result<Running> {
    let mut command = Command::new(&launch.exe);
    if let Some((var, token)) = &launch.env {
        command.env(var, token);
    }
    let mut child = command
        .arg("run")
        .arg(name)
        .arg("--site")
        .arg(&launch.site)
        .arg("--supervised")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Own process group: a terminal's Ctrl-C reaches only the supervisor, which
        // then stops the nodes in order.
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| anyhow::anyhow!("cannot start {name}: {e}"))?;
    let lifeline = child.stdin.take().expect("stdin is piped");
    // Both streams go to one file, each line whole (a shared, locked writer).
    let log = open_node_log(launch, name).map(|f| std::sync::Arc::new(std::sync::Mutex::new(f)));
    for (stream, is_err) in [
        (
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Unpin + Send>),
            false,
        ),
        (
            child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Unpin + Send>),
            true,
        ),
    ] {
        let Some(stream) = stream else { continue };
        let name = name.to_string();
        let log = log.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stream).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(log) = &log {
                    use std::io::Write;
                    if let Ok(mut file) = log.lock() {
                        let _ = writeln!(file, "{line}");
                    }
                }
                if is_err {
                    eprintln!("{name:>6} | {line}");
                } else {
                    println!("{name:>6} | {line}");
                }
            }
        });
    }
    Ok(Running {
        process: Process::Spawned {
            pid: child.id().unwrap_or(0),
            child,
        },
        _lifeline: lifeline,
    })
}

/// Opens `STATE/logs/NODE.log` for appending; `None` (said once on the terminal)
/// when it cannot be: the node still runs, its lines still reach the terminal.
fn open_node_log(launch: &Launch, name: &str) -> Option<std::fs::File> {
    let path = crate::trace::node_log_in(&launch.state_dir, name);
    let opened = path
        .parent()
        .map_or(Ok(()), std::fs::create_dir_all)
        .and_then(|()| {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
        });
    match opened {
        Ok(file) => Some(file),
        Err(e) => {
            eprintln!(
                "scaleup: cannot write {}: {e}; {name}'s lines go to the terminal only",
                path.display()
            );
            None
        }
    }
}

/// Polls the node's admin listener until the process `pid` answers `/status` (not
/// some other process left on the port) and `/healthz` says 200.
async fn wait_ready(node: &Node, pid: Option<u32>) -> anyhow::Result<()> {
    let deadline = Instant::now() + READY_TIMEOUT;
    let mut last = String::from("no answer yet");
    while Instant::now() < deadline {
        match ready(node, pid).await {
            Ok(()) => return Ok(()),
            Err(e) => last = format!("{e:#}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    anyhow::bail!(
        "no healthy answer on {} within {READY_TIMEOUT:?} (last: {last})",
        node.admin
    )
}

async fn ready(node: &Node, pid: Option<u32>) -> anyhow::Result<()> {
    let (_, status) = crate::probe::get(node.admin, "/status", Duration::from_secs(1)).await?;
    let answered: serde_json::Value = serde_json::from_str(&status)?;
    let answered = answered["pid"].as_u64();
    anyhow::ensure!(
        answered == pid.map(u64::from),
        "{} answers from pid {answered:?}, not from the node just started: another process holds the port",
        node.admin
    );
    match crate::probe::get(node.admin, "/healthz", Duration::from_secs(1)).await? {
        (200, _) => Ok(()),
        (status, body) => anyhow::bail!("status {status}: {}", body.trim()),
    }
}

/// Keeps one node running until `stop`: restarts it when it dies, stops it with
/// SIGTERM (then SIGKILL) when asked.
async fn keep_running(launch: Launch, node: Node, mut running: Running, stop: net::Shutdown) {
    let mut backoff = Duration::from_millis(500);
    loop {
        tokio::select! {
            status = running.process.wait() => {
                if stop.is_triggered() {
                    return;
                }
                if let Some(next) = running.process.successor(&launch, &node.name) {
                    println!(
                        "scaleup: {} now runs as pid {} (upgraded; pid {} exited: {status})",
                        node.name,
                        next.id(),
                        running.process.id()
                    );
                    running.process = next;
                    backoff = Duration::from_millis(500);
                    continue;
                }
                eprintln!("scaleup: {} exited ({status}); restarting in {:.1} s", node.name, backoff.as_secs_f64());
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = stop.wait() => return,
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
                match spawn_node(&launch, &node.name) {
                    Ok(next) => running = next,
                    Err(e) => {
                        eprintln!("scaleup: {e:#}");
                        return;
                    }
                }
            }
            _ = stop.wait() => {
                terminate(&node.name, &mut running.process).await;
                return;
            }
        }
    }
}

async fn terminate(name: &str, process: &mut Process) {
    let pid = Pid::from_raw(process.id() as i32);
    let _ = kill(pid, Signal::SIGTERM);
    match tokio::time::timeout(STOP_TIMEOUT, process.wait()).await {
        Ok(exit) if exit.success => println!("  stopped  {name}"),
        Ok(status) => println!("  stopped  {name} ({status})"),
        Err(_) => {
            eprintln!("scaleup: {name} did not stop within {STOP_TIMEOUT:?}; killing it");
            let _ = kill(pid, Signal::SIGKILL);
            let _ = process.wait().await;
        }
    }
}

/// Ctrl-C and SIGTERM, as one stream.
struct Signals {
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> anyhow::Result<Signals> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Signals {
            int: signal(SignalKind::interrupt())?,
            term: signal(SignalKind::terminate())?,
        })
    }

    async fn recv(&mut self) {
        tokio::select! {
            _ = self.int.recv() => {}
            _ = self.term.recv() => {}
        }
    }
}
