#![doc = include_str!("../README.md")]

mod compose;
mod config;
mod docker;
mod health;
mod target;
#[cfg(feature = "testing")]
pub mod testing;

pub use compose::{ComposeCli, ComposeTarget, ComposeTargetBuilder};
pub use config::{DockerTargetConfig, KIND, RegistryConfig, SecretSource};
pub use health::DockerHealthProbe;
pub use target::{DockerTarget, DockerTargetBuilder};
