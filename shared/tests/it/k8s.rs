//! The Kubernetes adapters against a test API server: it serves the endpoints Baton uses
//! (apps/v1 workloads, batch/v1 Jobs, pods by label, pod logs) with the real JSON
//! shapes, keeps objects in memory, advances rollouts and Jobs by a script per test,
//! and records every request so tests assert exact request shapes (method, path,
//! content type, field manager, body).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use baton::adapters::embedded::DrainOptions;
use baton::config::Config;
use baton::event::{EventType, Payload};
use baton::pipeline::Settings;
use baton::ports::TestPorts;
use baton::runtime::local::Local;
use chrono::Utc;
use serde_json::{Value, json};

use crate::{Env, Repeat, sequence};

#[derive(Debug, Clone, Copy)]
enum Rollout {
    /// Complete after this many GETs following a PATCH.
    Succeeds(u32),
    /// New pods stay in ImagePullBackOff; the progress deadline passes after this many
    /// GETs. A PATCH back to the original image completes at once.
    StuckImagePull(u32),
}

#[derive(Debug, Clone)]
enum JobScript {
    Succeeds(u32, &'static str),
    FailsWith(i32, &'static str),
    Deadline,
    ImagePull,
}

#[derive(Debug, Clone)]
struct Recorded {
    method: String,
    path: String,
    query: String,
    content_type: String,
    authorization: String,
    body: Value,
}

struct FakeState {
    deployments: BTreeMap<String, Value>,
    original_image: String,
    jobs: BTreeMap<String, Value>,
    pods: Vec<Value>,
    logs: BTreeMap<String, String>,
    requests: Vec<Recorded>,
    rollout: Rollout,
    job_script: JobScript,
    polls: u32,
    job_polls: u32,
}

type Shared = Arc<Mutex<FakeState>>;

fn status(code: u16, reason: &str, message: String) -> Response {
    let body = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                      "message": message, "reason": reason, "code": code});
    (StatusCode::from_u16(code).unwrap(), axum::Json(body)).into_response()
}

fn deployment(name: &str, image: &str, replicas: i64) -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "namespace": "shop", "generation": 1, "uid": "d-1", "resourceVersion": "1",
                     "annotations": {}},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}},
                         "spec": {"containers": [{"name": "sidecar", "image": "envoyproxy/envoy:v1.30"},
                                                 {"name": "app", "image": image}]}},
            "progressDeadlineSeconds": 600
        },
        "status": {"observedGeneration": 1, "replicas": replicas, "updatedReplicas": replicas,
                   "readyReplicas": replicas, "availableReplicas": replicas,
                   "conditions": [{"type": "Available", "status": "True", "reason": "MinimumReplicasAvailable"},
                                  {"type": "Progressing", "status": "True", "reason": "NewReplicaSetAvailable"}]}
    })
}

fn app_image(d: &Value) -> String {
    d["spec"]["template"]["spec"]["containers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "app")
        .map(|c| c["image"].as_str().unwrap().to_string())
        .unwrap_or_default()
}

fn pod(
    name: &str,
    labels: Value,
    image: &str,
    container: &str,
    state: Value,
    ready: bool,
) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "shop", "labels": labels},
        "spec": {"containers": [{"name": container, "image": image}], "restartPolicy": "Never"},
        "status": {"phase": "Pending", "containerStatuses": [{"name": container, "image": image, "imageID": "",
                    "ready": ready, "restartCount": 0, "state": state}]}
    })
}

