//! Hooks: commands or webhooks run before or after a named step (or the whole run).
//!
//! A hook that fails *before* its step stops the deploy before that step changes anything (and
//! undoes what earlier steps did); a hook that fails *after* its step rolls the run back, that
//! step included.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::error::{Error, ErrorKind, Result};
use crate::model::Version;
use crate::strategy::Step;
use crate::traits::{Command, DynHost, HostExt};

/// When a hook runs relative to what it is attached to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HookPoint {
    /// Before; a failure stops the deploy before the step acts.
    Before,
    /// After; a failure rolls back.
    After,
}

impl fmt::Display for HookPoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Before => "before",
            Self::After => "after",
        })
    }
}

/// What a hook is told when it runs.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct HookContext {
    /// The run.
    pub run_id: String,
    /// The environment.
    pub environment: String,
    /// The version being deployed.
    pub version: Version,
    /// Before or after.
    pub point: HookPoint,
    /// The step, or `None` for a hook on the whole run.
    pub step: Option<Step>,
}

/// The work a hook does.
///
/// # Contract
/// - `Ok` means the deploy may go on; `Err` stops it (before) or rolls it back (after).
/// - The engine runs it with the hook's time limit; it should not keep state between calls.
#[async_trait]
pub trait HookAction: fmt::Debug + Send + Sync + 'static {
    /// Run once.
    async fn run(&self, ctx: &HookContext) -> Result<()>;
}

/// A hook: an action attached before or after steps of one kind (`"migrate"`, `"set_weights"`,
/// see [`Step::op`]) or the whole run (`"run"`).
#[derive(Debug, Clone)]
pub struct Hook {
    name: String,
    point: HookPoint,
    on: String,
    timeout: Duration,
    action: Arc<dyn HookAction>,
}

impl Hook {
    /// A hook named `name` running `action` at `point` of every step whose [`Step::op`] is `on`
    /// (or of the whole run when `on` is `"run"`), with a time limit of 60 s.
    pub fn new(
        name: impl Into<String>,
        point: HookPoint,
        on: impl Into<String>,
        action: Arc<dyn HookAction>,
    ) -> Self {
        Self {
            name: name.into(),
            point,
            on: on.into(),
            timeout: Duration::from_secs(60),
            action,
        }
    }

    /// Use this time limit.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The hook's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Before or after.
    pub fn point(&self) -> HookPoint {
        self.point
    }

    /// What it is attached to: a step kind or `"run"`.
    pub fn on(&self) -> &str {
        &self.on
    }

    /// Its time limit.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Whether it runs at `point` of `step` (`None`: the whole run).
    pub fn applies(&self, point: HookPoint, step: Option<&Step>) -> bool {
        self.point == point
            && match step {
                None => self.on == "run",
                Some(s) => self.on == s.op(),
            }
    }

    /// Run it with its time limit; the error names the hook.
    pub async fn run(&self, ctx: &HookContext) -> Result<()> {
        let what = match &ctx.step {
            Some(s) => format!("{} step {s}", self.point),
            None => format!("{} the run", self.point),
        };
        match tokio::time::timeout(self.timeout, self.action.run(ctx)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(e.context(format!("hook {} ({what})", self.name), String::new())),
            Err(_) => Err(Error::new(
                ErrorKind::Timeout,
                format!("hook {} ({what})", self.name),
                "",
                format!(
                    "did not finish within {}",
                    humantime::format_duration(self.timeout)
                ),
            )),
        }
    }
}

/// A hook that runs a command (argv, never a shell string) on a [`crate::Host`]. In every
/// argument, `{version}`, `{environment}`, `{run_id}` and `{step}` (the step's kind, or `run`)
/// are replaced; the same values are in the environment as `DEPLOY_VERSION`,
/// `DEPLOY_ENVIRONMENT`, `DEPLOY_RUN_ID`, `DEPLOY_STEP` and `DEPLOY_HOOK_POINT`. A non-zero exit
/// fails the hook with the end of its standard error.
#[derive(Debug, Clone)]
pub struct CommandHook {
    host: DynHost,
    argv: Vec<String>,
}

