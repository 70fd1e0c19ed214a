use std::collections::BTreeMap;

use baton::Error;
use baton::adapters::embedded::DrainOptions;
use baton::event::{EventType, Payload};
use baton::pipeline::StageName;
use baton::policy::approval::Verdict;
use baton::stages::approve::Decision;
use chrono::{Duration, Utc};

use crate::*;

const FULL_SEQUENCE: [&str; 9] = [
    "image.built",
    "tests.passed",
    "approval.granted[staging]",
    "deploy.succeeded[staging]",
    "approval.requested[production]",
    "image.promoted[staging]",
    "approval.granted[production]",
    "deploy.succeeded[production]",
    "image.promoted[production]",
];

fn decision(run: &str, env: &str, by: &str, verdict: Verdict) -> Decision {
    Decision {
        run: run.into(),
        environment: env.into(),
        by: baton::policy::approval::Approver::named(by),
        verdict,
        comment: None,
        release_hold: false,
    }
}

#[tokio::test]
async fn full_pipeline_event_sequence_and_manifests() {
    let env = setup(Setup::default());
    let img = env.push("1.0.0", "ci-bot", Utc::now()).await;
    env.drain().await;
    assert_eq!(env.status(&img).await, "awaiting approval (production)");
    assert_eq!(sequence(&env.events(&img).await), FULL_SEQUENCE[..6]);
    assert!(
        env.manifest("staging")
            .contains(&format!("image: {}  # set by baton", img.reference()))
    );
    assert!(
        env.manifest("production").contains("demo/web:0.1.0"),
        "production untouched before approval"
    );

    let run = env.run_of(&img);
    let report = baton::stages::approve::decide(
        &env.local.pipeline,
        decision(&run[..8], "production", "alice", Verdict::Approve),
    )
    .await
    .unwrap();
    assert!(report.recorded);
    env.drain().await;
    let events = env.events(&img).await;
    assert_eq!(sequence(&events), FULL_SEQUENCE);
    assert_eq!(env.status(&img).await, "deployed");
    let expected =
        crate::STAGING_MANIFEST.replace("localhost:5000/demo/web:0.1.0", &img.reference());
    assert_eq!(env.manifest("staging"), expected);
    assert_eq!(env.manifest("production"), expected);

    // causation chain and digest pinning
    for pair in events.windows(2) {
        assert_eq!(pair[1].ctx().run, run);
        assert_eq!(pair[1].ctx().image.digest, img.digest);
    }
    let by_type: BTreeMap<String, &baton::event::Event> = events
        .iter()
        .map(|e| (sequence(std::slice::from_ref(e))[0].clone(), e))
        .collect();
    assert_eq!(
        by_type["tests.passed"].ctx().causation,
        by_type["image.built"].id
    );
    assert_eq!(
        by_type["deploy.succeeded[production]"].ctx().causation,
        by_type["approval.granted[production]"].id
    );
    assert_eq!(
        by_type["image.built"].ctx().pushed_by.as_deref(),
        Some("ci-bot")
    );
    // the registry carries the environment tags after promote
    let reg = &env.local.pipeline.ports.registry;
    assert_eq!(
        reg.tag("localhost:5000", "demo/web", "staging")
            .await
            .unwrap(),
        Some(img.digest.clone())
    );
    assert_eq!(
        reg.tag("localhost:5000", "demo/web", "production")
            .await
            .unwrap(),
        Some(img.digest.clone())
    );
    // every event reached the catch-all reaction exactly once
    let log = std::fs::read_to_string(env.root().join("state/notifications.log")).unwrap();
    assert_eq!(log.lines().count(), 9, "{log}");
    // test output is kept with the run
    let out = env
        .object(&format!("runs/web/{run}/tests/output.log"))
        .await;
    assert!(
        out.contains(&format!("testing {}", img.reference())),
        "{out}"
    );
}

#[tokio::test]
async fn every_event_delivered_three_times_deploys_once_per_environment() {
    let env = setup(Setup {
        production: "auto".into(),
        ..Default::default()
    });
    let img = env.push("1.0.0", "ci-bot", Utc::now()).await;
    let thrice = Repeat {
        inner: env.local.clone(),
        n: 3,
    };
    let rep = env
        .local
        .pipeline
        .ports
        .bus
        .drain(&thrice, &DrainOptions::default(), |_| {})
        .await
        .unwrap();
    assert_eq!(rep.dead, 0);
    assert_eq!(env.status(&img).await, "deployed");
    for e in ["staging", "production"] {
        let history = baton::pipeline::deployments::history(&env.local.pipeline, "web", e)
            .await
            .unwrap();
        assert_eq!(history.len(), 1, "exactly one deploy to {e}");
    }
    let events = env.events(&img).await;
    let deploys = events
        .iter()
        .filter(|e| e.event_type() == EventType::DeploySucceeded)
        .count();
    assert_eq!(deploys, 2);
    assert_eq!(events.len(), 8, "{:?}", sequence(&events));
    let log = std::fs::read_to_string(env.root().join("state/notifications.log")).unwrap();
    assert_eq!(log.lines().count(), 8, "one notification per event: {log}");
    // and re-publishing the whole log again changes nothing
    for e in &events {
        baton::pipeline::harness::publish(&env.local.pipeline, std::slice::from_ref(e))
            .await
            .unwrap();
    }
    env.drain().await;
    assert_eq!(env.events(&img).await.len(), 8);
    assert_eq!(
        baton::pipeline::deployments::history(&env.local.pipeline, "web", "production")
            .await
            .unwrap()
            .len(),
        1
    );
}

