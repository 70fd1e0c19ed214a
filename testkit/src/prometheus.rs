//! Prometheus (Debian's `prometheus` package) on a free loopback port, scraping the
//! targets a test gives it every second, with its storage in the test's directory.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::{Proc, free_port, wait_tcp};

/// A running Prometheus server.
pub struct Prometheus {
    _proc: Proc,
    pub port: u16,
}

/// Starts Prometheus under `dir`, scraping `targets` (`127.0.0.1:port`) every second as
/// job `app`.
pub async fn start(dir: &Path, targets: &[String]) -> Prometheus {
    let port = free_port();
    let config = dir.join("prometheus.yml");
    let list = targets
        .iter()
        .map(|t| format!("'{t}'"))
        .collect::<Vec<_>>()
        .join(", ");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: app\n    static_configs:\n      - targets: [{list}]\n"
        ),
    )
    .expect("write prometheus.yml");
    let log = std::fs::File::create(dir.join("prometheus.log")).expect("create prometheus.log");
    let child = Command::new("prometheus")
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("prometheus-data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start prometheus (apt-get install prometheus; .ci/run does)");
    let proc = Proc(child);
    wait_tcp(port, Duration::from_secs(30), "prometheus").await;
    Prometheus { _proc: proc, port }
}

impl Prometheus {
    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Waits until an instant query of `query` answers with at least one sample.
    pub async fn wait_for_data(&self, query: &str) {
        let client = reqwest::Client::new();
        let start = Instant::now();
        loop {
            let v: Option<serde_json::Value> = match client
                .get(
                    reqwest::Url::parse_with_params(
                        &format!("{}/api/v1/query", self.url()),
                        &[("query", query)],
                    )
                    .expect("a query URL"),
                )
                .send()
                .await
            {
                Ok(r) => r.json().await.ok(),
                Err(_) => None,
            };
            let n = v
                .as_ref()
                .and_then(|v| v["data"]["result"].as_array())
                .map_or(0, Vec::len);
            if n > 0 {
                return;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "prometheus has no data for {query} after 30s: {v:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}
