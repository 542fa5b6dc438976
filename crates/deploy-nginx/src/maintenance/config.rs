//! [`MaintenancePageConfig`]: the plan-file section `[maintenance]` with `kind = "nginx"`, and
//! [`MaintenancePage::from_config`].

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use deploy_core::{LocalHost, Result, redact};
use serde::Deserialize;

use super::MaintenancePage;

/// The plan-file section `[maintenance]` with `kind = "nginx"` (the caller removes `kind`): a
/// [`MaintenancePage`] whose flag file is on this machine. Every key is optional to serde;
/// [`MaintenancePage::from_config`] checks what the page needs and reports every problem at
/// once. Unknown keys are refused.
///
/// ```toml
/// [maintenance]
/// kind = "nginx"
/// flag = "/srv/app/shared/maintenance.on"
/// verify_urls = ["http://127.0.0.1/"]
/// verify_deadline = "10s"
/// ```
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct MaintenancePageConfig {
    /// `flag` (required): the flag file nginx checks (`if (-f <flag>)`), an absolute path.
    pub flag: Option<PathBuf>,
    /// `verify_urls`: URLs of the site checked after each change (503 with the page when on,
    /// 2xx/3xx when off); without any, nothing is checked.
    pub verify_urls: Vec<String>,
    /// `page_marker`: the text a 503 body must contain to count as the maintenance page
    /// (default [`MAINTENANCE_MARKER`](crate::MAINTENANCE_MARKER)).
    pub page_marker: Option<String>,
    /// `verify_deadline`: how long a change may take to show (`"10s"`, the default).
    #[serde(with = "humantime_serde")]
    pub verify_deadline: Option<Duration>,
}

impl fmt::Debug for MaintenancePageConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let verify_urls: Vec<String> = self.verify_urls.iter().map(|u| redact::url(u)).collect();
        f.debug_struct("MaintenancePageConfig")
            .field("flag", &self.flag)
            .field("verify_urls", &verify_urls)
            .field("page_marker", &self.page_marker)
            .field("verify_deadline", &self.verify_deadline)
            .finish()
    }
}

impl MaintenancePage {
    /// The page a plan-file section describes, with its flag file on this machine
    /// ([`LocalHost`]); for a flag on another [`Host`](deploy_core::Host), use
    /// [`builder`](Self::builder). Every problem is reported at once, naming its key.
    pub fn from_config(config: MaintenancePageConfig) -> Result<MaintenancePage> {
        let mut b =
            MaintenancePage::builder(Arc::new(LocalHost::new()), config.flag.unwrap_or_default());
        for url in config.verify_urls {
            b = b.verify_url(url);
        }
        if config.page_marker.is_some() {
            b = b.page_marker(config.page_marker);
        }
        if let Some(d) = config.verify_deadline {
            b = b.verify_deadline(d);
        }
        b.build()
    }
}

#[cfg(test)]
mod tests {
    use deploy_core::ErrorKind;

    use super::*;
    use crate::MAINTENANCE_MARKER;

    #[test]
    fn a_plan_file_section_builds_the_page_it_describes() {
        let config: MaintenancePageConfig = toml::from_str(
            "flag = \"/srv/app/shared/maintenance.on\"\n\
             verify_urls = [\"http://127.0.0.1/\", \"http://10.0.0.2:8080/health\"]\n\
             page_marker = \"back soon\"\nverify_deadline = \"1m 30s\"\n",
        )
        .unwrap();
        let page = MaintenancePage::from_config(config).unwrap();
        assert_eq!(page.flag().to_str(), Some("/srv/app/shared/maintenance.on"));
        assert_eq!(
            page.verify,
            ["http://127.0.0.1/", "http://10.0.0.2:8080/health"]
        );
        assert_eq!(page.marker.as_deref(), Some("back soon"));
        assert_eq!(page.deadline, Duration::from_secs(90));
        assert_eq!(page.host.name(), "local");

        let least: MaintenancePageConfig = toml::from_str("flag = \"/srv/flag\"\n").unwrap();
        let page = MaintenancePage::from_config(least).unwrap();
        assert!(page.verify.is_empty());
        assert_eq!(page.marker.as_deref(), Some(MAINTENANCE_MARKER));
        assert_eq!(page.deadline, Duration::from_secs(10));
    }

    #[test]
    fn the_shipped_recreate_plan_section_parses_and_builds() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../examples/plans/recreate.toml"
        );
        let plan: toml::Table = toml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let mut section = plan["maintenance"].as_table().unwrap().clone();
        assert_eq!(
            section
                .remove("kind")
                .and_then(|k| k.as_str().map(str::to_owned))
                .as_deref(),
            Some(crate::KIND)
        );
        let config: MaintenancePageConfig = section.try_into().unwrap();
        assert_eq!(config.verify_deadline, Some(Duration::from_secs(10)));
        MaintenancePage::from_config(config).unwrap();
    }

    #[test]
    fn unknown_keys_and_kind_are_refused() {
        for key in [
            "kind = \"nginx\"",
            "verify_url = \"http://x/\"",
            "deadline = \"1s\"",
        ] {
            let err = toml::from_str::<MaintenancePageConfig>(&format!("flag = \"/f\"\n{key}\n"))
                .unwrap_err();
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
        let err = MaintenancePage::from_config(MaintenancePageConfig::default()).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidInput);
        assert!(err.to_string().contains("`flag`"), "{err}");
        let config: MaintenancePageConfig = toml::from_str(
            "flag = \"relative/flag\"\nverify_urls = [\"ftp://x/\", \"http://ops:secret@[::1/\"]\n\
             page_marker = \"\"\n",
        )
        .unwrap();
        let msg = MaintenancePage::from_config(config)
            .unwrap_err()
            .to_string();
        for needle in ["must be absolute", "not http", "`page_marker`"] {
            assert!(msg.contains(needle), "{needle} missing in {msg}");
        }
        assert!(!msg.contains("secret"), "{msg}");
        let err =
            toml::from_str::<MaintenancePageConfig>("verify_deadline = \"later\"\n").unwrap_err();
        assert!(err.to_string().contains("verify_deadline"), "{err}");
    }

    #[test]
    fn debug_hides_secrets_in_verify_urls() {
        let config: MaintenancePageConfig =
            toml::from_str("verify_urls = [\"https://ops:pw@site.example/?key=k3y\"]\n").unwrap();
        let text = format!("{config:?}");
        assert!(!text.contains("pw@") && !text.contains("k3y"), "{text}");
        assert!(text.contains("https://site.example/?key=***"), "{text}");
    }
}
