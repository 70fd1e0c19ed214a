//! The AWS adapters against moto server (a real implementation of the AWS APIs on a
//! free loopback port, started and stopped here): S3 conditional writes, SNS → SQS
//! fan-out with the subscription table's filter policies, ECR resolve and retag, the
//! Lambda deploy target (update code, publish version, move alias, move it back).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use baton::Error;
use baton::aws::ecr::EcrRegistry;
use baton::aws::lambda::LambdaDeployTarget;
use baton::aws::s3::S3Store;
use baton::aws::sns::SnsBus;
use baton::event::{Event, Image};
use baton::ports::{
    BusMessage, DeployRequest, DeployTarget, EventBus, ObjectStore, Precondition, Registry, Rollout,
};
use serde_json::json;

pub struct Moto {
    child: Child,
    pub endpoint: String,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn moto_server() -> PathBuf {
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/ci-venv/bin/moto_server");
    if venv.is_file() {
        return venv;
    }
    std::env::var_os("PATH")
        .and_then(|p| std::env::split_paths(&p).map(|d| d.join("moto_server")).find(|p| p.is_file()))
        .expect("moto_server is not installed: run .ci/run once (it installs moto[server] into target/ci-venv) or pip install 'moto[server]'")
}

/// Starts moto server on a free port and waits until it answers.
pub async fn moto() -> Moto {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new(moto_server())
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start moto_server");
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "moto_server did not start");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Moto {
        child,
        endpoint: format!("http://127.0.0.1:{port}"),
    }
}

impl Moto {
    pub async fn config(&self) -> aws_config::SdkConfig {
        aws_config::defaults(aws_config::BehaviorVersion::latest())
            .endpoint_url(&self.endpoint)
            .region(aws_config::Region::new("us-east-1"))
            .credentials_provider(aws_sdk_s3::config::Credentials::new(
                "testing", "testing", None, None, "moto",
            ))
            .load()
            .await
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn s3_store_has_real_conditional_writes() {
    let m = moto().await;
    let conf = m.config().await;
    let s3 = aws_sdk_s3::Client::from_conf(
        aws_sdk_s3::config::Builder::from(&conf)
            .force_path_style(true)
            .build(),
    );
    s3.create_bucket().bucket("state").send().await.unwrap();
    let store = S3Store::new(s3, "state");
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
    let topic = sns
        .create_topic()
        .name("events")
        .send()
        .await
        .unwrap()
        .topic_arn()
        .unwrap()
        .to_string();
    let mut queues = vec![];
    let mut subs: Vec<(String, serde_json::Value)> = baton::subscriptions::stage_subscriptions()
        .into_iter()
        .map(|s| (s.name.clone(), s.filter.json().clone()))
        .collect();
    subs.push(("email-reaction".into(), json!({"type": ["image.built"]})));
    for (name, policy) in &subs {
        let url = sqs
            .create_queue()
            .queue_name(name)
            .send()
            .await
            .unwrap()
            .queue_url()
            .unwrap()
            .to_string();
        let arn = format!("arn:aws:sqs:us-east-1:123456789012:{name}");
        sns.subscribe()
            .topic_arn(&topic)
            .protocol("sqs")
            .endpoint(&arn)
            .attributes("FilterPolicy", policy.to_string())
            .send()
            .await
            .unwrap();
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
            let e = baton::triggers::event_from_sns_notification(msg.body().unwrap()).unwrap();
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
    assert!(
        baton::event::validate_digest(&r.digest).is_ok(),
        "{}",
        r.digest
    );
    assert!(r.pushed_at.is_some(), "push time from DescribeImages");
    let e = reg.resolve(host, "demo/web", "9.9.9").await.unwrap_err();
    assert_eq!(e.kind(), "not_found");
    let image = Image {
        registry: host.into(),
        repository: "demo/web".into(),
        tag: "1.0.0".into(),
        digest: r.digest.clone(),
    };
    reg.retag(&image, "staging").await.unwrap();
    reg.retag(&image, "staging").await.unwrap(); // ImageAlreadyExists is done
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
    let iam = aws_sdk_iam::Client::new(&conf);
    let role = iam
        .create_role()
        .role_name("web-fn")
        .assume_role_policy_document(r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"Service":"lambda.amazonaws.com"},"Action":"sts:AssumeRole"}]}"#)
        .send()
        .await
        .unwrap()
        .role()
        .unwrap()
        .arn()
        .to_string();
    let lambda = aws_sdk_lambda::Client::new(&conf);
    let repo = "123456789012.dkr.ecr.us-east-1.amazonaws.com/demo/web";
    let old = format!("{repo}@sha256:{}", "1".repeat(64));
    lambda
        .create_function()
        .function_name("web")
        .role(role)
        .package_type(aws_sdk_lambda::types::PackageType::Image)
        .code(
            aws_sdk_lambda::types::FunctionCode::builder()
                .image_uri(&old)
                .build(),
        )
        .publish(true)
        .send()
        .await
        .unwrap();
    lambda
        .create_alias()
        .function_name("web")
        .name("live")
        .function_version("1")
        .send()
        .await
        .unwrap();
    let cfg: baton::config::LambdaDeploy =
        serde_json::from_value(json!({"function": "web", "poll": "50ms"})).unwrap();
    let target = LambdaDeployTarget::new(lambda.clone(), &cfg);
    let req = |hex: char| DeployRequest {
        app: "web".into(),
        environment: "production".into(),
        run: "r".into(),
        image: Image {
            registry: "123456789012.dkr.ecr.us-east-1.amazonaws.com".into(),
            repository: "demo/web".into(),
            tag: "1.1.0".into(),
            digest: format!("sha256:{}", hex.to_string().repeat(64)),
        },
        cause: "baton test".into(),
    };
    let applied = target.apply(&req('2')).await.unwrap();
    assert!(applied.changed);
    assert_eq!(applied.previous[0].image, old);
    assert!(matches!(
        target.rollout(&req('2')).await.unwrap(),
        Rollout::Complete { .. }
    ));
    let alias = lambda
        .get_alias()
        .function_name("web")
        .name("live")
        .send()
        .await
        .unwrap();
    assert_ne!(
        alias.function_version(),
        Some("1"),
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
    let alias = lambda
        .get_alias()
        .function_name("web")
        .name("live")
        .send()
        .await
        .unwrap();
    assert_eq!(alias.function_version(), Some("1"));
}
