#![doc = include_str!("../README.md")]

mod config;
mod migrations;
mod runner;
mod tools;

#[cfg(feature = "testing")]
pub mod testing;

pub use config::PgConfig;
pub use migrations::{Classification, Layout, MigrationVersion, NO_TRANSACTION_MARKER, checksum};
pub use runner::{
    AppliedMigration, BASELINE_NAME, Drift, PendingMigration, PgMigrationRunner, PgRunnerBuilder,
    RepairReport, RestoreMode, RestoreReport, SchemaReport,
};
