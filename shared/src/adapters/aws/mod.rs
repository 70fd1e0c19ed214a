//! AWS adapters (feature `aws`). Endpoint, region and credentials come from the standard
//! AWS chain (`AWS_ENDPOINT_URL` selects an emulator); nothing here branches on "local".

pub mod dlq;
pub mod ecr;
pub mod iam;
pub mod lambda;
pub mod s3;
pub mod sns;

/// Loads the shared SDK configuration (region defaults to us-east-1 for global services).
pub async fn sdk_config() -> aws_config::SdkConfig {
    let region =
        aws_config::meta::region::RegionProviderChain::default_provider().or_else("us-east-1");
    aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(region)
        .timeout_config(timeouts())
        .load()
        .await
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

/// The clients of one SDK configuration, each built on first use.
#[derive(Clone)]
pub struct Clients {
    pub s3: Lazy<aws_sdk_s3::Client>,
    pub sns: Lazy<aws_sdk_sns::Client>,
    pub sqs: Lazy<aws_sdk_sqs::Client>,
    pub ecr: Lazy<aws_sdk_ecr::Client>,
    pub lambda: Lazy<aws_sdk_lambda::Client>,
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
        let lazy = |conf: &aws_config::SdkConfig| conf.clone();
        let (a, b, d, e) = (lazy(conf), lazy(conf), lazy(conf), lazy(conf));
        Clients {
            s3,
            sns: Lazy::new(move || aws_sdk_sns::Client::new(&a)),
            sqs: Lazy::new(move || aws_sdk_sqs::Client::new(&b)),
            ecr: Lazy::new(move || aws_sdk_ecr::Client::new(&d)),
            lambda: Lazy::new(move || aws_sdk_lambda::Client::new(&e)),
        }
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
