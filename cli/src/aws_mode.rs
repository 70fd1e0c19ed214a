//! The CLI against a deployed stack (`--stack NAME`): retry a stage by invoking its
//! function, list and redrive a stage's dead-letter queue, and manage reactions as SNS
//! subscriptions with filter policies. Credentials, region and endpoint come from the
//! standard AWS chain.

use std::process::ExitCode;

use anyhow::{Context, Result, anyhow, bail};
use aws_sdk_lambda::primitives::Blob;
use serde_json::{Value, json};

use crate::Global;

async fn conf() -> aws_config::SdkConfig {
    baton::adapters::aws::sdk_config().await
}

fn print(g: &Global, v: &Value, text: impl FnOnce()) -> Result<()> {
    if g.json {
        println!("{}", serde_json::to_string_pretty(v)?);
    } else {
        text();
    }
    Ok(())
}

/// `baton retry RUN STAGE --stack S`: the stage's function re-runs it from its record.
pub async fn retry(
    g: &Global,
    stack: &str,
    run: &str,
    stage: &str,
    env: Option<&str>,
) -> Result<ExitCode> {
    let function = format!("{stack}-{stage}");
    let lambda = aws_sdk_lambda::Client::new(&conf().await);
    let payload = json!({"baton": "retry", "run": run, "stage": stage, "environment": env});
    let out = lambda
        .invoke()
        .function_name(&function)
        .payload(Blob::new(payload.to_string()))
        .send()
        .await
        .map_err(|e| anyhow!("invoke {function}: {}", e.into_service_error()))?;
    let body: Value = out
        .payload()
        .and_then(|b| serde_json::from_slice(b.as_ref()).ok())
        .unwrap_or(Value::Null);
    if let Some(err) = out.function_error() {
        bail!(
            "{function} could not retry run {run}: {} ({err})",
            body["errorMessage"].as_str().unwrap_or("see its logs")
        );
    }
    print(g, &body, || {
        println!(
            "retried {stage} of run {run} in {function}: {}",
            body["status"].as_str().unwrap_or("no change")
        )
    })?;
    Ok(ExitCode::SUCCESS)
}

/// `baton dlq list STAGE --stack S`.
pub async fn dlq_list(g: &Global, stack: &str, stage: &str) -> Result<ExitCode> {
    let sqs = aws_sdk_sqs::Client::new(&conf().await);
    let dead = baton::adapters::aws::dlq::list(&sqs, stack, stage).await?;
    print(g, &json!(dead), || {
        if dead.is_empty() {
            println!("{stack}-{stage}-dlq is empty");
        }
        for d in &dead {
            println!(
                "{}  {}  received {} times",
                d.message_id,
                d.event.as_deref().unwrap_or("(unreadable body)"),
                d.receive_count.as_deref().unwrap_or("?")
            );
        }
    })?;
    Ok(ExitCode::SUCCESS)
}

/// `baton dlq redrive STAGE --stack S`.
pub async fn dlq_redrive(g: &Global, stack: &str, stage: &str) -> Result<ExitCode> {
    let sqs = aws_sdk_sqs::Client::new(&conf().await);
    let n = baton::adapters::aws::dlq::redrive(&sqs, stack, stage).await?;
    print(g, &json!({"redriven": n}), || {
        println!("moved {n} message(s) from {stack}-{stage}-dlq back to {stack}-{stage}")
    })?;
    Ok(ExitCode::SUCCESS)
}

async fn topic_arn(sns: &aws_sdk_sns::Client, stack: &str) -> Result<String> {
    let suffix = format!(":{stack}-events");
    let mut token = None;
    loop {
        let out = sns
            .list_topics()
            .set_next_token(token)
            .send()
            .await
            .map_err(|e| anyhow!("list topics: {}", e.into_service_error()))?;
        if let Some(t) = out
            .topics()
            .iter()
            .filter_map(|t| t.topic_arn())
            .find(|a| a.ends_with(&suffix))
        {
            return Ok(t.to_string());
        }
        match out.next_token() {
            Some(t) => token = Some(t.to_string()),
            None => bail!(
                "no topic named {stack}-events: is --stack the name of a deployed Baton stack?"
            ),
        }
    }
}

/// Where a reaction sends.
pub enum Target {
    Email(String),
    Webhook(String),
    Sqs(String),
    Log,
}

/// `baton react add … --stack S`: a subscription with a filter policy on the topic.
pub async fn react_add(
    g: &Global,
    stack: &str,
    types: &[String],
    target: Target,
) -> Result<ExitCode> {
    let sns = aws_sdk_sns::Client::new(&conf().await);
    let topic = topic_arn(&sns, stack).await?;
    let (protocol, endpoint) = match target {
        Target::Email(e) => ("email", e),
        Target::Webhook(u) if u.starts_with("https://") => ("https", u),
        Target::Webhook(u) => ("http", u),
        Target::Sqs(arn) => ("sqs", arn),
        Target::Log => bail!("--log reactions are local; in AWS use --email, --webhook or --sqs"),
    };
    let policy = json!({ "type": types });
    let out = sns
        .subscribe()
        .topic_arn(&topic)
        .protocol(protocol)
        .endpoint(&endpoint)
        .attributes("FilterPolicyScope", "MessageAttributes")
        .attributes("FilterPolicy", policy.to_string())
        .return_subscription_arn(true)
        .send()
        .await
        .map_err(|e| anyhow!("subscribe {endpoint}: {}", e.into_service_error()))?;
    let arn = out.subscription_arn().unwrap_or_default().to_string();
    print(
        g,
        &json!({"subscription": arn, "protocol": protocol, "filter": policy}),
        || {
            println!(
                "{protocol} {endpoint} now receives {} ({arn})",
                types.join(", ")
            );
            if protocol == "email" {
                println!(
                    "SNS sent a confirmation to {endpoint}: the reaction starts once it is confirmed"
                );
            }
        },
    )?;
    Ok(ExitCode::SUCCESS)
}

