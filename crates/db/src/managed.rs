//! A local MariaDB primary and replicas, for `scaleup up` with `managed = true` and for the
//! tests: real `mariadbd` processes from Debian's `mariadb-server`, each on its own
//! loopback port with its data under one directory, joined by GTID replication.
//!
//! [`Managed::start`] creates what is missing (data directories with
//! `mariadb-install-db`, the application's database and user, the replication user, each
//! replica's `CHANGE MASTER TO ... MASTER_USE_GTID=slave_pos`) and reuses what exists, so
//! data survives a restart. It returns once every replica's IO and SQL threads run and it
//! has applied everything the primary had, with semi-synchronous replication on (the
//! primary's commits wait for a replica's acknowledgement, falling back after a second;
//! [`Managed::set_on_no_replica_ack`] changes that). Every server keeps a binary log of
//! what it applies, so [`crate::failover`] can promote any replica ([`Managed::topology`]
//! describes them for it). [`Managed::stop`] shuts the servers down cleanly; dropping a
//! [`Managed`] kills them, so a failing test never leaves one behind.
//!
//! Administration goes through each server's Unix socket as `root`, which
//! `mariadb-install-db --auth-root-authentication-method=normal` leaves without a password
//! and which is reachable only from this machine. The replication user shares the
//! application's password, so that nothing else needs to be stored.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use sqlx::mysql::{MySqlConnectOptions, MySqlConnection};
use sqlx::{Connection, Row};
use tokio::process::{Child, Command};

use crate::failover::{self, Node, OnNoReplicaAck, Topology};
use crate::{DbError, Server};

/// How long a server may take to accept connections after it is started. First starts
/// on a busy machine take a few seconds (InnoDB creates its files).
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a server may take to shut down after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);
/// How long replication may take to start running and catch up.
const REPLICATION_TIMEOUT: Duration = Duration::from_secs(30);
/// The account replicas use to read the primary's binary log.
const REPLICATION_USER: &str = "scaleup_repl";

/// What to run: the servers' addresses and the application's account, as in the site
/// file, and where their data lives.
#[derive(Clone, Debug)]
pub struct Spec {
    /// Each server keeps its data in `dir/NAME` (`dir/primary`, `dir/replica1`, ...).
    pub dir: PathBuf,
    pub primary: Server,
    pub replicas: Vec<Server>,
}

/// Running MariaDB servers: a primary and its replicas.
pub struct Managed {
    primary: Instance,
    replicas: Vec<Instance>,
}

/// One `mariadbd` process and its files.
pub struct Instance {
    server: Server,
    /// `server_id`: 1 for the primary, 2, 3, ... for the replicas; unique in the topology.
    server_id: u32,
    is_primary: bool,
    /// Holds `data/`, the error log and the pid file.
    dir: PathBuf,
    socket: PathBuf,
    child: Option<Child>,
}

/// The programs this module runs, found on `PATH` or in Debian's `/usr/sbin`.
struct Programs {
    server: PathBuf,
    install_db: PathBuf,
}

fn find_program(names: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let dirs = std::env::split_paths(&path).chain(
        ["/usr/sbin", "/usr/local/sbin", "/usr/bin", "/usr/local/bin"]
            .into_iter()
            .map(PathBuf::from),
    );
    let dirs: Vec<PathBuf> = dirs.collect();
    names
        .iter()
        .flat_map(|name| dirs.iter().map(move |d| d.join(name)))
        .find(|p| p.is_file())
}

fn programs(server: &Server) -> Result<Programs, DbError> {
    let missing = |what: &str| DbError::Setup {
        server: server.name.clone(),
        address: server.address(),
        problem: format!("cannot start a managed MariaDB: `{what}` is not installed"),
        fix: "install MariaDB with `apt-get install mariadb-server` (as root), or set \
              `managed = false` and run the database servers yourself"
            .into(),
    };
    Ok(Programs {
        server: find_program(&["mariadbd", "mysqld"]).ok_or_else(|| missing("mariadbd"))?,
        install_db: find_program(&["mariadb-install-db", "mysql_install_db"])
            .ok_or_else(|| missing("mariadb-install-db"))?,
    })
}

