//! ECR pushes through EventBridge: "ECR Image Action" (no pusher) or CloudTrail's
//! "AWS API Call via CloudTrail" for `PutImage`, which names the caller's IAM identity.

use aws_lambda_events::eventbridge::EventBridgeEvent;
use chrono::Utc;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{Error, Result};
use crate::reference::{Digest, RegistryHost, excerpt};
use crate::triggers::{Parsed, Push, TriggerKind, notification_id, part, path_error, pusher};

/// The `detail` of an "ECR Image Action" event.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct EcrImageAction {
    pub result: String,
    pub repository_name: String,
    #[serde(default)]
    pub image_digest: Option<String>,
    pub action_type: String,
    #[serde(default)]
    pub image_tag: Option<String>,
}

/// The ECR registry host of an account and region, both checked: a 12-digit account and
/// a region name.
fn ecr_registry(account: Option<&str>, region: Option<&str>) -> Result<RegistryHost> {
    let account = account.unwrap_or_default();
    let region = region.unwrap_or_default();
    if account.len() != 12 || !account.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Error::invalid(
            "ECR event",
            format!(
                "account: {} is not a 12-digit AWS account id",
                excerpt(account)
            ),
        ));
    }
    if region.is_empty()
        || !region
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Err(Error::invalid(
            "ECR event",
            format!("region: {} is not an AWS region", excerpt(region)),
        ));
    }
    part(
        "ECR event",
        "account/region",
        &format!("{account}.dkr.ecr.{region}.amazonaws.com"),
    )
}

