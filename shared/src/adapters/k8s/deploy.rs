//! `KubeDeployTarget`: sets the named containers of Deployments, StatefulSets and
//! DaemonSets to `repo@sha256:…` with a strategic-merge PATCH (field manager `baton`),
//! recording `kubernetes.io/change-cause` and Baton's annotations (run, previous image,
//! start time); then follows the rollout until the observed generation, updated and
//! available replicas match, the Deployment's progress deadline is exceeded, or Baton's
//! own timeout passes. Failures name the condition and the pods that are not ready and
//! why (ImagePullBackOff, CrashLoopBackOff, …). Missing workloads or containers are
//! permanent errors naming them. Already at the digest: no PATCH at all.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{Pod, PodSpec};
use kube::Api;
use kube::api::{ListParams, Patch, PatchParams};
use serde_json::json;

use crate::adapters::k8s::{Cluster, kube_error};
use crate::config::{KubeDeploy, WorkloadKind, WorkloadRef};
use crate::error::{Error, Result};
use crate::ports::{Applied, DeployRequest, DeployTarget, Rollout, WorkloadImage};

/// Annotation: the run that set the image.
pub const RUN_ANNOTATION: &str = "baton.dev/run";
/// Annotation: the image before Baton's change.
pub const PREVIOUS_ANNOTATION: &str = "baton.dev/previous-image";
/// Annotation: when Baton's change was applied (for Baton's own timeout).
pub const STARTED_ANNOTATION: &str = "baton.dev/deployed-at";
/// The field manager of Baton's patches.
pub const FIELD_MANAGER: &str = "baton";

/// Deploys to workloads in one namespace of one cluster.
#[derive(Debug, Clone)]
pub struct KubeDeployTarget {
    pub cluster: Arc<Cluster>,
    pub namespace: String,
    pub workloads: Vec<WorkloadRef>,
    pub timeout: Duration,
    pub poll: Duration,
}

/// What Baton reads of a workload, whatever its kind.
#[derive(Debug, Clone, Default)]
struct Workload {
    generation: i64,
    observed_generation: i64,
    replicas: i32,
    updated: i32,
    available: i32,
    /// Replicas of any revision still present (Deployments: old ones not yet gone).
    total: i32,
    containers: Vec<(String, String)>,
    selector: BTreeMap<String, String>,
    annotations: BTreeMap<String, String>,
    /// `(type, status, reason, message)`
    conditions: Vec<(String, String, String, String)>,
}

fn pod_containers(spec: Option<&PodSpec>) -> Vec<(String, String)> {
    spec.map(|s| {
        s.containers
            .iter()
            .map(|c| (c.name.clone(), c.image.clone().unwrap_or_default()))
            .collect()
    })
    .unwrap_or_default()
}

impl KubeDeployTarget {
    pub fn from_config(cfg: &KubeDeploy, cluster: Arc<Cluster>) -> KubeDeployTarget {
        KubeDeployTarget {
            cluster,
            namespace: cfg.namespace.clone(),
            workloads: cfg.workloads.clone(),
            timeout: cfg.timeout,
            poll: cfg.poll,
        }
    }

    fn what(&self, w: &WorkloadRef) -> String {
        format!(
            "{}/{} in namespace {} of cluster {}",
            w.kind,
            w.name,
            self.namespace,
            self.cluster.name()
        )
    }

