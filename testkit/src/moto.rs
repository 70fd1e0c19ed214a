//! moto server: the AWS APIs (S3, SNS, SQS, ECR, Lambda, IAM, EventBridge) on loopback,
//! and SNS topics with subscribed SQS queues on it.

use std::process::{Command, Stdio};
use std::time::Duration;

use crate::{Proc, free_port, venv_program, wait_tcp};

/// A running moto server.
pub struct Moto {
    _proc: Proc,
    /// `http://127.0.0.1:<port>`.
    pub endpoint: String,
}

/// Starts moto server on a free port and waits until it listens.
pub async fn moto() -> Moto {
    let port = free_port();
    let child = Command::new(venv_program("moto_server"))
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start moto_server");
    let proc = Proc(child);
    wait_tcp(port, Duration::from_secs(30), "moto_server").await;
    Moto {
        _proc: proc,
        endpoint: format!("http://127.0.0.1:{port}"),
    }
}

impl Moto {
    /// SDK configuration for this server (us-east-1, test credentials).
    pub async fn config(&self) -> aws_config::SdkConfig {
        sdk(&self.endpoint).await
    }
}

/// SDK configuration for a moto server at `endpoint`.
pub async fn sdk(endpoint: &str) -> aws_config::SdkConfig {
    aws_config::defaults(aws_config::BehaviorVersion::latest())
        .endpoint_url(endpoint)
        .region(aws_config::Region::new("us-east-1"))
        .credentials_provider(aws_credential_types::Credentials::new(
            "testing", "testing", None, None, "moto",
        ))
        .load()
        .await
}

/// Creates an SNS topic; its ARN.
pub async fn topic(sns: &aws_sdk_sns::Client, name: &str) -> String {
    sns.create_topic()
        .name(name)
        .send()
        .await
        .expect("create an SNS topic")
        .topic_arn()
        .expect("the topic's ARN")
        .to_string()
}

/// Creates an SQS queue subscribed to `topic` with a filter policy (raw delivery when
/// `raw`: the message body and attributes as published); the queue's URL.
pub async fn subscribed_queue(
    sns: &aws_sdk_sns::Client,
    sqs: &aws_sdk_sqs::Client,
    topic: &str,
    name: &str,
    filter_policy: &str,
    raw: bool,
) -> String {
    let url = sqs
        .create_queue()
        .queue_name(name)
        .send()
        .await
        .expect("create an SQS queue")
        .queue_url()
        .expect("the queue's URL")
        .to_string();
    let mut sub = sns
        .subscribe()
        .topic_arn(topic)
        .protocol("sqs")
        .endpoint(format!("arn:aws:sqs:us-east-1:123456789012:{name}"))
        .attributes("FilterPolicy", filter_policy);
    if raw {
        sub = sub.attributes("RawMessageDelivery", "true");
    }
    sub.send()
        .await
        .unwrap_or_else(|e| panic!("subscribe {name} with {filter_policy}: {e:?}"));
    url
}
