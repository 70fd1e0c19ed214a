//! Reads the deployed roles' inline policies for `baton audit --live`.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::audit::render;
use crate::error::{Error, Message, Result};

/// `role logical id → [(action, resources)]` of the deployed stack's roles. Roles absent
/// from the account are absent from the map (the drift check reports them).
pub async fn live_role_policies(
    template: &Value,
    stack: &str,
) -> Result<BTreeMap<String, Vec<(String, Vec<String>)>>> {
    let iam = aws_sdk_iam::Client::new(&super::sdk_config().await);
    let mut out = BTreeMap::new();
    let resources = template["Resources"]
        .as_object()
        .cloned()
        .unwrap_or_default();
    for (id, r) in resources {
        if r["Type"] != "AWS::IAM::Role" {
            continue;
        }
        let name = render(&r["Properties"]["RoleName"]).replace("${AWS::StackName}", stack);
        let listed = match iam.list_role_policies().role_name(&name).send().await {
            Ok(l) => l,
            Err(e) => {
                let service = e.into_service_error();
                if service.is_no_such_entity_exception() {
                    continue;
                }
                return Err(Error::transient(
                    format!("list policies of role {name}"),
                    Message(service.to_string()),
                ));
            }
        };
        let mut grants = vec![];
        for policy in listed.policy_names() {
            let got = iam
                .get_role_policy()
                .role_name(&name)
                .policy_name(policy)
                .send()
                .await
                .map_err(|e| {
                    Error::transient(
                        format!("get policy {policy} of role {name}"),
                        Message(e.into_service_error().to_string()),
                    )
                })?;
            let decoded = percent_encoding::percent_decode_str(got.policy_document())
                .decode_utf8()
                .map_err(|e| Error::permanent(format!("policy {policy} of role {name}"), e))?;
            let doc: Value = serde_json::from_str(&decoded)
                .map_err(|e| Error::permanent(format!("policy {policy} of role {name}"), e))?;
            let statements = match &doc["Statement"] {
                Value::Array(a) => a.clone(),
                other => vec![other.clone()],
            };
            for st in statements {
                if st["Effect"] != "Allow" {
                    continue;
                }
                let list = |v: &Value| -> Vec<String> {
                    match v {
                        Value::Array(a) => a.iter().map(render).collect(),
                        Value::Null => vec![],
                        other => vec![render(other)],
                    }
                };
                let resources = list(&st["Resource"]);
                for action in list(&st["Action"]) {
                    grants.push((action, resources.clone()));
                }
            }
        }
        out.insert(id, grants);
    }
    Ok(out)
}
