//! What a stage's identity may really do in a cluster, as the API server evaluates it: a
//! `SelfSubjectRulesReview` per namespace sent while impersonating the identity (the
//! auditor's credentials need `impersonate` on users, groups and service accounts, which
//! cluster administrators have). `baton audit --kube-context` compares the answers with
//! `infra/k8s/` (`baton::audit::kube_live_drift`).

use serde_json::{Value, json};

use crate::adapters::k8s::kube_error;
use crate::error::{Error, Result};

/// The rules review's answer for one identity in one namespace.
#[derive(Debug, Clone)]
pub struct LiveRules {
    /// `status.resourceRules`: RBAC rules (`apiGroups`, `resources`, `resourceNames`,
    /// `verbs`).
    pub rules: Value,
    /// Set when the API server says the list is partial (an authorizer that cannot list
    /// rules, e.g. a webhook), with its reason: the audit cannot be exact there.
    pub incomplete: Option<String>,
}

/// Asks the API server what the identity `user` with `groups` may do in `namespace`
/// (`what` names it in errors: which stage's which subject).
pub async fn live_rules(
    client: &kube::Client,
    user: &str,
    groups: &[String],
    namespace: &str,
    what: &str,
) -> Result<LiveRules> {
    let what = format!("rules of {what} in namespace {namespace}");
    let body = json!({
        "apiVersion": "authorization.k8s.io/v1",
        "kind": "SelfSubjectRulesReview",
        "spec": { "namespace": namespace },
    });
    let header = |v: &str| {
        http::HeaderValue::from_str(v)
            .map_err(|_| Error::invalid(&what, format!("{v:?} cannot be sent as a header")))
    };
    let mut req = http::Request::post("/apis/authorization.k8s.io/v1/selfsubjectrulesreviews")
        .header(http::header::CONTENT_TYPE, "application/json")
        .header("Impersonate-User", header(user)?);
    for g in groups {
        req = req.header("Impersonate-Group", header(g)?);
    }
    let req = req
        .body(serde_json::to_vec(&body).map_err(|e| Error::invalid(&what, e))?)
        .map_err(|e| Error::invalid(&what, e))?;
    let resp: Value = client.request(req).await.map_err(|e| {
        kube_error(
            &format!(
                "{what} (the audit impersonates each stage: its context needs the impersonate verb)"
            ),
            e,
        )
    })?;
    let status = &resp["status"];
    Ok(LiveRules {
        rules: status["resourceRules"].clone(),
        incomplete: (status["incomplete"] == true).then(|| {
            status["evaluationError"]
                .as_str()
                .unwrap_or("the API server's authorizers cannot list every rule")
                .to_string()
        }),
    })
}
