//! Stopping the line: a rollback holds the environment until released; freezes set by
//! hand and freeze windows make deploys wait (approvals may still be given, rollbacks
//! still go), and waiting deploys go once the line opens. Deploys wait as queued
//! re-checks (here every 200 ms), never a sleeping stage.

use std::time::Duration;

use baton::adapters::embedded::DrainOptions;
use baton::config::Config;
use baton::pipeline::Settings;
use baton::pipeline::holds;
use baton::policy::approval::Verdict;
use baton::runtime::local::Local;
use chrono::Utc;

use crate::{Env, Setup, write_manifests};

/// The default setup with `windows` (YAML list entries) as global freeze windows;
/// waiting deploys look again every 200 ms.
fn setup_with(windows: &str) -> Env {
    setup_from(Setup::default(), windows)
}

fn setup_from(s: Setup, windows: &str) -> Env {
    let dir = tempfile::tempdir().unwrap();
    write_manifests(dir.path());
    std::fs::write(
        dir.path().join("baton.yaml"),
        s.config() + "freeze:\n  recheck: 200ms\n  windows:\n" + windows,
    )
    .unwrap();
    let config = Config::load(&dir.path().join("baton.yaml")).unwrap();
    let local = Local::open(config, &dir.path().join("state"), Settings::default()).unwrap();
    Env { dir, local }
}

/// Delivers what is due; a deploy waiting on the line is left parked.
async fn drain(env: &Env) {
    let opts = DrainOptions {
        park_after: Duration::from_millis(100),
        ..Default::default()
    };
    let rep = env.local.drain(&opts, |_| {}).await.unwrap();
    assert_eq!(rep.dead, 0);
}

/// Lets parked re-checks come due, then delivers them.
async fn recheck(env: &Env) {
    tokio::time::sleep(Duration::from_millis(300)).await;
    drain(env).await;
}

async fn approve(env: &Env, img: &baton::event::Image, who: &str) {
    approve_with(env, img, who, false).await;
}

async fn approve_with(
    env: &Env,
    img: &baton::event::Image,
    who: &str,
    release_hold: bool,
) -> baton::stages::approve::DecisionReport {
    baton::stages::approve::decide(
        &env.local.pipeline,
        baton::stages::approve::Decision {
            run: env.run_of(img).to_string(),
            environment: "production".into(),
            by: baton::policy::approval::Approver::named(who),
            verdict: Verdict::Approve,
            comment: None,
            release_hold,
        },
    )
    .await
    .unwrap()
}

/// The `deploy.waiting` events in a run's log: (environment, what stops it, reason).
fn waiting_events(view: &baton::pipeline::runs::RunView) -> Vec<(String, String, String)> {
    view.events
        .iter()
        .filter_map(|e| match &e.payload {
            baton::event::Payload::DeployWaiting(w) => Some((
                w.ctx.environment.clone().unwrap_or_default(),
                w.blocked_by.as_str().to_string(),
                w.reason.clone(),
            )),
            _ => None,
        })
        .collect()
}

fn note_of(view: &baton::pipeline::runs::RunView, env: &str) -> String {
    view.stages
        .iter()
        .find(|s| {
            s.stage == baton::pipeline::StageName::Deploy && s.environment.as_deref() == Some(env)
        })
        .and_then(|s| s.note.clone())
        .unwrap_or_default()
}

