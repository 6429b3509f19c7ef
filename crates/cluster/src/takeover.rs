//! The ways to take the floating address, chosen in the site file.
//!
//! - `local`: the address is a loopback `ip:port` that the load balancer binds only
//!   while active; the cluster only publishes the role and the load balancer acts on
//!   it (see the `lb` crate);
//! - `linux`: the IP is added to an interface through netlink and announced with
//!   gratuitous ARP, so switches and neighbours send to this node at once instead of
//!   waiting for their ARP entries to expire;
//! - `hook`: a user command runs on becoming active or passive (cloud APIs).

use std::net::IpAddr;
use std::time::Duration;

use anyhow::Context;
use futures_util::TryStreamExt;
use tokio::sync::{mpsc, oneshot};

/// How the floating address moves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Takeover {
    /// The load balancer binds the address itself while active.
    Local,
    /// Add `address/prefix` to `interface` and announce it.
    Linux {
        interface: String,
        address: IpAddr,
        prefix: u8,
    },
    /// Run `sh -c` with these commands.
    Hook {
        on_active: Option<String>,
        on_passive: Option<String>,
    },
}

/// How many gratuitous ARP replies announce a move, and how far apart: a few, in
/// case one is lost, as keepalived does.
const ANNOUNCEMENTS: usize = 3;
const ANNOUNCE_GAP: Duration = Duration::from_millis(20);

impl Takeover {
    /// Takes the address (idempotent: taking an address already held is fine).
    pub async fn acquire(&self) -> anyhow::Result<()> {
        match self {
            Takeover::Local => Ok(()),
            Takeover::Linux {
                interface,
                address,
                prefix,
            } => {
                let (handle, index) = netlink(interface).await?;
                match handle.address().add(index, *address, *prefix).execute().await {
                    Ok(()) => {}
                    // EEXIST: already ours (a split that healed, or a restart).
                    Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::EEXIST => {}
                    Err(e) => {
                        return Err(e).with_context(|| {
                            format!("cannot add {address}/{prefix} to {interface} (scaleup needs CAP_NET_ADMIN)")
                        })
                    }
                }
                self.announce().await
            }
            Takeover::Hook { on_active, .. } => run_hook(on_active.as_deref(), "active").map(drop),
        }
    }

    /// Gives the address up.
    pub async fn release(&self) -> anyhow::Result<()> {
        match self {
            Takeover::Local => Ok(()),
            Takeover::Linux {
                interface,
                address,
                prefix,
            } => {
                let (handle, index) = netlink(interface).await?;
                let mut found = handle
                    .address()
                    .get()
                    .set_link_index_filter(index)
                    .set_address_filter(*address)
                    .set_prefix_length_filter(*prefix)
                    .execute();
                while let Some(message) =
                    found.try_next().await.context("netlink: list addresses")?
                {
                    handle
                        .address()
                        .del(message)
                        .execute()
                        .await
                        .with_context(|| format!("cannot remove {address} from {interface}"))?;
                }
                Ok(())
            }
            Takeover::Hook { on_passive, .. } => {
                run_hook(on_passive.as_deref(), "passive").map(drop)
            }
        }
    }

    /// Gives the address up and waits until that is done, hooks included: for a
    /// node about to exit.
    pub async fn release_and_wait(&self, limit: Duration) -> anyhow::Result<()> {
        match self {
            Takeover::Hook { on_passive, .. } => {
                if let Some(done) = run_hook(on_passive.as_deref(), "passive")? {
                    let _ = tokio::time::timeout(limit, done).await;
                }
                Ok(())
            }
            _ => self.release().await,
        }
    }

    /// Tells the network again that the address is here (after a split heals, the
    /// peer's last announcement may be the one neighbours believe).
    pub async fn announce(&self) -> anyhow::Result<()> {
        let Takeover::Linux {
            interface, address, ..
        } = self
        else {
            return Ok(());
        };
        let IpAddr::V4(v4) = address else {
            // IPv6 neighbours learn from unsolicited neighbour advertisements, which
            // the kernel sends itself when an address is added (DAD).
            return Ok(());
        };
        for i in 0..ANNOUNCEMENTS {
            if i > 0 {
                tokio::time::sleep(ANNOUNCE_GAP).await;
            }
            crate::arp::gratuitous(interface, *v4)
                .with_context(|| format!("gratuitous ARP for {v4} on {interface}"))?;
        }
        Ok(())
    }
}

/// A netlink handle, and the index of `interface`.
async fn netlink(interface: &str) -> anyhow::Result<(rtnetlink::Handle, u32)> {
    let (connection, handle, _) = rtnetlink::new_connection().context("netlink")?;
    tokio::spawn(connection);
    let mut links = handle
        .link()
        .get()
        .match_name(interface.to_string())
        .execute();
    match links.try_next().await {
        Ok(Some(link)) => Ok((handle, link.header.index)),
        _ => anyhow::bail!("there is no network interface `{interface}`; check `cluster.interface` in the site file"),
    }
}

/// Hooks run one at a time, in the order of the transitions: an `on_passive` that
/// finished after a later `on_active` would leave the address in the wrong place.
/// The answer resolves when this hook has run.
fn run_hook(
    command: Option<&str>,
    role: &'static str,
) -> anyhow::Result<Option<oneshot::Receiver<()>>> {
    use std::sync::OnceLock;
    type Job = (String, &'static str, oneshot::Sender<()>);
    static QUEUE: OnceLock<mpsc::UnboundedSender<Job>> = OnceLock::new();
    let Some(command) = command else {
        return Ok(None);
    };
    let queue = QUEUE.get_or_init(|| {
        let (tx, mut rx) = mpsc::unbounded_channel::<Job>();
        // The election must not wait on a slow cloud API: hooks run on a task of
        // their own, and their outcome is logged.
        tokio::spawn(async move {
            while let Some((command, role, done)) = rx.recv().await {
                let status = tokio::process::Command::new("sh")
                    .arg("-c")
                    .arg(&command)
                    .env("SCALEUP_ROLE", role)
                    .status()
                    .await;
                match status {
                    Ok(status) if status.success() => {
                        tracing::info!("{role} hook `{command}` done")
                    }
                    Ok(status) => tracing::error!("{role} hook `{command}` failed: {status}"),
                    Err(e) => tracing::error!("cannot run the {role} hook `{command}`: {e}"),
                }
                let _ = done.send(());
            }
        });
        tx
    });
    let (done, finished) = oneshot::channel();
    queue
        .send((command.to_string(), role, done))
        .map_err(|_| anyhow::anyhow!("the hook runner stopped"))?;
    Ok(Some(finished))
}
