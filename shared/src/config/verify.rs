//! `environments[].verify`: checks run after a deploy, through a soak, before the image
//! is promoted and the next environment's gate opens; on failure the previous image is
//! put back. Each check is exactly one of `http`, `prometheus`, `command`,
//! `kubernetes_job` or `lambda` (the last three are the test stage's runners).

use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::{CommandTest, Config, KubeJobTest, LambdaTest, TestConfig, duration};

/// `verify:` of one environment.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VerifyConfig {
    /// The checks; all must pass.
    pub checks: Vec<CheckConfig>,
    /// How long after the deploy the checks keep running and passing before
    /// `verification.passed` (0: as soon as every check has passed).
    #[serde(default, with = "duration")]
    pub soak: Duration,
    /// Put the previous image back when a check fails (default true).
    #[serde(default = "yes")]
    pub rollback: bool,
    /// The verification fails when the checks have not all passed this long after the
    /// deploy (a check that never reaches its `successes`, a runner that hangs); the
    /// soak plus 15 minutes when absent.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "opt_duration"
    )]
    pub timeout: Option<Duration>,
}

impl VerifyConfig {
    /// How long the verification may take at most.
    pub fn deadline(&self) -> Duration {
        self.timeout
            .unwrap_or_else(|| self.soak.saturating_add(Duration::from_secs(15 * 60)))
    }
}

/// An optional duration (`30m`), as [`duration`] reads and writes one.
mod opt_duration {
    use std::time::Duration;

    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => super::duration::serialize(d, s),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        super::duration::deserialize(d).map(Some)
    }
}

fn yes() -> bool {
    true
}

/// One check: a name and exactly one kind.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckConfig {
    /// Shown in the evidence; `<kind>` (or `<kind>-<n>`) when absent.
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpCheck>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prometheus: Option<PrometheusCheck>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<CommandTest>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubernetes_job: Option<KubeJobTest>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lambda: Option<LambdaTest>,
}

impl CheckConfig {
    /// Which kinds are set (exactly one in a valid configuration).
    fn kinds(&self) -> Vec<&'static str> {
        [
            self.http.is_some().then_some("http"),
            self.prometheus.is_some().then_some("prometheus"),
            self.command.is_some().then_some("command"),
            self.kubernetes_job.is_some().then_some("kubernetes_job"),
            self.lambda.is_some().then_some("lambda"),
        ]
        .into_iter()
        .flatten()
        .collect()
    }

    /// The kind word (`http`, `prometheus`, `command`, `kubernetes_job`, `lambda`).
    pub fn kind(&self) -> &'static str {
        self.kinds().first().copied().unwrap_or("none")
    }

    /// The test runner of a `command`, `kubernetes_job` or `lambda` check.
    pub fn runner(&self) -> Option<TestConfig> {
        if let Some(c) = &self.command {
            Some(TestConfig::Command(c.clone()))
        } else if let Some(j) = &self.kubernetes_job {
            Some(TestConfig::KubernetesJob(j.clone()))
        } else {
            self.lambda.as_ref().map(|l| TestConfig::Lambda(l.clone()))
        }
    }
}

/// `http`: a GET whose status (and optionally body) says the service is healthy.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpCheck {
    pub url: HttpUrl,
    /// The status a healthy answer has.
    #[serde(default = "default_status")]
    pub status: u16,
    /// A pattern (regex) the body must match.
    #[serde(default)]
    pub body: Option<String>,
    #[serde(default = "default_interval", with = "duration")]
    pub interval: Duration,
    #[serde(default = "default_timeout", with = "duration")]
    pub timeout: Duration,
    /// Consecutive healthy answers needed (at the end of the soak).
    #[serde(default = "one")]
    pub successes: u32,
    /// Unhealthy answers tolerated in all; one more fails the check.
    #[serde(default)]
    pub allowed_failures: u32,
}

/// `prometheus`: a PromQL query whose every sample must be within bounds.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrometheusCheck {
    /// The Prometheus server (`http://prometheus:9090`); the query goes to
    /// `<url>/api/v1/query`.
    pub url: HttpUrl,
    pub query: String,
    /// Fails when a sample is above this.
    #[serde(default)]
    pub max: Option<f64>,
    /// Fails when a sample is below this.
    #[serde(default)]
    pub min: Option<f64>,
    /// What an empty result means: `fail` (default) or `pass`.
    #[serde(default)]
    pub no_data: NoData,
    #[serde(default = "default_interval", with = "duration")]
    pub interval: Duration,
    #[serde(default = "default_timeout", with = "duration")]
    pub timeout: Duration,
    /// Consecutive good evaluations needed (at the end of the soak).
    #[serde(default = "one")]
    pub successes: u32,
    /// Bad evaluations tolerated in all; one more fails the check.
    #[serde(default)]
    pub allowed_failures: u32,
}

/// What a query without samples means.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NoData {
    #[default]
    Fail,
    Pass,
}

fn default_status() -> u16 {
    200
}
fn default_interval() -> Duration {
    Duration::from_secs(10)
}
fn default_timeout() -> Duration {
    Duration::from_secs(5)
}
fn one() -> u32 {
    1
}