/// `baton react list --stack S`.
pub async fn react_list(g: &Global, stack: &str) -> Result<ExitCode> {
    let sns = aws_sdk_sns::Client::new(&conf().await);
    let topic = topic_arn(&sns, stack).await?;
    let subs = sns
        .list_subscriptions_by_topic()
        .topic_arn(&topic)
        .send()
        .await
        .map_err(|e| anyhow!("list subscriptions: {}", e.into_service_error()))?;
    let mut rows = vec![];
    let stage_queues: Vec<String> = ["test", "gate", "approve", "deploy", "promote", "notify"]
        .iter()
        .map(|st| format!(":{stack}-{st}"))
        .collect();
    for s in subs.subscriptions() {
        // The stage queues are the pipeline itself, not reactions.
        if s.protocol() == Some("sqs")
            && stage_queues
                .iter()
                .any(|q| s.endpoint().unwrap_or("").ends_with(q.as_str()))
        {
            continue;
        }
        let arn = s.subscription_arn().unwrap_or_default().to_string();
        let filter = if arn.starts_with("arn:") {
            sns.get_subscription_attributes()
                .subscription_arn(&arn)
                .send()
                .await
                .ok()
                .and_then(|a| a.attributes().and_then(|m| m.get("FilterPolicy").cloned()))
        } else {
            None
        };
        rows.push(json!({
            "subscription": arn,
            "protocol": s.protocol(),
            "endpoint": s.endpoint(),
            "filter": filter.and_then(|f| serde_json::from_str::<Value>(&f).ok()),
        }));
    }
    print(g, &json!(rows), || {
        for r in &rows {
            println!(
                "{:<6} {:<50} {}  {}",
                r["protocol"].as_str().unwrap_or(""),
                r["endpoint"].as_str().unwrap_or(""),
                r["filter"],
                r["subscription"].as_str().unwrap_or("")
            );
        }
    })?;
    Ok(ExitCode::SUCCESS)
}

/// `baton react remove ARN --stack S`.
pub async fn react_remove(g: &Global, stack: &str, arn: &str) -> Result<ExitCode> {
    let sns = aws_sdk_sns::Client::new(&conf().await);
    let topic = topic_arn(&sns, stack).await?;
    if !arn.starts_with(&format!("{topic}:")) {
        bail!("{arn} is not a subscription of {topic} (see `baton react list --stack {stack}`)");
    }
    sns.unsubscribe()
        .subscription_arn(arn)
        .send()
        .await
        .with_context(|| format!("unsubscribe {arn}"))?;
    print(g, &json!({"removed": arn}), || println!("removed {arn}"))?;
    Ok(ExitCode::SUCCESS)
}

/// The pipeline of a deployed stack, as its functions see it: the state bucket and topic
/// its deploy function names (`BATON_BUCKET`, `BATON_TOPIC_ARN`), and the configuration
/// it reads (`BATON_CONFIG_S3`; else the one deployed with the functions, which must be
/// this `--config`). For the commands that work on the stack's records (freezes, holds,
/// break-glass) and its deploy targets (rollback, `X`) with the operator's credentials.
pub async fn stack_pipeline<X: baton::runtime::lambda::ports::Extra>(
    g: &Global,
    stack: &str,
) -> Result<baton::pipeline::Pipeline<baton::runtime::lambda::ports::AwsPorts<X>>> {
    let conf = conf().await;
    let function = format!("{stack}-deploy");
    let found = aws_sdk_lambda::Client::new(&conf)
        .get_function_configuration()
        .function_name(&function)
        .send()
        .await
        .with_context(|| {
            format!("no function {function}: is --stack the name of a deployed Baton stack?")
        })?;
    let vars = found
        .environment()
        .and_then(|e| e.variables())
        .cloned()
        .unwrap_or_default();
    let var = |name: &str| {
        vars.get(name)
            .filter(|v| !v.trim().is_empty())
            .cloned()
            .ok_or_else(|| {
                anyhow!(
                    "{function} has no {name} in its environment: is it a Baton deploy function?"
                )
            })
    };
    let (bucket, topic) = (var("BATON_BUCKET")?, var("BATON_TOPIC_ARN")?);
    let clients = baton::adapters::aws::Clients::new(&conf);
    let config = match vars.get("BATON_CONFIG_S3") {
        Some(url) => baton::runtime::lambda::ports::config_from_s3(&clients, url).await?,
        None => crate::commands::load_config(g)?,
    };
    let config = std::sync::Arc::new(config);
    let ports = baton::runtime::lambda::ports::AwsPorts::<X>::new(
        &clients,
        &bucket,
        &topic,
        config.clone(),
    )?;
    Ok(baton::pipeline::Pipeline::new(
        ports,
        config,
        baton::pipeline::Settings::default(),
    ))
}
