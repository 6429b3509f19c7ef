//! Running nodes under systemd: the unit `scaleup systemd` prints passes
//! `systemd-analyze verify`, and a node told `$NOTIFY_SOCKET` sends `READY=1` once it
//! answers (and `STOPPING=1` when it stops), as a `Type=notify` unit expects; after
//! `scaleup upgrade`, the node's new process says `MAINPID=` with its own pid.

mod common;

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::*;
use nix::sys::signal::Signal;

/// `true` when `systemd-analyze` is installed (see `common::needs`).
fn systemd_analyze_available() -> bool {
    needs(
        program("systemd-analyze").is_some(),
        "systemd-analyze",
        "systemd",
    )
}

/// The example site as installed on servers: a linux-mode cluster on port 80, the web
/// server on 80 and 443, the app on MariaDB, secrets from the environment, state in
/// /var/lib.
const SERVERS: &str = include_str!("../../../examples/servers.toml");

#[test]
fn the_units_of_every_role_pass_systemd_analyze_verify() {
    if !systemd_analyze_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let servers = dir.path().join("servers.toml");
    std::fs::write(&servers, SERVERS).unwrap();
    // The default site too: a local cluster, state outside /var/lib, a literal secret.
    let local = write_default_site(free_base(DEFAULT_SITE_PORTS), dir.path());
    let binary = std::fs::canonicalize(env!("CARGO_BIN_EXE_scaleup")).unwrap();
    for (site, node) in [
        (&servers, "lb1"),
        (&servers, "web1"),
        (&servers, "app1"),
        (&local, "lb2"),
        (&local, "web1"),
        (&local, "app1"),
    ] {
        let out = scaleup()
            .args(["systemd", node, "--site"])
            .arg(site)
            .output()
            .unwrap();
        let unit = String::from_utf8(out.stdout).unwrap();
        let notes = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{node}: {notes}");
        // The unit names this very binary, so verify finds its ExecStart.
        assert!(
            unit.contains(&format!(
                "\nExecStart={} run {node} --site ",
                binary.display()
            )),
            "{unit}"
        );
        let file = dir.path().join(format!("scaleup-{node}.service"));
        std::fs::write(&file, &unit).unwrap();
        let verify = Command::new("systemd-analyze")
            .arg("verify")
            .arg(&file)
            .output()
            .unwrap();
        let said = String::from_utf8_lossy(&verify.stderr);
        eprintln!("{node} ({}):\n{unit}\nverify: {said}", site.display());
        assert!(
            verify.status.success(),
            "systemd-analyze verify {node}: {said}"
        );
        // verify exits 0 on a setting it ignores: any word about this unit is a fault.
        let name = file.file_name().unwrap().to_string_lossy();
        assert!(
            !said.lines().any(|l| l.contains(&*name)),
            "systemd-analyze verify has something to say about {name}: {said}"
        );
    }
}

