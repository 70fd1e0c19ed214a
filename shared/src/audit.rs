//! `baton audit`: what each stage may do, read from the stack template
//! (`infra/template.yaml`) and the Kubernetes RBAC (`infra/k8s/`), checked against the
//! stage table: each stage's row says what it may touch and what it must never touch.
//! Findings: wildcard actions or resources (outside the documented exceptions), a stage
//! holding a capability outside its row, a role shared by two functions, cluster-wide
//! Kubernetes roles or bindings, bindings to `system:masters`. Pure functions over
//! parsed documents; reading live IAM policies is the caller's job.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde::Serialize;
use serde_json::Value;

use crate::error::{Error, Result};

/// Actions AWS offers no resource scoping for; `"*"` is accepted for them only.
pub const WILDCARD_EXCEPTIONS: [&str; 2] = ["ecr:GetAuthorizationToken", "sts:GetCallerIdentity"];

/// The stage table: what each stage may hold, and, in words, what it must never touch
/// (each stage's declaration, `crate::stages`).
pub fn row(stage: &str) -> Option<(&'static [&'static str], &'static str)> {
    let name: crate::pipeline::StageName = stage.parse().ok()?;
    let spec = crate::stages::spec(name);
    Some((spec.may_hold, spec.never))
}

/// What an IAM action amounts to, in the vocabulary of the stage table.
pub fn capability(action: &str, resource: &str) -> String {
    let a = action.to_ascii_lowercase();
    let (service, name) = a.split_once(':').unwrap_or((a.as_str(), ""));
    match service {
        "logs" => "logs".into(),
        "s3" => match name {
            // Reading approval records is deploy's check; writing them is approving.
            "getobject" | "getobjectversion" if resource.contains("/approvals/") => {
                "store:approvals:read".into()
            }
            // Freezes, rollback holds, break-glass overrides: deploy reads them; people
            // set them.
            "getobject" | "getobjectversion"
                if resource.contains("/freezes/")
                    || resource.contains("/holds/")
                    || resource.contains("/overrides/") =>
            {
                "store:line:read".into()
            }
            // Reading the run log is everyone's; what a stage writes there is its own.
            "putobject" if resource.contains("/runs/") => "store:runs:write".into(),
            "getobject" | "putobject" | "getobjectversion" => {
                let prefix = ["config", "runs", "approvals", "deployments", "slack"]
                    .into_iter()
                    .find(|p| resource.contains(&format!("/{p}/")));
                match prefix {
                    Some(p) => format!("store:{p}"),
                    None => "store:all".into(),
                }
            }
            "listbucket" => "store:list".into(),
            _ => format!("store-admin ({action})"),
        },
        "sqs" => match name {
            "receivemessage"
            | "deletemessage"
            | "getqueueattributes"
            | "changemessagevisibility"
            // Its own queue only (the statements' resource): a wait sends its message
            // back with a delay.
            | "sendmessage" => "queue".into(),
            _ => format!("queue-admin ({action})"),
        },
        "sns" if name == "publish" => "publish".into(),
        "sns" => format!("topic-admin ({action})"),
        "ecr" => match name {
            "batchgetimage"
            | "describeimages"
            | "getdownloadurlforlayer"
            | "batchchecklayeravailability"
            | "getauthorizationtoken"
            | "listimages"
            | "describerepositories" => "registry-read".into(),
            _ => "registry-write".into(),
        },
        "lambda" => match name {
            "invokefunction" => "invoke-functions".into(),
            n if n.starts_with("get") || n.starts_with("list") => "read-functions".into(),
            _ => "deploy-functions".into(),
        },
        "eks" => "eks".into(),
        "iam" | "sts" | "organizations" | "kms" => format!("identity-admin ({action})"),
        _ => format!("other ({action})"),
    }
}

/// Whether an IAM pattern (`*` and `?` wildcards, case-insensitive) matches `text`.
fn iam_glob(pattern: &str, text: &str) -> bool {
    let re = format!(
        "(?i)^{}$",
        regex_lite::escape(pattern)
            .replace(r"\*", ".*")
            .replace(r"\?", ".")
    );
    regex_lite::Regex::new(&re).is_ok_and(|re| re.is_match(text))
}

/// Whether `action` on `resource` (IAM wildcards allowed) can write an approval record
/// (`<bucket>/approvals/…`): what only the approve stage may do, since deploy trusts
/// those records.
pub fn writes_approvals(action: &str, resource: &str) -> bool {
    if !iam_glob(action, "s3:PutObject") {
        return false;
    }
    // The key part of an object ARN; `*` is any resource.
    let key = match resource.split_once('/') {
        _ if resource == "*" => "*",
        Some((_, key)) => key,
        None => return false,
    };
    iam_glob(key, "approvals/app/0123456789abcdef/production.json")
}

