//! `baton audit` on the shipped stack and RBAC (clean), on mutated copies (each caught,
//! non-zero exit), and `--live` against moto's IAM (exactly the drift introduced).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::{Value, json};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn audit(args: &[&str], env: &[(&str, String)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_baton"));
    cmd.arg("--json")
        .arg("audit")
        .args(args)
        .current_dir(root());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

fn findings(o: &Output) -> Vec<Value> {
    let v: Value = serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
        panic!(
            "{e}: {}\n{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    });
    v["findings"].as_array().cloned().unwrap_or_default()
}

fn template() -> Value {
    baton::audit::load_template(&root().join("infra/template.yaml")).unwrap()
}

/// Writes a mutated template (JSON is YAML) and a copy of the RBAC directory.
fn mutated(dir: &Path, f: impl FnOnce(&mut Value)) -> (String, String) {
    let mut t = template();
    f(&mut t);
    let tpl = dir.join("template.yaml");
    std::fs::write(&tpl, serde_json::to_string_pretty(&t).unwrap()).unwrap();
    let k8s = dir.join("k8s");
    std::fs::create_dir_all(&k8s).unwrap();
    for e in std::fs::read_dir(root().join("infra/k8s")).unwrap() {
        let p = e.unwrap().path();
        std::fs::copy(&p, k8s.join(p.file_name().unwrap())).unwrap();
    }
    (tpl.display().to_string(), k8s.display().to_string())
}

/// A change to the template.
type Mutation = Box<dyn Fn(&mut Value)>;

fn statements<'a>(t: &'a mut Value, role: &str) -> &'a mut Vec<Value> {
    t["Resources"][role]["Properties"]["Policies"][0]["PolicyDocument"]["Statement"]
        .as_array_mut()
        .unwrap()
}

#[test]
fn shipped_stack_and_rbac_have_no_findings() {
    let o = audit(&[], &[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stdout));
    assert!(findings(&o).is_empty());
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    let stages: std::collections::BTreeSet<&str> = v["grants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["stage"].as_str().unwrap())
        .collect();
    assert_eq!(
        stages.len(),
        baton::pipeline::StageName::ALL.len(),
        "every stage has its own grants: {stages:?}"
    );
    let text = Command::new(env!("CARGO_BIN_EXE_baton"))
        .arg("audit")
        .current_dir(root())
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&text.stdout).contains("no findings"));
}

