//! [`MaintenancePageConfig`]: the plan-file section `[maintenance]` with `kind = "nginx"`, and
//! [`MaintenancePage::from_config`].

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use deploy_core::{LocalHost, Result, redact};
use serde::Deserialize;

use super::{MaintenancePage, PageCheck};

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
/// page_file = "/srv/app/static/maintenance.html"
/// verify_deadline = "10s"
/// ```
///
/// How a 503 is known as the maintenance page ([`PageCheck`]): at most one of `page_file` (the
/// body is that file), `page_marker` (the body contains that text) and `any_503 = true`;
/// without any, the body must contain [`MAINTENANCE_MARKER`](crate::MAINTENANCE_MARKER).
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct MaintenancePageConfig {
    /// `flag` (required): the flag file nginx checks (`if (-f <flag>)`), an absolute path.
    pub flag: Option<PathBuf>,
    /// `verify_urls`: URLs of the site checked after each change (503 with the page when on,
    /// 2xx/3xx when off); without any, nothing is checked.
    pub verify_urls: Vec<String>,
    /// `page_file`: the page nginx serves for 503 (an absolute path); a 503 counts as the
    /// maintenance page when its body is this file's contents ([`PageCheck::File`]).
    pub page_file: Option<PathBuf>,
    /// `page_marker`: a text a 503 body must contain to count as the maintenance page
    /// ([`PageCheck::Contains`]; without `page_file` and `any_503`, the default is
    /// [`MAINTENANCE_MARKER`](crate::MAINTENANCE_MARKER)).
    pub page_marker: Option<String>,
    /// `any_503`: `true` counts any 503 as the maintenance page ([`PageCheck::Any503`]).
    pub any_503: bool,
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
            .field("page_file", &self.page_file)
            .field("page_marker", &self.page_marker)
            .field("any_503", &self.any_503)
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
        let given: Vec<&str> = [
            ("`page_file`", config.page_file.is_some()),
            ("`page_marker`", config.page_marker.is_some()),
            ("`any_503 = true`", config.any_503),
        ]
        .into_iter()
        .filter_map(|(key, set)| set.then_some(key))
        .collect();
        if given.len() > 1 {
            b.problems.push(format!(
                "{} each say how the page is known: give one of them",
                given.join(" and ")
            ));
        }
        if let Some(file) = config.page_file {
            b = b.page_check(PageCheck::File(file));
        } else if let Some(marker) = config.page_marker {
            b = b.page_check(PageCheck::Contains(marker));
        } else if config.any_503 {
            b = b.page_check(PageCheck::Any503);
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
        assert_eq!(page.check, PageCheck::Contains("back soon".into()));
        assert_eq!(page.deadline, Duration::from_secs(90));
        assert_eq!(page.host.name(), "local");

        let least: MaintenancePageConfig = toml::from_str("flag = \"/srv/flag\"\n").unwrap();
        let page = MaintenancePage::from_config(least).unwrap();
        assert!(page.verify.is_empty());
        assert_eq!(page.check, PageCheck::Contains(MAINTENANCE_MARKER.into()));
        assert_eq!(page.deadline, Duration::from_secs(10));
    }

    #[test]
    fn the_page_is_known_by_its_file_a_text_or_any_503() {
        let page = |extra: &str| {
            let config: MaintenancePageConfig =
                toml::from_str(&format!("flag = \"/srv/app/.maintenance\"\n{extra}")).unwrap();
            MaintenancePage::from_config(config)
        };
        assert_eq!(
            page("page_file = \"/srv/app/static/maintenance.html\"\n")
                .unwrap()
                .check,
            PageCheck::File("/srv/app/static/maintenance.html".into())
        );
        assert_eq!(
            page("page_marker = \"back soon\"\n").unwrap().check,
            PageCheck::Contains("back soon".into())
        );
        assert_eq!(page("any_503 = true\n").unwrap().check, PageCheck::Any503);
        assert_eq!(
            page("any_503 = false\n").unwrap().check,
            PageCheck::Contains(MAINTENANCE_MARKER.into())
        );

        let err = page("page_file = \"static/maintenance.html\"\n").unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidInput);
        assert!(
            err.to_string()
                .contains("the page file (`page_file`) static/maintenance.html must be absolute"),
            "{err}"
        );
        let msg = page("page_file = \"/srv/p.html\"\npage_marker = \"x\"\nany_503 = true\n")
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("`page_file` and `page_marker` and `any_503 = true` each say how the page is known: give one of them"),
            "{msg}"
        );
        let err = toml::from_str::<MaintenancePageConfig>("any_503 = \"yes\"\n").unwrap_err();
        assert!(err.to_string().contains("any_503"), "{err}");
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
             page_marker = \"\"\nany_503 = true\n",
        )
        .unwrap();
        let msg = MaintenancePage::from_config(config)
            .unwrap_err()
            .to_string();
        for needle in [
            "must be absolute",
            "not http",
            "(`page_marker`) is empty",
            "`page_marker` and `any_503 = true`",
        ] {
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