/// The stages whose records (`runs/<app>/<run>/stages/<stage>…`) `action` on `resource`
/// can write. A stage that can write another's record could change what that stage
/// resumes from (a deploy's progress, a recorded input).
pub fn writes_stage_records_of(action: &str, resource: &str) -> Vec<&'static str> {
    if !iam_glob(action, "s3:PutObject") {
        return vec![];
    }
    let key = match resource.split_once('/') {
        _ if resource == "*" => "*",
        Some((_, key)) => key,
        None => return vec![],
    };
    crate::pipeline::StageName::ALL
        .iter()
        .map(|s| s.as_str())
        .filter(|s| {
            iam_glob(key, &format!("runs/app/0123456789abcdef/stages/{s}.json"))
                || iam_glob(
                    key,
                    &format!("runs/app/0123456789abcdef/stages/{s}.production.json"),
                )
        })
        .collect()
}

/// One grant: a stage holds these actions on these resources.
#[derive(Debug, Clone, Serialize)]
pub struct Grant {
    pub stage: String,
    pub role: String,
    pub capability: String,
    pub actions: Vec<String>,
    pub resources: Vec<String>,
}

/// One Kubernetes grant.
#[derive(Debug, Clone, Serialize)]
pub struct KubeGrant {
    pub stage: String,
    pub role: String,
    pub namespace: String,
    pub rules: Vec<String>,
}

/// Something the security team should hear about.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Finding {
    /// `wildcard`, `outside-row`, `approvals-writer`, `foreign-stage-records`,
    /// `shared-role`, `cluster-role`,
    /// `system-masters`, `test-in-production-namespace`, `unnamed-workloads`, `drift`.
    pub code: String,
    pub stage: Option<String>,
    pub message: String,
}

/// The whole audit.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    pub grants: Vec<Grant>,
    pub kubernetes: Vec<KubeGrant>,
    pub findings: Vec<Finding>,
}

/// Reads a CloudFormation/SAM template (long-form intrinsics: `{"Ref": …}`,
/// `{"Fn::Sub": …}`).
pub fn load_template(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::invalid("template", format!("cannot read {}: {e}", path.display())))?;
    serde_yaml_ng::from_str(&text).map_err(|e| {
        Error::invalid(
            "template",
            format!(
                "{}: {e} (write intrinsics in long form, e.g. {{\"Ref\": X}}, not !Ref)",
                path.display()
            ),
        )
    })
}

/// Reads every YAML document of the `.yaml`/`.yml` files in `dir`.
pub fn load_manifests(dir: &Path) -> Result<Vec<(String, Value)>> {
    use serde::Deserialize;
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .map_err(|e| Error::invalid("manifests", format!("cannot read {}: {e}", dir.display())))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| matches!(p.extension().and_then(|x| x.to_str()), Some("yaml" | "yml")))
        .collect();
    files.sort();
    let mut out = vec![];
    for f in files {
        let text = std::fs::read_to_string(&f).map_err(|e| Error::io("read", &f, e))?;
        for doc in serde_yaml_ng::Deserializer::from_str(&text) {
            let v = Value::deserialize(doc)
                .map_err(|e| Error::invalid("manifest", format!("{}: {e}", f.display())))?;
            if !v.is_null() {
                out.push((f.display().to_string(), v));
            }
        }
    }
    Ok(out)
}

/// Renders an intrinsic as text (`{"Fn::Sub": "a${B}"}` → `a${B}`, `{"Ref": "X"}` →
/// `${X}`, `{"Fn::GetAtt": ["A", "Arn"]}` → `${A.Arn}`).
/// The stack's roles: logical id → role name, for `stack`.
pub fn role_names(template: &Value, stack: &str) -> std::collections::BTreeMap<String, String> {
    template["Resources"]
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(_, r)| r["Type"] == "AWS::IAM::Role")
        .map(|(id, r)| {
            (
                id.clone(),
                render(&r["Properties"]["RoleName"]).replace("${AWS::StackName}", stack),
            )
        })
        .collect()
}

pub fn render(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Object(o) => {
            if let Some(s) = o.get("Fn::Sub") {
                match s {
                    Value::Array(parts) => parts.first().map(render).unwrap_or_default(),
                    other => render(other),
                }
            } else if let Some(r) = o.get("Ref") {
                format!("${{{}}}", render(r))
            } else if let Some(Value::Array(a)) = o.get("Fn::GetAtt") {
                format!(
                    "${{{}}}",
                    a.iter().map(render).collect::<Vec<_>>().join(".")
                )
            } else if let Some(Value::String(a)) = o.get("Fn::GetAtt") {
                format!("${{{a}}}")
            } else {
                v.to_string()
            }
        }
        other => other.to_string(),
    }
}

fn as_list(v: &Value) -> Vec<Value> {
    match v {
        Value::Array(a) => a.clone(),
        Value::Null => vec![],
        other => vec![other.clone()],
    }
}

/// The role logical id a function's `Role` names.
fn role_of(function: &Value) -> Option<String> {
    let r = &function["Properties"]["Role"];
    match r {
        Value::Object(o) => match o.get("Fn::GetAtt") {
            Some(Value::Array(a)) => a.first().and_then(Value::as_str).map(str::to_owned),
            Some(Value::String(s)) => s.split('.').next().map(str::to_owned),
            _ => o.get("Ref").and_then(Value::as_str).map(str::to_owned),
        },
        Value::String(s) => Some(s.clone()),
        _ => None,
    }
}

