//! [`UpstreamSwitchConfig`]: the plan-file section `[switch]` with `kind = "nginx"`, and
//! [`UpstreamSwitch::from_config`].

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use deploy_core::{LocalHost, Result};
use serde::Deserialize;

use super::UpstreamSwitch;
use super::sticky::StickyConfig;
use crate::nginx::{Nginx, Reload};

/// The plan-file section `[switch]` with `kind = "nginx"` (the caller removes `kind`): an
/// [`UpstreamSwitch`] for the nginx on this machine. Every key is optional to serde;
/// [`UpstreamSwitch::from_config`] checks what the switch needs and reports every problem at
/// once. Unknown keys are refused.
///
/// ```toml
/// [switch]
/// kind = "nginx"
/// config = "/etc/nginx/nginx.conf"
/// include = "/etc/nginx/app/upstream.conf"
/// upstream = "app"
/// status_listen = "127.0.0.1:8099"
/// keepalive = 32
/// confirm_timeout = "10s"
/// error_log = "/var/log/nginx/error.log"
///
/// [switch.servers]
/// blue = "10.0.0.11:8080"
/// green = "10.0.0.12:8080"
///
/// [switch.sticky]            # optional: sticky canary cohorts
/// cookie = "canary"
/// header = "X-Canary"
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct UpstreamSwitchConfig {
    /// `config` (required): nginx's main configuration file; it must contain the line
    /// `include <include>;`.
    pub config: Option<PathBuf>,
    /// `include` (required): the upstream include file the switch owns (an absolute path).
    pub include: Option<PathBuf>,
    /// `upstream`: the name of the `upstream` block (default `app`).
    pub upstream: Option<String>,
    /// `servers` (at least one): target → address of its server (`10.0.0.11:8080`,
    /// `app-1.internal:8080`, `unix:/run/app.sock`).
    pub servers: BTreeMap<String, String>,
    /// `status_listen` (required): where the include's status server answers the generation id
    /// (`127.0.0.1:8099`; a loopback address is best).
    pub status_listen: Option<SocketAddr>,
    /// `keepalive`: idle connections kept to the servers per worker (`keepalive n;`).
    pub keepalive: Option<u32>,
    /// `confirm_timeout`: how long a reload may take to show the new generation (`"10s"`, the
    /// default).
    #[serde(with = "humantime_serde")]
    pub confirm_timeout: Option<Duration>,
    /// `binary`: the nginx binary (default `nginx` from `PATH`).
    pub binary: Option<PathBuf>,
    /// `prefix`: passed as `-p` to every nginx command.
    pub prefix: Option<PathBuf>,
    /// `error_log`: the error log the master writes to; its new lines are attached to the error
    /// of a reload that did not take effect.
    pub error_log: Option<PathBuf>,
    /// `pid_file`: reload by `kill -HUP` of the pid in this file instead of `nginx -s reload`.
    pub pid_file: Option<PathBuf>,
    /// `sticky`: sticky canary cohorts ([`StickyConfig`]: `cookie`, `header`); unknown keys
    /// are refused.
    pub sticky: Option<StickyConfig>,
}

impl UpstreamSwitch {
    /// The switch a plan-file section describes, for the nginx on this machine
    /// ([`LocalHost`]); for an nginx on another [`Host`](deploy_core::Host), use
    /// [`builder`](Self::builder). Every problem is reported at once, naming its key.
    pub fn from_config(config: UpstreamSwitchConfig) -> Result<UpstreamSwitch> {
        let mut nginx = Nginx::new(config.config.unwrap_or_default());
        if let Some(b) = config.binary {
            nginx = nginx.with_binary(b);
        }
        if let Some(p) = config.prefix {
            nginx = nginx.with_prefix(p);
        }
        if let Some(l) = config.error_log {
            nginx = nginx.with_error_log(l);
        }
        if let Some(pid_file) = config.pid_file {
            nginx = nginx.with_reload(Reload::Hup { pid_file });
        }
        let mut b = UpstreamSwitch::builder(
            Arc::new(LocalHost::new()),
            nginx,
            config.include.unwrap_or_default(),
        );
        if let Some(u) = config.upstream {
            b = b.upstream(u);
        }
        for (target, address) in config.servers {
            b = b.server(target, address);
        }
        if let Some(addr) = config.status_listen {
            b = b.status_listen(addr);
        }
        if let Some(k) = config.keepalive {
            b = b.keepalive(k);
        }
        if let Some(t) = config.confirm_timeout {
            b = b.confirm_timeout(t);
        }
        if let Some(s) = config.sticky {
            b = b.sticky(s);
        }
        b.build()
    }
}

#[cfg(test)]
mod tests {
    use deploy_core::{ErrorKind, TargetId};

    use super::*;

    const SECTION: &str = r#"
config = "/etc/nginx/nginx.conf"
include = "/etc/nginx/app/upstream.conf"
upstream = "shop"
status_listen = "127.0.0.1:8099"
keepalive = 32
confirm_timeout = "2500ms"
binary = "/usr/sbin/nginx"
prefix = "/etc/nginx"
error_log = "/var/log/nginx/error.log"
pid_file = "/run/nginx.pid"

[servers]
blue = "10.0.0.11:8080"
green = "10.0.0.12:8080"
"#;

    const SECTION_HEAD: &str = "config = \"/etc/nginx/nginx.conf\"\n";

