//! promote: `deploy.succeeded` → `image.promoted`: the image gets the environment's tag
//! in the registry (retag of the same manifest), so the tag always names what is live.

use crate::error::Result;
use crate::event::{Event, EventType, ImagePromoted, Payload};
use crate::pipeline::harness::Step;
use crate::pipeline::{Pipeline, StageName, expect_type};
use crate::ports::{Ports, Registry};

pub(crate) async fn run<P: Ports>(p: &Pipeline<P>, input: &Event) -> Result<Step> {
    expect_type(
        StageName::Promote,
        input.event_type(),
        &[EventType::DeploySucceeded],
    )?;
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
