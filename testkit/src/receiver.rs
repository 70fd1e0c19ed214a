//! An HTTP receiver on a free loopback port that records every POST (path, query,
//! headers, JSON body) and answers what the test says: what stands in for Slack, a chat
//! tool, a CDEvents sink.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use serde_json::Value;

/// One request as received.
#[derive(Debug, Clone)]
pub struct Received {
    pub path: String,
    pub query: Option<String>,
    /// Header names lowercased.
    pub headers: BTreeMap<String, String>,
    /// The body as JSON (`null` when it is not JSON).
    pub body: Value,
}

impl Received {
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(&name.to_ascii_lowercase())
            .map(String::as_str)
            .unwrap_or("")
    }
}

type Reply = dyn Fn(&Received) -> (u16, Value) + Send + Sync;

/// A running receiver.
pub struct Receiver {
    pub port: u16,
    seen: Arc<Mutex<Vec<Received>>>,
}

impl Receiver {
    /// `http://127.0.0.1:<port><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// Every request so far, in arrival order.
    pub fn seen(&self) -> Vec<Received> {
        self.seen.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

/// Starts a receiver answering each POST with `reply(request)` (status, JSON).
pub async fn start(reply: impl Fn(&Received) -> (u16, Value) + Send + Sync + 'static) -> Receiver {
    let seen: Arc<Mutex<Vec<Received>>> = Arc::default();
    let reply: Arc<Reply> = Arc::new(reply);
    let s = seen.clone();
    let app = axum::Router::new().fallback(axum::routing::post(
        move |uri: axum::http::Uri, headers: axum::http::HeaderMap, body: axum::body::Bytes| {
            let (s, reply) = (s.clone(), reply.clone());
            async move {
                let r = Received {
                    path: uri.path().to_string(),
                    query: uri.query().map(str::to_string),
                    headers: headers
                        .iter()
                        .map(|(k, v)| {
                            (
                                k.as_str().to_ascii_lowercase(),
                                v.to_str().unwrap_or("").to_string(),
                            )
                        })
                        .collect(),
                    body: serde_json::from_slice(&body).unwrap_or(Value::Null),
                };
                let (status, answer) = reply(&r);
                if let Ok(mut all) = s.lock() {
                    all.push(r);
                }
                (
                    axum::http::StatusCode::from_u16(status)
                        .unwrap_or(axum::http::StatusCode::INTERNAL_SERVER_ERROR),
                    axum::Json(answer),
                )
            }
        },
    ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a loopback port");
    let port = listener.local_addr().expect("its address").port();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Receiver { port, seen }
}
