//! In-memory fakes of every trait with scripted failures, conformance suites, and test servers.
//! Compiled under the `testing` feature so that consumers can test their own pipelines with them.

pub mod conformance;
mod fakes;
mod host_conformance;
mod http_server;
pub mod process;
mod world;

pub use fakes::{
    FakeGate, FakeHost, FakeMaintenance, FakeMigrations, FakeProbe, FakeSwitch, FakeTarget,
    FaultAction, Faults,
};
pub use host_conformance::*;
pub use http_server::*;
pub use world::{FakeWorld, WorldState};
