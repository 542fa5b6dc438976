//! In-memory fakes of every trait with scripted failures, conformance suites, and test servers.
//! Compiled under the `testing` feature so that consumers can test their own pipelines with them.

mod host_conformance;
mod http_server;
pub use host_conformance::*;
pub use http_server::*;