    #[test]
    fn a_plan_file_section_builds_the_switch_it_describes() {
        let config: UpstreamSwitchConfig = toml::from_str(SECTION).unwrap();
        assert_eq!(config.confirm_timeout, Some(Duration::from_millis(2500)));
        let s = UpstreamSwitch::from_config(config).unwrap();
        assert_eq!(
            s.include_path().to_str(),
            Some("/etc/nginx/app/upstream.conf")
        );
        assert_eq!(s.status_listen(), "127.0.0.1:8099".parse().unwrap());
        let targets: Vec<&TargetId> = s.targets().collect();
        assert_eq!(
            targets,
            [
                &TargetId::new("blue").unwrap(),
                &TargetId::new("green").unwrap()
            ]
        );
        assert_eq!(s.upstream, "shop");
        assert_eq!(s.keepalive, Some(32));
        assert_eq!(s.confirm_timeout, Duration::from_millis(2500));
        assert_eq!(
            s.nginx,
            Nginx::new("/etc/nginx/nginx.conf")
                .with_binary("/usr/sbin/nginx")
                .with_prefix("/etc/nginx")
                .with_error_log("/var/log/nginx/error.log")
                .with_reload(Reload::Hup {
                    pid_file: "/run/nginx.pid".into()
                })
        );
        assert_eq!(s.host.name(), "local");
    }

    #[test]
    fn a_sticky_section_builds_a_sticky_switch_and_refuses_unknown_keys() {
        let text = format!("{SECTION}\n[sticky]\ncookie = \"canary\"\n");
        let config: UpstreamSwitchConfig = toml::from_str(&text).unwrap();
        assert_eq!(config.sticky, Some(StickyConfig::new("canary")));
        let s = UpstreamSwitch::from_config(config).unwrap();
        assert_eq!(s.sticky().unwrap().header, "X-Canary");
        assert_eq!(
            s.sticky_location_lines(),
            [
                "proxy_pass http://shop__$shop_slot;",
                "add_header Set-Cookie $shop_set_cookie;"
            ]
        );
        let text = format!("{SECTION}\n[sticky]\ncookie = \"c\"\nheader = \"X-T\"\nmap = \"/x\"\n");
        let err = toml::from_str::<UpstreamSwitchConfig>(&text).unwrap_err();
        assert!(err.to_string().contains("unknown field `map`"), "{err}");
        let text = format!("{SECTION}\n[sticky]\ncookie = \"a-b\"\n");
        let config: UpstreamSwitchConfig = toml::from_str(&text).unwrap();
        let err = UpstreamSwitch::from_config(config).unwrap_err();
        assert!(err.to_string().contains("sticky.cookie \"a-b\""), "{err}");
    }

    #[test]
    fn the_least_section_takes_the_defaults() {
        let config: UpstreamSwitchConfig = toml::from_str(
            "config = \"/etc/nginx/nginx.conf\"\ninclude = \"/etc/nginx/up.conf\"\n\
             status_listen = \"127.0.0.1:8099\"\nservers = { blue = \"127.0.0.1:8081\" }\n",
        )
        .unwrap();
        let s = UpstreamSwitch::from_config(config).unwrap();
        assert_eq!(s.upstream, "app");
        assert_eq!(s.keepalive, None);
        assert_eq!(s.confirm_timeout, Duration::from_secs(10));
        assert_eq!(s.nginx, Nginx::new("/etc/nginx/nginx.conf"));
    }

    #[test]
    fn unknown_keys_and_kind_are_refused() {
        for key in ["weight = 5", "kind = \"nginx\"", "server = \"x\""] {
            let text = format!("{SECTION_HEAD}{key}\n");
            let err = toml::from_str::<UpstreamSwitchConfig>(&text).unwrap_err();
            let first = key.split(' ').next().unwrap();
            assert!(
                err.to_string()
                    .contains(&format!("unknown field `{first}`")),
                "{key}: {err}"
            );
        }
    }

    #[test]
    fn every_missing_or_bad_key_is_reported_at_once() {
        let err = UpstreamSwitch::from_config(UpstreamSwitchConfig::default()).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidInput);
        let msg = err.to_string();
        for key in ["`config`", "`include`", "`servers`", "`status_listen`"] {
            assert!(msg.contains(key), "{key} missing in {msg}");
        }
        let mut config: UpstreamSwitchConfig = toml::from_str(SECTION).unwrap();
        config.upstream = Some("two words".into());
        config.include = Some("relative.conf".into());
        config
            .servers
            .insert("bad target".into(), "10.0.0.13:8080".into());
        config
            .servers
            .insert("red".into(), "10.0.0.14; evil".into());
        let msg = UpstreamSwitch::from_config(config).unwrap_err().to_string();
        for needle in [
            "upstream name \"two words\"",
            "the include path relative.conf must be absolute",
            "target id \"bad target\"",
            "address \"10.0.0.14; evil\" of red",
        ] {
            assert!(msg.contains(needle), "{needle} missing in {msg}");
        }
    }

    #[test]
    fn a_bad_address_or_duration_is_refused_at_its_key() {
        let err = toml::from_str::<UpstreamSwitchConfig>("status_listen = \"localhost:80\"\n")
            .unwrap_err();
        assert!(err.to_string().contains("status_listen"), "{err}");
        let err =
            toml::from_str::<UpstreamSwitchConfig>("confirm_timeout = \"soon\"\n").unwrap_err();
        assert!(err.to_string().contains("confirm_timeout"), "{err}");
    }
}
