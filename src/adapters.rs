//! The adapters a plan file can name, as a registry keyed by `kind`.
//!
//! Each adapter crate owns its plan-file section — a serde config that refuses unknown keys —
//! and one constructor from it; this registry only maps a section's `kind` to that
//! constructor. [`Adapters::new`] registers every adapter the facade's features compile in:
//!
//! | section | `kind` | feature |
//! |---|---|---|
//! | `[switch]` or each `[[switch]]` | `haproxy`, `nginx` | `haproxy`, `nginx` |
//! | `[[gates]]` | `promql`, `scrape` | `prometheus` |
//! | `[migrations]` | `postgres` | `postgres` |
//! | `[maintenance]` | `nginx` | `nginx` |
//! | `[state]` | `postgres` | `postgres` |
//! | `ssh` of a target | (no `kind`) | `ssh` |
//! | `[[targets]]` | `docker` (`release_dir`, the default, is built in) | `docker` |
//!
//! An embedding tool adds its own adapters with [`Adapters::switch`], [`Adapters::gate`],
//! [`Adapters::target`], … and [`adapter`].

use std::collections::BTreeMap;
use std::sync::Arc;

use deploy_core::state::StateStore;
use deploy_core::{DynHost, DynMaintenance, DynMetricGate, DynMigrationRunner, DynTrafficSwitch};
use serde::de::DeserializeOwned;

use crate::plan_file::{AdapterFactory, BuiltTarget, Problem, TargetContext};

/// Builds one adapter from its plan-file section: `path` is the section's key path (for
/// messages), `section` its table without the `kind` key.
pub type Build<T> = fn(path: &str, section: toml::Value) -> Result<T, Vec<Problem>>;

/// Builds one `[[targets]]` entry of an adapter's kind: `path` is `targets[i]` (for messages),
/// `section` the entry without `id`, `endpoint`, `ssh` and `kind`, `context` what the plan file
/// made of those.
pub type TargetBuild = fn(
    path: &str,
    section: toml::Value,
    context: TargetContext,
) -> Result<BuiltTarget, Vec<Problem>>;

/// The adapters a plan file can name, by `kind`.
#[derive(Clone, Default)]
pub struct Adapters {
    switches: BTreeMap<&'static str, Build<DynTrafficSwitch>>,
    gates: BTreeMap<&'static str, Build<DynMetricGate>>,
    migrations: BTreeMap<&'static str, Build<DynMigrationRunner>>,
    maintenance: BTreeMap<&'static str, Build<DynMaintenance>>,
    state_stores: BTreeMap<&'static str, Build<Arc<dyn StateStore>>>,
    ssh: Option<Build<DynHost>>,
    targets: BTreeMap<&'static str, TargetBuild>,
}

