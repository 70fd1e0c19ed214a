//! Verify after deploy: an HTTP service started here and Prometheus (Debian's package)
//! scraping an exporter started here. A healthy service is promoted after the soak and
//! opens the next environment; one that turns unhealthy during the soak, or a query
//! above its threshold, fails the verification and the previous image goes back through
//! the deploy target (manifests here). Duplicate deliveries of the new events change
//! nothing; a `verification.failed` the verify stage did not record rolls nothing back.

use std::sync::Arc;
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use baton::adapters::embedded::DrainOptions;
use baton::config::Config;
use baton::event::{Event, EventType, Image, Payload};
use baton::pipeline::Settings;
use baton::pipeline::StageName;
use baton::pipeline::harness::Mode;
use baton::pipeline::stage::Input;
use baton::runtime::local::Local;
use chrono::Utc;

use crate::{Env, Setup, write_manifests};

/// A service whose health status and exported error ratio the test sets.
#[derive(Clone)]
pub(crate) struct Service {
    status: Arc<AtomicU16>,
    ratio: Arc<AtomicU64>,
    pub(crate) port: u16,
}

impl Service {
    pub(crate) async fn start() -> Service {
        let status = Arc::new(AtomicU16::new(200));
        let ratio = Arc::new(AtomicU64::new(0.01f64.to_bits()));
        let (s, r) = (status.clone(), ratio.clone());
        let app = axum::Router::new()
            .route(
                "/healthz",
                axum::routing::get(move || {
                    let s = s.clone();
                    async move {
                        let code = s.load(Ordering::SeqCst);
                        (
                            axum::http::StatusCode::from_u16(code).unwrap(),
                            if code == 200 { "ok" } else { "unhealthy" },
                        )
                    }
                }),
            )
            .route(
                "/metrics",
                axum::routing::get(move || {
                    let r = r.clone();
                    async move {
                        format!(
                            "# TYPE app_error_ratio gauge\napp_error_ratio {}\n",
                            f64::from_bits(r.load(Ordering::SeqCst))
                        )
                    }
                }),
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Service {
            status,
            ratio,
            port,
        }
    }

    pub(crate) fn set_status(&self, code: u16) {
        self.status.store(code, Ordering::SeqCst);
    }

    fn set_ratio(&self, v: f64) {
        self.ratio.store(v.to_bits(), Ordering::SeqCst);
    }
}

/// Both environments auto-approved; staging verifies with `verify` (YAML under
/// `verify:`, indented for it).
fn setup(verify: &str) -> Env {
    let s = Setup {
        production: "auto".into(),
        ..Setup::default()
    };
    let cfg = s.config().replacen(
        "      - name: staging\n        approval: auto\n",
        &format!("      - name: staging\n        approval: auto\n        verify:\n{verify}"),
        1,
    );
    assert!(cfg.contains("verify:"));
    let dir = tempfile::tempdir().unwrap();
    write_manifests(dir.path());
    std::fs::write(dir.path().join("baton.yaml"), cfg).unwrap();
    let config = Config::load(&dir.path().join("baton.yaml")).unwrap();
    let local = Local::open(config, &dir.path().join("state"), Settings::default()).unwrap();
    Env { dir, local }
}

/// Delivers what is due, again and again, until the run of `img` has status `want`.
pub(crate) async fn until(env: &Env, img: &Image, want: &str) {
    let start = Instant::now();
    let opts = DrainOptions {
        park_after: Duration::from_millis(50),
        ..Default::default()
    };
    loop {
        let rep = env.local.drain(&opts, |_| {}).await.unwrap();
        assert_eq!(rep.dead, 0, "nothing dead-lettered");
        let now = env.status(img).await;
        if now == want {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "run of {} is {now:?}, never {want:?}; events: {:#?}",
            img.tag,
            env.events(img)
                .await
                .iter()
                .map(Event::summary)
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn of_type(events: &[Event], ty: EventType) -> Vec<&Event> {
    events.iter().filter(|e| e.event_type() == ty).collect()
}

#[tokio::test]
async fn a_service_unhealthy_during_the_soak_is_rolled_back_and_a_healthy_one_promoted() {
    let svc = Service::start().await;
    let env = setup(&format!(
        "          soak: 1s\n          checks:\n            - name: health\n              http: {{ url: \"http://127.0.0.1:{}/healthz\", body: \"^ok$\", interval: 100ms, successes: 2 }}\n",
        svc.port
    ));
    let t0 = Utc::now();
    let p = &env.local.pipeline;

    // Healthy: verified through the soak, then promoted and production deployed.
    let v1 = env.push("1.0.0", "ci-bot", t0).await;
    until(&env, &v1, "deployed").await;
    let events = env.events(&v1).await;
    let passed = of_type(&events, EventType::VerificationPassed);
    assert_eq!(passed.len(), 1, "one verification.passed");
    let Payload::VerificationPassed(report) = &passed[0].payload else {
        unreachable!()
    };
    assert_eq!(report.ctx.environment.as_deref(), Some("staging"));
    assert!(report.duration_ms >= 1000, "through the soak: {report:?}");
    assert!(report.checks[0].passed && report.checks[0].runs >= 2);
    assert!(
        report.checks[0]
            .evidence
            .iter()
            .all(|e| e.contains("200 from http://127.0.0.1")),
        "{report:?}"
    );
    // Promote and production's gate came after the verification, not the deploy.
    let pos = |ty: EventType, env_name: &str| {
        events
            .iter()
            .position(|e| e.event_type() == ty && e.ctx().environment.as_deref() == Some(env_name))
            .unwrap_or_else(|| panic!("no {ty} in {env_name}"))
    };
    assert!(
        pos(EventType::ImagePromoted, "staging") > pos(EventType::VerificationPassed, "staging")
    );
    assert!(
        pos(EventType::ApprovalGranted, "production")
            > pos(EventType::VerificationPassed, "staging")
    );
    assert!(env.manifest("production").contains(v1.digest.as_str()));

    // Unhealthy during the soak: verification fails, staging goes back to 1.0.0, and
    // production never sees 1.1.0.
    let v2 = env
        .push("1.1.0", "ci-bot", t0 + chrono::Duration::seconds(5))
        .await;
    until(&env, &v2, "verifying (staging)").await;
    assert!(env.manifest("staging").contains(v2.digest.as_str()));
    svc.set_status(503);
    until(&env, &v2, "verification failed (staging, rolled back)").await;
    assert!(
        env.manifest("staging").contains(v1.digest.as_str()),
        "1.0.0 is back in staging"
    );
    assert!(env.manifest("production").contains(v1.digest.as_str()));
    let events = env.events(&v2).await;
    let failed = of_type(&events, EventType::VerificationFailed);
    assert_eq!(failed.len(), 1);
    let Payload::VerificationFailed(report) = &failed[0].payload else {
        unreachable!()
    };
    assert!(report.rollback);
    assert!(
        report.summary.contains("health") && report.summary.contains("503"),
        "{}",
        report.summary
    );
    assert!(
        of_type(&events, EventType::ImagePromoted)
            .iter()
            .all(|e| e.ctx().environment.as_deref() != Some("staging")),
        "1.1.0 never promoted"
    );
    assert!(
        of_type(&events, EventType::ApprovalGranted)
            .iter()
            .all(|e| e.ctx().environment.as_deref() != Some("production")),
        "production's gate stayed shut"
    );
    // The rollback is in the log of the run put back, as a rollback deploy.
    let back = env.events(&v1).await;
    assert!(back.iter().any(|e| matches!(&e.payload,
        Payload::DeploySucceeded(d) if d.rollback && d.detail.contains("failed verification"))));
    let live = baton::pipeline::deployments::live(p, "web", "staging")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(live.image.digest, v1.digest);

    // Duplicates of the new events: no second rollback, no second promotion.
    let history = baton::pipeline::deployments::history(p, "web", "staging")
        .await
        .unwrap()
        .len();
    let again = baton::stages::handle(
        p,
        StageName::Deploy,
        Input::Event(failed[0].clone()),
        Mode::Deliver,
    )
    .await
    .unwrap();
    assert!(again.duplicate && again.outputs.is_empty(), "{again:?}");
    let v1_passed = of_type(&env.events(&v1).await, EventType::VerificationPassed)[0].clone();
    let again = baton::stages::handle(
        p,
        StageName::Promote,
        Input::Event(v1_passed),
        Mode::Deliver,
    )
    .await
    .unwrap();
    assert!(again.duplicate && again.outputs.is_empty(), "{again:?}");
    assert_eq!(
        baton::pipeline::deployments::history(p, "web", "staging")
            .await
            .unwrap()
            .len(),
        history
    );

    // Forged: any role may publish a verification.failed; deploy acts only on the one
    // the verify stage recorded.
    let mut forged = failed[0].clone();
    forged.id = "forged-1".into();
    let Payload::VerificationFailed(f) = &mut forged.payload else {
        unreachable!()
    };
    f.ctx = v1_ctx(&env, &v1).await;
    let _ = baton::stages::handle(p, StageName::Deploy, Input::Event(forged), Mode::Deliver).await;
    let view = baton::pipeline::runs::view(p, "web", &env.run_of(&v1))
        .await
        .unwrap();
    assert!(
        view.stages.iter().any(|s| s.stage == StageName::Deploy
            && s.error
                .as_ref()
                .is_some_and(|e| e.message.contains("rollback refused"))),
        "a forged verification.failed is refused: {:#?}",
        view.stages
    );
    assert!(
        env.manifest("staging").contains(v1.digest.as_str()),
        "nothing changed"
    );
}

/// The run context of `img` in staging (what a forger would copy).
async fn v1_ctx(env: &Env, img: &Image) -> baton::event::RunContext {
    env.events(img)
        .await
        .into_iter()
        .find(|e| e.event_type() == EventType::DeploySucceeded)
        .unwrap()
        .ctx()
        .clone()
}

#[tokio::test]
async fn prometheus_queries_pass_below_the_threshold_and_fail_above_it_or_without_data() {
    baton_testkit::require("prometheus");
    let svc = Service::start().await;
    let dir = tempfile::tempdir().unwrap();
    let prom =
        baton_testkit::prometheus::start(dir.path(), &[format!("127.0.0.1:{}", svc.port)]).await;
    prom.wait_for_data("app_error_ratio").await;
    let check = |query: &str| {
        format!(
            "          checks:\n            - name: error-rate\n              prometheus: {{ url: \"{}\", query: '{query}', max: 0.05, interval: 200ms }}\n",
            prom.url()
        )
    };
    let env = setup(&check("max(app_error_ratio)"));
    let t0 = Utc::now();
    let v1 = env.push("1.0.0", "ci-bot", t0).await;
    until(&env, &v1, "deployed").await;
    let events = env.events(&v1).await;
    let Payload::VerificationPassed(r) =
        &of_type(&events, EventType::VerificationPassed)[0].payload
    else {
        unreachable!()
    };
    assert!(
        r.checks[0].evidence[0].contains("value 0.01 within bounds"),
        "{r:?}"
    );

    // Above the threshold: failed, with the value as evidence, and rolled back.
    svc.set_ratio(0.2);
    prom.wait_for_data("app_error_ratio > 0.1").await;
    let v2 = env
        .push("1.1.0", "ci-bot", t0 + chrono::Duration::seconds(5))
        .await;
    until(&env, &v2, "verification failed (staging, rolled back)").await;
    let events = env.events(&v2).await;
    let Payload::VerificationFailed(r) =
        &of_type(&events, EventType::VerificationFailed)[0].payload
    else {
        unreachable!()
    };
    assert!(r.summary.contains("value 0.2 > max 0.05"), "{}", r.summary);
    assert!(env.manifest("staging").contains(v1.digest.as_str()));

    // No data is a failure (the first image: nothing to go back to).
    let env = setup(&check("app_requests_that_do_not_exist_total"));
    let v1 = env.push("1.0.0", "ci-bot", t0).await;
    until(&env, &v1, "verification failed (staging)").await;
    let events = env.events(&v1).await;
    let Payload::VerificationFailed(r) =
        &of_type(&events, EventType::VerificationFailed)[0].payload
    else {
        unreachable!()
    };
    assert!(r.summary.contains("no data"), "{}", r.summary);
    assert!(
        env.manifest("staging").contains(v1.digest.as_str()),
        "nothing to go back to"
    );
}

#[tokio::test]
async fn a_verification_that_never_completes_fails_at_its_timeout() {
    let svc = Service::start().await;
    let env = setup(&format!(
        "          timeout: 1s\n          checks:\n            - http: {{ url: \"http://127.0.0.1:{}/healthz\", interval: 100ms, successes: 1000 }}\n",
        svc.port
    ));
    let v1 = env.push("1.0.0", "ci-bot", Utc::now()).await;
    until(&env, &v1, "verification failed (staging)").await;
    let events = env.events(&v1).await;
    let Payload::VerificationFailed(r) =
        &of_type(&events, EventType::VerificationFailed)[0].payload
    else {
        unreachable!()
    };
    assert!(
        r.summary.contains("not passed within 1s") && r.summary.contains("http still pending"),
        "{}",
        r.summary
    );
    assert!(r.checks[0].runs >= 2 && r.checks[0].failures == 0, "{r:?}");
}

#[test]
fn misconfigured_checks_are_refused_at_load_naming_the_field() {
    let with = |verify: &str| {
        let cfg = Setup::default().config().replacen(
            "      - name: staging\n        approval: auto\n",
            &format!("      - name: staging\n        approval: auto\n        verify:\n{verify}"),
            1,
        );
        match Config::from_yaml(&cfg, std::path::Path::new("/tmp"), "baton.yaml") {
            Ok(_) => String::new(),
            Err(e) => e.to_string(),
        }
    };
    let at = "apps[0].environments[0].verify";
    for (verify, want) in [
        (
            "          checks: []\n",
            format!("{at}.checks: list at least one check"),
        ),
        (
            "          checks:\n            - name: x\n",
            format!("{at}.checks[0]: give one of http, prometheus"),
        ),
        (
            "          checks:\n            - http: { url: \"http://a\" }\n              command: { run: [\"true\"] }\n",
            format!("{at}.checks[0]: one kind per check, not http and command"),
        ),
        (
            "          checks:\n            - http: { url: \"ftp://a\" }\n",
            "must be an http(s) URL".to_string(),
        ),
        (
            "          checks:\n            - prometheus: { url: \"http://p\", query: up }\n",
            format!("{at}.checks[0].prometheus: give max (fail above) or min"),
        ),
        (
            "          checks:\n            - prometheus: { url: \"http://p\", query: up, min: 2, max: 1 }\n",
            format!("{at}.checks[0].prometheus: min 2 is above max 1"),
        ),
        (
            "          checks:\n            - http: { url: \"http://a\", body: \"(\" }\n",
            format!("{at}.checks[0].http.body: not a pattern"),
        ),
        (
            "          soak: 10m\n          timeout: 5m\n          checks:\n            - http: { url: \"http://a\" }\n",
            format!("{at}.timeout: 5m must be longer than the soak (10m)"),
        ),
        (
            "          checks:\n            - http: { url: \"http://a\" }\n            - http: { url: \"http://b\" }\n              name: http-1\n",
            format!("{at}.checks[1].name: \"http-1\" is used by another check"),
        ),
    ] {
        let err = with(verify);
        assert!(err.contains(&want), "{verify}: want {want:?} in {err:?}");
    }
    assert_eq!(
        with("          checks:\n            - http: { url: \"http://a\" }\n"),
        "",
        "a minimal check is fine"
    );
}
