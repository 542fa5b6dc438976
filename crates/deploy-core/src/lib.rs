#![doc = include_str!("../README.md")]

pub mod engine;
pub mod error;
pub mod model;
pub mod strategy;
pub mod traits;

pub use engine::{
    Control, DeployError, Engine, Environment, EnvironmentBuilder, Event, Observer, Outcome,
    Policies, Recovery, Report,
};
pub use error::{BoxError, Error, ErrorKind, Result};
pub use model::{
    BackupId, Endpoint, Health, MigrationInfo, MigrationStatus, Release, SchemaVersion, TargetId,
    Verdict, VerdictKind, Version, Weights,
};
pub use strategy::{
    BatchSize, CanaryStep, Plan, PlanError, PlanOptions, SchemaRollback, Snapshot, Step, Strategy,
};
pub use traits::{
    Command, DynHealthProbe, DynHost, DynMaintenance, DynMetricGate, DynMigrationRunner, DynTarget,
    DynTrafficSwitch, FileKind, GateContext, HealthProbe, Host, HostExt, Maintenance, MetricGate,
    MigrationRunner, Output, ProbeRequest, Target, TrafficSwitch,
};

mod local;
mod probe;
mod release_dir;
pub use local::*;
pub use probe::*;
pub use release_dir::*;

#[cfg(feature = "testing")]
pub mod testing;
