//! The whole pipeline once against a real Kubernetes control plane
//! (`baton_testkit::k8s`): a push to a real registry notifies `baton serve`, the tests
//! run as a Job (the `baton-test` identity), staging is deployed by digest in the
//! cluster (the `baton-deploy` identity, infra/k8s RBAC in each namespace), production
//! waits for an approval over HTTP and is deployed after it; the real Deployment
//! controller rolls both out with kwok's pods.

use std::time::Instant;

use baton_testkit::k8s::{ADMIN, DEPLOY, TEST};
use serde_json::json;

use crate::registry::{
    ALICE_TOKEN, Api, HOOK_SECRET, free_port, push, start_registry, start_serve,
};

async fn deployment_image(ns: &str) -> (String, bool) {
    let d = baton_testkit::k8s::shared()
        .api(ADMIN)
        .object(&format!("/apis/apps/v1/namespaces/{ns}/deployments/web"))
        .await;
    let image = d["spec"]["template"]["spec"]["containers"][0]["image"]
        .as_str()
        .unwrap()
        .to_string();
    let s = &d["status"];
    let rolled_out = s["observedGeneration"] == d["metadata"]["generation"]
        && s["updatedReplicas"] == 1
        && s["availableReplicas"] == 1
        && s["replicas"] == 1;
    (image, rolled_out)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_pipeline_runs_end_to_end_against_a_real_cluster() {
    let cp = baton_testkit::k8s::shared();
    let admin = cp.api(ADMIN);
    let (tests, staging, production) = (
        cp.namespace("tests").await,
        cp.namespace("staging").await,
        cp.namespace("production").await,
    );
    let root_dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let test_rbac = std::fs::read_to_string(root_dir.join("infra/k8s/test-rbac.yaml")).unwrap();
    let deploy_rbac = std::fs::read_to_string(root_dir.join("infra/k8s/deploy-rbac.yaml")).unwrap();
    admin.apply_yaml(&test_rbac, &tests).await;

    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let serve_port = free_port();
    let hook = format!("http://127.0.0.1:{serve_port}/hooks/registry");
    let (_registry, reg) = start_registry(&root, Some((&hook, HOOK_SECRET))).await;
    let old = format!("127.0.0.1:{reg}/demo/app:0.9.0");
    for ns in [&staging, &production] {
        admin.apply_yaml(&deploy_rbac, ns).await;
        let d = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
            "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "web"}},
                     "template": {"metadata": {"labels": {"app": "web"}},
                                  "spec": {"containers": [{"name": "app", "image": old}]}}}});
        admin.apply_yaml(&d.to_string(), ns).await;
    }
    let kubeconfig = cp.kubeconfig.display();
    let cfg = format!(
        r#"
registries:
  - host: 127.0.0.1:{reg}
    url: http://127.0.0.1:{reg}
clusters:
  - name: deploy
    kubeconfig: {{ path: {kubeconfig}, context: {DEPLOY} }}
  - name: tests
    kubeconfig: {{ path: {kubeconfig}, context: {TEST} }}
apps:
  - name: app
    registry: 127.0.0.1:{reg}
    repository: demo/app
    tags: {{ semver: ">=1.0.0" }}
    test:
      kubernetes_job: {{ cluster: tests, namespace: {tests}, command: ["/bin/smoke"], deadline: 1m, poll: 200ms }}
    environments:
      - name: staging
        approval: auto
        deploy:
          kubernetes: {{ cluster: deploy, namespace: {staging}, workloads: [{{ kind: Deployment, name: web, container: app }}], poll: 200ms }}
      - name: production
        approval: {{ approvers: [alice], required: 1, unknown_pusher: allow }}
        deploy:
          kubernetes: {{ cluster: deploy, namespace: {production}, workloads: [{{ kind: Deployment, name: web, container: app }}], poll: 200ms }}
serve:
  webhooks:
    - {{ name: registry, source: distribution, auth: {{ header: {{ name: Authorization, secret_env: BATON_TEST_HOOK_SECRET }} }} }}
  approvers:
    alice: {{ token_env: BATON_TEST_ALICE_TOKEN }}
  readers:
    ci: {{ token_env: BATON_TEST_READER_TOKEN }}
"#
    );
    std::fs::write(root.join("baton.yaml"), cfg).unwrap();
    let _serve = start_serve(&root, serve_port).await;
    let api = Api::new(serve_port);

    let started = Instant::now();
    let digest = push(&root, reg, "demo/app", "1.0.0");
    api.wait_status(&digest, "awaiting approval (production)")
        .await;
    let reference = format!("127.0.0.1:{reg}/demo/app@{digest}");
    let (image, rolled_out) = deployment_image(&staging).await;
    assert_eq!(image, reference, "staging runs the pushed digest");
    assert!(
        rolled_out,
        "staging is deployed once the controller rolled it out"
    );
    assert_eq!(
        deployment_image(&production).await.0,
        old,
        "production waits"
    );
    let jobs = admin
        .object(&format!("/apis/batch/v1/namespaces/{tests}/jobs"))
        .await;
    let jobs = jobs["items"].as_array().unwrap();
    assert_eq!(jobs.len(), 1);
    assert_eq!(
        jobs[0]["spec"]["template"]["spec"]["containers"][0]["image"],
        reference.as_str()
    );
    assert_eq!(jobs[0]["status"]["succeeded"], 1);

    let run = api
        .runs()
        .await
        .into_iter()
        .find(|r| r["image"]["digest"] == digest.as_str())
        .and_then(|r| r["run"].as_str().map(str::to_owned))
        .unwrap();
    let (status, body) = api.decide(&run, "production", ALICE_TOKEN, "approve").await;
    assert_eq!(status, 200, "{body}");
    api.wait_status(&digest, "deployed").await;
    let (image, rolled_out) = deployment_image(&production).await;
    assert_eq!(image, reference);
    assert!(rolled_out);
    println!(
        "push → staging → approval → production in the cluster: {:.1} s",
        started.elapsed().as_secs_f64()
    );
}
