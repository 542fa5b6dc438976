#![doc = include_str!("../README.md")]

mod difference;
pub mod engine;
pub mod error;
pub mod fs;
pub mod hooks;
pub mod http;
pub mod model;
pub mod notify;
pub mod redact;
pub mod smoke;
pub mod strategy;
pub mod traits;

pub use difference::Difference;
pub use engine::{
    Control, DeployError, Engine, Environment, EnvironmentBuilder, Event, Observer, Outcome,
    Policies, Recovery, Report,
};
pub use error::{BoxError, Error, ErrorKind, ErrorRecord, ErrorStatus, Result};
pub use hooks::{CommandHook, Hook, HookAction, HookContext, HookPoint, WebhookHook};
pub use model::{
    BackupId, Endpoint, Health, MigrationInfo, MigrationStatus, Release, SchemaVersion, TargetId,
    Verdict, VerdictKind, Version, Weights,
};
pub use notify::{NotifierStats, WebhookNotifier};
pub use smoke::{SmokeCheck, SmokeGate};
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
