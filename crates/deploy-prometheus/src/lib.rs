#![doc = include_str!("../README.md")]

mod client;
mod condition;
mod exposition;
mod judge;
mod metrics;
mod promql;
mod scrape;
mod stats;
mod template;

pub use client::{Auth, PrometheusClient, QueryResult, Sample, Series};
pub use condition::Condition;
pub use judge::{Direction, Judge, JudgeBuilder};
pub use metrics::HttpMetrics;
pub use promql::{PromQlGate, PromQlGateBuilder, Reduce};
pub use scrape::{ScrapeGate, ScrapeGateBuilder, ScrapeMeasure};
pub use template::promql_duration;

#[cfg(feature = "testing")]
pub mod testing;