    async fn read(&self, w: &WorkloadRef) -> Result<Workload> {
        let client = self.cluster.client().await?;
        let ns = &self.namespace;
        let missing = || {
            Error::permanent(
                self.what(w),
                "not found (check the workload name and that the namespace exists)",
            )
        };
        let ctx = |e: kube::Error| kube_error(&format!("get {}", self.what(w)), e);
        let wl = match w.kind {
            WorkloadKind::Deployment => {
                let d = Api::<Deployment>::namespaced(client, ns)
                    .get_opt(&w.name)
                    .await
                    .map_err(ctx)?
                    .ok_or_else(missing)?;
                let spec = d.spec.unwrap_or_default();
                let st = d.status.unwrap_or_default();
                Workload {
                    generation: d.metadata.generation.unwrap_or(0),
                    observed_generation: st.observed_generation.unwrap_or(0),
                    replicas: spec.replicas.unwrap_or(1),
                    updated: st.updated_replicas.unwrap_or(0),
                    available: st.available_replicas.unwrap_or(0),
                    total: st.replicas.unwrap_or(0),
                    containers: pod_containers(spec.template.spec.as_ref()),
                    selector: spec.selector.match_labels.unwrap_or_default(),
                    annotations: d.metadata.annotations.unwrap_or_default(),
                    conditions: st
                        .conditions
                        .unwrap_or_default()
                        .into_iter()
                        .map(|c| {
                            (
                                c.type_,
                                c.status,
                                c.reason.unwrap_or_default(),
                                c.message.unwrap_or_default(),
                            )
                        })
                        .collect(),
                }
            }
            WorkloadKind::StatefulSet => {
                let s = Api::<StatefulSet>::namespaced(client, ns)
                    .get_opt(&w.name)
                    .await
                    .map_err(ctx)?
                    .ok_or_else(missing)?;
                let spec = s.spec.unwrap_or_default();
                let st = s.status.unwrap_or_default();
                let replicas = spec.replicas.unwrap_or(1);
                Workload {
                    generation: s.metadata.generation.unwrap_or(0),
                    observed_generation: st.observed_generation.unwrap_or(0),
                    replicas,
                    updated: st.updated_replicas.unwrap_or(0),
                    available: st
                        .available_replicas
                        .unwrap_or(st.ready_replicas.unwrap_or(0)),
                    total: st.replicas,
                    containers: pod_containers(spec.template.spec.as_ref()),
                    selector: spec.selector.match_labels.unwrap_or_default(),
                    annotations: s.metadata.annotations.unwrap_or_default(),
                    conditions: vec![],
                }
            }
            WorkloadKind::DaemonSet => {
                let d = Api::<DaemonSet>::namespaced(client, ns)
                    .get_opt(&w.name)
                    .await
                    .map_err(ctx)?
                    .ok_or_else(missing)?;
                let spec = d.spec.unwrap_or_default();
                let st = d.status.unwrap_or_default();
                Workload {
                    generation: d.metadata.generation.unwrap_or(0),
                    observed_generation: st.observed_generation.unwrap_or(0),
                    replicas: st.desired_number_scheduled,
                    updated: st.updated_number_scheduled.unwrap_or(0),
                    available: st.number_available.unwrap_or(0),
                    total: st.current_number_scheduled,
                    containers: pod_containers(spec.template.spec.as_ref()),
                    selector: spec.selector.match_labels.unwrap_or_default(),
                    annotations: d.metadata.annotations.unwrap_or_default(),
                    conditions: vec![],
                }
            }
        };
        Ok(wl)
    }