#[tokio::test]
async fn failing_tests_publish_tests_failed_and_deploy_nothing() {
    let env = setup(Setup {
        // Fails until the suite is fixed (`tests-fixed` appears in the project directory).
        test_cmd: r#"["sh", "-c", "test -e tests-fixed || { echo 'assertion failed: checkout returns 500' >&2; exit 3; }"]"#
            .into(),
        ..Default::default()
    });
    let img = env.push("1.0.0", "ci-bot", Utc::now()).await;
    env.drain().await;
    let events = env.events(&img).await;
    assert_eq!(sequence(&events), ["image.built", "tests.failed"]);
    let Payload::TestsFailed(r) = &events[1].payload else {
        panic!("tests.failed")
    };
    assert_eq!(r.exit_code, Some(3));
    assert_eq!(r.summary, "exit code 3");
    assert_eq!(env.status(&img).await, "tests failed");
    let view = baton::pipeline::runs::view(&env.local.pipeline, "web", &env.run_of(&img))
        .await
        .unwrap();
    assert!(view.stages.iter().all(|s| s.stage != StageName::Deploy));
    assert!(env.manifest("staging").contains("demo/web:0.1.0"));
    let out = env
        .object(&format!("runs/web/{}/tests/output.log", env.run_of(&img)))
        .await;
    assert!(out.contains("checkout returns 500"));

    // A flaky or fixed suite: the test stage may run again, and the run goes on.
    std::fs::write(env.root().join("tests-fixed"), "").unwrap();
    let handled = baton::stages::retry(
        &env.local.pipeline,
        &env.run_of(&img),
        StageName::Test,
        None,
    )
    .await
    .unwrap();
    assert_eq!(handled.outputs[0].event_type(), EventType::TestsPassed);
    assert_eq!(handled.outputs[0].ctx().attempt, 2);
    env.drain().await;
    let events = env.events(&img).await;
    assert_eq!(
        &sequence(&events)[..4],
        [
            "image.built",
            "tests.failed",
            "tests.passed",
            "approval.granted[staging]"
        ]
    );
    assert_eq!(env.status(&img).await, "awaiting approval (production)");
    // Passed now: a second retry has nothing to replace.
    let e = baton::stages::retry(
        &env.local.pipeline,
        &env.run_of(&img),
        StageName::Test,
        None,
    )
    .await
    .unwrap_err();
    assert!(e.to_string().contains("already succeeded"), "{e}");
}

#[tokio::test]
async fn failed_deploy_retried_after_fix_reruns_only_deploy() {
    let env = setup(Setup {
        staging_dir: "gitops/staging".into(),
        ..Default::default()
    });
    let img = env.push("1.0.0", "ci-bot", Utc::now()).await;
    env.drain().await;
    let run = env.run_of(&img);
    let events = env.events(&img).await;
    assert_eq!(
        sequence(&events),
        [
            "image.built",
            "tests.passed",
            "approval.granted[staging]",
            "stage.failed[staging]"
        ]
    );
    let Payload::StageFailed(f) = &events[3].payload else {
        panic!("stage.failed")
    };
    assert_eq!(f.stage, "deploy");
    assert_eq!(f.error_kind, "permanent");
    assert!(f.reason.contains("gitops/staging"), "{}", f.reason);
    assert_eq!(env.status(&img).await, "failed at deploy (staging)");

    let stages = format!("runs/web/{run}/stages/");
    let snapshot = |skip: &'static str| {
        let stages = stages.clone();
        let store = env.local.pipeline.ports.store.clone();
        async move {
            baton::ports::ObjectStore::get_prefix(&store, &stages)
                .await
                .unwrap()
                .into_iter()
                .map(|(k, o)| (k[stages.len()..].to_string(), o.bytes))
                .filter(|(name, _)| !name.starts_with(skip))
                .collect::<BTreeMap<String, Vec<u8>>>()
        }
    };
    let before = snapshot("deploy.").await;
    assert_eq!(
        before.keys().cloned().collect::<Vec<_>>(),
        ["gate.staging.json", "ingest.json", "test.json"]
    );

    // fix the cause, retry the one stage
    let fixed = env.root().join("gitops/staging");
    std::fs::create_dir_all(&fixed).unwrap();
    std::fs::write(fixed.join("web.yaml"), crate::STAGING_MANIFEST).unwrap();
    let handled = baton::stages::retry(&env.local.pipeline, &run, StageName::Deploy, None)
        .await
        .unwrap();
    assert_eq!(handled.status.map(|s| s.as_str()), Some("succeeded"));
    let after_retry = snapshot("deploy.").await;
    assert_eq!(before, after_retry, "only the deploy record changed");
    let deploy: baton::pipeline::harness::StageRecord =
        serde_json::from_str(&env.object(&format!("{stages}deploy.staging.json")).await).unwrap();
    assert_eq!(deploy.attempt, 2);
    assert_eq!(handled.outputs[0].ctx().attempt, 2);
    assert!(
        std::fs::read_to_string(fixed.join("web.yaml"))
            .unwrap()
            .contains(img.digest.as_str())
    );
    env.drain().await;
    assert_eq!(env.status(&img).await, "awaiting approval (production)");
    // retrying a succeeded stage is refused
    let e = baton::stages::retry(&env.local.pipeline, &run, StageName::Test, None)
        .await
        .unwrap_err();
    assert!(matches!(e, Error::Refused(_)), "{e}");
    assert!(e.to_string().contains("already succeeded"), "{e}");
}

