//! `baton audit`: prints the stage × permission matrix of the stack template and the
//! Kubernetes RBAC, then the findings; with `--live`, the drift of the deployed roles.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Result;
use baton::audit::{Report, audit, load_manifests, load_template};
use serde_json::json;

use crate::Global;

pub async fn run(
    g: &Global,
    template: &Path,
    k8s: &Path,
    live: bool,
    stack: Option<&str>,
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
    if g.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "template": template.display().to_string(),
                "kubernetes": k8s.display().to_string(),
                "grants": report.grants,
                "kubernetes_grants": report.kubernetes,
                "findings": report.findings,
            }))?
        );
    } else {
        print_report(&report);
    }
    Ok(if report.findings.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn print_report(r: &Report) {
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
