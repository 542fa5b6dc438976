#![doc = include_str!("../README.md")]

mod docker;
mod health;
mod target;
#[cfg(feature = "testing")]
pub mod testing;

pub use health::DockerHealthProbe;
pub use target::{DockerTarget, DockerTargetBuilder};
