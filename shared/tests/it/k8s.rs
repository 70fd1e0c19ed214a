//! The Kubernetes adapters against a real control plane (`baton_testkit::k8s`: etcd,
//! kube-apiserver with RBAC, the controller manager, the scheduler and kwok's simulated
//! node), started once for this test process. Baton reaches it as the stages do in
//! production: the deploy stage with the `baton-deploy` identity, the test stage with
//! `baton-test`, each bound only by the RBAC of `infra/k8s/` applied into the test's own
//! namespaces; rollouts are the real Deployment, StatefulSet and DaemonSet controllers'
//! and Jobs the real Job controller's, with pods that kwok makes ready, failed or stuck
//! (`testkit/src/k8s/kwok-stages.yaml`).

use std::time::{Duration, Instant};

use baton::adapters::embedded::DrainOptions;
use baton::config::Config;
use baton::event::{EventType, Image, Payload};
use baton::pipeline::Settings;
use baton::ports::TestPorts;
use baton::runtime::local::Local;
use baton::triggers::{Trigger, TriggerKind};
use baton_testkit::k8s::{ADMIN, ControlPlane, DEPLOY, TEST, VERIFY};
use chrono::Utc;
use serde_json::{Value, json};

use crate::{Env, Repeat, sequence};

fn cluster() -> &'static ControlPlane {
    baton_testkit::k8s::shared()
}

const DEPLOY_RBAC: &str = include_str!("../../../infra/k8s/deploy-rbac.yaml");
const TEST_RBAC: &str = include_str!("../../../infra/k8s/test-rbac.yaml");
const VERIFY_RBAC: &str = include_str!("../../../infra/k8s/verify-rbac.yaml");

/// What one test runs: Baton's configuration over its own namespaces.
struct Case {
    repo: &'static str,
    /// Namespace of the test Jobs (infra/k8s/test-rbac.yaml applied).
    tests: String,
    /// Namespace of the workloads (infra/k8s/deploy-rbac.yaml applied).
    shop: String,
    kind: &'static str,
    workload: &'static str,
    container: &'static str,
    job_env: &'static str,
    deadline: &'static str,
}

impl Case {
    /// Two fresh namespaces with the RBAC of infra/k8s in them, and a workload `web`
    /// of `kind` (container `app` beside a `sidecar`) running `image`, rolled out.
    async fn new(kind: &'static str, image: &str) -> Case {
        let cp = cluster();
        let (tests, shop) = (cp.namespace("tests").await, cp.namespace("shop").await);
        let admin = cp.api(ADMIN);
        admin.apply_yaml(TEST_RBAC, &tests).await;
        let plural = format!("{}s", kind.to_lowercase());
        admin
            .apply_yaml(
                &DEPLOY_RBAC.replace("\"deployments\"", &format!("\"{plural}\"")),
                &shop,
            )
            .await;
        create_workload(&shop, kind, "web", image).await;
        Case {
            repo: "demo/web",
            tests,
            shop,
            kind,
            workload: "web",
            container: "app",
            job_env: "{}",
            deadline: "1m",
        }
    }

    fn config(&self) -> String {
        let kubeconfig = cluster().kubeconfig.display();
        format!(
            r#"
clusters:
  - name: deploy
    kubeconfig: {{ path: {kubeconfig}, context: {DEPLOY} }}
  - name: tests
    kubeconfig: {{ path: {kubeconfig}, context: {TEST} }}
apps:
  - name: web
    registry: localhost:5000
    repository: {repo}
    tags: {{ semver: ">=1.0.0" }}
    test:
      kubernetes_job:
        cluster: tests
        namespace: {tests}
        command: ["/bin/run-tests"]
        args: ["--suite", "smoke"]
        env: {job_env}
        resources: {{ requests: {{ cpu: 100m, memory: 128Mi }}, limits: {{ memory: 256Mi }} }}
        deadline: {deadline}
        ttl: 10m
        poll: 200ms
    environments:
      - name: staging
        approval: auto
        promote: false
        deploy:
          kubernetes:
            cluster: deploy
            namespace: {shop}
            workloads: [{{ kind: {kind}, name: {workload}, container: {container} }}]
            timeout: 2m
            poll: 200ms
bus: {{ max_attempts: 3, initial_backoff: 5ms, max_backoff: 20ms }}
"#,
            repo = self.repo,
            tests = self.tests,
            shop = self.shop,
            kind = self.kind,
            workload = self.workload,
            container = self.container,
            job_env = self.job_env,
            deadline = self.deadline,
        )
    }

    fn env(&self) -> Env {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("baton.yaml"), self.config()).unwrap();
        let config = Config::load(&dir.path().join("baton.yaml")).unwrap();
        let local = Local::open(config, &dir.path().join("state"), Settings::default()).unwrap();
        Env { dir, local }
    }

    fn path(&self) -> String {
        workload_path(&self.shop, self.kind, self.workload)
    }

    async fn object(&self) -> Value {
        cluster().api(ADMIN).object(&self.path()).await
    }
}

fn workload_path(ns: &str, kind: &str, name: &str) -> String {
    format!(
        "/apis/apps/v1/namespaces/{ns}/{}s/{name}",
        kind.to_lowercase()
    )
}