fn stage_of_function(logical_id: &str, function: &Value) -> String {
    function["Properties"]["Environment"]["Variables"]["BATON_STAGE"]
        .as_str()
        .map(str::to_owned)
        .unwrap_or_else(|| logical_id.trim_end_matches("Function").to_ascii_lowercase())
}

/// `(statement sid or index, actions, resources)` of a role's allow statements.
pub fn role_statements(role: &Value) -> Vec<(String, Vec<String>, Vec<String>)> {
    let mut out = vec![];
    for policy in as_list(&role["Properties"]["Policies"]) {
        for (i, st) in as_list(&policy["PolicyDocument"]["Statement"])
            .into_iter()
            .enumerate()
        {
            if st["Effect"] != "Allow" {
                continue;
            }
            let actions: Vec<String> = as_list(&st["Action"]).iter().map(render).collect();
            let resources: Vec<String> = match &st["Resource"] {
                Value::Object(o) if o.contains_key("Ref") => vec![render(&st["Resource"])],
                other => as_list(other).iter().map(render).collect(),
            };
            let sid = st["Sid"]
                .as_str()
                .map(str::to_owned)
                .unwrap_or_else(|| format!("statement {i}"));
            out.push((sid, actions, resources));
        }
    }
    out
}

/// Audits a template and Kubernetes manifests.
pub fn audit(template: &Value, manifests: &[(String, Value)]) -> Report {
    let mut report = Report::default();
    let resources = template["Resources"]
        .as_object()
        .cloned()
        .unwrap_or_default();
    let mut functions_by_role: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
    for (id, r) in &resources {
        let ty = r["Type"].as_str().unwrap_or("");
        if ty == "AWS::Serverless::Function" || ty == "AWS::Lambda::Function" {
            let stage = stage_of_function(id, r);
            match role_of(r) {
                Some(role) => functions_by_role
                    .entry(role)
                    .or_default()
                    .push((id.clone(), stage)),
                None => report.findings.push(Finding {
                    code: "no-role".into(),
                    stage: Some(stage),
                    message: format!("function {id} has no role of its own"),
                }),
            }
        }
    }
    for (role_id, fns) in &functions_by_role {
        if fns.len() > 1 {
            report.findings.push(Finding {
                code: "shared-role".into(),
                stage: None,
                message: format!(
                    "role {role_id} is shared by {}; every function needs its own",
                    fns.iter()
                        .map(|(f, _)| f.as_str())
                        .collect::<Vec<_>>()
                        .join(" and ")
                ),
            });
        }
        let Some(role) = resources.get(role_id) else {
            continue;
        };
        for (_, stage) in fns {
            let allowed: BTreeSet<&str> = row(stage)
                .map(|(a, _)| a.iter().copied().collect())
                .unwrap_or_default();
            let never = row(stage)
                .map(|(_, n)| n)
                .unwrap_or("anything outside the stage table");
            let mut by_cap: BTreeMap<String, (BTreeSet<String>, BTreeSet<String>)> =
                BTreeMap::new();
            for (sid, actions, res) in role_statements(role) {
                for a in &actions {
                    if a.contains('*') {
                        report.findings.push(Finding {
                            code: "wildcard".into(),
                            stage: Some(stage.clone()),
                            message: format!("{role_id} {sid}: wildcard action {a:?}"),
                        });
                    }
                    if res.iter().any(|r| r == "*") && !WILDCARD_EXCEPTIONS.contains(&a.as_str()) {
                        report.findings.push(Finding {
                            code: "wildcard".into(),
                            stage: Some(stage.clone()),
                            message: format!(
                                "{role_id} {sid}: {a} on resource \"*\" (only {} may use \"*\")",
                                WILDCARD_EXCEPTIONS.join(", ")
                            ),
                        });
                    }
                    for r in &res {
                        if stage != "approve" && writes_approvals(a, r) {
                            report.findings.push(Finding {
                                code: "approvals-writer".into(),
                                stage: Some(stage.clone()),
                                message: format!(
                                    "{role_id} {sid}: {a} on {r} can write approval records; only approve may (deploy trusts them, so this role could forge a production approval)"
                                ),
                            });
                        }
                        let foreign: Vec<&str> = writes_stage_records_of(a, r)
                            .into_iter()
                            .filter(|s| *s != stage.as_str())
                            .collect();
                        if !foreign.is_empty() {
                            report.findings.push(Finding {
                                code: "foreign-stage-records".into(),
                                stage: Some(stage.clone()),
                                message: format!(
                                    "{role_id} {sid}: {a} on {r} can write the stage records of {}; a stage writes only its own (scope it to runs/*/stages/{stage}.*)",
                                    foreign.join(", ")
                                ),
                            });
                        }
                        // A stage consumes, delays and sends back its own queue's
                        // messages only: another stage's queue is another stage's input.
                        if a.to_ascii_lowercase().starts_with("sqs:") {
                            let mut own = stage.clone();
                            if let Some(first) = own.get_mut(..1) {
                                first.make_ascii_uppercase();
                            }
                            if r.as_str() != format!("${{{own}Queue.Arn}}") {
                                report.findings.push(Finding {
                                    code: "foreign-queue".into(),
                                    stage: Some(stage.clone()),
                                    message: format!(
                                        "{role_id} {sid}: {a} on {r}; a stage reaches only its own queue (${{{own}Queue.Arn}}): sending to another stage's queue feeds that stage input it never subscribed to"
                                    ),
                                });
                            }
                        }
                        let cap = capability(a, r);
                        let e = by_cap.entry(cap).or_default();
                        e.0.insert(a.clone());
                        e.1.insert(r.clone());
                    }
                }
            }
            for (cap, (actions, res)) in by_cap {
                if !allowed.contains(cap.as_str()) {
                    report.findings.push(Finding {
                        code: "outside-row".into(),
                        stage: Some(stage.clone()),
                        message: format!(
                            "{stage} holds {cap} ({} on {}), outside its row of the stage table (must never touch: {never})",
                            actions.iter().cloned().collect::<Vec<_>>().join(", "),
                            res.iter().cloned().collect::<Vec<_>>().join(", ")
                        ),
                    });
                }
                report.grants.push(Grant {
                    stage: stage.clone(),
                    role: role_id.clone(),
                    capability: cap,
                    actions: actions.into_iter().collect(),
                    resources: res.into_iter().collect(),
                });
            }
        }
    }
    audit_kubernetes(manifests, &mut report);
    report.grants.sort_by(|a, b| {
        (stage_order(&a.stage), &a.capability).cmp(&(stage_order(&b.stage), &b.capability))
    });
    report.findings.sort();
    report.findings.dedup();
    report
}

