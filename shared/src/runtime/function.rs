//! The entry point every function crate calls. In Lambda it serves the Runtime API
//! (`crate::runtime::lambda::handler`); elsewhere it runs exactly one stage on one input through the
//! harness, on the embedded adapters, and reports what happened as JSON.
//!
//! Usage of a function binary: `<function> EVENT.json` (or `-` for stdin), with
//! `BATON_CONFIG` (default `baton.yaml`), `BATON_STATE_DIR` (default `.baton`) and, for
//! notify, `BATON_REACTION`. Outputs are published to the embedded bus for the next
//! stage; nothing else runs.

use std::io::Read;
use std::path::PathBuf;

use serde_json::{Value, json};

use crate::config::Config;
use crate::envelopes::{DocumentKind, identify};
use crate::error::{Error, Result};
use crate::event::Event;
use crate::pipeline::harness::{Disposition, Input, Mode, ReactionInput};
use crate::pipeline::{Settings, StageName};
use crate::runtime::local::Local;
use crate::triggers::Trigger;

fn env_path(var: &str, default: &str) -> PathBuf {
    std::env::var_os(var)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(default))
}

/// Reads the input named by the first argument (`-` or nothing: stdin).
fn read_input() -> Result<String> {
    let arg = std::env::args().nth(1).unwrap_or_else(|| "-".into());
    if arg == "-" {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .map_err(|e| Error::invalid("input", format!("cannot read stdin: {e}")))?;
        Ok(s)
    } else {
        std::fs::read_to_string(&arg)
            .map_err(|e| Error::invalid("input", format!("cannot read {arg}: {e}")))
    }
}

/// Runs `stage` once on the input and returns a JSON report.
pub async fn run_once(stage: StageName) -> Result<Value> {
    let text = read_input()?;
    let config = Config::load(&env_path("BATON_CONFIG", "baton.yaml"))?;
    let local = Local::open(
        config,
        &env_path("BATON_STATE_DIR", ".baton"),
        Settings::default(),
    )?;
    let p = &local.pipeline;
    if stage == StageName::Ingest {
        let payload: Value =
            serde_json::from_str(&text).map_err(|e| Error::invalid("registry notification", e))?;
        let Some(DocumentKind::Trigger(kind)) = identify(&payload) else {
            return Err(Error::invalid(
                "registry notification",
                "expected an ECR event or a distribution, Docker Hub, Harbor, GHCR or Quay notification",
            ));
        };
        let report = p
            .ingest(&Trigger {
                kind,
                received_at: chrono::Utc::now(),
                payload,
            })
            .await?;
        return Ok(
            json!({ "stage": "ingest", "accepted": report.accepted, "ignored": report.ignored }),
        );
    }
    let event = Event::from_json(&text)?;
    let input = if stage == StageName::Notify {
        let reaction = std::env::var("BATON_REACTION")
            .map_err(|_| Error::invalid("notify", "set BATON_REACTION to the reaction to run"))?;
        Input::Reaction(ReactionInput { reaction, event })
    } else {
        Input::Event(event)
    };
    let handled = p.handle(stage, input, Mode::Deliver).await?;
    Ok(json!({
        "stage": stage.as_str(),
        "record": handled.record,
        "status": handled.status.map(|s| s.as_str()),
        "duplicate": handled.duplicate,
        "note": handled.note,
        "disposition": match &handled.disposition {
            Disposition::Done => json!("done"),
            Disposition::Later(d) => json!({ "later_ms": d.as_millis() as u64 }),
            Disposition::Retry(e) => json!({ "retry": e.to_string(), "kind": e.kind() }),
        },
        "outputs": handled.outputs.iter().map(|e| json!({ "type": e.event_type().as_str(), "id": e.id })).collect::<Vec<_>>(),
    }))
}

/// `main` of a function binary. Under the Lambda Runtime API (`AWS_LAMBDA_RUNTIME_API`
/// set) it serves invocations with `crate::runtime::lambda::handler`; otherwise it runs the stage
/// once on one input locally, prints the report, and exits non-zero on error.
pub fn main(stage: StageName) -> std::process::ExitCode {
    crate::adapters::sandbox::protect_this_process();
    // Under the Lambda Runtime API (in Lambda, `cargo lambda watch`): serve invocations.
    #[cfg(feature = "aws")]
    if std::env::var_os("AWS_LAMBDA_RUNTIME_API").is_some() {
        return block_on(crate::runtime::lambda::handler::run(stage));
    }
    block_on(async {
        let report = run_once(stage)
            .await
            .map_err(|e| format!("({}) {e}", e.kind()))?;
        println!(
            "{}",
            serde_json::to_string_pretty(&report).unwrap_or_default()
        );
        Ok::<(), String>(())
    })
}

/// Runs a binary's work on a current-thread runtime: success exits 0; an error is
/// printed (`error: …`) and exits 1.
pub fn block_on<E: std::fmt::Display>(
    work: impl std::future::Future<Output = std::result::Result<(), E>>,
) -> std::process::ExitCode {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::from(1);
        }
    };
    match rt.block_on(work) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::from(1)
        }
    }
}