#[tokio::test]
async fn a_rollback_holds_the_environment_until_the_hold_is_released() {
    let env = setup_with("    []\n");
    let t0 = Utc::now();
    let v1 = env.push("1.0.0", "ci-bot", t0).await;
    drain(&env).await;
    let v2 = env
        .push("1.1.0", "ci-bot", t0 + chrono::Duration::seconds(5))
        .await;
    drain(&env).await;
    assert!(env.manifest("staging").contains(v2.digest.as_str()));
    let p = &env.local.pipeline;
    baton::stages::deploy::rollback(p, "web", "staging", None, Some("alice"), None)
        .await
        .unwrap();
    drain(&env).await;
    assert!(env.manifest("staging").contains(v1.digest.as_str()));
    assert_eq!(env.status(&v2).await, "rolled back (staging)");

    // A newer push: tested, but staging is held on 1.0.0.
    let v3 = env
        .push("1.2.0", "ci-bot", t0 + chrono::Duration::seconds(9))
        .await;
    drain(&env).await;
    recheck(&env).await;
    assert_eq!(env.status(&v3).await, "held (staging)");
    assert!(
        env.manifest("staging").contains(v1.digest.as_str()),
        "nothing replaced the held image"
    );
    let view = baton::pipeline::runs::view(p, "web", &env.run_of(&v3))
        .await
        .unwrap();
    let note = note_of(&view, "staging");
    assert!(
        note.contains("held on localhost:5000/demo/web:1.0.0")
            && note.contains("by alice")
            && note.contains("baton hold release web --env staging"),
        "{note}"
    );
    // The hold is on the bus too: one deploy.waiting however often it was checked.
    recheck(&env).await;
    let view = baton::pipeline::runs::view(p, "web", &env.run_of(&v3))
        .await
        .unwrap();
    let waiting = waiting_events(&view);
    assert_eq!(waiting.len(), 1, "{waiting:?}");
    assert_eq!(
        (waiting[0].0.as_str(), waiting[0].1.as_str()),
        ("staging", "hold")
    );
    assert!(waiting[0].2.contains("by alice"), "{waiting:?}");
    let hold = holds::active_hold(p, "web", "staging")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (
            hold.image.digest.as_str(),
            hold.from.as_ref().map(|i| i.digest.as_str())
        ),
        (v1.digest.as_str(), Some(v2.digest.as_str()))
    );

    // Released: the waiting deploy goes.
    let e = holds::release(p, "web", "production", "bob", None)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("not held"), "{e}");
    holds::release(p, "web", "staging", "bob", Some("fixed in 1.2.0"))
        .await
        .unwrap();
    recheck(&env).await;
    assert!(env.manifest("staging").contains(v3.digest.as_str()));
    assert_eq!(env.status(&v3).await, "awaiting approval (production)");
    let released = holds::holds(p).await.unwrap();
    assert_eq!(released.len(), 1);
    assert!(!released[0].active);
    assert_eq!(
        released[0].released.as_ref().map(|r| r.by.as_str()),
        Some("bob")
    );
}

#[tokio::test]
async fn a_freeze_stops_deploys_not_approvals_nor_rollbacks_and_unfreezing_lets_them_go() {
    let env = setup_with("    []\n");
    let p = &env.local.pipeline;
    let t0 = Utc::now();
    let e = holds::freeze(p, None, Some("qa"), "alice", "x")
        .await
        .unwrap_err();
    assert!(
        e.to_string().contains("no app has an environment \"qa\""),
        "{e}"
    );
    let e = holds::freeze(p, None, None, "alice", " ")
        .await
        .unwrap_err();
    assert!(e.to_string().contains("needs a reason"), "{e}");

    // Everything frozen: the first deploy waits.
    holds::freeze(p, None, None, "alice", "incident 42")
        .await
        .unwrap();
    let v1 = env.push("1.0.0", "ci-bot", t0).await;
    drain(&env).await;
    recheck(&env).await;
    assert_eq!(env.status(&v1).await, "frozen (staging)");
    let view = baton::pipeline::runs::view(p, "web", &env.run_of(&v1))
        .await
        .unwrap();
    let note = note_of(&view, "staging");
    assert!(
        note.contains("everything frozen by alice: incident 42") && note.contains("baton unfreeze"),
        "{note}"
    );
    recheck(&env).await;
    let view = baton::pipeline::runs::view(p, "web", &env.run_of(&v1))
        .await
        .unwrap();
    let waiting = waiting_events(&view);
    assert_eq!(
        waiting.len(),
        1,
        "one deploy.waiting for the freeze: {waiting:?}"
    );
    assert_eq!(
        (waiting[0].0.as_str(), waiting[0].1.as_str()),
        ("staging", "freeze")
    );
    assert!(waiting[0].2.contains("incident 42"), "{waiting:?}");
    let lifted = holds::unfreeze(p, None, None, "bob", Some("resolved"))
        .await
        .unwrap();
    assert_eq!(lifted.lifted.as_ref().map(|l| l.by.as_str()), Some("bob"));
    recheck(&env).await;
    assert!(env.manifest("staging").contains(v1.digest.as_str()));
    approve(&env, &v1, "alice").await;
    drain(&env).await;
    assert_eq!(env.status(&v1).await, "deployed");

    // Production frozen: staging still deploys, production may be approved but waits;
    // a rollback in staging still goes.
    holds::freeze(
        p,
        Some("web"),
        Some("production"),
        "carol",
        "release freeze",
    )
    .await
    .unwrap();
    let v2 = env
        .push("1.1.0", "ci-bot", t0 + chrono::Duration::seconds(5))
        .await;
    drain(&env).await;
    assert!(env.manifest("staging").contains(v2.digest.as_str()));
    approve(&env, &v2, "alice").await;
    drain(&env).await;
    recheck(&env).await;
    assert_eq!(env.status(&v2).await, "frozen (production)");
    let live = baton::pipeline::deployments::live(p, "web", "production")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        live.image.digest, v1.digest,
        "production keeps 1.0.0 while frozen"
    );
    holds::freeze(p, None, None, "carol", "everything, too")
        .await
        .unwrap();
    baton::stages::deploy::rollback(p, "web", "staging", None, Some("dave"), None)
        .await
        .unwrap();
    assert!(
        env.manifest("staging").contains(v1.digest.as_str()),
        "rollbacks are never blocked"
    );
    holds::unfreeze(p, None, None, "carol", None).await.unwrap();
    let e = holds::unfreeze(p, None, None, "carol", None)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("not frozen"), "{e}");
    holds::unfreeze(p, Some("web"), Some("production"), "carol", None)
        .await
        .unwrap();
    recheck(&env).await;
    let live = baton::pipeline::deployments::live(p, "web", "production")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        live.image.digest, v2.digest,
        "unfrozen: the approved deploy went"
    );
}

