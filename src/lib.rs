//! shiptoken keeps ShipHero and Shippo API credentials alive and serves them to local
//! applications over a Unix socket.
//!
//! Data flows one way: [`scheduler`] triggers [`rotation`], which calls [`providers`] and
//! stores what they return in the [`registry`], from which [`api`] serves tokens.

pub mod api;
// The commands on the registry itself (backup, key rotate, registry migrate) live in the
// registry; the binary calls them by this path.
pub use registry::backup;
pub mod cli;
pub mod client;
pub mod clock;
pub mod config;
pub mod daemon;
#[cfg(feature = "dev")]
pub mod dev;
pub mod jwt;
pub mod keys;
pub mod listeners;
pub mod logging;
pub mod metrics;
pub mod names;
pub mod notify;
pub mod pacing;
pub mod providers;
pub mod registry;
pub mod rotation;
pub mod scheduler;
pub mod secret;
#[cfg(feature = "dev")]
pub mod sim;
pub mod sinks;
pub mod systemd;
pub mod window;
