//! What the MariaDB tests share: whether the server is installed (under `CI=true` its
//! absence fails the run), free ports, and one server's settings.
#![allow(dead_code)] // each test file uses its own subset

use db::Server;

/// `true` when MariaDB is installed; panics under CI when it is not.
pub fn mariadb_available() -> bool {
    let found = [
        "/usr/sbin/mariadbd",
        "/usr/bin/mariadbd",
        "/usr/local/sbin/mariadbd",
    ]
    .iter()
    .any(|p| std::path::Path::new(p).exists())
        || std::process::Command::new("mariadbd")
            .arg("--version")
            .output()
            .is_ok();
    if !found {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "mariadbd is not installed, and CI must run the MariaDB tests: run scripts/install-test-deps"
        );
        eprintln!(
            "\n*** SKIPPING MariaDB test: mariadbd is not installed (apt-get install mariadb-server) ***\n"
        );
    }
    found
}

pub use testkit::free_port;

pub fn server(name: &str, port: u16) -> Server {
    Server {
        name: name.into(),
        host: "127.0.0.1".into(),
        port,
        user: "foobar".into(),
        password: "s3cret'pw".into(),
        database: "foobar".into(),
    }
}
