//! `scaleup db switchover [REPLICA]`: moves the MariaDB primary on purpose (for
//! maintenance) with `db::failover::switchover`: the old primary is made read-only
//! first, the chosen replica (or the most advanced) catches up and takes writes, the
//! others and the old primary follow it. Writes pause for a moment (the application
//! servers wait for the new primary rather than fail); reads go on.
//!
//! It needs administrator access to every server: the managed ones of `scaleup up` (on
//! this machine), or a site's own with the failover accounts in `[database]`. The automatic failover's cool-down does not apply: a person asked.

use site::Site;

use crate::SiteArgs;

/// `scaleup db switchover`.
pub fn switchover(args: &SiteArgs, target: Option<&str>) -> anyhow::Result<()> {
    let (_, site) = crate::load_site(args, false)?;
    let topology = topology(&site)?;
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(async {
            let done = db::failover::switchover(&topology, target)
                .await
                .map_err(|e| anyhow::anyhow!("no switchover: {e}"))?;
            println!(
                "{} is the primary now (was {}), in {} ms; following it: {}",
                done.primary,
                done.previous,
                done.took.as_millis(),
                done.followers.join(", ")
            );
            for (name, why) in &done.left_out {
                println!("  left out: {name}: {why}");
            }
            println!(
                "The site file still names {} as the primary: the servers are found by \
                 their role, but update [database] before the next `scaleup up`.",
                done.previous
            );
            Ok(())
        })
}

/// The database servers as an administrator reaches them.
fn topology(site: &Site) -> anyhow::Result<db::failover::Topology> {
    if matches!(site.database, site::Database::Sqlite { .. }) {
        anyhow::bail!(
            "the site's database is SQLite, one file on the application server: there is \
             no primary to move"
        );
    }
    crate::configs::failover_topology(site)?.ok_or_else(|| {
        anyhow::anyhow!(
            "scaleup has no account to administer the site's own MariaDB servers: add \
             `admin_user`, `admin_password_env`, `replication_user` and \
             `replication_password_env` to [database], or use MariaDB's tools"
        )
    })
}
