#![doc = include_str!("../README.md")]

pub mod error;
pub mod model;
pub mod traits;

pub use error::{BoxError, Error, ErrorKind, Result};
pub use model::{
    BackupId, Endpoint, Health, MigrationInfo, MigrationStatus, Release, SchemaVersion, TargetId,
    Verdict, VerdictKind, Version, Weights,
};
pub use traits::{
    Command, DynHealthProbe, DynHost, DynMaintenance, DynMetricGate, DynMigrationRunner,
    DynTarget, DynTrafficSwitch, FileKind, GateContext, HealthProbe, Host, HostExt, Maintenance,
    MetricGate, MigrationRunner, Output, ProbeRequest, Target, TrafficSwitch,
};

mod local;
mod probe;
mod release_dir;
pub use local::*;
pub use probe::*;
pub use release_dir::*;

#[cfg(feature = "testing")]
pub mod testing;
