#![doc = include_str!("../README.md")]

// The contract (traits, model, errors) is kept apart from the strategies and the engine, so that
// a split into a contract crate and an engine crate stays a move. Every public item has one path:
// the crate root for what most users name, and a few small public modules for the rest.

mod composite;
mod difference;
mod engine;
mod error;
mod local;
mod model;
mod probe;
mod release_dir;
mod strategy;
mod traits;

pub mod fs;
pub mod hooks;
pub mod http;
pub mod notify;
pub mod redact;
pub mod secret;
pub mod served;
pub mod smoke;
pub mod state;
#[cfg(feature = "testing")]
pub mod testing;
pub mod units;

pub use composite::CompositeSwitch;
pub use difference::Difference;
pub use engine::{
    Control, ControlRequest, DeployError, Engine, Environment, EnvironmentBuilder, Outcome,
    Policies, Recovery, ReleaseRollback, Report, RollbackTo, SchemaDecision,
};
pub use error::{BoxError, Error, ErrorKind, ErrorRecord, ErrorStatus, Result};
pub use local::LocalHost;
pub use model::{
    BackupId, Endpoint, Health, MigrationInfo, MigrationStatus, Release, SchemaVersion, TargetId,
    Verdict, VerdictKind, Version, Weights,
};
pub use probe::{HttpProbe, HttpProbeBuilder, TcpProbe};
pub use release_dir::{ReleaseDirTarget, ReleaseDirTargetBuilder};
/// Passwords, passphrases and tokens: kept out of `Debug`, `Display` and serialized output by
/// the type, wiped from memory when dropped; read with [`ExposeSecret::expose_secret`] only
/// where the secret is used.
pub use secrecy::{ExposeSecret, SecretString};
pub use strategy::{
    BatchSize, CanaryStep, Capabilities, ConfigProblem, Plan, PlanError, PlanOptions, PrepareOrder,
    SchemaRollback, Snapshot, Step, Strategy, TargetBudget, TargetState,
};
pub use traits::{
    Command, DynHealthProbe, DynHost, DynMaintenance, DynMetricGate, DynMigrationRunner, DynTarget,
    DynTrafficSwitch, FileKind, GateContext, HealthProbe, Host, HostExt, Maintenance, MetricGate,
    MigrationRunner, Output, ProbeRequest, Target, TrafficSwitch,
};

/// The engine's policies, one per concern: how health is awaited, how gates are analysed, how
/// targets are drained, how calls are retried and timed out ([`Policies`] holds them all).
pub mod policy {
    pub use crate::engine::{
        AnalysisPolicy, AnalysisTime, DrainPolicy, DrainTimeoutAction, InconclusiveAction,
        NoDataPolicy, ProbePolicy, RetryPolicy, Timeouts,
    };
}

/// What a run tells the world as it happens: typed events, their severity, and the observer
/// that receives them.
pub mod event {
    pub use crate::engine::{Event, Observer, Severity};
}

/// The parts of a [`Report`]: each step, each undo of a rollback, each gate verdict, the weights
/// over time, and the version of the report's JSON form.
pub mod report {
    pub use crate::engine::{
        FailedTarget, REPORT_SCHEMA_VERSION, RollbackRecord, StepRecord, UndoRecord, VerdictRecord,
        WeightPoint, WeightSource,
    };
}

/// The state directory of an environment as another process reads it: journal records, the
/// replayed state of a run, where the newest run stands, who holds the lock.
pub mod journal {
    pub use crate::engine::{AddressedRequest, JournalState, LockInfo, Record, RunStatus};
}