impl std::fmt::Debug for Adapters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Adapters")
            .field("switches", &self.switches.keys().collect::<Vec<_>>())
            .field("gates", &self.gates.keys().collect::<Vec<_>>())
            .field("migrations", &self.migrations.keys().collect::<Vec<_>>())
            .field("maintenance", &self.maintenance.keys().collect::<Vec<_>>())
            .field(
                "state_stores",
                &self.state_stores.keys().collect::<Vec<_>>(),
            )
            .field("ssh", &self.ssh.is_some())
            .field("targets", &self.targets.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// Deserialize an adapter's `section` into its config `C`, with the key path of every problem
/// in the message, and build the adapter with `make` (its error is reported at `path`).
pub fn adapter<C: DeserializeOwned, T>(
    path: &str,
    section: toml::Value,
    make: impl FnOnce(C) -> deploy_core::Result<T>,
) -> Result<T, Vec<Problem>> {
    let config = crate::plan_file::deserialize_at(path, section).map_err(|p| vec![p])?;
    make(config).map_err(|e| {
        vec![Problem {
            path: path.to_owned(),
            message: e.to_string(),
        }]
    })
}

impl Adapters {
    /// Every adapter this build of the facade compiles in (one line per adapter).
    pub fn new() -> Self {
        let r = Self::empty();
        #[cfg(feature = "haproxy")]
        let r = r.switch(deploy_haproxy::KIND, |p, s| {
            adapter(p, s, deploy_haproxy::HaproxySwitch::from_config).map(|a| Arc::new(a) as _)
        });
        #[cfg(feature = "nginx")]
        let r = r
            .switch(deploy_nginx::KIND, |p, s| {
                adapter(p, s, deploy_nginx::UpstreamSwitch::from_config).map(|a| Arc::new(a) as _)
            })
            .maintenance(deploy_nginx::KIND, |p, s| {
                adapter(p, s, deploy_nginx::MaintenancePage::from_config).map(|a| Arc::new(a) as _)
            });
        #[cfg(feature = "prometheus")]
        let r = r
            .gate(deploy_prometheus::PROMQL_KIND, |p, s| {
                adapter(p, s, deploy_prometheus::PromQlGate::from_config).map(|a| Arc::new(a) as _)
            })
            .gate(deploy_prometheus::SCRAPE_KIND, |p, s| {
                adapter(p, s, deploy_prometheus::ScrapeGate::from_config).map(|a| Arc::new(a) as _)
            });
        #[cfg(feature = "postgres")]
        let r = r.migrations(deploy_postgres::KIND, |p, s| {
            adapter(p, s, deploy_postgres::PgMigrationRunner::from_config).map(|a| Arc::new(a) as _)
        });
        #[cfg(feature = "postgres")]
        let r = r.state_store(deploy_postgres::STATE_KIND, |p, s| {
            adapter(p, s, deploy_postgres::PgStateStore::from_config).map(|a| Arc::new(a) as _)
        });
        #[cfg(feature = "ssh")]
        let r =
            r.ssh(|p, s| adapter(p, s, deploy_ssh::SshHost::from_config).map(|a| Arc::new(a) as _));
        #[cfg(feature = "docker")]
        let r = r.target(deploy_docker::KIND, docker_target);
        r
    }

    /// No adapters at all (an embedding tool registers its own).
    pub fn empty() -> Self {
        Self::default()
    }

    /// Build `[switch]` sections of `kind` with `build`.
    pub fn switch(mut self, kind: &'static str, build: Build<DynTrafficSwitch>) -> Self {
        self.switches.insert(kind, build);
        self
    }

    /// Build `[[gates]]` entries of `kind` with `build`.
    pub fn gate(mut self, kind: &'static str, build: Build<DynMetricGate>) -> Self {
        self.gates.insert(kind, build);
        self
    }

    /// Build `[migrations]` sections of `kind` with `build`.
    pub fn migrations(mut self, kind: &'static str, build: Build<DynMigrationRunner>) -> Self {
        self.migrations.insert(kind, build);
        self
    }

    /// Build `[maintenance]` sections of `kind` with `build`.
    pub fn maintenance(mut self, kind: &'static str, build: Build<DynMaintenance>) -> Self {
        self.maintenance.insert(kind, build);
        self
    }

    /// Build `[state]` sections of `kind` with `build`.
    pub fn state_store(mut self, kind: &'static str, build: Build<Arc<dyn StateStore>>) -> Self {
        self.state_stores.insert(kind, build);
        self
    }

    /// Build `[[targets]]` entries of `kind` with `build`.
    pub fn target(mut self, kind: &'static str, build: TargetBuild) -> Self {
        self.targets.insert(kind, build);
        self
    }

    /// Build the `ssh` table of a target with `build`.
    pub fn ssh(mut self, build: Build<DynHost>) -> Self {
        self.ssh = Some(build);
        self
    }
}

/// A `kind = "docker"` target: `DockerTargetConfig`'s keys, every problem at its key path;
/// with the plan's `[probe] container_health`, judged by its container's `HEALTHCHECK` and
/// then the plan's probe.
#[cfg(feature = "docker")]
fn docker_target(
    path: &str,
    section: toml::Value,
    context: TargetContext,
) -> Result<BuiltTarget, Vec<Problem>> {
    let config: deploy_docker::DockerTargetConfig =
        crate::plan_file::deserialize_at(path, section).map_err(|p| vec![p])?;
    let target = deploy_docker::DockerTarget::from_config_checked(
        context.id,
        context.host,
        context.endpoint,
        config,
    )
    .map_err(|problems| {
        problems
            .into_iter()
            .map(|(key, message)| Problem {
                path: if key.is_empty() {
                    path.to_owned()
                } else {
                    format!("{path}.{key}")
                },
                message,
            })
            .collect::<Vec<_>>()
    })?;
    let target = Arc::new(target);
    let probe = context.own_health_then.map(|then| {
        Arc::new(deploy_docker::DockerHealthProbe::new([Arc::clone(&target)]).then(then))
            as deploy_core::DynHealthProbe
    });
    Ok(BuiltTarget::new(target).with_probe(probe))
}

/// The builder `section` names with its `kind`, from `known`; the section without `kind`.
fn pick<T>(
    path: &str,
    section: &toml::Value,
    known: &BTreeMap<&'static str, Build<T>>,
) -> Result<(Build<T>, toml::Value), Vec<Problem>> {
    let problem = |path: String, message: String| vec![Problem { path, message }];
    let Some(table) = section.as_table() else {
        return Err(problem(path.to_owned(), "must be a table".to_owned()));
    };
    let Some(kind) = table.get("kind").and_then(toml::Value::as_str) else {
        return Err(problem(
            format!("{path}.kind"),
            "missing (which adapter?)".to_owned(),
        ));
    };
    let Some(build) = known.get(kind) else {
        let names: Vec<&str> = known.keys().copied().collect();
        let names = if names.is_empty() {
            "none: enable the adapter features".to_owned()
        } else {
            names.join(", ")
        };
        return Err(problem(
            format!("{path}.kind"),
            format!("unknown kind {kind:?} (this build knows: {names})"),
        ));
    };
    let mut rest = table.clone();
    rest.remove("kind");
    Ok((*build, toml::Value::Table(rest)))
}

impl AdapterFactory for Adapters {
    fn switch(&self, section: &toml::Value) -> Result<DynTrafficSwitch, Vec<Problem>> {
        self.switch_at("switch", section)
    }

    fn switch_at(
        &self,
        path: &str,
        section: &toml::Value,
    ) -> Result<DynTrafficSwitch, Vec<Problem>> {
        let (build, rest) = pick(path, section, &self.switches)?;
        build(path, rest)
    }

    fn gate(&self, path: &str, section: &toml::Value) -> Result<DynMetricGate, Vec<Problem>> {
        let (build, rest) = pick(path, section, &self.gates)?;
        build(path, rest)
    }

    fn migrations(&self, section: &toml::Value) -> Result<DynMigrationRunner, Vec<Problem>> {
        let (build, rest) = pick("migrations", section, &self.migrations)?;
        build("migrations", rest)
    }

    fn maintenance(&self, section: &toml::Value) -> Result<DynMaintenance, Vec<Problem>> {
        let (build, rest) = pick("maintenance", section, &self.maintenance)?;
        build("maintenance", rest)
    }

    fn state_store(&self, section: &toml::Value) -> Result<Arc<dyn StateStore>, Vec<Problem>> {
        let (build, rest) = pick("state", section, &self.state_stores)?;
        build("state", rest)
    }

    fn target(
        &self,
        path: &str,
        kind: &str,
        section: &toml::Value,
        context: TargetContext,
    ) -> Result<BuiltTarget, Vec<Problem>> {
        match self.targets.get(kind) {
            Some(build) => build(path, section.clone(), context),
            None => {
                let known: Vec<&str> = self.targets.keys().copied().collect();
                Err(vec![crate::plan_file::unknown_target_kind(
                    path, kind, &known,
                )])
            }
        }
    }

    fn ssh_host(&self, path: &str, section: &toml::Value) -> Result<DynHost, Vec<Problem>> {
        match self.ssh {
            Some(build) => build(path, section.clone()),
            None => Err(vec![Problem {
                path: path.to_owned(),
                message: "SSH targets need the `ssh` feature".to_owned(),
            }]),
        }
    }
}