/// Creates workload `name` of `kind` in `ns` (as the administrator) and waits until it
/// is rolled out.
async fn create_workload(ns: &str, kind: &str, name: &str, image: &str) {
    let mut spec = json!({
        "selector": {"matchLabels": {"app": name}},
        "template": {"metadata": {"labels": {"app": name}},
                     "spec": {"containers": [{"name": "sidecar", "image": "registry.local/proxy:1"},
                                             {"name": "app", "image": image}]}}
    });
    match kind {
        "Deployment" => {
            spec["replicas"] = json!(3);
            spec["progressDeadlineSeconds"] = json!(4);
        }
        "StatefulSet" => {
            spec["replicas"] = json!(2);
            spec["serviceName"] = json!(name);
        }
        _ => {}
    }
    let obj =
        json!({"apiVersion": "apps/v1", "kind": kind, "metadata": {"name": name}, "spec": spec});
    cluster()
        .api(ADMIN)
        .apply_yaml(&serde_json::to_string(&obj).unwrap(), ns)
        .await;
    let path = workload_path(ns, kind, name);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let w = cluster().api(ADMIN).object(&path).await;
        if rolled_out(&w) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{kind}/{name} in {ns} not rolled out within 60 s: {} (component logs in {})",
            w["status"],
            cluster().dir.display()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The controller has observed the latest spec and every replica is updated and ready.
fn rolled_out(w: &Value) -> bool {
    let s = &w["status"];
    let observed = s["observedGeneration"] == w["metadata"]["generation"];
    let (want, updated, ready) = match w["kind"].as_str() {
        Some("DaemonSet") => (
            &s["desiredNumberScheduled"],
            &s["updatedNumberScheduled"],
            &s["numberAvailable"],
        ),
        Some("StatefulSet") => (
            &w["spec"]["replicas"],
            &s["updatedReplicas"],
            &s["availableReplicas"],
        ),
        _ => (
            &w["spec"]["replicas"],
            &s["updatedReplicas"],
            &s["availableReplicas"],
        ),
    };
    observed
        && want.as_i64().is_some_and(|n| n > 0)
        && updated == want
        && ready == want
        && s["replicas"]
            .as_i64()
            .is_none_or(|r| Some(r) == want.as_i64())
}

async fn wait_for<F, Fut>(what: &str, mut ok: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(60);
    while !ok().await {
        assert!(
            Instant::now() < deadline,
            "{what}: not within 60 s (component logs in {})",
            cluster().dir.display()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn app_image(w: &Value) -> String {
    w["spec"]["template"]["spec"]["containers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "app")
        .map(|c| c["image"].as_str().unwrap().to_string())
        .unwrap()
}

/// Records `repo:tag` in the embedded registry and queues the registry's notification.
async fn push(env: &Env, repo: &str, tag: &str) -> Image {
    let image = Image::parse(
        "localhost:5000",
        repo,
        tag,
        &crate::digest(&format!("{repo} {tag}")),
    )
    .unwrap();
    let now = Utc::now();
    env.local
        .pipeline
        .ports
        .registry
        .record_push(&image, now)
        .await
        .unwrap();
    let payload = crate::dist_push(repo, tag, &image.digest, "ci-bot", now, &format!("n-{tag}"));
    env.local
        .submit(&Trigger {
            kind: TriggerKind::Distribution,
            received_at: now,
            payload,
        })
        .await
        .unwrap();
    image
}

async fn run(case: &Case, tag: &str) -> (Env, Image) {
    let env = case.env();
    let img = push(&env, case.repo, tag).await;
    env.drain().await;
    (env, img)
}

const OLD: &str = "localhost:5000/demo/web:0.9.0";

#[tokio::test]
async fn a_job_passes_and_the_deployment_rolls_out_with_the_stage_identities() {
    let case = Case::new("Deployment", OLD).await;
    cluster().pod_logs(&case.tests, "12 tests passed\n").await;
    let (env, img) = run(&case, "1.0.0").await;
    let events = env.events(&img).await;
    assert_eq!(
        sequence(&events),
        [
            "image.built",
            "tests.passed",
            "approval.granted[staging]",
            "deploy.succeeded[staging]"
        ]
    );
    let Payload::TestsPassed(t) = &events[1].payload else {
        panic!()
    };
    assert_eq!(
        (t.runner.as_str(), t.summary.as_str()),
        ("kubernetes-job", "exit code 0")
    );
    let out = env.object(t.output_key.as_ref().unwrap()).await;
    assert_eq!(
        out, "12 tests passed\n",
        "the pod's log, through the API server"
    );

    // The Job as the API server stored it.
    let admin = cluster().api(ADMIN);
    let (_, jobs) = admin
        .get(&format!("/apis/batch/v1/namespaces/{}/jobs", case.tests))
        .await
        .unwrap();
    let jobs = jobs["items"].as_array().unwrap();
    assert_eq!(jobs.len(), 1, "one Job");
    let job = &jobs[0];
    assert_eq!(job["spec"]["backoffLimit"], 0);
    assert_eq!(job["spec"]["activeDeadlineSeconds"], 60);
    assert_eq!(job["spec"]["ttlSecondsAfterFinished"], 600);
    assert_eq!(
        job["metadata"]["labels"]["baton.dev/run"],
        env.run_of(&img).as_str()
    );
    assert_eq!(
        job["status"]["succeeded"], 1,
        "the Job controller saw its pod succeed"
    );
    let pod = &job["spec"]["template"]["spec"];
    let c = &pod["containers"][0];
    assert_eq!(c["image"], img.reference(), "pinned by digest");
    assert_eq!(c["command"], json!(["/bin/run-tests"]));
    assert_eq!(c["args"], json!(["--suite", "smoke"]));
    assert_eq!(
        c["resources"],
        json!({"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"memory": "256Mi"}})
    );
    assert!(
        c["env"]
            .as_array()
            .unwrap()
            .contains(&json!({"name": "BATON_IMAGE", "value": img.reference()}))
    );
    assert_eq!(pod["restartPolicy"], "Never");
    // pushed code gets no cluster credentials, and runs restricted
    assert_eq!(pod["automountServiceAccountToken"], false);
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(c["securityContext"]["allowPrivilegeEscalation"], false);
    assert_eq!(c["securityContext"]["capabilities"]["drop"], json!(["ALL"]));

    // The Deployment: Baton's container changed by Baton's field manager, the sidecar
    // untouched, the annotations set, and the real controller rolled it out.
    let d = case.object().await;
    assert_eq!(app_image(&d), img.reference());
    let containers = d["spec"]["template"]["spec"]["containers"]
        .as_array()
        .unwrap();
    assert_eq!(containers[0]["image"], "registry.local/proxy:1");
    let a = &d["metadata"]["annotations"];
    assert_eq!(a["baton.dev/run"], env.run_of(&img).as_str());
    assert_eq!(a["baton.dev/previous-image"], OLD);
    assert!(
        a["kubernetes.io/change-cause"]
            .as_str()
            .unwrap()
            .contains("1.0.0")
    );
    let managers: Vec<&str> = d["metadata"]["managedFields"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["manager"].as_str())
        .collect();
    assert!(
        managers.contains(&"baton"),
        "field manager baton: {managers:?}"
    );
    assert!(
        rolled_out(&d),
        "deploy.succeeded only once rolled out: {}",
        d["status"]
    );
    let Payload::DeploySucceeded(s) = &events[3].payload else {
        panic!()
    };
    assert_eq!(
        (s.target.as_str(), s.changed, s.previous.as_deref()),
        ("kubernetes", true, Some(OLD))
    );
}

#[tokio::test]
async fn a_rollout_that_never_becomes_ready_is_rolled_back_by_baton_and_converges() {
    let mut case = Case::new("Deployment", OLD).await;
    case.repo = "demo/never-ready";
    let (env, img) = run(&case, "1.0.0").await;
    let events = env.events(&img).await;
    let Payload::DeployFailed(f) = &events.last().unwrap().payload else {
        panic!("deploy.failed: {:?}", sequence(&events))
    };
    assert_eq!(f.code, baton::event::FailureCode::RolloutFailed);
    assert!(f.rolled_back);
    assert!(
        f.reason.contains("ProgressDeadlineExceeded"),
        "the controller's condition: {}",
        f.reason
    );
    assert!(
        f.reason.contains(": container app ImagePullBackOff"),
        "names the stuck pod and why: {}",
        f.reason
    );
    assert_eq!(f.live.as_deref(), Some(OLD));
    assert_eq!(
        env.status(&img).await,
        "deploy failed (staging, rolled back)"
    );
    assert_eq!(app_image(&case.object().await), OLD);
    wait_for("the Deployment converges on the previous image", || async {
        rolled_out(&case.object().await)
    })
    .await;
}

#[tokio::test]
async fn statefulsets_and_daemonsets_roll_out_by_digest() {
    for kind in ["StatefulSet", "DaemonSet"] {
        let case = Case::new(kind, OLD).await;
        let (env, img) = run(&case, "1.0.0").await;
        let events = env.events(&img).await;
        assert_eq!(
            sequence(&events).last().map(String::as_str),
            Some("deploy.succeeded[staging]"),
            "{kind}: {:?}",
            sequence(&events)
        );
        let w = case.object().await;
        assert_eq!(app_image(&w), img.reference(), "{kind}");
        assert!(rolled_out(&w), "{kind}: {}", w["status"]);
    }
}

#[tokio::test]
async fn an_already_live_digest_sends_no_patch() {
    let live = format!(
        "localhost:5000/demo/web@{}",
        crate::digest("demo/web 1.0.0")
    );
    let case = Case::new("Deployment", &live).await;
    let before = case.object().await["metadata"]["resourceVersion"].clone();
    let (env, img) = run(&case, "1.0.0").await;
    assert_eq!(img.reference(), live);
    let events = env.events(&img).await;
    let Payload::DeploySucceeded(d) = &events.last().unwrap().payload else {
        panic!("{:?}", sequence(&events))
    };
    assert!(!d.changed);
    assert_eq!(
        case.object().await["metadata"]["resourceVersion"],
        before,
        "no PATCH when the digest is already live"
    );
}

async fn stage_failure(env: &Env, img: &Image) -> baton::event::StageFailed {
    let events = env.events(img).await;
    match &events.last().unwrap().payload {
        Payload::StageFailed(f) => f.clone(),
        _ => panic!("stage.failed: {:?}", sequence(&events)),
    }
}

#[tokio::test]
async fn a_missing_namespace_workload_or_container_is_a_permanent_error_naming_it() {
    let mut case = Case::new("Deployment", OLD).await;
    let before = case.object().await["metadata"]["resourceVersion"].clone();
    let shop = case.shop.clone();

    case.container = "api";
    let (env, img) = run(&case, "1.0.0").await;
    let f = stage_failure(&env, &img).await;
    assert_eq!(f.error_kind, "permanent");
    assert!(
        f.reason.contains("no container named \"api\"") && f.reason.contains("sidecar, app"),
        "{}",
        f.reason
    );
    assert!(
        f.reason
            .contains(&format!("Deployment/web in namespace {}", case.shop)),
        "{}",
        f.reason
    );

    // A workload the Role names that does not exist (with least privilege, one it does
    // not name is refused before the server looks).
    cluster()
        .api(ADMIN)
        .apply_yaml(
            &DEPLOY_RBAC.replace("[\"web\"]", "[\"web\", \"checkout\"]"),
            &shop,
        )
        .await;
    case.container = "app";
    case.workload = "checkout";
    let (env, img) = run(&case, "1.0.0").await;
    let f = stage_failure(&env, &img).await;
    assert_eq!(f.error_kind, "permanent");
    assert!(
        f.reason.contains("Deployment/checkout") && f.reason.contains("not found"),
        "{}",
        f.reason
    );

    case.workload = "web";
    case.shop = "no-such-namespace".into();
    let (env, img) = run(&case, "1.0.0").await;
    let f = stage_failure(&env, &img).await;
    assert_eq!(f.error_kind, "permanent");
    // With least privilege a namespace the identity has no Role in is indistinguishable
    // from a missing one: the API server answers 403 before looking.
    assert!(
        f.reason.contains("namespace no-such-namespace")
            && f.reason.contains("forbidden")
            && f.reason.contains("RBAC (infra/k8s)"),
        "{}",
        f.reason
    );
    let d = cluster()
        .api(ADMIN)
        .object(&workload_path(&shop, "Deployment", "web"))
        .await;
    assert_eq!(
        d["metadata"]["resourceVersion"], before,
        "nothing was patched"
    );
}

/// A test Job that fails (exit code from kwok's stage) on a 200 KB log: the end, where
/// the failure is, is what is kept.
async fn failed_test(case: &Case) -> (baton::event::TestReport, Env) {
    let (env, img) = run(case, "1.0.0").await;
    let events = env.events(&img).await;
    assert_eq!(sequence(&events), ["image.built", "tests.failed"]);
    let Payload::TestsFailed(r) = events[1].payload.clone() else {
        unreachable!()
    };
    assert_eq!(app_image(&case.object().await), OLD, "nothing deployed");
    (r, env)
}

#[tokio::test]
async fn a_failing_job_reports_its_exit_code_and_the_tail_of_its_log() {
    let mut case = Case::new("Deployment", OLD).await;
    case.job_env = "{ KWOK_EXIT_CODE: \"3\" }";
    let log = format!("{}FAIL checkout_test\n", "ok\n".repeat(70_000));
    cluster().pod_logs(&case.tests, &log).await;
    let (r, env) = failed_test(&case).await;
    assert_eq!((r.summary.as_str(), r.exit_code), ("exit code 3", Some(3)));
    let out = env.object(&r.output_key.unwrap()).await;
    assert!(
        out.ends_with("ok\nFAIL checkout_test\n"),
        "the tail is kept"
    );
    assert!(out.starts_with("[… "), "says what was cut: {}", &out[..40]);
    assert!(out.len() <= 64 * 1024 + 64, "{}", out.len());
}

#[tokio::test]
async fn a_job_past_its_deadline_or_unable_to_pull_fails() {
    let mut case = Case::new("Deployment", OLD).await;
    case.job_env = "{ KWOK_RUN_FOREVER: \"1\" }";
    case.deadline = "2s";
    let (r, _env) = failed_test(&case).await;
    assert!(
        r.summary.starts_with("deadline exceeded after 2s"),
        "{}",
        r.summary
    );

    let mut case = Case::new("Deployment", OLD).await;
    case.repo = "demo/unpullable";
    let (r, _env) = failed_test(&case).await;
    assert!(
        r.summary.starts_with("image pull failed: ImagePullBackOff"),
        "{}",
        r.summary
    );
    let (_, jobs) = cluster()
        .api(ADMIN)
        .get(&format!("/apis/batch/v1/namespaces/{}/jobs", case.tests))
        .await
        .unwrap();
    let left: Vec<&Value> = jobs["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|j| j["metadata"]["deletionTimestamp"].is_null())
        .collect();
    assert!(left.is_empty(), "the stuck Job is deleted: {left:?}");
}

#[tokio::test]
async fn a_redelivered_event_never_creates_a_second_job() {
    let case = Case::new("Deployment", OLD).await;
    let env = case.env();
    let img = push(&env, case.repo, "1.0.0").await;
    let thrice = Repeat {
        inner: env.local.clone(),
        n: 3,
    };
    env.local
        .pipeline
        .ports
        .bus
        .drain(&thrice, &DrainOptions::default(), |_| {})
        .await
        .unwrap();
    assert_eq!(
        env.events(&img)
            .await
            .iter()
            .filter(|e| e.event_type() == EventType::TestsPassed)
            .count(),
        1
    );
    let jobs_path = format!("/apis/batch/v1/namespaces/{}/jobs", case.tests);
    let count = || async {
        cluster().api(ADMIN).object(&jobs_path).await["items"]
            .as_array()
            .unwrap()
            .len()
    };
    assert_eq!(count().await, 1);
    // the runner itself: a start after a crash finds the Job instead of creating one
    use baton::ports::TestRunner;
    let cfg = env.local.pipeline.config.clone();
    let runner = env
        .local
        .pipeline
        .ports
        .test_runner(&cfg.app("web").unwrap().test)
        .unwrap();
    let req = baton::ports::TestRequest {
        app: "web".into(),
        run: env.run_of(&img),
        image: img.clone(),
        attempt: 1,
        check: None,
    };
    let p = runner.start(&req).await.unwrap();
    assert!(
        matches!(p, baton::ports::TestProgress::Running { ref note, .. } if note.contains("already started")),
        "{p:?}"
    );
    assert_eq!(count().await, 1);
}

/// SigV4 presigning computed here from the specification, independently of the
/// `aws-sigv4` crate the adapter uses.
mod sigv4 {
    use sha2::{Digest, Sha256};

    pub fn hmac(key: &[u8], msg: &[u8]) -> Vec<u8> {
        let mut k = [0u8; 64];
        if key.len() > 64 {
            k[..32].copy_from_slice(&Sha256::digest(key));
        } else {
            k[..key.len()].copy_from_slice(key);
        }
        let inner: Vec<u8> = k
            .iter()
            .map(|b| b ^ 0x36)
            .chain(msg.iter().copied())
            .collect();
        let ih = Sha256::digest(&inner);
        let outer: Vec<u8> = k
            .iter()
            .map(|b| b ^ 0x5c)
            .chain(ih.iter().copied())
            .collect();
        Sha256::digest(&outer).to_vec()
    }

    pub fn enc(s: &str) -> String {
        s.bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect()
    }

    /// The signature a presigned GET must carry.
    pub fn signature(
        secret: &str,
        date: &str,
        datetime: &str,
        region: &str,
        query: &[(String, String)],
        headers: &[(&str, &str)],
    ) -> String {
        let mut q: Vec<(String, String)> = query.iter().map(|(k, v)| (enc(k), enc(v))).collect();
        q.sort();
        let canonical_query = q
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("&");
        let canonical_headers: String = headers.iter().map(|(k, v)| format!("{k}:{v}\n")).collect();
        let signed = headers
            .iter()
            .map(|(k, _)| *k)
            .collect::<Vec<_>>()
            .join(";");
        let empty = hex::encode(Sha256::digest(b""));
        let creq = format!("GET\n/\n{canonical_query}\n{canonical_headers}\n{signed}\n{empty}");
        let scope = format!("{date}/{region}/sts/aws4_request");
        let sts = format!(
            "AWS4-HMAC-SHA256\n{datetime}\n{scope}\n{}",
            hex::encode(Sha256::digest(creq.as_bytes()))
        );
        let k = hmac(format!("AWS4{secret}").as_bytes(), date.as_bytes());
        let k = hmac(&k, region.as_bytes());
        let k = hmac(&k, b"sts");
        let k = hmac(&k, b"aws4_request");
        hex::encode(hmac(&k, sts.as_bytes()))
    }
}

#[test]
fn eks_token_has_the_documented_format_and_a_valid_signature() {
    use base64::Engine;
    use baton::adapters::k8s::eks::{AwsCredentials, TOKEN_PREFIX, token};
    // The credentials and time of AWS's SigV4 test suite.
    let creds = AwsCredentials {
        access_key_id: "AKIDEXAMPLE".into(),
        secret_access_key: "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY".into(),
        session_token: None,
    };
    let time = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_440_938_160); // 2015-08-30T12:36:00Z
    let t = token("prod-cluster", "us-east-1", &creds, time).unwrap();
    assert!(t.starts_with(TOKEN_PREFIX));
    assert!(
        !t.contains('=') && !t.contains('+') && !t.contains('/'),
        "base64url without padding"
    );
    let url = String::from_utf8(
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(&t[TOKEN_PREFIX.len()..])
            .unwrap(),
    )
    .unwrap();
    let (base, query) = url.split_once('?').unwrap();
    assert_eq!(base, "https://sts.us-east-1.amazonaws.com/");
    let params: Vec<(String, String)> = form_urlencoded::parse(query.as_bytes())
        .into_owned()
        .collect();
    let get = |k: &str| {
        params
            .iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    assert_eq!(get("Action"), "GetCallerIdentity");
    assert_eq!(get("Version"), "2011-06-15");
    assert_eq!(get("X-Amz-Algorithm"), "AWS4-HMAC-SHA256");
    assert_eq!(
        get("X-Amz-Credential"),
        "AKIDEXAMPLE/20150830/us-east-1/sts/aws4_request"
    );
    assert_eq!(get("X-Amz-Date"), "20150830T123600Z");
    assert_eq!(get("X-Amz-Expires"), "60");
    assert_eq!(get("X-Amz-SignedHeaders"), "host;x-k8s-aws-id");
    let unsigned: Vec<(String, String)> = params
        .iter()
        .filter(|(k, _)| k != "X-Amz-Signature")
        .cloned()
        .collect();
    let expected = sigv4::signature(
        &creds.secret_access_key,
        "20150830",
        "20150830T123600Z",
        "us-east-1",
        &unsigned,
        &[
            ("host", "sts.us-east-1.amazonaws.com"),
            ("x-k8s-aws-id", "prod-cluster"),
        ],
    );
    assert_eq!(
        get("X-Amz-Signature"),
        expected,
        "signed with the given credentials"
    );
    // a different cluster name changes the signature (the header is signed)
    let other = token("dev-cluster", "us-east-1", &creds, time).unwrap();
    assert_ne!(t, other);
}

/// A Lambda function has no kubeconfig or in-cluster account (and links no reader for
/// them): a cluster configured that way is refused with what to use instead.
#[tokio::test]
async fn a_function_refuses_kubeconfig_and_in_cluster_access_naming_eks() {
    for access in [
        json!({"name": "dev", "kubeconfig": {"context": "kind-dev"}}),
        json!({"name": "dev", "in_cluster": {}}),
    ] {
        let cfg: baton::config::ClusterConfig = serde_json::from_value(access).unwrap();
        let cluster = baton::adapters::k8s::Cluster::new(cfg, std::path::PathBuf::from("."), None);
        let Err(e) = cluster.client().await else {
            panic!("a client without access");
        };
        let e = e.to_string();
        assert!(
            e.contains("cluster dev") && e.contains("Lambda function") && e.contains("eks:"),
            "{e}"
        );
    }
}

/// (who, what, method, path, body, expected status)
type Step<'a> = (
    &'a baton_testkit::k8s::Api,
    String,
    reqwest::Method,
    String,
    Option<&'a Value>,
    u16,
);

/// The RBAC of `infra/k8s/`, enforced by the real authorizer: each stage's identity may
/// do its job (the pipeline tests above run with them) and every step outside its row is
/// refused with 403.
#[tokio::test]
async fn the_rbac_of_infra_k8s_refuses_every_step_outside_a_stages_row() {
    let case = Case::new("Deployment", OLD).await;
    create_workload(&case.shop, "Deployment", "billing", OLD).await;
    let production = cluster().namespace("production").await;
    let admin = cluster().api(ADMIN);
    admin
        .create(
            &format!("/api/v1/namespaces/{}/secrets", case.shop),
            &json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "db"},
                    "stringData": {"password": "hunter2"}}),
        )
        .await;
    let (deploy, test) = (cluster().api(DEPLOY), cluster().api(TEST));
    let patch = json!({"metadata": {"annotations": {"rbac-test": "1"}}});
    let job = json!({"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "probe"},
        "spec": {"template": {"spec": {"restartPolicy": "Never",
                 "containers": [{"name": "c", "image": "registry.local/probe:1"}]}}}});
    let merge = "application/strategic-merge-patch+json";
    use reqwest::Method;
    let web = case.path();
    let billing = workload_path(&case.shop, "Deployment", "billing");
    let jobs = |ns: &str| format!("/apis/batch/v1/namespaces/{ns}/jobs?dryRun=All");
    let secrets = format!("/api/v1/namespaces/{}/secrets", case.shop);
    let tests_ns = case.tests.clone();
    let steps: Vec<Step> = vec![
        (
            &deploy,
            "deploy reads its workload".into(),
            Method::GET,
            web.clone(),
            None,
            200,
        ),
        (
            &deploy,
            "deploy patches its workload".into(),
            Method::PATCH,
            format!("{web}?dryRun=All"),
            Some(&patch),
            200,
        ),
        (
            &deploy,
            "deploy lists pods to say why a rollout is stuck".into(),
            Method::GET,
            format!("/api/v1/namespaces/{}/pods", case.shop),
            None,
            200,
        ),
        (
            &test,
            "test creates a Job in the test namespace".into(),
            Method::POST,
            jobs(&tests_ns),
            Some(&job),
            201,
        ),
        (
            &test,
            "test reads pods in the test namespace".into(),
            Method::GET,
            format!("/api/v1/namespaces/{tests_ns}/pods"),
            None,
            200,
        ),
        (
            &deploy,
            "deploy patches another Deployment".into(),
            Method::PATCH,
            format!("{billing}?dryRun=All"),
            Some(&patch),
            403,
        ),
        (
            &deploy,
            "deploy reads a Secret".into(),
            Method::GET,
            format!("{secrets}/db"),
            None,
            403,
        ),
        (
            &deploy,
            "deploy lists Secrets".into(),
            Method::GET,
            secrets.clone(),
            None,
            403,
        ),
        (
            &deploy,
            "deploy deletes its workload".into(),
            Method::DELETE,
            format!("{web}?dryRun=All"),
            None,
            403,
        ),
        (
            &deploy,
            "deploy creates a Job".into(),
            Method::POST,
            jobs(&case.shop),
            Some(&job),
            403,
        ),
        (
            &deploy,
            "deploy reads a workload in another namespace".into(),
            Method::GET,
            workload_path(&production, "Deployment", "web"),
            None,
            403,
        ),
        (
            &test,
            "test creates a Job in a production namespace".into(),
            Method::POST,
            jobs(&production),
            Some(&job),
            403,
        ),
        (
            &test,
            "test creates a Job where deploy targets live".into(),
            Method::POST,
            jobs(&case.shop),
            Some(&job),
            403,
        ),
        (
            &test,
            "test patches a Deployment".into(),
            Method::PATCH,
            format!("{web}?dryRun=All"),
            Some(&patch),
            403,
        ),
        (
            &test,
            "test reads a Secret".into(),
            Method::GET,
            format!("/api/v1/namespaces/{tests_ns}/secrets"),
            None,
            403,
        ),
        (
            &test,
            "test lists namespaces".into(),
            Method::GET,
            "/api/v1/namespaces".into(),
            None,
            403,
        ),
    ];
    let mut wrong = vec![];
    for (who, what, method, path, body, want) in steps {
        let content_type = if method == Method::PATCH {
            merge
        } else {
            "application/json"
        };
        let (code, resp) = who
            .send(method.clone(), &path, content_type, body)
            .await
            .unwrap();
        if code != want {
            wrong.push(format!(
                "{what}: {method} {path} answered {code}, expected {want}: {resp}"
            ));
        } else if want == 403 {
            assert!(
                resp["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("forbidden")),
                "{what}: refused by the authorizer: {resp}"
            );
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    assert!(
        case.object().await["metadata"]["annotations"]["rbac-test"].is_null(),
        "dry runs changed nothing"
    );
}

/// The client of `eks` and `url` clusters (kube's HTTP stack without kubeconfig
/// authentication) against the real API server: with the cluster's CA and a stage's
/// token it is that stage (its Role applies); without a token it is anonymous and
/// refused; a server whose certificate another CA signed, or one the platform's trust
/// store does not know, is refused before any request is sent.
#[tokio::test]
async fn the_direct_client_sends_the_token_and_trusts_only_the_configured_ca() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let case = Case::new("Deployment", OLD).await;
    let cp = cluster();
    let ca = baton::adapters::k8s::cluster::pem_certificates(&base64::Engine::encode(
        &base64::engine::general_purpose::STANDARD,
        &cp.ca_pem,
    ))
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let other = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
        ])
        .args([
            "-days",
            "1",
            "-subj",
            "/CN=other-ca",
            "-keyout",
            "other.key",
            "-out",
            "other.crt",
        ])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(other.status.success());
    let other_ca = baton::adapters::k8s::cluster::pem_certificates(&base64::Engine::encode(
        &base64::engine::general_purpose::STANDARD,
        std::fs::read(dir.path().join("other.crt")).unwrap(),
    ))
    .unwrap();
    let get = |roots: Option<Vec<Vec<u8>>>, token: Option<&str>| {
        let mut config = kube::Config::new(cp.url.parse().unwrap());
        config.root_cert = roots;
        config.auth_info.token = token.map(|t| secrecy::SecretString::from(t.to_string()));
        let client = baton::adapters::k8s::direct_client(config).unwrap();
        let api: kube::Api<k8s_openapi::api::apps::v1::Deployment> =
            kube::Api::namespaced(client, &case.shop);
        async move { api.get("web").await }
    };
    let d = get(Some(ca.clone()), Some(cp.token(DEPLOY))).await.unwrap();
    assert_eq!(d.metadata.name.as_deref(), Some("web"));
    let e = get(Some(ca.clone()), Some(cp.token(TEST)))
        .await
        .unwrap_err();
    assert!(
        e.to_string().contains("User \"baton-test\""),
        "the token names who asks: {e}"
    );
    let e = get(Some(ca), None).await.unwrap_err();
    assert!(e.to_string().contains("system:anonymous"), "{e}");
    for (roots, what) in [(Some(other_ca), "another CA"), (None, "no CA")] {
        // The cause is in the error's chain, which Display leaves out.
        let e = format!(
            "{:?}",
            get(roots, Some(cp.token(DEPLOY))).await.expect_err(what)
        );
        assert!(e.contains("InvalidCertificate"), "{what}: {e}");
    }
}

/// In-cluster access (Baton in a pod): the service account's token, CA and namespace
/// files at the fixed path kube reads, and `KUBERNETES_SERVICE_HOST/PORT`. The files are
/// put there in a private mount namespace (`unshare -m`, a tmpfs over /run, root only)
/// where this same test runs again as the pod would, with a token the API server issued
/// for a ServiceAccount bound to `baton-deploy`'s Role (the subject infra/k8s says to add
/// for Baton running in the cluster).
#[tokio::test]
async fn in_cluster_access_connects_with_the_pods_service_account() {
    const NAME: &str = "k8s::in_cluster_access_connects_with_the_pods_service_account";
    if let Ok(ns) = std::env::var("BATON_IN_CLUSTER_NAMESPACE") {
        // Inside the mount namespace: the pod's view.
        let cfg: baton::config::ClusterConfig =
            serde_json::from_value(json!({"name": "here", "in_cluster": {}})).unwrap();
        let cluster = baton::adapters::k8s::Cluster::new(
            cfg,
            std::path::PathBuf::from("."),
            Some(baton::adapters::k8s::from_files),
        );
        let client = cluster.client().await.unwrap();
        let d =
            kube::Api::<k8s_openapi::api::apps::v1::Deployment>::namespaced(client.clone(), &ns)
                .get("web")
                .await
                .unwrap();
        assert_eq!(d.metadata.name.as_deref(), Some("web"));
        let e = kube::Api::<k8s_openapi::api::core::v1::Secret>::namespaced(client, &ns)
            .list(&Default::default())
            .await
            .unwrap_err();
        assert!(
            e.to_string()
                .contains(&format!("system:serviceaccount:{ns}:baton")),
            "the service account's own identity, and no more: {e}"
        );
        println!("in-cluster access as system:serviceaccount:{ns}:baton");
        return;
    }
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "in-cluster access is tested in a mount namespace, which needs root (CI runs as root)"
    );
    let case = Case::new("Deployment", OLD).await;
    let cp = cluster();
    let admin = cp.api(ADMIN);
    let sa = format!("/api/v1/namespaces/{}/serviceaccounts", case.shop);
    admin
        .create(
            &sa,
            &json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "baton"}}),
        )
        .await;
    admin
        .apply_yaml(
            &serde_json::to_string(&json!({
                "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
                "metadata": {"name": "baton-deploy-in-cluster"},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "baton-deploy"},
                "subjects": [{"kind": "ServiceAccount", "name": "baton", "namespace": case.shop}]
            }))
            .unwrap(),
            &case.shop,
        )
        .await;
    let token = admin
        .create(
            &format!("{sa}/baton/token"),
            &json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
                    "spec": {"expirationSeconds": 600}}),
        )
        .await["status"]["token"]
        .as_str()
        .unwrap()
        .to_string();
    let files = tempfile::tempdir().unwrap();
    std::fs::write(files.path().join("token"), token).unwrap();
    std::fs::write(files.path().join("ca.crt"), &cp.ca_pem).unwrap();
    std::fs::write(files.path().join("namespace"), &case.shop).unwrap();
    let port = cp.url.rsplit(':').next().unwrap();
    let script = r#"mount -t tmpfs baton-test /run && d=/run/secrets/kubernetes.io/serviceaccount && mkdir -p "$d" && cp "$1"/token "$1"/ca.crt "$1"/namespace "$d"/ && exec "$2" --exact "$3" --nocapture"#;
    let out = std::process::Command::new("unshare")
        .args([
            "--mount",
            "--propagation",
            "private",
            "--",
            "sh",
            "-c",
            script,
            "sh",
        ])
        .arg(files.path())
        .arg(std::env::current_exe().unwrap())
        .arg(NAME)
        .env("BATON_IN_CLUSTER_NAMESPACE", &case.shop)
        .env("KUBERNETES_SERVICE_HOST", "127.0.0.1")
        .env("KUBERNETES_SERVICE_PORT", port)
        .output()
        .expect("unshare (util-linux)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success()
            && stdout.contains("1 passed")
            && stdout.contains("in-cluster access as"),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `url` access (a plain URL, e.g. `kubectl proxy`): a pipeline deploys through a proxy
/// that adds the deploy identity's token, as `kubectl proxy` adds its user's credentials.
#[tokio::test]
async fn url_access_deploys_through_an_authenticating_proxy() {
    let case = Case::new("Deployment", OLD).await;
    let cp = cluster();
    let upstream = cp.api(DEPLOY);
    let proxy = axum::Router::new().fallback(
        move |method: axum::http::Method,
              uri: axum::http::Uri,
              headers: axum::http::HeaderMap,
              body: axum::body::Bytes| {
            let upstream = upstream.clone();
            async move {
                let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
                let ct = headers
                    .get("content-type")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("application/json")
                    .to_string();
                let body: Option<Value> = serde_json::from_slice(&body).ok();
                let (code, resp) = upstream
                    .send(method, path, &ct, body.as_ref())
                    .await
                    .unwrap();
                (
                    axum::http::StatusCode::from_u16(code).unwrap(),
                    axum::Json(resp),
                )
            }
        },
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, proxy).await });
    let config = case.config().replace(
        &format!(
            "  - name: deploy\n    kubeconfig: {{ path: {}, context: {DEPLOY} }}",
            cp.kubeconfig.display()
        ),
        &format!("  - name: deploy\n    url: {url}"),
    );
    assert!(config.contains(&url));
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("baton.yaml"), config).unwrap();
    let local = Local::open(
        Config::load(&dir.path().join("baton.yaml")).unwrap(),
        &dir.path().join("state"),
        Settings::default(),
    )
    .unwrap();
    let env = Env { dir, local };
    let img = push(&env, case.repo, "1.0.0").await;
    env.drain().await;
    assert_eq!(
        sequence(&env.events(&img).await).last().map(String::as_str),
        Some("deploy.succeeded[staging]")
    );
    assert_eq!(app_image(&case.object().await), img.reference());
}

