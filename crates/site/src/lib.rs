//! `site`: the site file of scaleup.
//!
//! One TOML file describes every node of `www.foobar.com`: the load balancers, the
//! web servers, the application servers and the database. This crate reads it
//! ([`load`], [`parse`]), fills in defaults, refuses mistakes with their line and
//! column ([`SiteError`]), carries the built-in default site ([`default_site`]) and
//! explains a site to a person: its diagram, why each element is there, and its
//! risks ([`explain`]). It knows nothing of sockets or runtimes.
#![forbid(unsafe_code)]

mod default;
mod error;
pub mod explain;
mod model;
mod parse;

pub use default::default_site;
pub use error::{line_column, Mistake, SiteError};
pub use model::*;
pub use parse::{load, parse};
