//! The adapters compiled into this facade, as an [`AdapterFactory`] for plan files: each
//! adapter section names its adapter with `kind`, and unknown keys are refused.
//!
//! | section | `kind` | feature |
//! |---|---|---|
//! | `[switch]` | `haproxy`, `nginx` | `haproxy`, `nginx` |
//! | `[[gates]]` | `promql`, `scrape` | `prometheus` |
//! | `[migrations]` | `postgres` | `postgres` |
//! | `[maintenance]` | `nginx` | `nginx` |
//! | `ssh` of a target | (none: `host`, `port`, `user`, `key_file`, `known_hosts`, ...) | `ssh` |

#![allow(unused_imports)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use deploy_core::{
    DynHost, DynMaintenance, DynMetricGate, DynMigrationRunner, DynTrafficSwitch, LocalHost,
    TargetId,
};
use serde::Deserialize;
use serde::de::DeserializeOwned;

use crate::plan_file::{AdapterFactory, Problem};

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

fn problem(path: &str, message: impl Into<String>) -> Vec<Problem> {
    vec![Problem {
        path: path.to_owned(),
        message: message.into(),
    }]
}

fn kind<'a>(path: &str, section: &'a toml::Value) -> Result<&'a str, Vec<Problem>> {
    section
        .get("kind")
        .and_then(toml::Value::as_str)
        .ok_or_else(|| problem(&format!("{path}.kind"), "missing (which adapter?)"))
}

fn unknown<T>(path: &str, kind: &str, known: &[&str]) -> Result<T, Vec<Problem>> {
    let known = if known.is_empty() {
        "none: enable the adapter features".to_owned()
    } else {
        known.join(", ")
    };
    Err(problem(
        &format!("{path}.kind"),
        format!("unknown kind {kind:?} (this build knows: {known})"),
    ))
}

/// Deserialize a section with its key paths in the messages.
fn section<T: DeserializeOwned>(path: &str, value: &toml::Value) -> Result<T, Vec<Problem>> {
    crate::plan_file::deserialize_at(path, value.clone()).map_err(|p| vec![p])
}

fn built<T>(path: &str, r: deploy_core::Result<T>) -> Result<T, Vec<Problem>> {
    r.map_err(|e| problem(path, e.to_string()))
}

#[cfg(feature = "haproxy")]
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HaproxySwitchSection {
    #[allow(dead_code)]
    kind: String,
    /// `/run/haproxy/admin.sock`, `ipv4@127.0.0.1:9999`.
    socket: String,
    backend: String,
    #[serde(default)]
    servers: BTreeMap<TargetId, String>,
    #[serde(default, with = "humantime_serde")]
    drain_timeout: Option<Duration>,
    #[serde(default)]
    escalate_to_maint: Option<bool>,
    #[serde(default, with = "humantime_serde")]
    check_interval: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    check_timeout: Option<Duration>,
    #[serde(default)]
    state_file: Option<PathBuf>,
}

#[cfg(feature = "nginx")]
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NginxSwitchSection {
    #[allow(dead_code)]
    kind: String,
    /// The main configuration file (it must `include` the upstream file).
    config: PathBuf,
    /// The upstream include file this switch owns.
    include: PathBuf,
    #[serde(default)]
    upstream: Option<String>,
    /// Target → `host:port`.
    servers: BTreeMap<String, String>,
    /// Where the include's generation server listens.
    status_listen: SocketAddr,
    #[serde(default)]
    keepalive: Option<u32>,
    #[serde(default, with = "humantime_serde")]
    confirm_timeout: Option<Duration>,
    #[serde(default)]
    binary: Option<PathBuf>,
    #[serde(default)]
    prefix: Option<PathBuf>,
    #[serde(default)]
    error_log: Option<PathBuf>,
    /// Reload by `kill -HUP` of the pid in this file instead of `nginx -s reload`.
    #[serde(default)]
    pid_file: Option<PathBuf>,
}

#[cfg(feature = "nginx")]
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NginxMaintenanceSection {
    #[allow(dead_code)]
    kind: String,
    flag: PathBuf,
    #[serde(default)]
    verify_urls: Vec<String>,
    #[serde(default)]
    page_marker: Option<String>,
    #[serde(default, with = "humantime_serde")]
    verify_deadline: Option<Duration>,
}

