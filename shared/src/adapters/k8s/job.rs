//! `KubeJobRunner`: runs the pushed image, pinned by digest, as a Job in the test
//! namespace (`backoffLimit: 0`, `activeDeadlineSeconds`, `ttlSecondsAfterFinished`,
//! labelled with the run id), checks it on every delivery of the test stage's "check
//! again", and reports passed or failed with the reason: exit code, deadline exceeded,
//! or image pull failure. The pod gets no service-account token and runs under the
//! restricted security profile unless configured otherwise; its log is read as a stream
//! of which the last 64 KiB are kept. The Job's name is derived from (run, attempt), so a
//! re-delivered event finds the Job it started instead of creating a second one.

use std::sync::Arc;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::{DeleteParams, ListParams, LogParams, PostParams};
use serde_json::{Value, json};

use crate::adapters::k8s::{Cluster, kube_error};
use crate::config::KubeJobTest;
use crate::error::{Error, Result};
use crate::ports::{TestOutcome, TestProgress, TestRequest, TestRunner};

/// Waiting reasons that mean the image will not run.
const PULL_FAILURES: [&str; 3] = ["ErrImagePull", "ImagePullBackOff", "InvalidImageName"];

/// Runs tests as Kubernetes Jobs.
#[derive(Debug, Clone)]
pub struct KubeJobRunner {
    pub cluster: Arc<Cluster>,
    pub cfg: KubeJobTest,
    /// Bytes of log kept.
    pub output_limit: usize,
}

/// The Job name for a run's attempt (DNS-1123, at most 63 characters).
pub fn job_name(run: &str, attempt: u32) -> String {
    format!("baton-test-{}-{attempt}", &run[..run.len().min(16)])
}

/// The Job name of a request: the tests' ([`job_name`]), or a verify check's (its
/// environment and name hashed to 8 hex digits, so any names fit 63 characters).
pub fn request_job_name(req: &TestRequest) -> String {
    match &req.check {
        None => job_name(&req.run, req.attempt),
        Some(c) => {
            let h = crate::ids::stable_id(&["verify", &c.environment, &c.check]);
            format!(
                "baton-verify-{}-{}-{}",
                &req.run[..req.run.len().min(16)],
                &h[..8],
                req.attempt
            )
        }
    }
}

impl KubeJobRunner {
    pub fn new(cfg: KubeJobTest, cluster: Arc<Cluster>) -> KubeJobRunner {
        KubeJobRunner {
            cluster,
            cfg,
            output_limit: 64 * 1024,
        }
    }

    fn job_manifest(&self, req: &TestRequest, name: &str) -> Result<Job> {
        let mut env: Vec<Value> = vec![
            json!({"name": "BATON_IMAGE", "value": req.image.reference()}),
            json!({"name": "BATON_IMAGE_DIGEST", "value": req.image.digest}),
            json!({"name": "BATON_IMAGE_TAG", "value": req.image.tag}),
            json!({"name": "BATON_APP", "value": req.app}),
            json!({"name": "BATON_RUN", "value": req.run}),
        ];
        if let Some(c) = &req.check {
            env.push(json!({"name": "BATON_ENVIRONMENT", "value": c.environment}));
            env.push(json!({"name": "BATON_CHECK", "value": c.check}));
        }
        env.extend(
            self.cfg
                .env
                .iter()
                .map(|(k, v)| json!({"name": k, "value": v})),
        );
        let security = self
            .cfg
            .security_context
            .as_deref()
            .cloned()
            .unwrap_or_else(crate::config::SecurityContexts::restricted);
        let mut container = json!({
            "name": "test",
            "image": req.image.reference(),
            "env": env,
            "resources": { "requests": self.cfg.resources.requests, "limits": self.cfg.resources.limits },
            "securityContext": security.container,
        });
        if !self.cfg.command.is_empty() {
            container["command"] = json!(self.cfg.command);
        }
        if !self.cfg.args.is_empty() {
            container["args"] = json!(self.cfg.args);
        }
        let labels = json!({
            "app.kubernetes.io/managed-by": "baton",
            "baton.dev/app": req.app,
            "baton.dev/run": req.run,
            "baton.dev/attempt": req.attempt.to_string(),
        });
        let mut pod_spec = json!({
            "restartPolicy": "Never",
            "automountServiceAccountToken": self.cfg.automount_service_account_token,
            "securityContext": security.pod,
            "containers": [container],
        });
        if let Some(sa) = &self.cfg.service_account {
            pod_spec["serviceAccountName"] = json!(sa);
        }
        let job = json!({
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": { "name": name, "namespace": self.cfg.namespace, "labels": labels },
            "spec": {
                "backoffLimit": 0,
                "activeDeadlineSeconds": self.cfg.deadline.as_secs().max(1),
                "ttlSecondsAfterFinished": self.cfg.ttl.as_secs(),
                "template": { "metadata": { "labels": labels }, "spec": pod_spec },
            }
        });
        serde_json::from_value(job).map_err(|e| Error::invalid("test job", e))
    }