/// Receives one notification (at most `timeout` from now).
fn receive(socket: &UnixDatagram, timeout: Duration) -> String {
    socket.set_read_timeout(Some(timeout)).unwrap();
    let mut buf = [0u8; 512];
    let n = socket
        .recv(&mut buf)
        .unwrap_or_else(|e| panic!("no notification within {timeout:?}: {e}"));
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

/// Starts `node` of `site` with `$NOTIFY_SOCKET` set to `target`.
fn run_notified(node: &str, site: &Path, target: &str) -> Proc {
    let mut cmd = scaleup();
    cmd.arg("run")
        .arg(node)
        .arg("--site")
        .arg(site)
        .env("NOTIFY_SOCKET", target);
    Proc::spawn(node, cmd)
}

/// Right after `READY=1`, without any retry: the node's listener and admin listener
/// both answer.
fn answers_now(listen: u16, admin: u16) {
    let healthz = raw_exchange(
        ([127, 0, 0, 1], admin).into(),
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status_of(&healthz), 200, "{healthz}");
    let page = raw_exchange(
        ([127, 0, 0, 1], listen).into(),
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status_of(&page), 200, "{page}");
}

#[test]
fn a_web_server_says_ready_once_it_answers_and_stopping_when_it_stops() {
    let base = free_base(DEFAULT_SITE_PORTS);
    let dir = tempfile::tempdir().unwrap();
    let site = write_default_site(base, dir.path());
    let path = dir.path().join("notify");
    let socket = UnixDatagram::bind(&path).unwrap();
    let mut web = run_notified("web1", &site, &path.to_string_lossy());

    let ready = receive(&socket, Duration::from_secs(15));
    assert!(ready.lines().any(|l| l == "READY=1"), "{ready:?}");
    answers_now(base + 3, base + 13);

    web.signal(Signal::SIGTERM);
    let stopping = receive(&socket, Duration::from_secs(5));
    assert_eq!(stopping, "STOPPING=1");
    assert_eq!(web.wait_exit(Duration::from_secs(15)), Some(0));
    // Once: nothing else was sent.
    socket.set_nonblocking(true).unwrap();
    assert!(socket.recv(&mut [0u8; 64]).is_err(), "a third notification");
}

#[test]
fn an_app_server_says_ready_on_an_abstract_socket_after_opening_its_database() {
    let base = free_base(DEFAULT_SITE_PORTS);
    let dir = tempfile::tempdir().unwrap();
    let site = write_default_site(base, dir.path());
    let name = format!("scaleup-test-notify-{}-{base}", std::process::id());
    let socket = {
        use std::os::linux::net::SocketAddrExt;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        UnixDatagram::bind_addr(&addr).unwrap()
    };
    let _app = run_notified("app1", &site, &format!("@{name}"));

    let ready = receive(&socket, Duration::from_secs(15));
    assert!(ready.lines().any(|l| l == "READY=1"), "{ready:?}");
    // The database exists by then: the app opened it before it served.
    assert!(dir.path().join("foobar.db").exists());
    answers_now(base + 4, base + 14);
}

#[test]
fn without_notify_socket_a_node_runs_and_sighup_does_not_stop_it() {
    let base = free_base(DEFAULT_SITE_PORTS);
    let dir = tempfile::tempdir().unwrap();
    let site = write_default_site(base, dir.path());
    let mut cmd = scaleup();
    cmd.arg("run")
        .arg("web1")
        .arg("--site")
        .arg(&site)
        .env_remove("NOTIFY_SOCKET");
    let web = Proc::spawn("web1", cmd);
    web.wait_for_line("serving", Duration::from_secs(15));
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(wait_status(
        &format!("http://127.0.0.1:{}/healthz", base + 13),
        200,
        Duration::from_secs(15),
    ));
    // SIGHUP (a unit's ExecReload) does not stop the node.
    web.signal(Signal::SIGHUP);
    web.wait_for_line("SIGHUP", Duration::from_secs(5));
    rt.block_on(wait_status(
        &format!("http://127.0.0.1:{}/healthz", base + 13),
        200,
        Duration::from_secs(2),
    ));
}

/// On a server of its own under systemd, `scaleup upgrade` has the node start its
/// successor, which says `MAINPID=` (its own pid) with `READY=1` once it serves,
/// before the old process, now drained, exits.
#[test]
fn an_upgraded_node_tells_systemd_its_new_main_pid() {
    let base = free_base(DEFAULT_SITE_PORTS);
    let dir = tempfile::tempdir().unwrap();
    let site = write_default_site(base, dir.path());
    let path = dir.path().join("notify");
    let socket = UnixDatagram::bind(&path).unwrap();
    let mut cmd = scaleup();
    cmd.args(["run", "web1", "--site"])
        .arg(&site)
        .env("NOTIFY_SOCKET", &path)
        .env("SCALEUP_ADMIN_TOKEN", "upgrade-test-token");
    let mut old = Proc::spawn("web1", cmd);
    let ready = receive(&socket, Duration::from_secs(15));
    assert!(ready.lines().any(|l| l == "READY=1"), "{ready:?}");

    let out = scaleup()
        .args(["upgrade", "web1", "--site"])
        .arg(&site)
        .env("SCALEUP_ADMIN_TOKEN", "upgrade-test-token")
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let successor = receive(&socket, Duration::from_secs(15));
    let new_pid: u32 = successor
        .lines()
        .find_map(|l| l.strip_prefix("MAINPID="))
        .unwrap_or_else(|| panic!("no MAINPID in {successor:?}"))
        .parse()
        .unwrap();
    // Stopped by the test however it ends: no process of a systemd unit outlives it.
    struct Kill(u32);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ =
                nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.0 as i32), Signal::SIGKILL);
        }
    }
    let _successor = Kill(new_pid);
    assert!(successor.lines().any(|l| l == "READY=1"), "{successor:?}");
    assert_ne!(new_pid, old.child.id());
    assert!(
        said.contains(&format!("pid {} -> {new_pid}", old.child.id())),
        "{said}"
    );
    // The old process has drained and exited (the command waited for it).
    assert_eq!(old.wait_exit(Duration::from_secs(5)), Some(0));
    answers_now(base + 3, base + 13);
    let status = raw_exchange(
        ([127, 0, 0, 1], base + 13).into(),
        b"GET /status HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert!(status.contains(&format!("\"pid\": {new_pid},")), "{status}");
}
