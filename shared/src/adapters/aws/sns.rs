//! `SnsBus`: publishes to the events topic with the message attributes subscriptions
//! filter on (`type`, `app`, `environment` as String, `attempt` as Number).

use aws_sdk_sns::types::MessageAttributeValue;

use crate::error::{Error, Message, Result};
use crate::event::AttrValue;
use crate::ports::{BusMessage, EventBus};

/// The events topic.
#[derive(Debug, Clone)]
pub struct SnsBus {
    client: crate::adapters::aws::Lazy<aws_sdk_sns::Client>,
    topic_arn: String,
}

impl SnsBus {
    pub fn new(
        client: impl Into<crate::adapters::aws::Lazy<aws_sdk_sns::Client>>,
        topic_arn: impl Into<String>,
    ) -> SnsBus {
        SnsBus {
            client: client.into(),
            topic_arn: topic_arn.into(),
        }
    }
}

impl EventBus for SnsBus {
    async fn publish(&self, msg: &BusMessage) -> Result<()> {
        let mut req = self
            .client
            .publish()
            .topic_arn(&self.topic_arn)
            .message(&msg.body);
        for (name, value) in &msg.attributes {
            let (data_type, text) = match value {
                AttrValue::String(s) => ("String", s.clone()),
                AttrValue::Number(n) => ("Number", n.to_string()),
                AttrValue::StringArray(a) => {
                    ("String.Array", serde_json::to_string(a).unwrap_or_default())
                }
            };
            let attr = MessageAttributeValue::builder()
                .data_type(data_type)
                .string_value(text)
                .build()
                .map_err(|e| Error::invalid("message attribute", e))?;
            req = req.message_attributes(name, attr);
        }
        req.send().await.map_err(|e| {
            Error::transient(
                format!("publish {} to {}", msg.id, self.topic_arn),
                Message(e.into_service_error().to_string()),
            )
        })?;
        Ok(())
    }
}
