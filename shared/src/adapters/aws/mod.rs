//! AWS adapters (feature `aws`). Endpoint, region and credentials come from the
//! environment Lambda sets in a function ([`function_sdk_config`]) and from the standard
//! AWS chain in the CLI ([`sdk_config`]); `AWS_ENDPOINT_URL` selects an emulator; nothing
//! here branches on "local".

pub mod dlq;
pub mod ecr;
pub mod iam;
pub mod lambda;
pub mod s3;
pub mod sns;

/// Loads the SDK configuration through the standard chain (environment, profiles, SSO,
/// web identity, IMDS, …), for the CLI; the region defaults to us-east-1 for global
/// services.
pub async fn sdk_config() -> aws_config::SdkConfig {
    let region =
        aws_config::meta::region::RegionProviderChain::default_provider().or_else("us-east-1");
    aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(region)
        .timeout_config(timeouts())
        .load()
        .await
}

/// The SDK configuration of a function, from what Lambda puts in its environment: the
/// function role's credentials (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
/// `AWS_SESSION_TOKEN`), `AWS_REGION`, and the endpoint overrides `AWS_ENDPOINT_URL` and
/// `AWS_ENDPOINT_URL_<SERVICE>` (emulators). A function has no profile files, SSO, IMDS
/// or web identity; leaving the chain that reads them out keeps each function binary
/// smaller and its start shorter.
pub fn function_sdk_config() -> aws_config::SdkConfig {
    let var = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
    let region = var("AWS_REGION")
        .or_else(|| var("AWS_DEFAULT_REGION"))
        .unwrap_or_else(|| "us-east-1".into());
    let mut conf = aws_config::SdkConfig::builder()
        .behavior_version(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new(region))
        .credentials_provider(
            aws_credential_types::provider::SharedCredentialsProvider::new(
                aws_config::environment::EnvironmentVariableCredentialsProvider::new(),
            ),
        )
        .identity_cache(aws_config::identity::IdentityCache::lazy().build())
        .retry_config(aws_config::retry::RetryConfig::standard())
        .timeout_config(timeouts())
        .service_config(EnvEndpoints);
    if let Some(url) = var("AWS_ENDPOINT_URL") {
        conf = conf.endpoint_url(url);
    }
    conf.build()
}

/// Service settings from the environment, as the SDK's own loader reads them: the
/// service's variable first (`AWS_ENDPOINT_URL_LAMBDA`: the setting's variable and the
/// service id in upper case, spaces as `_`), then the setting's (`AWS_ENDPOINT_URL`).
#[derive(Debug)]
struct EnvEndpoints;

impl aws_types::service_config::LoadServiceConfig for EnvEndpoints {
    fn load_config(&self, key: aws_types::service_config::ServiceConfigKey<'_>) -> Option<String> {
        let service = key.service_id().to_uppercase().replace(' ', "_");
        [format!("{}_{service}", key.env()), key.env().to_string()]
            .iter()
            .find_map(|name| std::env::var(name).ok().filter(|v| !v.trim().is_empty()))
    }
}

/// An SDK client built on first use. Building one loads and parses the platform's root
/// certificates (several milliseconds); a function that answers an invocation without
/// calling that service (an empty batch, a refused request) never pays for it. Derefs to
/// the client; clones share it.
pub struct Lazy<C>(std::sync::Arc<LazyInner<C>>);

struct LazyInner<C> {
    cell: std::sync::OnceLock<C>,
    make: Box<dyn Fn() -> C + Send + Sync>,
}

impl<C> Lazy<C> {
    /// A client `make` builds on first use.
    pub fn new(make: impl Fn() -> C + Send + Sync + 'static) -> Lazy<C> {
        Lazy(std::sync::Arc::new(LazyInner {
            cell: std::sync::OnceLock::new(),
            make: Box::new(make),
        }))
    }

    pub fn get(&self) -> &C {
        self.0.cell.get_or_init(|| (self.0.make)())
    }
}

impl<C> Clone for Lazy<C> {
    fn clone(&self) -> Self {
        Lazy(self.0.clone())
    }
}

impl<C> std::ops::Deref for Lazy<C> {
    type Target = C;
    fn deref(&self) -> &C {
        self.get()
    }
}

impl<C> std::fmt::Debug for Lazy<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.cell.get().is_some() {
            "Lazy(built)"
        } else {
            "Lazy(not built)"
        })
    }
}

/// An already built client.
impl<C: Clone + Send + Sync + 'static> From<C> for Lazy<C> {
    fn from(c: C) -> Lazy<C> {
        let lazy = Lazy::new({
            let c = c.clone();
            move || c.clone()
        });
        let _ = lazy.0.cell.set(c);
        lazy
    }
}

/// The clients every function uses (S3, SNS, SQS), each built on first use, and the
/// configuration the others are made from: only a function that asks for the ECR or
/// the Lambda client links it.
#[derive(Clone)]
pub struct Clients {
    pub s3: Lazy<aws_sdk_s3::Client>,
    pub sns: Lazy<aws_sdk_sns::Client>,
    pub sqs: Lazy<aws_sdk_sqs::Client>,
    conf: aws_config::SdkConfig,
}

impl Clients {
    pub fn new(conf: &aws_config::SdkConfig) -> Clients {
        let c = conf.clone();
        // Path-style S3 addressing works with every endpoint, emulators included.
        let s3 = Lazy::new(move || {
            aws_sdk_s3::Client::from_conf(
                aws_sdk_s3::config::Builder::from(&c)
                    .force_path_style(true)
                    .build(),
            )
        });
        let (a, b) = (conf.clone(), conf.clone());
        Clients {
            s3,
            sns: Lazy::new(move || aws_sdk_sns::Client::new(&a)),
            sqs: Lazy::new(move || aws_sdk_sqs::Client::new(&b)),
            conf: conf.clone(),
        }
    }

    /// An ECR client, built on first use (ingest, promote).
    pub fn ecr(&self) -> Lazy<aws_sdk_ecr::Client> {
        let c = self.conf.clone();
        Lazy::new(move || aws_sdk_ecr::Client::new(&c))
    }

    /// A Lambda client, built on first use (test, deploy).
    pub fn lambda(&self) -> Lazy<aws_sdk_lambda::Client> {
        let c = self.conf.clone();
        Lazy::new(move || aws_sdk_lambda::Client::new(&c))
    }
}

/// Every AWS client's timeouts: a connection within 5 s, and no call longer than 15
/// minutes (the longest a synchronous Lambda invoke, the test runner's, can take).
pub fn timeouts() -> aws_config::timeout::TimeoutConfig {
    aws_config::timeout::TimeoutConfig::builder()
        .connect_timeout(std::time::Duration::from_secs(5))
        .operation_timeout(std::time::Duration::from_secs(15 * 60))
        .build()
}

/// An AWS call that failed, as a transient error: what was being done, then AWS's code,
/// message and the rest of the cause chain.
pub(crate) fn call_failed<E: std::error::Error>(what: impl Into<String>, e: E) -> crate::Error {
    crate::Error::transient(
        what,
        crate::error::Message(aws_sdk_sqs::error::DisplayErrorContext(&e).to_string()),
    )
}