fn stage_order(s: &str) -> usize {
    [
        "ingest", "test", "gate", "approve", "deploy", "promote", "notify",
    ]
    .iter()
    .position(|x| *x == s)
    .unwrap_or(99)
}

fn audit_kubernetes(docs: &[(String, Value)], report: &mut Report) {
    // Stage of each Role: its label, or the group its binding names (baton-<stage>).
    let mut stage_of_role: BTreeMap<(String, String), String> = BTreeMap::new();
    for (file, d) in docs {
        let kind = d["kind"].as_str().unwrap_or("");
        let name = d["metadata"]["name"].as_str().unwrap_or("").to_string();
        let ns = d["metadata"]["namespace"]
            .as_str()
            .unwrap_or("")
            .to_string();
        if kind == "ClusterRole" || kind == "ClusterRoleBinding" {
            report.findings.push(Finding {
                code: "cluster-role".into(),
                stage: None,
                message: format!("{kind} {name} in {file}: cluster-wide grants are not allowed; use a Role per namespace"),
            });
        }
        if kind == "RoleBinding" || kind == "ClusterRoleBinding" {
            if d["roleRef"]["kind"] == "ClusterRole" {
                report.findings.push(Finding {
                    code: "cluster-role".into(),
                    stage: None,
                    message: format!(
                        "{kind} {name} in {file} binds the ClusterRole {}",
                        render(&d["roleRef"]["name"])
                    ),
                });
            }
            for s in as_list(&d["subjects"]) {
                let subject = s["name"].as_str().unwrap_or("");
                if subject == "system:masters" || subject.starts_with("system:") {
                    report.findings.push(Finding {
                        code: "system-masters".into(),
                        stage: None,
                        message: format!("{kind} {name} in {file} binds {subject}"),
                    });
                }
                if let Some(stage) = subject.strip_prefix("baton-") {
                    let role = d["roleRef"]["name"].as_str().unwrap_or("").to_string();
                    stage_of_role.insert((ns.clone(), role), stage.to_string());
                }
            }
        }
        if kind == "Role"
            && let Some(stage) = d["metadata"]["labels"]["baton.dev/stage"].as_str()
        {
            stage_of_role.insert((ns.clone(), name.clone()), stage.to_string());
        }
    }
    let mut deploy_namespaces = BTreeSet::new();
    let mut test_namespaces = BTreeSet::new();
    for (_, d) in docs {
        if d["kind"] != "Role" {
            continue;
        }
        let name = d["metadata"]["name"].as_str().unwrap_or("").to_string();
        let ns = d["metadata"]["namespace"]
            .as_str()
            .unwrap_or("")
            .to_string();
        let stage = stage_of_role
            .get(&(ns.clone(), name.clone()))
            .cloned()
            .unwrap_or_else(|| "unbound".into());
        let mut rules = vec![];
        for r in as_list(&d["rules"]) {
            let groups: Vec<String> = as_list(&r["apiGroups"]).iter().map(render).collect();
            let group = groups.join(",");
            let names: Vec<String> = as_list(&r["resourceNames"]).iter().map(render).collect();
            let verbs: Vec<String> = as_list(&r["verbs"]).iter().map(render).collect();
            for res in as_list(&r["resources"]).iter().map(render) {
                let shown = format!(
                    "{}{res}{}: {}",
                    if group.is_empty() {
                        String::new()
                    } else {
                        format!("{group}/")
                    },
                    if names.is_empty() {
                        String::new()
                    } else {
                        format!("[{}]", names.join(","))
                    },
                    verbs.join(",")
                );
                rules.push(shown.clone());
                if verbs.iter().any(|v| v == "*") || res == "*" || groups.iter().any(|g| g == "*") {
                    report.findings.push(Finding {
                        code: "wildcard".into(),
                        stage: Some(stage.clone()),
                        message: format!("Role {name} in {ns}: wildcard in {shown}"),
                    });
                }
                let ok = match stage.as_str() {
                    // verify runs its kubernetes_job checks as test runs its suites.
                    "test" | "verify" => match res.as_str() {
                        "jobs" => verbs.iter().all(|v| {
                            ["create", "get", "list", "watch", "delete"].contains(&v.as_str())
                        }),
                        "pods" => verbs
                            .iter()
                            .all(|v| ["get", "list", "watch"].contains(&v.as_str())),
                        "pods/log" => verbs.iter().all(|v| v == "get"),
                        _ => false,
                    },
                    "deploy" => match res.as_str() {
                        "deployments" | "statefulsets" | "daemonsets" => {
                            if names.is_empty() {
                                report.findings.push(Finding {
                                    code: "unnamed-workloads".into(),
                                    stage: Some(stage.clone()),
                                    message: format!("Role {name} in {ns}: {res} without resourceNames lets deploy touch every workload"),
                                });
                            }
                            verbs.iter().all(|v| ["get", "patch"].contains(&v.as_str()))
                        }
                        "pods" | "replicasets" => verbs
                            .iter()
                            .all(|v| ["get", "list", "watch"].contains(&v.as_str())),
                        _ => false,
                    },
                    _ => false,
                };
                if !ok {
                    let never = row(&stage)
                        .map(|(_, n)| n)
                        .unwrap_or("anything: no Baton stage is bound to this Role");
                    report.findings.push(Finding {
                        code: "outside-row".into(),
                        stage: Some(stage.clone()),
                        message: format!("Role {name} in {ns} grants {shown}, outside the {stage} row (must never touch: {never})"),
                    });
                }
            }
        }
        match stage.as_str() {
            "deploy" => {
                deploy_namespaces.insert(ns.clone());
            }
            "test" | "verify" => {
                test_namespaces.insert(ns.clone());
            }
            _ => {}
        }
        report.kubernetes.push(KubeGrant {
            stage,
            role: name,
            namespace: ns,
            rules,
        });
    }
    for ns in test_namespaces.intersection(&deploy_namespaces) {
        report.findings.push(Finding {
            code: "test-in-production-namespace".into(),
            stage: Some("test".into()),
            message: format!(
                "the test or verify stage can run Jobs in {ns}, where deploy targets live"
            ),
        });
    }
}

