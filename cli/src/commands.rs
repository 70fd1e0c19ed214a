//! Command implementations. Each opens the local runtime, does one thing, drains the bus
//! when it published something, and prints text or `--json`.

use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, Result, anyhow};
use baton::adapters::embedded::DrainOptions;
use baton::config::Config;
use baton::envelopes::{DocumentKind, identify};
use baton::pipeline::harness::Disposition;
use baton::pipeline::{Settings, StageName};
use baton::policy::approval::Verdict;
use baton::runtime::local::Local;
use baton::stages::approve::Decision;
use baton::triggers::Trigger;
use serde_json::{Value, json};

use crate::output::{self, Progress};
use crate::{Cli, Command, DlqAction, EventsAction, Global, HoldAction};

pub async fn run(cli: Cli) -> Result<ExitCode> {
    let g = &cli.global;
    // A command that works on the local state only never does so when a stack is named:
    // the operator meant the stack.
    if let Some(stack) = &g.stack {
        let local_only = match &cli.command {
            Command::Demo { .. } => Some("demo"),
            Command::Ingest { .. } => Some("ingest"),
            Command::Status { .. } => Some("status"),
            Command::Serve { .. } => Some("serve"),
            Command::Approve { .. } => Some("approve"),
            Command::Reject { .. } => Some("reject"),
            Command::Envs => Some("envs"),
            Command::Dora { .. } => Some("dora"),
            _ => None,
        };
        if let Some(cmd) = local_only {
            return Err(anyhow!(
                "baton {cmd} works on the local state directory, and --stack {stack} (or BATON_STACK) names a deployed stack: nothing was done. On a stack, approvers decide through the approve function URL (docs/aws.md); unset BATON_STACK to work locally"
            ));
        }
    }
    match cli.command {
        Command::Demo { dir } => crate::demo::run(&dir, g).await,
        Command::Ingest { file } => ingest(g, &file).await,
        Command::Status {
            run,
            watch: false,
            limit,
        } => status(g, run.as_deref(), limit.into()).await,
        Command::Status {
            run,
            watch: true,
            limit,
        } => watch(g, run.as_deref(), limit.into()).await,
        Command::Serve { listen } => serve(g, listen).await,
        Command::Retry { run, stage, env } => match &g.stack {
            Some(stack) => {
                let stage: StageName = stage.parse().map_err(|e: String| anyhow!(e))?;
                crate::aws_mode::retry(g, stack, &run, stage.as_str(), env.as_deref()).await
            }
            None => retry(g, &run, &stage, env.as_deref()).await,
        },
        Command::Approve {
            run,
            env,
            who,
            comment,
            release_hold,
        } => decide(g, run, env, who, Verdict::Approve, comment, release_hold).await,
        Command::Reject {
            run,
            env,
            who,
            reason,
        } => decide(g, run, env, who, Verdict::Reject, reason, false).await,
        Command::Rollback {
            app,
            env,
            to,
            who,
            reason,
        } => {
            rollback(
                g,
                &app,
                &env,
                to.as_deref(),
                who.as_deref(),
                reason.as_deref(),
            )
            .await
        }
        Command::Gc { dry_run } => gc(g, dry_run).await,
        command @ (Command::Freeze { .. }
        | Command::Unfreeze { .. }
        | Command::BreakGlass { .. }
        | Command::Freezes
        | Command::Hold { .. }) => match &g.stack {
            // The stack's records in its state bucket, with the operator's credentials.
            Some(stack) => {
                let p = crate::aws_mode::stack_pipeline::<()>(g, stack).await?;
                line(g, &p, command).await
            }
            None => {
                let local = open(g)?;
                line(g, &local.pipeline, command).await
            }
        },
        Command::Envs => envs(g).await,
        Command::Dora { since } => dora(g, &since).await,
        Command::Dlq { action } => match (&g.stack, action) {
            (Some(stack), DlqAction::List { subscription }) => {
                crate::aws_mode::dlq_list(g, stack, &stage_arg(subscription)?).await
            }
            (Some(stack), DlqAction::Redrive { subscription }) => {
                crate::aws_mode::dlq_redrive(g, stack, &stage_arg(subscription)?).await
            }
            (None, action) => dlq(g, action).await,
        },
        Command::Audit {
            template,
            k8s,
            live,
            kube_context,
            kubeconfig,
            kube_namespaces,
        } => {
            if live && g.stack.is_none() {
                return Err(anyhow!(
                    "--live needs --stack NAME (the deployed stack whose roles to read)"
                ));
            }
            let cluster = kube_context.map(|context| crate::audit::ClusterAudit {
                context,
                kubeconfig,
                namespaces: kube_namespaces,
            });
            crate::audit::run(g, &template, &k8s, live, g.stack.as_deref(), cluster).await
        }
        Command::React { action } => react(g, action).await,
        Command::Events { action } => events(g, action),
    }
}

