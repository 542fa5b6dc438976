#![doc = include_str!("../README.md")]

mod client;
mod condition;
mod config;
mod exposition;
mod judge;
mod metrics;
mod promql;
mod scrape;
mod stats;
mod template;

pub use client::{Auth, PrometheusClient, QueryResult, Sample, Series};
pub use condition::Condition;
pub use config::{PROMQL_KIND, Preset, PromQlGateConfig, SCRAPE_KIND, ScrapeGateConfig};
pub use judge::{Direction, Judge, PromQlJudgeBuilder, ScrapeJudgeBuilder};
pub use metrics::HttpMetrics;
pub use promql::{PromQlGate, PromQlGateBuilder, Reduce};
pub use scrape::{ScrapeGate, ScrapeGateBuilder, ScrapeMeasure};

#[cfg(feature = "testing")]
pub mod testing;
