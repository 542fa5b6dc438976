#![doc = include_str!("../README.md")]

mod config;
mod fleet;
mod host;
mod known_hosts;
mod quote;
mod sftp;

pub use config::{SshHostBuilder, SshHostConfig};
pub use fleet::{Fleet, FleetReport, HostResult, RollingOptions, RollingReport, rolling_deploy};
pub use host::SshHost;
pub use known_hosts::{HostKeyError, HostKeyPolicy};

#[cfg(feature = "testing")]
pub mod testing;
