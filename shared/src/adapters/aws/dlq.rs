//! Dead-letter queues of the stage queues: list what rests there, and redrive it back to
//! the stage's queue. Queue names follow the stack: `<stack>-<stage>` and
//! `<stack>-<stage>-dlq`.

use serde::Serialize;

use crate::error::{Error, Result};

/// A message resting in a DLQ.
#[derive(Debug, Clone, Serialize)]
pub struct DeadMessage {
    pub message_id: String,
    /// The Baton event type and id inside, when readable.
    pub event: Option<String>,
    pub receive_count: Option<String>,
}

/// Maps an SQS call's error to a transient error saying what was being done.
fn failed<E: std::error::Error>(what: String) -> impl FnOnce(E) -> Error {
    move |e| super::call_failed(what, e)
}

async fn url(sqs: &aws_sdk_sqs::Client, name: &str) -> Result<String> {
    sqs.get_queue_url()
        .queue_name(name)
        .send()
        .await
        .map_err(|e| Error::permanent(format!("queue {name}"), e.into_service_error().to_string()))
        .map(|o| o.queue_url().unwrap_or_default().to_string())
}

/// The messages in `<stack>-<stage>-dlq` (they become visible again right away).
pub async fn list(sqs: &aws_sdk_sqs::Client, stack: &str, stage: &str) -> Result<Vec<DeadMessage>> {
    let dlq = url(sqs, &format!("{stack}-{stage}-dlq")).await?;
    let mut out = vec![];
    let got = sqs
        .receive_message()
        .queue_url(&dlq)
        .max_number_of_messages(10)
        .visibility_timeout(0)
        .message_system_attribute_names(
            aws_sdk_sqs::types::MessageSystemAttributeName::ApproximateReceiveCount,
        )
        .send()
        .await
        .map_err(failed(format!("receive from {dlq}")))?;
    for m in got.messages() {
        let event = m
            .body()
            .and_then(|b| crate::envelopes::event_from_sns_notification(b).ok())
            .map(|e| format!("{} {}", e.event_type(), e.id));
        out.push(DeadMessage {
            message_id: m.message_id().unwrap_or_default().to_string(),
            event,
            receive_count: m
                .attributes()
                .and_then(|a| {
                    a.get(&aws_sdk_sqs::types::MessageSystemAttributeName::ApproximateReceiveCount)
                })
                .cloned(),
        });
    }
    Ok(out)
}

/// Moves every message of `<stack>-<stage>-dlq` back to `<stack>-<stage>`; returns how
/// many. Each is sent before it is deleted, so a crash duplicates rather than loses (the
/// harness drops duplicates).
pub async fn redrive(sqs: &aws_sdk_sqs::Client, stack: &str, stage: &str) -> Result<usize> {
    let dlq = url(sqs, &format!("{stack}-{stage}-dlq")).await?;
    let queue = url(sqs, &format!("{stack}-{stage}")).await?;
    let mut moved = 0;
    loop {
        let got = sqs
            .receive_message()
            .queue_url(&dlq)
            .max_number_of_messages(10)
            .send()
            .await
            .map_err(failed(format!("receive from {dlq}")))?;
        if got.messages().is_empty() {
            return Ok(moved);
        }
        for m in got.messages() {
            sqs.send_message()
                .queue_url(&queue)
                .message_body(m.body().unwrap_or_default())
                .send()
                .await
                .map_err(failed(format!("send to {queue}")))?;
            if let Some(h) = m.receipt_handle() {
                sqs.delete_message()
                    .queue_url(&dlq)
                    .receipt_handle(h)
                    .send()
                    .await
                    .map_err(failed(format!("delete from {dlq}")))?;
            }
            moved += 1;
        }
    }
}