#[tokio::test]
async fn freeze_windows_from_the_configuration_make_deploys_wait() {
    // Open all the time: every minute, for an hour.
    let env = setup_with(
        "    - { name: change-freeze, kind: deny, cron: \"* * * * *\", duration: 1h, time_zone: Europe/Berlin, environments: [staging] }\n",
    );
    let v1 = env.push("1.0.0", "ci-bot", Utc::now()).await;
    drain(&env).await;
    recheck(&env).await;
    assert_eq!(env.status(&v1).await, "frozen (staging)");
    let view = baton::pipeline::runs::view(&env.local.pipeline, "web", &env.run_of(&v1))
        .await
        .unwrap();
    let note = note_of(&view, "staging");
    assert!(
        note.contains("freeze window change-freeze is open until"),
        "{note}"
    );

    // Allow windows: deploys only inside them (this one opens on 1 January only).
    let env =
        setup_with("    - { name: new-year, kind: allow, cron: \"0 0 1 1 *\", duration: 1m }\n");
    let v1 = env.push("1.0.0", "ci-bot", Utc::now()).await;
    drain(&env).await;
    recheck(&env).await;
    assert_eq!(env.status(&v1).await, "frozen (staging)");
    let view = baton::pipeline::runs::view(&env.local.pipeline, "web", &env.run_of(&v1))
        .await
        .unwrap();
    assert!(
        note_of(&view, "staging").contains("outside the allow windows (new-year); new-year opens")
    );

    // Misconfigured windows are refused at load, naming the field.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("baton.yaml"),
        Setup::default().config()
            + "freeze:\n  windows:\n    - { name: w, kind: deny, cron: \"0 18 * * FRI\", duration: 1h, environments: [qa] }\n",
    )
    .unwrap();
    let e = Config::load(&dir.path().join("baton.yaml"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("freeze.windows[0].environments: \"qa\" is no app's environment"),
        "{e}"
    );
}