/// An `http`/`https` URL, parsed when the configuration is read.
#[derive(Debug, Clone, PartialEq)]
pub struct HttpUrl(pub reqwest::Url);

impl std::str::FromStr for HttpUrl {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let u = reqwest::Url::parse(s).map_err(|e| format!("{s:?} is not a URL ({e})"))?;
        if !matches!(u.scheme(), "http" | "https") || u.host().is_none() {
            return Err(format!("{s:?} must be an http(s) URL with a host"));
        }
        Ok(HttpUrl(u))
    }
}

impl std::fmt::Display for HttpUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Credentials in a URL are never shown.
        let mut u = self.0.clone();
        if !u.username().is_empty() || u.password().is_some() {
            let _ = u.set_username("");
            let _ = u.set_password(None);
        }
        f.write_str(u.as_str())
    }
}

impl Serialize for HttpUrl {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.0.as_str())
    }
}

impl<'de> Deserialize<'de> for HttpUrl {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

impl VerifyConfig {
    /// The check's name: its own, or its kind (numbered when a kind repeats).
    pub fn check_name(&self, i: usize) -> String {
        let Some(c) = self.checks.get(i) else {
            return format!("check-{i}");
        };
        if let Some(n) = &c.name {
            return n.clone();
        }
        let kind = c.kind();
        let same = self.checks.iter().filter(|o| o.kind() == kind).count();
        if same > 1 {
            format!("{kind}-{}", i + 1)
        } else {
            kind.to_string()
        }
    }

    /// Problems, each prefixed by `at` (`apps[i].environments[j].verify`).
    pub(super) fn check(&self, cfg: &Config, at: &str, p: &mut Vec<String>) {
        if self.checks.is_empty() {
            p.push(format!(
                "{at}.checks: list at least one check (or leave verify out)"
            ));
        }
        if let Some(t) = self.timeout
            && t <= self.soak
        {
            p.push(format!(
                "{at}.timeout: {} must be longer than the soak ({})",
                humantime::format_duration(t),
                humantime::format_duration(self.soak)
            ));
        }
        let mut names = std::collections::BTreeSet::new();
        for (i, c) in self.checks.iter().enumerate() {
            let at = format!("{at}.checks[{i}]");
            if let Some(n) = &c.name
                && !super::is_dns_label(n)
            {
                p.push(format!(
                    "{at}.name: {n:?} must be lowercase letters, digits and dashes"
                ));
            }
            if !names.insert(self.check_name(i)) {
                p.push(format!(
                    "{at}.name: {:?} is used by another check",
                    self.check_name(i)
                ));
            }
            match c.kinds().as_slice() {
                [_] => {}
                [] => p.push(format!(
                    "{at}: give one of http, prometheus, command, kubernetes_job, lambda"
                )),
                many => p.push(format!(
                    "{at}: one kind per check, not {} (make them separate checks)",
                    many.join(" and ")
                )),
            }
            if let Some(h) = &c.http {
                let at = format!("{at}.http");
                if !(100..=599).contains(&h.status) {
                    p.push(format!("{at}.status: {} is not an HTTP status", h.status));
                }
                if let Some(b) = &h.body
                    && let Err(e) = regex_lite::Regex::new(b)
                {
                    p.push(format!("{at}.body: not a pattern: {e}"));
                }
                periods(&at, h.interval, h.timeout, h.successes, p);
            }
            if let Some(q) = &c.prometheus {
                let at = format!("{at}.prometheus");
                if q.query.trim().is_empty() {
                    p.push(format!("{at}.query: give a PromQL query"));
                }
                match (q.min, q.max) {
                    (None, None) => p.push(format!(
                        "{at}: give max (fail above) or min (fail below), or both"
                    )),
                    (Some(lo), Some(hi)) if lo > hi => {
                        p.push(format!("{at}: min {lo} is above max {hi}"))
                    }
                    (lo, hi)
                        if lo.is_some_and(|v| !v.is_finite())
                            || hi.is_some_and(|v| !v.is_finite()) =>
                    {
                        p.push(format!("{at}: min and max must be finite numbers"))
                    }
                    _ => {}
                }
                periods(&at, q.interval, q.timeout, q.successes, p);
            }
            if let Some(r) = c.runner() {
                r.check(cfg, &at, p);
            }
        }
    }
}

fn periods(at: &str, interval: Duration, timeout: Duration, successes: u32, p: &mut Vec<String>) {
    if interval < Duration::from_millis(100) {
        p.push(format!("{at}.interval: at least 100ms"));
    }
    if timeout.is_zero() || timeout > Duration::from_secs(60) {
        p.push(format!("{at}.timeout: more than 0 and at most 60s"));
    }
    if successes == 0 {
        p.push(format!("{at}.successes: at least 1"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_parsed_and_never_show_credentials() {
        let u: HttpUrl = "http://user:pw@127.0.0.1:9090/x".parse().unwrap();
        assert_eq!(u.to_string(), "http://127.0.0.1:9090/x");
        assert!("ftp://x".parse::<HttpUrl>().is_err());
        assert!("not a url".parse::<HttpUrl>().is_err());
    }
}