/// Advances the deployment one GET along its script.
fn advance_deployment(st: &mut FakeState, name: &str) {
    let original = st.original_image.clone();
    let rollout = st.rollout;
    let Some(d) = st.deployments.get(name).cloned() else {
        return;
    };
    let generation = d["metadata"]["generation"].as_i64().unwrap();
    let replicas = d["spec"]["replicas"].as_i64().unwrap();
    let image = app_image(&d);
    if generation == 1 {
        return; // never patched: steady
    }
    st.polls += 1;
    let polls = st.polls;
    let mut d = d;
    let complete = json!({"observedGeneration": generation, "replicas": replicas, "updatedReplicas": replicas,
        "readyReplicas": replicas, "availableReplicas": replicas,
        "conditions": [{"type": "Progressing", "status": "True", "reason": "NewReplicaSetAvailable"}]});
    let progressing = json!({"observedGeneration": generation, "replicas": replicas + 1, "updatedReplicas": 1,
        "readyReplicas": replicas, "availableReplicas": replicas,
        "conditions": [{"type": "Progressing", "status": "True", "reason": "ReplicaSetUpdated"}]});
    d["status"] = match rollout {
        Rollout::Succeeds(after) if polls >= after => complete,
        Rollout::Succeeds(_) => progressing,
        Rollout::StuckImagePull(_) if image == original => {
            st.pods.retain(|p| p["metadata"]["labels"]["app"] != name);
            complete
        }
        Rollout::StuckImagePull(after) => {
            if !st
                .pods
                .iter()
                .any(|p| p["metadata"]["labels"]["app"] == name)
            {
                let waiting = json!({"waiting": {"reason": "ImagePullBackOff",
                    "message": format!("Back-off pulling image \"{image}\"")}});
                st.pods.push(pod(
                    "web-7d9c5b-x2x4p",
                    json!({"app": name}),
                    &image,
                    "app",
                    waiting,
                    false,
                ));
            }
            let mut s = progressing;
            if polls >= after {
                s["conditions"] = json!([{"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded",
                    "message": "ReplicaSet \"web-7d9c5b\" has timed out progressing."}]);
            }
            s
        }
    };
    st.deployments.insert(name.to_string(), d);
}

