//! The verify stage's probe over HTTP: health checks (`GET`, status, bounded body) and
//! Prometheus instant queries (`/api/v1/query`), through the shared client.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::adapters::http::Http;
use crate::config::HttpUrl;
use crate::error::{Error, Result};
use crate::ports::{HttpAnswer, Probe, Sample};

/// The most of an answer's body a check reads.
pub const BODY_LIMIT: usize = 64 * 1024;

/// [`Probe`] over HTTP.
#[derive(Debug, Clone, Default)]
pub struct HttpProbe {
    pub http: Http,
}

impl HttpProbe {
    pub fn new(http: Http) -> HttpProbe {
        HttpProbe { http }
    }
}

async fn bounded_body(mut resp: reqwest::Response, limit: usize) -> Result<Vec<u8>> {
    let mut body = Vec::new();
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| Error::transient("read the answer", e))?
    {
        let room = limit.saturating_sub(body.len());
        body.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if body.len() >= limit {
            break;
        }
    }
    Ok(body)
}

impl Probe for HttpProbe {
    async fn http_get(&self, url: &HttpUrl, timeout: Duration) -> Result<HttpAnswer> {
        let started = Instant::now();
        let resp = self
            .http
            .client()?
            .get(url.0.clone())
            .timeout(timeout)
            .send()
            .await
            .map_err(|e| Error::transient(format!("GET {url}"), without_url(e)))?;
        let status = resp.status().as_u16();
        let body = tokio::time::timeout(
            timeout.saturating_sub(started.elapsed()),
            bounded_body(resp, BODY_LIMIT),
        )
        .await
        .map_err(|_| Error::transient(format!("GET {url}"), "body not read in time"))??;
        Ok(HttpAnswer {
            status,
            body: String::from_utf8_lossy(&body).into_owned(),
            elapsed: started.elapsed(),
        })
    }

    async fn prometheus_query(
        &self,
        server: &HttpUrl,
        query: &str,
        timeout: Duration,
    ) -> Result<Vec<Sample>> {
        let mut url = server.0.clone();
        {
            let path = format!("{}/api/v1/query", url.path().trim_end_matches('/'));
            url.set_path(&path);
            url.query_pairs_mut().clear().append_pair("query", query);
        }
        let what = format!("Prometheus query at {server}");
        let resp = self
            .http
            .client()?
            .get(url)
            .timeout(timeout)
            .send()
            .await
            .map_err(|e| Error::transient(what.clone(), without_url(e)))?;
        let status = resp.status().as_u16();
        let body = bounded_body(resp, 4 * 1024 * 1024).await?;
        let v: Value = serde_json::from_slice(&body).map_err(|e| {
            Error::permanent(
                what.clone(),
                format!("answered {status} with a body that is not the HTTP API's JSON ({e})"),
            )
        })?;
        parse_query_answer(&v).map_err(|why| Error::permanent(what, why))
    }
}

/// The samples of a `/api/v1/query` answer, or what is wrong with it.
pub fn parse_query_answer(v: &Value) -> std::result::Result<Vec<Sample>, String> {
    if v["status"] != "success" {
        return Err(format!(
            "{}: {}",
            v["errorType"].as_str().unwrap_or("error"),
            v["error"].as_str().unwrap_or("the query failed")
        ));
    }
    let value_of = |pair: &Value| -> std::result::Result<f64, String> {
        pair.get(1)
            .and_then(Value::as_str)
            .and_then(|s| s.parse::<f64>().ok())
            .ok_or_else(|| format!("a sample's value is not a number: {pair}"))
    };
    let data = &v["data"];
    match data["resultType"].as_str() {
        Some("vector") => data["result"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default()
            .iter()
            .map(|s| {
                Ok(Sample {
                    labels: labels(&s["metric"]),
                    value: value_of(&s["value"])?,
                })
            })
            .collect(),
        Some("scalar") => Ok(vec![Sample {
            labels: "{}".into(),
            value: value_of(&data["result"])?,
        }]),
        other => Err(format!(
            "the query gives a {} result; give an instant vector or scalar query",
            other.unwrap_or("missing")
        )),
    }
}

fn labels(metric: &Value) -> String {
    let pairs: Vec<String> = metric
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| format!("{k}={:?}", v.as_str().unwrap_or_default()))
                .collect()
        })
        .unwrap_or_default();
    format!("{{{}}}", pairs.join(","))
}

/// reqwest's errors repeat the URL, which may carry credentials: keep the cause only.
fn without_url(e: reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "cannot connect"
    } else {
        "request failed"
    };
    let cause = crate::adapters::http::source_chain(&e);
    if cause.is_empty() {
        kind.to_string()
    } else {
        format!("{kind}: {cause}")
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn query_answers_are_read_as_samples_or_said_to_be_wrong() {
        let v = json!({"status":"success","data":{"resultType":"vector","result":[
            {"metric":{"job":"web"},"value":[1.0,"0.25"]}]}});
        let s = parse_query_answer(&v).unwrap();
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].value, 0.25);
        assert_eq!(s[0].labels, "{job=\"web\"}");
        let empty = json!({"status":"success","data":{"resultType":"vector","result":[]}});
        assert!(parse_query_answer(&empty).unwrap().is_empty());
        let scalar = json!({"status":"success","data":{"resultType":"scalar","result":[1.0,"3"]}});
        assert_eq!(parse_query_answer(&scalar).unwrap()[0].value, 3.0);
        let bad = json!({"status":"error","errorType":"bad_data","error":"parse error"});
        assert_eq!(
            parse_query_answer(&bad).unwrap_err(),
            "bad_data: parse error"
        );
        let matrix = json!({"status":"success","data":{"resultType":"matrix","result":[]}});
        assert!(parse_query_answer(&matrix).unwrap_err().contains("matrix"));
    }
}