/// `baton envs` / `GET /api/environments`: what is live where, by whose approval or
/// which rollback, what waits for approval, what stops the line, the last failure.
#[tokio::test]
async fn the_environment_view_says_what_is_live_where_and_what_waits() {
    let env = setup_with("    []\n");
    let p = &env.local.pipeline;
    let t0 = Utc::now();
    let v1 = env.push("1.0.0", "ci-bot", t0).await;
    drain(&env).await;
    approve(&env, &v1, "alice").await;
    drain(&env).await;
    let v2 = env
        .push("1.1.0", "ci-bot", t0 + chrono::Duration::seconds(5))
        .await;
    drain(&env).await;
    holds::freeze(p, None, Some("production"), "carol", "quarter close")
        .await
        .unwrap();
    baton::stages::deploy::rollback(p, "web", "staging", None, Some("dave"), None)
        .await
        .unwrap();

    let view = baton::pipeline::environments::view(p).await.unwrap();
    assert_eq!(view.len(), 2);
    let (staging, production) = (&view[0], &view[1]);
    assert_eq!(
        (staging.app.as_str(), staging.environment.as_str()),
        ("web", "staging")
    );
    let live = staging.live.as_ref().unwrap();
    assert_eq!(live.image.digest, v1.digest, "rolled back to 1.0.0");
    assert_eq!(
        live.kind,
        baton::pipeline::deployments::DeployKind::Rollback
    );
    assert_eq!(
        staging.held.as_ref().map(|h| h.by.as_deref()),
        Some(Some("dave"))
    );
    assert!(
        staging.stopped.as_deref().unwrap().contains("held on"),
        "{:?}",
        staging.stopped
    );
    let live = production.live.as_ref().unwrap();
    assert_eq!(
        (live.image.digest.as_str(), live.approved_by.as_slice()),
        (v1.digest.as_str(), &["alice".to_string()][..])
    );
    assert_eq!(production.pending.len(), 1);
    assert_eq!(
        (
            production.pending[0].image.digest.as_str(),
            production.pending[0].approvals,
            production.pending[0].required
        ),
        (v2.digest.as_str(), 0, 1)
    );
    assert_eq!(
        production.stopped.as_deref(),
        Some("production of every app frozen by carol: quarter close")
    );
    assert!(production.last_failure.is_none() && staging.last_failure.is_none());

    // A failed deploy is the environment's last failure.
    let broken = {
        let dir = tempfile::tempdir().unwrap();
        write_manifests(dir.path());
        let s = Setup {
            staging_dir: "manifests/missing".into(),
            ..Setup::default()
        };
        std::fs::write(dir.path().join("baton.yaml"), s.config()).unwrap();
        let config = Config::load(&dir.path().join("baton.yaml")).unwrap();
        let local = Local::open(config, &dir.path().join("state"), Settings::default()).unwrap();
        Env { dir, local }
    };
    let img = broken.push("1.0.0", "ci-bot", Utc::now()).await;
    drain(&broken).await;
    let view = baton::pipeline::environments::view(&broken.local.pipeline)
        .await
        .unwrap();
    let f = view[0]
        .last_failure
        .as_ref()
        .expect("staging's failed deploy");
    assert_eq!(f.run, broken.run_of(&img));
    assert!(f.status.to_string().contains("staging"), "{}", f.status);
    assert!(view[0].live.is_none());
}

/// `baton dora` reads its facts from the run records: pushes, deploys, rollbacks.
#[tokio::test]
async fn dora_figures_come_from_the_run_records() {
    let env = setup_with("    []\n");
    let p = &env.local.pipeline;
    let t0 = Utc::now() - chrono::Duration::hours(2);
    let v1 = env.push("1.0.0", "ci-bot", t0).await;
    drain(&env).await;
    approve(&env, &v1, "alice").await;
    drain(&env).await;
    env.push("1.1.0", "ci-bot", t0 + chrono::Duration::hours(1))
        .await;
    drain(&env).await;
    baton::stages::deploy::rollback(p, "web", "staging", None, Some("dave"), None)
        .await
        .unwrap();

    let facts = baton::pipeline::dora::collect(p).await.unwrap();
    assert_eq!(facts.len(), 2);
    let envs = vec![
        ("web".to_string(), "staging".to_string()),
        ("web".to_string(), "production".to_string()),
    ];
    let now = Utc::now();
    let f = baton::pipeline::dora::compute(
        &facts,
        &envs,
        now - chrono::Duration::days(1),
        now + chrono::Duration::seconds(1),
    );
    let (staging, production) = (&f[0], &f[1]);
    assert_eq!(staging.deployments, 2, "the rollback is not a deployment");
    assert_eq!(
        (staging.change_failures, staging.change_failure_rate),
        (1, Some(0.5)),
        "1.1.0 was rolled back"
    );
    let lead = staging.lead_time_p50.unwrap();
    assert!(
        (3600.0..3660.0).contains(&lead),
        "1.1.0 pushed an hour ago: {lead}"
    );
    assert!(staging.time_to_restore_p50.unwrap() < 60.0);
    assert_eq!((production.deployments, production.change_failures), (1, 0));
    let lead = production.lead_time_p50.unwrap();
    assert!(
        (7200.0..7260.0).contains(&lead),
        "1.0.0 pushed two hours ago: {lead}"
    );
}