fn advance_job(st: &mut FakeState, name: &str) {
    let Some(job) = st.jobs.get(name).cloned() else {
        return;
    };
    st.job_polls += 1;
    let image = job["spec"]["template"]["spec"]["containers"][0]["image"]
        .as_str()
        .unwrap()
        .to_string();
    let labels = json!({"job-name": name, "batch.kubernetes.io/job-name": name});
    let pod_name = format!("{name}-abcde");
    let terminated = |code: i32| json!({"terminated": {"exitCode": code, "reason": if code == 0 { "Completed" } else { "Error" }}});
    let (conditions, pod_state, logs) = match st.job_script.clone() {
        JobScript::Succeeds(after, logs) if st.job_polls >= after => (
            json!([{"type": "Complete", "status": "True"}]),
            terminated(0),
            logs,
        ),
        JobScript::Succeeds(_, _) => (json!([]), json!({"running": {}}), ""),
        JobScript::FailsWith(code, logs) => (
            json!([{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded", "message": "Job has reached the specified backoff limit"}]),
            terminated(code),
            logs,
        ),
        JobScript::Deadline => (
            json!([{"type": "Failed", "status": "True", "reason": "DeadlineExceeded", "message": "Job was active longer than specified deadline"}]),
            json!({"terminated": {"exitCode": 137, "reason": "Error"}}),
            "still running the suite...",
        ),
        JobScript::ImagePull => (
            json!([]),
            json!({"waiting": {"reason": "ImagePullBackOff", "message": format!("Back-off pulling image \"{image}\"")}}),
            "",
        ),
    };
    let mut job = job;
    job["status"] = json!({"conditions": conditions});
    st.jobs.insert(name.to_string(), job);
    st.pods
        .retain(|p| p["metadata"]["name"] != pod_name.as_str());
    st.pods
        .push(pod(&pod_name, labels, &image, "test", pod_state, false));
    st.logs.insert(pod_name, logs.to_string());
}

fn record(
    st: &mut FakeState,
    method: &Method,
    path: String,
    query: &Option<String>,
    headers: &HeaderMap,
    body: &Bytes,
) {
    st.requests.push(Recorded {
        method: method.to_string(),
        path,
        query: query.clone().unwrap_or_default(),
        content_type: headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string(),
        authorization: headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string(),
        body: serde_json::from_slice(body).unwrap_or(Value::Null),
    });
}

async fn deployment_handler(
    State(s): State<Shared>,
    method: Method,
    Path((ns, name)): Path<(String, String)>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut st = s.lock().unwrap();
    record(
        &mut st,
        &method,
        format!("/apis/apps/v1/namespaces/{ns}/deployments/{name}"),
        &query,
        &headers,
        &body,
    );
    if ns != "shop" || !st.deployments.contains_key(&name) {
        return status(
            404,
            "NotFound",
            format!("deployments.apps \"{name}\" not found"),
        );
    }
    if method == Method::PATCH {
        let patch: Value = serde_json::from_slice(&body).unwrap();
        let d = st.deployments.get_mut(&name).unwrap();
        if let Some(a) = patch["metadata"]["annotations"].as_object() {
            for (k, v) in a {
                d["metadata"]["annotations"][k] = v.clone();
            }
        }
        for pc in patch["spec"]["template"]["spec"]["containers"]
            .as_array()
            .cloned()
            .unwrap_or_default()
        {
            for c in d["spec"]["template"]["spec"]["containers"]
                .as_array_mut()
                .unwrap()
            {
                if c["name"] == pc["name"] {
                    c["image"] = pc["image"].clone();
                }
            }
        }
        let g = d["metadata"]["generation"].as_i64().unwrap() + 1;
        d["metadata"]["generation"] = json!(g);
        let out = d.clone();
        st.polls = 0;
        return axum::Json(out).into_response();
    }
    advance_deployment(&mut st, &name);
    axum::Json(st.deployments[&name].clone()).into_response()
}

fn matches_selector(p: &Value, selector: &str) -> bool {
    selector.split(',').filter(|s| !s.is_empty()).all(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        p["metadata"]["labels"][k] == v
    })
}

async fn pods_handler(
    State(s): State<Shared>,
    method: Method,
    Path(ns): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    let mut st = s.lock().unwrap();
    record(
        &mut st,
        &method,
        format!("/api/v1/namespaces/{ns}/pods"),
        &query,
        &headers,
        &Bytes::new(),
    );
    let selector = form_urlencoded::parse(query.unwrap_or_default().as_bytes())
        .find(|(k, _)| k == "labelSelector")
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default();
    let items: Vec<Value> = st
        .pods
        .iter()
        .filter(|p| matches_selector(p, &selector))
        .cloned()
        .collect();
    axum::Json(json!({"apiVersion": "v1", "kind": "PodList", "metadata": {"resourceVersion": "1"}, "items": items})).into_response()
}

async fn logs_handler(
    State(s): State<Shared>,
    Path((_ns, pod)): Path<(String, String)>,
    RawQuery(query): RawQuery,
) -> Response {
    let mut st = s.lock().unwrap();
    st.requests.push(Recorded {
        method: "GET".into(),
        path: format!("/pods/{pod}/log"),
        query: query.unwrap_or_default(),
        content_type: String::new(),
        authorization: String::new(),
        body: Value::Null,
    });
    st.logs
        .get(&pod)
        .cloned()
        .unwrap_or_default()
        .into_response()
}

async fn jobs_handler(
    State(s): State<Shared>,
    method: Method,
    Path(ns): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut st = s.lock().unwrap();
    record(
        &mut st,
        &method,
        format!("/apis/batch/v1/namespaces/{ns}/jobs"),
        &query,
        &headers,
        &body,
    );
    let mut job: Value = serde_json::from_slice(&body).unwrap();
    let name = job["metadata"]["name"].as_str().unwrap().to_string();
    if st.jobs.contains_key(&name) {
        return status(
            409,
            "AlreadyExists",
            format!("jobs.batch \"{name}\" already exists"),
        );
    }
    job["metadata"]["uid"] = json!("j-1");
    job["status"] = json!({});
    st.jobs.insert(name, job.clone());
    (StatusCode::CREATED, axum::Json(job)).into_response()
}

async fn job_handler(
    State(s): State<Shared>,
    method: Method,
    Path((ns, name)): Path<(String, String)>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut st = s.lock().unwrap();
    record(
        &mut st,
        &method,
        format!("/apis/batch/v1/namespaces/{ns}/jobs/{name}"),
        &query,
        &headers,
        &body,
    );
    if !st.jobs.contains_key(&name) {
        return status(404, "NotFound", format!("jobs.batch \"{name}\" not found"));
    }
    if method == Method::DELETE {
        let job = st.jobs.remove(&name).unwrap();
        return axum::Json(job).into_response();
    }
    advance_job(&mut st, &name);
    axum::Json(st.jobs[&name].clone()).into_response()
}

struct Fake {
    state: Shared,
    url: String,
}

async fn fake_cluster(image: &str, rollout: Rollout, job_script: JobScript) -> Fake {
    let mut deployments = BTreeMap::new();
    deployments.insert("web".to_string(), deployment("web", image, 3));
    let state: Shared = Arc::new(Mutex::new(FakeState {
        deployments,
        original_image: image.to_string(),
        jobs: BTreeMap::new(),
        pods: vec![],
        logs: BTreeMap::new(),
        requests: vec![],
        rollout,
        job_script,
        polls: 0,
        job_polls: 0,
    }));
    let app = Router::new()
        .route(
            "/apis/apps/v1/namespaces/{ns}/deployments/{name}",
            get(deployment_handler).patch(deployment_handler),
        )
        .route("/api/v1/namespaces/{ns}/pods", get(pods_handler))
        .route("/api/v1/namespaces/{ns}/pods/{pod}/log", get(logs_handler))
        .route(
            "/apis/batch/v1/namespaces/{ns}/jobs",
            axum::routing::post(jobs_handler),
        )
        .route(
            "/apis/batch/v1/namespaces/{ns}/jobs/{name}",
            get(job_handler).delete(job_handler),
        )
        .with_state(state.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    Fake { state, url }
}

impl Fake {
    fn requests(&self, method: &str, path_part: &str) -> Vec<Recorded> {
        self.state
            .lock()
            .unwrap()
            .requests
            .iter()
            .filter(|r| r.method == method && r.path.contains(path_part))
            .cloned()
            .collect()
    }
    fn app_image(&self) -> String {
        app_image(&self.state.lock().unwrap().deployments["web"])
    }
}

fn config(url: &str, container: &str) -> String {
    format!(
        r#"
clusters:
  - name: fake
    url: {url}
apps:
  - name: web
    registry: localhost:5000
    repository: demo/web
    tags: {{ semver: ">=1.0.0" }}
    test:
      kubernetes_job:
        cluster: fake
        namespace: baton-tests
        command: ["/bin/run-tests"]
        args: ["--suite", "smoke"]
        env: {{ SUITE: smoke }}
        resources: {{ requests: {{ cpu: 100m, memory: 128Mi }}, limits: {{ memory: 256Mi }} }}
        deadline: 1m
        ttl: 10m
        poll: 10ms
    environments:
      - name: staging
        approval: auto
        promote: false
        deploy:
          kubernetes:
            cluster: fake
            namespace: shop
            workloads: [{{ kind: Deployment, name: web, container: {container} }}]
            timeout: 1m
            poll: 10ms
bus: {{ max_attempts: 3, initial_backoff: 5ms, max_backoff: 20ms }}
"#
    )
}

fn env_for(cfg: &str) -> Env {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("baton.yaml"), cfg).unwrap();
    let config = Config::load(&dir.path().join("baton.yaml")).unwrap();
    let local = Local::open(config, &dir.path().join("state"), Settings::default()).unwrap();
    Env { dir, local }
}

const OLD: &str = "localhost:5000/demo/web:0.9.0";

async fn run_push(env: &Env) -> baton::event::Image {
    let img = env.push("1.0.0", "ci-bot", Utc::now()).await;
    env.drain().await;
    img
}

#[tokio::test]
async fn job_passes_and_rollout_succeeds_with_exact_requests() {
    let fake = fake_cluster(
        OLD,
        Rollout::Succeeds(3),
        JobScript::Succeeds(2, "12 tests passed\n"),
    )
    .await;
    let env = env_for(&config(&fake.url, "app"));
    let img = run_push(&env).await;
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
    let out = std::fs::read_to_string(
        env.root()
            .join(format!("state/store/{}", t.output_key.as_ref().unwrap())),
    )
    .unwrap();
    assert_eq!(out, "12 tests passed\n");

    // the Job, exactly
    let posts = fake.requests("POST", "/jobs");
    assert_eq!(posts.len(), 1);
    let job = &posts[0].body;
    assert_eq!(posts[0].path, "/apis/batch/v1/namespaces/baton-tests/jobs");
    assert_eq!(job["spec"]["backoffLimit"], 0);
    assert_eq!(job["spec"]["activeDeadlineSeconds"], 60);
    assert_eq!(job["spec"]["ttlSecondsAfterFinished"], 600);
    assert_eq!(
        job["metadata"]["labels"]["baton.dev/run"],
        env.run_of(&img).as_str()
    );
    let c = &job["spec"]["template"]["spec"]["containers"][0];
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
            .contains(&json!({"name": "SUITE", "value": "smoke"}))
    );
    assert!(
        c["env"]
            .as_array()
            .unwrap()
            .contains(&json!({"name": "BATON_IMAGE", "value": img.reference()}))
    );
    assert_eq!(job["spec"]["template"]["spec"]["restartPolicy"], "Never");
    // pushed code gets no cluster credentials, and runs restricted
    let pod = &job["spec"]["template"]["spec"];
    assert_eq!(pod["automountServiceAccountToken"], false);
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(c["securityContext"]["allowPrivilegeEscalation"], false);
    assert_eq!(c["securityContext"]["capabilities"]["drop"], json!(["ALL"]));
    let logs = fake.requests("GET", "/log");
    assert!(
        logs[0].query.contains("container=test") && !logs[0].query.contains("limitBytes"),
        "the whole log is streamed, its tail kept: {}",
        logs[0].query
    );

    // the PATCH, exactly
    let patches = fake.requests("PATCH", "/deployments/web");
    assert_eq!(patches.len(), 1);
    let p = &patches[0];
    assert_eq!(p.path, "/apis/apps/v1/namespaces/shop/deployments/web");
    assert_eq!(p.content_type, "application/strategic-merge-patch+json");
    assert!(p.query.contains("fieldManager=baton"), "{}", p.query);
    assert_eq!(
        p.body["spec"],
        json!({"template": {"spec": {"containers": [{"name": "app", "image": img.reference()}]}}})
    );
    let a = &p.body["metadata"]["annotations"];
    assert_eq!(a["baton.dev/run"], env.run_of(&img).as_str());
    assert_eq!(a["baton.dev/previous-image"], OLD);
    assert!(
        a["kubernetes.io/change-cause"]
            .as_str()
            .unwrap()
            .contains("1.0.0")
    );
    assert_eq!(fake.app_image(), img.reference());
    let Payload::DeploySucceeded(d) = &events[3].payload else {
        panic!()
    };
    assert_eq!(
        (d.target.as_str(), d.changed, d.previous.as_deref()),
        ("kubernetes", true, Some(OLD))
    );
}

#[tokio::test]
async fn stuck_rollout_rolls_back_and_names_the_cause() {
    let fake = fake_cluster(
        OLD,
        Rollout::StuckImagePull(3),
        JobScript::Succeeds(1, "ok"),
    )
    .await;
    let env = env_for(&config(&fake.url, "app"));
    let img = run_push(&env).await;
    let events = env.events(&img).await;
    let last = events.last().unwrap();
    let Payload::DeployFailed(f) = &last.payload else {
        panic!("deploy.failed: {:?}", sequence(&events))
    };
    assert_eq!(f.code, baton::event::FailureCode::RolloutFailed);
    assert!(f.rolled_back);
    assert!(
        f.reason.contains("ProgressDeadlineExceeded"),
        "{}",
        f.reason
    );
    assert!(
        f.reason
            .contains("pod web-7d9c5b-x2x4p: container app ImagePullBackOff"),
        "{}",
        f.reason
    );
    assert_eq!(f.live.as_deref(), Some(OLD));
    let patches = fake.requests("PATCH", "/deployments/web");
    assert_eq!(patches.len(), 2, "the change and the rollback");
    assert_eq!(
        patches[1].body["spec"]["template"]["spec"]["containers"][0]["image"],
        OLD
    );
    assert_eq!(fake.app_image(), OLD);
    assert_eq!(
        env.status(&img).await,
        "deploy failed (staging, rolled back)"
    );
}

#[tokio::test]
async fn already_live_digest_sends_no_patch() {
    let live = format!("localhost:5000/demo/web@{}", crate::digest("web 1.0.0"));
    let fake = fake_cluster(&live, Rollout::Succeeds(1), JobScript::Succeeds(1, "ok")).await;
    let env = env_for(&config(&fake.url, "app"));
    let img = run_push(&env).await;
    assert_eq!(img.reference(), live);
    let events = env.events(&img).await;
    let Payload::DeploySucceeded(d) = &events.last().unwrap().payload else {
        panic!("{:?}", sequence(&events))
    };
    assert!(!d.changed);
    assert!(
        fake.requests("PATCH", "").is_empty(),
        "no PATCH when the digest is already live"
    );
}

#[tokio::test]
async fn missing_container_is_a_permanent_error_naming_it() {
    let fake = fake_cluster(OLD, Rollout::Succeeds(1), JobScript::Succeeds(1, "ok")).await;
    let env = env_for(&config(&fake.url, "api"));
    let img = run_push(&env).await;
    let events = env.events(&img).await;
    let Payload::StageFailed(f) = &events.last().unwrap().payload else {
        panic!("{:?}", sequence(&events))
    };
    assert_eq!(f.error_kind, "permanent");
    assert!(
        f.reason.contains("no container named \"api\"") && f.reason.contains("sidecar, app"),
        "{}",
        f.reason
    );
    assert!(
        f.reason.contains("Deployment/web in namespace shop"),
        "{}",
        f.reason
    );
    assert!(fake.requests("PATCH", "").is_empty());
    // a missing workload too
    let fake2 = fake_cluster(OLD, Rollout::Succeeds(1), JobScript::Succeeds(1, "ok")).await;
    let env2 = env_for(
        &config(&fake2.url, "app").replace("name: web, container", "name: checkout, container"),
    );
    let img = run_push(&env2).await;
    let Payload::StageFailed(f) = &env2.events(&img).await.last().unwrap().payload.clone() else {
        panic!()
    };
    assert!(
        f.reason.contains("Deployment/checkout") && f.reason.contains("not found"),
        "{}",
        f.reason
    );
}

async fn failed_test(script: JobScript) -> (baton::event::TestReport, Fake, Env) {
    let fake = fake_cluster(OLD, Rollout::Succeeds(1), script).await;
    let env = env_for(&config(&fake.url, "app"));
    let img = run_push(&env).await;
    let events = env.events(&img).await;
    assert_eq!(sequence(&events), ["image.built", "tests.failed"]);
    let Payload::TestsFailed(r) = events[1].payload.clone() else {
        unreachable!()
    };
    assert!(fake.requests("PATCH", "").is_empty(), "nothing deployed");
    (r, fake, env)
}

#[tokio::test]
async fn job_failure_reports_exit_code_and_the_tail_of_its_logs() {
    // 200 KB of log: the end, where the failure is, is what is kept.
    let log: &'static str = format!("{}FAIL checkout_test\n", "ok\n".repeat(70_000)).leak();
    let (r, _fake, env) = failed_test(JobScript::FailsWith(3, log)).await;
    assert_eq!((r.summary.as_str(), r.exit_code), ("exit code 3", Some(3)));
    let out = std::fs::read_to_string(
        env.root()
            .join(format!("state/store/{}", r.output_key.unwrap())),
    )
    .unwrap();
    assert!(
        out.ends_with("ok\nFAIL checkout_test\n"),
        "the tail is kept"
    );
    assert!(out.starts_with("[… "), "says what was cut: {}", &out[..40]);
    assert!(out.len() <= 64 * 1024 + 64, "{}", out.len());
}

#[tokio::test]
async fn job_deadline_and_image_pull_failures() {
    let (r, _fake, _env) = failed_test(JobScript::Deadline).await;
    assert!(
        r.summary.starts_with("deadline exceeded after 1m"),
        "{}",
        r.summary
    );
    let (r, fake, _env) = failed_test(JobScript::ImagePull).await;
    assert!(
        r.summary.starts_with("image pull failed: ImagePullBackOff"),
        "{}",
        r.summary
    );
    assert_eq!(
        fake.requests("DELETE", "/jobs/").len(),
        1,
        "the stuck Job is deleted"
    );
}

#[tokio::test]
async fn redelivery_never_creates_a_second_job() {
    let fake = fake_cluster(OLD, Rollout::Succeeds(1), JobScript::Succeeds(3, "ok")).await;
    let env = env_for(&config(&fake.url, "app"));
    let img = env.push("1.0.0", "ci-bot", Utc::now()).await;
    let thrice = Repeat {
        inner: &env.local,
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
    assert_eq!(fake.requests("POST", "/jobs").len(), 1);
    // the runner itself: a start after a crash finds the Job instead of creating one
    use baton::ports::TestRunner;
    let cfg = env.local.pipeline.config.clone();
    let runner = env
        .local
        .pipeline
        .ports
        .test_runner(cfg.app("web").unwrap())
        .unwrap();
    let req = baton::ports::TestRequest {
        app: "web".into(),
        run: env.run_of(&img),
        image: img.clone(),
        attempt: 1,
    };
    let p = runner.start(&req).await.unwrap();
    assert!(
        matches!(p, baton::ports::TestProgress::Running { ref note, .. } if note.contains("already started")),
        "{p:?}"
    );
    assert_eq!(fake.requests("POST", "/jobs").len(), 1);
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

/// Runs the adapters against a real cluster. Ignored by default; to run it:
///
/// ```sh
/// KUBECONFIG=~/.kube/config BATON_TEST_NAMESPACE=baton-it \
///   cargo test -p baton --features kube --test it -- --ignored real_cluster
/// ```
///
/// It needs a namespace where it may create a Deployment named `baton-it` and Jobs
/// (the RBAC of `infra/k8s/` plus create on deployments). It fails, never skips, when
/// the variables are missing.
#[tokio::test]
#[ignore = "needs a real cluster: set KUBECONFIG and BATON_TEST_NAMESPACE"]
async fn real_cluster() {
    use baton::ports::{DeployTarget, TestProgress, TestRunner};
    let ns = std::env::var("BATON_TEST_NAMESPACE").expect("set BATON_TEST_NAMESPACE");
    let kubeconfig = std::env::var("KUBECONFIG").expect("set KUBECONFIG");
    let cfg: baton::config::ClusterConfig = serde_json::from_value(json!({
        "name": "real", "kubeconfig": {"path": kubeconfig}
    }))
    .unwrap();
    let cluster = Arc::new(baton::adapters::k8s::Cluster::new(
        cfg,
        std::path::PathBuf::from("."),
        Some(baton::adapters::k8s::from_files),
    ));
    let client = cluster.client().await.unwrap();
    let api: kube::Api<k8s_openapi::api::apps::v1::Deployment> = kube::Api::namespaced(client, &ns);
    let d: k8s_openapi::api::apps::v1::Deployment = serde_json::from_value(json!({
        "metadata": {"name": "baton-it"},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "baton-it"}},
                 "template": {"metadata": {"labels": {"app": "baton-it"}},
                              "spec": {"containers": [{"name": "app", "image": "registry.k8s.io/pause:3.9"}]}}}
    }))
    .unwrap();
    let _ = api.create(&Default::default(), &d).await;
    let image = baton::event::Image::parse(
        "registry.k8s.io",
        "pause",
        "3.10",
        "sha256:ee6521f290b2168b6e0935a181d4cff9be1ac3f505666ef0e3c98fae8199917a",
    )
    .unwrap();
    let target = baton::adapters::k8s::KubeDeployTarget {
        cluster: cluster.clone(),
        namespace: ns.clone(),
        workloads: vec![baton::config::WorkloadRef {
            kind: baton::config::WorkloadKind::Deployment,
            name: "baton-it".into(),
            container: "app".into(),
            namespace: None,
        }],
        timeout: std::time::Duration::from_secs(300),
        poll: std::time::Duration::from_secs(2),
    };
    let req = baton::ports::DeployRequest {
        app: "it".into(),
        environment: "it".into(),
        run: baton::ids::run_id("it", "real-cluster-test"),
        image: image.clone(),
        cause: "baton real-cluster test".into(),
    };
    target.apply(&req).await.unwrap();
    loop {
        match target.rollout(&req).await.unwrap() {
            baton::ports::Rollout::Complete { .. } => break,
            baton::ports::Rollout::Failed { reason } => panic!("{reason}"),
            baton::ports::Rollout::Progressing { check_after, .. } => {
                tokio::time::sleep(check_after).await
            }
        }
    }
    let job_cfg: baton::config::KubeJobTest = serde_json::from_value(json!({
        "cluster": "real", "namespace": ns, "command": ["/pause"], "deadline": "20s", "poll": "2s"
    }))
    .unwrap();
    let runner = baton::adapters::k8s::KubeJobRunner::new(job_cfg, cluster);
    let treq = baton::ports::TestRequest {
        app: "it".into(),
        run: baton::ids::run_id("it", &format!("real{}", Utc::now().timestamp())),
        image,
        attempt: 1,
    };
    let mut p = runner.start(&treq).await.unwrap();
    while let TestProgress::Running {
        state, check_after, ..
    } = p
    {
        tokio::time::sleep(check_after).await;
        p = runner.check(&treq, &state).await.unwrap();
    }
    let TestProgress::Finished(o) = p else {
        unreachable!()
    };
    assert!(
        !o.passed && o.summary.starts_with("deadline exceeded"),
        "pause never exits: {o:?}"
    );
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

/// The client of `eks` and `url` clusters (kube's HTTP stack without its kubeconfig
/// authentication) sends the bearer token on every request, and none when there is none.
#[tokio::test]
async fn the_direct_client_sends_the_bearer_token() {
    let fake = fake_cluster(
        "registry.local/shop/web:1",
        Rollout::Succeeds(1),
        JobScript::Succeeds(1, ""),
    )
    .await;
    for (token, want) in [(Some("t0ken.signed"), "Bearer t0ken.signed"), (None, "")] {
        let mut config = kube::Config::new(fake.url.parse().unwrap());
        config.auth_info.token = token.map(|t| secrecy::SecretString::from(t.to_string()));
        let client = baton::adapters::k8s::direct_client(config).unwrap();
        let api: kube::Api<k8s_openapi::api::apps::v1::Deployment> =
            kube::Api::namespaced(client, "shop");
        let d = api.get("web").await.unwrap();
        assert_eq!(d.metadata.name.as_deref(), Some("web"));
        let got = fake.requests("GET", "/deployments/web");
        assert_eq!(got.last().map(|r| r.authorization.as_str()), Some(want));
    }
}

/// Runs `openssl` (the Debian package) in `dir`.
fn openssl(dir: &std::path::Path, args: &[&str]) {
    let out = std::process::Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl makes the test certificates");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA named `ca` and a serving certificate for 127.0.0.1 it signs, made by `openssl`
/// in `dir`: (the CA's certificate, the server's certificate, the server's key), as DER.
fn loopback_certificates(
    dir: &std::path::Path,
    ca: &str,
) -> (
    rustls::pki_types::CertificateDer<'static>,
    rustls::pki_types::CertificateDer<'static>,
    rustls::pki_types::PrivateKeyDer<'static>,
) {
    use rustls::pki_types::pem::PemObject;
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-days",
        "1",
    ];
    let (ca_crt, ca_key) = (format!("{ca}.crt"), format!("{ca}.key"));
    let (crt, key) = (format!("{ca}-server.crt"), format!("{ca}-server.key"));
    let subject = format!("/CN={ca}");
    openssl(
        dir,
        &[
            &["req", "-x509"][..],
            &ec,
            &["-subj", &subject, "-keyout", &ca_key, "-out", &ca_crt],
        ]
        .concat(),
    );
    openssl(
        dir,
        &[
            &["req", "-x509"][..],
            &ec,
            &[
                "-subj",
                "/CN=127.0.0.1",
                "-addext",
                "subjectAltName=IP:127.0.0.1",
            ],
            &["-addext", "basicConstraints=critical,CA:FALSE"],
            &[
                "-CA", &ca_crt, "-CAkey", &ca_key, "-keyout", &key, "-out", &crt,
            ],
        ]
        .concat(),
    );
    (
        rustls::pki_types::CertificateDer::from_pem_file(dir.join(ca_crt)).unwrap(),
        rustls::pki_types::CertificateDer::from_pem_file(dir.join(crt)).unwrap(),
        rustls::pki_types::PrivateKeyDer::from_pem_file(dir.join(key)).unwrap(),
    )
}

/// The direct client verifies the API server: with the cluster's CA (what `eks.ca_data`
/// gives) it reaches the server over TLS and sends the token; a server whose
/// certificate another CA signed, or one the platform's trust store does not know (no
/// CA configured, as for `url`), is refused before any request is sent.
#[tokio::test]
async fn the_direct_client_trusts_only_the_configured_ca() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let fake = fake_cluster(
        "registry.local/shop/web:1",
        Rollout::Succeeds(1),
        JobScript::Succeeds(1, ""),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let (cluster_ca, server_cert, server_key) = loopback_certificates(dir.path(), "cluster-ca");
    let (other_ca, _, _) = loopback_certificates(dir.path(), "other-ca");
    let tls = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(vec![server_cert], server_key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(tls));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let tls_url = format!("https://{}", listener.local_addr().unwrap());
    let plain = fake.url.trim_start_matches("http://").to_string();
    // TLS in front of the test API server: decrypt, then copy bytes both ways.
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, plain) = (acceptor.clone(), plain.clone());
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                if let Ok(mut upstream) = tokio::net::TcpStream::connect(&plain).await {
                    let _ = tokio::io::copy_bidirectional(&mut tls, &mut upstream).await;
                }
            });
        }
    });

    let get = |roots: Option<Vec<Vec<u8>>>| {
        let url = tls_url.clone();
        async move {
            let mut config = kube::Config::new(url.parse().unwrap());
            config.root_cert = roots;
            config.auth_info.token = Some(secrecy::SecretString::from("t0ken".to_string()));
            let client = baton::adapters::k8s::direct_client(config).unwrap();
            let api: kube::Api<k8s_openapi::api::apps::v1::Deployment> =
                kube::Api::namespaced(client, "shop");
            api.get("web").await
        }
    };
    let d = get(Some(vec![cluster_ca.to_vec()])).await.unwrap();
    assert_eq!(d.metadata.name.as_deref(), Some("web"));
    let sent = fake.requests("GET", "/deployments/web");
    assert_eq!(sent.len(), 1, "one request through TLS");
    assert_eq!(sent[0].authorization, "Bearer t0ken");

    for (roots, what) in [
        (Some(vec![other_ca.to_vec()]), "another CA"),
        (None, "no CA"),
    ] {
        // The cause is in the error's chain, which Display leaves out.
        let e = format!("{:?}", get(roots).await.expect_err(what));
        assert!(e.contains("InvalidCertificate"), "{what}: {e}");
    }
    assert_eq!(
        fake.requests("GET", "/deployments/web").len(),
        1,
        "no request reaches an unverified server"
    );
}