#[tokio::test]
async fn approvals_refuse_non_approvers_the_pusher_and_late_decisions() {
    let env = setup(Setup {
        production:
            "{ approvers: [alice], groups: [release-managers], required: 2, expires_after: 2s }"
                .into(),
        ..Default::default()
    });
    // carol (a release manager) pushed the image herself
    let img = env.push("1.0.0", "carol", Utc::now()).await;
    // park the approve stage's expiry check instead of waiting 2s for it
    let parked = env
        .local
        .drain(
            &DrainOptions {
                park_after: std::time::Duration::ZERO,
                ..Default::default()
            },
            |_| {},
        )
        .await
        .unwrap();
    assert_eq!(parked.parked, 1);
    let run = env.run_of(&img);
    let p = &env.local.pipeline;
    let e = baton::stages::approve::decide(
        p,
        decision(&run, "production", "mallory", Verdict::Approve),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(&e, Error::Refused(m) if m.contains("mallory may not")),
        "{e}"
    );
    let e =
        baton::stages::approve::decide(p, decision(&run, "production", "carol", Verdict::Approve))
            .await
            .unwrap_err();
    assert!(
        matches!(&e, Error::Refused(m) if m.contains("self-approval")),
        "{e}"
    );
    let e = baton::stages::approve::decide(p, decision(&run, "staging", "alice", Verdict::Approve))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("automatically"), "{e}");
    // one of two approvals: still pending
    let r =
        baton::stages::approve::decide(p, decision(&run, "production", "alice", Verdict::Approve))
            .await
            .unwrap();
    assert_eq!(
        (r.approvals, r.required, r.status.as_str()),
        (1, 2, "pending")
    );
    let r =
        baton::stages::approve::decide(p, decision(&run, "production", "alice", Verdict::Approve))
            .await
            .unwrap();
    assert!(!r.recorded, "the same approver counts once");
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    let e =
        baton::stages::approve::decide(p, decision(&run, "production", "bob", Verdict::Approve))
            .await
            .unwrap_err();
    assert!(
        matches!(&e, Error::Refused(m) if m.contains("expired")),
        "{e}"
    );
    let rec: baton::pipeline::approvals::ApprovalRecord = serde_json::from_str(
        &env.object(&format!("approvals/web/{run}/production.json"))
            .await,
    )
    .unwrap();
    assert_eq!(rec.decisions.len(), 1, "refused decisions are not recorded");
    assert!(
        baton::pipeline::deployments::live(&env.local.pipeline, "web", "production")
            .await
            .unwrap()
            .is_none()
    );
    assert!(env.manifest("production").contains("demo/web:0.1.0"));
    // the approve stage's expiry check rejects the run
    env.drain().await;
    assert_eq!(env.status(&img).await, "rejected (production)");
    let last = env.events(&img).await.pop().unwrap();
    let Payload::ApprovalRejected(rj) = &last.payload else {
        panic!("approval.rejected")
    };
    assert!(rj.reason.contains("expired"), "{}", rj.reason);
}

#[tokio::test]
async fn a_rejection_stops_the_run() {
    let env = setup(Setup::default());
    let img = env.push("1.0.0", "ci-bot", Utc::now()).await;
    env.drain().await;
    let run = env.run_of(&img);
    baton::stages::approve::decide(
        &env.local.pipeline,
        decision(&run, "production", "bob", Verdict::Reject),
    )
    .await
    .unwrap();
    env.drain().await;
    assert_eq!(env.status(&img).await, "rejected (production)");
    let e = baton::stages::approve::decide(
        &env.local.pipeline,
        decision(&run, "production", "alice", Verdict::Approve),
    )
    .await
    .unwrap_err();
    assert!(e.to_string().contains("already rejected"), "{e}");
}

