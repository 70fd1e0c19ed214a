//! The AWS envelopes Baton events and requests travel in: an SNS notification inside an
//! SQS message, SQS batches from an event source mapping, Lambda function URL requests;
//! and what a JSON document is, judged by its shape. Errors name the field. No I/O.

use aws_lambda_events::sns::SnsMessage;
use aws_lambda_events::sqs::SqsEvent;
use serde_json::Value;

use crate::error::{Error, Result};
use crate::event::Event;
use crate::triggers::{TriggerKind, path_error};

/// Unwraps the Baton event inside an SNS notification (the body of an SQS message
/// subscribed to the topic without raw delivery).
pub fn event_from_sns_notification(body: &str) -> Result<Event> {
    let mut de = serde_json::Deserializer::from_str(body);
    let msg: SnsMessage = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        Error::invalid("SNS notification", format!("{path}: {}", e.inner()))
    })?;
    Event::from_json(&msg.message).map_err(|e| match e {
        Error::Invalid { reason, .. } => {
            Error::invalid("SNS notification", format!("Message: {reason}"))
        }
        other => other,
    })
}

/// Unwraps every record of an SQS event: `(messageId, event or why not)`.
pub fn events_from_sqs(payload: &Value) -> Result<Vec<(String, Result<Event>)>> {
    let ev: SqsEvent = serde_path_to_error::deserialize(payload.clone())
        .map_err(|e| path_error("SQS event", e))?;
    Ok(ev
        .records
        .into_iter()
        .enumerate()
        .map(|(i, r)| {
            let id = r
                .message_id
                .clone()
                .unwrap_or_else(|| format!("record {i}"));
            let parsed = match r.body.as_deref() {
                None => Err(Error::invalid(
                    "SQS event",
                    format!("Records[{i}].body: missing"),
                )),
                Some(b) => event_from_sns_notification(b).map_err(|e| match e {
                    Error::Invalid { what, reason } => {
                        Error::invalid("SQS event", format!("Records[{i}].body ({what}): {reason}"))
                    }
                    other => other,
                }),
            };
            (id, parsed)
        })
        .collect())
}

/// What a JSON document is, judged by its shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DocumentKind {
    BatonEvent,
    /// A registry notification of this kind.
    Trigger(TriggerKind),
    Sqs,
    Sns,
    /// A request through a Lambda function URL (webhooks to ingest, decisions to approve).
    FunctionUrl,
}

impl DocumentKind {
    pub fn describe(self) -> &'static str {
        match self {
            DocumentKind::BatonEvent => "Baton event (CloudEvents 1.0)",
            DocumentKind::Trigger(TriggerKind::Ecr) => "ECR Image Action (EventBridge)",
            DocumentKind::Trigger(TriggerKind::Distribution) => {
                "CNCF distribution notification envelope"
            }
            DocumentKind::Trigger(TriggerKind::Dockerhub) => "Docker Hub webhook",
            DocumentKind::Trigger(TriggerKind::Harbor) => "Harbor webhook",
            DocumentKind::Trigger(TriggerKind::Ghcr) => "GitHub package event (GHCR)",
            DocumentKind::Trigger(TriggerKind::Quay) => "Quay repository notification",
            DocumentKind::Trigger(TriggerKind::Cdevents) => "CDEvent (artifact.published)",
            DocumentKind::Trigger(TriggerKind::Pubsub) => "Google Cloud Pub/Sub push",
            DocumentKind::Trigger(TriggerKind::Eventgrid) => "Azure Event Grid delivery",
            DocumentKind::Trigger(TriggerKind::Acr) => "Alibaba Cloud ACR webhook",
            DocumentKind::Sqs => "SQS event (Lambda event source mapping)",
            DocumentKind::Sns => "SNS notification",
            DocumentKind::FunctionUrl => "Lambda function URL request",
        }
    }
}

/// Reads a Lambda function URL request (the `aws_lambda_events` type); errors name the
/// field.
pub fn function_url_request(
    v: &Value,
) -> Result<aws_lambda_events::lambda_function_urls::LambdaFunctionUrlRequest> {
    serde_path_to_error::deserialize(v).map_err(|e| path_error("function URL request", e))
}

/// Identifies a document; `None` when it is none of the known shapes.
pub fn identify(v: &Value) -> Option<DocumentKind> {
    if let Some(first) = v.as_array().and_then(|a| a.first())
        && first.get("eventType").is_some()
    {
        return Some(DocumentKind::Trigger(TriggerKind::Eventgrid));
    }
    let o = v.as_object()?;
    if o.contains_key("specversion") {
        Some(DocumentKind::BatonEvent)
    } else if o.contains_key("requestContext") && o.contains_key("rawPath") {
        Some(DocumentKind::FunctionUrl)
    } else if o.contains_key("detail-type") {
        Some(DocumentKind::Trigger(TriggerKind::Ecr))
    } else if o.contains_key("events") {
        Some(DocumentKind::Trigger(TriggerKind::Distribution))
    } else if o.contains_key("push_data")
        && o.get("repository")
            .is_some_and(|r| r.get("region").is_some())
    {
        Some(DocumentKind::Trigger(TriggerKind::Acr))
    } else if o.contains_key("push_data") {
        Some(DocumentKind::Trigger(TriggerKind::Dockerhub))
    } else if o.contains_key("event_data") {
        Some(DocumentKind::Trigger(TriggerKind::Harbor))
    } else if o.contains_key("package") {
        Some(DocumentKind::Trigger(TriggerKind::Ghcr))
    } else if o.get("message").is_some_and(|m| m.get("data").is_some()) {
        Some(DocumentKind::Trigger(TriggerKind::Pubsub))
    } else if o.contains_key("context") && o.contains_key("subject") {
        Some(DocumentKind::Trigger(TriggerKind::Cdevents))
    } else if o.contains_key("updated_tags") {
        Some(DocumentKind::Trigger(TriggerKind::Quay))
    } else if o.contains_key("Records") {
        Some(DocumentKind::Sqs)
    } else if o.get("Type").and_then(Value::as_str) == Some("Notification") {
        Some(DocumentKind::Sns)
    } else {
        None
    }
}