/// Compares live inline policies with the template's: `live[role] = actions granted`.
/// Reports actions the live role has beyond the template (widened) and template actions
/// the live role lacks, plus live wildcard resources.
pub fn drift(
    template: &Value,
    live: &BTreeMap<String, Vec<(String, Vec<String>)>>,
) -> Vec<Finding> {
    let mut out = vec![];
    let resources = template["Resources"]
        .as_object()
        .cloned()
        .unwrap_or_default();
    for (id, r) in &resources {
        if r["Type"] != "AWS::IAM::Role" {
            continue;
        }
        let stage = id.trim_end_matches("Role").to_ascii_lowercase();
        let wanted: BTreeSet<String> = role_statements(r)
            .into_iter()
            .flat_map(|(_, a, _)| a)
            .collect();
        let Some(statements) = live.get(id) else {
            out.push(Finding {
                code: "drift".into(),
                stage: Some(stage),
                message: format!("role {id} from the template does not exist in the account"),
            });
            continue;
        };
        let mut have = BTreeSet::new();
        for (action, resources) in statements {
            have.insert(action.clone());
            if !wanted.contains(action) {
                out.push(Finding {
                    code: "drift".into(),
                    stage: Some(stage.clone()),
                    message: format!(
                        "live role {id} grants {action} on {}, which the template does not",
                        resources.join(", ")
                    ),
                });
            } else if resources.iter().any(|x| x == "*")
                && !WILDCARD_EXCEPTIONS.contains(&action.as_str())
            {
                out.push(Finding {
                    code: "drift".into(),
                    stage: Some(stage.clone()),
                    message: format!(
                        "live role {id} grants {action} on \"*\"; the template scopes it"
                    ),
                });
            }
        }
        for missing in wanted.difference(&have) {
            out.push(Finding {
                code: "drift".into(),
                stage: Some(stage.clone()),
                message: format!("live role {id} lacks {missing}, which the template grants"),
            });
        }
    }
    out.sort();
    out.dedup();
    out
}

