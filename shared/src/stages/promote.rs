//! promote: `deploy.succeeded` (or `verification.passed` where the environment has
//! checks) → `image.promoted`: the image gets the environment's tag in the registry
//! (retag of the same manifest), so the tag always names what is live and verified.

use crate::error::Result;
use crate::event::{Event, EventType, ImagePromoted, Payload};
use crate::pipeline::Pipeline;
use crate::pipeline::stage::{
    Consumes, Input, RecordKey, Stage, StageCtx, StageName, StageSpec, Step, per_environment,
};
use crate::ports::{Registry, RegistryPorts};

const CONSUMES: &[EventType] = &[EventType::DeploySucceeded, EventType::VerificationPassed];

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
        // An environment with checks is promoted on `verification.passed`.
        if let Input::Event(e) = input
            && crate::stages::verify::checks_for(p, e).is_some()
        {
            return Ok(None);
        }
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
    // Deliveries run side by side: an older run's promotion may arrive after a newer
    // image went live. The tag follows what is live, never an image that was replaced.
    let live = crate::pipeline::deployments::live(p, &ctx.app, env_name).await?;
    if let Some(note) = superseded(live.as_ref(), ctx) {
        return Ok(Step::Done {
            outputs: vec![],
            note: Some(format!("{env_name}: {note}")),
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

/// Why this image is not promoted: another one is live in the environment now.
fn superseded(
    live: Option<&crate::pipeline::deployments::LiveRecord>,
    ctx: &crate::event::RunContext,
) -> Option<String> {
    let live = live?;
    (live.image.digest != ctx.image.digest).then(|| {
        format!(
            "not promoted: {} ({}) is live now",
            live.image.tagged(),
            live.image.short_digest()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::deployments::{DeployKind, LiveRecord};
    use crate::stages::testing::sample;

    #[test]
    fn only_the_live_image_is_promoted() {
        let ctx = sample("deploy.succeeded", |_| {}).ctx().clone();
        let live = |digest: &str| {
            let mut c = ctx.clone();
            c.image.digest = digest.parse().unwrap();
            c.image.tag = "2.0.0".parse().unwrap();
            LiveRecord {
                image: c.image.clone(),
                run: c.run.clone(),
                deployed_at: chrono::Utc::now(),
                ctx: c,
                kind: DeployKind::Deploy,
                fence: 1,
                applied: None,
                by: None,
            }
        };
        assert_eq!(superseded(None, &ctx), None);
        assert_eq!(
            superseded(Some(&live(ctx.image.digest.as_str())), &ctx),
            None
        );
        let newer = live(&format!("sha256:{}", "b".repeat(64)));
        let note = superseded(Some(&newer), &ctx).unwrap();
        assert!(
            note.contains("2.0.0") && note.contains("is live now"),
            "{note}"
        );
    }
}
