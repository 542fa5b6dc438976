#![doc = include_str!("../README.md")]

mod client;
mod config;
mod parse;
mod sticky;
mod switch;
mod transport;

pub use client::{AdminState, RuntimeClient, Weight};
pub use config::{HaproxySwitchBuilder, HaproxySwitchConfig, KIND};
pub use parse::{Info, RowKind, ServerStateRow, ServersState, StatRow};
pub use sticky::StickyConfig;
pub use switch::{DrainReport, HaproxySwitch, MAX_WEIGHT};
pub use transport::{HostSocket, Socket, Transport};

#[cfg(feature = "testing")]
pub mod testing;
