//! ingest: registry push → `image.built`. Only configured repositories and tags allowed
//! by the app's tag policy start runs; everything else is ignored with a reason. The
//! run id is derived from (app, digest), so one digest pushed under two tags is one run.

use serde::Serialize;

use crate::error::{Error, Result};
use crate::event::{Image, ImageBuilt, Payload, RunContext};
use crate::ids::run_id;
use crate::pipeline::Pipeline;
use crate::pipeline::harness::{self, Disposition, Mode};
use crate::pipeline::stage::{
    Consumes, Input, PushInput, RecordKey, Stage, StageCtx, StageName, StageSpec, Step, per_image,
};
use crate::ports::{Registry, RegistryPorts};
use crate::triggers::{Parsed, Push, Trigger};

/// The ingest stage.
pub struct Ingest;

pub static SPEC: StageSpec = StageSpec {
    name: StageName::Ingest,
    consumes: Consumes::Triggers,
    per_environment: false,
    reports_failures: true,
    may_hold: &[
        "logs",
        "store:config",
        "store:runs",
        "store:runs:write",
        "store:list",
        "registry-read",
        "publish",
    ],
    never: "deploy targets; push images",
};

impl<P: RegistryPorts> Stage<P> for Ingest {
    const SPEC: &'static StageSpec = &SPEC;

    fn record(_p: &Pipeline<P>, input: &Input) -> Result<Option<RecordKey>> {
        Ok(Some(per_image(StageName::Ingest, input.ctx())))
    }

    /// A push with its run context becomes `image.built`.
    async fn run(_p: &Pipeline<P>, input: &Input, _ctx: &StageCtx) -> Result<Step> {
        let Input::Push(p) = input else {
            return Err(Error::invalid(
                "stage input",
                format!("ingest consumes registry pushes, not {}", input.describe()),
            ));
        };
        Ok(Step::publish(vec![Payload::ImageBuilt(ImageBuilt {
            ctx: p.ctx.clone(),
            pushed_at: p.push.pushed_at,
            trigger: p.push.trigger.as_str().into(),
        })]))
    }
}

/// What ingest did with a notification.
#[derive(Debug, Clone, Default, Serialize)]
pub struct IngestReport {
    pub accepted: Vec<Accepted>,
    pub ignored: Vec<String>,
}

/// A push that became (or joined) a run.
#[derive(Debug, Clone, Serialize)]
pub struct Accepted {
    pub app: String,
    pub run: crate::ids::RunId,
    pub tag: String,
    pub digest: String,
    /// True when this digest already had a run (another tag or a registry retry).
    pub duplicate: bool,
}

/// Runs a registry notification through ingest. Malformed input is an `Error::Invalid`
/// naming the field; pushes that start nothing are listed with why.
pub async fn ingest<P: RegistryPorts>(p: &Pipeline<P>, trigger: &Trigger) -> Result<IngestReport> {
    ingest_parsed(p, trigger.parse()?).await
}

/// Starts a run for every push of an already parsed notification that the
/// configuration takes (the ingest queue of `baton serve` holds these).
pub async fn ingest_parsed<P: RegistryPorts>(
    p: &Pipeline<P>,
    parsed: Parsed,
) -> Result<IngestReport> {
    let mut report = IngestReport {
        accepted: vec![],
        ignored: parsed.ignored,
    };
    for push in parsed.pushes {
        match accept(p, push).await? {
            Ok(input) => {
                let ctx = input.ctx.clone();
                let handled =
                    harness::handle::<Ingest, P>(p, Input::Push(input), Mode::Deliver).await?;
                if let Disposition::Retry(e) = handled.disposition {
                    return Err(e);
                }
                report.accepted.push(Accepted {
                    app: ctx.app,
                    run: ctx.run,
                    tag: ctx.image.tag.to_string(),
                    digest: ctx.image.digest.to_string(),
                    duplicate: handled.duplicate,
                });
            }
            Err(reason) => {
                tracing::info!(%reason, "push ignored");
                report.ignored.push(reason);
            }
        }
    }
    Ok(report)
}

/// Checks a push against the configuration; `Ok(Err(reason))` when it starts nothing.
async fn accept<P: RegistryPorts>(
    p: &Pipeline<P>,
    mut push: Push,
) -> Result<std::result::Result<PushInput, String>> {
    let Some(app) = p
        .config
        .app_for_repository(&push.registry, &push.repository)
    else {
        return Ok(Err(format!(
            "{}/{}:{}: repository is not configured for any app",
            push.registry, push.repository, push.tag
        )));
    };
    let policy = &app.tags;
    if !policy.matches(&push.tag) {
        return Ok(Err(format!(
            "{}:{}: tag does not match app {}'s tag policy ({})",
            push.repository,
            push.tag,
            app.name,
            policy.describe()
        )));
    }
    let digest = match &push.digest {
        Some(d) => d.clone(),
        None => {
            let resolved = p
                .ports
                .registry()
                .resolve(&push.registry, &push.repository, &push.tag)
                .await?;
            if let Some(at) = resolved.pushed_at {
                push.pushed_at = at;
            }
            push.digest = Some(resolved.digest.clone());
            resolved.digest
        }
    };
    let ctx = RunContext {
        run: run_id(&app.name, &digest),
        app: app.name.clone(),
        environment: None,
        image: Image {
            registry: push.registry.clone(),
            repository: push.repository.clone(),
            tag: push.tag.clone(),
            digest,
        },
        causation: push.notification_id.clone(),
        attempt: 1,
        sequence: push.pushed_at.timestamp_millis().max(0) as u64,
        pushed_by: push.pushed_by.clone(),
    };
    Ok(Ok(PushInput { push, ctx }))
}
