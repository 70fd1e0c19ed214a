//! `baton demo`: a fresh state directory, the bundled example configuration and
//! manifests, and the bundled sample push, run through every stage on the embedded bus:
//! tests, staging (auto-approved) deploy and promote, production approval request, the
//! configured approver's decision through the normal approve path, production deploy.

use std::path::Path;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, Result, anyhow, bail};
use baton::adapters::embedded::DrainOptions;
use baton::config::{ApprovalPolicy, Config};
use baton::event::Image;
use baton::pipeline::Settings;
use baton::pipeline::runs::RunStatus;
use baton::policy::approval::Verdict;
use baton::runtime::local::Local;
use baton::stages::approve::Decision;
use baton::triggers::{Trigger, TriggerKind, parse_distribution};
use serde_json::{Value, json};

use crate::Global;
use crate::output::{self, Progress};

const CONFIG: &str = include_str!("../../examples/baton.yaml");
const STAGING: &str = include_str!("../../examples/manifests/staging/web.yaml");
const PRODUCTION: &str = include_str!("../../examples/manifests/production/web.yaml");
const PUSH: &str = include_str!("../../events/triggers/distribution-push.json");

/// Marks a directory the demo owns (and may wipe).
const MARKER: &str = ".baton-demo";

/// Refuses to wipe a directory that is not a previous demo (or empty).
fn prepare(dir: &Path) -> Result<()> {
    if dir.exists() {
        let looks_like_demo = dir.join(MARKER).exists();
        let empty = std::fs::read_dir(dir)
            .map(|mut d| d.next().is_none())
            .unwrap_or(false);
        if !looks_like_demo && !empty {
            bail!(
                "{} exists and is not a previous demo; pass --dir with a new or empty directory",
                dir.display()
            );
        }
        std::fs::remove_dir_all(dir).with_context(|| format!("cannot clear {}", dir.display()))?;
    }
    for (path, text) in [
        (
            MARKER,
            "written by `baton demo`; the demo wipes this directory on its next run\n",
        ),
        ("baton.yaml", CONFIG),
        ("manifests/staging/web.yaml", STAGING),
        ("manifests/production/web.yaml", PRODUCTION),
    ] {
        let p = dir.join(path);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("cannot create {}", parent.display()))?;
        }
        std::fs::write(&p, text).with_context(|| format!("cannot write {}", p.display()))?;
    }
    Ok(())
}

pub async fn run(dir: &Path, g: &Global) -> Result<ExitCode> {
    let started = Instant::now();
    prepare(dir)?;
    let config = Config::load(&dir.join("baton.yaml"))?;
    let local = Local::open(config, dir, Settings::default())?;
    let p = &local.pipeline;

    // The registry side of the push: the embedded registry learns the image, then
    // announces it the way docker-registry does.
    let payload: Value = serde_json::from_str(PUSH).context("bundled sample push")?;
    let parsed = parse_distribution(&payload)?;
    let push = parsed
        .pushes
        .first()
        .ok_or_else(|| anyhow!("the bundled sample has no tagged push"))?;
    let image = Image {
        registry: push.registry.clone(),
        repository: push.repository.clone(),
        tag: push.tag.clone(),
        digest: push
            .digest
            .clone()
            .ok_or_else(|| anyhow!("the bundled sample push has no digest"))?,
    };
    p.ports.registry.record_push(&image, push.pushed_at).await?;
    if !g.json {
        println!(
            "baton demo: {} pushed {} ({})",
            push.pushed_by.as_deref().unwrap_or("someone"),
            image.tagged(),
            image.short_digest()
        );
        println!("state, configuration and manifests in {}", dir.display());
        println!();
    }
    local
        .submit(&Trigger {
            kind: TriggerKind::Distribution,
            received_at: chrono::Utc::now(),
            payload,
        })
        .await?;
    let progress = Progress::new(g.json);
    progress.message("running stages");
    local
        .drain(&DrainOptions::default(), |d| progress.delivered(d))
        .await?;
    progress.finish();

    let (app, run) =
        baton::pipeline::runs::resolve(p, &baton::ids::run_id("web", &image.digest)).await?;
    let app_cfg = p.config.app(&app)?;
    // Approve every environment that waits, as its first configured approver.
    let mut decisions = vec![];
    for env in &app_cfg.environments {
        let ApprovalPolicy::Manual(m) = &env.approval else {
            continue;
        };
        let view = baton::pipeline::runs::view(p, &app, &run).await?;
        if !matches!(view.status, RunStatus::AwaitingApproval(_)) {
            continue;
        }
        let approver = m
            .approvers
            .first()
            .cloned()
            .or_else(|| {
                m.groups
                    .first()
                    .and_then(|gname| p.config.groups.get(gname))
                    .and_then(|m| m.first().cloned())
            })
            .ok_or_else(|| anyhow!("{} has no approver to approve with", env.name))?;
        if !g.json {
            println!(
                "{} is waiting for approval; approving as {approver} (the configured approver)",
                env.name
            );
        }
        let report = baton::stages::approve::decide(
            p,
            Decision {
                run: run.to_string(),
                environment: env.name.clone(),
                by: p.config.approver(&approver, "cli"),
                verdict: Verdict::Approve,
                comment: Some("approved by baton demo".into()),
                release_hold: false,
            },
        )
        .await?;
        decisions.push(report);
        let progress = Progress::new(g.json);
        progress.message(format!("deploying to {}", env.name));
        local
            .drain(&DrainOptions::default(), |d| progress.delivered(d))
            .await?;
        progress.finish();
    }

    let view = baton::pipeline::runs::view(p, &app, &run).await?;
    let mut deployed = vec![];
    for env in &app_cfg.environments {
        let live = baton::pipeline::deployments::live(p, &app, &env.name).await?;
        let manifests = match &env.deploy {
            baton::config::DeployConfig::Manifest(m) => {
                p.config.resolve(&m.dir).display().to_string()
            }
            baton::config::DeployConfig::Kubernetes(k) => {
                format!("cluster {} namespace {}", k.cluster, k.namespace)
            }
            baton::config::DeployConfig::Lambda(l) => {
                format!("Lambda {} alias {}", l.function, l.alias)
            }
        };
        deployed.push((
            env.name.clone(),
            live.map(|l| l.image.reference()),
            manifests,
        ));
    }
    let ok = view.status == RunStatus::Deployed;
    let elapsed = started.elapsed();
    if g.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "ok": ok,
                "elapsed_ms": elapsed.as_millis() as u64,
                "run": view,
                "decisions": decisions,
                "deployed": deployed.iter().map(|(e, img, dir)| json!({"environment": e, "image": img, "manifests": dir})).collect::<Vec<_>>(),
            }))?
        );
    } else {
        println!();
        output::print_timeline(&view);
        println!();
        println!("deployed:");
        for (env, img, dir) in &deployed {
            println!("  {env:<11} {}", img.as_deref().unwrap_or("(nothing)"));
            println!("  {:<11} where: {dir}", "");
        }
        println!();
        println!("notifications: {}", dir.join("notifications.log").display());
        println!(
            "inspect: baton --config {} --state-dir {} status {}",
            dir.join("baton.yaml").display(),
            dir.display(),
            run
        );
        println!(
            "finished in {}",
            output::dur(chrono::Duration::from_std(elapsed).unwrap_or_default())
        );
    }
    if ok {
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!("error: the demo run ended as {}, not deployed", view.status);
        Ok(ExitCode::from(1))
    }
}
