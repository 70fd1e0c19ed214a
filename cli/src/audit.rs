//! `baton audit`: prints the stage × permission matrix of the stack template and the
//! Kubernetes RBAC, then the findings; with `--live`, the drift of the deployed roles;
//! with `--kube-context`, what each stage's identity may really do in that cluster.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Result;
use baton::audit::{Report, audit, load_manifests, load_template};
use serde_json::json;

use crate::Global;

/// `--kube-context`: the cluster to ask, and more namespaces to check there.
pub struct ClusterAudit {
    pub context: String,
    pub kubeconfig: Option<std::path::PathBuf>,
    pub namespaces: Vec<String>,
}

/// What one stage's identity may do in one namespace, as the cluster says.
#[derive(Debug, serde::Serialize)]
struct LiveGrant {
    stage: String,
    subject: baton::audit::KubeSubject,
    namespace: String,
    rules: Vec<String>,
}

pub async fn run(
    g: &Global,
    template: &Path,
    k8s: &Path,
    live: bool,
    stack: Option<&str>,
    cluster: Option<ClusterAudit>,
) -> Result<ExitCode> {
    let tpl = load_template(template)?;
    let manifests = if k8s.exists() {
        load_manifests(k8s)?
    } else {
        vec![]
    };
    let mut report = audit(&tpl, &manifests);
    if live {
        let stack = stack.unwrap_or_default();
        let roles = baton::audit::role_names(&tpl, stack);
        let policies = baton::adapters::aws::iam::live_role_policies(&roles).await?;
        report.findings.extend(baton::audit::drift(&tpl, &policies));
    }
    let mut live_grants = vec![];
    if let Some(c) = &cluster {
        live_grants = audit_cluster(c, &manifests, &mut report).await?;
    }
    if g.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "template": template.display().to_string(),
                "kubernetes": k8s.display().to_string(),
                "grants": report.grants,
                "kubernetes_grants": report.kubernetes,
                "cluster_grants": live_grants,
                "findings": report.findings,
            }))?
        );
    } else {
        print_report(&report, &live_grants);
    }
    Ok(if report.findings.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// Asks the cluster of `c.context` what each stage's identities may do in every namespace
/// that matters, and adds the drift from the manifests to `report`.
async fn audit_cluster(
    c: &ClusterAudit,
    manifests: &[(String, serde_json::Value)],
    report: &mut Report,
) -> Result<Vec<LiveGrant>> {
    use anyhow::Context;
    let cfg = baton::config::ClusterConfig {
        name: format!("of kubeconfig context {}", c.context),
        kubeconfig: Some(baton::config::KubeconfigAccess {
            path: c.kubeconfig.clone(),
            context: Some(c.context.clone()),
        }),
        in_cluster: None,
        eks: None,
        url: None,
    };
    let cwd = std::env::current_dir().context("the current directory")?;
    let cluster =
        baton::adapters::k8s::Cluster::new(cfg, cwd, Some(baton::adapters::k8s::from_files));
    let client = cluster.client().await?;
    let stages = baton::audit::kube_stage_access(manifests);
    if stages.is_empty() {
        anyhow::bail!(
            "--kube-context: the manifests bind no Baton stage (Roles labelled baton.dev/stage, bound to groups baton-<stage>)"
        );
    }
    let mut namespaces: std::collections::BTreeSet<String> = ["default", "kube-system"]
        .into_iter()
        .map(String::from)
        .chain(c.namespaces.iter().cloned())
        .collect();
    for access in stages.values() {
        namespaces.extend(access.granted.keys().cloned());
    }
    let none = std::collections::BTreeSet::new();
    let mut grants = vec![];
    for (stage, access) in &stages {
        for subject in &access.subjects {
            for ns in &namespaces {
                let (user, groups) = subject.impersonation(stage);
                let live = baton::adapters::k8s::audit::live_rules(
                    &client,
                    &user,
                    &groups,
                    ns,
                    &format!("{subject} ({stage})"),
                )
                .await?;
                let atoms = baton::audit::rule_atoms(&live.rules);
                if let Some(why) = &live.incomplete {
                    report.findings.push(baton::audit::Finding {
                        code: "cluster-incomplete".into(),
                        stage: Some(stage.clone()),
                        message: format!(
                            "the cluster could not list every rule of {subject} in namespace {ns}: {why}"
                        ),
                    });
                }
                let declared = access.granted.get(ns).unwrap_or(&none);
                report.findings.extend(baton::audit::kube_live_drift(
                    stage, subject, ns, declared, &atoms,
                ));
                let rules = baton::audit::kube_rules(&atoms);
                if !rules.is_empty() {
                    grants.push(LiveGrant {
                        stage: stage.clone(),
                        subject: subject.clone(),
                        namespace: ns.clone(),
                        rules,
                    });
                }
            }
        }
    }
    report.findings.sort();
    report.findings.dedup();
    Ok(grants)
}

fn print_report(r: &Report, live: &[LiveGrant]) {
    println!(
        "{:<8} {:<20} {:<58} RESOURCES",
        "STAGE", "CAPABILITY", "ACTIONS"
    );
    let mut last = String::new();
    for g in &r.grants {
        let stage = if g.stage == last {
            String::new()
        } else {
            g.stage.clone()
        };
        last = g.stage.clone();
        let resources = g
            .resources
            .iter()
            .map(|r| {
                r.replace(
                    "arn:${AWS::Partition}:logs:${AWS::Region}:${AWS::AccountId}:log-group:",
                    "log-group:",
                )
            })
            .collect::<Vec<_>>()
            .join(", ");
        println!(
            "{:<8} {:<20} {:<58} {}",
            stage,
            g.capability,
            g.actions.join(", "),
            resources
        );
    }
    if !r.kubernetes.is_empty() {
        println!();
        println!("{:<8} {:<28} RULES", "STAGE", "ROLE@NAMESPACE");
        for k in &r.kubernetes {
            println!(
                "{:<8} {:<28} {}",
                k.stage,
                format!("{}@{}", k.role, k.namespace),
                k.rules.join("; ")
            );
        }
    }
    if !live.is_empty() {
        println!();
        println!(
            "{:<8} {:<34} {:<20} RULES (IN THE CLUSTER)",
            "STAGE", "IDENTITY", "NAMESPACE"
        );
        for l in live {
            println!(
                "{:<8} {:<34} {:<20} {}",
                l.stage,
                l.subject.to_string(),
                l.namespace,
                l.rules.join("; ")
            );
        }
    }
    println!();
    if r.findings.is_empty() {
        println!("no findings: every stage holds only its row of the stage table");
    } else {
        println!("{} finding(s):", r.findings.len());
        for f in &r.findings {
            println!("  [{}] {}", f.code, f.message);
        }
    }
}
