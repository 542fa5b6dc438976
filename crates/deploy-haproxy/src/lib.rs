#![doc = include_str!("../README.md")]

mod client;
mod parse;
mod switch;
mod transport;

pub use client::{AdminState, RuntimeClient, Weight};
pub use parse::{Info, RowKind, ServerStateRow, ServersState, StatRow};
pub use switch::{DrainReport, HaproxySwitch, HaproxySwitchBuilder, MAX_WEIGHT, SwitchConfig};
pub use transport::{HostSocket, Socket, Transport};

#[cfg(feature = "testing")]
pub mod testing;