/// One Kubernetes permission: (API group, resource, resource name or `*`, verb). `*` in
/// any place is a wildcard, as in RBAC.
pub type KubeAtom = (String, String, String, String);

/// The atoms of RBAC rules (a Role's `rules`, or a rules review's `resourceRules`).
pub fn rule_atoms(rules: &Value) -> BTreeSet<KubeAtom> {
    let mut out = BTreeSet::new();
    for r in as_list(rules) {
        let mut names: Vec<String> = as_list(&r["resourceNames"]).iter().map(render).collect();
        if names.is_empty() {
            names.push("*".into());
        }
        for group in as_list(&r["apiGroups"]).iter().map(render) {
            for resource in as_list(&r["resources"]).iter().map(render) {
                for name in &names {
                    for verb in as_list(&r["verbs"]).iter().map(render) {
                        out.insert((group.clone(), resource.clone(), name.clone(), verb));
                    }
                }
            }
        }
    }
    out
}

/// Whether `granted` allows `atom` (wildcards in `granted` count).
pub fn covers(granted: &BTreeSet<KubeAtom>, atom: &KubeAtom) -> bool {
    let m = |g: &str, a: &str| g == "*" || g == a;
    granted.contains(atom)
        || granted
            .iter()
            .any(|g| m(&g.0, &atom.0) && m(&g.1, &atom.1) && m(&g.2, &atom.2) && m(&g.3, &atom.3))
}

/// What every authenticated identity may do (Kubernetes' default discovery and
/// self-review roles): not a stage's grant, not drift.
pub fn is_default_atom(a: &KubeAtom) -> bool {
    matches!(
        (a.0.as_str(), a.1.as_str()),
        (
            "authorization.k8s.io",
            "selfsubjectaccessreviews" | "selfsubjectrulesreviews"
        ) | ("authentication.k8s.io", "selfsubjectreviews")
    )
}

/// An identity a binding names, as the API server authenticates it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum KubeSubject {
    User { name: String },
    Group { name: String },
    ServiceAccount { namespace: String, name: String },
}

impl KubeSubject {
    /// The user and groups to impersonate to be this subject.
    pub fn impersonation(&self, stage: &str) -> (String, Vec<String>) {
        let authenticated = "system:authenticated".to_string();
        match self {
            KubeSubject::User { name } => (name.clone(), vec![authenticated]),
            KubeSubject::Group { name } => (
                format!("baton-audit:{stage}"),
                vec![name.clone(), authenticated],
            ),
            KubeSubject::ServiceAccount { namespace, name } => (
                format!("system:serviceaccount:{namespace}:{name}"),
                vec![
                    "system:serviceaccounts".into(),
                    format!("system:serviceaccounts:{namespace}"),
                    authenticated,
                ],
            ),
        }
    }
}

impl std::fmt::Display for KubeSubject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KubeSubject::User { name } => write!(f, "user {name}"),
            KubeSubject::Group { name } => write!(f, "group {name}"),
            KubeSubject::ServiceAccount { namespace, name } => {
                write!(f, "service account {namespace}/{name}")
            }
        }
    }
}

/// What the manifests give one stage in a cluster: the identities its bindings name and
/// the permissions its Roles grant, by namespace.
#[derive(Debug, Clone, Default, Serialize)]
pub struct KubeStageAccess {
    pub subjects: BTreeSet<KubeSubject>,
    pub granted: BTreeMap<String, BTreeSet<KubeAtom>>,
}

/// Each stage's Kubernetes access as `infra/k8s/` declares it: a Role belongs to the
/// stage its `baton.dev/stage` label names, or whose group (`baton-<stage>`) its binding
/// names.
pub fn kube_stage_access(docs: &[(String, Value)]) -> BTreeMap<String, KubeStageAccess> {
    let mut roles: BTreeMap<(String, String), Value> = BTreeMap::new();
    let mut stage_of_role: BTreeMap<(String, String), String> = BTreeMap::new();
    for (_, d) in docs {
        let ns = d["metadata"]["namespace"]
            .as_str()
            .unwrap_or("")
            .to_string();
        let name = d["metadata"]["name"].as_str().unwrap_or("").to_string();
        if d["kind"] == "Role" {
            if let Some(stage) = d["metadata"]["labels"]["baton.dev/stage"].as_str() {
                stage_of_role.insert((ns.clone(), name.clone()), stage.to_string());
            }
            roles.insert((ns, name), d["rules"].clone());
        }
    }
    let mut out: BTreeMap<String, KubeStageAccess> = BTreeMap::new();
    for (_, d) in docs {
        if d["kind"] != "RoleBinding" || d["roleRef"]["kind"] != "Role" {
            continue;
        }
        let ns = d["metadata"]["namespace"]
            .as_str()
            .unwrap_or("")
            .to_string();
        let role = d["roleRef"]["name"].as_str().unwrap_or("").to_string();
        let subjects: Vec<KubeSubject> = as_list(&d["subjects"])
            .iter()
            .filter_map(|s| {
                let name = s["name"].as_str()?.to_string();
                Some(match s["kind"].as_str()? {
                    "User" => KubeSubject::User { name },
                    "Group" => KubeSubject::Group { name },
                    "ServiceAccount" => KubeSubject::ServiceAccount {
                        namespace: s["namespace"].as_str().unwrap_or(&ns).to_string(),
                        name,
                    },
                    _ => return None,
                })
            })
            .collect();
        let stage = stage_of_role
            .get(&(ns.clone(), role.clone()))
            .cloned()
            .or_else(|| {
                subjects.iter().find_map(|s| match s {
                    KubeSubject::Group { name } => name.strip_prefix("baton-").map(str::to_string),
                    _ => None,
                })
            });
        let Some(stage) = stage else { continue };
        let access = out.entry(stage).or_default();
        access.subjects.extend(subjects);
        if let Some(rules) = roles.get(&(ns.clone(), role)) {
            access
                .granted
                .entry(ns)
                .or_default()
                .extend(rule_atoms(rules));
        }
    }
    out
}

