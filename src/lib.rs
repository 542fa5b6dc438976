#![doc = include_str!("../README.md")]

pub mod adapters;
pub mod plan_file;

pub use deploy_core as core;
pub use deploy_core::*;

#[cfg(feature = "haproxy")]
pub use deploy_haproxy as haproxy;
#[cfg(feature = "nginx")]
pub use deploy_nginx as nginx;
#[cfg(feature = "postgres")]
pub use deploy_postgres as postgres;
#[cfg(feature = "prometheus")]
pub use deploy_prometheus as prometheus;
#[cfg(feature = "ssh")]
pub use deploy_ssh as ssh;