/// Loads the configuration and opens the state directory.
/// Stopping the line (freeze, unfreeze, break-glass, freezes, hold release) on `p`: the
/// local state directory, or a deployed stack's state bucket (`--stack`).
async fn line<P: baton::ports::Ports>(
    g: &Global,
    p: &baton::pipeline::Pipeline<P>,
    command: Command,
) -> Result<ExitCode> {
    match command {
        Command::Freeze {
            app,
            env,
            reason,
            who,
        } => {
            let r = baton::pipeline::holds::freeze(
                p,
                app.as_deref(),
                env.as_deref(),
                &operator(who.as_deref()),
                &reason,
            )
            .await?;
            if g.json {
                print_json(&r)?;
            } else {
                println!(
                    "frozen: {} (by {}: {}); deploys there wait until `baton unfreeze{}{}`; rollbacks still go",
                    r.scope(),
                    r.by,
                    r.reason,
                    app.as_deref()
                        .map(|a| format!(" --app {a}"))
                        .unwrap_or_default(),
                    env.as_deref()
                        .map(|e| format!(" --env {e}"))
                        .unwrap_or_default()
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Unfreeze {
            app,
            env,
            reason,
            who,
        } => {
            let r = baton::pipeline::holds::unfreeze(
                p,
                app.as_deref(),
                env.as_deref(),
                &operator(who.as_deref()),
                reason.as_deref(),
            )
            .await?;
            if g.json {
                print_json(&r)?;
            } else {
                println!(
                    "unfrozen: {} (frozen by {} for: {}); waiting deploys go within a minute",
                    r.scope(),
                    r.by,
                    r.reason
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Freezes => freezes(g, p).await,
        Command::BreakGlass {
            run,
            env,
            reason,
            approve,
            who,
        } => {
            let (app, run) = baton::pipeline::runs::resolve(p, &run).await?;
            let who = operator(who.as_deref());
            let r = if approve {
                baton::pipeline::holds::approve_override(p, &app, run.as_str(), &env, &who).await?
            } else {
                baton::pipeline::holds::request_override(
                    p,
                    &app,
                    &run,
                    &env,
                    &who,
                    reason.as_deref().unwrap_or(""),
                )
                .await?
            };
            if g.json {
                print_json(&r)?;
            } else if let Some(by) = &r.approved_by {
                println!(
                    "break-glass approved by {by}: run {run} deploys to {env} through any freeze (asked by {}: {})",
                    r.requested_by, r.reason
                );
            } else {
                println!(
                    "break-glass requested for run {run} in {env}: another approver of {env} approves it with `baton break-glass {run} --env {env} --approve`"
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Hold {
            action:
                HoldAction::Release {
                    app,
                    env,
                    reason,
                    who,
                },
        } => {
            let r = baton::pipeline::holds::release(
                p,
                &app,
                &env,
                &operator(who.as_deref()),
                reason.as_deref(),
            )
            .await?;
            if g.json {
                print_json(&r)?;
            } else {
                println!(
                    "released: {env} of {app} was held on {}; newer runs deploy there again within a minute",
                    r.image.tagged()
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        _ => Err(anyhow!("not a command that stops or opens the line")),
    }
}

pub fn open(g: &Global) -> Result<Local> {
    Ok(Local::open(
        load_config(g)?,
        &g.state_dir,
        Settings::default(),
    )?)
}

pub(crate) fn load_config(g: &Global) -> Result<Config> {
    Config::load(&g.config).map_err(|e| {
        if !g.config.exists() {
            anyhow!(
                "no configuration at {} (pass --config FILE or set BATON_CONFIG; `baton demo` shows a working setup)",
                g.config.display()
            )
        } else {
            anyhow!(e)
        }
    })
}

async fn serve(g: &Global, listen: Option<std::net::SocketAddr>) -> Result<ExitCode> {
    let mut config = load_config(g)?;
    if let Some(addr) = listen {
        config.serve.listen = addr;
    }
    let addr = config.serve.listen;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    let bound = listener.local_addr()?;
    if config.serve.public_url.is_none() {
        config.serve.public_url = Some(format!("http://{bound}"));
    }
    let problems = config.problems();
    if !problems.is_empty() {
        anyhow::bail!(
            "invalid configuration with --listen {addr}: {}",
            problems.join("; ")
        );
    }
    let local = Local::open(config, &g.state_dir, Settings::default())?;
    let server = std::sync::Arc::new(baton::runtime::serve::Server::new(local, bound)?);
    if g.json {
        println!("{}", json!({ "listening": format!("http://{bound}") }));
    } else {
        println!(
            "baton serve listening on http://{bound} (state in {})",
            g.state_dir.display()
        );
        for (name, source) in server.endpoints() {
            println!("  POST /hooks/{name:<16} {source} webhooks");
        }
        println!("  GET  /approvals, POST /approvals/<run>/<env>   approver decisions");
        println!("  GET  /runs, GET /runs/<run>                    status");
    }
    use std::io::Write;
    let _ = std::io::stdout().flush();
    let shutdown = async {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => return std::future::pending::<()>().await,
            };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    };
    server.run(listener, shutdown).await?;
    if !g.json {
        println!("baton serve stopped");
    }
    Ok(ExitCode::SUCCESS)
}

/// Redraws the run list (or one run's timeline) as it changes.
async fn watch(g: &Global, run: Option<&str>, limit: usize) -> Result<ExitCode> {
    use std::io::IsTerminal;
    enum View {
        Runs(Vec<baton::pipeline::runs::RunSummary>),
        Run(Box<baton::pipeline::runs::RunView>),
    }
    let local = open(g)?;
    let p = &local.pipeline;
    let tty = std::io::stdout().is_terminal() && !g.json;
    let mut last = String::new();
    loop {
        let view = match run {
            None => View::Runs(baton::pipeline::runs::page(p, limit, None).await?.runs),
            Some(id) => {
                let (app, run) = baton::pipeline::runs::resolve(p, id).await?;
                View::Run(Box::new(baton::pipeline::runs::view(p, &app, &run).await?))
            }
        };
        // What changes, one line per run or stage.
        let text = match &view {
            View::Runs(runs) => runs
                .iter()
                .map(|r| {
                    format!(
                        "{} {} {}",
                        r.run,
                        r.image.as_ref().map(|i| i.tag.as_str()).unwrap_or(""),
                        r.status
                    )
                })
                .collect::<Vec<_>>()
                .join("\n"),
            View::Run(v) => v
                .stages
                .iter()
                .map(|s| {
                    format!(
                        "{} {} {} attempt {}",
                        s.stage,
                        s.environment.as_deref().unwrap_or("-"),
                        s.status.as_str(),
                        s.attempt
                    )
                })
                .chain(std::iter::once(format!("run {}", v.status)))
                .collect::<Vec<_>>()
                .join("\n"),
        };
        if text != last {
            if g.json {
                match &view {
                    View::Runs(r) => println!("{}", serde_json::to_string(r)?),
                    View::Run(v) => println!("{}", serde_json::to_string(v)?),
                }
            } else if tty {
                print!("\x1b[2J\x1b[H");
                println!(
                    "baton status --watch  {}  (Ctrl-C to stop)\n",
                    chrono::Local::now().format("%H:%M:%S")
                );
                match &view {
                    View::Runs(r) => output::print_runs(r),
                    View::Run(v) => output::print_timeline(v),
                }
            } else {
                let now = chrono::Utc::now().format("%H:%M:%S");
                for line in text.lines().filter(|l| !last.lines().any(|x| x == *l)) {
                    println!("{now} {line}");
                }
            }
            use std::io::Write;
            let _ = std::io::stdout().flush();
            last = text;
        }
        tokio::select! {
            _ = tokio::signal::ctrl_c() => return Ok(ExitCode::SUCCESS),
            _ = tokio::time::sleep(std::time::Duration::from_millis(500)) => {}
        }
    }
}

/// A stage name for the AWS queues.
fn stage_arg(sub: Option<String>) -> Result<String> {
    let s = sub.ok_or_else(|| anyhow!("name the stage whose dead-letter queue to use (test, gate, approve, deploy, promote, notify)"))?;
    let stage: StageName = s.parse().map_err(|e: String| anyhow!(e))?;
    if stage == StageName::Ingest {
        return Err(anyhow!(
            "ingest has no queue: it is invoked by EventBridge and its URL"
        ));
    }
    Ok(stage.as_str().to_string())
}

async fn react(g: &Global, action: crate::ReactAction) -> Result<ExitCode> {
    use crate::ReactAction;
    use crate::aws_mode::Target;
    match action {
        ReactAction::Add {
            on,
            email,
            webhook,
            sqs,
            log,
            name,
            format,
            secret_env,
            from,
            smtp,
            smtp_tls,
            smtp_user,
            smtp_password_env,
        } => {
            let local = crate::react::LocalOptions {
                format,
                secret_env,
                from,
                smtp,
                smtp_tls,
                smtp_user,
                smtp_password_env,
            };
            for t in &on {
                if baton::event::EventType::parse(t).is_none() {
                    return Err(anyhow!(
                        "--on {t}: not a Baton event type (allowed: {})",
                        baton::event::EventType::ALL.map(|t| t.as_str()).join(", ")
                    ));
                }
            }
            let target = match (email, webhook, sqs, log) {
                (Some(e), _, _, _) => Target::Email(e),
                (_, Some(w), _, _) => Target::Webhook(w),
                (_, _, Some(q), _) => Target::Sqs(q),
                (_, _, _, true) => Target::Log,
                _ => {
                    return Err(anyhow!(
                        "say where the reaction sends: --email, --webhook, --sqs or --log"
                    ));
                }
            };
            match &g.stack {
                Some(_) if !local.is_empty() => Err(anyhow!(
                    "--format, --secret-env, --from and --smtp* are for reactions in the configuration file; with --stack a reaction is an SNS subscription (e-mail through SNS, a webhook receiving the SNS envelope)"
                )),
                Some(stack) => crate::aws_mode::react_add(g, stack, &on, target).await,
                None => crate::react::add(g, &on, target, name, &local),
            }
        }
        ReactAction::List => match &g.stack {
            Some(stack) => crate::aws_mode::react_list(g, stack).await,
            None => crate::react::list(g),
        },
        ReactAction::Remove { reaction } => match &g.stack {
            Some(stack) => crate::aws_mode::react_remove(g, stack, &reaction).await,
            None => crate::react::remove(g, &reaction),
        },
    }
}

/// Delivers everything due, with progress; tolerates another process draining.
pub async fn drain(local: &Local, quiet: bool) -> Result<()> {
    let progress = Progress::new(quiet);
    progress.message("delivering events");
    let result = local
        .drain(&DrainOptions::default(), |d| progress.delivered(d))
        .await;
    progress.finish();
    match result {
        Ok(report) => {
            if report.dead > 0 {
                eprintln!(
                    "warning: {} message(s) were dead-lettered; see `baton dlq list`",
                    report.dead
                );
            }
            Ok(())
        }
        Err(baton::Error::Refused(msg)) => {
            eprintln!("note: {msg}");
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}

fn print_json(v: &impl serde::Serialize) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

async fn ingest(g: &Global, file: &Path) -> Result<ExitCode> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    let payload: Value =
        serde_json::from_str(&text).with_context(|| format!("{} is not JSON", file.display()))?;
    let kind = match identify(&payload) {
        Some(DocumentKind::Trigger(kind)) => kind,
        other => {
            return Err(anyhow!(
                "{} is {}; ingest takes a registry notification (ECR event; distribution, Docker Hub, Harbor, GHCR or Quay webhook)",
                file.display(),
                other
                    .map(|k| k.describe())
                    .unwrap_or("not a known document")
            ));
        }
    };
    let trigger = Trigger {
        kind,
        received_at: chrono::Utc::now(),
        payload,
    };
    // Reject malformed input before queueing it, with the field that is wrong.
    let parsed = trigger.parse()?;
    let local = open(g)?;
    // In local mode the embedded registry stands for the registry that sent the
    // notification: it learns the pushed tags first, as that registry had.
    for push in &parsed.pushes {
        let Some(digest) = &push.digest else {
            continue;
        };
        let image = baton::event::Image {
            registry: push.registry.clone(),
            repository: push.repository.clone(),
            tag: push.tag.clone(),
            digest: digest.clone(),
        };
        local
            .pipeline
            .ports
            .registry
            .record_push(&image, push.pushed_at)
            .await?;
    }
    local.submit_parsed(&parsed).await?;
    drain(&local, g.json).await?;
    // The runs these pushes started (a run's id derives from its app and digest).
    let p = &local.pipeline;
    let mut touched = vec![];
    for push in &parsed.pushes {
        let (Some(digest), Some(app)) = (
            &push.digest,
            p.config
                .app_for_repository(push.registry.as_str(), push.repository.as_str()),
        ) else {
            continue;
        };
        let run = baton::ids::run_id(&app.name, digest.as_str());
        if let Ok(r) = baton::pipeline::runs::summary(p, &app.name, &run).await {
            touched.push(r);
        }
    }
    if g.json {
        print_json(&json!({ "runs": touched, "ignored": parsed.ignored }))?;
    } else {
        for r in &touched {
            println!("run {}  {}  {}", r.run, r.app, r.status);
        }
        for why in &parsed.ignored {
            println!("ignored: {why}");
        }
        if touched.is_empty() {
            println!("no run started (no configured repository and tag in the notification)");
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn status(g: &Global, run: Option<&str>, limit: usize) -> Result<ExitCode> {
    let local = open(g)?;
    let p = &local.pipeline;
    match run {
        None => {
            let page = baton::pipeline::runs::page(p, limit, None).await?;
            if g.json {
                print_json(&page.runs)?;
            } else {
                output::print_runs(&page.runs);
                if page.next.is_some() {
                    println!("(the newest {limit}; --limit N for more)");
                }
            }
        }
        Some(id) => {
            let (app, run) = baton::pipeline::runs::resolve(p, id).await?;
            let view = baton::pipeline::runs::view(p, &app, &run).await?;
            if g.json {
                print_json(&view)?;
            } else {
                output::print_timeline(&view);
                output::print_events(&view.events);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn retry(g: &Global, run: &str, stage: &str, env: Option<&str>) -> Result<ExitCode> {
    let stage: StageName = stage.parse().map_err(|e: String| anyhow!(e))?;
    let local = open(g)?;
    let handled = baton::stages::retry(&local.pipeline, run, stage, env).await?;
    let ok = !matches!(handled.disposition, Disposition::Retry(_));
    drain(&local, g.json).await?;
    let (app, run_id) = baton::pipeline::runs::resolve(&local.pipeline, run).await?;
    let view = baton::pipeline::runs::view(&local.pipeline, &app, &run_id).await?;
    if g.json {
        print_json(&json!({
            "stage": stage.as_str(),
            "status": handled.status.map(|s| s.as_str()),
            "outputs": handled.outputs.iter().map(|e| json!({"type": e.event_type().as_str(), "id": e.id})).collect::<Vec<_>>(),
            "run": view,
        }))?;
    } else {
        println!(
            "retried {stage}: {}{}",
            handled.status.map(|s| s.as_str()).unwrap_or("no change"),
            match &handled.disposition {
                Disposition::Retry(e) => format!(" ({e}; the bus will retry)"),
                _ => String::new(),
            }
        );
        output::print_timeline(&view);
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

async fn decide(
    g: &Global,
    run: String,
    env: String,
    who: String,
    verdict: Verdict,
    comment: Option<String>,
    release_hold: bool,
) -> Result<ExitCode> {
    let local = open(g)?;
    let by = local.pipeline.config.approver(&who, "cli");
    let report = baton::stages::approve::decide(
        &local.pipeline,
        Decision {
            run,
            environment: env,
            by,
            verdict,
            comment,
            release_hold,
        },
    )
    .await?;
    drain(&local, g.json).await?;
    let view = baton::pipeline::runs::view(&local.pipeline, &report.app, &report.run).await?;
    if g.json {
        print_json(&json!({ "decision": report, "run_status": view.status }))?;
    } else {
        println!(
            "{} {}: approval {} ({} of {} approvals){}",
            report.run,
            report.environment,
            report.status.as_str(),
            report.approvals,
            report.required,
            if report.recorded {
                ""
            } else {
                "; your decision was already recorded"
            }
        );
        println!("run status: {}", view.status);
    }
    Ok(ExitCode::SUCCESS)
}

/// `baton rollback`: on the local state (then delivered), or with `--stack` through the
/// stack's deploy target and records with the operator's credentials.
async fn rollback(
    g: &Global,
    app: &str,
    env: &str,
    to: Option<&str>,
    who: Option<&str>,
    reason: Option<&str>,
) -> Result<ExitCode> {
    let report = match &g.stack {
        Some(stack) => {
            let p = crate::aws_mode::stack_pipeline::<baton::runtime::lambda::ports::WithTargets>(
                g, stack,
            )
            .await?;
            let who = operator(who);
            baton::stages::deploy::rollback(&p, app, env, to, Some(&who), reason).await?
        }
        None => {
            let local = open(g)?;
            let report =
                baton::stages::deploy::rollback(&local.pipeline, app, env, to, who, reason).await?;
            drain(&local, g.json).await?;
            report
        }
    };
    if g.json {
        print_json(&report)?;
    } else {
        println!(
            "rolled back {app} in {env}: {} → {} (run {})",
            report.from.as_deref().unwrap_or("-"),
            report.to,
            report.run
        );
        println!(
            "{env} is held on it: newer runs wait there until `baton hold release {app} --env {env}`"
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `baton dora --since 30d`.
async fn dora(g: &Global, since: &str) -> Result<ExitCode> {
    let window = humantime::parse_duration(since)
        .map_err(|e| anyhow!("--since {since:?}: {e} (e.g. 30d, 12h, 2w)"))?;
    let window =
        chrono::Duration::from_std(window).map_err(|_| anyhow!("--since {since:?} is too long"))?;
    let local = open(g)?;
    let p = &local.pipeline;
    let until = chrono::Utc::now();
    let from = until
        .checked_sub_signed(window)
        .ok_or_else(|| anyhow!("--since {since:?} is too long"))?;
    let facts = baton::pipeline::dora::collect(p).await?;
    let figures =
        baton::pipeline::dora::compute(&facts, &p.config.environment_names(), from, until);
    if g.json {
        print_json(&json!({"since": from, "until": until, "figures": figures}))?;
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "DORA from {} to {} ({} runs on record)",
        from.format("%Y-%m-%d %H:%M"),
        until.format("%Y-%m-%d %H:%M"),
        facts.len()
    );
    println!(
        "{:<10}  {:<12}  {:>7}  {:>7}  {:>12}  {:>12}  {:>14}  {:>12}",
        "APP",
        "ENVIRONMENT",
        "DEPLOYS",
        "PER DAY",
        "LEAD p50",
        "LEAD p90",
        "CHANGE FAILURE",
        "RESTORE p50"
    );
    let dur = |s: Option<f64>| s.map_or("-".to_string(), baton::pipeline::dora::human);
    for f in &figures {
        println!(
            "{:<10}  {:<12}  {:>7}  {:>7.2}  {:>12}  {:>12}  {:>14}  {:>12}",
            f.app,
            f.environment,
            f.deployments,
            f.deployments_per_day,
            dur(f.lead_time_p50),
            dur(f.lead_time_p90),
            f.change_failure_rate
                .map(|r| format!("{:.0}% ({})", r * 100.0, f.change_failures))
                .unwrap_or_else(|| "-".into()),
            if f.unrestored > 0 {
                format!("{} ({} open)", dur(f.time_to_restore_p50), f.unrestored)
            } else {
                dur(f.time_to_restore_p50)
            }
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `baton envs`: apps × environments.
async fn envs(g: &Global) -> Result<ExitCode> {
    let local = open(g)?;
    let view = baton::pipeline::environments::view(&local.pipeline).await?;
    if g.json {
        print_json(&view)?;
        return Ok(ExitCode::SUCCESS);
    }
    output::print_environments(&view);
    Ok(ExitCode::SUCCESS)
}

/// Who runs this command: `--as`, else `$USER`, else `operator`.
fn operator(who: Option<&str>) -> String {
    who.map(str::to_string)
        .or_else(|| std::env::var("USER").ok().filter(|u| !u.is_empty()))
        .unwrap_or_else(|| "operator".into())
}

/// `baton freezes`: freezes set by hand and holds in force, and the windows open now.
async fn freezes<P: baton::ports::Ports>(
    g: &Global,
    p: &baton::pipeline::Pipeline<P>,
) -> Result<ExitCode> {
    let now = chrono::Utc::now();
    let frozen: Vec<_> = baton::pipeline::holds::freezes(p)
        .await?
        .into_iter()
        .filter(|f| f.active)
        .collect();
    let held: Vec<_> = baton::pipeline::holds::holds(p)
        .await?
        .into_iter()
        .filter(|h| h.active)
        .collect();
    let mut windows = vec![];
    for app in &p.config.apps {
        for env in &app.environments {
            let ws = p.config.freeze_windows(env);
            if let Some(f) = baton::policy::freeze::by_windows(&ws, now) {
                windows.push(serde_json::json!({
                    "app": app.name, "environment": env.name, "reason": f.reason, "until": f.until,
                }));
            }
        }
    }
    if g.json {
        print_json(&serde_json::json!({"freezes": frozen, "holds": held, "windows": windows}))?;
        return Ok(ExitCode::SUCCESS);
    }
    if frozen.is_empty() && held.is_empty() && windows.is_empty() {
        println!("nothing stops the line");
    }
    for f in &frozen {
        println!(
            "frozen  {:<28} by {} since {}: {}",
            f.scope(),
            f.by,
            f.at.format("%Y-%m-%d %H:%M UTC"),
            f.reason
        );
    }
    for h in &held {
        println!(
            "held    {:<28} on {} since {}{}",
            format!("{} of {}", h.environment, h.app),
            h.image.tagged(),
            h.at.format("%Y-%m-%d %H:%M UTC"),
            h.by.as_deref()
                .map(|b| format!(" (rollback by {b})"))
                .unwrap_or_default()
        );
    }
    for w in &windows {
        println!(
            "window  {:<28} {}",
            format!(
                "{} of {}",
                w["environment"].as_str().unwrap_or(""),
                w["app"].as_str().unwrap_or("")
            ),
            w["reason"].as_str().unwrap_or("")
        );
    }
    Ok(ExitCode::SUCCESS)
}

async fn dlq(g: &Global, action: DlqAction) -> Result<ExitCode> {
    let local = open(g)?;
    let bus = &local.pipeline.ports.bus;
    match action {
        DlqAction::List { subscription } => {
            let dead: Vec<_> = bus
                .dead_letters()
                .await?
                .into_iter()
                .filter(|d| subscription.as_deref().is_none_or(|s| s == d.subscription))
                .collect();
            if g.json {
                print_json(&dead)?;
            } else if dead.is_empty() {
                println!("no dead letters");
            } else {
                for d in dead {
                    println!(
                        "{:<5} {:<24} {:<18} attempts {}  {}",
                        d.seq,
                        d.subscription,
                        d.message_type.unwrap_or_default(),
                        d.attempts,
                        d.error.unwrap_or_default()
                    );
                }
            }
        }
        DlqAction::Redrive { subscription } => {
            let n = bus.redrive(subscription.as_deref()).await?;
            drain(&local, g.json).await?;
            let left = bus.dead_letters().await?.len();
            if g.json {
                print_json(&json!({ "redriven": n, "dead_letters_left": left }))?;
            } else {
                println!("redrove {n} message(s); {left} dead letter(s) left");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn gc(g: &Global, dry_run: bool) -> Result<ExitCode> {
    let now = chrono::Utc::now();
    // On a stack: its bucket, with the operator's credentials (S3 does not tell the
    // bytes a delete frees).
    let (report, retention) = match &g.stack {
        Some(stack) => {
            let p = crate::aws_mode::stack_pipeline::<()>(g, stack).await?;
            let report = baton::pipeline::retention::gc(&p, now, dry_run)
                .await
                .with_context(|| format!("retention on stack {stack}"))?;
            (report, p.config.retention.clone())
        }
        None => {
            let local = open(g)?;
            let report = local.gc_at(now, dry_run).await?;
            (report, local.pipeline.config.retention.clone())
        }
    };
    if g.json {
        print_json(&report)?;
    } else {
        let r = &retention;
        for d in &report.removed {
            println!(
                "{} {} {} (last updated {})",
                if dry_run { "would remove" } else { "removed" },
                d.app,
                d.run,
                d.updated_at
                    .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
                    .unwrap_or_else(|| "never".into())
            );
        }
        println!(
            "{} {} run(s){}; kept {} (live, waiting or running, the newest {} per app, or younger than {})",
            if dry_run { "would remove" } else { "removed" },
            report.removed.len(),
            if dry_run || g.stack.is_some() {
                String::new()
            } else {
                format!(", {:.1} MiB freed", report.bytes_freed as f64 / 1_048_576.0)
            },
            report.kept,
            r.keep_last,
            humantime::format_duration(r.max_age)
        );
        if report.history_removed > 0 {
            println!(
                "{} {} deploy history entr{} older than {} (each environment keeps its newest {})",
                if dry_run { "would remove" } else { "removed" },
                report.history_removed,
                if report.history_removed == 1 {
                    "y"
                } else {
                    "ies"
                },
                humantime::format_duration(r.max_age),
                r.keep_last
                    .max(baton::pipeline::retention::HISTORY_KEEPS_AT_LEAST)
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn events(g: &Global, action: EventsAction) -> Result<ExitCode> {
    match action {
        EventsAction::Validate { files } => {
            let mut results = vec![];
            let mut bad = 0;
            for f in &files {
                let r = validate_file(f);
                if r.get("valid") != Some(&Value::Bool(true)) {
                    bad += 1;
                }
                results.push(r);
            }
            if g.json {
                print_json(&results)?;
            } else {
                for r in &results {
                    let file = r["file"].as_str().unwrap_or("");
                    if r["valid"] == Value::Bool(true) {
                        println!("ok    {file}: {}", r["summary"].as_str().unwrap_or(""));
                    } else {
                        println!("FAIL  {file}: {}", r["error"].as_str().unwrap_or(""));
                    }
                }
            }
            Ok(if bad == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        EventsAction::Schema { out } => {
            let schemas = baton::schema::event_schemas();
            match out {
                Some(dir) => {
                    std::fs::create_dir_all(&dir)
                        .with_context(|| format!("cannot create {}", dir.display()))?;
                    for (name, schema) in &schemas {
                        let path = dir.join(name);
                        std::fs::write(&path, baton::schema::render(schema))
                            .with_context(|| format!("cannot write {}", path.display()))?;
                    }
                    if !g.json {
                        println!("wrote {} schemas to {}", schemas.len(), dir.display());
                    }
                }
                None => {
                    let all: serde_json::Map<String, Value> = schemas.into_iter().collect();
                    print_json(&all)?;
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Validates one file: `{file, kind, valid, summary | error}`.
pub fn validate_file(path: &Path) -> Value {
    let file = path.display().to_string();
    let fail = |kind: Option<&str>, error: String| json!({ "file": file, "kind": kind, "valid": false, "error": error });
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => return fail(None, format!("cannot read: {e}")),
    };
    let value: Value = match serde_json::from_str(&text) {
        Ok(v) => v,
        Err(e) => return fail(None, format!("not JSON: {e}")),
    };
    let Some(kind) = identify(&value) else {
        return fail(
            None,
            "not a Baton event, ECR event, distribution envelope, SNS notification or SQS event"
                .into(),
        );
    };
    let summary = match kind {
        DocumentKind::BatonEvent => baton::event::Event::from_json(&text).map(|e| e.summary()),
        DocumentKind::Trigger(kind) => Trigger {
            kind,
            received_at: chrono::Utc::now(),
            payload: value.clone(),
        }
        .parse()
        .map(|p| describe_parsed(&p)),
        DocumentKind::Sns => {
            baton::envelopes::event_from_sns_notification(&text).map(|e| e.summary())
        }
        DocumentKind::FunctionUrl => baton::envelopes::function_url_request(&value).map(|req| {
            let http = &req.request_context.http;
            let caller = req
                .request_context
                .authorizer
                .as_ref()
                .and_then(|a| a.iam.as_ref())
                .and_then(|i| i.user_arn.clone());
            format!(
                "{} {} from {}, {} bytes",
                http.method.as_deref().unwrap_or("?"),
                req.raw_path.as_deref().unwrap_or("/"),
                caller.as_deref().unwrap_or("an unauthenticated caller"),
                req.body.as_deref().map_or(0, str::len)
            )
        }),
        DocumentKind::Sqs => baton::envelopes::events_from_sqs(&value).and_then(|records| {
            let mut lines = vec![];
            for (id, r) in records {
                lines.push(format!("{id}: {}", r?.summary()));
            }
            Ok(lines.join("; "))
        }),
    };
    match summary {
        Ok(s) => json!({ "file": file, "kind": kind.describe(), "valid": true, "summary": s }),
        Err(e) => fail(Some(kind.describe()), e.to_string()),
    }
}

fn describe_parsed(p: &baton::triggers::Parsed) -> String {
    let mut parts: Vec<String> = p
        .pushes
        .iter()
        .map(|x| {
            format!(
                "push {}/{}:{} {}",
                x.registry,
                x.repository,
                x.tag,
                match &x.digest {
                    None => "(digest resolved at ingest)",
                    Some(d) => d.short(),
                }
            )
        })
        .collect();
    parts.extend(p.ignored.iter().map(|i| format!("ignored: {i}")));
    parts.join("; ")
}