#[test]
fn each_mutation_is_caught_with_a_non_zero_exit() {
    let dir = tempfile::tempdir().unwrap();
    let cases: Vec<(&str, Mutation, &str, &str)> = vec![
        (
            "wildcard",
            Box::new(|t| {
                statements(t, "GateRole")
                    .push(json!({"Effect": "Allow", "Action": "s3:*", "Resource": "*"}))
            }),
            "wildcard",
            "s3:*",
        ),
        (
            "deploy pushes images",
            Box::new(|t| {
                statements(t, "DeployRole").push(json!({"Effect": "Allow", "Action": ["ecr:PutImage"], "Resource": {"Ref": "EcrRepositoryArns"}}))
            }),
            "outside-row",
            "deploy holds registry-write (ecr:PutImage",
        ),
        (
            "the test role sends to deploy's queue (it could feed deploy any event)",
            Box::new(|t| {
                statements(t, "TestRole").push(json!({"Effect": "Allow", "Action": ["sqs:SendMessage"], "Resource": {"Fn::GetAtt": ["DeployQueue", "Arn"]}}))
            }),
            "foreign-queue",
            "TestRole",
        ),
        (
            "ingest deploys",
            Box::new(|t| {
                statements(t, "IngestRole").push(json!({"Effect": "Allow", "Action": ["lambda:UpdateFunctionCode"], "Resource": {"Ref": "DeployTargetFunctionArns"}}))
            }),
            "outside-row",
            "ingest holds deploy-functions",
        ),
        (
            "the gate role writes approval records again (a compromised gate forges approvals)",
            Box::new(|t| {
                statements(t, "GateRole").push(json!({"Effect": "Allow", "Action": ["s3:PutObject"], "Resource": {"Fn::Sub": "${StateBucket.Arn}/approvals/*"}}))
            }),
            "approvals-writer",
            "GateRole statement",
        ),
        (
            "the test role writes every key of the bucket",
            Box::new(|t| {
                statements(t, "TestRole").push(json!({"Effect": "Allow", "Action": ["s3:Put*"], "Resource": {"Fn::Sub": "${StateBucket.Arn}/*"}}))
            }),
            "approvals-writer",
            "only approve may",
        ),
        (
            "the test role writes every stage's records (it could rewrite deploy's progress)",
            Box::new(|t| {
                statements(t, "TestRole").push(json!({"Effect": "Allow", "Action": ["s3:PutObject"], "Resource": {"Fn::Sub": "${StateBucket.Arn}/runs/*"}}))
            }),
            "foreign-stage-records",
            "ingest, gate, approve, deploy, verify, promote, notify",
        ),
        (
            "shared role",
            Box::new(|t| {
                t["Resources"]["TestFunction"]["Properties"]["Role"] =
                    json!({"Fn::GetAtt": ["GateRole", "Arn"]})
            }),
            "shared-role",
            "GateRole is shared by GateFunction and TestFunction",
        ),
    ];
    for (i, (name, mutate, code, text)) in cases.into_iter().enumerate() {
        let sub = dir.path().join(format!("case{i}"));
        std::fs::create_dir_all(&sub).unwrap();
        let (tpl, k8s) = mutated(&sub, mutate);
        let o = audit(&["--template", &tpl, "--k8s", &k8s], &[]);
        assert_eq!(o.status.code(), Some(1), "{name}: non-zero exit");
        let f = findings(&o);
        assert!(
            f.iter()
                .any(|x| x["code"] == code && x["message"].as_str().unwrap().contains(text)),
            "{name}: expected [{code}] {text:?} in {f:#?}"
        );
    }

    // a ClusterRoleBinding in the RBAC directory
    let sub = dir.path().join("crb");
    std::fs::create_dir_all(&sub).unwrap();
    let (tpl, k8s) = mutated(&sub, |_| {});
    std::fs::write(
        Path::new(&k8s).join("oops.yaml"),
        "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRoleBinding\nmetadata: {name: baton-deploy-everywhere}\nroleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: edit}\nsubjects: [{apiGroup: rbac.authorization.k8s.io, kind: Group, name: baton-deploy}]\n",
    )
    .unwrap();
    let o = audit(&["--template", &tpl, "--k8s", &k8s], &[]);
    assert_eq!(o.status.code(), Some(1));
    let f = findings(&o);
    assert!(
        f.iter().any(|x| x["code"] == "cluster-role"
            && x["message"]
                .as_str()
                .unwrap()
                .contains("ClusterRoleBinding baton-deploy-everywhere")),
        "{f:#?}"
    );

    // the test Role widened into the deploy namespace
    let sub = dir.path().join("testns");
    std::fs::create_dir_all(&sub).unwrap();
    let (tpl, k8s) = mutated(&sub, |_| {});
    let p = Path::new(&k8s).join("test-rbac.yaml");
    std::fs::write(
        &p,
        std::fs::read_to_string(&p)
            .unwrap()
            .replace("namespace: baton-tests", "namespace: shop"),
    )
    .unwrap();
    let o = audit(&["--template", &tpl, "--k8s", &k8s], &[]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        findings(&o)
            .iter()
            .any(|x| x["code"] == "test-in-production-namespace"),
        "{:#?}",
        findings(&o)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn live_audit_reports_exactly_the_drift_against_moto() {
    let (_moto, endpoint) = crate::moto().await;
    let conf = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .endpoint_url(&endpoint)
        .region(aws_config::Region::new("us-east-1"))
        .credentials_provider(aws_sdk_iam::config::Credentials::new(
            "testing", "testing", None, None, "test",
        ))
        .load()
        .await;
    let iam = aws_sdk_iam::Client::new(&conf);

    // create the stack's roles with the template's policies (resources made concrete)
    let stack = "baton-it";
    let t = template();
    let policy_of = |role: &Value| -> (String, Value) {
        let p = &role["Properties"]["Policies"][0];
        let mut doc = p["PolicyDocument"].clone();
        for st in doc["Statement"].as_array_mut().unwrap() {
            st["Resource"] = json!("arn:aws:s3:::placeholder");
            st.as_object_mut().unwrap().remove("Condition");
        }
        (p["PolicyName"].as_str().unwrap().to_string(), doc)
    };
    let trust = json!({"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Principal": {"Service": "lambda.amazonaws.com"}, "Action": "sts:AssumeRole"}]});
    for (id, r) in t["Resources"].as_object().unwrap() {
        if r["Type"] != "AWS::IAM::Role" {
            continue;
        }
        let stage = id.trim_end_matches("Role").to_ascii_lowercase();
        let name = format!("{stack}-{stage}");
        iam.create_role()
            .role_name(&name)
            .assume_role_policy_document(trust.to_string())
            .send()
            .await
            .unwrap();
        let (pname, doc) = policy_of(r);
        iam.put_role_policy()
            .role_name(&name)
            .policy_name(pname)
            .policy_document(doc.to_string())
            .send()
            .await
            .unwrap();
    }
    let env = vec![
        ("AWS_ENDPOINT_URL", endpoint.clone()),
        ("AWS_ACCESS_KEY_ID", "testing".to_string()),
        ("AWS_SECRET_ACCESS_KEY", "testing".to_string()),
        ("AWS_REGION", "us-east-1".to_string()),
    ];
    let o = audit(&["--live", "--stack", stack], &env);
    assert!(
        o.status.success(),
        "no drift yet: {:#?}\n{}",
        findings(&o),
        String::from_utf8_lossy(&o.stderr)
    );

    // widen the deploy role's inline policy
    let (pname, mut doc) = policy_of(&t["Resources"]["DeployRole"]);
    doc["Statement"]
        .as_array_mut()
        .unwrap()
        .push(json!({"Effect": "Allow", "Action": "ecr:PutImage", "Resource": "*"}));
    iam.put_role_policy()
        .role_name(format!("{stack}-deploy"))
        .policy_name(pname)
        .policy_document(doc.to_string())
        .send()
        .await
        .unwrap();
    let o = audit(&["--live", "--stack", stack], &env);
    assert_eq!(o.status.code(), Some(1));
    let f = findings(&o);
    assert_eq!(f.len(), 1, "exactly the drift introduced: {f:#?}");
    assert_eq!(f[0]["code"], "drift");
    assert_eq!(f[0]["stage"], "deploy");
    let msg = f[0]["message"].as_str().unwrap();
    assert!(
        msg.contains("DeployRole") && msg.contains("ecr:PutImage") && msg.contains('*'),
        "{msg}"
    );
}

