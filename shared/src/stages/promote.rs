//! promote: `deploy.succeeded` → `image.promoted`: the image gets the environment's tag
//! in the registry (retag of the same manifest), so the tag always names what is live.

use crate::error::Result;
use crate::event::{Event, EventType, ImagePromoted, Payload};
use crate::pipeline::Pipeline;
use crate::pipeline::stage::{
    Consumes, Input, RecordKey, Stage, StageCtx, StageName, StageSpec, Step, per_environment,
};
use crate::ports::{Registry, RegistryPorts};

const CONSUMES: &[EventType] = &[EventType::DeploySucceeded];

/// The promote stage.
pub struct Promote;

pub static SPEC: StageSpec = StageSpec {
    name: StageName::Promote,
    consumes: Consumes::Events(CONSUMES),
    per_environment: true,
    reports_failures: true,
    may_hold: &[
        "logs",
        "store:config",
        "store:runs",
        "store:runs:write",
        "store:list",
        "queue",
        "publish",
        "registry-read",
        "registry-write",
    ],
    never: "targets",
};

impl<P: RegistryPorts> Stage<P> for Promote {
    const SPEC: &'static StageSpec = &SPEC;

    fn record(p: &Pipeline<P>, input: &Input) -> Result<Option<RecordKey>> {
        let _ = p;
        let mut rec = per_environment(StageName::Promote, input)?;
        // A rollback is a new deploy of an old run: promote retags again, in a record
        // of its own.
        if let Input::Event(e) = input
            && let Payload::DeploySucceeded(d) = &e.payload
            && d.rollback
        {
            let ctx = input.ctx();
            let env = rec.environment.clone().unwrap_or_default();
            let scope = format!("{env}.rollback-{}", &e.id[..e.id.len().min(8)]);
            rec.key = crate::store::stage_key(&ctx.app, &ctx.run, "promote", Some(&scope));
        }
        Ok(Some(rec))
    }

    async fn run(p: &Pipeline<P>, input: &Input, ctx: &StageCtx) -> Result<Step> {
        step(p, input.expect_event(StageName::Promote, CONSUMES)?, ctx).await
    }
}

async fn step<P: RegistryPorts>(p: &Pipeline<P>, input: &Event, _sctx: &StageCtx) -> Result<Step> {
    let ctx = input.ctx();
    let app = p.config.app(&ctx.app)?;
    let env_name = ctx.environment.as_deref().unwrap_or_default();
    let env = app.environment(env_name)?;
    if !env.promote {
        return Ok(Step::Done {
            outputs: vec![],
            note: Some(format!("{env_name}: promotion disabled")),
        });
    }
    let tag = env.promote_tag()?;
    p.ports
        .registry()
        .retag(&ctx.image, &tag)
        .await
        .map_err(|e| e.context(format!("retag {} as {tag}", ctx.image.reference())))?;
    Ok(Step::Done {
        outputs: vec![Payload::ImagePromoted(ImagePromoted {
            ctx: ctx.clone(),
            promoted_tag: tag.clone(),
        })],
        note: Some(format!(
            "{}:{tag} → {}",
            ctx.image.repository,
            ctx.image.short_digest()
        )),
    })
}
