//! The adapters compiled into this facade, as an [`AdapterFactory`] for plan files: each section
//! names its adapter with `kind`.

use crate::plan_file::{AdapterFactory, Problem};
use deploy_core::{DynHost, DynMaintenance, DynMetricGate, DynMigrationRunner, DynTrafficSwitch};

/// Builds adapter sections of a plan file with the adapters enabled by this crate's features.
#[derive(Debug, Clone, Default)]
pub struct Adapters {
    _private: (),
}

impl Adapters {
    /// The factory.
    pub fn new() -> Self {
        Self::default()
    }
}

fn kind<'a>(path: &str, section: &'a toml::Value) -> Result<&'a str, Vec<Problem>> {
    section
        .get("kind")
        .and_then(toml::Value::as_str)
        .ok_or_else(|| {
            vec![Problem {
                path: format!("{path}.kind"),
                message: "missing (which adapter?)".into(),
            }]
        })
}

fn unknown<T>(path: &str, kind: &str, known: &[&str]) -> Result<T, Vec<Problem>> {
    Err(vec![Problem {
        path: format!("{path}.kind"),
        message: format!(
            "unknown kind {kind:?} (this build knows: {})",
            known.join(", ")
        ),
    }])
}

impl AdapterFactory for Adapters {
    fn switch(&self, section: &toml::Value) -> Result<DynTrafficSwitch, Vec<Problem>> {
        let k = kind("switch", section)?;
        unknown("switch", k, &[])
    }

    fn gate(&self, path: &str, section: &toml::Value) -> Result<DynMetricGate, Vec<Problem>> {
        let k = kind(path, section)?;
        unknown(path, k, &[])
    }

    fn migrations(&self, section: &toml::Value) -> Result<DynMigrationRunner, Vec<Problem>> {
        let k = kind("migrations", section)?;
        unknown("migrations", k, &[])
    }

    fn maintenance(&self, section: &toml::Value) -> Result<DynMaintenance, Vec<Problem>> {
        let k = kind("maintenance", section)?;
        unknown("maintenance", k, &[])
    }

    fn ssh_host(&self, path: &str, _section: &toml::Value) -> Result<DynHost, Vec<Problem>> {
        Err(vec![Problem {
            path: path.to_owned(),
            message: "SSH targets need the `ssh` feature".into(),
        }])
    }
}
