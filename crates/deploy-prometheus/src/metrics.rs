//! Names of the HTTP metrics the presets read, shared by the PromQL and the scrape gates.

/// The metric and label names of an HTTP service, as the presets use them.
///
/// The defaults follow the usual client-library conventions: a counter
/// `http_requests_total{status="..."}`, a histogram `http_request_duration_seconds`, 5xx
/// statuses counting as errors, and the canary selected by the label `target` (set it with a
/// `labels:` entry of the scrape config, or use `instance`, or [`without_target_label`] to judge
/// every series together).
///
/// [`without_target_label`]: HttpMetrics::without_target_label
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct HttpMetrics {
    /// Counter of requests (`http_requests_total`).
    pub requests_total: String,
    /// The label of that counter holding the HTTP status (`status`; `code` in some libraries).
    pub status_label: String,
    /// A regular expression matching error statuses, anchored as PromQL does (`5..`).
    pub error_status: String,
    /// The latency histogram's base name (`http_request_duration_seconds`).
    pub duration_histogram: String,
    /// The label that names the target (`target`), matched against the canary ids.
    pub target_label: Option<String>,
}

impl Default for HttpMetrics {
    fn default() -> Self {
        Self {
            requests_total: "http_requests_total".to_owned(),
            status_label: "status".to_owned(),
            error_status: "5..".to_owned(),
            duration_histogram: "http_request_duration_seconds".to_owned(),
            target_label: Some("target".to_owned()),
        }
    }
}

impl HttpMetrics {
    /// The defaults.
    pub fn new() -> Self {
        Self::default()
    }

    /// Use `name` as the request counter.
    pub fn requests_total(mut self, name: impl Into<String>) -> Self {
        self.requests_total = name.into();
        self
    }

    /// Read the status from label `label`.
    pub fn status_label(mut self, label: impl Into<String>) -> Self {
        self.status_label = label.into();
        self
    }

    /// Count statuses matching `regex` as errors.
    pub fn error_status(mut self, regex: impl Into<String>) -> Self {
        self.error_status = regex.into();
        self
    }

    /// Use `name` as the latency histogram.
    pub fn duration_histogram(mut self, name: impl Into<String>) -> Self {
        self.duration_histogram = name.into();
        self
    }

    /// Select the canary by label `label`.
    pub fn target_label(mut self, label: impl Into<String>) -> Self {
        self.target_label = Some(label.into());
        self
    }

    /// Do not select by target: every series counts.
    pub fn without_target_label(mut self) -> Self {
        self.target_label = None;
        self
    }

    /// The PromQL label matchers selecting the canary, with `extra` first: `{status=~"5..",target=~"{{target}}"}`.
    pub(crate) fn selector(&self, extra: &[String]) -> String {
        let mut m: Vec<String> = extra.to_vec();
        if let Some(t) = &self.target_label {
            m.push(format!("{t}=~\"{{{{target}}}}\""));
        }
        if m.is_empty() {
            String::new()
        } else {
            format!("{{{}}}", m.join(","))
        }
    }
}
