//! The embedded bus routes exactly as SNS does: random filter policies and random
//! message attributes go through moto's SNS → SQS (published by Baton's own SNS
//! adapter) and through the embedded matcher; every disagreement fails the test with the
//! policy, the attributes and both answers, unless it is one of moto's documented bugs
//! (see [`moto_bug`]: moto departs from SNS there, and the embedded matcher follows
//! SNS's documentation, which its unit tests check). The seed is printed;
//! `BATON_FILTER_SEED` replays one.

use std::collections::BTreeSet;

use baton::adapters::aws::sns::SnsBus;
use baton::event::{AttrValue, Attributes};
use baton::policy::FilterPolicy;
use baton::ports::{BusMessage, EventBus};
use baton_testkit::moto::moto;
use serde_json::{Value, json};

const TYPES: [&str; 4] = [
    "image.built",
    "tests.passed",
    "deploy.failed",
    "Image.Built",
];
const APPS: [&str; 4] = ["web", "api", "web-2", "webapp"];
const ENVS: [&str; 3] = ["staging", "production", "prod"];
const TAGS: [&str; 3] = ["a", "b", "c"];

fn pick<'a>(r: &mut fastrand::Rng, from: &[&'a str]) -> &'a str {
    from[r.usize(..from.len())]
}

/// One condition on a string attribute, as SNS writes it.
fn string_condition(r: &mut fastrand::Rng, values: &[&str]) -> Value {
    let v = pick(r, values);
    let cut = |s: &str, r: &mut fastrand::Rng| s[..r.usize(1..=s.len())].to_string();
    match r.u8(..7) {
        0 | 1 => json!(v),
        2 => json!({"prefix": cut(v, r)}),
        3 => json!({"suffix": v[r.usize(..v.len())..].to_string()}),
        // Lower case on the policy's side (the attribute's case varies), or upper case
        // (where moto departs from SNS, see `moto_bug`).
        4 if r.u8(..3) == 0 => json!({"equals-ignore-case": v.to_uppercase()}),
        4 => json!({"equals-ignore-case": v.to_lowercase()}),
        5 => json!({"anything-but": [v, pick(r, values)]}),
        _ => json!({"anything-but": {"prefix": cut(v, r)}}),
    }
}

/// One condition on the numeric attribute.
fn number_condition(r: &mut fastrand::Rng) -> Value {
    let n = r.u8(0..5);
    match r.u8(..5) {
        0 => json!(n),
        1 => json!({"numeric": [">", n]}),
        2 => json!({"numeric": [">=", n, "<", n + 2]}),
        3 => json!({"numeric": ["=", n]}),
        _ => json!({"anything-but": [n]}),
    }
}

fn policy(r: &mut fastrand::Rng) -> Value {
    let mut p = serde_json::Map::new();
    let keys = ["type", "app", "environment", "attempt", "tags"];
    let mut chosen: Vec<&str> = keys.iter().copied().filter(|_| r.u8(..3) == 0).collect();
    if chosen.is_empty() {
        chosen.push(pick(r, &keys));
    }
    for key in chosen {
        let n = r.usize(1..=2);
        let mut conds = vec![];
        for _ in 0..n {
            conds.push(match key {
                "type" => string_condition(r, &TYPES),
                "app" => string_condition(r, &APPS),
                "environment" => string_condition(r, &ENVS),
                "attempt" => number_condition(r),
                _ => string_condition(r, &TAGS),
            });
        }
        if r.u8(..6) == 0 {
            conds = vec![json!({"exists": r.bool()})];
        }
        p.insert(key.into(), Value::Array(conds));
    }
    Value::Object(p)
}

fn attributes(r: &mut fastrand::Rng) -> Attributes {
    let mut a = Attributes::new();
    if r.u8(..5) != 0 {
        a.insert("type".into(), AttrValue::String(pick(r, &TYPES).into()));
    }
    if r.u8(..4) != 0 {
        a.insert("app".into(), AttrValue::String(pick(r, &APPS).into()));
    }
    if r.bool() {
        a.insert(
            "environment".into(),
            AttrValue::String(pick(r, &ENVS).into()),
        );
    }
    if r.bool() {
        a.insert("attempt".into(), AttrValue::Number(f64::from(r.u8(0..5))));
    }
    if r.u8(..3) == 0 {
        let tags: Vec<String> = TAGS
            .iter()
            .filter(|_| r.bool())
            .map(|t| t.to_string())
            .collect();
        if !tags.is_empty() {
            a.insert("tags".into(), AttrValue::StringArray(tags));
        }
    }
    a
}

