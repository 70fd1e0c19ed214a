//! The RBAC in `infra/k8s/` grants each cluster-touching stage its row of the stage
//! table and nothing more (`kubernetes-validate` in `.ci/run` checks the schema).

use std::path::Path;

use serde::Deserialize;
use serde_json::Value;

fn documents() -> Vec<Value> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../infra/k8s");
    let mut docs = vec![];
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        for doc in serde_yaml_ng::Deserializer::from_str(&text) {
            let v = Value::deserialize(doc).unwrap();
            if !v.is_null() {
                docs.push(v);
            }
        }
    }
    docs
}

fn rules_of<'a>(docs: &'a [Value], role: &str) -> &'a Vec<Value> {
    docs.iter()
        .find(|d| d["kind"] == "Role" && d["metadata"]["name"] == role)
        .and_then(|d| d["rules"].as_array())
        .unwrap_or_else(|| panic!("no Role {role}"))
}

#[test]
fn rbac_is_namespaced_and_least_privilege() {
    let docs = documents();
    assert!(docs.len() >= 4);
    for d in &docs {
        let kind = d["kind"].as_str().unwrap();
        assert!(
            kind == "Role" || kind == "RoleBinding",
            "only namespaced RBAC, found {kind}"
        );
        assert!(
            d["metadata"]["namespace"].is_string(),
            "{kind} without a namespace"
        );
        for s in d["subjects"].as_array().into_iter().flatten() {
            let name = s["name"].as_str().unwrap();
            assert!(!name.starts_with("system:"), "bound to {name}");
        }
        if kind == "RoleBinding" {
            assert_eq!(
                d["roleRef"]["kind"], "Role",
                "bindings reference Roles, never ClusterRoles"
            );
        }
    }
    let test = rules_of(&docs, "baton-test");
    let grants: Vec<(String, String, Vec<String>)> = test
        .iter()
        .flat_map(|r| {
            let verbs: Vec<String> = r["verbs"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_str().unwrap().to_string())
                .collect();
            r["resources"].as_array().unwrap().iter().map(move |res| {
                (
                    r["apiGroups"][0].as_str().unwrap().to_string(),
                    res.as_str().unwrap().to_string(),
                    verbs.clone(),
                )
            })
        })
        .collect();
    assert_eq!(
        grants,
        [
            (
                "batch".into(),
                "jobs".into(),
                vec![
                    "create".into(),
                    "get".into(),
                    "list".into(),
                    "delete".into()
                ]
            ),
            ("".into(), "pods".into(), vec!["get".into(), "list".into()]),
            ("".into(), "pods/log".into(), vec!["get".into()]),
        ]
    );
    let deploy = rules_of(&docs, "baton-deploy");
    for r in deploy {
        let verbs = r["verbs"].as_array().unwrap();
        assert!(
            verbs
                .iter()
                .all(|v| v == "get" || v == "patch" || v == "list"),
            "deploy may only get/patch/list: {r}"
        );
        if r["resources"]
            .as_array()
            .unwrap()
            .iter()
            .any(|x| x == "deployments" || x == "statefulsets" || x == "daemonsets")
        {
            assert!(
                r["resourceNames"].as_array().is_some_and(|n| !n.is_empty()),
                "workloads are named: {r}"
            );
            assert!(
                !verbs.iter().any(|v| v == "list"),
                "no listing of workloads: {r}"
            );
        } else {
            assert_eq!(r["resources"], serde_json::json!(["pods"]), "{r}");
            assert_eq!(r["verbs"], serde_json::json!(["list"]), "{r}");
        }
    }
}

/// The stack's stage subscriptions and filter policies are the subscription table's.
#[test]
fn template_subscriptions_match_the_subscription_table() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../infra/template.yaml");
    let template = baton::audit::load_template(&path).unwrap();
    let resources = template["Resources"].as_object().unwrap();
    let mut from_template = std::collections::BTreeMap::new();
    for r in resources.values() {
        if r["Type"] != "AWS::SNS::Subscription" || r["Properties"]["Protocol"] != "sqs" {
            continue;
        }
        let queue = r["Properties"]["Endpoint"]["Fn::GetAtt"][0]
            .as_str()
            .unwrap()
            .to_string();
        let stage = queue.trim_end_matches("Queue").to_ascii_lowercase();
        assert_eq!(r["Properties"]["FilterPolicyScope"], "MessageAttributes");
        assert_eq!(
            r["Properties"]["RawMessageDelivery"], false,
            "functions parse the SNS envelope"
        );
        from_template.insert(stage, r["Properties"]["FilterPolicy"].clone());
    }
    for sub in baton::stages::subscriptions::stage_subscriptions() {
        let got = from_template
            .remove(sub.stage.as_str())
            .unwrap_or_else(|| panic!("the template has no subscription for {}", sub.stage));
        assert_eq!(&got, sub.filter.json(), "filter policy of {}", sub.stage);
        // each stage queue has a DLQ and its function reports partial batch failures
        let queue = &resources[&format!("{}Queue", capitalize(sub.stage.as_str()))];
        assert!(queue["Properties"]["RedrivePolicy"]["deadLetterTargetArn"].is_object());
        let f = &resources[&format!("{}Function", capitalize(sub.stage.as_str()))];
        assert_eq!(
            f["Properties"]["Events"]["Queue"]["Properties"]["FunctionResponseTypes"],
            serde_json::json!(["ReportBatchItemFailures"])
        );
    }
    // what is left is notify's, filtered by a parameter (its reactions filter further)
    assert_eq!(from_template.keys().collect::<Vec<_>>(), ["notify"]);
}

fn capitalize(s: &str) -> String {
    let mut c = s.chars();
    c.next()
        .map(|f| f.to_uppercase().collect::<String>() + c.as_str())
        .unwrap_or_default()
}
