//! `cluster`: the load-balancer pair.
//!
//! Two load balancers share one floating address. The active one holds it; the
//! passive one watches it and takes it when the active one dies. This crate owns:
//!
//! - [`wire`]: the heartbeat datagram, signed with HMAC-SHA-256 and ordered so a
//!   replayed beat is refused;
//! - [`election`]: the state machine that decides who is active (priorities, ties
//!   by name, preemption, backends' health, healed splits);
//! - [`node`]: the running member, on its own thread: beats every `interval`, a TCP
//!   heartbeat link whose closing says "the peer's process died" at once, without
//!   waiting for missed beats;
//! - [`takeover`]: the ways to take the address (local port, Linux IP + gratuitous
//!   ARP, user hooks).
//!
//! It knows nothing of HTTP: the load balancer watches [`Cluster::role`].

mod arp;
pub mod election;
pub mod node;
pub mod takeover;
pub mod wire;

pub use node::{Cluster, Config};
pub use takeover::Takeover;
pub use wire::State;