/// True when this process runs as root: `mariadbd` then refuses to start unless told
/// `--user=root` (CI machines run everything as root).
fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Quotes a string for a MariaDB string literal.
fn quote(text: &str) -> String {
    format!("'{}'", text.replace('\\', "\\\\").replace('\'', "''"))
}

impl Managed {
    /// Starts (creating when missing) the primary and every replica, sets up the
    /// application's database and user and GTID replication, and waits until every
    /// replica replicates and has caught up.
    pub async fn start(spec: &Spec) -> Result<Managed, DbError> {
        let programs = programs(&spec.primary)?;
        let mut managed = Managed {
            primary: Instance::new(spec, &spec.primary, 1, true),
            replicas: spec
                .replicas
                .iter()
                .enumerate()
                .map(|(i, r)| Instance::new(spec, r, i as u32 + 2, false))
                .collect(),
        };
        managed.primary.init(&programs).await?;
        managed.primary.launch(&programs).await?;
        managed.primary.refuse_if_demoted().await?;
        managed.primary.set_up_primary().await?;
        for replica in &mut managed.replicas {
            let fresh = replica.init(&programs).await?;
            replica.launch(&programs).await?;
            replica.set_up_replica(&spec.primary, fresh).await?;
        }
        managed
            .set_on_no_replica_ack(OnNoReplicaAck::default())
            .await?;
        Ok(managed)
    }

    /// Switches semi-synchronous replication on for the primary with `policy` (what a
    /// write does when no replica acknowledges it), and has every replica acknowledge.
    /// Also how the site file's `on_no_replica_ack` is applied after [`Managed::start`].
    pub async fn set_on_no_replica_ack(&self, policy: OnNoReplicaAck) -> Result<(), DbError> {
        failover::enable_semi_sync(&self.primary.node(), true, policy).await?;
        for replica in &self.replicas {
            // Restarts the replica's IO thread, so it registers as acknowledging.
            failover::enable_semi_sync(&replica.node(), false, policy).await?;
        }
        Ok(())
    }

    /// Every server as the failover functions reach it: as `root` over its Unix socket,
    /// replicating with the managed replication account.
    pub fn topology(&self, policy: OnNoReplicaAck, catch_up_timeout: Duration) -> Topology {
        Topology {
            nodes: std::iter::once(&self.primary)
                .chain(&self.replicas)
                .map(Instance::node)
                .collect(),
            replication_user: REPLICATION_USER.into(),
            replication_password: self.primary.server.password.clone(),
            on_no_replica_ack: policy,
            catch_up_timeout,
        }
    }

    /// The primary, for tests that stop or kill it.
    pub fn primary(&mut self) -> &mut Instance {
        &mut self.primary
    }

    /// Replica `i` (0-based), for tests that stop or kill it.
    pub fn replica(&mut self, i: usize) -> &mut Instance {
        &mut self.replicas[i]
    }

    /// Shuts every server down cleanly, replicas first.
    pub async fn stop(mut self) {
        for replica in &mut self.replicas {
            replica.stop().await;
        }
        self.primary.stop().await;
    }
}

/// The [`Topology`] of the managed servers a [`Spec`] describes, for a process that did
/// not start them (a decider on this machine: the sockets are found from the spec's
/// directory, as [`Managed::start`] placed them). The servers must be running.
pub fn topology(spec: &Spec, policy: OnNoReplicaAck, catch_up_timeout: Duration) -> Topology {
    Topology {
        nodes: std::iter::once(Instance::new(spec, &spec.primary, 1, true))
            .chain(
                spec.replicas
                    .iter()
                    .enumerate()
                    .map(|(i, r)| Instance::new(spec, r, i as u32 + 2, false)),
            )
            .map(|instance| instance.node())
            .collect(),
        replication_user: REPLICATION_USER.into(),
        replication_password: spec.primary.password.clone(),
        on_no_replica_ack: policy,
        catch_up_timeout,
    }
}

