//! moto server: the AWS APIs (S3, SNS, SQS, ECR, Lambda, IAM, EventBridge) on loopback.

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
