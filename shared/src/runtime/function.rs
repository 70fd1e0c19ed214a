//! The entry point every function crate calls: `main::<Stage, Adapters>()`. In Lambda
//! it serves the Runtime API ([`crate::runtime::lambda::handler`]); elsewhere it runs its
//! one stage once on one input through the harness, on the embedded adapters, and
//! reports what happened as JSON. Each function names its stage and adapters in its
//! `main.rs`, so its binary links only what that stage uses.
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
use crate::pipeline::harness::{self, Disposition, Handled, Mode};
use crate::pipeline::stage::{Input, ReactionInput, Stage};
use crate::pipeline::{Pipeline, Settings};
use crate::runtime::lambda::handler::Function;
use crate::runtime::lambda::ports::Extra;
use crate::runtime::local::{Local, LocalPorts};
use crate::stages::{Approve, Deploy, Gate, Ingest, Notify, Promote, Test};
use crate::triggers::Trigger;

/// How a stage's function binary reads and runs one input outside Lambda, on the
/// embedded adapters.
pub trait Once: Stage<LocalPorts> + Sized {
    /// Runs the stage once on `text` (a Baton event, unless the stage says otherwise).
    fn once(
        p: &Pipeline<LocalPorts>,
        text: &str,
    ) -> impl std::future::Future<Output = Result<Value>> + Send {
        async move {
            let input = Input::Event(Event::from_json(text)?);
            let handled = harness::handle::<Self, LocalPorts>(p, input, Mode::Deliver).await?;
            Ok(report(Self::SPEC.name.as_str(), &handled))
        }
    }
}

impl Once for Test {}
impl Once for Gate {}
impl Once for Approve {}
impl Once for Deploy {}
impl Once for Promote {}

/// Ingest reads a registry notification.
impl Once for Ingest {
    async fn once(p: &Pipeline<LocalPorts>, text: &str) -> Result<Value> {
        let payload: Value =
            serde_json::from_str(text).map_err(|e| Error::invalid("registry notification", e))?;
        let Some(DocumentKind::Trigger(kind)) = identify(&payload) else {
            return Err(Error::invalid(
                "registry notification",
                "expected an ECR event or a distribution, Docker Hub, Harbor, GHCR or Quay notification",
            ));
        };
        let report = crate::stages::ingest::ingest(
            p,
            &Trigger {
                kind,
                received_at: chrono::Utc::now(),
                payload,
            },
        )
        .await?;
        Ok(json!({ "stage": "ingest", "accepted": report.accepted, "ignored": report.ignored }))
    }
}

/// Notify delivers the event to the reaction `BATON_REACTION` names.
impl Once for Notify {
    async fn once(p: &Pipeline<LocalPorts>, text: &str) -> Result<Value> {
        let event = Event::from_json(text)?;
        let reaction = std::env::var("BATON_REACTION")
            .map_err(|_| Error::invalid("notify", "set BATON_REACTION to the reaction to run"))?;
        let input = Input::Reaction(ReactionInput { reaction, event });
        let handled = harness::handle::<Notify, LocalPorts>(p, input, Mode::Deliver).await?;
        Ok(report("notify", &handled))
    }
}

/// What a run of one stage did, as JSON.
fn report(stage: &str, handled: &Handled) -> Value {
    json!({
        "stage": stage,
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
    })
}

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

/// Runs stage `S` once on the input and returns a JSON report.
pub async fn run_once<S: Once>() -> Result<Value> {
    let text = read_input()?;
    let config = Config::load(&env_path("BATON_CONFIG", "baton.yaml"))?;
    let local = Local::open(
        config,
        &env_path("BATON_STATE_DIR", ".baton"),
        Settings::default(),
    )?;
    S::once(&local.pipeline, &text).await
}

/// `main` of a function binary for stage `S` with the adapters `X`. Under the Lambda
/// Runtime API (`AWS_LAMBDA_RUNTIME_API` set) it serves invocations; otherwise it runs
/// the stage once on one input locally, prints the report, and exits non-zero on error.
pub fn main<S: Function<X> + Once, X: Extra>() -> std::process::ExitCode {
    crate::adapters::sandbox::protect_this_process();
    if std::env::var_os("AWS_LAMBDA_RUNTIME_API").is_some() {
        return block_on(crate::runtime::lambda::handler::run::<S, X>());
    }
    block_on(async {
        let report = run_once::<S>()
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