    async fn pod_of(&self, job: &str) -> Result<Option<Pod>> {
        let client = self.cluster.client().await?;
        let pods = Api::<Pod>::namespaced(client, &self.cfg.namespace)
            .list(&ListParams::default().labels(&format!("job-name={job}")))
            .await
            .map_err(|e| kube_error(&format!("list pods of job {job}"), e))?;
        Ok(pods.items.into_iter().next())
    }

    /// The last `output_limit` bytes of the test container's log, read as a stream so a
    /// log of any size takes bounded memory.
    async fn logs(&self, pod: &Pod) -> String {
        use futures::AsyncReadExt;
        let Some(name) = pod.metadata.name.as_deref() else {
            return String::new();
        };
        let Ok(client) = self.cluster.client().await else {
            return String::new();
        };
        let lp = LogParams {
            container: Some("test".into()),
            ..Default::default()
        };
        let mut stream = match Api::<Pod>::namespaced(client, &self.cfg.namespace)
            .log_stream(name, &lp)
            .await
        {
            Ok(s) => Box::pin(s),
            Err(e) => return format!("[logs unavailable: {e}]"),
        };
        let mut tail = crate::adapters::sandbox::Tail::new(self.output_limit);
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) => break,
                Ok(n) => tail.push(&buf[..n]),
                Err(e) => {
                    tail.push(format!("\n[log stream ended: {e}]").as_bytes());
                    break;
                }
            }
        }
        tail.text()
    }

    fn exit_code(pod: &Pod) -> Option<i32> {
        pod.status
            .as_ref()?
            .container_statuses
            .as_ref()?
            .iter()
            .find(|c| c.name == "test")?
            .state
            .as_ref()?
            .terminated
            .as_ref()
            .map(|t| t.exit_code)
    }

    fn waiting_reason(pod: &Pod) -> Option<(String, String)> {
        let cs = pod
            .status
            .as_ref()?
            .container_statuses
            .as_ref()?
            .iter()
            .find(|c| c.name == "test")?;
        let w = cs.state.as_ref()?.waiting.as_ref()?;
        Some((
            w.reason.clone().unwrap_or_default(),
            w.message.clone().unwrap_or_default(),
        ))
    }
}