/// The seeds' two alert rules, as gate presets.
#[cfg(feature = "prometheus")]
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Preset {
    ErrorRate,
    P99Latency,
}

#[cfg(feature = "prometheus")]
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct GateSection {
    #[allow(dead_code)]
    kind: String,
    #[serde(default)]
    name: Option<String>,
    /// The Prometheus server (`promql`).
    #[serde(default)]
    prometheus: Option<String>,
    /// Environment variable holding a bearer token for Prometheus.
    #[serde(default)]
    bearer_token_env: Option<String>,
    #[serde(default)]
    preset: Option<Preset>,
    /// Error-rate preset: the highest error share (0.01 = 1 %).
    #[serde(default)]
    max_error_rate: Option<f64>,
    /// p99 preset: the highest p99.
    #[serde(default, with = "humantime_serde")]
    max_latency: Option<Duration>,
    /// A PromQL query template instead of a preset.
    #[serde(default)]
    query: Option<String>,
    /// Its condition (`< 0.01`, `0.5..2`).
    #[serde(default)]
    condition: Option<String>,
    #[serde(default, with = "humantime_serde")]
    window: Option<Duration>,
    #[serde(default)]
    min_traffic: Option<f64>,
    /// The label naming the target in the series (`target`); `""` selects every series.
    #[serde(default)]
    target_label: Option<String>,
    /// `scrape`: extra URLs to scrape besides the canary endpoints.
    #[serde(default)]
    urls: Vec<String>,
    #[serde(default)]
    metrics_path: Option<String>,
}

/// The `ssh` table of a target.
#[cfg(feature = "ssh")]
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SshSection {
    /// Host name or address.
    host: String,
    #[serde(default)]
    port: Option<u16>,
    #[serde(default)]
    user: Option<String>,
    /// A private key file (ed25519, RSA, ECDSA).
    #[serde(default)]
    key_file: Option<PathBuf>,
    /// Environment variable holding the key's passphrase.
    #[serde(default)]
    key_passphrase_env: Option<String>,
    /// Also try the running ssh-agent.
    #[serde(default)]
    agent: bool,
    #[serde(default)]
    known_hosts: Option<PathBuf>,
    /// `strict` (default) or `accept-new`.
    #[serde(default)]
    host_key_policy: Option<deploy_ssh::HostKeyPolicy>,
    #[serde(default, with = "humantime_serde")]
    connect_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    command_timeout: Option<Duration>,
}

#[cfg(feature = "postgres")]
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PostgresSection {
    #[allow(dead_code)]
    kind: String,
    /// The environment variable holding the database URL (default `DATABASE_URL`; when it is not
    /// set, the `PG*` variables are used).
    #[serde(default)]
    database_url_env: Option<String>,
    /// The database URL itself, for a database reached without a password (peer or trust
    /// authentication); a URL holding a password belongs in `database_url_env`.
    #[serde(default)]
    url: Option<String>,
    /// The migrations folder.
    dir: PathBuf,
    #[serde(default)]
    backup_dir: Option<PathBuf>,
    #[serde(default)]
    keep_backups: Option<usize>,
    #[serde(default)]
    history_table: Option<String>,
    #[serde(default)]
    bin_dir: Option<PathBuf>,
    #[serde(default)]
    restore_mode: Option<deploy_postgres::RestoreMode>,
}