/// Where moto 5.2 departs from SNS (`moto/sns/utils.py`, `FilterPolicyMatcher`), for a
/// policy and attributes that disagree: SNS treats each element of a `String.Array`
/// attribute as a string to match ("each element in the array is treated as a separate
/// string", SNS's string value matching page) and compares `equals-ignore-case`
/// without case on both sides.
fn moto_bug(policy: &Value, attrs: &Attributes) -> Option<&'static str> {
    let policy = policy.as_object()?;
    for (key, conds) in policy {
        let Some(attr) = attrs.get(key) else { continue };
        let array = matches!(attr, AttrValue::StringArray(_));
        for c in conds.as_array().into_iter().flatten() {
            let Some((op, arg)) = c.as_object().and_then(|o| o.iter().next()) else {
                continue;
            };
            match op.as_str() {
                "equals-ignore-case" if arg.as_str().is_some_and(|v| v != v.to_lowercase()) => {
                    return Some(
                        "moto compares equals-ignore-case with the policy's value as written, not without case",
                    );
                }
                "prefix" | "suffix" if array => {
                    return Some(
                        "moto applies prefix and suffix to String attributes only, not to the elements of a String.Array",
                    );
                }
                "anything-but" if array => {
                    return Some(
                        "moto applies anything-but to the characters of a String.Array's JSON text, not to its elements",
                    );
                }
                _ => {}
            }
        }
    }
    None
}

#[tokio::test(flavor = "multi_thread")]
async fn embedded_filter_policies_route_as_sns_does() {
    let seed = std::env::var("BATON_FILTER_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| fastrand::u64(..));
    println!("filter differential: seed {seed} (BATON_FILTER_SEED={seed} replays it)");
    let mut r = fastrand::Rng::with_seed(seed);
    let m = moto().await;
    let conf = m.config().await;
    let sns = aws_sdk_sns::Client::new(&conf);
    let sqs = aws_sdk_sqs::Client::new(&conf);
    let topic = baton_testkit::moto::topic(&sns, "events").await;

    const POLICIES: usize = 40;
    const MESSAGES: usize = 50;
    let mut queues = vec![];
    for i in 0..POLICIES {
        let p = policy(&mut r);
        let ours = FilterPolicy::parse(&p)
            .unwrap_or_else(|e| panic!("the embedded bus refuses a policy SNS takes: {p}: {e}"));
        let url = baton_testkit::moto::subscribed_queue(
            &sns,
            &sqs,
            &topic,
            &format!("q{i}"),
            &p.to_string(),
            true,
        )
        .await;
        queues.push((p, ours, url));
    }
    let bus = SnsBus::new(sns, &topic);
    let mut messages = vec![];
    for i in 0..MESSAGES {
        let attrs = attributes(&mut r);
        let msg = BusMessage {
            id: format!("m{i}"),
            attributes: attrs.clone(),
            body: format!("m{i}"),
        };
        bus.publish(&msg).await.unwrap();
        messages.push(attrs);
    }

    let mut disagreements = vec![];
    let mut moto_bugs: std::collections::BTreeMap<&str, usize> = Default::default();
    for (p, ours, url) in &queues {
        let mut got = BTreeSet::new();
        loop {
            let out = sqs
                .receive_message()
                .queue_url(url)
                .max_number_of_messages(10)
                .send()
                .await
                .unwrap();
            let msgs = out.messages();
            if msgs.is_empty() {
                break;
            }
            for msg in msgs {
                got.insert(msg.body().unwrap_or_default().to_string());
                sqs.delete_message()
                    .queue_url(url)
                    .receipt_handle(msg.receipt_handle().unwrap_or_default())
                    .send()
                    .await
                    .unwrap();
            }
        }
        for (i, attrs) in messages.iter().enumerate() {
            let sns_says = got.contains(&format!("m{i}"));
            let we_say = ours.matches(attrs);
            if sns_says != we_say {
                if let Some(bug) = moto_bug(p, attrs) {
                    *moto_bugs.entry(bug).or_default() += 1;
                    continue;
                }
                disagreements.push(format!(
                    "policy {p}\n  attributes {attrs:?}\n  SNS (moto): {sns_says}, embedded: {we_say}"
                ));
            }
        }
    }
    println!(
        "filter differential: {} policies × {} messages compared, {} disagreements",
        POLICIES,
        MESSAGES,
        disagreements.len()
    );
    for (bug, n) in &moto_bugs {
        println!("filter differential: {n} answers differ by a moto bug: {bug}");
    }
    assert!(
        disagreements.is_empty(),
        "seed {seed}: the embedded matcher and SNS disagree:\n{}",
        disagreements.join("\n")
    );
}
