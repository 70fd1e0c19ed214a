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

/// Creates an IAM role Lambda may assume, named `name`; its ARN.
pub async fn lambda_role(conf: &aws_config::SdkConfig, name: &str) -> String {
    aws_sdk_iam::Client::new(conf)
        .create_role()
        .role_name(name)
        .assume_role_policy_document(
            r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"Service":"lambda.amazonaws.com"},"Action":"sts:AssumeRole"}]}"#,
        )
        .send()
        .await
        .expect("create an IAM role")
        .role()
        .expect("the role")
        .arn()
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

/// Requests seen by a [`counting_proxy`], by service and kind (`s3 GET`, `s3 PUT`,
/// `sns`, `sqs`, `lambda`, `ecr`…).
pub type Counts = std::sync::Arc<std::sync::Mutex<std::collections::BTreeMap<String, u64>>>;

/// A loopback reverse proxy in front of moto at `target` that counts the requests passing
/// through by AWS service (the service of the request's SigV4 credential scope; for S3
/// also the method, which S3 prices differently). Returns its endpoint and the counts.
pub async fn counting_proxy(target: &str) -> (String, Counts) {
    use axum::body::{Body, to_bytes};
    use axum::extract::{Request, State};
    use axum::response::Response;

    #[derive(Clone)]
    struct Proxy {
        target: String,
        client: reqwest::Client,
        counts: Counts,
    }

    async fn forward(State(p): State<Proxy>, req: Request) -> Response {
        let (parts, body) = req.into_parts();
        let service = parts
            .headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|a| a.split("Credential=").nth(1))
            .and_then(|c| c.split('/').nth(3))
            .unwrap_or("unsigned")
            .to_string();
        let kind = if service == "s3" {
            format!("s3 {}", parts.method)
        } else {
            service
        };
        *p.counts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(kind)
            .or_default() += 1;
        let bytes = to_bytes(body, usize::MAX).await.unwrap_or_default();
        let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        let mut out = p
            .client
            .request(parts.method.clone(), format!("{}{path}", p.target))
            .body(bytes);
        for (name, value) in &parts.headers {
            if name != "host" && name != "content-length" {
                out = out.header(name, value);
            }
        }
        let Ok(answer) = out.send().await else {
            return Response::builder()
                .status(502)
                .body(Body::from("moto did not answer"))
                .unwrap_or_default();
        };
        let mut res = Response::builder().status(answer.status());
        for (name, value) in answer.headers() {
            if name != "content-length" && name != "transfer-encoding" {
                res = res.header(name, value);
            }
        }
        let body = answer.bytes().await.unwrap_or_default();
        res.body(Body::from(body)).unwrap_or_default()
    }

    let counts = Counts::default();
    let proxy = Proxy {
        target: target.trim_end_matches('/').to_string(),
        client: reqwest::Client::new(),
        counts: counts.clone(),
    };
    let app = axum::Router::new().fallback(forward).with_state(proxy);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the counting proxy");
    let endpoint = format!(
        "http://{}",
        listener.local_addr().expect("the proxy's address")
    );
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (endpoint, counts)
}