#[tokio::test]
async fn newer_wins_an_older_push_never_replaces_a_newer_image() {
    let env = setup(Setup::default());
    let t0 = Utc::now();
    let newer = env.push("1.2.0", "ci-bot", t0).await;
    env.drain().await;
    let older = env.push("1.1.0", "ci-bot", t0 + Duration::seconds(5)).await;
    env.drain().await;
    let live = baton::pipeline::deployments::live(&env.local.pipeline, "web", "staging")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(live.image.digest, newer.digest);
    assert!(env.manifest("staging").contains(newer.digest.as_str()));
    assert!(!env.manifest("staging").contains(older.digest.as_str()));
    assert_eq!(env.status(&older).await, "superseded (staging)");
    let last = env.events(&older).await.pop().unwrap();
    let Payload::DeployFailed(f) = &last.payload else {
        panic!("deploy.failed")
    };
    assert_eq!(f.code, baton::event::FailureCode::Superseded);
    assert!(f.reason.contains("1.2.0"), "{}", f.reason);
    // an explicit rollback may go back; newer-wins applies only to pipeline deploys
    let r = baton::stages::deploy::rollback(
        &env.local.pipeline,
        "web",
        "staging",
        None,
        Some("alice"),
        None,
    )
    .await;
    assert!(
        matches!(r, Err(Error::Refused(_))),
        "only one image was ever deployed"
    );
    let even_newer = env.push("1.3.0", "ci-bot", t0 + Duration::seconds(9)).await;
    env.drain().await;
    assert!(env.manifest("staging").contains(even_newer.digest.as_str()));
    let r = baton::stages::deploy::rollback(
        &env.local.pipeline,
        "web",
        "staging",
        None,
        Some("alice"),
        None,
    )
    .await
    .unwrap();
    assert_eq!(r.to, newer.reference());
    env.drain().await;
    assert!(env.manifest("staging").contains(newer.digest.as_str()));
    // status says what is true now: the run rolled back out is not live there
    let before = env.status(&even_newer).await;
    assert_eq!(before, "rolled back (staging)");
    assert_ne!(env.status(&newer).await, "rolled back (staging)");
    let live = baton::pipeline::deployments::live(&env.local.pipeline, "web", "staging")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (live.image.digest.as_str(), live.kind),
        (
            newer.digest.as_str(),
            baton::pipeline::deployments::DeployKind::Rollback
        )
    );
    // the rolled-back run's log records it, and the staging tag follows
    let last = env
        .events(&newer)
        .await
        .into_iter()
        .rfind(|e| e.event_type() == EventType::DeploySucceeded)
        .unwrap();
    let Payload::DeploySucceeded(d) = &last.payload else {
        unreachable!()
    };
    assert!(d.rollback);
    assert_eq!(
        env.local
            .pipeline
            .ports
            .registry
            .tag("localhost:5000", "demo/web", "staging")
            .await
            .unwrap(),
        Some(newer.digest.clone())
    );
    // rolling back never promotes onwards: production did not get a request from it
    let requests = env
        .events(&newer)
        .await
        .iter()
        .filter(|e| e.event_type() == EventType::ApprovalRequested)
        .count();
    assert_eq!(requests, 1);
    // rolled forward again to it: it is live there again, and no longer "rolled back"
    baton::stages::deploy::rollback(
        &env.local.pipeline,
        "web",
        "staging",
        Some(&even_newer.digest),
        Some("alice"),
        None,
    )
    .await
    .unwrap();
    env.drain().await;
    assert_ne!(env.status(&even_newer).await, "rolled back (staging)");
    assert_eq!(env.status(&newer).await, "rolled back (staging)");
}

#[tokio::test]
async fn a_restart_mid_run_loses_nothing() {
    let s = Setup::default();
    let env = setup(Setup::default());
    let img = env.push("1.0.0", "ci-bot", Utc::now()).await;
    let opts = DrainOptions {
        max_deliveries: Some(3),
        ..Default::default()
    };
    let rep = env.local.drain(&opts, |_| {}).await.unwrap();
    assert_eq!(rep.delivered, 3);
    assert!(env.local.pipeline.ports.bus.pending() > 0);
    // The process stops here: everything in memory is dropped; a new one starts.
    let Env { dir, local } = env;
    drop(local);
    let local = open(dir.path(), &s);
    local.drain(&DrainOptions::default(), |_| {}).await.unwrap();
    let run = baton::ids::run_id("web", &img.digest);
    let view = baton::pipeline::runs::view(&local.pipeline, "web", &run)
        .await
        .unwrap();
    assert_eq!(
        view.status,
        baton::pipeline::runs::RunStatus::AwaitingApproval("production".into())
    );
    assert_eq!(sequence(&view.events), FULL_SEQUENCE[..6]);
    baton::stages::approve::decide(
        &local.pipeline,
        decision(&run, "production", "alice", Verdict::Approve),
    )
    .await
    .unwrap();
    local.drain(&DrainOptions::default(), |_| {}).await.unwrap();
    let view = baton::pipeline::runs::view(&local.pipeline, "web", &run)
        .await
        .unwrap();
    assert_eq!(sequence(&view.events), FULL_SEQUENCE);
}