impl AdapterFactory for Adapters {
    fn switch(&self, value: &toml::Value) -> Result<DynTrafficSwitch, Vec<Problem>> {
        let k = kind("switch", value)?;
        match k {
            #[cfg(feature = "haproxy")]
            "haproxy" => {
                let s: HaproxySwitchSection = section("switch", value)?;
                let socket: deploy_haproxy::Socket = built("switch.socket", s.socket.parse())?;
                let mut b = deploy_haproxy::HaproxySwitch::builder(s.backend).socket(socket);
                for (t, server) in s.servers {
                    b = b.target(t, server);
                }
                if let Some(d) = s.drain_timeout {
                    b = b.drain_timeout(d);
                }
                if let Some(e) = s.escalate_to_maint {
                    b = b.escalate_to_maint(e);
                }
                match (s.check_interval, s.check_timeout) {
                    (Some(i), Some(t)) => b = b.checks(i, t),
                    (None, None) => {}
                    (Some(_), None) => {
                        return Err(problem(
                            "switch.check_timeout",
                            "give it with check_interval",
                        ));
                    }
                    (None, Some(_)) => {
                        return Err(problem(
                            "switch.check_interval",
                            "give it with check_timeout",
                        ));
                    }
                }
                if let Some(f) = s.state_file {
                    b = b.state_file(f);
                }
                Ok(Arc::new(built("switch", b.build())?))
            }
            #[cfg(feature = "nginx")]
            "nginx" => {
                let s: NginxSwitchSection = section("switch", value)?;
                let mut nginx = deploy_nginx::Nginx::new(s.config);
                if let Some(b) = s.binary {
                    nginx = nginx.with_binary(b);
                }
                if let Some(p) = s.prefix {
                    nginx = nginx.with_prefix(p);
                }
                if let Some(l) = s.error_log {
                    nginx = nginx.with_error_log(l);
                }
                if let Some(pid_file) = s.pid_file {
                    nginx = nginx.with_reload(deploy_nginx::Reload::Hup { pid_file });
                }
                let host: DynHost = Arc::new(LocalHost::new());
                let mut b = deploy_nginx::UpstreamSwitch::builder(host, nginx, s.include)
                    .status_listen(s.status_listen);
                if let Some(u) = s.upstream {
                    b = b.upstream(u);
                }
                for (t, addr) in s.servers {
                    b = b.server(t, addr);
                }
                if let Some(k) = s.keepalive {
                    b = b.keepalive(k);
                }
                if let Some(t) = s.confirm_timeout {
                    b = b.confirm_timeout(t);
                }
                Ok(Arc::new(built("switch", b.build())?))
            }
            other => unknown(
                "switch",
                other,
                &[
                    #[cfg(feature = "haproxy")]
                    "haproxy",
                    #[cfg(feature = "nginx")]
                    "nginx",
                ],
            ),
        }
    }

    fn gate(&self, path: &str, value: &toml::Value) -> Result<DynMetricGate, Vec<Problem>> {
        let k = kind(path, value)?;
        match k {
            #[cfg(feature = "prometheus")]
            "promql" | "scrape" => prometheus_gate(path, k, section(path, value)?),
            other => unknown(
                path,
                other,
                &[
                    #[cfg(feature = "prometheus")]
                    "promql",
                    #[cfg(feature = "prometheus")]
                    "scrape",
                ],
            ),
        }
    }

    fn migrations(&self, value: &toml::Value) -> Result<DynMigrationRunner, Vec<Problem>> {
        let k = kind("migrations", value)?;
        match k {
            #[cfg(feature = "postgres")]
            "postgres" => {
                let s: PostgresSection = section("migrations", value)?;
                if s.url.is_some() && s.database_url_env.is_some() {
                    return Err(problem(
                        "migrations.url",
                        "give url or database_url_env, not both",
                    ));
                }
                let var = s
                    .database_url_env
                    .unwrap_or_else(|| "DATABASE_URL".to_owned());
                let config = match (&s.url, std::env::var(&var)) {
                    (Some(url), _) => {
                        built("migrations.url", deploy_postgres::PgConfig::from_url(url))?
                    }
                    (None, Ok(url)) => built(
                        "migrations.database_url_env",
                        deploy_postgres::PgConfig::from_url(&url),
                    )?,
                    (None, Err(_)) => built("migrations", deploy_postgres::PgConfig::from_env())?,
                };
                let mut b = deploy_postgres::PgMigrationRunner::builder(config, s.dir);
                if let Some(d) = s.backup_dir {
                    b = b.backup_dir(d);
                }
                if let Some(n) = s.keep_backups {
                    b = b.keep_backups(n);
                }
                if let Some(t) = s.history_table {
                    b = b.history_table(t);
                }
                if let Some(d) = s.bin_dir {
                    b = b.bin_dir(d);
                }
                if let Some(m) = s.restore_mode {
                    b = b.restore_mode(m);
                }
                Ok(Arc::new(built("migrations", b.build())?))
            }
            other => unknown(
                "migrations",
                other,
                &[
                    #[cfg(feature = "postgres")]
                    "postgres",
                ],
            ),
        }
    }

