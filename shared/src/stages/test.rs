//! test: `image.built` → `tests.passed` / `tests.failed`. Runs the image, pinned by
//! digest, with the app's test runner, once per image; stores the bounded output in the
//! run record. A runner that needs longer than one delivery reports progress and the
//! stage waits (bus "deliver again later"), so a 40-minute suite idles nowhere.

use std::time::Instant;

use crate::error::Result;
use crate::event::{Event, EventType, Payload, TestReport};
use crate::pipeline::Pipeline;
use crate::pipeline::stage::{
    Consumes, Input, RecordKey, Stage, StageCtx, StageName, StageSpec, Step, per_image,
};
use crate::ports::{ObjectStore, Precondition, TestPorts, TestProgress, TestRequest, TestRunner};
use crate::store::test_output_key;

const CONSUMES: &[EventType] = &[EventType::ImageBuilt];

/// The test stage.
pub struct Test;

pub static SPEC: StageSpec = StageSpec {
    name: StageName::Test,
    consumes: Consumes::Events(CONSUMES),
    per_environment: false,
    reports_failures: true,
    may_hold: &[
        "logs",
        "store:config",
        "store:runs",
        "store:runs:write",
        "store:list",
        "queue",
        "publish",
        "invoke-functions",
        "k8s:test",
    ],
    never: "production namespaces; registry writes",
};

impl<P: TestPorts> Stage<P> for Test {
    const SPEC: &'static StageSpec = &SPEC;

    fn record(p: &Pipeline<P>, input: &Input) -> Result<Option<RecordKey>> {
        let _ = p;
        Ok(Some(per_image(StageName::Test, input.ctx())))
    }

    /// A failed suite may run again (a flaky test, a fixed dependency).
    fn may_retry(outputs: &[Event]) -> bool {
        outputs
            .iter()
            .any(|e| e.event_type() == EventType::TestsFailed)
    }

    async fn run(p: &Pipeline<P>, input: &Input, ctx: &StageCtx) -> Result<Step> {
        step(p, input.expect_event(StageName::Test, CONSUMES)?, ctx).await
    }
}

async fn step<P: TestPorts>(p: &Pipeline<P>, input: &Event, sctx: &StageCtx) -> Result<Step> {
    let ctx = input.ctx();
    let app = p.config.app(&ctx.app)?;
    let runner = p.ports.test_runner(&app.test)?;
    let req = TestRequest {
        app: ctx.app.clone(),
        run: ctx.run.clone(),
        image: ctx.image.clone(),
        attempt: sctx.attempt,
        check: None,
    };
    let started = Instant::now();
    let progress = match &sctx.progress {
        Some(state) => runner.check(&req, state).await?,
        None => runner.start(&req).await?,
    };
    match progress {
        TestProgress::Running {
            state,
            check_after,
            note,
        } => Ok(Step::Wait {
            after: check_after.min(p.settings.max_wait),
            progress: state,
            note,
            notices: vec![],
        }),
        TestProgress::Finished(outcome) => {
            let key = test_output_key(&ctx.app, &ctx.run);
            let output = crate::ports::bound_output(&outcome.output, p.settings.test_output_limit);
            p.ports
                .store()
                .put(&key, output.into_bytes(), Precondition::None)
                .await?;
            let report = TestReport {
                ctx: ctx.clone(),
                runner: runner.kind().into(),
                summary: outcome.summary,
                exit_code: outcome.exit_code,
                duration_ms: started.elapsed().as_millis() as u64,
                output_key: Some(key),
            };
            Ok(Step::publish(vec![if outcome.passed {
                Payload::TestsPassed(report)
            } else {
                Payload::TestsFailed(report)
            }]))
        }
    }
}