#[tokio::test]
async fn only_configured_repositories_and_tags_start_runs() {
    let env = setup(Setup::default());
    let p = &env.local.pipeline;
    let d = digest("other");
    let ingest = |repo: &str, tag: &str, id: &str| {
        let payload = dist_push(repo, tag, &d, "x", Utc::now(), id);
        async move {
            baton::stages::ingest::ingest(
                p,
                &baton::triggers::Trigger {
                    kind: baton::triggers::TriggerKind::Distribution,
                    received_at: Utc::now(),
                    payload,
                },
            )
            .await
        }
    };
    for (repo, tag, why) in [
        ("other/app", "1.0.0", "not configured"),
        ("demo/web", "latest", "tag policy"),
        ("demo/web", "0.9.0", "tag policy"),
    ] {
        let r = ingest(repo, tag, tag).await.unwrap();
        assert!(r.accepted.is_empty(), "{repo}:{tag}");
        assert!(
            r.ignored.iter().any(|i| i.contains(why)),
            "{repo}:{tag}: {:?}",
            r.ignored
        );
    }
    assert!(baton::pipeline::runs::list(p).await.unwrap().is_empty());
    // the same digest under two tags is one run; a registry retry is no second run
    let r1 = ingest("demo/web", "1.0.0", "d").await.unwrap();
    let r2 = ingest("demo/web", "1.0.1", "e").await.unwrap();
    let r3 = ingest("demo/web", "1.0.0", "d").await.unwrap();
    assert_eq!(r1.accepted[0].run, r2.accepted[0].run);
    assert!(!r1.accepted[0].duplicate && r2.accepted[0].duplicate && r3.accepted[0].duplicate);
    env.drain().await;
    assert_eq!(baton::pipeline::runs::list(p).await.unwrap().len(), 1);
    let events = baton::pipeline::runs::view(p, "web", &r1.accepted[0].run)
        .await
        .unwrap()
        .events;
    assert_eq!(
        events
            .iter()
            .filter(|e| e.event_type() == EventType::ImageBuilt)
            .count(),
        1
    );
    // malformed notifications are refused naming the field
    let e = baton::stages::ingest::ingest(
        p,
        &baton::triggers::Trigger {
            kind: baton::triggers::TriggerKind::Distribution,
            received_at: Utc::now(),
            payload: serde_json::json!({"events": [{"id": "x"}]}),
        },
    )
    .await
    .unwrap_err();
    assert!(e.to_string().contains("events[0]"), "{e}");
}

#[tokio::test]
async fn webhook_reactions_post_json_and_dead_letter_then_redrive() {
    use axum::{Json, Router, extract::State, http::StatusCode, routing::post};
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Seen {
        bodies: Arc<Mutex<Vec<serde_json::Value>>>,
        fail: Arc<Mutex<bool>>,
    }
    async fn hook(State(s): State<Seen>, Json(v): Json<serde_json::Value>) -> StatusCode {
        if *s.fail.lock().unwrap() {
            return StatusCode::SERVICE_UNAVAILABLE;
        }
        s.bodies.lock().unwrap().push(v);
        StatusCode::OK
    }
    let seen = Seen::default();
    *seen.fail.lock().unwrap() = true;
    let app = Router::new()
        .route("/hook", post(hook))
        .with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });

    let env = setup(Setup {
        test_cmd: r#"["sh", "-c", "exit 1"]"#.into(),
        reactions: format!(
            "  - name: on-failure\n    on: {{ type: [tests.failed, deploy.failed, stage.failed] }}\n    notify: {{ webhook: {{ url: \"http://{addr}/hook\" }} }}\n"
        ),
        ..Default::default()
    });
    let img = env.push("1.0.0", "ci-bot", Utc::now()).await;
    let rep = env
        .local
        .drain(&DrainOptions::default(), |_| {})
        .await
        .unwrap();
    assert_eq!(rep.dead, 1, "the failing webhook exhausts its 3 attempts");
    let dead = env.local.pipeline.ports.bus.dead_letters().await.unwrap();
    assert_eq!(dead[0].subscription, "notify.on-failure");
    assert!(
        dead[0].error.as_deref().unwrap().contains("503"),
        "{:?}",
        dead[0].error
    );
    assert!(
        !dead[0]
            .error
            .as_deref()
            .unwrap()
            .contains(&addr.to_string()),
        "the URL is a secret"
    );
    assert!(seen.bodies.lock().unwrap().is_empty());

    *seen.fail.lock().unwrap() = false;
    assert_eq!(env.local.pipeline.ports.bus.redrive(None).await.unwrap(), 1);
    env.drain().await;
    let bodies = seen.bodies.lock().unwrap().clone();
    assert_eq!(
        bodies.len(),
        1,
        "only tests.failed matches; image.built does not"
    );
    assert_eq!(bodies[0]["event"]["type"], "tests.failed");
    assert_eq!(bodies[0]["event"]["data"]["run"], env.run_of(&img).as_str());
    assert!(
        bodies[0]["text"]
            .as_str()
            .unwrap()
            .contains("tests.failed web")
    );
}