impl TestRunner for KubeJobRunner {
    fn kind(&self) -> &'static str {
        "kubernetes-job"
    }

    async fn start(&self, req: &TestRequest) -> Result<TestProgress> {
        let client = self.cluster.client().await?;
        let api = Api::<Job>::namespaced(client, &self.cfg.namespace);
        let name = request_job_name(req);
        let what = format!(
            "job {name} in namespace {} of cluster {}",
            self.cfg.namespace,
            self.cluster.name()
        );
        let existing = api
            .get_opt(&name)
            .await
            .map_err(|e| kube_error(&format!("get {what}"), e))?;
        let note = if existing.is_some() {
            format!("{what} already started; following it")
        } else {
            let job = self.job_manifest(req, &name)?;
            match api.create(&PostParams::default(), &job).await {
                Ok(_) => format!("{what} started"),
                Err(kube::Error::Api(s)) if s.code == 409 => {
                    format!("{what} already started; following it")
                }
                Err(e) => return Err(kube_error(&format!("create {what}"), e)),
            }
        };
        Ok(TestProgress::Running {
            state: json!({ "job": name }),
            check_after: self.cfg.poll,
            note,
        })
    }

    async fn check(&self, _req: &TestRequest, state: &Value) -> Result<TestProgress> {
        let name = state
            .get("job")
            .and_then(Value::as_str)
            .ok_or_else(|| Error::permanent("test job", "progress has no job name"))?
            .to_string();
        let client = self.cluster.client().await?;
        let api = Api::<Job>::namespaced(client, &self.cfg.namespace);
        let what = format!("job {name} in namespace {}", self.cfg.namespace);
        let job = api
            .get_opt(&name)
            .await
            .map_err(|e| kube_error(&format!("get {what}"), e))?
            .ok_or_else(|| {
                Error::permanent(
                    what.clone(),
                    "no longer exists (deleted, or its TTL passed)",
                )
            })?;
        let conditions = job.status.and_then(|s| s.conditions).unwrap_or_default();
        let holds = |t: &str| {
            conditions
                .iter()
                .find(|c| c.type_ == t && c.status == "True")
        };
        let pod = self.pod_of(&name).await?;
        if holds("Complete").is_some() {
            let output = match &pod {
                Some(p) => self.logs(p).await,
                None => String::new(),
            };
            let code = pod.as_ref().and_then(Self::exit_code).unwrap_or(0);
            return Ok(TestProgress::Finished(TestOutcome {
                passed: true,
                summary: format!("exit code {code}"),
                exit_code: Some(code),
                output,
            }));
        }
        if let Some(failed) = holds("Failed") {
            let reason = failed.reason.clone().unwrap_or_default();
            let output = match &pod {
                Some(p) => self.logs(p).await,
                None => String::new(),
            };
            let code = pod.as_ref().and_then(Self::exit_code);
            let summary = match (reason.as_str(), code) {
                ("DeadlineExceeded", _) => format!(
                    "deadline exceeded after {} (activeDeadlineSeconds)",
                    humantime::format_duration(self.cfg.deadline)
                ),
                (_, Some(c)) => format!("exit code {c}"),
                (r, None) => format!(
                    "job failed: {r} {}",
                    failed.message.clone().unwrap_or_default()
                ),
            };
            return Ok(TestProgress::Finished(TestOutcome {
                passed: false,
                summary,
                exit_code: code,
                output,
            }));
        }
        if let Some((reason, message)) = pod.as_ref().and_then(Self::waiting_reason)
            && PULL_FAILURES.contains(&reason.as_str())
        {
            // The image will not start: stop the Job now rather than at its deadline.
            if let Err(e) = api.delete(&name, &DeleteParams::background()).await {
                tracing::warn!(job = %name, error = %e, "could not delete the job after an image pull failure");
            }
            return Ok(TestProgress::Finished(TestOutcome {
                passed: false,
                summary: format!(
                    "image pull failed: {reason}{}",
                    if message.is_empty() {
                        String::new()
                    } else {
                        format!(" ({message})")
                    }
                ),
                exit_code: None,
                output: String::new(),
            }));
        }
        Ok(TestProgress::Running {
            state: json!({ "job": name }),
            check_after: self.cfg.poll,
            note: format!("{what} running"),
        })
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn job_names_are_dns_labels() {
        let n = super::job_name("0123456789abcdef", 12);
        assert_eq!(n, "baton-test-0123456789abcdef-12");
        assert!(n.len() <= 63);
    }
}