/// An approval may say it releases the hold: the approved run deploys to the held
/// environment, and the hold's record says whose approval released it.
#[tokio::test]
async fn an_approval_that_says_so_releases_a_hold() {
    let env = setup_from(
        Setup {
            production: "{ approvers: [alice, bob], required: 2, expires_after: 1h }".into(),
            ..Setup::default()
        },
        "    []\n",
    );
    let p = &env.local.pipeline;
    let t0 = Utc::now();
    let v1 = env.push("1.0.0", "ci-bot", t0).await;
    drain(&env).await;
    approve(&env, &v1, "alice").await;
    approve(&env, &v1, "bob").await;
    drain(&env).await;
    let v2 = env
        .push("1.1.0", "ci-bot", t0 + chrono::Duration::seconds(5))
        .await;
    drain(&env).await;
    approve(&env, &v2, "alice").await;
    approve(&env, &v2, "bob").await;
    drain(&env).await;
    baton::stages::deploy::rollback(p, "web", "production", None, Some("dave"), None)
        .await
        .unwrap();
    let v3 = env
        .push("1.2.0", "ci-bot", t0 + chrono::Duration::seconds(9))
        .await;
    drain(&env).await;
    // An ordinary approval releases nothing.
    let r = approve_with(&env, &v3, "alice", false).await;
    assert!(!r.hold_released);
    assert!(
        holds::active_hold(p, "web", "production")
            .await
            .unwrap()
            .is_some()
    );
    // The second approval says so: granted and released; the run deploys.
    let r = approve_with(&env, &v3, "bob", true).await;
    assert!(r.hold_released);
    drain(&env).await;
    recheck(&env).await;
    let live = baton::pipeline::deployments::live(p, "web", "production")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(live.image.digest, v3.digest);
    let h = &holds::holds(p).await.unwrap()[0];
    let released = h.released.as_ref().unwrap();
    assert_eq!(released.by, "bob");
    assert!(
        released
            .reason
            .as_deref()
            .unwrap()
            .contains("approval of run"),
        "{released:?}"
    );
}

/// Break-glass: one person asks with a reason, a second approver of the environment
/// approves; that run deploys through the freeze, others still wait; the asker may not
/// approve their own; a hold is not overridden.
#[tokio::test]
async fn a_break_glass_needs_a_second_approver_and_lets_one_run_through_a_freeze() {
    let env = setup_from(
        Setup {
            production: "{ approvers: [alice, bob], required: 1, expires_after: 1h }".into(),
            ..Setup::default()
        },
        "    []\n",
    );
    let p = &env.local.pipeline;
    holds::freeze(p, None, Some("production"), "carol", "incident 9")
        .await
        .unwrap();
    let v1 = env.push("1.0.0", "ci-bot", Utc::now()).await;
    drain(&env).await;
    approve(&env, &v1, "alice").await;
    drain(&env).await;
    recheck(&env).await;
    assert_eq!(env.status(&v1).await, "frozen (production)");
    let run = env.run_of(&v1);

    let e = holds::request_override(p, "web", &run, "production", "alice", "")
        .await
        .unwrap_err();
    assert!(e.to_string().contains("needs a reason"), "{e}");
    holds::request_override(
        p,
        "web",
        &run,
        "production",
        "alice",
        "hotfix for incident 9",
    )
    .await
    .unwrap();
    let e = holds::request_override(p, "web", &run, "production", "bob", "again")
        .await
        .unwrap_err();
    assert!(e.to_string().contains("already requested"), "{e}");
    let e = holds::approve_override(p, "web", run.as_str(), "production", "alice")
        .await
        .unwrap_err();
    assert!(
        e.to_string().contains("a second person must approve"),
        "{e}"
    );
    let e = holds::approve_override(p, "web", run.as_str(), "production", "mallory")
        .await
        .unwrap_err();
    assert!(
        e.to_string().contains("not an approver of production"),
        "{e}"
    );
    recheck(&env).await;
    assert_eq!(
        env.status(&v1).await,
        "frozen (production)",
        "asked, not approved"
    );
    let r = holds::approve_override(p, "web", run.as_str(), "production", "bob")
        .await
        .unwrap();
    assert_eq!(r.approved_by.as_deref(), Some("bob"));
    recheck(&env).await;
    assert_eq!(env.status(&v1).await, "deployed", "through the freeze");
    assert!(
        !holds::active_freezes(p, "web", "production")
            .await
            .unwrap()
            .is_empty(),
        "still frozen"
    );

    // Another run still waits.
    let v2 = env.push("1.1.0", "ci-bot", Utc::now()).await;
    drain(&env).await;
    approve(&env, &v2, "alice").await;
    drain(&env).await;
    recheck(&env).await;
    assert_eq!(env.status(&v2).await, "frozen (production)");
}