/// Retention removes the records of finished runs past `max_age`, and keeps the run
/// live in an environment and the app's newest; what is live and the deploy history
/// stay, so a rollback to a removed run's image still works. A dry run removes nothing.
#[tokio::test]
async fn retention_removes_old_finished_runs_and_keeps_live_and_newest() {
    let s = Setup {
        test_cmd: r#"["sh", "-c", "test \"$BATON_IMAGE_TAG\" != 1.3.0"]"#.into(),
        production: "auto".into(),
        ..Setup::default()
    };
    let env = setup_with(s, "retention: { max_age: 1h, keep_last: 1 }\n");
    let mut images = vec![];
    for tag in ["1.0.0", "1.1.0", "1.2.0", "1.3.0"] {
        images.push(env.push(tag, "ci-bot", Utc::now()).await);
        env.drain().await;
    }
    assert_eq!(env.status(&images[3]).await, "tests failed");
    assert!(
        env.manifest("production")
            .contains(&images[2].digest.to_string())
    );
    let runs = |e: &Env| {
        let p = e.root().join("state/store/runs/web");
        std::fs::read_dir(p).map_or(0, |d| d.count())
    };
    assert_eq!(runs(&env), 4);

    // Within max_age nothing goes; a dry run two hours later names the two old runs.
    let now = Utc::now();
    assert!(
        env.local
            .gc_at(now, false)
            .await
            .unwrap()
            .removed
            .is_empty()
    );
    let later = now + chrono::Duration::hours(2);
    // A deploy of ten days ago, alone in its day of production's history.
    use baton::ports::ObjectStore;
    let store = &env.local.pipeline.ports.store;
    let history = store
        .list(&baton::store::history_prefix("web", "production"))
        .await
        .unwrap();
    assert_eq!(history.len(), 3, "{history:?}");
    let first = store.get(&history[0]).await.unwrap().unwrap();
    let old_day = now - chrono::Duration::days(10);
    let old_key = baton::store::history_key("web", "production", old_day, "run-old");
    store
        .put(
            &old_key,
            first.bytes,
            baton::ports::Precondition::IfNoneMatch,
        )
        .await
        .unwrap();
    let old_dir = env.root().join(format!(
        "state/store/deployments/web/production/history/{}",
        old_day.format("%Y-%m-%d")
    ));
    assert!(old_dir.join(".segment").exists());
    let dry = env.local.gc_at(later, true).await.unwrap();
    // Production's deploys of 1.0.0 and ten days ago, staging's of 1.0.0: the newest two
    // of each environment stay (keep_last 1, but a rollback needs somewhere to go).
    assert_eq!(dry.history_removed, 3);
    let mut named: Vec<String> = dry.removed.iter().map(|d| d.run.to_string()).collect();
    named.sort();
    let mut want = vec![
        env.run_of(&images[0]).to_string(),
        env.run_of(&images[1]).to_string(),
    ];
    want.sort();
    assert_eq!(named, want);
    assert_eq!(runs(&env), 4, "a dry run removes nothing");

    let done = env.local.gc_at(later, false).await.unwrap();
    assert_eq!((done.removed.len(), done.kept), (2, 2));
    assert!(done.bytes_freed > 0);
    assert_eq!(done.history_removed, 3);
    assert!(
        !old_dir.exists(),
        "a day whose deploys all went is removed whole"
    );
    let pl = &env.local.pipeline;
    let digests = |env_name: &'static str| async move {
        baton::pipeline::deployments::history(pl, "web", env_name)
            .await
            .unwrap()
            .into_iter()
            .map(|h| h.image.digest)
            .collect::<Vec<_>>()
    };
    assert_eq!(
        digests("production").await,
        vec![images[1].digest.clone(), images[2].digest.clone()]
    );
    assert_eq!(
        digests("staging").await,
        vec![images[1].digest.clone(), images[2].digest.clone()]
    );
    // Nothing more to remove.
    assert_eq!(
        env.local.gc_at(later, false).await.unwrap().history_removed,
        0
    );
    assert_eq!(runs(&env), 2);
    let left: Vec<_> = baton::pipeline::runs::list(&env.local.pipeline)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.run)
        .collect();
    assert_eq!(left, vec![env.run_of(&images[3]), env.run_of(&images[2])]);

    // The history still knows 1.1.0: production goes back to it.
    let back = baton::stages::deploy::rollback(
        &env.local.pipeline,
        "web",
        "production",
        None,
        Some("alice"),
        None,
    )
    .await
    .unwrap();
    assert!(
        env.manifest("production")
            .contains(&images[1].digest.to_string()),
        "{back:?}"
    );
}