/// `baton audit --kube-context` against a real control plane (`baton_testkit::k8s`):
/// with infra/k8s applied (into namespaces of this test) the cluster agrees with the
/// manifests; an extra binding that makes the deploy identity cluster-admin, a Role
/// widened in place and a binding removed are each reported as `cluster-drift` naming
/// the stage, the identity, the namespace and the permissions.
#[tokio::test]
async fn the_cluster_audit_finds_what_each_stage_may_really_do() {
    use baton_testkit::k8s::ADMIN;
    let cp = baton_testkit::k8s::shared();
    let admin = cp.api(ADMIN);
    let (shop, tests) = (cp.namespace("shop").await, cp.namespace("tests").await);
    let dir = tempfile::tempdir().unwrap();
    let k8s = dir.path().join("k8s");
    std::fs::create_dir_all(&k8s).unwrap();
    let deploy_rbac = std::fs::read_to_string(root().join("infra/k8s/deploy-rbac.yaml"))
        .unwrap()
        .replace("namespace: shop", &format!("namespace: {shop}"));
    let test_rbac = std::fs::read_to_string(root().join("infra/k8s/test-rbac.yaml"))
        .unwrap()
        .replace("namespace: baton-tests", &format!("namespace: {tests}"));
    std::fs::write(k8s.join("deploy-rbac.yaml"), &deploy_rbac).unwrap();
    std::fs::write(k8s.join("test-rbac.yaml"), &test_rbac).unwrap();
    admin.apply_yaml(&deploy_rbac, &shop).await;
    admin.apply_yaml(&test_rbac, &tests).await;
    let kubeconfig = cp.kubeconfig.display().to_string();
    let k8s_arg = k8s.display().to_string();
    let run = |extra: &[&str]| {
        let mut args = vec![
            "--k8s",
            k8s_arg.as_str(),
            "--kube-context",
            ADMIN,
            "--kubeconfig",
            kubeconfig.as_str(),
            "--kube-namespace",
            "production",
        ];
        args.extend_from_slice(extra);
        audit(&args, &[])
    };
    let drift = |o: &Output| -> Vec<String> {
        findings(o)
            .into_iter()
            .filter(|f| f["code"] == "cluster-drift")
            .map(|f| f["message"].as_str().unwrap().to_string())
            .collect()
    };

    let o = run(&[]);
    assert!(
        o.status.success(),
        "clean: {}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    let grants = v["cluster_grants"].as_array().unwrap();
    let of = |stage: &str, ns: &str| -> Vec<String> {
        grants
            .iter()
            .filter(|g| g["stage"] == stage && g["namespace"] == ns)
            .flat_map(|g| {
                g["rules"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|r| r.as_str().unwrap().to_string())
            })
            .collect()
    };
    assert_eq!(
        of("deploy", &shop),
        ["apps/deployments[web]: get,patch", "pods: list"]
    );
    assert!(
        of("test", &tests).contains(&"batch/jobs: create,delete,get,list".to_string()),
        "{:?}",
        of("test", &tests)
    );
    assert!(of("deploy", "production").is_empty() && of("test", &shop).is_empty());

    // 1. An extra binding: the deploy group is made cluster-admin.
    let crb = format!("baton-audit-test-{shop}");
    admin
        .create(
            "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings",
            &json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
                    "metadata": {"name": crb},
                    "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cluster-admin"},
                    "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": "baton-deploy"}]}),
        )
        .await;
    let o = run(&[]);
    assert_eq!(o.status.code(), Some(1), "findings fail the audit");
    let d = drift(&o);
    for ns in [shop.as_str(), "production", "kube-system"] {
        assert!(
            d.iter()
                .any(|m| m.contains("group baton-deploy (deploy) may */*: *")
                    && m.contains(&format!("namespace {ns},"))),
            "cluster-admin seen in {ns}: {d:#?}"
        );
    }
    assert!(
        d.iter().all(|m| m.contains("(deploy)")),
        "only deploy drifted: {d:#?}"
    );
    let (code, _) = admin
        .send(
            reqwest::Method::DELETE,
            &format!("/apis/rbac.authorization.k8s.io/v1/clusterrolebindings/{crb}"),
            "",
            None,
        )
        .await
        .unwrap();
    assert_eq!(code, 200);

    // 2. A Role widened in place: the test stage may read Secrets where its Jobs run.
    admin
        .apply_yaml(
            &test_rbac.replace(
                "  - apiGroups: [\"\"]\n    resources: [\"pods/log\"]",
                "  - apiGroups: [\"\"]\n    resources: [\"secrets\"]\n    verbs: [\"get\"]\n  - apiGroups: [\"\"]\n    resources: [\"pods/log\"]",
            ),
            &tests,
        )
        .await;
    // 3. A binding removed: the deploy stage can no longer patch its workload.
    let (code, _) = admin
        .send(
            reqwest::Method::DELETE,
            &format!(
                "/apis/rbac.authorization.k8s.io/v1/namespaces/{shop}/rolebindings/baton-deploy"
            ),
            "",
            None,
        )
        .await
        .unwrap();
    assert_eq!(code, 200);
    let o = run(&[]);
    assert_eq!(o.status.code(), Some(1));
    let mut d = drift(&o);
    d.sort();
    assert_eq!(d.len(), 2, "{d:#?}");
    assert!(
        d[0].contains("group baton-deploy (deploy) lacks")
            && d[0].contains("apps/deployments[web]: get,patch")
            && d[0].contains(&format!("namespace {shop},")),
        "{}",
        d[0]
    );
    assert!(
        d[1].contains("group baton-test (test) may secrets: get")
            && d[1].contains(&format!("namespace {tests},")),
        "{}",
        d[1]
    );
}