    fn container_image(&self, w: &WorkloadRef, wl: &Workload) -> Result<String> {
        wl.containers
            .iter()
            .find(|(n, _)| n == &w.container)
            .map(|(_, i)| i.clone())
            .ok_or_else(|| {
                Error::permanent(
                    self.what(w),
                    format!(
                        "has no container named {:?} (containers: {})",
                        w.container,
                        wl.containers
                            .iter()
                            .map(|(n, _)| n.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                )
            })
    }

    async fn patch(
        &self,
        w: &WorkloadRef,
        image: &str,
        annotations: serde_json::Value,
    ) -> Result<()> {
        let client = self.cluster.client().await?;
        let body = json!({
            "metadata": { "annotations": annotations },
            "spec": { "template": { "spec": { "containers": [ { "name": w.container, "image": image } ] } } }
        });
        let pp = PatchParams {
            field_manager: Some(FIELD_MANAGER.into()),
            ..Default::default()
        };
        let ns = &self.namespace;
        let ctx = |e: kube::Error| kube_error(&format!("patch {}", self.what(w)), e);
        match w.kind {
            WorkloadKind::Deployment => Api::<Deployment>::namespaced(client, ns)
                .patch(&w.name, &pp, &Patch::Strategic(&body))
                .await
                .map(|_| ())
                .map_err(ctx),
            WorkloadKind::StatefulSet => Api::<StatefulSet>::namespaced(client, ns)
                .patch(&w.name, &pp, &Patch::Strategic(&body))
                .await
                .map(|_| ())
                .map_err(ctx),
            WorkloadKind::DaemonSet => Api::<DaemonSet>::namespaced(client, ns)
                .patch(&w.name, &pp, &Patch::Strategic(&body))
                .await
                .map(|_| ())
                .map_err(ctx),
        }
    }

    /// Why the pods of a workload running `image` are not ready, one clause per pod.
    async fn pod_problems(
        &self,
        wl: &Workload,
        container: &str,
        image: &str,
    ) -> Result<Vec<String>> {
        if wl.selector.is_empty() {
            return Ok(vec![]);
        }
        let client = self.cluster.client().await?;
        let selector = wl
            .selector
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(",");
        let pods = Api::<Pod>::namespaced(client, &self.namespace)
            .list(&ListParams::default().labels(&selector))
            .await
            .map_err(|e| kube_error(&format!("list pods {selector} in {}", self.namespace), e))?;
        let mut out = vec![];
        for pod in pods.items {
            let name = pod.metadata.name.clone().unwrap_or_default();
            let runs_image = pod.spec.as_ref().is_some_and(|s| {
                s.containers
                    .iter()
                    .any(|c| c.name == container && c.image.as_deref() == Some(image))
            });
            if !runs_image {
                continue;
            }
            for cs in pod
                .status
                .and_then(|s| s.container_statuses)
                .unwrap_or_default()
            {
                if cs.ready {
                    continue;
                }
                let state = cs.state.unwrap_or_default();
                if let Some(w) = state.waiting {
                    out.push(format!(
                        "pod {name}: container {} {}{}",
                        cs.name,
                        w.reason.unwrap_or_else(|| "waiting".into()),
                        w.message.map(|m| format!(" ({m})")).unwrap_or_default()
                    ));
                } else if let Some(t) = state.terminated {
                    out.push(format!(
                        "pod {name}: container {} terminated with exit code {}{}",
                        cs.name,
                        t.exit_code,
                        t.reason.map(|r| format!(" ({r})")).unwrap_or_default()
                    ));
                } else {
                    out.push(format!("pod {name}: container {} not ready", cs.name));
                }
            }
        }
        Ok(out)
    }
}

impl DeployTarget for KubeDeployTarget {
    fn kind(&self) -> &'static str {
        "kubernetes"
    }

    async fn apply(&self, req: &DeployRequest) -> Result<Applied> {
        let want = req.image.reference();
        let mut previous = vec![];
        let mut todo = vec![];
        // Read everything first: a missing workload or container changes nothing.
        for w in &self.workloads {
            let wl = self.read(w).await?;
            let image = self.container_image(w, &wl)?;
            previous.push(WorkloadImage {
                workload: format!("{}/{}:{}", w.kind, w.name, w.container),
                image: image.clone(),
            });
            if image != want {
                todo.push((w, image));
            }
        }
        let now = Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        for (w, prev) in &todo {
            let annotations = json!({
                "kubernetes.io/change-cause": req.cause,
                RUN_ANNOTATION: req.run,
                PREVIOUS_ANNOTATION: prev,
                STARTED_ANNOTATION: now,
            });
            self.patch(w, &want, annotations).await?;
        }
        Ok(Applied {
            previous,
            changed: !todo.is_empty(),
            detail: if todo.is_empty() {
                format!(
                    "{} already runs {}",
                    self.namespace,
                    req.image.short_digest()
                )
            } else {
                format!(
                    "patched {} in {} of cluster {}",
                    todo.iter()
                        .map(|(w, _)| format!("{}/{}", w.kind, w.name))
                        .collect::<Vec<_>>()
                        .join(", "),
                    self.namespace,
                    self.cluster.name()
                )
            },
        })
    }

    async fn rollout(&self, req: &DeployRequest) -> Result<Rollout> {
        let want = req.image.reference();
        let mut waiting = vec![];
        for w in &self.workloads {
            let wl = self.read(w).await?;
            let name = format!("{}/{}", w.kind, w.name);
            let image = self.container_image(w, &wl)?;
            if image != want {
                return Ok(Rollout::Failed {
                    reason: format!(
                        "{name} runs {image}, not {want}: changed by someone else during the rollout"
                    ),
                });
            }
            if let Some((_, _, reason, message)) = wl.conditions.iter().find(|(t, s, r, _)| {
                t == "Progressing" && s == "False" && r == "ProgressDeadlineExceeded"
            }) {
                let pods = self.pod_problems(&wl, &w.container, &want).await?;
                return Ok(Rollout::Failed {
                    reason: format!(
                        "{name}: {reason}: {message}{}",
                        if pods.is_empty() {
                            String::new()
                        } else {
                            format!("; {}", pods.join("; "))
                        }
                    ),
                });
            }
            let done = wl.observed_generation >= wl.generation
                && wl.updated >= wl.replicas
                && wl.available >= wl.replicas
                && wl.total <= wl.replicas;
            if done {
                continue;
            }
            let started = wl
                .annotations
                .get(STARTED_ANNOTATION)
                .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
                .map(|t| t.with_timezone(&Utc));
            if let Some(t) = started
                && (Utc::now() - t).to_std().unwrap_or_default() > self.timeout
            {
                let pods = self.pod_problems(&wl, &w.container, &want).await?;
                return Ok(Rollout::Failed {
                    reason: format!(
                        "{name}: rollout not complete after {} (Baton's timeout): {}/{} updated, {}/{} available{}",
                        humantime::format_duration(self.timeout),
                        wl.updated,
                        wl.replicas,
                        wl.available,
                        wl.replicas,
                        if pods.is_empty() {
                            String::new()
                        } else {
                            format!("; {}", pods.join("; "))
                        }
                    ),
                });
            }
            waiting.push(format!(
                "{name}: {}/{} updated, {}/{} available",
                wl.updated, wl.replicas, wl.available, wl.replicas
            ));
        }
        if waiting.is_empty() {
            Ok(Rollout::Complete {
                detail: format!(
                    "rollout complete in {} of cluster {}",
                    self.namespace,
                    self.cluster.name()
                ),
            })
        } else {
            Ok(Rollout::Progressing {
                detail: waiting.join("; "),
                check_after: self.poll,
            })
        }
    }

    async fn restore(&self, req: &DeployRequest, previous: &[WorkloadImage]) -> Result<()> {
        let now = Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        for w in &self.workloads {
            let key = format!("{}/{}:{}", w.kind, w.name, w.container);
            let Some(prev) = previous.iter().find(|p| p.workload == key) else {
                continue;
            };
            if prev.image == req.image.reference() {
                continue;
            }
            // What the workload ran before came from the cluster, through the deploy
            // record: it must still be an image reference to be written back.
            let image: crate::reference::ImageRef = prev.image.parse().map_err(|e| {
                Error::permanent(
                    format!("restore {key} in namespace {}", self.namespace),
                    format!("refused to write {e}"),
                )
            })?;
            let annotations = json!({
                "kubernetes.io/change-cause": format!("baton rolled back {} after a failed rollout of run {}", req.image.tag, req.run),
                RUN_ANNOTATION: req.run,
                PREVIOUS_ANNOTATION: req.image.reference(),
                STARTED_ANNOTATION: now,
            });
            self.patch(w, &image.to_string(), annotations).await?;
        }
        Ok(())
    }
}
