#![doc = include_str!("../README.md")]

mod client_tools;
mod config;
mod connection;
mod migrations;
mod runner;
mod state;
mod tools;

#[cfg(feature = "testing")]
pub mod testing;

#[cfg(all(test, feature = "testing"))]
mod scanner_against_postgres;

pub use client_tools::{ClientTools, PgMajor};
pub use config::{KIND, PgMigrationRunnerConfig};
pub use connection::PgConfig;
pub use migrations::{Compatibility, Layout, NO_TRANSACTION_MARKER, Reversibility, Transaction};
pub use runner::{
    AppliedMigration, BASELINE_NAME, Drift, PendingMigration, PgMigrationRunner,
    PgMigrationRunnerBuilder, RepairReport, RepeatableMigration, RepeatableState, RestoreMode,
    RestoreReport, SchemaReport,
};
pub use state::{
    DEFAULT_SCHEMA, DEFAULT_STATE_URL_ENV, PgStateStore, PgStateStoreBuilder, PgStateStoreConfig,
    STATE_KIND,
};
