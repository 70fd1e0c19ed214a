//! Reads the deployed roles' inline policies for `baton audit --live`.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::error::{Error, Message, Result};

/// `role logical id → [(action, resources)]` of the deployed roles named by `roles`
/// (logical id → role name; [`crate::audit::role_names`] reads them from the template).
/// Roles absent from the account are absent from the map (the drift check reports them).
pub async fn live_role_policies(
    roles: &BTreeMap<String, String>,
) -> Result<BTreeMap<String, Vec<(String, Vec<String>)>>> {
    let iam = aws_sdk_iam::Client::new(&super::sdk_config().await);
    let mut out = BTreeMap::new();
    for (id, name) in roles {
        let listed = match iam
            .list_role_policies()
            .role_name(name.as_str())
            .send()
            .await
        {
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
                .role_name(name.as_str())
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
                // A deployed policy holds plain strings (the template's functions are
                // resolved).
                let list = |v: &Value| -> Vec<String> {
                    match v {
                        Value::Array(a) => a
                            .iter()
                            .filter_map(Value::as_str)
                            .map(str::to_string)
                            .collect(),
                        Value::String(s) => vec![s.clone()],
                        _ => vec![],
                    }
                };
                let resources = list(&st["Resource"]);
                for action in list(&st["Action"]) {
                    grants.push((action, resources.clone()));
                }
            }
        }
        out.insert(id.clone(), grants);
    }
    Ok(out)
}