impl CommandHook {
    /// A command hook; `argv` must not be empty.
    pub fn new(host: DynHost, argv: Vec<String>) -> Result<Self> {
        if argv.is_empty() {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                "build command hook",
                "argv",
                "argv is empty",
            ));
        }
        Ok(Self { host, argv })
    }
}

fn substitute(arg: &str, ctx: &HookContext) -> String {
    let step = ctx.step.as_ref().map_or("run", Step::op);
    arg.replace("{version}", ctx.version.as_str())
        .replace("{environment}", &ctx.environment)
        .replace("{run_id}", &ctx.run_id)
        .replace("{step}", step)
}

#[async_trait]
impl HookAction for CommandHook {
    async fn run(&self, ctx: &HookContext) -> Result<()> {
        let argv: Vec<String> = self.argv.iter().map(|a| substitute(a, ctx)).collect();
        let cmd = Command::from_argv(argv)?
            .env("DEPLOY_VERSION", ctx.version.as_str())
            .env("DEPLOY_ENVIRONMENT", &ctx.environment)
            .env("DEPLOY_RUN_ID", &ctx.run_id)
            .env("DEPLOY_STEP", ctx.step.as_ref().map_or("run", Step::op))
            .env("DEPLOY_HOOK_POINT", ctx.point.to_string());
        self.host.run_checked(&cmd).await.map(|_| ())
    }
}

/// A hook that POSTs the [`HookContext`] as JSON to a URL; any 2xx answer passes.
#[derive(Clone)]
pub struct WebhookHook {
    url: String,
    client: reqwest::Client,
    headers: Vec<(String, crate::SecretString)>,
}

impl fmt::Debug for WebhookHook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Header values may be tokens.
        let names: Vec<&str> = self.headers.iter().map(|(n, _)| n.as_str()).collect();
        f.debug_struct("WebhookHook")
            .field("url", &crate::redact::url_without_path(&self.url))
            .field("headers", &names)
            .finish()
    }
}

impl WebhookHook {
    /// A webhook hook posting to `url`.
    pub fn new(url: impl Into<String>) -> Result<Self> {
        let url = url.into();
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                "build webhook hook",
                crate::redact::url_without_path(&url),
                "the URL must start with http:// or https://",
            ));
        }
        // No time limit of its own: the hook's limit applies to the whole call.
        let client = crate::http::client(
            None,
            "build webhook hook",
            &crate::redact::url_without_path(&url),
        )?;
        Ok(Self {
            url,
            client,
            headers: Vec::new(),
        })
    }

    /// Send this header too (an authorisation token, say; it is never printed).
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers
            .push((name.into(), crate::SecretString::from(value.into())));
        self
    }
}

#[async_trait]
impl HookAction for WebhookHook {
    async fn run(&self, ctx: &HookContext) -> Result<()> {
        let mut req = self.client.post(&self.url).json(ctx);
        for (n, v) in &self.headers {
            req = req.header(n, secrecy::ExposeSecret::expose_secret(v));
        }
        let object = crate::redact::url_without_path(&self.url);
        let resp = req
            .send()
            .await
            .map_err(|e| crate::http::request_error_on("post hook to", object.clone(), None, e))?;
        let status = resp.status();
        if status.is_success() {
            return Ok(());
        }
        let body = resp.text().await.unwrap_or_default();
        let body: String = body.chars().take(300).collect();
        Err(Error::new(
            ErrorKind::Rejected,
            "post hook to",
            object,
            format!("HTTP {}: {}", status.as_u16(), body.trim()),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_substituted() {
        let ctx = HookContext {
            run_id: "r1".into(),
            environment: "prod".into(),
            version: Version::new("2.0.0").unwrap(),
            point: HookPoint::Before,
            step: Some(Step::Migrate),
        };
        assert_eq!(
            substitute("v={version} e={environment} s={step} r={run_id}", &ctx),
            "v=2.0.0 e=prod s=migrate r=r1"
        );
    }
}