/// Verify on the real control plane: the staging checks are a Job run with the verify
/// stage's own identity (`baton-verify`, bound by infra/k8s/verify-rbac.yaml) and an
/// HTTP service. 1.0.0 passes both; 1.1.0 meets an unhealthy service, fails its
/// verification, and the deploy stage puts 1.0.0 back in the Deployment, rolled out by
/// the real controller.
#[tokio::test]
async fn a_failed_verification_rolls_the_deployment_back_and_checks_run_as_verify() {
    let case = Case::new("Deployment", OLD).await;
    cluster()
        .api(ADMIN)
        .apply_yaml(VERIFY_RBAC, &case.tests)
        .await;
    let svc = crate::verify::Service::start().await;
    let kubeconfig = cluster().kubeconfig.display().to_string();
    let config = case
        .config()
        .replacen(
            "clusters:\n",
            &format!("clusters:\n  - name: checks\n    kubeconfig: {{ path: {kubeconfig}, context: {VERIFY} }}\n"),
            1,
        )
        .replacen(
            "        promote: false\n",
            &format!(
                "        promote: false\n        verify:\n          checks:\n            - name: smoke\n              kubernetes_job: {{ cluster: checks, namespace: {}, command: [\"/bin/check\"], deadline: 1m, ttl: 10m, poll: 200ms }}\n            - name: health\n              http: {{ url: \"http://127.0.0.1:{}/healthz\", interval: 100ms, successes: 2 }}\n",
                case.tests, svc.port
            ),
            1,
        );
    assert!(config.contains("verify:") && config.contains("name: checks"));
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("baton.yaml"), config).unwrap();
    let cfg = Config::load(&dir.path().join("baton.yaml")).unwrap();
    let local = Local::open(cfg, &dir.path().join("state"), Settings::default()).unwrap();
    let env = Env { dir, local };

    let v1 = push(&env, case.repo, "1.0.0").await;
    crate::verify::until(&env, &v1, "deployed").await;
    let events = env.events(&v1).await;
    let Some(Payload::VerificationPassed(r)) = events
        .iter()
        .find(|e| e.event_type() == EventType::VerificationPassed)
        .map(|e| &e.payload)
    else {
        panic!("no verification.passed: {:?}", sequence(&events))
    };
    assert!(
        r.checks.iter().all(|c| c.passed) && r.checks[0].kind == "kubernetes_job",
        "{r:?}"
    );
    // The check's Job: its own name and the check's variables, created with the
    // baton-verify identity (the `checks` cluster's context; only verify-rbac.yaml lets
    // it create Jobs there).
    let (_, jobs) = cluster()
        .api(ADMIN)
        .get(&format!("/apis/batch/v1/namespaces/{}/jobs", case.tests))
        .await
        .unwrap();
    let names: Vec<&str> = jobs["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|j| j["metadata"]["name"].as_str())
        .collect();
    let check_job = jobs["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|j| {
            j["metadata"]["name"]
                .as_str()
                .is_some_and(|n| n.starts_with("baton-verify-"))
        })
        .unwrap_or_else(|| panic!("a verify Job beside the test Job: {names:?}"));
    let env_vars = &check_job["spec"]["template"]["spec"]["containers"][0]["env"];
    assert!(
        env_vars
            .as_array()
            .unwrap()
            .contains(&json!({"name": "BATON_CHECK", "value": "smoke"})),
        "{env_vars}"
    );
    assert_eq!(
        check_job["spec"]["template"]["spec"]["containers"][0]["image"],
        v1.reference(),
        "the check runs the deployed image, pinned by digest"
    );
    assert_eq!(check_job["status"]["succeeded"], 1);
    assert_eq!(app_image(&case.object().await), v1.reference());

    // 1.1.0 and an unhealthy service: rolled back by the deploy stage.
    svc.set_status(503);
    let v2 = push(&env, case.repo, "1.1.0").await;
    crate::verify::until(&env, &v2, "verification failed (staging, rolled back)").await;
    let d = case.object().await;
    assert_eq!(app_image(&d), v1.reference(), "1.0.0 is back");
    assert!(rolled_out(&d), "and rolled out: {}", d["status"]);
    let cause = d["metadata"]["annotations"]["kubernetes.io/change-cause"]
        .as_str()
        .unwrap_or_default();
    assert!(cause.contains("failed verification"), "{cause}");
}
