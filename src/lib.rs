#![doc = include_str!("../README.md")]

pub mod adapters;
#[cfg(feature = "console")]
pub mod console;
pub mod plan_file;
pub mod report_html;

/// The JSON Schema (draft 2020-12) of the report's JSON form, version 1: the text of
/// `schemas/report-v1.schema.json` at the root of the repository.
pub const REPORT_SCHEMA_V1: &str = include_str!("../schemas/report-v1.schema.json");

pub use deploy_core as core;
pub use deploy_core::*;

#[cfg(feature = "docker")]
pub use deploy_docker as docker;
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
