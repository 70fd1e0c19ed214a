//! The AWS adapters against moto server (a real implementation of the AWS APIs on a
//! free loopback port, started and stopped here): S3 conditional writes, SNS → SQS
//! fan-out with the subscription table's filter policies, ECR resolve and retag, the
//! Lambda deploy target (update code, publish version, move alias, move it back).

use std::path::Path;
use std::time::Duration;

use baton::Error;
use baton::adapters::aws::ecr::EcrRegistry;
use baton::adapters::aws::lambda::LambdaDeployTarget;
use baton::adapters::aws::s3::S3Store;
use baton::adapters::aws::sns::SnsBus;
use baton::event::Event;
use baton::ports::{
    BusMessage, DeployRequest, DeployTarget, EventBus, ObjectStore, Precondition, Registry, Rollout,
};
use baton::store::get_json;
use serde_json::json;

use baton_testkit::moto::{Moto, moto};

/// A bucket `state` on moto, as the store.
async fn state_bucket(m: &Moto) -> S3Store {
    let conf = m.config().await;
    let s3 = aws_sdk_s3::Client::from_conf(
        aws_sdk_s3::config::Builder::from(&conf)
            .force_path_style(true)
            .build(),
    );
    s3.create_bucket().bucket("state").send().await.unwrap();
    S3Store::new(s3, "state")
}