    fn maintenance(&self, value: &toml::Value) -> Result<DynMaintenance, Vec<Problem>> {
        let k = kind("maintenance", value)?;
        match k {
            #[cfg(feature = "nginx")]
            "nginx" => {
                let s: NginxMaintenanceSection = section("maintenance", value)?;
                let host: DynHost = Arc::new(LocalHost::new());
                let mut b = deploy_nginx::MaintenancePage::builder(host, s.flag);
                for u in s.verify_urls {
                    b = b.verify_url(u);
                }
                if s.page_marker.is_some() {
                    b = b.page_marker(s.page_marker);
                }
                if let Some(d) = s.verify_deadline {
                    b = b.verify_deadline(d);
                }
                Ok(Arc::new(built("maintenance", b.build())?))
            }
            other => unknown(
                "maintenance",
                other,
                &[
                    #[cfg(feature = "nginx")]
                    "nginx",
                ],
            ),
        }
    }

    fn ssh_host(&self, path: &str, value: &toml::Value) -> Result<DynHost, Vec<Problem>> {
        #[cfg(feature = "ssh")]
        {
            let s: SshSection = section(path, value)?;
            let mut b = deploy_ssh::SshHost::builder(s.host);
            if let Some(p) = s.port {
                b = b.port(p);
            }
            if let Some(u) = s.user {
                b = b.user(u);
            }
            match (s.key_file, s.key_passphrase_env) {
                (Some(k), Some(var)) => {
                    let pass = std::env::var(&var).map_err(|_| {
                        problem(
                            &format!("{path}.key_passphrase_env"),
                            format!("environment variable {var} is not set"),
                        )
                    })?;
                    b = b.key_file_with_passphrase(k, pass);
                }
                (Some(k), None) => b = b.key_file(k),
                (None, Some(_)) => {
                    return Err(problem(
                        &format!("{path}.key_passphrase_env"),
                        "needs key_file",
                    ));
                }
                (None, None) => {}
            }
            if s.agent {
                b = b.agent();
            }
            if let Some(k) = s.known_hosts {
                b = b.known_hosts(k);
            }
            if let Some(p) = s.host_key_policy {
                b = b.host_key_policy(p);
            }
            if let Some(t) = s.connect_timeout {
                b = b.connect_timeout(t);
            }
            if let Some(t) = s.command_timeout {
                b = b.command_timeout(t);
            }
            Ok(Arc::new(built(path, b.build())?))
        }
        #[cfg(not(feature = "ssh"))]
        {
            let _ = value;
            Err(problem(path, "SSH targets need the `ssh` feature"))
        }
    }
}