/// Atoms as rules, one per object with its verbs (`apps/deployments[web]: get,patch`),
/// leaving out what every authenticated identity may do.
pub fn kube_rules(atoms: &BTreeSet<KubeAtom>) -> Vec<String> {
    let shown: Vec<&KubeAtom> = atoms.iter().filter(|a| !is_default_atom(a)).collect();
    if shown.is_empty() {
        return vec![];
    }
    show_atoms(&shown).split("; ").map(str::to_string).collect()
}

fn show_atoms(atoms: &[&KubeAtom]) -> String {
    let mut by_object: BTreeMap<String, Vec<&str>> = BTreeMap::new();
    for (group, resource, name, verb) in atoms {
        let object = format!(
            "{}{resource}{}",
            if group.is_empty() {
                String::new()
            } else {
                format!("{group}/")
            },
            if name == "*" {
                String::new()
            } else {
                format!("[{name}]")
            }
        );
        by_object.entry(object).or_default().push(verb);
    }
    by_object
        .into_iter()
        .map(|(o, v)| format!("{o}: {}", v.join(",")))
        .collect::<Vec<_>>()
        .join("; ")
}

/// Compares what a stage's identity may really do in `namespace` (`live`, from the API
/// server's rules review) with what `infra/k8s/` grants it there (`declared`): anything
/// more (an extra binding, a Role widened in place, cluster-admin) and anything less (a
/// Role narrowed or a binding removed) is a `cluster-drift` finding.
pub fn kube_live_drift(
    stage: &str,
    subject: &KubeSubject,
    namespace: &str,
    declared: &BTreeSet<KubeAtom>,
    live: &BTreeSet<KubeAtom>,
) -> Vec<Finding> {
    let mut out = vec![];
    let extra: Vec<&KubeAtom> = live
        .iter()
        .filter(|a| !is_default_atom(a) && !covers(declared, a))
        .collect();
    if !extra.is_empty() {
        out.push(Finding {
            code: "cluster-drift".into(),
            stage: Some(stage.to_string()),
            message: format!(
                "in the cluster, {subject} ({stage}) may {} in namespace {namespace}, which infra/k8s does not grant (an extra binding or a Role edited in place)",
                show_atoms(&extra)
            ),
        });
    }
    let missing: Vec<&KubeAtom> = declared.iter().filter(|a| !covers(live, a)).collect();
    if !missing.is_empty() {
        out.push(Finding {
            code: "cluster-drift".into(),
            stage: Some(stage.to_string()),
            message: format!(
                "in the cluster, {subject} ({stage}) lacks {} in namespace {namespace}, which infra/k8s grants (apply infra/k8s)",
                show_atoms(&missing)
            ),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn atom(g: &str, r: &str, n: &str, v: &str) -> KubeAtom {
        (g.into(), r.into(), n.into(), v.into())
    }

    #[test]
    fn rules_become_atoms_and_wildcards_cover() {
        let rules = serde_json::json!([
            {"apiGroups": ["apps"], "resources": ["deployments"], "resourceNames": ["web"], "verbs": ["get", "patch"]},
            {"apiGroups": [""], "resources": ["pods"], "verbs": ["list"]}
        ]);
        let a = rule_atoms(&rules);
        assert_eq!(a.len(), 3);
        assert!(a.contains(&atom("apps", "deployments", "web", "patch")));
        assert!(a.contains(&atom("", "pods", "*", "list")));
        assert!(!covers(
            &a,
            &atom("apps", "deployments", "billing", "patch")
        ));
        assert!(!covers(&a, &atom("apps", "deployments", "*", "patch")));
        let admin = rule_atoms(
            &serde_json::json!([{"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]}]),
        );
        assert!(a.iter().all(|x| covers(&admin, x)));
        assert!(!covers(&a, &atom("*", "*", "*", "*")));
    }

    #[test]
    fn the_shipped_rbac_gives_each_stage_its_group_and_rules() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../infra/k8s");
        let access = kube_stage_access(&load_manifests(&dir).unwrap());
        assert_eq!(
            access.keys().collect::<Vec<_>>(),
            ["deploy", "test", "verify"]
        );
        let deploy = &access["deploy"];
        assert_eq!(
            deploy.subjects.iter().collect::<Vec<_>>(),
            [&KubeSubject::Group {
                name: "baton-deploy".into()
            }]
        );
        assert_eq!(deploy.granted.keys().collect::<Vec<_>>(), ["shop"]);
        assert!(deploy.granted["shop"].contains(&atom("apps", "deployments", "web", "patch")));
        assert!(
            access["test"].granted["baton-tests"].contains(&atom("batch", "jobs", "*", "create"))
        );
    }

    #[test]
    fn live_drift_names_what_is_more_and_what_is_less() {
        let declared = rule_atoms(&serde_json::json!([
            {"apiGroups": ["apps"], "resources": ["deployments"], "resourceNames": ["web"], "verbs": ["get", "patch"]}
        ]));
        let g = KubeSubject::Group {
            name: "baton-deploy".into(),
        };
        let mut live = declared.clone();
        live.insert(atom(
            "authorization.k8s.io",
            "selfsubjectrulesreviews",
            "*",
            "create",
        ));
        assert!(
            kube_live_drift("deploy", &g, "shop", &declared, &live).is_empty(),
            "defaults are not drift"
        );
        live.insert(atom("", "secrets", "*", "get"));
        live.remove(&atom("apps", "deployments", "web", "patch"));
        let f = kube_live_drift("deploy", &g, "shop", &declared, &live);
        assert_eq!(f.len(), 2);
        assert!(
            f[0].message
                .contains("group baton-deploy (deploy) may secrets: get in namespace shop"),
            "{}",
            f[0].message
        );
        assert!(
            f[1].message
                .contains("lacks apps/deployments[web]: patch in namespace shop"),
            "{}",
            f[1].message
        );
        assert!(
            f.iter()
                .all(|x| x.code == "cluster-drift" && x.stage.as_deref() == Some("deploy"))
        );
    }

    #[test]
    fn approval_writers_are_recognised_through_wildcards() {
        let b = "${StateBucket.Arn}";
        assert!(writes_approvals(
            "s3:PutObject",
            &format!("{b}/approvals/*")
        ));
        assert!(writes_approvals("s3:Put*", &format!("{b}/*")));
        assert!(writes_approvals("S3:*", &format!("{b}/a*")));
        assert!(writes_approvals("*", "*"));
        assert!(!writes_approvals(
            "s3:GetObject",
            &format!("{b}/approvals/*")
        ));
        assert!(!writes_approvals("s3:PutObject", &format!("{b}/runs/*")));
        assert!(!writes_approvals("s3:ListBucket", b));
        assert_eq!(
            writes_stage_records_of("s3:PutObject", &format!("{b}/runs/*/stages/test.*")),
            ["test"]
        );
        assert_eq!(
            writes_stage_records_of("s3:PutObject", &format!("{b}/runs/*")).len(),
            crate::pipeline::StageName::ALL.len()
        );
        assert!(
            writes_stage_records_of("s3:PutObject", &format!("{b}/runs/*/events/*")).is_empty()
        );
        assert_eq!(
            capability("s3:GetObject", &format!("{b}/approvals/*")),
            "store:approvals:read"
        );
        assert_eq!(
            capability("s3:PutObject", &format!("{b}/approvals/*")),
            "store:approvals"
        );
    }

    #[test]
    fn capabilities_follow_the_stage_table() {
        assert_eq!(capability("ecr:PutImage", "arn"), "registry-write");
        assert_eq!(capability("ecr:BatchGetImage", "arn"), "registry-read");
        assert_eq!(
            capability("s3:PutObject", "${StateBucket.Arn}/runs/*"),
            "store:runs:write"
        );
        assert_eq!(
            capability("s3:GetObject", "${StateBucket.Arn}/runs/*"),
            "store:runs"
        );
        assert_eq!(
            capability("s3:PutObject", "${StateBucket.Arn}/*"),
            "store:all"
        );
        assert_eq!(
            capability("lambda:UpdateFunctionCode", "arn"),
            "deploy-functions"
        );
        assert_eq!(
            capability("lambda:InvokeFunction", "arn"),
            "invoke-functions"
        );
        assert!(capability("iam:PassRole", "arn").starts_with("identity-admin"));
        assert!(!row("deploy").unwrap().0.contains(&"registry-write"));
        assert!(row("promote").unwrap().0.contains(&"registry-write"));
        assert!(!row("ingest").unwrap().0.contains(&"deploy-functions"));
    }

    #[test]
    fn intrinsics_render_as_text() {
        assert_eq!(render(&serde_json::json!({"Ref": "Topic"})), "${Topic}");
        assert_eq!(
            render(&serde_json::json!({"Fn::GetAtt": ["Q", "Arn"]})),
            "${Q.Arn}"
        );
        assert_eq!(
            render(&serde_json::json!({"Fn::Sub": "${B.Arn}/runs/*"})),
            "${B.Arn}/runs/*"
        );
    }
}