/// The `detail` of an "AWS API Call via CloudTrail" event for ECR's `PutImage`: the
/// push with the caller's verified identity.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct CloudTrailPutImage {
    event_name: String,
    #[serde(rename = "eventID", default)]
    event_id: Option<String>,
    #[serde(default)]
    error_code: Option<String>,
    user_identity: CloudTrailIdentity,
    #[serde(default)]
    request_parameters: Option<PutImageRequest>,
    #[serde(default)]
    response_elements: Option<PutImageResponse>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct CloudTrailIdentity {
    #[serde(default)]
    arn: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct PutImageRequest {
    repository_name: String,
    #[serde(default)]
    image_tag: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct PutImageResponse {
    #[serde(default)]
    image: Option<PutImageImage>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct PutImageImage {
    #[serde(default)]
    image_id: Option<PutImageId>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct PutImageId {
    #[serde(default)]
    image_digest: Option<String>,
}

/// The two detail types ECR pushes arrive as through EventBridge.
pub const ECR_IMAGE_ACTION: &str = "ECR Image Action";
pub const CLOUDTRAIL_API_CALL: &str = "AWS API Call via CloudTrail";

/// Parses an EventBridge event about an ECR push: "ECR Image Action" (no pusher), or
/// "AWS API Call via CloudTrail" for `PutImage`, which names the caller's IAM identity
/// (so the no-self-approval rule has a pusher).
pub fn parse_ecr(payload: &Value) -> Result<Parsed> {
    let kind = payload.get("detail-type").and_then(Value::as_str);
    if payload.get("source").and_then(Value::as_str) == Some("aws.ecr")
        && kind == Some(CLOUDTRAIL_API_CALL)
    {
        return parse_ecr_cloudtrail(payload);
    }
    let ev: EventBridgeEvent<EcrImageAction> = serde_path_to_error::deserialize(payload.clone())
        .map_err(|e| path_error("ECR event", e))?;
    if ev.source != "aws.ecr" || ev.detail_type != ECR_IMAGE_ACTION {
        return Err(Error::invalid(
            "ECR event",
            format!(
                "source/detail-type: {}/{} is not aws.ecr/\"{ECR_IMAGE_ACTION}\" or \"{CLOUDTRAIL_API_CALL}\"",
                excerpt(&ev.source),
                excerpt(&ev.detail_type)
            ),
        ));
    }
    let d = &ev.detail;
    let mut out = Parsed::default();
    if d.action_type != "PUSH" || d.result != "SUCCESS" {
        out.ignored.push(format!(
            "{} {} of {} is not a successful push",
            excerpt(&d.action_type),
            excerpt(&d.result),
            excerpt(&d.repository_name)
        ));
        return Ok(out);
    }
    let Some(tag) = d.image_tag.as_deref().filter(|t| !t.is_empty()) else {
        out.ignored
            .push(format!("untagged push to {}", excerpt(&d.repository_name)));
        return Ok(out);
    };
    const WHAT: &str = "ECR event";
    let digest: Digest = part(
        WHAT,
        "detail.image-digest",
        d.image_digest
            .as_deref()
            .ok_or_else(|| Error::invalid(WHAT, "detail.image-digest: missing on a push"))?,
    )?;
    let registry = ecr_registry(ev.account.as_deref(), ev.region.as_deref())?;
    out.pushes.push(Push {
        trigger: TriggerKind::Ecr,
        notification_id: notification_id(
            WHAT,
            "id",
            ev.id.clone().unwrap_or_else(|| digest.to_string()),
        )?,
        registry,
        repository: part(WHAT, "detail.repository-name", &d.repository_name)?,
        tag: part(WHAT, "detail.image-tag", tag)?,
        digest: Some(digest),
        pushed_at: ev.time.unwrap_or_else(Utc::now),
        pushed_by: None,
    });
    Ok(out)
}

fn parse_ecr_cloudtrail(payload: &Value) -> Result<Parsed> {
    const WHAT: &str = "ECR CloudTrail event";
    let ev: EventBridgeEvent<CloudTrailPutImage> =
        serde_path_to_error::deserialize(payload.clone()).map_err(|e| path_error(WHAT, e))?;
    let d = &ev.detail;
    let mut out = Parsed::default();
    if d.event_name != "PutImage" {
        out.ignored.push(format!(
            "ECR API call {} is not a push",
            excerpt(&d.event_name)
        ));
        return Ok(out);
    }
    if let Some(code) = &d.error_code {
        out.ignored.push(format!(
            "PutImage failed ({}); nothing was pushed",
            excerpt(code)
        ));
        return Ok(out);
    }
    let Some(req) = &d.request_parameters else {
        return Err(Error::invalid(
            WHAT,
            "detail.requestParameters: missing on a PutImage call",
        ));
    };
    let Some(tag) = req.image_tag.as_deref().filter(|t| !t.is_empty()) else {
        out.ignored.push(format!(
            "untagged push to {}",
            excerpt(&req.repository_name)
        ));
        return Ok(out);
    };
    let arn = d
        .user_identity
        .arn
        .clone()
        .ok_or_else(|| Error::invalid(WHAT, "detail.userIdentity.arn: missing"))?;
    let digest = match d
        .response_elements
        .as_ref()
        .and_then(|r| r.image.as_ref())
        .and_then(|i| i.image_id.as_ref())
        .and_then(|i| i.image_digest.as_deref())
    {
        Some(d) => Some(part(
            WHAT,
            "detail.responseElements.image.imageId.imageDigest",
            d,
        )?),
        // CloudTrail may leave out large response elements: ingest resolves the tag.
        None => None,
    };
    out.pushes.push(Push {
        trigger: TriggerKind::Ecr,
        notification_id: notification_id(
            WHAT,
            "detail.eventID",
            d.event_id
                .clone()
                .or_else(|| ev.id.clone())
                .unwrap_or_else(|| format!("{}:{tag}", req.repository_name)),
        )?,
        registry: ecr_registry(ev.account.as_deref(), ev.region.as_deref())?,
        repository: part(
            WHAT,
            "detail.requestParameters.repositoryName",
            &req.repository_name,
        )?,
        tag: part(WHAT, "detail.requestParameters.imageTag", tag)?,
        digest,
        pushed_at: ev.time.unwrap_or_else(Utc::now),
        pushed_by: pusher(WHAT, "detail.userIdentity.arn", Some(arn))?,
    });
    Ok(out)
}
