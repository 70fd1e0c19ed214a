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