/// Runs are listed a page at a time from the run index, newest first, with a cursor to
/// the next page; an index that is missing (a state directory from before it) is
/// rebuilt from the run records; retention removes a run's index entry with it.
#[tokio::test]
async fn runs_are_paged_newest_first_from_the_index() {
    use baton::pipeline::runs::{index_keys_of, page};
    let s = Setup {
        production: "auto".into(),
        ..Setup::default()
    };
    let env = setup_with(s, "retention: { max_age: 1h, keep_last: 1 }\n");
    let mut runs = vec![];
    for tag in ["1.0.0", "1.1.0", "1.2.0", "1.3.0", "1.4.0"] {
        let img = env.push(tag, "ci-bot", Utc::now()).await;
        env.drain().await;
        runs.push(env.run_of(&img));
        tokio::time::sleep(std::time::Duration::from_millis(3)).await;
    }
    let p = &env.local.pipeline;
    let mut seen = vec![];
    let mut after = None;
    let mut pages = 0;
    loop {
        let pg = page(p, 2, after.as_deref()).await.unwrap();
        assert!(pg.runs.len() <= 2);
        seen.extend(pg.runs.iter().map(|r| r.run.clone()));
        pages += 1;
        match pg.next {
            Some(next) => {
                assert!(baton::pipeline::runs::is_cursor(&next), "{next}");
                after = Some(next);
            }
            None => break,
        }
    }
    let newest_first: Vec<_> = runs.iter().rev().cloned().collect();
    assert_eq!(seen, newest_first);
    assert_eq!(pages, 3);

    // An index lost (or never built) is rebuilt from the records.
    std::fs::remove_dir_all(env.root().join("state/store/index")).unwrap();
    let all = page(p, 50, None).await.unwrap();
    assert_eq!(
        all.runs.iter().map(|r| r.run.clone()).collect::<Vec<_>>(),
        newest_first
    );
    assert!(all.next.is_none());
    // A run indexed a second time under another time (a page read racing the first
    // ingest once did this) is listed once.
    baton::pipeline::runs::index(p, "web", &runs[4], Utc::now() - Duration::seconds(1))
        .await
        .unwrap();
    let again = page(p, 50, None).await.unwrap();
    assert_eq!(
        again.runs.iter().map(|r| r.run.clone()).collect::<Vec<_>>(),
        newest_first
    );

    // Retention takes the removed runs out of the index too.
    let done = env
        .local
        .gc_at(Utc::now() + Duration::hours(2), false)
        .await
        .unwrap();
    assert_eq!(done.removed.len(), 4, "all but 1.4.0, live and the newest");
    for d in &done.removed {
        assert!(
            index_keys_of(&p.ports.store, std::slice::from_ref(&d.run))
                .await
                .unwrap()
                .is_empty()
        );
    }
    let left = page(p, 50, None).await.unwrap();
    assert_eq!(
        left.runs.iter().map(|r| r.run.clone()).collect::<Vec<_>>(),
        vec![runs[4].clone()]
    );
}