/// Retention removes a run's objects with `DeleteObjects`, 1,000 keys a request: every
/// key under the prefix goes, across the batch boundary, and nothing beside it (not even
/// a key that only starts with the same letters).
#[tokio::test(flavor = "multi_thread")]
async fn s3_store_removes_a_prefix_in_batches() {
    use futures::StreamExt;
    let m = moto().await;
    let store = state_bucket(&m).await;
    let mut keys: Vec<String> = (0..1003)
        .map(|i| format!("runs/a/r1/events/{i:04}.json"))
        .collect();
    keys.push("runs/a/r10/stages/test.json".into());
    keys.push("runs/b/r1/stages/test.json".into());
    let written: Vec<_> = futures::stream::iter(&keys)
        .map(|k| store.put(k, b"{}".to_vec(), Precondition::None))
        .buffer_unordered(32)
        .collect()
        .await;
    assert!(written.iter().all(Result::is_ok));
    assert_eq!(store.list("runs/a/r1/").await.unwrap().len(), 1003);

    assert!(
        store.delete_prefix("runs/a/r1").await.is_err(),
        "a prefix ends with /"
    );
    assert_eq!(store.delete_prefix("runs/a/r1/").await.unwrap(), 0);
    assert_eq!(
        store.list("runs/a/r1/").await.unwrap(),
        Vec::<String>::new()
    );
    assert_eq!(
        store.list("runs/").await.unwrap(),
        vec!["runs/a/r10/stages/test.json", "runs/b/r1/stages/test.json"]
    );
    // Nothing left under it: a second call is a no-op.
    assert_eq!(store.delete_prefix("runs/a/r1/").await.unwrap(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn s3_store_has_real_conditional_writes() {
    let m = moto().await;
    let store = state_bucket(&m).await;
    let e1 = store
        .put(
            "runs/a/r1/stages/test.json",
            b"1".to_vec(),
            Precondition::IfNoneMatch,
        )
        .await
        .unwrap();
    let again = store
        .put(
            "runs/a/r1/stages/test.json",
            b"2".to_vec(),
            Precondition::IfNoneMatch,
        )
        .await;
    assert!(matches!(again, Err(Error::Conflict { .. })), "{again:?}");
    let wrong = store
        .put(
            "runs/a/r1/stages/test.json",
            b"2".to_vec(),
            Precondition::IfMatch("\"nope\"".into()),
        )
        .await;
    assert!(matches!(wrong, Err(Error::Conflict { .. })), "{wrong:?}");
    let e2 = store
        .put(
            "runs/a/r1/stages/test.json",
            b"2".to_vec(),
            Precondition::IfMatch(e1.clone()),
        )
        .await
        .unwrap();
    assert_ne!(e1, e2);
    let stale = store
        .put(
            "runs/a/r1/stages/test.json",
            b"3".to_vec(),
            Precondition::IfMatch(e1),
        )
        .await;
    assert!(matches!(stale, Err(Error::Conflict { .. })), "{stale:?}");
    let got = store
        .get("runs/a/r1/stages/test.json")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (got.bytes.as_slice(), got.etag.as_str()),
        (b"2".as_slice(), e2.as_str())
    );
    assert!(store.get("runs/a/missing").await.unwrap().is_none());
    store
        .put(
            "runs/a/r1/events/e1.json",
            b"{}".to_vec(),
            Precondition::None,
        )
        .await
        .unwrap();
    store
        .put(
            "runs/b/r2/events/e1.json",
            b"{}".to_vec(),
            Precondition::None,
        )
        .await
        .unwrap();
    assert_eq!(
        store.list("runs/a/").await.unwrap(),
        ["runs/a/r1/events/e1.json", "runs/a/r1/stages/test.json"]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sns_bus_fans_out_by_the_subscription_tables_filter_policies() {
    let m = moto().await;
    let conf = m.config().await;
    let sns = aws_sdk_sns::Client::new(&conf);
    let sqs = aws_sdk_sqs::Client::new(&conf);
    let topic = baton_testkit::moto::topic(&sns, "events").await;
    let mut queues = vec![];
    let mut subs: Vec<(String, serde_json::Value)> =
        baton::stages::subscriptions::stage_subscriptions()
            .into_iter()
            .map(|s| (s.name.clone(), s.filter.json().clone()))
            .collect();
    subs.push(("email-reaction".into(), json!({"type": ["image.built"]})));
    for (name, policy) in &subs {
        let url = baton_testkit::moto::subscribed_queue(
            &sns,
            &sqs,
            &topic,
            name,
            &policy.to_string(),
            false,
        )
        .await;
        queues.push((name.clone(), url));
    }
    let bus = SnsBus::new(sns, &topic);
    let sample = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../events/baton/image.built.json"),
    )
    .unwrap();
    let event = Event::from_json(&sample).unwrap();
    bus.publish(&BusMessage::from_event(&event)).await.unwrap();
    for (name, url) in &queues {
        let got = sqs
            .receive_message()
            .queue_url(url)
            .max_number_of_messages(10)
            .send()
            .await
            .unwrap();
        let msgs = got.messages();
        let expected = usize::from(name == "test" || name == "email-reaction");
        assert_eq!(msgs.len(), expected, "queue {name}");
        for msg in msgs {
            let e = baton::envelopes::event_from_sns_notification(msg.body().unwrap()).unwrap();
            assert_eq!(e, event, "the SNS envelope carries the event unchanged");
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn ecr_registry_resolves_and_retags() {
    let m = moto().await;
    let conf = m.config().await;
    let ecr = aws_sdk_ecr::Client::new(&conf);
    ecr.create_repository()
        .repository_name("demo/web")
        .send()
        .await
        .unwrap();
    let manifest = json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "size": 2, "digest": format!("sha256:{}", "4".repeat(64))},
        "layers": []});
    ecr.put_image()
        .repository_name("demo/web")
        .image_manifest(manifest.to_string())
        .image_tag("1.0.0")
        .send()
        .await
        .unwrap();
    let reg = EcrRegistry::new(ecr.clone());
    let host = "123456789012.dkr.ecr.us-east-1.amazonaws.com";
    let r = reg.resolve(host, "demo/web", "1.0.0").await.unwrap();
    assert_eq!(r.digest.hex().len(), 64, "{}", r.digest);
    assert!(r.pushed_at.is_some(), "push time from DescribeImages");
    let e = reg.resolve(host, "demo/web", "9.9.9").await.unwrap_err();
    assert_eq!(e.kind(), "not_found");
    let image = baton::event::Image::parse(host, "demo/web", "1.0.0", &r.digest.clone()).unwrap();
    reg.retag(&image, &"staging".parse().unwrap())
        .await
        .unwrap();
    reg.retag(&image, &"staging".parse().unwrap())
        .await
        .unwrap(); // ImageAlreadyExists is done
    assert_eq!(
        reg.resolve(host, "demo/web", "staging")
            .await
            .unwrap()
            .digest,
        r.digest
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn lambda_target_updates_publishes_and_moves_the_alias() {
    let m = moto().await;
    let conf = m.config().await;
    let repo = "123456789012.dkr.ecr.us-east-1.amazonaws.com/demo/web";
    let old = format!("{repo}@sha256:{}", "1".repeat(64));
    let lambda = lambda_function(&conf, "web", &old).await;
    let cfg: baton::config::LambdaDeploy =
        serde_json::from_value(json!({"function": "web", "poll": "50ms"})).unwrap();
    let target = LambdaDeployTarget::new(lambda.clone(), &cfg);
    let req = |hex: char| DeployRequest {
        app: "web".into(),
        environment: "production".into(),
        run: baton::ids::run_id("web", "r"),
        image: baton::event::Image::parse(
            "123456789012.dkr.ecr.us-east-1.amazonaws.com",
            "demo/web",
            "1.1.0",
            &format!("sha256:{}", hex.to_string().repeat(64)),
        )
        .unwrap(),
        cause: "baton test".into(),
    };
    let applied = target.apply(&req('2')).await.unwrap();
    assert!(applied.changed);
    assert_eq!(applied.previous[0].image, old);
    assert!(matches!(
        target.rollout(&req('2')).await.unwrap(),
        Rollout::Complete { .. }
    ));
    assert_ne!(
        alias_routing(&lambda, "web").await.0,
        "1",
        "the alias moved to the new version"
    );
    let live = lambda
        .get_function()
        .function_name("web")
        .qualifier("live")
        .send()
        .await
        .unwrap();
    assert_eq!(
        live.code().unwrap().image_uri(),
        Some(req('2').image.reference().as_str())
    );
    // the same digest again: nothing to do
    assert!(!target.apply(&req('2')).await.unwrap().changed);
    // restore moves the alias back
    target.restore(&req('2'), &applied.previous).await.unwrap();
    assert_eq!(alias_routing(&lambda, "web").await.0, "1");
}

/// A Lambda function `name` with one published version running `image` behind `live`.
async fn lambda_function(
    conf: &aws_config::SdkConfig,
    name: &str,
    image: &str,
) -> aws_sdk_lambda::Client {
    let role = baton_testkit::moto::lambda_role(conf, &format!("{name}-fn")).await;
    let lambda = aws_sdk_lambda::Client::new(conf);
    lambda
        .create_function()
        .function_name(name)
        .role(role)
        .package_type(aws_sdk_lambda::types::PackageType::Image)
        .code(
            aws_sdk_lambda::types::FunctionCode::builder()
                .image_uri(image)
                .build(),
        )
        .publish(true)
        .send()
        .await
        .unwrap();
    lambda
        .create_alias()
        .function_name(name)
        .name("live")
        .function_version("1")
        .send()
        .await
        .unwrap();
    lambda
}

/// (primary version, weighted versions) of an alias.
async fn alias_routing(
    lambda: &aws_sdk_lambda::Client,
    name: &str,
) -> (String, Vec<(String, f64)>) {
    let a = lambda
        .get_alias()
        .function_name(name)
        .name("live")
        .send()
        .await
        .unwrap();
    let mut weights: Vec<(String, f64)> = a
        .routing_config()
        .and_then(|r| r.additional_version_weights())
        .map(|w| w.iter().map(|(k, v)| (k.clone(), *v)).collect())
        .unwrap_or_default();
    weights.sort_by(|x, y| x.0.cmp(&y.0));
    (
        a.function_version().unwrap_or_default().to_string(),
        weights,
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn lambda_target_shifts_traffic_in_steps_and_rolls_back_mid_shift() {
    let m = moto().await;
    let conf = m.config().await;
    let repo = "123456789012.dkr.ecr.us-east-1.amazonaws.com/demo/api";
    let old = format!("{repo}@sha256:{}", "1".repeat(64));
    let lambda = lambda_function(&conf, "api", &old).await;
    let req = |hex: char| DeployRequest {
        app: "api".into(),
        environment: "production".into(),
        run: baton::ids::run_id("web", "r"),
        image: baton::event::Image::parse(
            "123456789012.dkr.ecr.us-east-1.amazonaws.com",
            "demo/api",
            "2.0.0",
            &format!("sha256:{}", hex.to_string().repeat(64)),
        )
        .unwrap(),
        cause: "baton test".into(),
    };

    // linear: 50% for 2 s, then all of it.
    let cfg: baton::config::LambdaDeploy = serde_json::from_value(json!({
        "function": "api", "poll": "50ms", "traffic": { "linear": { "step": 50, "every": "2s" } }
    }))
    .unwrap();
    let target = LambdaDeployTarget::new(lambda.clone(), &cfg);
    let applied = target.apply(&req('2')).await.unwrap();
    assert!(applied.changed);
    assert_eq!(applied.previous[0].image, old);
    assert_eq!(
        alias_routing(&lambda, "api").await,
        ("1".to_string(), vec![]),
        "the alias waits for the code update, nothing shifted yet"
    );
    // The first check finds the update done: the version is published and takes 50%.
    match target.rollout(&req('2')).await.unwrap() {
        Rollout::Progressing { detail, .. } => assert!(detail.contains("50%"), "{detail}"),
        other => panic!("expected the shift to start, got {other:?}"),
    }
    let (primary, weights) = alias_routing(&lambda, "api").await;
    assert_eq!(
        primary, "1",
        "the old version keeps the rest of the traffic"
    );
    assert_eq!(weights.len(), 1, "one version takes a share: {weights:?}");
    let new_version = weights[0].0.clone();
    assert_ne!(new_version, "1");
    assert!((weights[0].1 - 0.5).abs() < 1e-9, "{weights:?}");
    // Checked at once: the step is held.
    match target.rollout(&req('2')).await.unwrap() {
        Rollout::Progressing {
            check_after,
            detail,
        } => {
            assert!(
                check_after <= Duration::from_secs(2) && check_after > Duration::from_millis(500),
                "{check_after:?}"
            );
            assert!(
                detail.contains("50%") && detail.contains("100%"),
                "{detail}"
            );
        }
        other => panic!("expected the shift to hold its first step, got {other:?}"),
    }
    assert_eq!(
        alias_routing(&lambda, "api").await.1.len(),
        1,
        "nothing moved early"
    );
    tokio::time::sleep(Duration::from_millis(2100)).await;
    match target.rollout(&req('2')).await.unwrap() {
        Rollout::Complete { detail } => assert!(detail.contains(&new_version), "{detail}"),
        other => panic!("expected the shift to finish, got {other:?}"),
    }
    let (primary, weights) = alias_routing(&lambda, "api").await;
    assert_eq!(primary, new_version, "all traffic on the new version");
    assert!(
        weights.iter().all(|(_, w)| *w == 0.0),
        "routing cleared: {weights:?}"
    );

    // canary: 10%, then rolled back mid-shift (restore after a failed rollout).
    let cfg: baton::config::LambdaDeploy = serde_json::from_value(json!({
        "function": "api", "poll": "50ms", "traffic": { "canary": { "percent": 10, "wait": "1h" } }
    }))
    .unwrap();
    let target = LambdaDeployTarget::new(lambda.clone(), &cfg);
    let applied = target.apply(&req('3')).await.unwrap();
    assert!(matches!(
        target.rollout(&req('3')).await.unwrap(),
        Rollout::Progressing { .. }
    ));
    let (primary, weights) = alias_routing(&lambda, "api").await;
    assert_eq!(primary, new_version);
    assert_eq!(weights.len(), 1);
    assert!((weights[0].1 - 0.1).abs() < 1e-9, "{weights:?}");
    assert!(matches!(
        target.rollout(&req('3')).await.unwrap(),
        Rollout::Progressing { .. }
    ));
    target.restore(&req('3'), &applied.previous).await.unwrap();
    let (primary, weights) = alias_routing(&lambda, "api").await;
    assert_eq!(
        primary, new_version,
        "back on the version before the canary"
    );
    assert!(
        weights.iter().all(|(_, w)| *w == 0.0),
        "no traffic left on the canary: {weights:?}"
    );
    // (moto's published versions share the function's latest code, so checks that read a
    // version's image, such as a rollout check after this restore, are not meaningful
    // here; versions and weights are.)
}

/// A stack like `infra/template.yaml`'s, made of moto resources.
struct Stack {
    m: Moto,
    sqs: aws_sdk_sqs::Client,
    lambda: aws_sdk_lambda::Client,
    ecr: aws_sdk_ecr::Client,
    /// The functions' AWS requests, when built by [`stack_counted`].
    requests: Option<baton_testkit::moto::Counts>,
    /// Function invocations so far, by function.
    invocations: std::sync::Mutex<std::collections::BTreeMap<&'static str, usize>>,
    /// A fail point for the next invocation of its stage's function (the fault suite).
    fail: std::sync::Mutex<Option<(String, String)>>,
    /// The functions' claim lease, when not the default.
    lease: Option<Duration>,
    clients: baton::adapters::aws::Clients,
    config: std::sync::Arc<baton::config::Config>,
    topic: String,
    /// (stage, queue url)
    queues: Vec<(String, String)>,
    ingest_queue: String,
    reaction_queue: String,
    digest: String,
    /// What the functions logged (`tracing`, info and above), shown when a test fails.
    logs: Logs,
}

/// A log the functions' `tracing` output goes to, per stack (tests run in parallel).
#[derive(Clone, Default)]
struct Logs(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl std::fmt::Display for Logs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let text = self.0.lock().unwrap_or_else(|p| p.into_inner());
        write!(
            f,
            "\n--- the functions' log ---\n{}--- end of log ---",
            String::from_utf8_lossy(&text)
        )
    }
}

const STACK: &str = "baton";
const HOST: &str = "123456789012.dkr.ecr.us-east-1.amazonaws.com";

async fn stack() -> Stack {
    stack_with("auto").await
}

async fn stack_with(approval: &str) -> Stack {
    stack_with_deploy(approval, "").await
}

/// A stack whose staging deploy has `extra` settings (`, traffic: …`).
async fn stack_with_deploy(approval: &str, extra: &str) -> Stack {
    stack_full(approval, extra, "").await
}

/// Approvers of the tests: alice through a role that enforces her session name.
const APPROVERS: &str = r#"
serve:
  approvers:
    alice: { iam: [{ role: "arn:aws:iam::123456789012:role/Approvers", session: alice }] }
"#;

/// alice's approver identity: the role that enforces her session name.
const ALICE_ROLE: &str = "arn:aws:sts::123456789012:assumed-role/Approvers/alice";

/// A decision to approve `run` in staging through the approve function URL, signed by
/// `arn` of `account` (no IAM identity when `None`).
fn approve_url_request(run: &str, arn: Option<&str>, account: &str) -> serde_json::Value {
    let mut r = json!({
        "version": "2.0", "rawPath": "/", "rawQueryString": "", "headers": {"content-type": "application/json"},
        "body": json!({"run": run, "environment": "staging", "decision": "approve"}).to_string(),
        "isBase64Encoded": false,
        "requestContext": {"http": {"method": "POST", "path": "/"}, "timeEpoch": 1795230000000_i64}
    });
    if let Some(a) = arn {
        r["requestContext"]["authorizer"] = json!({"iam": {"userArn": a, "accountId": account}});
    }
    r
}

/// A stack with `tail` appended to its configuration.
async fn stack_full(approval: &str, extra: &str, tail: &str) -> Stack {
    stack_build(approval, extra, tail, false).await
}

/// A stack whose functions reach AWS through a counting proxy (`Stack::requests`).
async fn stack_counted() -> Stack {
    stack_build("auto", "", "", true).await
}

async fn stack_build(approval: &str, extra: &str, tail: &str, count: bool) -> Stack {
    let m = moto().await;
    let conf = m.config().await;
    let (clients, requests) = if count {
        let (endpoint, counts) = baton_testkit::moto::counting_proxy(&m.endpoint).await;
        let conf = baton_testkit::moto::sdk(&endpoint).await;
        (baton::adapters::aws::Clients::new(&conf), Some(counts))
    } else {
        (baton::adapters::aws::Clients::new(&conf), None)
    };
    let sqs = aws_sdk_sqs::Client::new(&conf);
    let sns = aws_sdk_sns::Client::new(&conf);
    let ecr = aws_sdk_ecr::Client::new(&conf);
    let lambda = aws_sdk_lambda::Client::new(&conf);
    let events = aws_sdk_eventbridge::Client::new(&conf);
    clients
        .s3
        .create_bucket()
        .bucket("baton-state")
        .send()
        .await
        .unwrap();
    let topic = baton_testkit::moto::topic(&sns, "baton-events").await;
    let arn = |name: &str| format!("arn:aws:sqs:us-east-1:123456789012:{name}");
    let mut queues = vec![];
    for sub in baton::stages::subscriptions::stage_subscriptions() {
        let name = format!("{STACK}-{}", sub.name);
        sqs.create_queue()
            .queue_name(format!("{name}-dlq"))
            .send()
            .await
            .unwrap();
        let redrive =
            json!({"deadLetterTargetArn": arn(&format!("{name}-dlq")), "maxReceiveCount": "3"});
        let url = sqs
            .create_queue()
            .queue_name(&name)
            .attributes(
                aws_sdk_sqs::types::QueueAttributeName::VisibilityTimeout,
                "1",
            )
            .attributes(
                aws_sdk_sqs::types::QueueAttributeName::RedrivePolicy,
                redrive.to_string(),
            )
            .send()
            .await
            .unwrap()
            .queue_url()
            .unwrap()
            .to_string();
        sns.subscribe()
            .topic_arn(&topic)
            .protocol("sqs")
            .endpoint(arn(&name))
            .attributes("FilterPolicy", sub.filter.json().to_string())
            .send()
            .await
            .unwrap();
        queues.push((sub.name.clone(), url));
    }
    // an e-mail-style reaction: a subscription with a filter policy, no code
    let reaction_queue = baton_testkit::moto::subscribed_queue(
        &sns,
        &sqs,
        &topic,
        "email-reaction",
        &json!({"type": ["image.built"]}).to_string(),
        false,
    )
    .await;
    // ECR pushes reach ingest through an EventBridge rule (an SQS target here; the stack
    // targets the function)
    let ingest_queue = sqs
        .create_queue()
        .queue_name("ingest-events")
        .send()
        .await
        .unwrap()
        .queue_url()
        .unwrap()
        .to_string();
    events
        .put_rule()
        .name("ecr-push")
        .event_pattern(json!({"source": ["aws.ecr"], "detail-type": ["ECR Image Action"],
            "detail": {"action-type": ["PUSH"], "result": ["SUCCESS"], "repository-name": ["demo/web"]}}).to_string())
        .send()
        .await
        .unwrap();
    events
        .put_targets()
        .rule("ecr-push")
        .targets(
            aws_sdk_eventbridge::types::Target::builder()
                .id("ingest")
                .arn(arn("ingest-events"))
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap();
    // the image, and the Lambda function deployed to
    ecr.create_repository()
        .repository_name("demo/web")
        .send()
        .await
        .unwrap();
    let manifest = json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "size": 2, "digest": format!("sha256:{}", "7".repeat(64))},
        "layers": []});
    ecr.put_image()
        .repository_name("demo/web")
        .image_manifest(manifest.to_string())
        .image_tag("1.0.0")
        .send()
        .await
        .unwrap();
    let digest = EcrRegistry::new(ecr.clone())
        .resolve(HOST, "demo/web", "1.0.0")
        .await
        .unwrap()
        .digest
        .to_string();
    lambda_function(
        &conf,
        "web",
        &format!("{HOST}/demo/web@sha256:{}", "0".repeat(64)),
    )
    .await;
    let config = baton::config::Config::from_yaml(
        &format!(
            r#"
apps:
  - name: web
    registry: {HOST}
    repository: demo/web
    tags: {{ semver: ">=1.0.0" }}
    test: {{ command: {{ run: ["true"] }} }}
    environments:
      - name: staging
        approval: {approval}
        deploy: {{ lambda: {{ function: web, alias: live, poll: 50ms{extra} }} }}
{tail}"#
        ),
        Path::new("/tmp"),
        "test config",
    )
    .unwrap();
    if let Some(r) = &requests {
        r.lock().unwrap().clear();
    }
    Stack {
        m,
        sqs,
        lambda,
        ecr,
        requests,
        invocations: Default::default(),
        fail: Default::default(),
        lease: None,
        clients,
        config: std::sync::Arc::new(config),
        topic,
        queues,
        ingest_queue,
        reaction_queue,
        digest,
        logs: Logs::default(),
    }
}

impl Stack {
    /// The function of `stage`, built as the stack builds it (its stage and adapters),
    /// invoked with `payload`.
    async fn invoke(
        &self,
        stage: baton::pipeline::StageName,
        payload: serde_json::Value,
    ) -> baton::Result<serde_json::Value> {
        use baton::pipeline::StageName as N;
        *self
            .invocations
            .lock()
            .unwrap()
            .entry(stage.as_str())
            .or_default() += 1;
        use baton::runtime::lambda::handler::{App, Function};
        use baton::runtime::lambda::ports::{
            AwsPorts, Extra, WithNotifier, WithRegistry, WithTargets, WithTests,
        };
        async fn call<S: Function<X>, X: Extra>(
            s: &Stack,
            payload: serde_json::Value,
        ) -> baton::Result<serde_json::Value> {
            let ports = AwsPorts::<X>::new(&s.clients, "baton-state", &s.topic, s.config.clone())?;
            // A fail point fires once, in the function of its stage.
            let fail = {
                let mut f = s.fail.lock().unwrap();
                if f.as_ref()
                    .is_some_and(|(stage, _)| stage == S::SPEC.name.as_str())
                {
                    f.take()
                } else {
                    None
                }
            };
            let lease = s.lease;
            App::<S, X>::with_settings(ports, s.config.clone(), s.sqs.clone(), |settings| {
                settings.fail_point = fail;
                if let Some(lease) = lease {
                    settings.lease = lease;
                }
            })?
            .handle(payload)
            .await
        }
        // Whatever thread polls it, the function logs into this stack's log.
        let log = tracing::Dispatch::new(
            tracing_subscriber::fmt()
                .with_max_level(tracing::Level::INFO)
                .with_ansi(false)
                .with_writer({
                    let logs = self.logs.clone();
                    move || logs.clone()
                })
                .finish(),
        );
        // On the heap: a function's future is large (deploy's most), and the test
        // threads' stacks are small (boxed before it is wrapped, so that it is not
        // copied on the stack once more).
        let function = Box::pin(async move {
            match stage {
                N::Ingest => call::<baton::stages::Ingest, WithRegistry>(self, payload).await,
                N::Test => call::<baton::stages::Test, WithTests>(self, payload).await,
                N::Gate => call::<baton::stages::Gate, ()>(self, payload).await,
                N::Approve => call::<baton::stages::Approve, ()>(self, payload).await,
                N::Deploy => call::<baton::stages::Deploy, WithTargets>(self, payload).await,
                N::Verify => call::<baton::stages::Verify, WithTests>(self, payload).await,
                N::Promote => call::<baton::stages::Promote, WithRegistry>(self, payload).await,
                N::Notify => call::<baton::stages::Notify, WithNotifier>(self, payload).await,
            }
        });
        tracing::instrument::WithSubscriber::with_subscriber(function, log).await
    }

    async fn push_event(&self) {
        self.push_event_of("1.0.0", &self.digest).await;
    }

    /// ECR's image action for `tag` at `digest`, through the EventBridge rule.
    async fn push_event_of(&self, tag: &str, digest: &str) {
        let events = aws_sdk_eventbridge::Client::new(&self.m.config().await);
        let detail = json!({"result": "SUCCESS", "repository-name": "demo/web", "image-digest": digest,
                            "action-type": "PUSH", "image-tag": tag});
        events
            .put_events()
            .entries(
                aws_sdk_eventbridge::types::PutEventsRequestEntry::builder()
                    .source("aws.ecr")
                    .detail_type("ECR Image Action")
                    .detail(detail.to_string())
                    .build(),
            )
            .send()
            .await
            .unwrap();
    }

    /// Receives the EventBridge delivery and hands it to ingest, as the rule would.
    async fn run_ingest(&self) {
        let got = self
            .sqs
            .receive_message()
            .queue_url(&self.ingest_queue)
            .max_number_of_messages(10)
            .send()
            .await
            .unwrap();
        assert_eq!(got.messages().len(), 1, "the rule delivered the push");
        let mut body: serde_json::Value =
            serde_json::from_str(got.messages()[0].body().unwrap()).unwrap();
        assert_eq!(body["detail-type"], "ECR Image Action");
        // moto's EventBridge leaves out `account`, which AWS always sets on the event.
        if body.get("account").is_none() {
            body["account"] = json!("123456789012");
        }
        let out = self
            .invoke(baton::pipeline::StageName::Ingest, body)
            .await
            .unwrap();
        assert_eq!(out["accepted"].as_array().unwrap().len(), 1, "{out}");
    }

    /// One event source mapping poll of a stage's queue; every batch delivered `times`
    /// times. Returns how many messages were received.
    async fn poll(&self, stage: &str, url: &str, times: usize) -> usize {
        let got = self
            .sqs
            .receive_message()
            .queue_url(url)
            .max_number_of_messages(10)
            .send()
            .await
            .unwrap();
        if got.messages().is_empty() {
            return 0;
        }
        let records: Vec<serde_json::Value> = got
            .messages()
            .iter()
            .map(|m| {
                json!({"messageId": m.message_id(), "receiptHandle": m.receipt_handle(), "body": m.body(),
                       "attributes": {}, "messageAttributes": {}, "eventSource": "aws:sqs",
                       "eventSourceARN": format!("arn:aws:sqs:us-east-1:123456789012:{STACK}-{stage}"), "awsRegion": "us-east-1"})
            })
            .collect();
        let app: baton::pipeline::StageName = stage.parse().unwrap();
        let mut failed: Vec<String> = vec![];
        for _ in 0..times {
            // A function that crashed (a fail point): Lambda reports the invocation
            // failed and the batch stays in the queue, back after the visibility timeout.
            let Ok(resp) = futures::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(
                self.invoke(app, json!({ "Records": records })),
            ))
            .await
            else {
                return got.messages().len();
            };
            let resp = resp.unwrap();
            failed = resp["batchItemFailures"]
                .as_array()
                .unwrap()
                .iter()
                .map(|f| f["itemIdentifier"].as_str().unwrap().to_string())
                .collect();
        }
        for m in got.messages() {
            if !failed.iter().any(|f| Some(f.as_str()) == m.message_id()) {
                self.sqs
                    .delete_message()
                    .queue_url(url)
                    .receipt_handle(m.receipt_handle().unwrap())
                    .send()
                    .await
                    .unwrap();
            }
        }
        got.messages().len()
    }

    /// Polls every stage queue until a round finds nothing (failed messages come back
    /// after the 1 s visibility timeout, so a quiet round waits that out once).
    async fn drive(&self, times: usize) {
        let mut quiet = 0;
        for _ in 0..60 {
            let mut n = 0;
            for (stage, url) in &self.queues {
                n += self.poll(stage, url, times).await;
            }
            if n == 0 {
                quiet += 1;
                if quiet == 2 {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(1100)).await;
            } else {
                quiet = 0;
            }
        }
        panic!("the queues never went quiet");
    }

    /// Polls every stage queue until none holds a message, visible, in flight or
    /// delayed: a crashed invocation's batch, or a wait sent back with a delay, comes
    /// back when its visibility timeout ends, however long that is (two quiet rounds
    /// 1.1 s apart, as [`Stack::drive`] waits, can end before it).
    async fn drain(&self, times: usize) {
        let deadline = std::time::Instant::now() + Duration::from_secs(120);
        loop {
            let mut n = 0;
            for (stage, url) in &self.queues {
                n += self.poll(stage, url, times).await;
            }
            if n == 0 {
                let left = self.messages_left().await;
                if left.is_empty() {
                    let dead = self.dead_letters().await;
                    assert!(
                        dead.is_empty(),
                        "messages dead-lettered: {dead:?}{}",
                        self.logs
                    );
                    return;
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "messages still in the queues after 120 s: {left:?}{}",
                    self.logs
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            } else {
                assert!(
                    std::time::Instant::now() < deadline,
                    "the queues kept delivering for 120 s{}",
                    self.logs
                );
            }
        }
    }

    /// The messages in the stage queues' dead-letter queues (`baton dlq list`'s reader),
    /// by stage.
    async fn dead_letters(&self) -> Vec<(String, baton::adapters::aws::dlq::DeadMessage)> {
        let mut dead = vec![];
        for (stage, _) in &self.queues {
            for m in baton::adapters::aws::dlq::list(&self.sqs, STACK, stage)
                .await
                .unwrap()
            {
                dead.push((stage.clone(), m));
            }
        }
        dead
    }

    /// The stage queues holding messages (visible, in flight or delayed), with SQS's
    /// counts.
    async fn messages_left(&self) -> Vec<(String, String, String, String)> {
        use aws_sdk_sqs::types::QueueAttributeName as A;
        let mut left = vec![];
        for (stage, url) in &self.queues {
            let got = self
                .sqs
                .get_queue_attributes()
                .queue_url(url)
                .attribute_names(A::All)
                .send()
                .await
                .unwrap();
            let count = |k: A| {
                got.attributes()
                    .and_then(|a| a.get(&k))
                    .cloned()
                    .unwrap_or_else(|| "?".into())
            };
            let counts = (
                count(A::ApproximateNumberOfMessages),
                count(A::ApproximateNumberOfMessagesNotVisible),
                count(A::ApproximateNumberOfMessagesDelayed),
            );
            if counts != ("0".into(), "0".into(), "0".into()) {
                left.push((stage.clone(), counts.0, counts.1, counts.2));
            }
        }
        left
    }

    /// ECR's PutImage as CloudTrail reports it through EventBridge, with the caller's
    /// identity, handed to ingest as the rule would.
    async fn ingest_cloudtrail(&self, pusher: &str) {
        let mut event: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(
                Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("../events/triggers/ecr-cloudtrail-putimage.json"),
            )
            .unwrap(),
        )
        .unwrap();
        event["region"] = json!("us-east-1");
        event["detail"]["userIdentity"]["arn"] = json!(pusher);
        event["detail"]["requestParameters"]["imageTag"] = json!("1.0.0");
        event["detail"]["responseElements"]["image"]["imageId"]["imageDigest"] = json!(self.digest);
        let out = self
            .invoke(baton::pipeline::StageName::Ingest, event)
            .await
            .unwrap();
        assert_eq!(out["accepted"].as_array().unwrap().len(), 1, "{out}");
    }

    /// The staging deploy record of `run`, as JSON.
    async fn deploy_record(&self, run: &str) -> serde_json::Value {
        let obj = S3Store::new(self.clients.s3.clone(), "baton-state")
            .get(&baton::store::stage_key(
                "web",
                run,
                "deploy",
                Some("staging"),
            ))
            .await
            .unwrap()
            .expect("a deploy record");
        serde_json::from_slice(&obj.bytes).unwrap()
    }

    async fn alias_image(&self) -> String {
        let f = self
            .lambda
            .get_function()
            .function_name("web")
            .qualifier("live")
            .send()
            .await
            .unwrap();
        f.code().unwrap().image_uri().unwrap().to_string()
    }

    /// The run deployed exactly once: the alias serves the pushed digest, the function
    /// has exactly one new version, and the run log holds each event once.
    async fn deployed_once(&self, what: &str) {
        assert_eq!(
            self.alias_image().await,
            format!("{HOST}/demo/web@{}", self.digest),
            "{what}: the alias serves the pushed digest"
        );
        let versions = self
            .lambda
            .list_versions_by_function()
            .function_name("web")
            .send()
            .await
            .unwrap();
        assert_eq!(
            versions.versions().len(),
            3,
            "{what}: $LATEST, the original and exactly one new version{}",
            self.logs
        );
        assert_eq!(
            self.run_log().await,
            [
                "image.built",
                "tests.passed",
                "approval.granted",
                "deploy.succeeded",
                "image.promoted"
            ],
            "{what}: each event once{}",
            self.logs
        );
    }

    /// The stack's records and topic as an operator's CLI reaches them (`--stack`), with
    /// `X`'s adapters.
    fn operator<X: baton::runtime::lambda::ports::Extra>(
        &self,
    ) -> baton::pipeline::Pipeline<baton::runtime::lambda::ports::AwsPorts<X>> {
        baton::pipeline::Pipeline::new(
            baton::runtime::lambda::ports::AwsPorts::<X>::new(
                &self.clients,
                "baton-state",
                &self.topic,
                self.config.clone(),
            )
            .unwrap(),
            self.config.clone(),
            baton::pipeline::Settings::default(),
        )
    }

    async fn run_log(&self) -> Vec<String> {
        let store = S3Store::new(self.clients.s3.clone(), "baton-state");
        let run = baton::ids::run_id("web", &self.digest);
        let mut events = vec![];
        for key in store
            .list(&format!("runs/web/{run}/events/"))
            .await
            .unwrap()
        {
            let obj = store.get(&key).await.unwrap().unwrap();
            events.push(Event::from_json(std::str::from_utf8(&obj.bytes).unwrap()).unwrap());
        }
        events.sort_by_key(|e| e.time);
        events.iter().map(|e| e.event_type().to_string()).collect()
    }
}

/// What a run costs on AWS: the requests Baton's functions make for one run (an ECR
/// push through ingest, test, gate, a Lambda deploy and promote), counted by a proxy in
/// front of moto, priced per 1,000 runs next to CodePipeline V2 for the same stages.
/// Prints the figures; asserts that the count stays bounded.
#[tokio::test(flavor = "multi_thread")]
async fn aws_requests_per_run_and_their_cost() {
    // us-east-1 list prices in USD (update when AWS changes them): S3 Standard PUT,
    // COPY, POST and LIST per 1,000, GET and the rest per 1,000; SNS publishes, SQS
    // requests and Lambda invocations per million; ECR, Lambda and IAM control-plane
    // calls are free; CodePipeline V2 per action execution minute.
    const S3_PUT_PER_1K: f64 = 0.005;
    const S3_GET_PER_1K: f64 = 0.0004;
    const SNS_PER_M: f64 = 0.50;
    const SQS_PER_M: f64 = 0.40;
    const LAMBDA_PER_M: f64 = 0.20;
    const CODEPIPELINE_V2_PER_ACTION_MINUTE: f64 = 0.002;
    // Source, test, deploy and promote: four actions of at least a minute each.
    const CODEPIPELINE_ACTIONS: f64 = 4.0;

    let s = stack_counted().await;
    s.push_event().await;
    s.run_ingest().await;
    s.drive(1).await;
    assert_eq!(
        s.alias_image().await,
        format!("{HOST}/demo/web@{}", s.digest),
        "the run deployed"
    );
    let counts = s.requests.as_ref().unwrap().lock().unwrap().clone();
    let by_function = s.invocations.lock().unwrap().clone();
    let invocations = by_function.values().sum::<usize>() as f64;
    let n = |k: &str| counts.get(k).copied().unwrap_or(0) as f64;
    let s3_put = n("s3 PUT") + n("s3 POST");
    let s3_get = n("s3 GET") + n("s3 HEAD");
    let per_1000 = 1000.0
        * (s3_put * S3_PUT_PER_1K / 1000.0
            + s3_get * S3_GET_PER_1K / 1000.0
            + n("sns") * SNS_PER_M / 1e6
            // The event source mapping receives and deletes each batch: two SQS
            // requests per invocation (its idle long polls are a fixed cost, not per run).
            + (n("sqs") + 2.0 * invocations) * SQS_PER_M / 1e6
            + invocations * LAMBDA_PER_M / 1e6);
    let codepipeline = 1000.0 * CODEPIPELINE_ACTIONS * CODEPIPELINE_V2_PER_ACTION_MINUTE;
    println!(
        "AWS requests of one run, by service: {counts:?}; {invocations} function invocations: {by_function:?}"
    );
    println!(
        "cost per 1,000 runs: Baton ${per_1000:.4} in requests and invocations (Lambda duration not included), CodePipeline V2 at least ${codepipeline:.2}"
    );
    // Each function on the run's way once; gate twice: for staging's `tests.passed`, and
    // for its `deploy.succeeded`, where it finds no further environment and does nothing
    // (its subscription takes every `deploy.succeeded`; verify's too, which finds no
    // checks here).
    assert_eq!(
        by_function,
        [
            ("deploy", 1),
            ("gate", 2),
            ("ingest", 1),
            ("promote", 1),
            ("test", 1),
            ("verify", 1)
        ]
        .into_iter()
        .collect(),
        "invocations by function"
    );
    let total: u64 = counts.values().sum();
    assert!(
        n("sns") > 0.0 && s3_put > 0.0 && s3_get > 0.0,
        "the functions wrote, read and published: {counts:?}"
    );
    assert!(total <= 150, "requests per run grew to {total}: {counts:?}");
}

/// Retention on a stack's bucket (`baton --stack … gc`): the deploy history beyond each
/// environment's newest deploys goes once older than `max_age`, the live run stays, a
/// dry run removes nothing and a second gc finds nothing more.
#[tokio::test(flavor = "multi_thread")]
async fn retention_on_a_stack_prunes_the_deploy_history_in_its_bucket() {
    let s = stack_full("auto", "", "retention: { max_age: 1h, keep_last: 1 }\n").await;
    s.push_event().await;
    s.run_ingest().await;
    s.drive(1).await;
    let store = S3Store::new(s.clients.s3.clone(), "baton-state");
    let prefix = baton::store::history_prefix("web", "staging");
    let history = store.list(&prefix).await.unwrap();
    assert_eq!(history.len(), 1, "the run's deploy: {history:?}");
    let entry = store.get(&history[0]).await.unwrap().unwrap();
    // Two deploys of 10 and 11 days ago, each alone in its day.
    let now = chrono::Utc::now();
    let mut old = vec![];
    for days in [11, 10] {
        let key = baton::store::history_key(
            "web",
            "staging",
            now - chrono::Duration::days(days),
            &format!("run-{days}"),
        );
        store
            .put(&key, entry.bytes.clone(), Precondition::IfNoneMatch)
            .await
            .unwrap();
        old.push(key);
    }
    let p = s.operator::<()>();
    let dry = baton::pipeline::retention::gc(&p, now, true).await.unwrap();
    assert_eq!(
        (dry.history_removed, dry.removed.len(), dry.kept),
        (1, 0, 1)
    );
    assert_eq!(
        store.list(&prefix).await.unwrap().len(),
        3,
        "a dry run removes nothing"
    );

    let done = baton::pipeline::retention::gc(&p, now, false)
        .await
        .unwrap();
    assert_eq!(
        (done.history_removed, done.removed.len(), done.kept),
        (1, 0, 1)
    );
    let mut left = vec![old[1].clone(), history[0].clone()];
    left.sort();
    assert_eq!(
        store.list(&prefix).await.unwrap(),
        left,
        "the deploy of 11 days ago went; the newest two (one to roll back to) stay"
    );
    assert_eq!(
        baton::pipeline::retention::gc(&p, now, false)
            .await
            .unwrap()
            .history_removed,
        0
    );
    // The live run's records are untouched.
    assert!(
        !store
            .list(&format!(
                "runs/web/{}/",
                baton::ids::run_id("web", &s.digest)
            ))
            .await
            .unwrap()
            .is_empty()
    );
}

/// The fault suite on AWS APIs: a function stops (panics) right after a side effect of
/// its stage; as Lambda does, the invocation fails and its batch comes back after the
/// visibility timeout, and a new invocation finishes the work once the stopped one's
/// claim has expired (on AWS it can only expire: another instance cannot see whether the
/// owner lives). The run ends deployed with exactly one new Lambda version and each
/// event once in the run log.
async fn crash_on_aws(stage: &str, points: &[&str]) {
    for point in points {
        crash_at(stage, point, Duration::from_millis(300)).await;
    }
}

/// One stack whose `stage` function stops at `point` once, its claims held for
/// `lease`; checked as [`crash_on_aws`] says, and returned for more checks.
async fn crash_at(stage: &str, point: &str, lease: Duration) -> Stack {
    let what = format!("{stage}:{point}");
    let mut s = stack().await;
    s.lease = Some(lease);
    *s.fail.lock().unwrap() = Some((stage.into(), point.to_string()));
    s.push_event().await;
    s.run_ingest().await;
    s.drain(1).await;
    assert!(
        s.fail.lock().unwrap().is_none(),
        "{what}: the fail point was reached"
    );
    s.deployed_once(&what).await;
    s
}

const AWS_POINTS: [&str; 5] = [
    "claimed",
    "outputs_fixed",
    "appended",
    "published",
    "recorded",
];

#[tokio::test(flavor = "multi_thread")]
async fn a_crashed_test_function_loses_and_repeats_nothing() {
    crash_on_aws("test", &AWS_POINTS).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_crashed_gate_function_loses_and_repeats_nothing() {
    crash_on_aws("gate", &AWS_POINTS).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_crashed_deploy_function_loses_and_repeats_nothing() {
    let mut points = AWS_POINTS.to_vec();
    points.insert(1, "applied");
    crash_on_aws("deploy", &points).await;
}

/// A crashed function's batch back while the crash's claim is still live (a lease of
/// 3 s, three times the queue's visibility timeout: on a loaded machine a slow
/// invocation does the same with a short lease) waits for the lease as a new message:
/// the checks spend none of its receives, so it is not dead-lettered after the crash
/// and two checks (the queue's `maxReceiveCount` is 3), and the run deploys once.
#[tokio::test(flavor = "multi_thread")]
async fn a_redelivery_under_a_crashed_functions_live_claim_waits_for_it() {
    let s = crash_at("deploy", "applied", Duration::from_secs(3)).await;
    let deploys = s.invocations.lock().unwrap()["deploy"];
    assert!(
        deploys >= 3,
        "the crash, at least one check under the live claim, then the deploy: {deploys} invocations"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_crashed_promote_function_loses_and_repeats_nothing() {
    crash_on_aws("promote", &AWS_POINTS).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_pipeline_runs_end_to_end_on_aws_apis() {
    let s = stack().await;
    s.push_event().await;
    s.run_ingest().await;
    // every message is delivered twice: nothing changes
    s.drive(2).await;
    s.deployed_once("every message delivered twice").await;
    let staging = EcrRegistry::new(s.ecr.clone())
        .resolve(HOST, "demo/web", "staging")
        .await
        .unwrap();
    assert_eq!(staging.digest, s.digest, "promote tagged the image in ECR");
    let got = s
        .sqs
        .receive_message()
        .queue_url(&s.reaction_queue)
        .max_number_of_messages(10)
        .send()
        .await
        .unwrap();
    assert_eq!(
        got.messages().len(),
        1,
        "the e-mail reaction got exactly one message"
    );
    let e =
        baton::envelopes::event_from_sns_notification(got.messages()[0].body().unwrap()).unwrap();
    assert_eq!(e.event_type().as_str(), "image.built");
    assert!(
        s.sqs
            .receive_message()
            .queue_url(&s.ingest_queue)
            .send()
            .await
            .unwrap()
            .messages()
            .is_empty()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_traffic_shift_waits_in_the_deploy_queue_and_holds_the_lease() {
    let s = stack_with_deploy("auto", ", traffic: { linear: { step: 50, every: 10s } }").await;
    s.push_event().await;
    s.run_ingest().await;
    // test, gate and the first step of the deploy; the deploy message is handed back
    // for the step's 10 s, and `drive` returns before it is visible again.
    s.drive(1).await;
    let (version, weights) = alias_routing(&s.lambda, "web").await;
    assert_eq!(version, "1", "the old version keeps half");
    assert_eq!(weights.len(), 1, "{weights:?}");
    assert!((weights[0].1 - 0.5).abs() < 1e-9, "{weights:?}");
    assert!(
        !s.run_log().await.iter().any(|t| t.starts_with("deploy.")),
        "no outcome while the shift runs"
    );
    let store = S3Store::new(s.clients.s3.clone(), "baton-state");
    let lease: serde_json::Value = serde_json::from_slice(
        &store
            .get("deployments/web/staging/lease.json")
            .await
            .unwrap()
            .expect("the waiting deploy holds the lease")
            .bytes,
    )
    .unwrap();
    let until = chrono::DateTime::parse_from_rfc3339(lease["until"].as_str().unwrap()).unwrap();
    // Held for the step's 10 s plus the usual 60 s lease, not just the 60 s (which would
    // let another run deploy between two checks of a long step).
    assert!(
        until > chrono::Utc::now() + chrono::Duration::seconds(62),
        "the lease outlasts the wait to the next check: {lease}"
    );
    // After the step's time, the next check moves all traffic and the run goes on.
    tokio::time::sleep(Duration::from_secs(9)).await;
    s.drive(1).await;
    assert_eq!(
        s.alias_image().await,
        format!("{HOST}/demo/web@{}", s.digest)
    );
    let (version, weights) = alias_routing(&s.lambda, "web").await;
    assert_ne!(version, "1");
    assert!(
        weights.iter().all(|(_, w)| *w == 0.0),
        "all traffic on the new version: {weights:?}"
    );
    assert!(
        s.run_log().await.iter().any(|t| t == "deploy.succeeded"),
        "{:?}",
        s.run_log().await
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_message_failing_three_times_rests_in_the_dlq_until_redriven() {
    let s = stack().await;
    // someone else holds the deploy lease: the deploy stage fails transiently
    let store = S3Store::new(s.clients.s3.clone(), "baton-state");
    let lease = json!({"holder": "another-deploy", "until": (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339()});
    store
        .put(
            "deployments/web/staging/lease.json",
            lease.to_string().into_bytes(),
            Precondition::None,
        )
        .await
        .unwrap();
    s.push_event().await;
    s.run_ingest().await;
    s.drive(1).await;
    let dead = baton::adapters::aws::dlq::list(&s.sqs, STACK, "deploy")
        .await
        .unwrap();
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert!(
        dead[0]
            .event
            .as_deref()
            .unwrap()
            .starts_with("approval.granted"),
        "{dead:?}"
    );
    assert_ne!(
        s.alias_image().await,
        format!("{HOST}/demo/web@{}", s.digest)
    );
    // the lease is released; the redriven message completes the run
    let expired = json!({"holder": "another-deploy", "until": chrono::Utc::now().to_rfc3339()});
    store
        .put(
            "deployments/web/staging/lease.json",
            expired.to_string().into_bytes(),
            Precondition::None,
        )
        .await
        .unwrap();
    assert_eq!(
        baton::adapters::aws::dlq::redrive(&s.sqs, STACK, "deploy")
            .await
            .unwrap(),
        1
    );
    s.drive(1).await;
    assert_eq!(
        s.alias_image().await,
        format!("{HOST}/demo/web@{}", s.digest)
    );
    assert_eq!(
        s.run_log().await.last().map(String::as_str),
        Some("image.promoted")
    );
    assert!(
        baton::adapters::aws::dlq::list(&s.sqs, STACK, "deploy")
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn retry_request_reruns_one_stage_in_its_function() {
    let s = stack().await;
    // the deploy target does not exist yet: deploy fails permanently (stage.failed)
    s.lambda
        .delete_function()
        .function_name("web")
        .send()
        .await
        .unwrap();
    s.push_event().await;
    s.run_ingest().await;
    s.drive(1).await;
    assert_eq!(
        s.run_log().await.last().map(String::as_str),
        Some("stage.failed")
    );
    // fix the cause, then retry only deploy through its function's handler
    let iam = aws_sdk_iam::Client::new(&s.m.config().await);
    let role = iam
        .get_role()
        .role_name("web-fn")
        .send()
        .await
        .unwrap()
        .role()
        .unwrap()
        .arn()
        .to_string();
    s.lambda
        .create_function()
        .function_name("web")
        .role(role)
        .package_type(aws_sdk_lambda::types::PackageType::Image)
        .code(
            aws_sdk_lambda::types::FunctionCode::builder()
                .image_uri(format!("{HOST}/demo/web@sha256:{}", "0".repeat(64)))
                .build(),
        )
        .publish(true)
        .send()
        .await
        .unwrap();
    let run = baton::ids::run_id("web", &s.digest);
    let out = s
        .invoke(
            baton::pipeline::StageName::Deploy,
            json!({"baton": "retry", "run": run, "environment": "staging"}),
        )
        .await
        .unwrap();
    assert_eq!(out["status"], "succeeded", "{out}");
    assert_eq!(out["outputs"][0]["type"], "deploy.succeeded");
    s.drive(1).await;
    assert_eq!(
        s.alias_image().await,
        format!("{HOST}/demo/web@{}", s.digest)
    );
    assert_eq!(
        s.run_log().await.last().map(String::as_str),
        Some("image.promoted")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn approvals_through_the_approve_url_take_the_approver_from_a_mapped_principal() {
    let s = stack_full("{ approvers: [alice], required: 1 }", "", APPROVERS).await;
    s.ingest_cloudtrail("arn:aws:sts::123456789012:assumed-role/ci-pushers/ci-bot")
        .await;
    s.drive(1).await;
    assert_eq!(
        s.run_log().await.last().map(String::as_str),
        Some("approval.requested")
    );
    let before = s.alias_image().await;
    let run = baton::ids::run_id("web", &s.digest);
    let approve = baton::pipeline::StageName::Approve;
    let request = |arn: Option<&str>, account: &str| approve_url_request(&run, arn, account);
    const ACCT: &str = "123456789012";
    let out = s.invoke(approve, request(None, ACCT)).await.unwrap();
    assert_eq!(out["statusCode"], 401, "no IAM identity, no decision");
    // Freezes are not set through the approve URL (its role writes no freeze records):
    // said, with what to use instead.
    let mut freeze = request(Some(ALICE_ROLE), ACCT);
    freeze["rawPath"] = json!("/freeze");
    freeze["requestContext"]["http"]["path"] = json!("/freeze");
    freeze["body"] = json!(json!({"reason": "holiday"}).to_string());
    let out = s.invoke(approve, freeze).await.unwrap();
    assert_eq!(out["statusCode"], 404, "{out}");
    assert!(out["body"].as_str().unwrap().contains("--stack"), "{out}");
    for (arn, account, why) in [
        (
            "arn:aws:iam::123456789012:user/mallory",
            ACCT,
            "an identity no approver maps to",
        ),
        (
            "arn:aws:sts::123456789012:assumed-role/AnyRoleICanAssume/alice",
            ACCT,
            "a session the caller named alice, in another role",
        ),
        (
            "arn:aws:sts::999999999999:assumed-role/Approvers/alice",
            "999999999999",
            "the same role name in another account",
        ),
        (
            "arn:aws:sts::123456789012:assumed-role/Approvers/alice",
            "999999999999",
            "an ARN whose account is not the caller's",
        ),
    ] {
        let out = s
            .invoke(approve, request(Some(arn), account))
            .await
            .unwrap();
        assert_eq!(out["statusCode"], 403, "{why}: {out}");
    }
    s.drive(1).await;
    assert_eq!(
        s.alias_image().await,
        before,
        "no refused caller changed anything"
    );
    let (rec, _) = get_json::<_, serde_json::Value>(
        &S3Store::new(s.clients.s3.clone(), "baton-state"),
        &baton::store::approval_key("web", &run, "staging"),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(rec["decisions"], json!([]), "no decision was recorded");
    // the mapped principal: the role's enforced session
    let out = s
        .invoke(
            approve,
            request(
                Some("arn:aws:sts::123456789012:assumed-role/Approvers/alice"),
                ACCT,
            ),
        )
        .await
        .unwrap();
    assert_eq!(out["statusCode"], 200, "{out}");
    let body: serde_json::Value = serde_json::from_str(out["body"].as_str().unwrap()).unwrap();
    assert_eq!(body["status"], "granted");
    s.drive(1).await;
    assert_eq!(
        s.alias_image().await,
        format!("{HOST}/demo/web@{}", s.digest)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unknown_or_self_pusher_cannot_be_approved_through_the_url() {
    // ECR's image action does not say who pushed: the default policy refuses.
    let s = stack_full("{ approvers: [alice], required: 1 }", "", APPROVERS).await;
    s.push_event().await;
    s.run_ingest().await;
    s.drive(1).await;
    let run = baton::ids::run_id("web", &s.digest);
    let approve = baton::pipeline::StageName::Approve;
    let out = s
        .invoke(
            approve,
            approve_url_request(&run, Some(ALICE_ROLE), "123456789012"),
        )
        .await
        .unwrap();
    assert_eq!(out["statusCode"], 403, "{out}");
    assert!(
        out["body"].as_str().unwrap().contains("unknown_pusher"),
        "{out}"
    );

    // CloudTrail names the pusher: alice pushed through her developer role, and her
    // approver identity (the session alice) is the same person.
    let s = stack_full("{ approvers: [alice], required: 1 }", "", APPROVERS).await;
    s.ingest_cloudtrail("arn:aws:sts::123456789012:assumed-role/Developers/alice")
        .await;
    s.drive(1).await;
    let run = baton::ids::run_id("web", &s.digest);
    let out = s
        .invoke(
            baton::pipeline::StageName::Approve,
            approve_url_request(&run, Some(ALICE_ROLE), "123456789012"),
        )
        .await
        .unwrap();
    assert_eq!(out["statusCode"], 403, "{out}");
    assert!(
        out["body"].as_str().unwrap().contains("self-approval"),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_forged_approval_granted_from_a_compromised_stage_deploys_nothing() {
    let s = stack_full("{ approvers: [alice], required: 1 }", "", APPROVERS).await;
    s.ingest_cloudtrail("arn:aws:sts::123456789012:assumed-role/ci-pushers/ci-bot")
        .await;
    s.drive(1).await;
    let before = s.alias_image().await;
    let run = baton::ids::run_id("web", &s.digest);
    let store = S3Store::new(s.clients.s3.clone(), "baton-state");
    // The attacker holds the test stage's role, which may publish to the topic: it
    // copies the run's context from the run log into a made-up approval.granted.
    let mut requested = None;
    for key in store
        .list(&format!("runs/web/{run}/events/"))
        .await
        .unwrap()
    {
        let obj = store.get(&key).await.unwrap().unwrap();
        let e = Event::from_json(std::str::from_utf8(&obj.bytes).unwrap()).unwrap();
        if e.event_type().as_str() == "approval.requested" {
            requested = Some(e);
        }
    }
    let requested = requested.expect("approval.requested in the run log");
    let bus = baton::adapters::aws::sns::SnsBus::new(
        aws_sdk_sns::Client::new(&s.m.config().await),
        &s.topic,
    );
    for policy in [
        baton::event::GrantPolicy::Manual,
        baton::event::GrantPolicy::Auto,
    ] {
        let forged = Event::new(
            format!("forged-{policy:?}"),
            "approve",
            chrono::Utc::now(),
            baton::event::Payload::ApprovalGranted(baton::event::ApprovalGranted {
                ctx: requested.ctx().clone(),
                policy,
                approved_by: vec!["alice".into()],
            }),
        );
        baton::ports::EventBus::publish(&bus, &baton::ports::BusMessage::from_event(&forged))
            .await
            .unwrap();
        s.drive(1).await;
        assert_eq!(
            s.alias_image().await,
            before,
            "the forged {policy:?} approval deployed nothing"
        );
    }
    let log = s.run_log().await;
    assert!(
        log.contains(&"stage.failed".to_string()),
        "the refusal is reported: {log:?}"
    );
    let deploy = s.deploy_record(&run).await;
    assert_eq!(deploy["error"]["kind"], "refused", "{deploy}");
    let why = deploy["error"]["message"].as_str().unwrap();
    assert!(
        why.contains("claims automatic approval") && why.contains("nothing was deployed"),
        "the last forgery (policy auto) is named: {why}"
    );
    let first = deploy["history"].as_array().unwrap().iter().any(|t| {
        t["note"]
            .as_str()
            .is_some_and(|n| n.contains("forged-Manual"))
    });
    assert!(
        first,
        "the first forgery (policy manual) was refused too: {deploy}"
    );
    // the genuine approval still deploys: a refused input does not hold the stage
    let out = s
        .invoke(
            baton::pipeline::StageName::Approve,
            approve_url_request(&run, Some(ALICE_ROLE), "123456789012"),
        )
        .await
        .unwrap();
    assert_eq!(out["statusCode"], 200, "{out}");
    s.drive(1).await;
    assert_eq!(
        s.alias_image().await,
        format!("{HOST}/demo/web@{}", s.digest)
    );
}

/// Least privilege proven, not asserted: moto enforces IAM for requests signed with keys
/// IAM created (after `/moto-api/reset-auth`). Each stage's store access runs under a
/// user carrying exactly the S3 statements of its role in `infra/template.yaml`, and
/// only the approve stage can write an approval record, only deploy (and approve) read
/// one, only deploy writes deployment history.
///
/// moto evaluates actions and resources, not conditions, and authorizes SNS publishes
/// against resource `*` (so resource-scoped `sns:Publish` grants cannot be exercised
/// here); S3 is what the approval records live in. A first claim on a missing key reads
/// as 404 here because moto does not model the ListBucket rule; on AWS the rule is
/// evaluated with the key as `s3:prefix` (ceph/ceph#68577 matches that), which the
/// template's `ListOwnPrefixes` conditions cover.
#[tokio::test(flavor = "multi_thread")]
async fn each_stage_role_reaches_only_its_own_store_prefixes_under_moto_iam() {
    let m = moto().await;
    let admin = m.config().await;
    let s3_admin = baton::adapters::aws::Clients::new(&admin).s3;
    s3_admin
        .create_bucket()
        .bucket("baton-state")
        .send()
        .await
        .unwrap();
    let iam = aws_sdk_iam::Client::new(&admin);
    let template = baton::audit::load_template(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("../infra/template.yaml"),
    )
    .unwrap();
    let stages = [
        "ingest", "test", "gate", "approve", "deploy", "promote", "notify",
    ];
    let mut stores = vec![];
    for stage in stages {
        let role_id = format!("{}{}Role", stage[..1].to_uppercase(), &stage[1..]);
        let role = &template["Resources"][&role_id];
        let statements: Vec<serde_json::Value> = baton::audit::role_statements(role)
            .into_iter()
            .filter(|(_, actions, _)| actions.iter().any(|a| a.starts_with("s3:")))
            .map(|(sid, actions, resources)| {
                let resources: Vec<String> = resources
                    .iter()
                    .map(|r| r.replace("${StateBucket.Arn}", "arn:aws:s3:::baton-state"))
                    .collect();
                json!({"Sid": sid, "Effect": "Allow", "Action": actions, "Resource": resources})
            })
            .collect();
        let user = format!("baton-{stage}");
        iam.create_user().user_name(&user).send().await.unwrap();
        iam.put_user_policy()
            .user_name(&user)
            .policy_name(format!("baton-{stage}"))
            .policy_document(json!({"Version": "2012-10-17", "Statement": statements}).to_string())
            .send()
            .await
            .unwrap();
        let key = iam
            .create_access_key()
            .user_name(&user)
            .send()
            .await
            .unwrap()
            .access_key
            .unwrap();
        let conf = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .endpoint_url(&m.endpoint)
            .region(aws_config::Region::new("us-east-1"))
            .credentials_provider(aws_sdk_s3::config::Credentials::new(
                key.access_key_id(),
                key.secret_access_key(),
                None,
                None,
                "stage",
            ))
            .load()
            .await;
        stores.push((
            stage,
            S3Store::new(baton::adapters::aws::Clients::new(&conf).s3, "baton-state"),
        ));
    }
    S3Store::new(s3_admin.clone(), "baton-state")
        .put(
            "config/baton.yaml",
            b"apps: []".to_vec(),
            Precondition::None,
        )
        .await
        .unwrap();
    // From here on, every request is authorized against its signer's policies.
    let r = reqwest::Client::new()
        .post(format!("{}/moto-api/reset-auth", m.endpoint))
        .body("0")
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "moto enforces IAM now");
    assert!(
        S3Store::new(s3_admin, "baton-state")
            .get("config/baton.yaml")
            .await
            .is_err(),
        "the unsigned-by-IAM admin key is refused: enforcement is on"
    );
    let approval = "approvals/web/0123456789abcdef/production.json";
    let by = |name: &str| &stores.iter().find(|(s, _)| *s == name).unwrap().1;
    by("approve")
        .put(approval, b"{}".to_vec(), Precondition::IfNoneMatch)
        .await
        .expect("approve writes approval records");
    for (stage, store) in &stores {
        let run_key = if *stage == "notify" {
            "runs/web/0123456789abcdef/notifications/slack/e1.json".to_string()
        } else {
            format!("runs/web/0123456789abcdef/stages/{stage}.json")
        };
        assert_eq!(
            store.get(&run_key).await.unwrap(),
            None,
            "{stage}: a first claim on a missing key reads as absent"
        );
        store
            .put(&run_key, b"{}".to_vec(), Precondition::IfNoneMatch)
            .await
            .unwrap_or_else(|e| panic!("{stage} claims its stage record: {e}"));
        assert!(
            store.get("config/baton.yaml").await.unwrap().is_some(),
            "{stage} reads the configuration"
        );
        let writes = store
            .put(approval, b"{\"forged\":true}".to_vec(), Precondition::None)
            .await;
        assert_eq!(
            writes.is_ok(),
            *stage == "approve",
            "{stage}: writing an approval record"
        );
        let reads = store.get(approval).await;
        assert_eq!(
            reads.is_ok(),
            matches!(*stage, "approve" | "deploy"),
            "{stage}: reading an approval record"
        );
        let deploy_record = store
            .put(
                "runs/web/0123456789abcdef/stages/deploy.production.json",
                b"{}".to_vec(),
                Precondition::None,
            )
            .await;
        assert_eq!(
            deploy_record.is_ok(),
            *stage == "deploy",
            "{stage}: writing deploy's stage record (its progress is what a rollback restores)"
        );
        let history = store
            .put(
                "deployments/web/production/current.json",
                b"{}".to_vec(),
                Precondition::None,
            )
            .await;
        assert_eq!(
            history.is_ok(),
            *stage == "deploy",
            "{stage}: writing what is live"
        );
    }
}

/// In an `auto` environment no approval is needed, but an event naming an image other
/// than the app's own (another repository, a run id that is not its digest's) still
/// deploys nothing, whoever publishes it.
#[tokio::test(flavor = "multi_thread")]
async fn a_forged_approval_for_an_image_outside_the_app_deploys_nothing() {
    let s = stack().await;
    let before = s.alias_image().await;
    let bus = SnsBus::new(aws_sdk_sns::Client::new(&s.m.config().await), &s.topic);
    let digest = format!("sha256:{}", "6".repeat(64));
    for (repository, run) in [
        ("demo/evil", baton::ids::run_id("web", &digest)),
        ("demo/web", "0123456789abcdef".parse().unwrap()),
    ] {
        let forged = Event::new(
            format!("forged-{repository}-{run}").replace('/', "-"),
            "gate",
            chrono::Utc::now(),
            baton::event::Payload::ApprovalGranted(baton::event::ApprovalGranted {
                ctx: baton::event::RunContext {
                    run: run.clone(),
                    app: "web".into(),
                    environment: Some("staging".into()),
                    image: baton::event::Image::parse(HOST, repository, "9.9.9", &digest).unwrap(),
                    causation: "forged".into(),
                    attempt: 1,
                    sequence: 1,
                    pushed_by: None,
                },
                policy: baton::event::GrantPolicy::Auto,
                approved_by: vec![],
            }),
        );
        EventBus::publish(&bus, &BusMessage::from_event(&forged))
            .await
            .unwrap();
        s.drive(1).await;
        assert_eq!(
            s.alias_image().await,
            before,
            "{repository} {run}: nothing deployed"
        );
        let rec = s.deploy_record(&run).await;
        assert_eq!(rec["error"]["kind"], "refused", "{rec}");
    }
}

/// A function URL request to `path` with these headers and body.
fn url_request(
    method: &str,
    path: &str,
    headers: serde_json::Value,
    body: &str,
) -> serde_json::Value {
    json!({
        "version": "2.0", "rawPath": path, "rawQueryString": "", "headers": headers,
        "body": body, "isBase64Encoded": false,
        "requestContext": {"http": {"method": method, "path": path, "sourceIp": "203.0.113.7"},
                           "timeEpoch": 1795230000000_i64}
    })
}

/// The ingest function URL serves the HTTP API's webhook route, as `baton serve` does:
/// an authenticated registry notification for the app's registry is ingested at once
/// (202 with the run); no secret is 401, an unknown hook or a route ingest does not serve
/// 404, a malformed body 400, and none of them starts anything.
#[tokio::test(flavor = "multi_thread")]
async fn the_ingest_url_takes_authenticated_webhooks_through_the_http_api() {
    // The webhook's secret must come from the environment; cargo sets
    // CARGO_MANIFEST_DIR for every test process, so it serves as one without setting
    // variables in a multi-threaded test.
    let s = stack_full(
        "auto",
        "",
        r#"
serve:
  webhooks:
    - { name: registry, source: distribution, auth: { header: { name: X-Registry-Secret, secret_env: CARGO_MANIFEST_DIR } } }
"#,
    )
    .await;
    let secret = env!("CARGO_MANIFEST_DIR");
    let at = chrono::Utc::now().to_rfc3339();
    let notification = json!({"events": [
        {"id": "hook-1", "timestamp": at, "action": "push",
         "target": {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": s.digest,
                    "repository": "demo/web", "tag": "1.0.0",
                    "url": format!("https://{HOST}/v2/demo/web/manifests/{}", s.digest)},
         "request": {"host": HOST}, "actor": {"name": "ci-bot"}}
    ]})
    .to_string();
    let ingest = baton::pipeline::StageName::Ingest;
    let authed = json!({"content-type": "application/json", "x-registry-secret": secret});
    let run = baton::ids::run_id("web", &s.digest);
    let refused = [
        (
            url_request(
                "POST",
                "/hooks/registry",
                json!({"content-type": "application/json", "x-registry-secret": "guess"}),
                &notification,
            ),
            401,
            "a wrong secret",
        ),
        (
            url_request("POST", "/hooks/registry", json!({}), &notification),
            401,
            "no secret",
        ),
        (
            url_request("POST", "/hooks/other", authed.clone(), &notification),
            404,
            "an unknown hook",
        ),
        (
            url_request("GET", "/runs", authed.clone(), ""),
            404,
            "a route the ingest function does not serve",
        ),
        (
            url_request("POST", "/hooks/registry", authed.clone(), "{not json"),
            400,
            "a malformed body",
        ),
    ];
    for (request, status, why) in refused {
        let out = s.invoke(ingest, request).await.unwrap();
        assert_eq!(out["statusCode"], status, "{why}: {out}");
    }
    assert!(
        s.run_log().await.is_empty(),
        "no refused request started a run"
    );
    let out = s
        .invoke(
            ingest,
            url_request("POST", "/hooks/registry", authed, &notification),
        )
        .await
        .unwrap();
    assert_eq!(out["statusCode"], 202, "{out}");
    let body: serde_json::Value = serde_json::from_str(out["body"].as_str().unwrap()).unwrap();
    assert_eq!(body["accepted"][0]["run"], run.as_str(), "{body}");
    assert_eq!(body["pushes"][0]["tag"], "1.0.0", "{body}");
    assert_eq!(
        s.run_log().await.first().map(String::as_str),
        Some("image.built"),
        "ingested at once"
    );
}

/// The verify function on AWS APIs: a healthy service verifies 1.0.0 (promoted after
/// `verification.passed`); 1.1.0 meets an unhealthy one, fails its verification, and the
/// deploy function moves the Lambda alias back to 1.0.0.
#[tokio::test(flavor = "multi_thread")]
async fn a_failed_verification_moves_the_lambda_alias_back_on_aws_apis() {
    let svc = crate::verify::Service::start().await;
    let tail = format!(
        "        verify:\n          checks:\n            - name: health\n              http: {{ url: \"http://127.0.0.1:{}/healthz\", interval: 100ms, successes: 2 }}\n",
        svc.port
    );
    let s = stack_full("auto", "", &tail).await;
    s.push_event().await;
    s.run_ingest().await;
    let want = [
        "deploy.succeeded".to_string(),
        "verification.passed".to_string(),
        "image.promoted".to_string(),
    ];
    let mut log = vec![];
    for _ in 0..15 {
        s.drive(1).await;
        log = s.run_log().await;
        if log.ends_with(&want) {
            break;
        }
    }
    assert!(
        log.ends_with(&[
            "deploy.succeeded".to_string(),
            "verification.passed".to_string(),
            "image.promoted".to_string()
        ]),
        "promoted after the verification: {log:?}"
    );
    let v1 = format!("{HOST}/demo/web@{}", s.digest);
    assert_eq!(s.alias_image().await, v1);

    // 1.1.0 (moto's ECR gives every image the same digest, so the event names one of
    // its own: nothing before promote reads the registry), and the service turns
    // unhealthy.
    let d2 = format!("sha256:{}", "ab".repeat(32));
    assert_ne!(d2, s.digest);
    svc.set_status(503);
    s.push_event_of("1.1.0", &d2).await;
    s.run_ingest().await;
    let store = S3Store::new(s.clients.s3.clone(), "baton-state");
    let run2 = baton::ids::run_id("web", &d2);
    let undo_key = baton::store::stage_key("web", &run2, "deploy", Some("staging.undo"));
    // Waits come back after their visibility timeout: drive until the rollback is done.
    let mut undo = serde_json::Value::Null;
    for _ in 0..15 {
        s.drive(1).await;
        if let Some(o) = store.get(&undo_key).await.unwrap() {
            undo = serde_json::from_slice(&o.bytes).unwrap();
            if undo["status"] == "succeeded" {
                break;
            }
        }
    }
    assert_eq!(
        s.alias_image().await,
        v1,
        "the alias is back on 1.0.0 after 1.1.0 failed its verification"
    );
    let mut records = vec![];
    for k in store
        .list(&format!("runs/web/{run2}/stages/"))
        .await
        .unwrap()
    {
        let o = store.get(&k).await.unwrap().unwrap();
        let v: serde_json::Value = serde_json::from_slice(&o.bytes).unwrap();
        records.push(format!("{k}: {} {}", v["status"], v["note"]));
    }
    assert_eq!(undo["status"], "succeeded", "{undo}; records: {records:#?}");
    assert!(
        undo["note"]
            .as_str()
            .unwrap_or("")
            .contains("rolled back to 1.0.0"),
        "{undo}"
    );
    let failed: serde_json::Value = serde_json::from_slice(
        &store
            .get(&baton::store::stage_key(
                "web",
                &run2,
                "verify",
                Some("staging"),
            ))
            .await
            .unwrap()
            .unwrap()
            .bytes,
    )
    .unwrap();
    assert_eq!(
        failed["outputs"][0]["type"], "verification.failed",
        "{failed}"
    );
    assert!(
        s.sqs
            .receive_message()
            .queue_url(&s.queues.iter().find(|(n, _)| n == "verify").unwrap().1)
            .send()
            .await
            .unwrap()
            .messages()
            .is_empty()
    );
}

/// Approve from Slack on AWS: the approve function takes Slack's callback on its
/// unauthenticated URL (no IAM identity in the request) and trusts only Slack's
/// signature; a forged or replayed press decides nothing, a signed one deploys.
#[tokio::test(flavor = "multi_thread")]
async fn a_signed_slack_press_on_the_approve_url_decides_and_a_forged_one_does_not() {
    // The signing secret's variable is one the test process already has, so the test
    // sets none (changing the environment of a threaded process is unsound).
    const SECRET_VAR: &str = "CARGO_MANIFEST_DIR";
    let secret = env!("CARGO_MANIFEST_DIR");
    let tail = format!(
        "{APPROVERS}  slack:\n    signing_secret_env: {SECRET_VAR}\n    users: {{ U0ALICE: alice }}\n    response_urls: [\"http://127.0.0.1:9/\"]\n"
    );
    let s = stack_full("{ approvers: [alice], required: 1 }", "", &tail).await;
    s.ingest_cloudtrail("arn:aws:sts::123456789012:assumed-role/ci-pushers/ci-bot")
        .await;
    s.drive(1).await;
    assert_eq!(
        s.run_log().await.last().map(String::as_str),
        Some("approval.requested")
    );
    let run = baton::ids::run_id("web", &s.digest);
    let value = format!("{run}/staging");
    let press = |key: &str, ts: i64| {
        let payload = json!({"type": "block_actions", "user": {"id": "U0ALICE"},
            "actions": [{"action_id": "baton-approve", "value": value}]});
        let mut body = String::from("payload=");
        for b in payload.to_string().bytes() {
            if b.is_ascii_alphanumeric() {
                body.push(b as char);
            } else {
                body.push_str(&format!("%{b:02X}"));
            }
        }
        use hmac::Mac;
        let mut mac = <hmac::Hmac<sha2::Sha256> as Mac>::new_from_slice(key.as_bytes()).unwrap();
        mac.update(format!("v0:{ts}:{body}").as_bytes());
        let sig: String = mac
            .finalize()
            .into_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        json!({
            "version": "2.0", "rawPath": "/slack/interactions", "rawQueryString": "",
            "headers": {"content-type": "application/x-www-form-urlencoded",
                        "x-slack-request-timestamp": ts.to_string(),
                        "x-slack-signature": format!("v0={sig}")},
            "body": body, "isBase64Encoded": false,
            "requestContext": {"http": {"method": "POST", "path": "/slack/interactions"}, "timeEpoch": 1795230000000_i64}
        })
    };
    let approve = baton::pipeline::StageName::Approve;
    let now = chrono::Utc::now().timestamp();
    let out = s
        .invoke(approve, press("not-the-secret", now))
        .await
        .unwrap();
    assert_eq!(out["statusCode"], 401, "forged: {out}");
    let before = s.alias_image().await;
    s.drive(1).await;
    assert_eq!(s.alias_image().await, before, "nothing deployed");
    let signed = press(secret, now);
    let out = s.invoke(approve, signed.clone()).await.unwrap();
    assert_eq!(out["statusCode"], 200, "{out}");
    let body: serde_json::Value = serde_json::from_str(out["body"].as_str().unwrap()).unwrap();
    assert_eq!(body["decided"], true, "{body}");
    let out = s.invoke(approve, signed).await.unwrap();
    assert_eq!(out["statusCode"], 401, "replayed: {out}");
    s.drive(1).await;
    assert_eq!(
        s.alias_image().await,
        format!("{HOST}/demo/web@{}", s.digest),
        "alice's press from Slack deployed"
    );
    let (rec, _) = get_json::<_, serde_json::Value>(
        &S3Store::new(s.clients.s3.clone(), "baton-state"),
        &baton::store::approval_key("web", &run, "staging"),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(rec["decisions"].as_array().map(Vec::len), Some(1), "{rec}");
}

/// The newer sources through the ingest function URL, as through `baton serve`: a Pub/Sub
/// push (Artifact Registry), an Event Grid delivery, an Alibaba ACR
/// webhook (an instance domain) and a CDEvent, each naming the stack's ECR image, each
/// authenticated by its scheme; each is ingested at once and its run deploys.
#[tokio::test(flavor = "multi_thread")]
async fn the_ingest_url_takes_pubsub_event_grid_acr_and_cdevents_pushes() {
    use base64::Engine;
    let secret = env!("CARGO_MANIFEST_DIR");
    let hooks = r#"
serve:
  webhooks:
    - { name: gcp, source: pubsub, auth: { header: { name: X-Hook-Secret, secret_env: CARGO_MANIFEST_DIR } } }
    - { name: azure, source: eventgrid, auth: { header: { name: X-Hook-Secret, secret_env: CARGO_MANIFEST_DIR } } }
    - { name: aliyun, source: acr, auth: { header: { name: X-Hook-Secret, secret_env: CARGO_MANIFEST_DIR } } }
    - { name: cd, source: cdevents, auth: { header: { name: X-Hook-Secret, secret_env: CARGO_MANIFEST_DIR } } }
"#;
    let at = chrono::Utc::now().to_rfc3339();
    for hook in ["gcp", "azure", "aliyun", "cd"] {
        let s = stack_full("auto", "", hooks).await;
        let d = s.digest.clone();
        let body = match hook {
            "gcp" => {
                let data = json!({"action": "INSERT", "digest": format!("{HOST}/demo/web@{d}"), "tag": format!("{HOST}/demo/web:1.0.0")});
                json!({"message": {"data": base64::engine::general_purpose::STANDARD.encode(data.to_string()),
                    "messageId": "m-1", "publishTime": at}, "subscription": "projects/p/subscriptions/s"})
            }
            "azure" => json!([{"id": "e-1", "eventType": "Microsoft.ContainerRegistry.ImagePushed", "eventTime": at,
                "subject": "demo/web:1.0.0", "data": {"action": "push",
                "target": {"digest": d, "repository": "demo/web", "tag": "1.0.0"}, "request": {"host": HOST}}}]),
            "aliyun" => json!({"push_data": {"digest": d, "pushed_at": "2026-11-29 18:25:46", "tag": "1.0.0"},
                "repository": {"repo_full_name": "demo/web", "region": "us-east-1", "domain": HOST}}),
            _ => json!({"context": {"specversion": "0.5.1", "id": "c-1", "source": "/ci", "type": "dev.cdevents.artifact.published.0.3.0", "timestamp": at},
                "subject": {"id": format!("pkg:oci/web@{}?repository_url={HOST}/demo/web&tag=1.0.0", d.replace(':', "%3A")), "content": {}}}),
        }
        .to_string();
        let ingest = baton::pipeline::StageName::Ingest;
        let path = format!("/hooks/{hook}");
        let out = s
            .invoke(
                ingest,
                url_request("POST", &path, json!({"x-hook-secret": "guess"}), &body),
            )
            .await
            .unwrap();
        assert_eq!(out["statusCode"], 401, "{hook}: a wrong secret");
        let out = s
            .invoke(
                ingest,
                url_request("POST", &path, json!({"x-hook-secret": secret}), &body),
            )
            .await
            .unwrap();
        assert_eq!(out["statusCode"], 202, "{hook}: {out}");
        let answer: serde_json::Value =
            serde_json::from_str(out["body"].as_str().unwrap()).unwrap();
        assert_eq!(
            answer["accepted"][0]["run"],
            baton::ids::run_id("web", &d).as_str(),
            "{hook}: {answer}"
        );
        s.drive(1).await;
        assert_eq!(
            s.alias_image().await,
            format!("{HOST}/demo/web@{d}"),
            "{hook}: the run deployed"
        );
    }
}

/// A freeze set on the stack's records (what `baton freeze --stack` writes) makes the
/// deploy function wait in its queue and publish `deploy.waiting` once; lifted, the
/// same message deploys.
#[tokio::test(flavor = "multi_thread")]
async fn a_freeze_on_the_stack_makes_the_deploy_function_wait_until_lifted() {
    use baton::pipeline::holds;
    let s = stack_full("auto", "", "freeze:\n  recheck: 1s\n").await;
    let operator = s.operator::<()>();
    holds::freeze(&operator, None, Some("staging"), "alice", "release freeze")
        .await
        .unwrap();
    let before = s.alias_image().await;
    s.push_event().await;
    s.run_ingest().await;
    // A few rounds of the event source mappings: the deploy comes back and waits.
    for _ in 0..4 {
        for (stage, url) in &s.queues {
            s.poll(stage, url, 1).await;
        }
        tokio::time::sleep(Duration::from_millis(1100)).await;
    }
    let log = s.run_log().await;
    assert_eq!(
        log.iter().filter(|t| *t == "deploy.waiting").count(),
        1,
        "{log:?}"
    );
    assert!(!log.contains(&"deploy.succeeded".to_string()), "{log:?}");
    assert_eq!(
        s.alias_image().await,
        before,
        "nothing deployed while frozen"
    );
    let record = s
        .deploy_record(baton::ids::run_id("web", &s.digest).as_str())
        .await;
    assert_eq!(record["status"], "waiting", "{record:#}");
    assert!(
        record["note"]
            .as_str()
            .unwrap()
            .contains("frozen by alice: release freeze"),
        "{record:#}"
    );

    holds::unfreeze(&operator, None, Some("staging"), "bob", None)
        .await
        .unwrap();
    s.drive(1).await;
    assert_eq!(
        s.alias_image().await,
        format!("{HOST}/demo/web@{}", s.digest),
        "lifted: the waiting deploy went"
    );
    assert_eq!(
        s.run_log().await,
        [
            "image.built",
            "tests.passed",
            "approval.granted",
            "deploy.waiting",
            "deploy.succeeded",
            "image.promoted"
        ]
    );
}

/// `baton rollback --stack`: the operator's rollback on a deployed stack goes through the
/// deploy target with the stack's records (the pipeline the CLI builds from the deploy
/// function's environment): the alias serves the previous image again, the environment
/// is held with who and why, the rolled-back run says so, and `deploy.succeeded`
/// (`rollback: true`) is on the topic.
#[tokio::test(flavor = "multi_thread")]
async fn an_operator_rollback_on_the_stack_moves_the_alias_back_and_holds() {
    let s = stack().await;
    s.push_event().await;
    s.run_ingest().await;
    s.drive(1).await;
    let v1 = format!("{HOST}/demo/web@{}", s.digest);
    assert_eq!(s.alias_image().await, v1);
    let d2 = format!("sha256:{}", "cd".repeat(32));
    s.push_event_of("1.1.0", &d2).await;
    s.run_ingest().await;
    s.drive(1).await;
    assert_eq!(s.alias_image().await, format!("{HOST}/demo/web@{d2}"));

    let operator = s.operator::<baton::runtime::lambda::ports::WithTargets>();
    let report = baton::stages::deploy::rollback(
        &operator,
        "web",
        "staging",
        None,
        Some("alice"),
        Some("1.1.0 drops sessions"),
    )
    .await
    .unwrap();
    assert_eq!(report.to, v1);
    assert_eq!(s.alias_image().await, v1, "the alias serves 1.0.0 again");
    let hold = baton::pipeline::holds::active_hold(&operator, "web", "staging")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (hold.by.as_deref(), hold.reason.as_deref()),
        (Some("alice"), Some("1.1.0 drops sessions"))
    );
    let run2 = baton::ids::run_id("web", &d2);
    let view = baton::pipeline::runs::view(&operator, "web", &run2)
        .await
        .unwrap();
    // (Its promote failed: moto's ECR never held this made-up digest.)
    let mark = &view.rolled_back[0];
    assert_eq!(
        (
            mark.environment.as_str(),
            mark.by.as_deref(),
            mark.reason.as_deref()
        ),
        ("staging", Some("alice"), Some("1.1.0 drops sessions"))
    );
    // The rollback's event went out on the topic: promote's queue has it.
    s.drive(1).await;
    let run1 = baton::ids::run_id("web", &s.digest);
    let log = baton::pipeline::runs::view(&operator, "web", &run1)
        .await
        .unwrap()
        .events;
    assert!(
        log.iter().any(|e| matches!(&e.payload,
            baton::event::Payload::DeploySucceeded(d) if d.rollback)),
        "{log:?}"
    );
}