impl Instance {
    fn new(spec: &Spec, server: &Server, server_id: u32, is_primary: bool) -> Instance {
        let dir = spec.dir.join(&server.name);
        // A Unix socket path must fit in 108 bytes; a deep state directory falls back to
        // the temporary directory, named by port (one server per port).
        let mut socket = dir.join("mariadbd.sock");
        if socket.as_os_str().len() > 100 {
            socket = std::env::temp_dir().join(format!("scaleup-mariadb-{}.sock", server.port));
        }
        Instance {
            server: server.clone(),
            server_id,
            is_primary,
            dir,
            socket,
            child: None,
        }
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// The server's own temporary directory: two servers (or two `mariadb-install-db`
    /// runs) sharing `/tmp` can collide on their temporary table names.
    fn tmp_dir(&self) -> PathBuf {
        self.dir.join("tmp")
    }

    fn error_log(&self) -> PathBuf {
        self.dir.join("error.log")
    }

    fn pid_file(&self) -> PathBuf {
        self.dir.join("mariadbd.pid")
    }

    fn setup_error(&self, problem: impl Into<String>, fix: impl Into<String>) -> DbError {
        DbError::Setup {
            server: self.server.name.clone(),
            address: self.server.address(),
            problem: problem.into(),
            fix: fix.into(),
        }
    }

    /// Connection options for `root` over the server's Unix socket.
    pub fn admin_options(&self) -> MySqlConnectOptions {
        MySqlConnectOptions::new()
            .socket(&self.socket)
            .username("root")
    }

    /// A new `root` connection over the server's Unix socket.
    pub async fn admin(&self) -> Result<MySqlConnection, DbError> {
        MySqlConnection::connect_with(&self.admin_options())
            .await
            .map_err(|e| {
                self.setup_error(
                    format!(
                        "cannot connect as root over {} ({e})",
                        self.socket.display()
                    ),
                    format!("see {}", self.error_log().display()),
                )
            })
    }

    /// Creates the data directory with `mariadb-install-db` unless it exists already.
    /// True when it was created now (a first start).
    async fn init(&self, programs: &Programs) -> Result<bool, DbError> {
        let data = self.data_dir();
        if data.join("mysql").is_dir() {
            return Ok(false);
        }
        std::fs::create_dir_all(&data)
            .and_then(|()| std::fs::create_dir_all(self.tmp_dir()))
            .map_err(|e| {
                self.setup_error(
                    format!("cannot create {} ({e})", data.display()),
                    "check the state directory's permissions and free space",
                )
            })?;
        let log = self.dir.join("install.log");
        let log_file = std::fs::File::create(&log).map_err(|e| {
            self.setup_error(
                format!("cannot write {} ({e})", log.display()),
                "check the state directory's permissions",
            )
        })?;
        let mut cmd = Command::new(&programs.install_db);
        cmd.arg("--no-defaults")
            .arg(format!("--datadir={}", data.display()))
            .arg(format!("--tmpdir={}", self.tmp_dir().display()))
            .arg("--auth-root-authentication-method=normal")
            .arg("--skip-test-db")
            .stdin(Stdio::null())
            .stdout(
                log_file
                    .try_clone()
                    .map_err(|e| self.setup_error(e.to_string(), "retry"))?,
            )
            .stderr(log_file);
        if is_root() {
            cmd.arg("--user=root");
        }
        let status = cmd.status().await.map_err(|e| {
            self.setup_error(
                format!("cannot run {} ({e})", programs.install_db.display()),
                "reinstall MariaDB: apt-get install --reinstall mariadb-server",
            )
        })?;
        if !status.success() {
            // Leave no half-made directory behind: the next start would take it as made.
            let _ = std::fs::remove_dir_all(&data);
            return Err(self.setup_error(
                format!("mariadb-install-db failed ({status}): {}", tail(&log)),
                format!("see {}", log.display()),
            ));
        }
        Ok(true)
    }

    /// Starts `mariadbd` on this instance's data and waits until it accepts connections.
    async fn launch(&mut self, programs: &Programs) -> Result<(), DbError> {
        self.refuse_stale_server()?;
        let _ = std::fs::remove_file(&self.socket);
        let mut cmd = Command::new(&programs.server);
        cmd.arg("--no-defaults")
            .arg(format!("--datadir={}", self.data_dir().display()))
            .arg(format!("--tmpdir={}", self.tmp_dir().display()))
            .arg(format!("--port={}", self.server.port))
            .arg(format!("--bind-address={}", self.server.host))
            .arg(format!("--socket={}", self.socket.display()))
            .arg(format!("--pid-file={}", self.pid_file().display()))
            .arg(format!("--log-error={}", self.error_log().display()))
            .arg(format!("--server-id={}", self.server_id))
            // Names are matched by address only: no DNS lookups on connect.
            .arg("--skip-name-resolve")
            // Small footprint: several of these run on one developer machine or CI box.
            .arg("--innodb-buffer-pool-size=32M")
            .arg("--innodb-log-file-size=16M")
            .arg("--performance-schema=OFF")
            .arg("--max-connections=200")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true);
        // The binary log is what replicas read; GTIDs name its transactions. Replicas
        // keep one too, with what they apply (`log_slave_updates`), so any of them can be
        // promoted and serve the others from where they are.
        cmd.arg("--log-bin=binlog")
            .arg("--binlog-format=ROW")
            .arg("--log-slave-updates=ON")
            // Every server acknowledges what it receives when it replicates
            // (semi-synchronous replication); the primary's side is switched on by
            // `Managed::start` once its replicas run (see `failover::enable_semi_sync`).
            .arg("--rpl-semi-sync-slave-enabled=ON")
            // A replica notices a primary that went silent (its host down, no reset
            // sent) within 4 s instead of MariaDB's 60: the primary's heartbeat comes
            // every 2 s (half of this, set at CHANGE MASTER). Until it notices, it counts
            // as receiving, and `failover::promote` refuses.
            .arg("--slave-net-timeout=4");
        if self.is_primary {
            // Durable commits: the redo log (the default) and the binary log are both
            // flushed before a commit returns, so a write the browser saw acknowledged
            // is in what replicas read even after a power cut. Concurrent commits share
            // one flush (group commit), so the cost is one fsync per group, not per post.
            cmd.arg("--innodb-flush-log-at-trx-commit=1")
                .arg("--sync-binlog=1");
        } else {
            // Fixed relay-log name: it must not change with the machine's host name.
            cmd.arg("--relay-log=relay-bin").arg("--read-only=ON");
            // Keep up with a primary that commits from many connections: apply
            // transactions on several threads, optimistically (a conflict is rolled
            // back and retried in order, so the result is the primary's). One SQL
            // thread fell 20 s behind after 10 s of bench/db's writes.
            cmd.arg("--slave-parallel-threads=4")
                .arg("--slave-parallel-mode=optimistic")
                // A replica's redo log is flushed about once a second rather than at
                // each applied transaction. A crash loses at most that second, and the
                // replica fetches it again: its position (gtid_slave_pos) is stored in
                // the same InnoDB transactions, so it never skips or repeats one.
                .arg("--innodb-flush-log-at-trx-commit=2");
        }
        if is_root() {
            cmd.arg("--user=root");
        }
        let mut child = cmd.spawn().map_err(|e| {
            self.setup_error(
                format!("cannot run {} ({e})", programs.server.display()),
                "reinstall MariaDB: apt-get install --reinstall mariadb-server",
            )
        })?;
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = child.try_wait().ok().flatten() {
                return Err(self.setup_error(
                    format!(
                        "mariadbd exited at start ({status}): {}",
                        tail(&self.error_log())
                    ),
                    format!(
                        "see {} (is port {} taken by another program?)",
                        self.error_log().display(),
                        self.server.port
                    ),
                ));
            }
            if MySqlConnection::connect_with(&self.admin_options())
                .await
                .is_ok()
            {
                break;
            }
            if Instant::now() > deadline {
                let _ = child.kill().await;
                return Err(self.setup_error(
                    format!("mariadbd did not accept connections within {START_TIMEOUT:?}"),
                    format!("see {}", self.error_log().display()),
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.child = Some(child);
        Ok(())
    }

    /// A server left running by an earlier run that was killed holds the data directory;
    /// say so instead of letting `mariadbd` fail on its lock.
    fn refuse_stale_server(&self) -> Result<(), DbError> {
        let Ok(text) = std::fs::read_to_string(self.pid_file()) else {
            return Ok(());
        };
        let Ok(pid) = text.trim().parse::<i32>() else {
            return Ok(());
        };
        let alive = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok();
        let is_mariadb = std::fs::read_to_string(format!("/proc/{pid}/comm"))
            .is_ok_and(|c| matches!(c.trim(), "mariadbd" | "mysqld"));
        if alive && is_mariadb {
            return Err(self.setup_error(
                format!(
                    "a MariaDB server from an earlier run (pid {pid}) still uses {}",
                    self.data_dir().display()
                ),
                format!("stop it (`kill {pid}`) and start again"),
            ));
        }
        Ok(())
    }

    /// A failover may have made the configured primary a replica of another server:
    /// setting it up as the primary would write to a replica (errant transactions) and
    /// point the new primary back at it. Refused, with what to change.
    async fn refuse_if_demoted(&self) -> Result<(), DbError> {
        let mut conn = self.admin().await?;
        let status = sqlx::query("SHOW SLAVE STATUS")
            .fetch_optional(&mut conn)
            .await
            .map_err(|e| {
                self.setup_error(
                    format!("reading the replica status failed ({e})"),
                    format!("see {}", self.error_log().display()),
                )
            })?;
        let Some(row) = status else {
            return Ok(());
        };
        let host = crate::mysql::status_text(&row, "Master_Host");
        let port: u32 = row.try_get("Master_Port").unwrap_or_default();
        Err(self.setup_error(
            format!(
                "is configured as the primary but replicates from {host}:{port} (a failover \
                 made it a replica)"
            ),
            format!(
                "name the server at {host}:{port} as `primary` in the site file and this one \
                 among the `replicas`"
            ),
        ))
    }

    /// The application's database and user, and the replication user. Idempotent, so it
    /// runs on every start (and changes the passwords when the site file changed them).
    async fn set_up_primary(&self) -> Result<(), DbError> {
        let s = &self.server;
        let mut conn = self.admin().await?;
        let user = quote(&s.user);
        let password = quote(&s.password);
        let statements = [
            format!(
                "CREATE DATABASE IF NOT EXISTS `{}` CHARACTER SET utf8mb4",
                s.database
            ),
            format!("CREATE USER IF NOT EXISTS {user}@'%' IDENTIFIED BY {password}"),
            format!("ALTER USER {user}@'%' IDENTIFIED BY {password}"),
            format!("GRANT ALL PRIVILEGES ON `{}`.* TO {user}@'%'", s.database),
            // Reading replica status (lag) from the application server.
            format!("GRANT REPLICATION CLIENT, SLAVE MONITOR ON *.* TO {user}@'%'"),
            format!("CREATE USER IF NOT EXISTS '{REPLICATION_USER}'@'%' IDENTIFIED BY {password}"),
            format!("ALTER USER '{REPLICATION_USER}'@'%' IDENTIFIED BY {password}"),
            format!("GRANT REPLICATION SLAVE ON *.* TO '{REPLICATION_USER}'@'%'"),
        ];
        for sql in statements {
            sqlx::raw_sql(&sql).execute(&mut conn).await.map_err(|e| {
                self.setup_error(
                    format!("setting up the application user failed ({e})"),
                    format!("see {}", self.error_log().display()),
                )
            })?;
        }
        Ok(())
    }

    /// Points a new replica at the primary (GTID replication), then waits until its
    /// threads run and it has applied everything the primary has. A replica made before
    /// (`fresh` false) that replicates from nobody was promoted by a failover: pointing it
    /// at the configured primary would make the new primary a replica of the old one, so
    /// that is refused.
    async fn set_up_replica(&self, primary: &Server, fresh: bool) -> Result<(), DbError> {
        let mut conn = self.admin().await?;
        let fail = |what: &str, e: sqlx::Error| {
            self.setup_error(
                format!("{what} failed ({e})"),
                format!("see {}", self.error_log().display()),
            )
        };
        let configured = sqlx::query("SHOW SLAVE STATUS")
            .fetch_optional(&mut conn)
            .await
            .map_err(|e| fail("reading the replica status", e))?
            .is_some();
        if !configured && !fresh {
            return Err(self.setup_error(
                "replicates from nobody: a failover made it the primary",
                format!(
                    "name it as `primary` in the site file, and {} among the `replicas`",
                    primary.address()
                ),
            ));
        }
        if !configured {
            let sql = format!(
                "CHANGE MASTER TO MASTER_HOST={}, MASTER_PORT={}, MASTER_USER='{REPLICATION_USER}', \
                 MASTER_PASSWORD={}, MASTER_USE_GTID=slave_pos, MASTER_CONNECT_RETRY=1",
                quote(&primary.host),
                primary.port,
                quote(&primary.password),
            );
            sqlx::raw_sql(&sql)
                .execute(&mut conn)
                .await
                .map_err(|e| fail("CHANGE MASTER TO", e))?;
        }
        // Starts the threads if they are not running (a no-op warning if they are).
        sqlx::raw_sql("START SLAVE")
            .execute(&mut conn)
            .await
            .map_err(|e| fail("START SLAVE", e))?;

        let deadline = Instant::now() + REPLICATION_TIMEOUT;
        loop {
            let row = sqlx::query("SHOW SLAVE STATUS")
                .fetch_one(&mut conn)
                .await
                .map_err(|e| fail("reading the replica status", e))?;
            let text = |col: &str| crate::mysql::status_text(&row, col);
            let (io, sql) = (text("Slave_IO_Running"), text("Slave_SQL_Running"));
            if io == "Yes" && sql == "Yes" {
                break;
            }
            if Instant::now() > deadline {
                return Err(self.setup_error(
                    format!(
                        "replication did not start within {REPLICATION_TIMEOUT:?} \
                         (Slave_IO_Running: {io}, Slave_SQL_Running: {sql}; {} {})",
                        text("Last_IO_Error"),
                        text("Last_SQL_Error")
                    ),
                    format!(
                        "check that the primary {} runs and see {}",
                        primary.address(),
                        self.error_log().display()
                    ),
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }

        // Wait for everything the primary has, so the application user exists here too.
        let mut primary_conn = MySqlConnection::connect_with(
            &MySqlConnectOptions::new()
                .host(&primary.host)
                .port(primary.port)
                .username(&primary.user)
                .password(&primary.password)
                .database(&primary.database),
        )
        .await
        .map_err(|e| fail("connecting to the primary", e))?;
        let position: String = sqlx::query_scalar("SELECT CAST(@@gtid_binlog_pos AS CHAR)")
            .fetch_one(&mut primary_conn)
            .await
            .map_err(|e| fail("reading the primary's position", e))?;
        let waited: i64 = sqlx::query_scalar("SELECT CAST(MASTER_GTID_WAIT(?, ?) AS SIGNED)")
            .bind(&position)
            .bind(REPLICATION_TIMEOUT.as_secs_f64())
            .fetch_one(&mut conn)
            .await
            .map_err(|e| fail("waiting for the replica to catch up", e))?;
        if waited != 0 {
            return Err(self.setup_error(
                format!(
                    "did not catch up with the primary ({position}) within {REPLICATION_TIMEOUT:?}"
                ),
                format!("see {}", self.error_log().display()),
            ));
        }
        Ok(())
    }

    /// Starts this server again after [`Instance::stop`] or [`Instance::kill`], on the
    /// same data (replication resumes on its own).
    pub async fn restart(&mut self) -> Result<(), DbError> {
        let programs = programs(&self.server)?;
        self.launch(&programs).await
    }

    /// Shuts the server down cleanly (SIGTERM, then SIGKILL after `STOP_TIMEOUT`, 30 s).
    pub async fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Some(pid) = child.id() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        if tokio::time::timeout(STOP_TIMEOUT, child.wait())
            .await
            .is_err()
        {
            tracing::warn!(server = %self.server.name, "mariadbd did not stop in time; killing it");
            let _ = child.kill().await;
        }
    }

    /// Kills the server at once (SIGKILL), as a crash would: for failure tests.
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill().await;
        }
    }

    /// The server's name, address and the application's account on it.
    pub fn server(&self) -> &Server {
        &self.server
    }

    /// This server for [`failover`]: reached as `root` over its Unix socket, and by the
    /// others at its address.
    pub fn node(&self) -> Node {
        Node {
            name: self.server.name.clone(),
            host: self.server.host.clone(),
            port: self.server.port,
            admin: self.admin_options(),
        }
    }
}

/// The error lines of a log file (or its last lines), for error messages.
fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let errors: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("ERROR"))
        .take(5)
        .collect();
    if !errors.is_empty() {
        return errors.join(" | ");
    }
    let lines: Vec<&str> = text.lines().rev().take(5).collect();
    lines.into_iter().rev().collect::<Vec<_>>().join(" | ")
}