/// A finished run's summary is kept in its index entry once the run is quiet, and pages
/// read it from there (not from the run's records) while the run's records are unchanged;
/// any write to the run makes it stale, and the page reads the records again.
#[tokio::test]
async fn pages_read_kept_summaries_until_the_run_changes() {
    use baton::pipeline::runs::{Summarizer, page, rolled_back_key};
    use baton::ports::{ObjectStore, Precondition};
    let s = Setup {
        production: "auto".into(),
        ..Setup::default()
    };
    let env = setup(s);
    let mut images = vec![];
    for tag in ["1.0.0", "1.1.0", "1.2.0"] {
        images.push(env.push(tag, "ci-bot", Utc::now()).await);
        env.drain().await;
        tokio::time::sleep(std::time::Duration::from_millis(3)).await;
    }
    let img = images[2].clone();
    let run = env.run_of(&img);
    let p = &env.local.pipeline;
    let store = &p.ports.store;
    let mut summarizer = Summarizer::default();
    // In flight (changed under 2 s ago): nothing kept yet.
    let first = summarizer.step(p, 10).await.unwrap();
    assert_eq!(
        (first.seen, first.wrote),
        (3, 0),
        "runs that just changed wait: {first:?} {:?}",
        store.list("index/").await.unwrap()
    );
    assert!(first.unsettled.is_some());
    tokio::time::sleep(std::time::Duration::from_millis(2_100)).await;
    // Walks of 2 entries: the first is cut, the next goes on from there. The walk packs
    // both runs with one sync and writes both index entries with another.
    let syncs = store.syncs();
    let a = summarizer.step(p, 2).await.unwrap();
    assert_eq!((a.seen, a.wrote), (2, 2));
    assert_eq!(
        store.syncs() - syncs,
        2,
        "a pack and the entries: one sync each"
    );
    assert!(a.cut.is_some());
    let b = summarizer.step(p, 2).await.unwrap();
    assert_eq!((b.seen, b.wrote, b.cut.clone()), (1, 1, None), "{b:?}");
    // Everything is summarized: a walk reads only the newest entry.
    let c = summarizer.step(p, 2).await.unwrap();
    assert_eq!((c.seen, c.wrote), (1, 0), "{c:?}");
    let key = store
        .list("index/runs/")
        .await
        .unwrap()
        .into_iter()
        .find(|k| k.ends_with(run.as_str()))
        .unwrap();
    let entry: serde_json::Value = serde_json::from_str(&env.object(&key).await).unwrap();
    assert_eq!(entry["summary"]["status"], "deployed", "{entry}");
    assert_eq!(
        page(p, 50, None).await.unwrap().runs[0].status.to_string(),
        "deployed"
    );

    // The page reads the kept summary: one changed in place is what it returns.
    let mut forged = entry.clone();
    forged["summary"]["status"] = "tests failed".into();
    store
        .put(&key, forged.to_string().into_bytes(), Precondition::None)
        .await
        .unwrap();
    let pg = page(p, 50, None).await.unwrap();
    assert_eq!(pg.runs[0].status.to_string(), "tests failed");

    // A write to the run (a rollback mark) makes the kept summary stale.
    let mark = serde_json::json!({
        "environment": "production",
        "at": Utc::now(),
        "to": img,
    });
    store
        .put(
            &rolled_back_key("web", run.as_str(), "production"),
            mark.to_string().into_bytes(),
            Precondition::None,
        )
        .await
        .unwrap();
    let pg = page(p, 50, None).await.unwrap();
    assert_eq!(pg.runs[0].status.to_string(), "rolled back (production)");
    let fresh = baton::pipeline::runs::summarize(p, None, None, 10)
        .await
        .unwrap();
    assert_eq!(fresh.wrote, 0, "just written: not quiet yet");
    tokio::time::sleep(std::time::Duration::from_millis(2_100)).await;
    assert_eq!(
        baton::pipeline::runs::summarize(p, None, None, 10)
            .await
            .unwrap()
            .wrote,
        1
    );
    let entry: serde_json::Value = serde_json::from_str(&env.object(&key).await).unwrap();
    assert_eq!(entry["summary"]["status"], "rolled back (production)");
    // Summarized once quiet, the run's segment is packed: its header, then one record
    // (length, checksum, body) whose body is a pack (kind 4).
    let seg = std::fs::read(
        env.root()
            .join(format!("state/store/runs/web/{run}/.segment")),
    )
    .unwrap();
    let len = u32::from_le_bytes(seg[8..12].try_into().unwrap()) as usize;
    assert_eq!((seg[16], seg.len()), (4, 16 + len), "one pack record");
    assert_eq!(
        page(p, 50, None).await.unwrap().runs[0].status.to_string(),
        "rolled back (production)"
    );
}

/// Open approvals are listed from per-day markers (what `GET /approvals` and the
/// dashboard read), not from every approval record ever written: a record without its
/// marker is not listed, a decided one drops out, and retention removes the markers of
/// days that have passed.
#[tokio::test]
async fn open_approvals_are_listed_from_markers_that_retention_clears() {
    use baton::pipeline::approvals::pending;
    let env = setup(Setup::default());
    let img = env.push("1.0.0", "ci-bot", Utc::now()).await;
    env.drain().await;
    assert_eq!(env.status(&img).await, "awaiting approval (production)");
    let run = env.run_of(&img);
    let p = &env.local.pipeline;
    let listed = pending(p).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].run, run);
    // The marker sits under the day the request expires (expires_after: 1h).
    let day = listed[0].expires_at.format("%Y-%m-%d").to_string();
    let marker = env.root().join(format!(
        "state/store/approvals/_open/{day}/web/{run}/production.json"
    ));
    assert!(marker.is_file(), "{}", marker.display());

    // A record nobody marked open (history) is not read.
    let old = env.root().join(format!(
        "state/store/approvals/web/{}/production.json",
        "0123456789abcdef"
    ));
    std::fs::create_dir_all(old.parent().unwrap()).unwrap();
    std::fs::write(&old, "not even JSON: pending() never reads it").unwrap();
    assert_eq!(pending(p).await.unwrap().len(), 1);

    // Decided: no longer pending, though its marker is there until its day passes.
    baton::stages::approve::decide(
        p,
        baton::stages::approve::Decision {
            run: run.to_string(),
            environment: "production".into(),
            by: baton::policy::approval::Approver::named("alice"),
            verdict: baton::policy::approval::Verdict::Approve,
            comment: None,
            release_hold: false,
        },
    )
    .await
    .unwrap();
    assert!(pending(p).await.unwrap().is_empty());
    assert!(marker.is_file());
    std::fs::remove_file(&old).unwrap();
    env.local
        .gc_at(Utc::now() + Duration::days(3), false)
        .await
        .unwrap();
    assert!(!marker.exists(), "a past day's markers are removed");
}