#[cfg(feature = "prometheus")]
fn prometheus_gate(path: &str, kind: &str, s: GateSection) -> Result<DynMetricGate, Vec<Problem>> {
    use deploy_prometheus::{Auth, HttpMetrics, PromQlGate, PrometheusClient, ScrapeGate};
    let mut metrics = HttpMetrics::new();
    match s.target_label.as_deref() {
        Some("") => metrics = metrics.without_target_label(),
        Some(l) => metrics = metrics.target_label(l),
        None => {}
    }
    let mut problems = Vec::new();
    match (&s.preset, &s.query) {
        (Some(_), Some(_)) => problems.push(Problem {
            path: path.into(),
            message: "give a preset or a query, not both".into(),
        }),
        (None, None) if kind == "promql" => problems.push(Problem {
            path: path.into(),
            message: "give a preset or a query".into(),
        }),
        (None, _) if kind == "scrape" => problems.push(Problem {
            path: format!("{path}.preset"),
            message: "a scrape gate needs a preset".into(),
        }),
        _ => {}
    }
    if s.preset.is_some() && s.name.is_some() {
        problems.push(Problem {
            path: format!("{path}.name"),
            message: "a preset names its gate (error-rate, p99-latency); name is for a query"
                .into(),
        });
    }
    if s.query.is_some() && s.condition.is_none() {
        problems.push(Problem {
            path: format!("{path}.condition"),
            message: "a query needs a condition".into(),
        });
    }
    match s.preset {
        Some(Preset::ErrorRate) if s.max_error_rate.is_none() => problems.push(Problem {
            path: format!("{path}.max_error_rate"),
            message: "the error_rate preset needs it".into(),
        }),
        Some(Preset::P99Latency) if s.max_latency.is_none() => problems.push(Problem {
            path: format!("{path}.max_latency"),
            message: "the p99_latency preset needs it".into(),
        }),
        _ => {}
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    if kind == "promql" {
        let Some(url) = &s.prometheus else {
            return Err(problem(
                &format!("{path}.prometheus"),
                "missing (the Prometheus server's URL)",
            ));
        };
        let mut client = built(&format!("{path}.prometheus"), PrometheusClient::new(url))?;
        if let Some(var) = &s.bearer_token_env {
            let token = std::env::var(var).map_err(|_| {
                problem(
                    &format!("{path}.bearer_token_env"),
                    format!("environment variable {var} is not set"),
                )
            })?;
            client = client.with_auth(Auth::Bearer(token));
        }
        let mut b = match (s.preset, &s.query) {
            (Some(Preset::ErrorRate), _) => {
                PromQlGate::error_rate_below(client, s.max_error_rate.unwrap_or(0.01), &metrics)
            }
            (Some(Preset::P99Latency), _) => PromQlGate::p99_latency_below(
                client,
                s.max_latency.unwrap_or(Duration::from_secs(2)),
                &metrics,
            ),
            (None, Some(q)) => {
                PromQlGate::builder(s.name.clone().unwrap_or_else(|| "promql".into()), client)
                    .query(q.clone())
                    .condition(s.condition.as_deref().unwrap_or_default())
            }
            (None, None) => return Err(problem(path, "give a preset or a query")),
        };
        if let Some(w) = s.window {
            b = b.window(w);
        }
        if let Some(m) = s.min_traffic {
            b = b.min_traffic(m);
        }
        Ok(Arc::new(built(path, b.build())?))
    } else {
        let mut b = match s.preset {
            Some(Preset::ErrorRate) => built(
                path,
                ScrapeGate::error_rate_below(s.max_error_rate.unwrap_or(0.01), &metrics),
            )?,
            Some(Preset::P99Latency) => ScrapeGate::p99_latency_below(
                s.max_latency.unwrap_or(Duration::from_secs(2)),
                &metrics,
            ),
            None => {
                return Err(problem(
                    &format!("{path}.preset"),
                    "a scrape gate needs a preset",
                ));
            }
        };
        if let Some(w) = s.window {
            b = b.window(w);
        }
        if let Some(m) = s.min_traffic {
            b = b.min_traffic(m);
        }
        for u in s.urls {
            b = b.url(u);
        }
        if let Some(p) = s.metrics_path {
            b = b.metrics_path(p);
        }
        Ok(Arc::new(built(path, b.build())?))
    }
}

#[cfg(all(test, feature = "prometheus", feature = "postgres"))]
mod tests {
    use super::*;

    fn value(text: &str) -> toml::Value {
        toml::from_str::<toml::Table>(text).unwrap().into()
    }

    fn problems<T>(r: Result<T, Vec<Problem>>) -> String {
        match r {
            Ok(_) => panic!("expected problems"),
            Err(p) => p
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("\n"),
        }
    }

    #[test]
    fn a_preset_gate_refuses_a_name_it_would_not_use() {
        let text = problems(Adapters::new().gate(
            "gates[0]",
            &value("kind = \"scrape\"\nname = \"errors\"\npreset = \"error_rate\"\nmax_error_rate = 0.01"),
        ));
        assert!(
            text.contains("gates[0].name: a preset names its gate (error-rate, p99-latency)"),
            "{text}"
        );
        let gate = Adapters::new()
            .gate(
                "gates[0]",
                &value("kind = \"scrape\"\npreset = \"error_rate\"\nmax_error_rate = 0.01"),
            )
            .unwrap();
        assert_eq!(gate.name(), "error-rate");
    }

    #[test]
    fn migrations_take_a_url_or_an_environment_variable_not_both() {
        let text = problems(Adapters::new().migrations(&value(
            "kind = \"postgres\"\nurl = \"postgres://app@127.0.0.1:5432/shop\"\n\
             database_url_env = \"DATABASE_URL\"\ndir = \"/srv/migrations\"",
        )));
        assert!(
            text.contains("migrations.url: give url or database_url_env, not both"),
            "{text}"
        );
        let text = problems(Adapters::new().migrations(&value(
            "kind = \"postgres\"\nurl = \"mysql://x\"\ndir = \"/srv/migrations\"",
        )));
        assert!(text.starts_with("migrations.url: "), "{text}");
        Adapters::new()
            .migrations(&value(
                "kind = \"postgres\"\nurl = \"postgres://app@127.0.0.1:5432/shop\"\n\
                 dir = \"/srv/migrations\"",
            ))
            .unwrap();
    }
}
